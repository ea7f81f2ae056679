// XLA FFI handlers for the CPU platform.
#include "cpu/rms_norm_cpu.h"
#include "ffi/calls.h"
#include "ffi/handlers.h"

namespace jax_rmsnorm {

static ffi::Error RunFwdCpu(float eps, bool has_residual, bool has_weight, bool save_rstd, bool v2,
                            bool round_normalized, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  FwdProblem p;
  ffi::Error error = decode_fwd_call(args, rets, eps, has_residual, has_weight, save_rstd, p, v2,
                                     round_normalized);
  if (error.failure()) return error;
  rms_norm_fwd_cpu(p);
  return ffi::Error::Success();
}

static ffi::Error RmsNormFwdCpu(float eps, bool has_residual, bool has_weight, bool save_rstd,
                                ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return RunFwdCpu(eps, has_residual, has_weight, save_rstd, false, false, args, rets);
}

static ffi::Error RmsNormFwdCpuV2(float eps, bool has_residual, bool has_weight, bool save_rstd,
                                  bool round_normalized, ffi::RemainingArgs args,
                                  ffi::RemainingRets rets) {
  return RunFwdCpu(eps, has_residual, has_weight, save_rstd, true, round_normalized, args, rets);
}

static ffi::Error RmsNormBwdCpu(bool has_weight, bool has_residual_grad, bool want_dweight,
                                int64_t ctas_per_weight_row, ffi::RemainingArgs args,
                                ffi::RemainingRets rets) {
  BwdProblem p;
  ffi::Error error = decode_bwd_call(args, rets, has_weight, has_residual_grad, want_dweight,
                                     ctas_per_weight_row, p);
  if (error.failure()) return error;
  rms_norm_bwd_cpu(p);
  return ffi::Error::Success();
}

}  // namespace jax_rmsnorm

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cpu, jax_rmsnorm::RmsNormFwdCpu,
                              xla::ffi::Ffi::Bind()
                                  .Attr<float>("eps")
                                  .Attr<bool>("has_residual")
                                  .Attr<bool>("has_weight")
                                  .Attr<bool>("save_rstd")
                                  .RemainingArgs()    // x, [residual], [weight]
                                  .RemainingRets());  // y, [residual_out], [rstd]

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_v2_cpu, jax_rmsnorm::RmsNormFwdCpuV2,
                              xla::ffi::Ffi::Bind()
                                  .Attr<float>("eps")
                                  .Attr<bool>("has_residual")
                                  .Attr<bool>("has_weight")
                                  .Attr<bool>("save_rstd")
                                  .Attr<bool>("round_normalized")
                                  .RemainingArgs()    // x, [residual], [weight]
                                  .RemainingRets());  // y (x's dtype or f32), [residual_out], [rstd]

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_bwd_cpu, jax_rmsnorm::RmsNormBwdCpu,
                              xla::ffi::Ffi::Bind()
                                  .Attr<bool>("has_weight")
                                  .Attr<bool>("has_residual_grad")
                                  .Attr<bool>("want_dweight")
                                  .Attr<int64_t>("ctas_per_weight_row")
                                  .RemainingArgs()    // dy, s, rstd, [weight], [d_new_residual]
                                  .RemainingRets());  // dx, [dweight, dweight_partials]
