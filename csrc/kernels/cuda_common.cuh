// Host-side helpers shared by the CUDA kernel files: the dtype map, pointer checks,
// one launch function.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>
#include <type_traits>

#include "kernels/numeric.cuh"

namespace jax_rmsnorm {

struct CudaTypes {
  using BF16 = __nv_bfloat16;
  using F16 = __half;
};

inline bool aligned_to(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Vector accesses move 16 / elem_bytes elements of the rows at once; the weight is
// read vec elements at a time, so it needs vec * its own size (at most 16 bytes).
inline int weight_alignment(int vec, int weight_bytes) {
  return vec * weight_bytes < 16 ? vec * weight_bytes : 16;
}

constexpr int kMaxDevices = 64;

// A value computed once per device and cached (the handlers run on every call); 0 means
// not computed yet, so a `compute` that failed (returned 0) runs again on the next call.
// `fallback` when there is no current device.
template <typename T, typename Compute>
T once_per_device(std::atomic<T> (&cache)[kMaxDevices], T fallback, Compute compute) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return fallback;
  T value = cache[device].load(std::memory_order_relaxed);
  if (value == 0) {
    value = compute(device);
    cache[device].store(value, std::memory_order_relaxed);
  }
  return value;
}

// Thread-block clusters need sm_90.
inline int max_cluster_size() {
  static std::atomic<int> cached[kMaxDevices];
  return once_per_device(cached, 1, [](int device) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    return major >= 9 ? 8 : 1;
  });
}

// Shared memory beyond the default 48 KB must be opted into, per kernel. The default
// counts static shared memory too (a staged forward of exactly 48 KB dynamic failed to
// launch): the kernels' static scratch is a few hundred bytes, so opt in above 32 KB.
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t smem) {
  if (smem <= (32 << 10)) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

// Clusters beyond the portable 8 must be opted into, per kernel.
template <typename Kernel>
cudaError_t allow_cluster_size(Kernel kernel, int cluster) {
  if (cluster <= 8) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
}

// One launch path for every kernel: cluster dimension, cooperative launch (every CTA
// resident at once, for kernels whose CTAs wait on each other), dynamic shared memory
// beyond the default 48 KB and clusters beyond the portable 8 are opted into here.
template <typename Kernel, typename... Args>
cudaError_t launch_with(Kernel kernel, dim3 grid, dim3 block, size_t smem, int cluster, bool cooperative,
                        cudaStream_t stream, Args... args) {
  const cudaError_t smem_ok = allow_shared_memory(kernel, smem);
  if (smem_ok != cudaSuccess) return smem_ok;
  const cudaError_t cluster_ok = allow_cluster_size(kernel, cluster);
  if (cluster_ok != cudaSuccess) return cluster_ok;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  if (cluster > 1) {
    attrs[config.numAttrs].id = cudaLaunchAttributeClusterDimension;
    attrs[config.numAttrs].val.clusterDim.x = cluster;
    attrs[config.numAttrs].val.clusterDim.y = 1;
    attrs[config.numAttrs].val.clusterDim.z = 1;
    ++config.numAttrs;
  }
  if (cooperative) {
    attrs[config.numAttrs].id = cudaLaunchAttributeCooperative;
    attrs[config.numAttrs].val.cooperative = 1;
    ++config.numAttrs;
  }
  config.attrs = config.numAttrs > 0 ? attrs : nullptr;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, int cluster, cudaStream_t stream,
                   Args... args) {
  return launch_with(kernel, grid, block, smem, cluster, false, stream, args...);
}

// How many CTAs of `kernel` (`block` threads, `smem` bytes) the device holds at once;
// 0 on error.
template <typename Kernel>
int64_t count_resident_ctas(Kernel kernel, int block, size_t smem, int device) {
  int per_sm = 0, sms = 0;
  if (allow_shared_memory(kernel, smem) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, smem) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 0;
  }
  return int64_t{per_sm} * sms;
}

