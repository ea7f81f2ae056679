#!/usr/bin/env bash
# Session 23's last call on the GPU machine: the GPU tests on the final kernels, in groups
# under one deadline (DEADLINE seconds for all of them), most affected first; a group the
# deadline does not reach is reported as not run. Logs land in $OUT.
set -u
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false
deadline=${DEADLINE:-450}
python3 -m pip install -q --no-deps --no-index --force-reinstall wheelhouse/*.whl 2>&1 | tail -2
(cd /tmp && python3 -c "import jax, jax_rmsnorm; print('jax', jax.__version__, jax.devices(), 'cuda handlers:', jax_rmsnorm.HAS_CUDA)") || exit 1
run_group() {  # name, then pytest arguments
  local name=$1; shift
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then echo "$name: NOT RUN (deadline)"; return; fi
  timeout "$left" pytest "$@" -q -rs -p no:cacheprovider > "$OUT/pytest_$name.log" 2>&1
  echo "$name exit $?: $(tail -1 "$OUT/pytest_$name.log") (${SECONDS}s)"
}
run_group forward_weight_per_batch tests/test_forward.py -k "weight_per_batch and not cpu"
run_group grad tests/test_grad.py -k "not cpu"
run_group other8 tests/test_decoder.py tests/test_errors.py tests/test_export.py tests/test_hardening.py \
  tests/test_kill_switch.py tests/test_options.py tests/test_sharding.py tests/test_transforms.py -k "not cpu"
run_group flax tests/test_flax.py -k "not cpu"
