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

// Enqueues the backward kernel (and, when dweight is wanted, the kernel that sums its
// partials). Same guarantees as the forward.
std::string rms_norm_bwd_cuda(const BwdProblem& problem, cudaStream_t stream);

}  // namespace jax_rmsnorm
