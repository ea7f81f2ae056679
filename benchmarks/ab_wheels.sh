#!/usr/bin/env bash
# A/B of two wheels in one device call: HEAD's (wheelhouse_head/) against the change's
# (wheelhouse/), same machine, same run. Usage (repo root):
#   BENCH_SETS="--ops forward --dtypes float32;--ops backward" B_TESTS="tests/test_forward.py" bash benchmarks/ab_wheels.sh
# Each BENCH_SETS entry (separated by ';') is one bench.py argument list, run on both wheels
# (CALLS: timed calls, 15); B_TESTS run on the change's wheel, selected by B_K ("not cpu").
set -uo pipefail
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/jax_rmsnorm_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
IFS=';' read -ra sets <<< "${BENCH_SETS:?}"
run_sets() {  # $1: label. HEAD's: the table alone; the change's: with its progress lines
  # (per-kernel times) and JSON (a plot beside it). $OUT stays at a few files.
  local i=0
  for args in "${sets[@]}"; do
    if [ "$1" = head ]; then
      python3 benchmarks/bench.py $args --calls "${CALLS:-15}" > "$OUT/$1_$i.txt" 2> /dev/null
    else
      python3 benchmarks/bench.py $args --calls "${CALLS:-15}" --json "$OUT/$1_$i.json" > "$OUT/$1_$i.txt" 2>&1
    fi
    i=$((i + 1))
  done
}
python3 -m pip install -q --no-deps --no-index --force-reinstall wheelhouse_head/*.whl && run_sets head
python3 -m pip install -q --no-deps --no-index --force-reinstall wheelhouse/*.whl || exit 1
if [ -n "${B_TESTS:-}" ]; then
  pytest $B_TESTS -q -rs -p no:cacheprovider -k "${B_K:-not cpu}" 2>&1 | tail -6
fi
run_sets new
for f in "$OUT"/head_*.txt; do
  echo "== HEAD: ${sets[$(basename "$f" .txt | cut -d_ -f2)]}"; grep -A100 '^----' "$f" | tail -n +2
  echo "== NEW"; grep -A100 '^----' "${f/head_/new_}" | tail -n +2 | grep -v '^plot:'
  grep '; rms_norm' "${f/head_/new_}" | sed -E 's/: ours .* copy;/:/' | head -20
done
