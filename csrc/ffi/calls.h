// Turns the buffers and attributes XLA hands a handler into a checked FwdProblem or
// BwdProblem. Shared by the CPU and CUDA handlers, so both reject the same calls.
//
// Forward operands: x, [residual], [weight]; results: y, [residual_out], [rstd].
// Backward operands: dy, s, rstd, [weight], [d_new_residual];
//          results: dx, [dweight, dweight_partials].
// x, s: [..., hidden] (f32, bf16, f16); residual, y, residual_out, dy, dx,
// d_new_residual: like x; weight, dweight: [*lead, hidden] where lead is a prefix of
// x's leading dims (vmap of a batched weight); rstd: x's leading dims, float32;
// dweight_partials: [*lead, ctas_per_weight_row, hidden], float32.
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
  return ffi::Error::InvalidArgument("jax_rmsnorm: " + what);
}

// Whether b's shape is x's leading dims (a per-row buffer such as rstd).
inline bool has_leading_dims(const ffi::AnyBuffer& b, const ffi::AnyBuffer& x) {
  const auto dims = x.dimensions(), bdims = b.dimensions();
  if (bdims.size() + 1 != dims.size()) return false;
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    if (bdims[i] != dims[i]) return false;
  }
  return true;
}

// Rows and hidden size of x, or an error for a rank-0 or unsupported x.
inline ffi::Error decode_rows(const ffi::AnyBuffer& x, const char* name, int64_t& rows,
                              int64_t& hidden, DType& dtype) {
  const auto dims = x.dimensions();
  const std::optional<DType> x_dtype = to_dtype(x.element_type());
  if (dims.size() < 1) return invalid(std::string(name) + " must have rank >= 1");
  if (!x_dtype) return invalid(std::string(name) + " must be float32, bfloat16 or float16");
  dtype = *x_dtype;
  hidden = dims.back();
  rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) rows *= dims[i];
  return ffi::Error::Success();
}

// The weight [*lead, hidden]: its dtype, how many weight rows, how many x rows each.
inline ffi::Error decode_weight(const ffi::AnyBuffer& weight, const ffi::AnyBuffer& x, int64_t rows,
                                int64_t hidden, DType& dtype, int64_t& weight_rows,
                                int64_t& rows_per_weight) {
  const auto dims = x.dimensions(), wdims = weight.dimensions();
  const std::optional<DType> w_dtype = to_dtype(weight.element_type());
  if (!w_dtype) return invalid("weight must be float32, bfloat16 or float16");
  if (wdims.size() < 1 || wdims.size() > dims.size() || wdims.back() != hidden) {
    return invalid("weight must have shape [*lead, hidden] with hidden = x.shape[-1]");
  }
  weight_rows = 1;
  for (size_t i = 0; i + 1 < wdims.size(); ++i) {
    if (wdims[i] != dims[i]) return invalid("weight's leading dims must be a prefix of x's");
    weight_rows *= wdims[i];
  }
  dtype = *w_dtype;
  rows_per_weight = weight_rows > 0 ? rows / weight_rows : 0;
  return ffi::Error::Success();
}

// `v2` calls (the `*_fwd_v2` targets) may ask for the HF order and a y of another dtype
// (float32 from bf16/f16, bf16/f16 from float32); v1 calls (older exports) decode as before.
inline ffi::Error decode_fwd_call(ffi::RemainingArgs args, ffi::RemainingRets rets, float eps,
                                  bool has_residual, bool has_weight, bool save_rstd,
                                  FwdProblem& p, bool v2 = false, bool round_normalized = false) {
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
  ffi::Error error = decode_rows(x, "x", p.rows, p.hidden, p.x_dtype);
  if (error.failure()) return error;
  p.x = x.untyped_data();

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
    int64_t weight_rows = 1;
    error = decode_weight(weight, x, p.rows, p.hidden, p.weight_dtype, weight_rows, p.rows_per_weight);
    if (error.failure()) return error;
    p.weight = weight.untyped_data();
  }

  ffi::Result<ffi::AnyBuffer> y = rets.get<ffi::AnyBuffer>(ret++).value();
  const std::optional<DType> y_dtype = to_dtype(y->element_type());
  // v2: y in x's dtype, in float32, or from a float32 x in bfloat16 or float16.
  const bool y_ok = same_shape(*y, x) && y_dtype &&
                    (*y_dtype == p.x_dtype || (v2 && (*y_dtype == DType::kF32 || p.x_dtype == DType::kF32)));
  if (!y_ok) {
    return invalid(v2 ? "y must have the shape of x and x's dtype, float32, or (from float32 x) bfloat16 or float16"
                      : "y must have the shape and dtype of x");
  }
  p.y = y->untyped_data();
  p.y_dtype = *y_dtype;
  p.round_normalized = round_normalized;
  if (has_residual) {
    ffi::Result<ffi::AnyBuffer> residual_out = rets.get<ffi::AnyBuffer>(ret++).value();
    if (!like_x(*residual_out)) return invalid("residual_out must have the shape and dtype of x");
    p.residual_out = residual_out->untyped_data();
  }
  if (save_rstd) {
    ffi::Result<ffi::AnyBuffer> rstd = rets.get<ffi::AnyBuffer>(ret++).value();
    if (rstd->element_type() != ffi::DataType::F32 || !has_leading_dims(*rstd, x)) {
      return invalid("rstd must be float32 with x's leading dims");
    }
    p.rstd = static_cast<float*>(rstd->untyped_data());
  }
  return ffi::Error::Success();
}

