// XLA FFI handlers for the CUDA platform. They only enqueue work on XLA's stream
// (no allocation, no synchronisation), so they are marked command-buffer compatible.
#include "ffi/calls.h"
#include "ffi/handlers.h"
#include "kernels/rms_norm_cuda.h"

namespace jax_rmsnorm {

static ffi::Error RunFwdCuda(cudaStream_t stream, float eps, bool has_residual, bool has_weight,
                             bool save_rstd, bool v2, bool round_normalized,
                             ffi::RemainingArgs args, ffi::RemainingRets rets) {
  FwdProblem p;
  ffi::Error error = decode_fwd_call(args, rets, eps, has_residual, has_weight, save_rstd, p, v2,
                                     round_normalized);
  if (error.failure()) return error;
  const std::string message = rms_norm_fwd_cuda(p, stream);
  if (!message.empty()) return ffi::Error::Internal("jax_rmsnorm forward: " + message);
  return ffi::Error::Success();
}

static ffi::Error RmsNormFwdCuda(cudaStream_t stream, float eps, bool has_residual,
                                 bool has_weight, bool save_rstd, ffi::RemainingArgs args,
                                 ffi::RemainingRets rets) {
  return RunFwdCuda(stream, eps, has_residual, has_weight, save_rstd, false, false, args, rets);
}

static ffi::Error RmsNormFwdCudaV2(cudaStream_t stream, float eps, bool has_residual,
                                   bool has_weight, bool save_rstd, bool round_normalized,
                                   ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return RunFwdCuda(stream, eps, has_residual, has_weight, save_rstd, true, round_normalized, args,
                    rets);
}

static ffi::Error RmsNormBwdCuda(cudaStream_t stream, bool has_weight, bool has_residual_grad,
                                 bool want_dweight, int64_t ctas_per_weight_row,
                                 ffi::RemainingArgs args, ffi::RemainingRets rets) {
  BwdProblem p;
  ffi::Error error = decode_bwd_call(args, rets, has_weight, has_residual_grad, want_dweight,
                                     ctas_per_weight_row, p);
  if (error.failure()) return error;
  const std::string message = rms_norm_bwd_cuda(p, stream);
  if (!message.empty()) return ffi::Error::Internal("jax_rmsnorm backward: " + message);
  return ffi::Error::Success();
}

}  // namespace jax_rmsnorm

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cuda, jax_rmsnorm::RmsNormFwdCuda,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Attr<float>("eps")
                                  .Attr<bool>("has_residual")
                                  .Attr<bool>("has_weight")
                                  .Attr<bool>("save_rstd")
                                  .RemainingArgs()   // x, [residual], [weight]
                                  .RemainingRets(),  // y, [residual_out], [rstd]
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_v2_cuda, jax_rmsnorm::RmsNormFwdCudaV2,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Attr<float>("eps")
                                  .Attr<bool>("has_residual")
                                  .Attr<bool>("has_weight")
                                  .Attr<bool>("save_rstd")
                                  .Attr<bool>("round_normalized")
                                  .RemainingArgs()   // x, [residual], [weight]
                                  .RemainingRets(),  // y (x's dtype or f32), [residual_out], [rstd]
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_bwd_cuda, jax_rmsnorm::RmsNormBwdCuda,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Attr<bool>("has_weight")
                                  .Attr<bool>("has_residual_grad")
                                  .Attr<bool>("want_dweight")
                                  .Attr<int64_t>("ctas_per_weight_row")
                                  .RemainingArgs()   // dy, s, rstd, [weight], [d_new_residual]
                                  .RemainingRets(),  // dx, [dweight, dweight_partials]
                              {xla::ffi::Traits::kCmdBufferCompatible});
