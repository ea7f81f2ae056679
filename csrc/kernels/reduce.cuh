// The one row reduction every kernel uses.
#pragma once

#include "kernels/cuda_common.cuh"
#include "kernels/launch_config.h"

namespace jax_rmsnorm {

constexpr int kMaxThreads = 1024;

// Shared memory the reduction needs; one per block.
// The warp sums are double-buffered by row parity, so a kernel reducing rows in turn needs
// no barrier between one row's reads and the next row's writes. The cluster sums have
// four slots (step % 4): a kernel may send row k + 1's sum before it receives row k's
// (row_sum_send, row_sum_receive).
constexpr int kClusterSlots = 4;
struct RowSumScratch {
  float warp_sums[2][kMaxThreads / kWarp];
  float cluster_sums[kClusterSlots][kMaxCluster];  // written by the cluster's CTAs: [slot][rank]
  // [slot]: a phase completes when every CTA's sum for that slot's row has landed.
  unsigned long long cluster_arrived[kClusterSlots];
};

// Sums `v` over each aligned group of `lanes` consecutive lanes (a power of two, at most a
// warp; every lane of the warp calls it). An xor butterfly: both lanes of a pair add the same
// two values (commutatively), so every lane of a group gets the same bits. Unrolled: the
// stages a group needs are predicated, not a loop of compares and branches.
__device__ __forceinline__ float lane_group_sum(float v, int lanes) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    if (offset < lanes) v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// values[0] + ... + values[count - 1] (shared memory, count at most a warp) in every lane of
// the calling warp, with the same bits: lane l reads values[l mod group] (group: count
// rounded up to a power of two; lanes past count add 0), then the group's butterfly. One load
// and log2(group) shuffles instead of `count` dependent loads and adds (session 15's SASS:
// 16 of each a row at 512 threads). The order is a fixed tree per count.
__device__ __forceinline__ float warp_sum_of(const float* values, int count) {
  const int group = count <= 1 ? 1 : 1 << (32 - __clz(count - 1));
  const int i = (threadIdx.x % kWarp) & (group - 1);
  return lane_group_sum(i < count ? values[i] : 0.f, group);
}

// A cluster that shares rows sets up the mbarriers its CTAs' sums land on, and arrives
// at the cluster barrier that row_sum waits on before the first remote write. Called first
// thing, so the wait finds the barrier complete: its latency hides behind the row's loads.
__device__ __forceinline__ void start_cluster(RowSumScratch& scratch, int cluster_size) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster_size <= 1) return;
  if (threadIdx.x == 0) {
    for (int slot = 0; slot < kClusterSlots; ++slot) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(&scratch.cluster_arrived[slot]))
                   : "memory");
    }
    fence_mbarrier_inits();
  }
  arrive_at_cluster_barrier();
#endif
}

// Sums `v` over the `threads_per_row` consecutive threads of a row (a power of two;
// rows never straddle a warp unless they own whole warps), then, when
// `cluster_size` > 1, over the CTAs of the thread-block cluster that shares the row
// (then the kernel must have called start_cluster). A kernel that reduces several rows in
// turn passes each row's `step` (0, 1, 2, ...; every thread of a cluster reduces the
// same rows): the scratch alternates by it. Row k + 2 rewrites row k's warp slots only
// after row k + 1's barrier, which every thread reaches after reading row k's.
// `after_barrier` runs in every thread right after the CTA-wide barrier of the warp stage
// (rows of more than a warp only), before the cluster exchange waits: a kernel that needs
// every thread past some point (e.g. done reading a buffer) acts there without a barrier
// of its own. Every thread of the block must call it. All threads of a row get the same bits:
// the xor butterfly adds each pair in both lanes in the same (commutative) way and
// the later stages read partial sums in a fixed order, so results are deterministic.
//
// Split in two for clusters: row_sum_send returns the CTA's sum (the row's without a
// cluster) and sends it to every CTA of the cluster; row_sum_receive waits for the
// cluster's sums of that step and adds them. A kernel may send step k + 1 before it
// receives step k (the cluster exchange then overlaps the next row's work), never further
// ahead. row_sum is the two back to back.
struct NothingAfterBarrier {
  __device__ void operator()() const {}
};

