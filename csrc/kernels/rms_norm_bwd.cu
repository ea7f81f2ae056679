// Backward RMSNorm on CUDA: dx (plus the new_residual cotangent) and dweight.
//
// A persistent grid: ctas_per_weight_row CTAs per weight row walk over its rows, each
// thread keeping float32 dweight accumulators for the columns it owns. At the end every
// CTA writes one float32 partial row, and sum_dweight_partials adds the partials in a
// fixed order: the same inputs give the same bits on every run.
//  - rms_norm_bwd_registers: dy and s staged through shared memory (cp.async), one read
//    of each; a row shared by the threads of a CTA, or for long rows by a cluster of CTAs
//    (each with a column slice; the cluster writes one partial row).
//  - rms_norm_bwd_streaming: rows longer than a cluster holds; two passes over dy and s,
//    and the CTA's partial row in global memory (only this thread touches its columns).
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
// With clusters, "CTA" means the cluster: its CTAs share rows and a partial row.
struct CtaRows {
  int64_t unit, group, cta, first_row;
  __device__ CtaRows(const BwdProblem& p, int cluster)
      : unit(blockIdx.x / cluster),
        group(unit / p.ctas_per_weight_row),
        cta(unit % p.ctas_per_weight_row),
        first_row(group * p.rows_per_weight) {}
};

template <typename W>
__device__ __forceinline__ const W* weight_of_group(const BwdProblem& p, int64_t group) {
  return p.weight == nullptr ? nullptr : static_cast<const W*>(p.weight) + group * p.hidden;
}

