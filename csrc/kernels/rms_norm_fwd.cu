// Forward RMSNorm (optionally fused with the residual add) on CUDA.
//
// Two kernels, both one read of every input element in the common case:
//  - rms_norm_fwd_registers: the row lives in registers (CHUNKS accesses per thread),
//    shared by threads_per_row threads of a CTA, or by a cluster of CTAs for long rows.
//  - rms_norm_fwd_streaming: rows longer than a cluster can hold; two passes, the
//    second served mostly from L2.
#include <cstdint>
#include <string>

#include "kernels/cuda_common.cuh"
#include "kernels/dispatch.h"
#include "kernels/launch_config.h"
#include "kernels/numeric.cuh"
#include "kernels/reduce.cuh"
#include "kernels/rms_norm_cuda.h"

namespace jax_rmsnorm {
namespace {

// s = round(x + residual) elementwise, in place in `s`.
template <typename T, int VEC>
__device__ __forceinline__ void add_residual(Packed<T, VEC>& s, const Packed<T, VEC>& r) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) s.v[j] = from_float<T>(to_float(s.v[j]) + to_float(r.v[j]));
}

template <typename T, int VEC>
__device__ __forceinline__ float sum_of_squares(const Packed<T, VEC>& s) {
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float f = to_float(s.v[j]);
    acc += f * f;
  }
  return acc;
}

// y = round_O(s * rstd * w), or, in the HF order, round_O(round_T(s * rstd) * w).
template <typename O, typename T, int VEC>
__device__ __forceinline__ Packed<O, VEC> normalize(const Packed<T, VEC>& s, float rstd,
                                                    const float (&w)[VEC], bool round_normalized) {
  Packed<O, VEC> y;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    float n = to_float(s.v[j]) * rstd;
    if (round_normalized) n = to_float(from_float<T>(n));
    y.v[j] = from_float<O>(n * w[j]);
  }
  return y;
}

__device__ __forceinline__ float inverse_rms(float sum_sq, const FwdProblem& p) {
  return rsqrtf(sum_sq / static_cast<float>(p.hidden) + p.eps);
}

template <typename W>
__device__ __forceinline__ const W* weight_row(const FwdProblem& p, int64_t row) {
  if (p.weight == nullptr) return nullptr;
  return static_cast<const W*>(p.weight) + (row / p.rows_per_weight) * p.hidden;
}

// Two 512-thread CTAs (or four of 256) per SM: at most 64 registers a thread.
template <typename T, typename W, typename O, int VEC, int CHUNKS>
__global__ void __launch_bounds__(kRegistersBlock, 2)
    rms_norm_fwd_registers(FwdProblem p, int threads_per_row, int cluster) {
  __shared__ RowSumScratch scratch;
  arrive_cluster_started(cluster);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ residual = static_cast<const T*>(p.residual);

  // Which row this thread works on, and its index among the row's threads.
  int64_t row, lane, row_threads;
  if (cluster > 1) {
    row = blockIdx.x / cluster;
    lane = int64_t(blockIdx.x % cluster) * blockDim.x + threadIdx.x;
    row_threads = int64_t(cluster) * blockDim.x;
  } else {
    row = int64_t(blockIdx.x) * (blockDim.x / threads_per_row) + threadIdx.x / threads_per_row;
    lane = threadIdx.x % threads_per_row;
    row_threads = threads_per_row;
  }
  const bool row_ok = row < p.rows;
  const int64_t offset = row * p.hidden;
  auto column = [&](int c) { return (c * row_threads + lane) * VEC; };

  // Phase 1: the whole row into registers (all loads issued before any use).
  Packed<T, VEC> s[CHUNKS];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    if (row_ok && column(c) < p.hidden) {
      s[c] = load_packed<T, VEC>(x + offset + column(c));
      if (residual != nullptr) add_residual(s[c], load_packed<T, VEC>(residual + offset + column(c)));
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) s[c].v[j] = from_float<T>(0.f);
    }
  }
  // With one chunk (small problems: decode), the weights come in before the reduction,
  // hiding their latency behind it; more chunks would not fit the register budget.
  constexpr bool kEarlyWeight = CHUNKS == 1;
  const W* weight = weight_row<W>(p, row);
  float w[kEarlyWeight ? CHUNKS : 1][VEC];
  if (kEarlyWeight) {
#pragma unroll
    for (int c = 0; c < (kEarlyWeight ? CHUNKS : 0); ++c) {
      if (row_ok && column(c) < p.hidden) load_weight<VEC>(weight, column(c), w[c]);
    }
  }
  float sum_sq = 0.f;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) sum_sq += sum_of_squares(s[c]);
  if (p.residual_out != nullptr && row_ok) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (column(c) < p.hidden) store_packed(static_cast<T*>(p.residual_out) + offset + column(c), s[c]);
    }
  }

  // Phase 2: one reduction, then scale and write the row.
  const int reduce_threads = cluster > 1 ? int(blockDim.x) : threads_per_row;
  const float rstd = inverse_rms(row_sum(sum_sq, reduce_threads, cluster, scratch), p);
  if (!row_ok) return;
  if (p.rstd != nullptr && lane == 0) p.rstd[row] = rstd;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    if (column(c) < p.hidden) {
      float late[VEC];
      if (!kEarlyWeight) load_weight<VEC>(weight, column(c), late);
      store_packed(static_cast<O*>(p.y) + offset + column(c),
                   normalize<O>(s[c], rstd, kEarlyWeight ? w[kEarlyWeight ? c : 0] : late,
                                p.round_normalized));
    }
  }
}

