// Backward RMSNorm on CUDA: dx (plus the new_residual cotangent) and dweight.
//
// A persistent grid: ctas_per_weight_row CTAs per weight row walk over its rows, each
// thread keeping float32 dweight accumulators for the columns it owns. At the end every
// CTA writes one float32 partial row, and sum_dweight_partials adds the partials in a
// fixed order: the same inputs give the same bits on every run.
//  - rms_norm_bwd_registers: dy and s of a row in registers, one read of each.
//  - rms_norm_bwd_streaming: rows longer than that; two passes over dy and s, and the
//    CTA's partial row in global memory (only this thread ever touches its columns).
#include <cstdint>
#include <string>

#include "kernels/cuda_common.cuh"
#include "kernels/dispatch.h"
#include "kernels/launch_config.h"
#include "kernels/reduce.cuh"
#include "kernels/rms_norm_cuda.h"

namespace jax_rmsnorm {
namespace {

// Which rows a CTA owns: rows [first_row, first_row + rows_per_weight) share weight row
// `group`; the CTA takes row groups cta, cta + ctas, ... of them.
struct CtaRows {
  int64_t group, cta, first_row;
  __device__ explicit CtaRows(const BwdProblem& p)
      : group(blockIdx.x / p.ctas_per_weight_row),
        cta(blockIdx.x % p.ctas_per_weight_row),
        first_row(group * p.rows_per_weight) {}
};

template <typename W>
__device__ __forceinline__ const W* weight_of_group(const BwdProblem& p, int64_t group) {
  return p.weight == nullptr ? nullptr : static_cast<const W*>(p.weight) + group * p.hidden;
}

// Sum over the row of g * n, for this thread's VEC elements (g = dy * w, n = s * rstd).
template <typename T, int VEC>
__device__ __forceinline__ float dot_g_n(const Packed<T, VEC>& dy, const Packed<T, VEC>& s,
                                         const float (&w)[VEC], float rstd) {
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc += to_float(dy.v[j]) * w[j] * (to_float(s.v[j]) * rstd);
  return acc;
}

// dx = rstd * (g - n * mean_gn) (+ d_new_residual); dweight partial += dy * n.
template <typename T, int VEC>
__device__ __forceinline__ Packed<T, VEC> input_grad(const Packed<T, VEC>& dy,
                                                     const Packed<T, VEC>& s,
                                                     const float (&w)[VEC], float rstd,
                                                     float mean_gn, const T* d_new_residual,
                                                     float (&dw)[VEC]) {
  float extra[VEC];
  if (d_new_residual != nullptr) {
    load_as_float<VEC>(d_new_residual, extra);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) extra[j] = 0.f;
  }
  Packed<T, VEC> dx;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float n = to_float(s.v[j]) * rstd;
    const float g = to_float(dy.v[j]) * w[j];
    dx.v[j] = from_float<T>(rstd * (g - n * mean_gn) + extra[j]);
    dw[j] += to_float(dy.v[j]) * n;
  }
  return dx;
}

