// Turns the buffers and attributes XLA hands a forward handler into a checked
// FwdProblem. Shared by the CPU and CUDA handlers, so both reject the same calls.
//
// Operands: x, [residual], [weight]; results: y, [residual_out], [rstd].
// x: [..., hidden] (f32, bf16, f16); residual, y, residual_out: like x;
// weight: [*lead, hidden] where lead is a prefix of x's leading dims (vmap of a
// batched weight); rstd: x's leading dims, float32.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "kernels/problem.h"
#include "xla/ffi/api/ffi.h"

namespace jax_rmsnorm {

namespace ffi = xla::ffi;

inline std::optional<DType> to_dtype(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return DType::kF32;
    case ffi::DataType::BF16: return DType::kBF16;
    case ffi::DataType::F16: return DType::kF16;
    default: return std::nullopt;
  }
}

inline bool same_shape(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  const auto da = a.dimensions(), db = b.dimensions();
  if (da.size() != db.size()) return false;
  for (size_t i = 0; i < da.size(); ++i) {
    if (da[i] != db[i]) return false;
  }
  return true;
}

inline ffi::Error invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("jax_rmsnorm forward: " + what);
}

inline ffi::Error decode_fwd_call(ffi::RemainingArgs args, ffi::RemainingRets rets, float eps,
                                  bool has_residual, bool has_weight, bool save_rstd,
                                  FwdProblem& p) {
  const size_t want_args = 1 + size_t(has_residual) + size_t(has_weight);
  const size_t want_rets = 1 + size_t(has_residual) + size_t(save_rstd);
  if (args.size() != want_args || rets.size() != want_rets) {
    return invalid("expected " + std::to_string(want_args) + " operands and " +
                   std::to_string(want_rets) + " results, got " + std::to_string(args.size()) +
                   " and " + std::to_string(rets.size()));
  }
  if (!(std::isfinite(eps) && eps >= 0.f)) return invalid("eps must be finite and >= 0");
  p.eps = eps;

  size_t arg = 0, ret = 0;
  const ffi::AnyBuffer x = args.get<ffi::AnyBuffer>(arg++).value();
  const auto dims = x.dimensions();
  const std::optional<DType> x_dtype = to_dtype(x.element_type());
  if (dims.size() < 1) return invalid("x must have rank >= 1");
  if (!x_dtype) return invalid("x must be float32, bfloat16 or float16");
  p.x = x.untyped_data();
  p.x_dtype = *x_dtype;
  p.hidden = dims.back();
  p.rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) p.rows *= dims[i];

  auto like_x = [&](const ffi::AnyBuffer& b) {
    return same_shape(b, x) && b.element_type() == x.element_type();
  };
  if (has_residual) {
    const ffi::AnyBuffer residual = args.get<ffi::AnyBuffer>(arg++).value();
    if (!like_x(residual)) return invalid("residual must have the shape and dtype of x");
    p.residual = residual.untyped_data();
  }
  p.weight_dtype = p.x_dtype;
  if (has_weight) {
    const ffi::AnyBuffer weight = args.get<ffi::AnyBuffer>(arg++).value();
    const auto wdims = weight.dimensions();
    const std::optional<DType> w_dtype = to_dtype(weight.element_type());
    if (!w_dtype) return invalid("weight must be float32, bfloat16 or float16");
    if (wdims.size() < 1 || wdims.size() > dims.size() || wdims.back() != p.hidden) {
      return invalid("weight must have shape [*lead, hidden] with hidden = x.shape[-1]");
    }
    int64_t weight_rows = 1;
    for (size_t i = 0; i + 1 < wdims.size(); ++i) {
      if (wdims[i] != dims[i]) return invalid("weight's leading dims must be a prefix of x's");
      weight_rows *= wdims[i];
    }
    p.weight = weight.untyped_data();
    p.weight_dtype = *w_dtype;
    p.rows_per_weight = weight_rows > 0 && p.rows > 0 ? p.rows / weight_rows : 1;
  }

  ffi::Result<ffi::AnyBuffer> y = rets.get<ffi::AnyBuffer>(ret++).value();
  if (!like_x(*y)) return invalid("y must have the shape and dtype of x");
  p.y = y->untyped_data();
  if (has_residual) {
    ffi::Result<ffi::AnyBuffer> residual_out = rets.get<ffi::AnyBuffer>(ret++).value();
    if (!like_x(*residual_out)) return invalid("residual_out must have the shape and dtype of x");
    p.residual_out = residual_out->untyped_data();
  }
  if (save_rstd) {
    ffi::Result<ffi::AnyBuffer> rstd = rets.get<ffi::AnyBuffer>(ret++).value();
    const auto rdims = rstd->dimensions();
    bool ok = rstd->element_type() == ffi::DataType::F32 && rdims.size() + 1 == dims.size();
    for (size_t i = 0; ok && i < rdims.size(); ++i) ok = rdims[i] == dims[i];
    if (!ok) return invalid("rstd must be float32 with x's leading dims");
    p.rstd = static_cast<float*>(rstd->untyped_data());
  }
  return ffi::Error::Success();
}

}  // namespace jax_rmsnorm
