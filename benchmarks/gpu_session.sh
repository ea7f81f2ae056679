#!/usr/bin/env bash
# One call on the GPU machine: install, check it loads, GPU tests, benchmark.
# Usage (from the repo root): bash benchmarks/gpu_session.sh [pytest args...]
# Switches (environment): SKIP_TESTS=1, TESTS="tests/test_x.py ..." (default: all),
#   SKIP_BENCH=1, BENCH_ARGS="...",
#   SANITIZE="<pytest -k expression>" (memcheck over those tests),
#   SANITIZE_JAX=1 (memcheck, racecheck, initcheck, synccheck over benchmarks/sanitize_jax.py's
#     sweep), SANITIZE_LARGEST=1 (the same tools over its > 2^31-element case alone),
#     SANITIZE_TOOLS="memcheck ..." (fewer tools), SANITIZE_TIMEOUT=seconds per tool run,
#     SANITIZE_LARGEST_PARTS=forward|gradients (half the largest case: racecheck of both
#     outlasts one call),
#   NCU_CASES="forward:16384x4096 backward:262144x128" (ncu counters for those cases),
#   SWEEP=benchmarks/sweep_cases.txt (kernel_sweep over those cases: launch configs),
#   SANITIZE_SWEEP=benchmarks/sanitize_cases.txt (the SANITIZE_TOOLS over kernel_sweep
#     --check-only on those cases: every buffer its own allocation),
#   TRAIN_STEP=1 (benchmarks/train_step.py: the example decoder's train step, flax vs ours;
#     TRAIN_STEP_ARGS="--layout model" shards it over every GPU: issue 8),
#   STEP_PROFILE=1 (benchmarks/step_profile.py: that step's kernel times by group).
# Installs wheelhouse/*.whl when one was carried over, else builds from source
# offline. Logs and results go under $OUT (the device tool brings them back).
set -uo pipefail
# NVLink multicast stays off on machines of several GPUs (the device tool's KINDS.md).
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/jax_rmsnorm_out}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
if compgen -G "wheelhouse/*.whl" > /dev/null; then
  python3 -m pip install -q --no-deps --no-index --force-reinstall wheelhouse/*.whl
else
  python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -3
fi
(cd /tmp && python3 -c "import jax, jax_rmsnorm; print('jax', jax.__version__, jax.devices(), 'cuda handlers:', jax_rmsnorm.HAS_CUDA)") || exit 1

if [ -n "${SWEEP:-}" ]; then
  [ -x build/kernel_sweep ] || bash benchmarks/build_sweep.sh
  build/kernel_sweep $(grep -v '^#' "$SWEEP") 2>&1 | tee "$OUT/sweep.txt"
fi
if [ -n "${SANITIZE_SWEEP:-}" ]; then
  [ -x build/kernel_sweep ] || bash benchmarks/build_sweep.sh
  compute-sanitizer --version | tail -1
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
    log="$OUT/sanitize_sweep_$tool.log"
    timeout "${SANITIZE_TIMEOUT:-900}" compute-sanitizer --tool $tool --error-exitcode 99 \
      build/kernel_sweep --check-only $(grep -v '^#' "$SANITIZE_SWEEP") > "$log" 2>&1
    echo "kernel_sweep $tool exit $?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)" \
      "| $(grep -c ' checked ' "$log") cases checked, $(grep -c ' REFUSED ' "$log") refused," \
      "$(grep -c MISMATCH "$log") mismatches, ${SECONDS}s"
  done
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  pytest ${TESTS:-tests} -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$OUT/pytest.log" | tail -25
fi
if [ -n "${SANITIZE:-}" ]; then
  # memcheck sees out-of-bounds accesses only between separate allocations, so XLA's
  # pooling allocator is swapped for one cudaMalloc per buffer.
  XLA_PYTHON_CLIENT_ALLOCATOR=platform compute-sanitizer --tool memcheck --error-exitcode 99 \
    pytest tests/test_forward.py tests/test_grad.py -q -p no:cacheprovider -k "gpu and ($SANITIZE)" \
    2>&1 | tee "$OUT/sanitizer.log" | grep -E "ERROR SUMMARY|passed|failed|error" | tail -5
fi
if [ "${SANITIZE_JAX:-0}" = 1 ] || [ "${SANITIZE_LARGEST:-0}" = 1 ]; then
  compute-sanitizer --version | tail -1
  runs=()
  [ "${SANITIZE_JAX:-0}" = 1 ] && runs+=(sweep)
  [ "${SANITIZE_LARGEST:-0}" = 1 ] && runs+=(largest)
  for run in "${runs[@]}"; do
    args=""; [ "$run" = largest ] && args="--only-largest --largest-parts ${SANITIZE_LARGEST_PARTS:-forward,gradients}"
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
      log="$OUT/sanitize_${run}_$tool.log"
      # At the largest size racecheck watches the row kernels only (rms_norm_*: XLA's
      # reductions are slow under it; sum_dweight_partials' work does not grow with rows,
      # and the sweep checks it); initcheck runs without XLA's autotuner, whose output
      # comparator reads scratch it never wrote.
      filter=(); [ "$tool.$run" = racecheck.largest ] && filter=(--kernel-name kns=rms_norm)
      flags="${XLA_FLAGS:-}"; [ "$tool" = initcheck ] && flags="$flags --xla_gpu_autotune_level=0"
      XLA_FLAGS="$flags" XLA_PYTHON_CLIENT_ALLOCATOR=platform timeout "${SANITIZE_TIMEOUT:-900}" \
        compute-sanitizer --tool $tool --error-exitcode 99 "${filter[@]}" \
        python3 benchmarks/sanitize_jax.py $args > "$log" 2>&1
      echo "$run $tool exit $?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)" \
        "| $(grep -c '^ok ' "$log") cases ok, $(grep -c 'ALL OK' "$log") ALL OK, ${SECONDS}s"
    done
  done
fi
if [ -n "${NCU_CASES:-}" ]; then
  # Hardware counters per kernel (ours only): throughput, occupancy, registers, memory.
  ncu --clock-control none --kernel-name regex:'rms_norm|sum_dweight' --csv --page details \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    --section WarpStateStats \
    python3 benchmarks/profile_cases.py $NCU_CASES > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
  echo "ncu exit $?: $(grep -c '"' "$OUT/ncu.csv") rows in ncu.csv"
fi
if [ "${TRAIN_STEP:-0}" = 1 ]; then
  python3 benchmarks/train_step.py ${TRAIN_STEP_ARGS:-} --json "$OUT/train_step.json" 2> "$OUT/train_step.err" | tee "$OUT/train_step.txt"
  tail -3 "$OUT/train_step.err"
fi
if [ "${STEP_PROFILE:-0}" = 1 ]; then
  python3 benchmarks/step_profile.py 2> "$OUT/step_profile.err" | tee "$OUT/step_profile.txt"
  tail -3 "$OUT/step_profile.err"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 benchmarks/bench.py ${BENCH_ARGS:-} --json "$OUT/bench.json" 2> "$OUT/bench.err" | tee "$OUT/bench.txt"
  tail -3 "$OUT/bench.err"
fi