template <typename T, typename W, int VEC, int CHUNKS>
__global__ void __launch_bounds__(kBwdBlock)
    rms_norm_bwd_registers(BwdProblem p, int threads_per_row) {
  __shared__ RowSumScratch scratch;
  extern __shared__ float slot_sums[];  // [hidden], when several rows share the CTA
  const int rows_per_block = blockDim.x / threads_per_row;
  const int slot = threadIdx.x / threads_per_row;
  const int64_t lane = threadIdx.x % threads_per_row;
  const CtaRows cta(p);
  const W* weight = weight_of_group<W>(p, cta.group);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  auto column = [&](int c) { return (c * int64_t(threads_per_row) + lane) * VEC; };

  // dy, s and rstd of the slot's row in a row group; zeros past the end.
  auto load_rows = [&](int64_t group_row, Packed<T, VEC> (&dy)[CHUNKS], Packed<T, VEC> (&s)[CHUNKS],
                       float& rstd) {
    const bool row_ok = group_row + slot < p.rows_per_weight;
    const int64_t row = cta.first_row + group_row + slot;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (row_ok && column(c) < p.hidden) {
        dy[c] = load_packed<T, VEC>(static_cast<const T*>(p.dy) + row * p.hidden + column(c));
        s[c] = load_packed<T, VEC>(static_cast<const T*>(p.s) + row * p.hidden + column(c));
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) dy[c].v[j] = s[c].v[j] = from_float<T>(0.f);
      }
    }
    rstd = row_ok ? p.rstd[row] : 0.f;
  };

  // Each row group's loads go out before the previous group's reduction, so the
  // persistent CTA always has a row in flight.
  const int64_t stride = p.ctas_per_weight_row * rows_per_block;
  float dw[CHUNKS][VEC] = {};
  Packed<T, VEC> dy[CHUNKS], s[CHUNKS];
  float rstd;
  load_rows(cta.cta * rows_per_block, dy, s, rstd);
  for (int64_t group_row = cta.cta * rows_per_block; group_row < p.rows_per_weight; group_row += stride) {
    Packed<T, VEC> next_dy[CHUNKS], next_s[CHUNKS];
    float next_rstd;
    load_rows(group_row + stride, next_dy, next_s, next_rstd);

    const bool row_ok = group_row + slot < p.rows_per_weight;
    const int64_t offset = (cta.first_row + group_row + slot) * p.hidden;
    float dot = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (column(c) < p.hidden) {
        float w[VEC];
        load_weight<VEC>(weight, column(c), w);
        dot += dot_g_n(dy[c], s[c], w, rstd);
      }
    }
    const float mean_gn = row_sum(dot, threads_per_row, 1, scratch) / static_cast<float>(p.hidden);
    if (row_ok) {
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) {
          float w[VEC];
          load_weight<VEC>(weight, column(c), w);
          store_packed(static_cast<T*>(p.dx) + offset + column(c),
                       input_grad(dy[c], s[c], w, rstd, mean_gn,
                                  d_new_residual ? d_new_residual + offset + column(c) : nullptr,
                                  dw[c]));
        }
      }
    }
    __syncthreads();  // the next row's reduction reuses the scratch
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      dy[c] = next_dy[c];
      s[c] = next_s[c];
    }
    rstd = next_rstd;
  }

  if (p.dweight_partials == nullptr) return;
  float* partial = p.dweight_partials + blockIdx.x * p.hidden;
  if (rows_per_block > 1) {
    // Add the slots' accumulators in slot order, then write the CTA's partial row.
    for (int turn = 0; turn < rows_per_block; ++turn) {
      if (slot == turn) {
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            if (column(c) + j < p.hidden) {
              const float before = turn == 0 ? 0.f : slot_sums[column(c) + j];
              slot_sums[column(c) + j] = before + dw[c][j];
            }
          }
        }
      }
      __syncthreads();
    }
    for (int64_t col = threadIdx.x; col < p.hidden; col += blockDim.x) partial[col] = slot_sums[col];
  } else {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (column(c) + j < p.hidden) partial[column(c) + j] = dw[c][j];
      }
    }
  }
}

template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kMaxBlock) rms_norm_bwd_streaming(BwdProblem p) {
  __shared__ RowSumScratch scratch;
  const CtaRows cta(p);
  const W* weight = weight_of_group<W>(p, cta.group);
  const T* dy_all = static_cast<const T*>(p.dy);
  const T* s_all = static_cast<const T*>(p.s);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  float* partial = p.dweight_partials == nullptr ? nullptr : p.dweight_partials + blockIdx.x * p.hidden;
  const int64_t step = int64_t(blockDim.x) * VEC;
  bool first_row = true;
  for (int64_t group_row = cta.cta; group_row < p.rows_per_weight; group_row += p.ctas_per_weight_row) {
    const int64_t row = cta.first_row + group_row;
    const int64_t offset = row * p.hidden;
    const float rstd = p.rstd[row];
    float dot = 0.f;
    for (int64_t col = int64_t(threadIdx.x) * VEC; col < p.hidden; col += step) {
      float w[VEC];
      load_weight<VEC>(weight, col, w);
      dot += dot_g_n(load_packed<T, VEC>(dy_all + offset + col), load_packed<T, VEC>(s_all + offset + col),
                     w, rstd);
    }
    const float mean_gn = row_sum(dot, blockDim.x, 1, scratch) / static_cast<float>(p.hidden);
    for (int64_t col = int64_t(threadIdx.x) * VEC; col < p.hidden; col += step) {
      float w[VEC], dw[VEC] = {};
      load_weight<VEC>(weight, col, w);
      store_packed(static_cast<T*>(p.dx) + offset + col,
                   input_grad(load_packed<T, VEC>(dy_all + offset + col),
                              load_packed<T, VEC>(s_all + offset + col), w, rstd, mean_gn,
                              d_new_residual ? d_new_residual + offset + col : nullptr, dw));
      if (partial != nullptr) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) partial[col + j] = (first_row ? 0.f : partial[col + j]) + dw[j];
      }
    }
    first_row = false;
    __syncthreads();  // the next row's reduction reuses the scratch
  }
  if (partial != nullptr && first_row) {  // no rows for this CTA: its partial is zero
    for (int64_t col = threadIdx.x; col < p.hidden; col += blockDim.x) partial[col] = 0.f;
  }
}

