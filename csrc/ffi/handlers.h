// Handler symbols defined in cpu_handlers.cc and cuda_handlers.cu.
#pragma once

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_fwd_v2_cpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_bwd_cpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_bwd_v2_cpu);
#ifdef JAX_RMSNORM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_fwd_v2_cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_bwd_cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_bwd_v2_cuda);
#endif
