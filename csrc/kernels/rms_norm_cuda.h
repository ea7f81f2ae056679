// Framework-free entry points of the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/launch_config.h"
#include "kernels/problem.h"

namespace jax_rmsnorm {

// Enqueues the forward kernel on `stream`. No allocation, no synchronisation, the
// same launch for the same shapes (safe to capture in a CUDA graph). Returns an
// empty string on success, else what went wrong. `chosen` replaces the launch
// configuration choose_fwd_launch would pick (benchmarks/kernel_sweep.cu tunes with it).
std::string rms_norm_fwd_cuda(const FwdProblem& problem, cudaStream_t stream,
                              const FwdLaunch* chosen = nullptr);

// Enqueues the backward kernel (and, when dweight is wanted and several CTAs share a
// weight row, the kernel that sums their partials). Same guarantees as the forward.
std::string rms_norm_bwd_cuda(const BwdProblem& problem, cudaStream_t stream,
                              const BwdLaunch* chosen = nullptr);

// Peak DRAM bandwidth of the current device in bytes/s (memory clock x bus width, double
// data rate), for launch choices that follow the memory (fit_bwd_stages_to_device); 0 when
// the device does not say.
double device_memory_bandwidth();

}  // namespace jax_rmsnorm
