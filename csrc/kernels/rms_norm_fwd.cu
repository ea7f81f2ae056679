// Forward RMSNorm (optionally fused with the residual add) on CUDA.
//
// Three kernels, all one read of every input element in the common case:
//  - rms_norm_fwd_registers: the row lives in registers (CHUNKS accesses per thread),
//    shared by threads_per_row threads of a CTA, or by a cluster of CTAs for long rows.
//  - rms_norm_fwd_staged: long rows over a persistent cluster, the next rows staged in
//    shared memory while this one is reduced and written.
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
#include "kernels/staging.cuh"

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

// 1 / hidden comes from the host: a float division is a dozen instructions on the
// decode kernels' critical path.
__device__ __forceinline__ float inverse_rms(float sum_sq, float inv_hidden, float eps) {
  return rsqrtf(sum_sq * inv_hidden + eps);
}

template <typename W>
__device__ __forceinline__ const W* weight_row(const FwdProblem& p, int64_t row) {
  if (p.weight == nullptr) return nullptr;
  const W* weight = static_cast<const W*>(p.weight);
  // One weight row for all rows (the usual case) needs no 64-bit division.
  return p.rows_per_weight >= p.rows ? weight : weight + (row / p.rows_per_weight) * p.hidden;
}

// Where a register-kernel thread's row and columns are. Every count is a power of two,
// so the kernel shifts and masks instead of dividing.
struct RowMap {
  int tpr_log2 = 0;      // threads sharing a row inside one CTA
  int cluster_log2 = 0;  // CTAs of a cluster sharing a row
  int block_rows_log2 = 0;  // rows per CTA (neither clusters nor SPLIT)
  int split_log2 = 0;    // CTAs that each reduce the row and write part of it (SPLIT)
  int part_units = 0;    // accesses each of those writes: at most one per thread
  float inv_hidden = 0.f;
};

// SPLIT_BLOCK: 0 for the row kernels; otherwise a SPLIT kernel (decode), with SPLIT_BLOCK
// threads a CTA when that is positive (then the reduction's group sizes and every access's
// column offset are constants), any block when kAnyBlock.
constexpr int kAnyBlock = -1;

