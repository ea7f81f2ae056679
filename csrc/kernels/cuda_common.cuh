// Host-side helpers shared by the CUDA kernel files: the dtype map, pointer checks,
// one launch function.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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

template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, int cluster,
                   cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[1];
  if (cluster > 1) {
    attrs[0].id = cudaLaunchAttributeClusterDimension;
    attrs[0].val.clusterDim.x = cluster;
    attrs[0].val.clusterDim.y = 1;
    attrs[0].val.clusterDim.z = 1;
    config.attrs = attrs;
    config.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&config, kernel, args...);
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

}  // namespace jax_rmsnorm
