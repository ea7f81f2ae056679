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

// Packed accesses go through one machine word of their size: copying the struct
// member by member would leave 16-bit bf16/f16 accesses (8 per 16 bytes) that the
// compiler does not always merge, e.g. from shared memory.
template <int BYTES> struct MachineWord;
template <> struct MachineWord<16> { using type = uint4; };
template <> struct MachineWord<8> { using type = uint2; };
template <> struct MachineWord<4> { using type = unsigned int; };
template <> struct MachineWord<2> { using type = unsigned short; };

template <typename T, int N>
using WordOf = typename MachineWord<sizeof(Packed<T, N>)>::type;

// A load kept as its machine word: nothing waits on it until it is unpacked.
template <typename T, int N>
__device__ __forceinline__ WordOf<T, N> load_word(const T* p) {
  return *reinterpret_cast<const WordOf<T, N>*>(p);
}

// load_word, or zeros when !ok. A 16-byte word comes from one predicated load whose
// outputs are 32-bit words: written as a select, the compiler merged it into the 16-bit
// halves as soon as the load returned, so that code waited for the load before any
// later load could be issued (benchmarks/NOTES.md, entry 17).
template <typename T, int N>
__device__ __forceinline__ WordOf<T, N> load_word_or_zero(const T* p, bool ok) {
  if constexpr (sizeof(WordOf<T, N>) == 16) {
    uint4 w;
    asm("{\n .reg .pred ok;\n setp.ne.b32 ok, %4, 0;\n"
        " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
        " @ok ld.global.v4.u32 {%0, %1, %2, %3}, [%5];\n}\n"
        : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w)
        : "r"(int(ok)), "l"(p));
    return w;
  } else {
    return ok ? load_word<T, N>(p) : WordOf<T, N>{};
  }
}

template <typename T, int N>
__device__ __forceinline__ Packed<T, N> unpack(const WordOf<T, N>& word) {
  Packed<T, N> v;
  memcpy(&v, &word, sizeof(word));
  return v;
}

template <typename T, int N>
__device__ __forceinline__ Packed<T, N> load_packed(const T* p) {
  return unpack<T, N>(load_word<T, N>(p));
}

// Stores (global memory only) assemble the 32-bit words and store them with one
// instruction: given the struct, or even a uint4, the compiler split 16-byte stores
// into four 4-byte ones.
template <typename T, int N>
__device__ __forceinline__ void store_packed(T* p, const Packed<T, N>& v) {
  constexpr int kWords = sizeof(Packed<T, N>) / 4;
  if constexpr (kWords > 4) {  // a float32 output of a 16-byte bf16/f16 vector: 2 x 16 bytes
    static_assert(kWords % 4 == 0, "whole 16-byte pieces");
    constexpr int kPiece = 16 / sizeof(T);
#pragma unroll
    for (int i = 0; i < N; i += kPiece) {
      Packed<T, kPiece> piece;
#pragma unroll
      for (int j = 0; j < kPiece; ++j) piece.v[j] = v.v[i + j];
      store_packed(p + i, piece);
    }
  } else if constexpr (kWords == 0) {
    *p = v.v[0];
  } else {
    unsigned int w[kWords];
    memcpy(w, &v, sizeof(w));
    if constexpr (kWords == 4) {
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]),
                   "r"(w[3])
                   : "memory");
    } else if constexpr (kWords == 2) {
      asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(p), "r"(w[0]), "r"(w[1]) : "memory");
    } else {
      *reinterpret_cast<unsigned int*>(p) = w[0];
    }
  }
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

// load_as_float, or ones when !ok, without a branch: predicated loads (load_word_or_zero) and
// selects. `p` is never dereferenced when !ok.
template <int N, typename T>
__device__ __forceinline__ void load_as_float_or_one(const T* p, bool ok, float (&out)[N]) {
  constexpr int kPiece = (N * sizeof(T) > 16) ? 16 / sizeof(T) : N;
#pragma unroll
  for (int i = 0; i < N; i += kPiece) {
    const Packed<T, kPiece> piece = unpack<T, kPiece>(load_word_or_zero<T, kPiece>(p + i, ok));
#pragma unroll
    for (int j = 0; j < kPiece; ++j) out[i + j] = ok ? to_float(piece.v[j]) : 1.f;
  }
}

}  // namespace jax_rmsnorm