// Two 512-thread CTAs (or four of 256) per SM: at most 64 registers a thread. SPLIT
// kernels run one wave of few CTAs, so they may take more.
template <typename T, typename W, typename O, int VEC, int CHUNKS, int SPLIT_BLOCK>
__global__ void __launch_bounds__(kRegistersBlock, SPLIT_BLOCK != 0 ? 1 : 2)
    rms_norm_fwd_registers(FwdProblem p, RowMap m) {
  constexpr bool SPLIT = SPLIT_BLOCK != 0;
  __shared__ RowSumScratch scratch;
  const int cluster = SPLIT ? 1 : 1 << m.cluster_log2;  // SPLIT: no cluster code at all
  start_cluster(scratch, cluster);

  // This thread's row, its index among the row's threads, and (SPLIT) the first
  // access this CTA writes.
  int64_t row;
  int lane, row_threads, first_unit = 0;
  if (SPLIT) {
    row = blockIdx.x >> m.split_log2;
    lane = threadIdx.x;
    row_threads = SPLIT_BLOCK > 0 ? SPLIT_BLOCK : int(blockDim.x);
    first_unit = (blockIdx.x & ((1 << m.split_log2) - 1)) * m.part_units;
  } else if (cluster > 1) {
    row = blockIdx.x >> m.cluster_log2;
    lane = (blockIdx.x & (cluster - 1)) * blockDim.x + threadIdx.x;
    row_threads = cluster * blockDim.x;
  } else {
    row = (int64_t(blockIdx.x) << m.block_rows_log2) + (threadIdx.x >> m.tpr_log2);
    lane = threadIdx.x & ((1 << m.tpr_log2) - 1);
    row_threads = 1 << m.tpr_log2;
  }
  const bool row_ok = row < p.rows;
  const int64_t offset = row * p.hidden;
  const T* __restrict__ x = static_cast<const T*>(p.x) + offset;
  const T* __restrict__ residual = p.residual != nullptr ? static_cast<const T*>(p.residual) + offset : nullptr;
  // Columns fit 32 bits: a register row holds at most cluster x 512 x CHUNKS accesses.
  auto unit = [&](int c) { return c * row_threads + lane; };
  auto in_row = [&](int c) { return row_ok && unit(c) * VEC < p.hidden; };
  // The accesses this thread writes: all of its row's, or (SPLIT) those of this CTA's part.
  auto writes = [&](int c) {
    return in_row(c) && (!SPLIT || static_cast<unsigned>(unit(c) - first_unit) < static_cast<unsigned>(m.part_units));
  };

  // A thread that writes one access at most (one chunk, or SPLIT: see choose_fwd_launch)
  // asks for its weights first, so they arrive with the row, not after it: placed after
  // the row's loads, they waited for them (the unpacking below is scheduled before the
  // weights' branches; benchmarks/NOTES.md, entry 17). More chunks' weights would not
  // fit the register budget; those are loaded as each access is written.
  // SPLIT (decode) kernels ask for them right after the row's loads instead, without a
  // branch (below).
  constexpr bool kOneWrite = CHUNKS == 1 || SPLIT;
  int mine_col = -1;
  float w[VEC];
  if (kOneWrite) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (writes(c)) mine_col = unit(c) * VEC;
    }
    if (!SPLIT && mine_col >= 0) load_weight<VEC>(weight_row<W>(p, row), mine_col, w);
  }
  // Phase 1: the whole row into registers, every load issued before any use: all x
  // loads, then all residual loads, then the unpacking and the adds. Written
  // interleaved (load, add, next load), the loads went out together only while the
  // compiler split the loop on `residual` (benchmarks/NOTES.md, entry 16).
  WordOf<T, VEC> x_words[CHUNKS], r_words[CHUNKS];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) x_words[c] = load_word_or_zero<T, VEC>(x + unit(c) * VEC, in_row(c));
  if (residual != nullptr) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) r_words[c] = load_word_or_zero<T, VEC>(residual + unit(c) * VEC, in_row(c));
  }
  if (SPLIT) {
    // The row's loads first, then the weights' as predicated loads. Ahead of the row, the
    // weights' branches and arithmetic held its loads back (0.06-0.13 us of a 1.5-2.1 us
    // decode kernel); after it behind those branches, the weights waited for the row when
    // there was a residual (0.1-0.2 us slower; benchmarks/NOTES.md, entry 32). Decode rows
    // fit 32 bits: a 32-bit division, inline, where the 64-bit one is a call.
    const W* weight = static_cast<const W*>(p.weight);
    const unsigned weight_index =
        p.rows_per_weight >= p.rows ? 0u : static_cast<unsigned>(row) / static_cast<unsigned>(p.rows_per_weight);
    load_as_float_or_one<VEC>(weight + int64_t{weight_index} * p.hidden + (mine_col >= 0 ? mine_col : 0),
                              weight != nullptr && mine_col >= 0, w);
  }
  Packed<T, VEC> s[CHUNKS];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) s[c] = unpack<T, VEC>(x_words[c]);
  if (residual != nullptr) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) add_residual(s[c], unpack<T, VEC>(r_words[c]));
  }
  Packed<T, VEC> mine = s[0];
  if (kOneWrite) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (writes(c)) mine = s[c];
    }
  }
  float sum_sq = 0.f;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) sum_sq += sum_of_squares(s[c]);
  if (p.residual_out != nullptr) {
    T* residual_out = static_cast<T*>(p.residual_out) + offset;
    if (kOneWrite) {
      if (mine_col >= 0) store_packed(residual_out + mine_col, mine);
    } else {
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (writes(c)) store_packed(residual_out + unit(c) * VEC, s[c]);
      }
    }
  }

  // Phase 2: one reduction, then scale and write the row.
  const int reduce_threads = cluster > 1 ? int(blockDim.x) : row_threads;
  const float rstd = inverse_rms(row_sum(sum_sq, reduce_threads, cluster, scratch), m.inv_hidden, p.eps);
  if (!row_ok) return;
  if (p.rstd != nullptr && lane == 0 && first_unit == 0) p.rstd[row] = rstd;
  O* y = static_cast<O*>(p.y) + offset;
  if (kOneWrite) {
    if (mine_col >= 0) store_packed(y + mine_col, normalize<O>(mine, rstd, w, p.round_normalized));
  } else {
    const W* weight = weight_row<W>(p, row);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (writes(c)) {
        float late[VEC];
        load_weight<VEC>(weight, unit(c) * VEC, late);
        store_packed(y + unit(c) * VEC, normalize<O>(s[c], rstd, late, p.round_normalized));
      }
    }
  }
}