template <typename AfterBarrier = NothingAfterBarrier>
__device__ __forceinline__ float row_sum_send(float v, int threads_per_row, int cluster_size,
                                              RowSumScratch& scratch, int step = 0,
                                              AfterBarrier after_barrier = {}) {
  v = lane_group_sum(v, threads_per_row < kWarp ? threads_per_row : kWarp);
  if (threads_per_row > kWarp) {
    const int warp = threadIdx.x / kWarp;
    float* sums = scratch.warp_sums[step & 1];
    if (threadIdx.x % kWarp == 0) sums[warp] = v;
    __syncthreads();
    after_barrier();
    const int warps_per_row = threads_per_row / kWarp;
    const int first = warp & ~(warps_per_row - 1);  // a power of two: no integer division
    v = warp_sum_of(sums + first, warps_per_row);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster_size > 1) {
    // Thread r sends this CTA's sum to slot [step % 4][this rank] of CTA r with st.async,
    // which completes bytes on CTA r's mbarrier of that slot; each CTA waits for the
    // phase in which all cluster_size sums have landed (row_sum_receive), then adds its
    // slots in rank order: the same bits everywhere. Not cluster.sync(): its release fence
    // waits for every memory access the thread has in flight (the next row's loads, this
    // row's stores) and its acquire invalidates L1 (the weights), every row.
    // A peer sends step k + 4's sum (the same slot and mbarrier) only after it received
    // step k + 2, which needs this CTA's send of k + 2, which comes after this CTA received
    // (and read) step k: sends run at most one step ahead of receives. st.async completes
    // with release semantics. "This CTA" is every thread of it only through the warp
    // stage's __syncthreads, which orders all threads' reads of step k's slots before
    // thread r's send of a later step (and keeps a slow thread from missing its phase). So
    // cluster rows span a CTA of more than a warp: the backward refuses other launches,
    // and the forward's register kernel reduces one row.
    const int slot = step % kClusterSlots;
    const unsigned sums = shared_address(&scratch.cluster_sums[slot][0]);
    const unsigned arrived = shared_address(&scratch.cluster_arrived[slot]);
    if (step == 0) wait_at_cluster_barrier();  // see start_cluster
    if (threadIdx.x == 0) arrive_expecting_bytes(arrived, cluster_size * int(sizeof(float)));
    if (threadIdx.x < cluster_size) {
      store_to_peer(sums + unsigned(sizeof(float)) * cluster_rank(), arrived, threadIdx.x, v);
    }
  }
#endif
  return v;
}

// The row's sum of `step` from row_sum_send's CTA sum `v`: without a cluster, `v` itself.
// With one, every thread of the block calls it (warp_sum_of shuffles across the warp).
__device__ __forceinline__ float row_sum_receive(float v, int cluster_size, RowSumScratch& scratch, int step = 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster_size > 1) {
    const int slot = step % kClusterSlots;
    wait_mbarrier_phase<WaitScope::kCluster>(shared_address(&scratch.cluster_arrived[slot]),
                                             (step / kClusterSlots) & 1);
    v = warp_sum_of(scratch.cluster_sums[slot], cluster_size);
  }
#endif
  return v;
}

template <typename AfterBarrier = NothingAfterBarrier>
__device__ __forceinline__ float row_sum(float v, int threads_per_row, int cluster_size, RowSumScratch& scratch,
                                         int step = 0, AfterBarrier after_barrier = {}) {
  return row_sum_receive(row_sum_send(v, threads_per_row, cluster_size, scratch, step, after_barrier), cluster_size,
                         scratch, step);
}

}  // namespace jax_rmsnorm
