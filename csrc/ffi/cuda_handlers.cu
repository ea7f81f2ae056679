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

static ffi::Error RunBwdCuda(cudaStream_t stream, bool has_weight, bool has_residual_grad,
                             bool want_dweight, int64_t ctas_per_weight_row, bool round_normalized,
                             ffi::RemainingArgs args, ffi::RemainingRets rets) {
  BwdProblem p;
  ffi::Error error = decode_bwd_call(args, rets, has_weight, has_residual_grad, want_dweight,
                                     ctas_per_weight_row, p, round_normalized);
  if (error.failure()) return error;
  const std::string message = rms_norm_bwd_cuda(p, stream);
  if (!message.empty()) return ffi::Error::Internal("jax_rmsnorm backward: " + message);
  return ffi::Error::Success();
}

static ffi::Error RmsNormBwdCuda(cudaStream_t stream, bool has_weight, bool has_residual_grad,
                                 bool want_dweight, int64_t ctas_per_weight_row,
                                 ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return RunBwdCuda(stream, has_weight, has_residual_grad, want_dweight, ctas_per_weight_row, false,
                    args, rets);
}

static ffi::Error RmsNormBwdCudaV2(cudaStream_t stream, bool has_weight, bool has_residual_grad,
                                   bool want_dweight, int64_t ctas_per_weight_row, bool round_normalized,
                                   ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return RunBwdCuda(stream, has_weight, has_residual_grad, want_dweight, ctas_per_weight_row,
                    round_normalized, args, rets);
}

}  // namespace jax_rmsnorm

// Operands and results as the CPU targets' (cpu_handlers.cc).
using CudaStream = xla::ffi::PlatformStream<cudaStream_t>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cuda, jax_rmsnorm::RmsNormFwdCuda,
                              jax_rmsnorm::bind_fwd_attrs<CudaStream>().RemainingArgs().RemainingRets(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_fwd_v2_cuda, jax_rmsnorm::RmsNormFwdCudaV2,
                              jax_rmsnorm::bind_fwd_attrs<CudaStream>()
                                  .Attr<bool>("round_normalized")
                                  .RemainingArgs()
                                  .RemainingRets(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_bwd_cuda, jax_rmsnorm::RmsNormBwdCuda,
                              jax_rmsnorm::bind_bwd_attrs<CudaStream>().RemainingArgs().RemainingRets(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_rmsnorm_bwd_v2_cuda, jax_rmsnorm::RmsNormBwdCudaV2,
                              jax_rmsnorm::bind_bwd_attrs<CudaStream>()
                                  .Attr<bool>("round_normalized")  // dweight of the HF order
                                  .RemainingArgs()
                                  .RemainingRets(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