// What a staged CTA needs besides the problem.
struct StagedMap {
  int cluster_log2 = 0;         // CTAs of a cluster sharing a row
  int stages = 1;               // rows in flight per CTA
  bool weight_in_smem = false;  // one weight row for all rows: its slice copied once
  float inv_hidden = 0.f;
};

// Long rows, persistent: cluster i reduces rows i, i + clusters, ..., each CTA a slice of
// CHUNKS x blockDim 16-byte accesses of each (contiguous in the row). The register kernel
// holds one row per CTA and waits for it with nothing else in flight; here the next
// `stages` rows' slices are copying into a ring in shared memory while this row is
// reduced and written, so shared memory, not registers, bounds the bytes in flight. One
// thread copies each slice with a bulk copy (the TMA unit: no per-thread requests to
// queue) that completes on the stage's mbarrier; the slot is refilled once every thread
// has the row in registers (row_sum's barrier). The weight slice is copied once.
template <typename T, typename W, typename O, int VEC, int CHUNKS>
__global__ void __launch_bounds__(kRegistersBlock, CHUNKS <= 4 ? 2 : 1)
    rms_norm_fwd_staged(FwdProblem p, StagedMap m) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Word = WordOf<T, VEC>;
  static_assert(sizeof(Word) == 16, "the staged kernel moves 16-byte accesses");
  // [stages][x, residual][CHUNKS x blockDim] accesses, then the weight slice (as W).
  // 128-byte aligned, as the backward's staging.
  extern __shared__ __align__(128) unsigned char staged_shared[];
  __shared__ RowSumScratch scratch;
  __shared__ unsigned long long stage_landed[kMaxStages];
  const int cluster = 1 << m.cluster_log2;
  start_cluster(scratch, cluster);

  const int block = blockDim.x;
  const bool fused = p.residual != nullptr;
  const int rank = blockIdx.x & (cluster - 1);
  StagedSlices ring(staged_shared, stage_landed, static_cast<int>(p.hidden / VEC), CHUNKS * block, rank,
                    fused ? 2 : 1, m.stages, p.hidden * int64_t{sizeof(T)});
  ring.sources[0] = static_cast<const unsigned char*>(p.x);
  ring.sources[1] = static_cast<const unsigned char*>(p.residual);
  auto* weight_slice = static_cast<Packed<W, VEC>*>(ring.end());
  const int first = ring.first, count = ring.count;
  auto mine = [&](int c) { return c * block + static_cast<int>(threadIdx.x); };  // index in the slice
  const int64_t clusters = gridDim.x >> m.cluster_log2;
  const int64_t first_row = blockIdx.x >> m.cluster_log2;
  // Thread 0: copies this CTA's slice of step k's row (and of its residual) into a stage.
  auto stage_row = [&](int64_t k, int stage, bool refill) {
    const int64_t row = first_row + k * clusters;
    if (row >= p.rows) return;
    if (refill) {
      ring.refill(row, stage);
    } else {
      ring.copy_row(row, stage);
    }
  };
  if (threadIdx.x == 0) ring.init_barriers();
  if (m.weight_in_smem) copy_weight_slice<W, VEC, CHUNKS>(weight_slice, static_cast<const W*>(p.weight), first, count);
  __syncthreads();  // the mbarriers are initialized before anyone waits on them
  if (threadIdx.x == 0) {
    for (int k = 0; k < m.stages; ++k) stage_row(k, k, false);
  }
  wait_async_copies(0);

  int stage = 0, phase = 0;
  for (int64_t k = 0;; ++k) {
    const int64_t row = first_row + k * clusters;
    if (row >= p.rows) break;  // the same for every CTA of the cluster
    ring.wait(stage, phase);
    const Word* xs = ring.slot(stage, 0);
    Packed<T, VEC> s[CHUNKS];
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) s[c] = unpack<T, VEC>(mine(c) < count ? xs[mine(c)] : Word{});
    if (fused) {
      const Word* rs = ring.slot(stage, 1);
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (mine(c) < count) add_residual(s[c], unpack<T, VEC>(rs[mine(c)]));
      }
    }
    const int64_t offset = row * p.hidden + int64_t{first} * VEC;
    float sum_sq = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) sum_sq += sum_of_squares(s[c]);
    if (p.residual_out != nullptr) {
      T* residual_out = static_cast<T*>(p.residual_out) + offset;
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (mine(c) < count) store_packed(residual_out + mine(c) * VEC, s[c]);
      }
    }
    // Past row_sum's CTA barrier every thread has this stage in registers: refill it
    // there, before the cluster exchange waits (blocks have more than a warp).
    auto refill = [&] {
      if (threadIdx.x == 0) stage_row(k + m.stages, stage, true);
    };
    const float rstd =
        inverse_rms(row_sum(sum_sq, block, cluster, scratch, static_cast<int>(k), refill), m.inv_hidden, p.eps);
    if (p.rstd != nullptr && rank == 0 && threadIdx.x == 0) p.rstd[row] = rstd;
    O* y = static_cast<O*>(p.y) + offset;
    const W* weight = weight_row<W>(p, row);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (mine(c) < count) {
        float w[VEC];
        if (m.weight_in_smem) {
          load_as_float<VEC>(weight_slice[mine(c)].v, w);
        } else {
          load_weight<VEC>(weight, int64_t{first + mine(c)} * VEC, w);
        }
        store_packed(y + mine(c) * VEC, normalize<O>(s[c], rstd, w, p.round_normalized));
      }
    }
    if (++stage == m.stages) {
      stage = 0;
      phase ^= 1;
    }
  }
