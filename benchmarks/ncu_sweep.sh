#!/usr/bin/env bash
# ncu counters (memory units, stall reasons) for kernel_sweep cases: bash benchmarks/ncu_sweep.sh CASE...
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread
for r in barrier long_scoreboard short_scoreboard mio_throttle lg_throttle wait math_pipe_throttle not_selected selected membar drain; do
  M=$M,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio
done
for c in "$@"; do
  echo "=== $c"
  ncu --clock-control none --launch-skip 1 --launch-count 2 --csv --page raw --metrics $M build/kernel_sweep --reps=1 "$c" 2>&1 | grep -v "^copy\|^==PROF==\|^fwd\|^bwd\|^res"
done
