// Framework-free description of one RMSNorm call: raw pointers, sizes and dtypes.
// The FFI glue (csrc/ffi) fills it in; the CPU and CUDA kernels read it.
#pragma once

#include <cstdint>

namespace jax_rmsnorm {

enum class DType : int { kF32, kBF16, kF16 };

inline int dtype_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// y = x * rsqrt(mean(x^2) + eps) * weight over each row of `hidden` elements.
// With `residual`, the normalized row is s = round(x + residual), which is also
// written to `residual_out`. Optional pointers are null when absent.
struct FwdProblem {
  const void* x = nullptr;
  const void* residual = nullptr;
  const void* weight = nullptr;  // [weight_rows, hidden]; row r uses r / rows_per_weight
  void* y = nullptr;
  void* residual_out = nullptr;
  float* rstd = nullptr;  // [rows], float32, saved for the backward pass
  int64_t rows = 0;
  int64_t hidden = 0;
  int64_t rows_per_weight = 1;
  float eps = 0.f;
  DType x_dtype = DType::kF32;       // also the dtype of residual, y and residual_out
  DType weight_dtype = DType::kF32;  // ignored without weight
};

}  // namespace jax_rmsnorm