inline ffi::Error decode_bwd_call(ffi::RemainingArgs args, ffi::RemainingRets rets, bool has_weight,
                                  bool has_residual_grad, bool want_dweight,
                                  int64_t ctas_per_weight_row, BwdProblem& p,
                                  bool round_normalized = false) {
  const size_t want_args = 3 + size_t(has_weight) + size_t(has_residual_grad);
  // Without dweight the partials may still come, as the row-tile kernel's exchange
  // scratch (bwd_exchanges_in_partials); calls lowered before they did have dx alone.
  const size_t want_rets = 1 + 2 * size_t(want_dweight);
  const bool scratch_partials = !want_dweight && rets.size() == 2;
  if (args.size() != want_args || (rets.size() != want_rets && !scratch_partials) ||
      (want_dweight && !has_weight)) {
    return invalid("backward: expected " + std::to_string(want_args) + " operands and " +
                   std::to_string(want_rets) + " results, got " + std::to_string(args.size()) +
                   " and " + std::to_string(rets.size()));
  }
  if (ctas_per_weight_row < 1) return invalid("backward: ctas_per_weight_row must be >= 1");
  p.ctas_per_weight_row = ctas_per_weight_row;
  p.round_normalized = round_normalized;  // v2 only

  size_t arg = 0, ret = 0;
  const ffi::AnyBuffer dy = args.get<ffi::AnyBuffer>(arg++).value();
  const ffi::AnyBuffer s = args.get<ffi::AnyBuffer>(arg++).value();
  const ffi::AnyBuffer rstd = args.get<ffi::AnyBuffer>(arg++).value();
  ffi::Error error = decode_rows(s, "s", p.rows, p.hidden, p.x_dtype);
  if (error.failure()) return error;
  auto like_s = [&](const ffi::AnyBuffer& b) {
    return same_shape(b, s) && b.element_type() == s.element_type();
  };
  if (!like_s(dy)) return invalid("backward: dy must have the shape and dtype of x");
  if (rstd.element_type() != ffi::DataType::F32 || !has_leading_dims(rstd, s)) {
    return invalid("backward: rstd must be float32 with x's leading dims");
  }
  p.dy = dy.untyped_data();
  p.s = s.untyped_data();
  p.rstd = static_cast<const float*>(rstd.untyped_data());
  p.weight_dtype = p.x_dtype;
  p.rows_per_weight = p.rows;
  std::optional<ffi::AnyBuffer> weight;
  if (has_weight) {
    weight = args.get<ffi::AnyBuffer>(arg++).value();
    error = decode_weight(*weight, s, p.rows, p.hidden, p.weight_dtype, p.weight_rows, p.rows_per_weight);
    if (error.failure()) return error;
    p.weight = weight->untyped_data();
  }
  if (has_residual_grad) {
    const ffi::AnyBuffer d_new_residual = args.get<ffi::AnyBuffer>(arg++).value();
    if (!like_s(d_new_residual)) return invalid("backward: d_new_residual must have the shape and dtype of x");
    p.d_new_residual = d_new_residual.untyped_data();
  }

  ffi::Result<ffi::AnyBuffer> dx = rets.get<ffi::AnyBuffer>(ret++).value();
  if (!like_s(*dx)) return invalid("backward: dx must have the shape and dtype of x");
  p.dx = dx->untyped_data();
  if (want_dweight) {
    ffi::Result<ffi::AnyBuffer> dweight = rets.get<ffi::AnyBuffer>(ret++).value();
    if (!same_shape(*dweight, *weight) || dweight->element_type() != weight->element_type()) {
      return invalid("backward: dweight must have the shape and dtype of weight");
    }
    p.dweight = dweight->untyped_data();
  }
  if (want_dweight || scratch_partials) {
    ffi::Result<ffi::AnyBuffer> partials = rets.get<ffi::AnyBuffer>(ret++).value();
    // [*weight lead, ctas_per_weight_row, hidden]; no weight: no lead.
    const auto pdims = partials->dimensions();
    const size_t lead = has_weight ? weight->dimensions().size() - 1 : 0;
    bool ok = partials->element_type() == ffi::DataType::F32 && pdims.size() == lead + 2 &&
              pdims[lead] == ctas_per_weight_row && pdims.back() == p.hidden;
    for (size_t i = 0; ok && i < lead; ++i) ok = pdims[i] == weight->dimensions()[i];
    if (!ok) return invalid("backward: dweight_partials must be float32 [*lead, ctas_per_weight_row, hidden]");
    p.dweight_partials = static_cast<float*>(partials->untyped_data());
  }
  return ffi::Error::Success();
}

// The attributes of each target, after its context (XLA's thread pool or the CUDA stream):
// one list for the CPU and CUDA handlers and for each target's v1 and v2, which appends its
// own. Operands then results follow as RemainingArgs / RemainingRets (see the top).
template <typename Context>
auto bind_fwd_attrs() {
  return ffi::Ffi::Bind()
      .Ctx<Context>()
      .template Attr<float>("eps")
      .template Attr<bool>("has_residual")
      .template Attr<bool>("has_weight")
      .template Attr<bool>("save_rstd");
}

template <typename Context>
auto bind_bwd_attrs() {
  return ffi::Ffi::Bind()
      .Ctx<Context>()
      .template Attr<bool>("has_weight")
      .template Attr<bool>("has_residual_grad")
      .template Attr<bool>("want_dweight")
      .template Attr<int64_t>("ctas_per_weight_row");
}

}  // namespace jax_rmsnorm