// Floats of the register kernel's weight in shared memory: the row, or with clusters each
// thread's own columns (CHUNKS x VEC per thread); a multiple of 4 (16-byte aligned ring).
__host__ __device__ inline int64_t bwd_weight_floats(int64_t hidden, bool has_weight, int cluster,
                                                     int chunks, int block, int vec) {
  if (!has_weight) return 0;
  return cluster > 1 ? int64_t{chunks} * block * vec : (hidden + 3) / 4 * 4;
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
__global__ void __launch_bounds__(kBwdBlock, 2)
    rms_norm_bwd_registers(BwdProblem p, int threads_per_row, int cluster, int stages) {
  using Unit = Packed<T, VEC>;
  __shared__ RowSumScratch scratch;
  // Dynamic shared memory: the weight row as float (read every row: from shared memory
  // it costs no L1/L2 traffic), then the staging ring, [stages][dy, s][CHUNKS][blockDim]
  // units and [stages][blockDim] rstd. Each thread copies in exactly the ring units it
  // later reads, so the ring needs no barrier; after the rows it merges the slots' dweight.
  extern __shared__ __align__(16) unsigned char staging[];
  float* weight_row = reinterpret_cast<float*>(staging);
  Unit* ring = reinterpret_cast<Unit*>(
      weight_row + bwd_weight_floats(p.hidden, p.weight != nullptr, cluster, CHUNKS, blockDim.x, VEC));
  float* ring_rstd = reinterpret_cast<float*>(ring + int64_t(stages) * 2 * CHUNKS * blockDim.x);
  auto unit_at = [&](int stage, int array, int c) -> Unit& {
    return ring[((stage * 2 + array) * CHUNKS + c) * blockDim.x + threadIdx.x];
  };

  // A row's threads: threads_per_row of this CTA, or every thread of the cluster.
  arrive_cluster_started(cluster);
  const int rows_per_block = blockDim.x / threads_per_row;
  const int slot = threadIdx.x / threads_per_row;
  const int64_t row_threads = int64_t(threads_per_row) * cluster;
  const int64_t lane = int64_t(blockIdx.x % cluster) * blockDim.x + threadIdx.x % threads_per_row;
  const CtaRows cta(p, cluster);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  auto column = [&](int c) { return (c * row_threads + lane) * VEC; };
  // Where a column's weight sits in shared memory: the whole row, or this thread's own.
  auto weight_index = [&](int c) {
    return cluster > 1 ? (c * int64_t(blockDim.x) + threadIdx.x) * VEC : column(c);
  };
  auto row_in_range = [&](int64_t group_row) { return group_row + slot < p.rows_per_weight; };

  // Starts copying the slot's row of a row group into a stage; a group past the end
  // commits an empty batch so that every thread counts batches alike.
  auto stage_rows = [&](int64_t group_row, int stage) {
    if (row_in_range(group_row)) {
      const int64_t row = cta.first_row + group_row + slot;
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) {
          copy_async<sizeof(Unit)>(&unit_at(stage, 0, c), static_cast<const T*>(p.dy) + row * p.hidden + column(c));
          copy_async<sizeof(Unit)>(&unit_at(stage, 1, c), static_cast<const T*>(p.s) + row * p.hidden + column(c));
        }
      }
      copy_async<4>(&ring_rstd[stage * blockDim.x + threadIdx.x], p.rstd + row);
    }
    commit_async_copies();
  };

  const int64_t first = cta.cta * rows_per_block;
  const int64_t stride = p.ctas_per_weight_row * rows_per_block;
  for (int k = 0; k + 1 < stages; ++k) stage_rows(first + k * stride, k);
  // The weight row as float, written by the first slot (its threads cover every column):
  // each thread's loads go out at once, beside the first rows' (decode feels the latency).
  const float* weight = nullptr;  // ones without a weight
  if (p.weight != nullptr) {
    if (slot == 0) {
      const W* w = weight_of_group<W>(p, cta.group);
      float values[CHUNKS][VEC];
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) load_as_float<VEC>(w + column(c), values[c]);
      }
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if (column(c) < p.hidden) weight_row[weight_index(c) + j] = values[c][j];
        }
      }
    }
    weight = weight_row;
  }
  __syncthreads();  // the weight row is written
  float dw[CHUNKS][VEC] = {};
  int stage = 0, parity = 0;
  for (int64_t group_row = first; group_row < p.rows_per_weight; group_row += stride) {
    stage_rows(group_row + (stages - 1) * stride, stage == 0 ? stages - 1 : stage - 1);
    wait_async_copies(stages - 1);

    // dy and s are read from the stage twice (dot product, then dx) rather than held in
    // registers across the reduction: that leaves the registers to the dweight sums.
    const bool row_ok = row_in_range(group_row);
    const float rstd = row_ok ? ring_rstd[stage * blockDim.x + threadIdx.x] : 0.f;
    const int64_t offset = (cta.first_row + group_row + slot) * p.hidden;
    float dot = 0.f;
    if (row_ok) {
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) {
          float w[VEC];
          load_weight<VEC>(weight, weight_index(c), w);
          dot += dot_g_n(load_packed<T, VEC>(unit_at(stage, 0, c).v), load_packed<T, VEC>(unit_at(stage, 1, c).v), w, rstd);
        }
      }
    }
    const float mean_gn = row_sum(dot, threads_per_row, cluster, scratch, parity, group_row == first) /
                          static_cast<float>(p.hidden);
    parity ^= 1;
    if (row_ok) {
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) {
          float w[VEC];
          load_weight<VEC>(weight, weight_index(c), w);
          store_packed(static_cast<T*>(p.dx) + offset + column(c),
                       input_grad(load_packed<T, VEC>(unit_at(stage, 0, c).v), load_packed<T, VEC>(unit_at(stage, 1, c).v), w, rstd, mean_gn,
                                  d_new_residual ? d_new_residual + offset + column(c) : nullptr,
                                  dw[c]));
        }
      }
    }
    if (threads_per_row > kWarp) __syncthreads();  // the next row's reduction reuses the scratch
    stage = stage + 1 == stages ? 0 : stage + 1;
  }

  if (p.dweight_partials == nullptr) return;
  // One CTA per weight row writes dweight itself (no partials pass); else its partial row.
  const bool direct = p.ctas_per_weight_row == 1 && p.dweight != nullptr;
  W* dweight = direct ? static_cast<W*>(p.dweight) + cta.group * p.hidden : nullptr;
  float* partial = p.dweight_partials + cta.unit * p.hidden;
  auto write = [&](int64_t col, float v) {
    if (direct) {
      dweight[col] = from_float<W>(v);
    } else {
      partial[col] = v;
    }
  };
  if (rows_per_block == 1) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (column(c) + j < p.hidden) write(column(c) + j, dw[c][j]);
      }
    }
    return;
  }
  // Several rows per CTA: every slot writes its sums to [slot][hidden] in the (now idle)
  // ring, then each column is added over the slots in slot order. The ring holds it:
  // slots * hidden <= blockDim * CHUNKS * VEC floats, under the 2 * blockDim * CHUNKS *
  // VEC elements of one stage (elements are at least 2 bytes).
  wait_async_copies(0);
  __syncthreads();
  float* slot_sums = reinterpret_cast<float*>(ring);
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (column(c) + j < p.hidden) slot_sums[slot * p.hidden + column(c) + j] = dw[c][j];
    }
  }
  __syncthreads();
  for (int64_t col = threadIdx.x; col < p.hidden; col += blockDim.x) {
    float total = 0.f;
    for (int k = 0; k < rows_per_block; ++k) total += slot_sums[k * p.hidden + col];
    write(col, total);
  }
}