// The same, the most a cooperative launch may have. Cached per kernel (a template
// argument, so each instantiation has its own cache: kernels of one signature share a
// pointer type) and device; each kernel is launched with one block and smem size.
template <auto Kernel>
int64_t resident_ctas(int block, size_t smem) {
  static std::atomic<int64_t> cached[kMaxDevices];
  return once_per_device(cached, int64_t{0},
                         [&](int device) { return count_resident_ctas(Kernel, block, smem, device); });
}

// How many clusters of `cluster` CTAs of `kernel` (`block` threads, `smem` bytes) the
// device runs at once: the grid of a persistent kernel. A cluster's CTAs share a GPC, so
// this is not resident CTAs / cluster. Cached per device and configuration; 0 on error.
template <typename Kernel>
int64_t max_active_clusters(Kernel kernel, int block, size_t smem, int cluster) {
  struct Entry {
    int device;
    const void* kernel;
    int block;
    size_t smem;
    int cluster;
    int64_t clusters;
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  const void* key = reinterpret_cast<const void*>(kernel);
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const Entry& e : cache) {
      if (e.device == device && e.kernel == key && e.block == block && e.smem == smem && e.cluster == cluster) {
        return e.clusters;
      }
    }
  }
  int64_t clusters = 0;
  if (cluster == 1) {
    clusters = count_resident_ctas(kernel, block, smem, device);
  } else {
    if (allow_shared_memory(kernel, smem) != cudaSuccess || allow_cluster_size(kernel, cluster) != cudaSuccess) {
      return 0;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(cluster);
    config.blockDim = dim3(block);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = cluster;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    config.attrs = &attr;
    config.numAttrs = 1;
    int active = 0;
    if (cudaOccupancyMaxActiveClusters(&active, kernel, &config) != cudaSuccess) return 0;
    clusters = active;
  }
  std::lock_guard<std::mutex> lock(mutex);
  cache.push_back({device, key, block, smem, cluster, clusters});
  return clusters;
}

// The grid of a persistent kernel, in clusters: as many as run at once (max_active_clusters),
// at most `at_most` (>= 1); 0 on error.
template <typename Kernel>
int64_t persistent_clusters(Kernel kernel, int block, size_t smem, int cluster, int64_t at_most) {
  const int64_t clusters = max_active_clusters(kernel, block, smem, cluster);
  return clusters < at_most ? clusters : at_most;
}

// The largest cluster a launch of `Kernel` may take: `wanted` (beyond the portable 8)
// where the device runs one at `block` threads and `smem` bytes, else max_cluster_size().
// Probe at the most shared memory the kernel's launches take: a probe at less could pass
// where the largest launch does not fit. Once per device and kernel.
template <auto Kernel>
int largest_cluster(int block, size_t smem, int wanted) {
  static std::atomic<int> cached[kMaxDevices];
  const int portable = max_cluster_size();
  if (portable < 2) return portable;
  return once_per_device(cached, portable, [&](int) {
    return max_active_clusters(Kernel, block, smem, wanted) > 0 ? wanted : portable;
  });
}

// Calls f(std::integral_constant<int, C>{}) for the chunk count C (a power of two up
// to MAX) that a launch chose: the one switch from a runtime count to a kernel.
template <int MAX, typename F>
cudaError_t dispatch_chunks(int chunks, F&& f) {
  switch (chunks) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      if constexpr (MAX >= 2) return f(std::integral_constant<int, 2>{});
      break;
    case 4:
      if constexpr (MAX >= 4) return f(std::integral_constant<int, 4>{});
      break;
    case 8:
      if constexpr (MAX >= 8) return f(std::integral_constant<int, 8>{});
      break;
  }
  return cudaErrorInvalidConfiguration;
}

// The weight's `vec` elements at `col` as float, or ones without a weight.
template <int VEC, typename W>
__device__ __forceinline__ void load_weight(const W* weight, int64_t col, float (&w)[VEC]) {
  if (weight != nullptr) {
    load_as_float<VEC>(weight + col, w);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) w[j] = 1.f;
  }
}

