#!/usr/bin/env bash
# Builds benchmarks/kernel_sweep.cu (the kernels plus a CPU check, no JAX) into
# build/kernel_sweep for sm_90. Usage: bash benchmarks/build_sweep.sh [nvcc args...]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Xptxas=-warn-spills,-warn-lmem-usage "$@" -o build/kernel_sweep \
  benchmarks/kernel_sweep.cu csrc/kernels/rms_norm_fwd.cu csrc/kernels/rms_norm_bwd.cu
