// The one row reduction every kernel uses.
#pragma once

#include <cooperative_groups.h>

#include "kernels/launch_config.h"

namespace jax_rmsnorm {

constexpr int kMaxThreads = 1024;
constexpr int kMaxCluster = 16;

// Shared memory the reduction needs; one per block.
// Both are double-buffered by row parity, so a kernel reducing rows in turn needs no
// barrier between one row's reads and the next row's writes.
struct RowSumScratch {
  float warp_sums[2][kMaxThreads / kWarp];
  float cluster_sums[2][kMaxCluster];  // written by the cluster's CTAs: [row parity][rank]
};

// A CTA may write a peer's shared memory only once every CTA of the cluster runs. The
// kernels that share rows over a cluster arrive at that barrier first thing, so the
// wait in row_sum finds it complete: its latency hides behind the row's loads.
__device__ __forceinline__ void arrive_cluster_started(int cluster_size) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster_size > 1) asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
}

// Sums `v` over the `threads_per_row` consecutive threads of a row (a power of two;
// rows never straddle a warp unless they own whole warps), then, when
// `cluster_size` > 1, over the CTAs of the thread-block cluster that shares the row
// (then the kernel must have called arrive_cluster_started). A kernel that reduces several
// rows in turn passes each row's parity (and, with clusters, `first_row` only for its
// first): row k + 2 rewrites row k's slots only after row k + 1's barrier, which every
// thread reaches after reading row k's.
// Every thread of the block must call it. All threads of a row get the same bits:
// the xor butterfly adds each pair in both lanes in the same (commutative) way and
// the later stages read partial sums in a fixed order, so results are deterministic.
__device__ __forceinline__ float row_sum(float v, int threads_per_row, int cluster_size,
                                         RowSumScratch& scratch, int parity = 0,
                                         bool first_row = true) {
  // Unrolled: the stages a row needs are predicated, not a loop of compares and branches.
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    if (offset < threads_per_row) v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  if (threads_per_row > kWarp) {
    const int warp = threadIdx.x / kWarp;
    float* sums = scratch.warp_sums[parity];
    if (threadIdx.x % kWarp == 0) sums[warp] = v;
    __syncthreads();
    const int warps_per_row = threads_per_row / kWarp;
    const int first = warp & ~(warps_per_row - 1);  // a power of two: no integer division
    v = 0.f;
    for (int w = 0; w < warps_per_row; ++w) v += sums[first + w];
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster_size > 1) {
    // Every CTA puts its sum into slot [parity][its rank] of every peer, then one barrier,
    // then each adds its own slots in rank order: the same bits everywhere, and no remote
    // access after the barrier, so a CTA may exit as soon as it passes it. A peer writes
    // the other parity's slots for the next row only after this barrier, and this parity's
    // again only after the next one, which this CTA reaches after reading them.
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    if (first_row) asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");  // see arrive_cluster_started
    if (threadIdx.x < cluster_size) {
      *cluster.map_shared_rank(&scratch.cluster_sums[parity][cluster.block_rank()], threadIdx.x) = v;
    }
    cluster.sync();
    float total = 0.f;
    for (int rank = 0; rank < cluster_size; ++rank) total += scratch.cluster_sums[parity][rank];
    v = total;
  }
#endif
  return v;
}

}  // namespace jax_rmsnorm
