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
  int64_t rows_per_weight = 1;  // 0 when there are no rows
  float eps = 0.f;
  DType x_dtype = DType::kF32;  // also the dtype of residual and residual_out
  // y's dtype, set with x_dtype: x's; float32 from bf16/f16 x; bf16/f16 from float32 x.
  DType y_dtype = DType::kF32;
  DType weight_dtype = DType::kF32;  // ignored without weight
  // HF/Llama order: y = round(round_x(s * rstd) * weight), the normalized row rounded to
  // x's dtype before the weight; otherwise one rounding at the end.
  bool round_normalized = false;
};

// The backward pass of FwdProblem, given the saved rstd. With n = s * rstd and
// g = dy * weight: ds = rstd * (g - n * mean(g * n)) (+ d_new_residual), written to dx;
// dweight = sum over the rows sharing a weight row of dy * n, in float32.
// dweight is reduced deterministically: each of `ctas_per_weight_row` CTAs writes its
// float32 partial row to dweight_partials [weight_rows * ctas_per_weight_row, hidden],
// then a second kernel sums the partials in a fixed order.
struct BwdProblem {
  const void* dy = nullptr;
  const void* s = nullptr;  // x, or new_residual for the fused op
  const float* rstd = nullptr;
  const void* weight = nullptr;
  const void* d_new_residual = nullptr;  // the cotangent of new_residual, added to dx
  void* dx = nullptr;
  void* dweight = nullptr;  // [weight_rows, hidden] in the weight dtype; null: not wanted
  float* dweight_partials = nullptr;
  int64_t rows = 0;
  int64_t hidden = 0;
  int64_t rows_per_weight = 1;
  int64_t weight_rows = 1;
  int64_t ctas_per_weight_row = 1;
  DType x_dtype = DType::kF32;
  DType weight_dtype = DType::kF32;
  // The HF order's forward (FwdProblem::round_normalized): dweight sums dy * round_x(n), the
  // derivative of round_x(n) * weight; dx is unchanged (the rounding passes gradients
  // straight through). The identity for float32 rows.
  bool round_normalized = false;
};

}  // namespace jax_rmsnorm
