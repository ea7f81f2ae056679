// bfloat16 and float16 storage types for the CPU kernels, with round-to-nearest-even
// conversions from float (NaN stays NaN, overflow goes to infinity).
#pragma once

#include <cstdint>
#include <cstring>

// Helpers of the CPU row loops are always inlined: a call out of a multiversioned loop
// (rms_norm_cpu.h) runs the baseline code, and GCC's inlining choice alone was found to
// change with unrelated code in the same file (benchmarks/NOTES.md, entry 37).
#if defined(__GNUC__)
#define JAX_RMSNORM_ALWAYS_INLINE __attribute__((always_inline))
#else
#define JAX_RMSNORM_ALWAYS_INLINE
#endif

namespace jax_rmsnorm {

JAX_RMSNORM_ALWAYS_INLINE inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

JAX_RMSNORM_ALWAYS_INLINE inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

struct BFloat16 {
  uint16_t bits;
};

struct Float16 {
  uint16_t bits;
};

JAX_RMSNORM_ALWAYS_INLINE inline float to_float(float v) { return v; }
JAX_RMSNORM_ALWAYS_INLINE inline float to_float(BFloat16 v) { return bits_float(uint32_t(v.bits) << 16); }

JAX_RMSNORM_ALWAYS_INLINE inline float to_float(Float16 v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  const uint32_t exponent = (v.bits >> 10) & 0x1fu;
  const uint32_t mantissa = v.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, nan
  if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24 is exact in float.
  const float magnitude = float(mantissa) * bits_float(0x33800000u);
  return sign ? -magnitude : magnitude;
}

template <typename T>
T from_float(float v);

template <>
JAX_RMSNORM_ALWAYS_INLINE inline float from_float<float>(float v) { return v; }

template <>
JAX_RMSNORM_ALWAYS_INLINE inline BFloat16 from_float<BFloat16>(float v) {
  // Branch-free (a select), so that loops over rows vectorize.
  const uint32_t u = float_bits(v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return BFloat16{uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}

template <>
JAX_RMSNORM_ALWAYS_INLINE inline Float16 from_float<Float16>(float v) {
  const uint32_t u = float_bits(v);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return Float16{uint16_t(sign | 0x7e00u)};  // NaN
  if (abs >= 0x477ff000u) return Float16{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // Below the smallest normal half (2^-14): round abs / 2^-24 to an integer, ties to even.
    // Adding 0.5f (2^-1) with float's own rounding does exactly that for values < 2^-14.
    const float scaled = bits_float(abs) + 0.5f;
    return Float16{uint16_t(sign | (float_bits(scaled) - 0x3f000000u))};
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  const uint32_t rebased = abs - (uint32_t(112) << 23);
  const uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
  return Float16{uint16_t(sign | ((rebased + rounding) >> 13))};
}

}  // namespace jax_rmsnorm
