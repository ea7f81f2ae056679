// XLA FFI handlers for the CPU platform.
#include "cpu/rms_norm_cpu.h"
#include "ffi/fwd_call.h"
#include "ffi/handlers.h"

namespace jax_rmsnorm {

static ffi::Error RmsNormFwdCpu(float eps, bool has_residual, bool has_weight, bool save_rstd,
                                ffi::RemainingArgs args, ffi::RemainingRets rets) {
  FwdProblem p;
  ffi::Error error = decode_fwd_call(args, rets, eps, has_residual, has_weight, save_rstd, p);
  if (error.failure()) return error;
  rms_norm_fwd_cpu(p);
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
