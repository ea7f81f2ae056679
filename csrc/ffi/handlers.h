// Handler symbols defined in cpu_handlers.cc and cuda_handlers.cu.
#pragma once

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cpu);
#ifdef JAX_RMSNORM_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(jax_rmsnorm_fwd_cuda);
#endif