template <typename T, typename W, typename O, int VEC>
__global__ void __launch_bounds__(kMaxBlock) rms_norm_fwd_streaming(FwdProblem p) {
  __shared__ RowSumScratch scratch;
  const int64_t row = blockIdx.x;
  const int64_t offset = row * p.hidden;
  const int64_t step = int64_t(blockDim.x) * VEC;
  T* residual_out = static_cast<T*>(p.residual_out);

  float sum_sq = 0.f;
  for (int64_t col = int64_t(threadIdx.x) * VEC; col < p.hidden; col += step) {
    Packed<T, VEC> s = load_packed<T, VEC>(static_cast<const T*>(p.x) + offset + col);
    if (p.residual != nullptr) {
      add_residual(s, load_packed<T, VEC>(static_cast<const T*>(p.residual) + offset + col));
      store_packed(residual_out + offset + col, s);
    }
    sum_sq += sum_of_squares(s);
  }
  const float rstd = inverse_rms(row_sum(sum_sq, blockDim.x, 1, scratch), p);
  if (p.rstd != nullptr && threadIdx.x == 0) p.rstd[row] = rstd;

  // Second pass: with a residual, re-read the sum this same thread just stored.
  const T* source = p.residual != nullptr ? residual_out : static_cast<const T*>(p.x);
  const W* weight = weight_row<W>(p, row);
  for (int64_t col = int64_t(threadIdx.x) * VEC; col < p.hidden; col += step) {
    float w[VEC];
    load_weight<VEC>(weight, col, w);
    store_packed(static_cast<O*>(p.y) + offset + col,
                 normalize<O>(load_packed<T, VEC>(source + offset + col), rstd, w, p.round_normalized));
  }
}

template <typename T, typename W, typename O, int VEC>
cudaError_t launch_registers(const FwdProblem& p, const FwdLaunch& l, cudaStream_t stream) {
  return dispatch_chunks<kMaxChunks>(l.chunks, [&](auto chunks) {
    return launch(rms_norm_fwd_registers<T, W, O, VEC, decltype(chunks)::value>,
                  dim3(static_cast<unsigned>(l.grid)), dim3(l.block), 0, l.cluster, stream, p,
                  l.threads_per_row, l.cluster);
  });
}

template <typename T, typename W, typename O, int VEC>
cudaError_t launch_vec(const FwdProblem& p, const FwdLaunch& l, cudaStream_t stream) {
  if (l.kernel == FwdKernel::kStreaming) {
    return launch(rms_norm_fwd_streaming<T, W, O, VEC>, dim3(static_cast<unsigned>(l.grid)),
                  dim3(l.block), 0, 1, stream, p);
  }
  return launch_registers<T, W, O, VEC>(p, l, stream);
}

}  // namespace

std::string rms_norm_fwd_cuda(const FwdProblem& p, cudaStream_t stream, const FwdLaunch* chosen) {
  if (p.rows == 0 || p.hidden == 0) return {};
  const int elem_bytes = dtype_bytes(p.x_dtype);
  const int vec = 16 / elem_bytes;
  const bool vector_ok =
      p.hidden % vec == 0 && aligned_to(p.x, 16) && aligned_to(p.y, 16) &&
      (p.residual == nullptr || (aligned_to(p.residual, 16) && aligned_to(p.residual_out, 16))) &&
      (p.weight == nullptr ||
       aligned_to(p.weight, weight_alignment(vec, dtype_bytes(p.weight_dtype))));
  const FwdLaunch l = chosen != nullptr
                          ? *chosen
                          : choose_fwd_launch(p.rows, p.hidden, elem_bytes, vector_ok, max_cluster_size());
  if (l.vec != 1 && !vector_ok) return "vector launch for unaligned buffers";
  if (l.grid > 0x7fffffff) return "too many rows for one launch (grid exceeds 2^31-1 blocks)";

  const cudaError_t err = dispatch_dtypes<CudaTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    return dispatch_output<T>(p.float32_y, [&](auto y_tag) {
      using O = typename decltype(y_tag)::type;
      return l.vec == 1 ? launch_vec<T, W, O, 1>(p, l, stream)
                        : launch_vec<T, W, O, 16 / sizeof(T)>(p, l, stream);
    });
  });
  if (err != cudaSuccess) return std::string("kernel launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace jax_rmsnorm
