// The one row reduction every kernel uses.
#pragma once

#include <cooperative_groups.h>

namespace jax_rmsnorm {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;

// Shared memory the reduction needs; one per block.
struct RowSumScratch {
  float warp_sums[kMaxThreads / kWarp];
  float block_sum;  // read by the other CTAs of a cluster
};

// Sums `v` over the `threads_per_row` consecutive threads of a row (a power of two;
// rows never straddle a warp unless they own whole warps), then, when
// `cluster_size` > 1, over the CTAs of the thread-block cluster that shares the row.
// Every thread of the block must call it. All threads of a row get the same bits:
// the xor butterfly adds each pair in both lanes in the same (commutative) way and
// the later stages read partial sums in a fixed order, so results are deterministic.
__device__ __forceinline__ float row_sum(float v, int threads_per_row, int cluster_size,
                                         RowSumScratch& scratch) {
  const int width = threads_per_row < kWarp ? threads_per_row : kWarp;
  for (int offset = width / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  if (threads_per_row > kWarp) {
    const int warp = threadIdx.x / kWarp;
    if (threadIdx.x % kWarp == 0) scratch.warp_sums[warp] = v;
    __syncthreads();
    const int warps_per_row = threads_per_row / kWarp;
    const int first = warp - warp % warps_per_row;
    v = 0.f;
    for (int w = 0; w < warps_per_row; ++w) v += scratch.warp_sums[first + w];
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster_size > 1) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) scratch.block_sum = v;
    cluster.sync();
    float total = 0.f;
    for (int rank = 0; rank < cluster_size; ++rank) {
      total += *cluster.map_shared_rank(&scratch.block_sum, rank);
    }
    cluster.sync();  // no CTA may exit while a peer still reads its block_sum
    v = total;
  }
#endif
  return v;
}

}  // namespace jax_rmsnorm
