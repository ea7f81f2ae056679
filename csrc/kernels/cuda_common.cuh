// Host-side helpers shared by the CUDA kernel files: the dtype map, pointer checks,
// one launch function.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
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

// Thread-block clusters need sm_90; cached per device (the query is cheap, but the
// handler runs on every call).
inline int max_cluster_size() {
  static std::atomic<int> cached[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  if (device < 0 || device >= 64) return 1;
  int value = cached[device].load(std::memory_order_relaxed);
  if (value == 0) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    value = major >= 9 ? 8 : 1;
    cached[device].store(value, std::memory_order_relaxed);
  }
  return value;
}

// Dynamic shared memory beyond the default 48 KB must be opted into, per kernel.
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t smem) {
  if (smem <= (48 << 10)) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

// One launch path for every kernel: cluster dimension, cooperative launch (every CTA
// resident at once, for kernels whose CTAs wait on each other), dynamic shared memory
// beyond the default 48 KB and clusters beyond the portable 8 are opted into here.
template <typename Kernel, typename... Args>
cudaError_t launch_with(Kernel kernel, dim3 grid, dim3 block, size_t smem, int cluster, bool cooperative,
                        cudaStream_t stream, Args... args) {
  const cudaError_t opted_in = allow_shared_memory(kernel, smem);
  if (opted_in != cudaSuccess) return opted_in;
  if (cluster > 8) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return e;
  }
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

// How many CTAs of `Kernel` (with `block` threads and `smem` bytes) the device holds at
// once: the most a cooperative launch may have. Cached per kernel (a template argument,
// so each instantiation has its own cache: kernels of one signature share a pointer
// type) and device; each kernel is launched with one block and smem size.
template <auto Kernel>
int64_t resident_ctas(int block, size_t smem) {
  static std::atomic<int64_t> cached[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 0;
  int64_t value = cached[device].load(std::memory_order_relaxed);
  if (value == 0) {
    int per_sm = 0, sms = 0;
    if (allow_shared_memory(Kernel, smem) != cudaSuccess) return 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, block, smem) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 0;
    }
    value = int64_t{per_sm} * sms;
    cached[device].store(value, std::memory_order_relaxed);
  }
  return value;
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

}  // namespace jax_rmsnorm