// Asynchronous global -> shared copies (sm_80+): they keep loads in flight without
// holding registers. A thread that reads back only what it copied itself needs no
// barrier, just wait_async_copies.
template <int BYTES>
__device__ __forceinline__ void copy_async(void* shared, const void* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global) : "memory");
  } else if constexpr (BYTES == 8 || BYTES == 4) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(global), "n"(BYTES) : "memory");
  } else {
    static_assert(BYTES == 2, "copy_async: 2, 4, 8 or 16 bytes");
    *static_cast<unsigned short*>(shared) = *static_cast<const unsigned short*>(global);
  }
#else
  static_assert(BYTES <= 16, "copy_async: at most 16 bytes");
  struct alignas(BYTES) Bytes { unsigned char b[BYTES]; };
  *static_cast<Bytes*>(shared) = *static_cast<const Bytes*>(global);
#endif
}

__device__ __forceinline__ void commit_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `pending` of this thread's committed groups are still in flight.
__device__ __forceinline__ void wait_async_copies(int pending) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
#endif
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Which writes a completed mbarrier phase makes visible to the waiting thread.
// kCluster: peers' st.async (a release at cluster scope; a .cta acquire would not formally
// pair with it). kCta: bulk copies into this CTA's own shared memory, as CUTLASS's TMA
// pipelines wait; the cluster-scope acquire costs an L1 invalidate (CCTL.IVALL) a wait.
enum class WaitScope { kCta, kCluster };

// Blocks until the phase of `parity` of the mbarrier at `barrier` completes. A plain `bra`:
// try_wait's result need not be uniform across the warp.
template <WaitScope kScope>
__device__ __forceinline__ void wait_mbarrier_phase(unsigned barrier, int parity) {
  if constexpr (kScope == WaitScope::kCluster) {
    asm volatile(
        "{\n .reg .pred done;\n"
        "MBARRIER_WAIT:\n"
        " mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
        " @!done bra MBARRIER_WAIT;\n}\n" ::"r"(barrier), "r"(parity)
        : "memory");
  } else {
    asm volatile(
        "{\n .reg .pred done;\n"
        "MBARRIER_WAIT:\n"
        " mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
        " @!done bra MBARRIER_WAIT;\n}\n" ::"r"(barrier), "r"(parity)
        : "memory");
  }
}

__device__ __forceinline__ void init_mbarrier(unsigned barrier, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(barrier), "r"(arrivals) : "memory");
}

// One arrival on the mbarrier, which then also waits for `bytes` more of copies to land.
__device__ __forceinline__ void arrive_expecting_bytes(unsigned barrier, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier), "r"(bytes) : "memory");
}

// A bulk copy (the TMA unit, no per-thread requests) of `bytes` (a multiple of 16, both
// addresses 16-byte aligned) from global into this CTA's shared memory, completing
// `bytes` on the mbarrier. One thread issues it for the whole CTA.
__device__ __forceinline__ void bulk_copy_to_shared(void* shared, const void* global, int bytes, unsigned barrier) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          shared_address(shared)),
      "l"(global), "r"(bytes), "r"(barrier)
      : "memory");
}

// The cluster barrier, in two halves: a CTA may write a peer's shared memory only once
// every CTA of the cluster runs (arrive early, wait just before the first remote write).
__device__ __forceinline__ void arrive_at_cluster_barrier() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wait_at_cluster_barrier() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }

// Makes this thread's mbarrier inits visible to the peers that pass the relaxed cluster barrier.
__device__ __forceinline__ void fence_mbarrier_inits() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned rank;
  asm("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  return rank;
}

// Stores `v` into CTA `peer` of the cluster, at the address of its shared memory that
// `local` is in this CTA's, with st.async: the 4 bytes complete on the peer's mbarrier
// at the address `landed` is here (release semantics at cluster scope).
__device__ __forceinline__ void store_to_peer(unsigned local, unsigned landed, unsigned peer, float v) {
  unsigned remote, remote_landed;
  asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(peer));
  asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote_landed) : "r"(landed), "r"(peer));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(remote),
               "r"(__float_as_uint(v)), "r"(remote_landed)
               : "memory");
}

// Orders this CTA's earlier generic accesses to shared memory before later bulk copies
// into it (the copies write through the async proxy).
__device__ __forceinline__ void fence_shared_for_bulk_copies() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

}  // namespace jax_rmsnorm