// dweight[group, col] = sum over p of partials[group * ctas + p, col], p in order.
// A CTA covers 32 columns; its 32 thread rows each sum every 32nd partial, and the 32
// sums are added in order through shared memory.
constexpr int kSumCols = 32, kSumLanes = 32;

template <typename W>
__global__ void sum_dweight_partials(BwdProblem p) {
  __shared__ float sums[kSumLanes][kSumCols + 1];
  const int64_t col = int64_t(blockIdx.x) * kSumCols + threadIdx.x;
  const int64_t group = blockIdx.y;
  const float* partials = p.dweight_partials + group * p.ctas_per_weight_row * p.hidden;
  float acc = 0.f;
  if (col < p.hidden) {
    for (int64_t k = threadIdx.y; k < p.ctas_per_weight_row; k += kSumLanes) acc += partials[k * p.hidden + col];
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < p.hidden) {
    float total = 0.f;
    for (int k = 0; k < kSumLanes; ++k) total += sums[k][threadIdx.x];
    static_cast<W*>(p.dweight)[group * p.hidden + col] = from_float<W>(total);
  }
}

template <typename T, typename W, int VEC>
cudaError_t launch_bwd(const BwdProblem& p, const BwdLaunch& l, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.weight_rows * p.ctas_per_weight_row));
  if (l.kernel == FwdKernel::kStreaming) {
    return launch(rms_norm_bwd_streaming<T, W, VEC>, grid, dim3(l.block), 0, 1, stream, p);
  }
  using Kernel = void (*)(BwdProblem, int);
  Kernel kernel = nullptr;
  switch (l.chunks) {
    case 1: kernel = rms_norm_bwd_registers<T, W, VEC, 1>; break;
    case 2: kernel = rms_norm_bwd_registers<T, W, VEC, 2>; break;
    case 4: kernel = rms_norm_bwd_registers<T, W, VEC, 4>; break;
    default: return cudaErrorInvalidConfiguration;
  }
  const bool shares_cta = l.block / l.threads_per_row > 1;
  const size_t smem = shares_cta && p.dweight_partials ? p.hidden * sizeof(float) : 0;
  return launch(kernel, grid, dim3(l.block), smem, 1, stream, p, l.threads_per_row);
}

}  // namespace

std::string rms_norm_bwd_cuda(const BwdProblem& p, cudaStream_t stream) {
  // No rows still writes dweight (zeros, through zero partials); no columns writes nothing.
  if (p.hidden == 0 || p.weight_rows == 0) return {};
  const int elem_bytes = dtype_bytes(p.x_dtype);
  const int vec = 16 / elem_bytes;
  const bool vector_ok =
      p.hidden % vec == 0 && aligned_to(p.dy, 16) && aligned_to(p.s, 16) && aligned_to(p.dx, 16) &&
      (p.d_new_residual == nullptr || aligned_to(p.d_new_residual, 16)) &&
      (p.dweight_partials == nullptr || aligned_to(p.dweight_partials, 16)) &&
      (p.weight == nullptr ||
       aligned_to(p.weight, weight_alignment(vec, dtype_bytes(p.weight_dtype))));
  const BwdLaunch l = choose_bwd_launch(p.hidden, elem_bytes, vector_ok);
  if (p.weight_rows * p.ctas_per_weight_row > 0x7fffffff) return "too many CTAs for one launch";
  if (p.weight_rows > 65535) return "too many weight rows (vmap size) for one launch";

  const cudaError_t err = dispatch_dtypes<CudaTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    cudaError_t e = l.vec == 1 ? launch_bwd<T, W, 1>(p, l, stream)
                               : launch_bwd<T, W, 16 / sizeof(T)>(p, l, stream);
    if (e != cudaSuccess || p.dweight == nullptr) return e;
    const dim3 grid(static_cast<unsigned>(ceil_div(p.hidden, kSumCols)), static_cast<unsigned>(p.weight_rows));
    return launch(sum_dweight_partials<W>, grid, dim3(kSumCols, kSumLanes), 0, 1, stream, p);
  });
  if (err != cudaSuccess) return std::string("kernel launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace jax_rmsnorm
