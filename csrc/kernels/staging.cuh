// Long rows staged in shared memory (sm_90), for the staged forward and backward.
//
// The CTAs of a cluster each own one contiguous slice of every row: CHUNKS x blockDim
// 16-byte accesses, the last CTA's slice possibly shorter or empty. Thread 0 copies the
// slice of a coming row, for each array the kernel reads (x and the residual; dy and s),
// into a slot of a ring in shared memory with one bulk copy (the TMA unit: no per-thread
// requests to queue), completing on that stage's mbarrier. The kernel refills a stage once
// every thread is done with it (past a barrier: row_sum_send's after_barrier hook).
#pragma once

#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/launch_config.h"
#include "kernels/numeric.cuh"

namespace jax_rmsnorm {

constexpr int kMaxStagedArrays = 2;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// `ring`: [stages][arrays][slice] accesses at the start of dynamic shared memory.
struct StagedSlices {
  uint4* ring = nullptr;
  unsigned long long* landed = nullptr;  // [stages] mbarriers: one phase per row copied in
  const unsigned char* sources[kMaxStagedArrays] = {};
  int64_t row_bytes = 0;
  int slice = 0;  // accesses a CTA owns: CHUNKS x blockDim
  int first = 0;  // this CTA's first access of a row
  int count = 0;  // accesses it owns (the row's last slices may be short or empty)
  int arrays = 1, stages = 1;

  // `units`: 16-byte accesses per row (fits 32 bits: the launches check it).
  __device__ StagedSlices(void* shared, unsigned long long* barriers, int units, int slice_units, int rank,
                          int row_arrays, int ring_stages, int64_t hidden_bytes)
      : ring(static_cast<uint4*>(shared)),
        landed(barriers),
        row_bytes(hidden_bytes),
        slice(slice_units),
        first(rank * slice_units),
        arrays(row_arrays),
        stages(ring_stages) {
    count = units - first < slice ? (units > first ? units - first : 0) : slice;
  }

  __device__ uint4* slot(int stage, int array) const { return ring + (stage * arrays + array) * slice; }
  // Where the ring ends (16-byte aligned): the kernel's weight slice goes there.
  __device__ void* end() const { return ring + stages * arrays * slice; }
  __device__ unsigned barrier(int stage) const { return shared_address(&landed[stage]); }

  // Thread 0, before the CTA barrier that precedes every wait.
  __device__ void init_barriers() const {
    for (int stage = 0; stage < stages; ++stage) init_mbarrier(barrier(stage), 1);
    fence_mbarrier_inits();  // visible to the bulk copies
  }

  // Thread 0: starts copying this CTA's slice of `row` of every array into `stage`.
  __device__ void copy_row(int64_t row, int stage) const {
    const int bytes = count * 16;
    arrive_expecting_bytes(barrier(stage), bytes * arrays);
    if (bytes == 0) return;
    const int64_t at = row * row_bytes + int64_t{first} * 16;
    for (int a = 0; a < arrays; ++a) bulk_copy_to_shared(slot(stage, a), sources[a] + at, bytes, barrier(stage));
  }

  // Thread 0, once every thread has read `stage`: orders those reads before the copy.
  __device__ void refill(int64_t row, int stage) const {
    fence_shared_for_bulk_copies();
    copy_row(row, stage);
  }

  // Bulk copies into this CTA's own shared memory complete the stage: a CTA-scope acquire.
  __device__ void wait(int stage, int phase) const { wait_mbarrier_phase<WaitScope::kCta>(barrier(stage), phase); }
};
#endif

// Each thread copies its own accesses of the weight slice (a weight access may be under
// 16 bytes, too small for a bulk copy) into `slice_out` as W, and later reads back only
// those: no barrier, just wait_async_copies. Access c of the thread is c * blockDim + tid.
template <typename W, int VEC, int CHUNKS>
__device__ __forceinline__ void copy_weight_slice(Packed<W, VEC>* slice_out, const W* weight, int first, int count) {
  constexpr int kWeightBytes = VEC * sizeof(W);
  constexpr int kPiece = kWeightBytes < 16 ? kWeightBytes : 16;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int mine = c * blockDim.x + threadIdx.x;
    if (mine < count) {
      auto* dst = reinterpret_cast<unsigned char*>(&slice_out[mine]);
      const auto* src = reinterpret_cast<const unsigned char*>(weight + int64_t{first + mine} * VEC);
#pragma unroll
      for (int b = 0; b < kWeightBytes; b += kPiece) copy_async<kPiece>(dst + b, src + b);
    }
  }
  commit_async_copies();
}

}  // namespace jax_rmsnorm