template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(kMaxBlock) rms_norm_bwd_streaming(BwdProblem p) {
  __shared__ RowSumScratch scratch;
  const CtaRows cta(p, 1);
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
  const int64_t units = p.weight_rows * p.ctas_per_weight_row;
  if (l.kernel == FwdKernel::kStreaming) {
    return launch(rms_norm_bwd_streaming<T, W, VEC>, dim3(static_cast<unsigned>(units)), dim3(l.block), 0,
                  1, stream, p);
  }
  const size_t smem =
      4 * bwd_weight_floats(p.hidden, p.weight != nullptr, l.cluster, l.chunks, l.block, l.vec) +
      l.stages * bwd_stage_bytes(l, sizeof(T));
  return dispatch_chunks<kMaxBwdChunks>(l.chunks, [&](auto chunks) {
    return launch(rms_norm_bwd_registers<T, W, VEC, decltype(chunks)::value>,
                  dim3(static_cast<unsigned>(units * l.cluster)), dim3(l.block), smem, l.cluster, stream, p,
                  l.threads_per_row, l.cluster, l.stages);
  });
}

}  // namespace

std::string rms_norm_bwd_cuda(const BwdProblem& p, cudaStream_t stream, const BwdLaunch* chosen) {
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
  const BwdLaunch l =
      chosen != nullptr ? *chosen : choose_bwd_launch(p.hidden, elem_bytes, vector_ok, max_cluster_size());
  if (l.vec != 1 && !vector_ok) return "vector launch for unaligned buffers";
  if (p.weight_rows * p.ctas_per_weight_row * l.cluster > 0x7fffffff) return "too many CTAs for one launch";
  if (p.weight_rows > 65535) return "too many weight rows (vmap size) for one launch";

  const cudaError_t err = dispatch_dtypes<CudaTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    cudaError_t e = l.vec == 1 ? launch_bwd<T, W, 1>(p, l, stream)
                               : launch_bwd<T, W, 16 / sizeof(T)>(p, l, stream);
    // The register kernel writes dweight itself when one CTA covers a weight row.
    const bool direct = l.kernel == FwdKernel::kRegisters && p.ctas_per_weight_row == 1;
    if (e != cudaSuccess || p.dweight == nullptr || direct) return e;
    const dim3 grid(static_cast<unsigned>(ceil_div(p.hidden, kSumCols)), static_cast<unsigned>(p.weight_rows));
    return launch(sum_dweight_partials<W>, grid, dim3(kSumCols, kSumLanes), 0, 1, stream, p);
  });
  if (err != cudaSuccess) return std::string("kernel launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace jax_rmsnorm
