// Element conversions and vector memory access shared by every CUDA kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace jax_rmsnorm {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N consecutive elements moved as one access: 16 bytes for full vectors.
template <typename T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Packed<T, N> load_packed(const T* p) {
  return *reinterpret_cast<const Packed<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_packed(T* p, const Packed<T, N>& v) {
  *reinterpret_cast<Packed<T, N>*>(p) = v;
}

// Loads N consecutive elements as float, in accesses of at most 16 bytes (a float32
// weight beside a bf16 row needs two). The caller guarantees the alignment.
template <int N, typename T>
__device__ __forceinline__ void load_as_float(const T* p, float (&out)[N]) {
  constexpr int kPiece = (N * sizeof(T) > 16) ? 16 / sizeof(T) : N;
#pragma unroll
  for (int i = 0; i < N; i += kPiece) {
    const Packed<T, kPiece> piece = load_packed<T, kPiece>(p + i);
#pragma unroll
    for (int j = 0; j < kPiece; ++j) out[i + j] = to_float(piece.v[j]);
  }
}

}  // namespace jax_rmsnorm