#endif
}

template <typename T, typename W, typename O, int VEC>
__global__ void __launch_bounds__(kMaxBlock) rms_norm_fwd_streaming(FwdProblem p, float inv_hidden) {
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
  const float rstd = inverse_rms(row_sum(sum_sq, blockDim.x, 1, scratch), inv_hidden, p.eps);
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

// A launch must cover every element of every row, once: checked before it runs, because
// kernel_sweep passes launches of its own. Empty when it does.
std::string check_launch(const FwdLaunch& l, int64_t rows, int64_t hidden, int elem_bytes, bool vector_ok) {
  if (l.vec != 1 && !vector_ok) return "vector launch for unaligned buffers";
  if (l.grid > 0x7fffffff) return "too many rows for one launch (grid exceeds 2^31-1 blocks)";
  const int64_t units = ceil_div(hidden, l.vec);
  if (l.kernel == FwdKernel::kStreaming) {
    if (l.block < kWarp || l.block > kMaxBlock || !is_pow2(l.block) || l.grid != fwd_grid(l, rows)) {
      return "bad streaming launch";
    }
    return {};
  }
  if (l.kernel == FwdKernel::kStaged) {
    if (l.vec * elem_bytes != 16) return "staged launch: 16-byte accesses only";
    if (!is_pow2(l.block) || l.block < 2 * kWarp || l.block > kRegistersBlock || l.threads_per_row != l.block ||
        !is_pow2(l.chunks) || l.chunks > kMaxStagedChunks || !is_pow2(l.cluster) || l.cluster > kMaxCluster ||
        l.split != 1 || l.stages < 1 || l.stages > kMaxStages) {
      return "staged launch: counts must be powers of two within the kernel's limits";
    }
    if (units > int64_t{l.cluster} * l.block * l.chunks) return "staged launch: the row does not fit its cluster";
    if (l.grid < 0 || l.grid % l.cluster != 0 || l.grid / l.cluster > rows) {
      return "staged launch: grid must be whole clusters, at most one per row";
    }
    return {};
  }
  if (l.kernel != FwdKernel::kRegisters) return "no such forward kernel";
  if (!is_pow2(l.threads_per_row) || !is_pow2(l.cluster) || !is_pow2(l.split) || !is_pow2(l.block) ||
      l.block > kRegistersBlock || l.chunks > kMaxChunks || !is_pow2(l.chunks) || l.cluster > kMaxCluster) {
    return "register launch: counts must be powers of two within the kernel's limits";
  }
  if (l.cluster > 1 && l.split > 1) return "register launch: a row is shared by a cluster or split, not both";
  const int64_t row_threads = l.cluster > 1 ? int64_t{l.cluster} * l.block : l.threads_per_row;
  if ((l.cluster > 1 || l.split > 1) && l.threads_per_row != l.block) return "register launch: one row per CTA";
  if (l.threads_per_row > l.block) return "register launch: threads_per_row must divide the block";
  if (units > row_threads * l.chunks) return "register launch: the row does not fit its threads' registers";
  if (l.split > 1 && ceil_div(units, l.split) > l.threads_per_row) {
    return "split launch: a thread would write more than one access";
  }
  if (l.grid != fwd_grid(l, rows)) return "register launch: grid does not match rows";
  return {};
}

// The split kernel with the CTA size a constant for the launches choose_fwd_launch makes
// on the vector path (one access a thread over the row's accesses rounded up to a power of
// two, or 512 threads with 2 or 4): 0.1-0.16 us faster at decode sizes (benchmarks/NOTES.md,
// entry 32). Other blocks (kernel_sweep's, the scalar path) take it at run time.
template <typename T, typename W, typename O, int VEC, int CHUNKS>
auto split_kernel(int block) {
  if constexpr (VEC * sizeof(T) == 16) {
    if constexpr (CHUNKS == 1) {
      if (block == 64) return rms_norm_fwd_registers<T, W, O, VEC, CHUNKS, 64>;
      if (block == 128) return rms_norm_fwd_registers<T, W, O, VEC, CHUNKS, 128>;
      if (block == 256) return rms_norm_fwd_registers<T, W, O, VEC, CHUNKS, 256>;
    }
    if (block == 512) return rms_norm_fwd_registers<T, W, O, VEC, CHUNKS, 512>;
  }
  return rms_norm_fwd_registers<T, W, O, VEC, CHUNKS, kAnyBlock>;
}

template <typename T, typename W, typename O, int VEC>
cudaError_t launch_registers(const FwdProblem& p, const FwdLaunch& l, float inv_hidden, cudaStream_t stream) {
  RowMap m;
  m.tpr_log2 = ceil_log2(l.threads_per_row);
  m.cluster_log2 = ceil_log2(l.cluster);
  m.block_rows_log2 = ceil_log2(l.block / l.threads_per_row);
  m.split_log2 = ceil_log2(l.split);
  m.part_units = static_cast<int>(ceil_div(ceil_div(p.hidden, VEC), l.split));
  m.inv_hidden = inv_hidden;
  return dispatch_chunks<kMaxChunks>(l.chunks, [&](auto chunks) {
    constexpr int kChunks = decltype(chunks)::value;
    auto kernel = rms_norm_fwd_registers<T, W, O, VEC, kChunks, 0>;
    if (l.split > 1) kernel = split_kernel<T, W, O, VEC, kChunks>(l.fixed_block ? l.block : 0);
    return launch(kernel, dim3(static_cast<unsigned>(l.grid)), dim3(l.block), 0, l.cluster, stream, p, m);
  });
}

template <typename T, typename W, typename O, int VEC>
cudaError_t launch_staged(const FwdProblem& p, const FwdLaunch& l, float inv_hidden, cudaStream_t stream) {
  StagedMap m;
  m.cluster_log2 = ceil_log2(l.cluster);
  m.stages = l.stages;
  m.weight_in_smem = l.shared_weight && p.weight != nullptr && p.rows_per_weight >= p.rows;
  m.inv_hidden = inv_hidden;
  const size_t smem = fwd_staged_bytes(l, p.residual != nullptr, m.weight_in_smem ? int(sizeof(W)) : 0);
  return dispatch_chunks<kMaxStagedChunks>(l.chunks, [&](auto chunks) {
    constexpr int kChunks = decltype(chunks)::value;
    auto kernel = rms_norm_fwd_staged<T, W, O, VEC, kChunks>;
    int64_t grid = l.grid;
    if (grid == 0) {  // persistent: at most one cluster a row
      const int64_t clusters = persistent_clusters(kernel, l.block, smem, l.cluster, p.rows);
      if (clusters <= 0) return cudaErrorInvalidConfiguration;
      grid = clusters * l.cluster;
    }
    return launch(kernel, dim3(static_cast<unsigned>(grid)), dim3(l.block), smem, l.cluster, stream, p, m);
  });
}

template <typename T, typename W, typename O, int VEC>
cudaError_t launch_vec(const FwdProblem& p, const FwdLaunch& l, cudaStream_t stream) {
  const float inv_hidden = static_cast<float>(1.0 / static_cast<double>(p.hidden));
  if (l.kernel == FwdKernel::kStreaming) {
    return launch(rms_norm_fwd_streaming<T, W, O, VEC>, dim3(static_cast<unsigned>(l.grid)),
                  dim3(l.block), 0, 1, stream, p, inv_hidden);
  }
  if (l.kernel == FwdKernel::kStaged) {
    if constexpr (VEC * sizeof(T) == 16) {
      return launch_staged<T, W, O, VEC>(p, l, inv_hidden, stream);
    } else {
      return cudaErrorInvalidConfiguration;  // check_launch refuses it first
    }
  }
  return launch_registers<T, W, O, VEC>(p, l, inv_hidden, stream);
}

// The largest cluster a forward launch may take: probed on the staged kernel at the most
// shared memory the chooser gives one of its CTAs (one CTA a SM, so all 16 in one GPC).
int max_forward_cluster() {
  return largest_cluster<rms_norm_fwd_staged<__nv_bfloat16, float, __nv_bfloat16, 8, kTargetChunks>>(
      kRegistersBlock, size_t{kStagedMaxBytes}, kMaxCluster);
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
                          : choose_fwd_launch(p.rows, p.hidden, elem_bytes, vector_ok, max_forward_cluster(),
                                              p.residual != nullptr, dtype_bytes(p.y_dtype) > elem_bytes,
                                              p.weight != nullptr ? dtype_bytes(p.weight_dtype) : 0);
  const std::string bad = check_launch(l, p.rows, p.hidden, elem_bytes, vector_ok);
  if (!bad.empty()) return bad;
  if (l.kernel == FwdKernel::kStaged && max_cluster_size() < 2) return "staged launch: needs sm_90 or newer";

  const cudaError_t err = dispatch_dtypes<CudaTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    return dispatch_output<CudaTypes, T>(p.y_dtype, [&](auto y_tag) {
      using O = typename decltype(y_tag)::type;
      return l.vec == 1 ? launch_vec<T, W, O, 1>(p, l, stream)
                        : launch_vec<T, W, O, 16 / sizeof(T)>(p, l, stream);
    });
  });
  if (err != cudaSuccess) return std::string("kernel launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace jax_rmsnorm
