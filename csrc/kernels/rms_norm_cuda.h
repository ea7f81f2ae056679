// Framework-free entry points of the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/problem.h"

namespace jax_rmsnorm {

// Enqueues the forward kernel on `stream`. No allocation, no synchronisation, the
// same launch for the same shapes (safe to capture in a CUDA graph). Returns an
// empty string on success, else what went wrong.
std::string rms_norm_fwd_cuda(const FwdProblem& problem, cudaStream_t stream);

}  // namespace jax_rmsnorm
