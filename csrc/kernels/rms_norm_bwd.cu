// Backward RMSNorm on CUDA: dx (plus the new_residual cotangent) and dweight.
//
// A persistent grid: ctas_per_weight_row CTAs per weight row walk over its rows, each
// thread keeping float32 dweight accumulators for the columns it owns. At the end every
// CTA writes one float32 partial row, and sum_dweight_partials adds the partials in a
// fixed order: the same inputs give the same bits on every run.
//  - rms_norm_bwd_registers: dy and s staged through shared memory (cp.async), one read
//    of each; a row shared by the threads of a CTA, or for long rows by a cluster of CTAs
//    (each with a column slice; the cluster writes one partial row).
//  - rms_norm_bwd_staged (sm_90): rows of 8192 bf16 / 4096 float32 elements and more on the
//    vector grid (and 2049-4096 bf16 with few row steps a CTA); persistent clusters, each
//    CTA's slice of the next rows bulk-copied into a shared-memory ring (staging.cuh), one
//    row's cluster exchange overlapped with the next row's dot product, one partial row per
//    cluster.
//  - rms_norm_bwd_row_tiles: rows the staged kernel does not take (sm_80, off the vector
//    grid, float32 beyond 131072) and the register kernel's CTA or cluster (of at most 8,
//    sm_90) does not hold; each row split into column
//    tiles over CTAs of a cooperative grid, which add their dot products through global
//    memory (a counter per row says when all are in), the tile kept in registers: still
//    one read of each.
//  - rms_norm_bwd_streaming: the fallback for rows too long even for that, or when the
//    grid cannot be resident at once: two passes over dy and s, and the CTA's partial
//    row in global memory (only this thread touches its columns).
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/dispatch.h"
#include "kernels/launch_config.h"
#include "kernels/reduce.cuh"
#include "kernels/rms_norm_cuda.h"
#include "kernels/staging.cuh"

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

// The d_new_residual term of dx at `p` (VEC elements), zeros without one.
template <typename T, int VEC>
__device__ __forceinline__ void residual_grad(const T* p, float (&extra)[VEC]) {
  if (p != nullptr) {
    load_as_float<VEC>(p, extra);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) extra[j] = 0.f;
  }
}

// dx = rstd * (g - n * mean_gn) + extra (the d_new_residual term); dweight partial += dy * n,
// with ROUND_N (the HF order, 16-bit rows) dy * round_T(n): y = round_T(n) * w there, and
// dx's n stays unrounded (the rounding passes gradients straight through).
template <bool ROUND_N, typename T, int VEC>
__device__ __forceinline__ Packed<T, VEC> input_grad(const Packed<T, VEC>& dy,
                                                     const Packed<T, VEC>& s,
                                                     const float (&w)[VEC], float rstd,
                                                     float mean_gn, const float (&extra)[VEC],
                                                     float (&dw)[VEC]) {
  Packed<T, VEC> dx;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float n = to_float(s.v[j]) * rstd;
    const float g = to_float(dy.v[j]) * w[j];
    dx.v[j] = from_float<T>(rstd * (g - n * mean_gn) + extra[j]);
    dw[j] += to_float(dy.v[j]) * (ROUND_N ? to_float(from_float<T>(n)) : n);
  }
  return dx;
}

// input_grad with the d_new_residual term read from global memory at `d_new_residual`.
template <bool ROUND_N, typename T, int VEC>
__device__ __forceinline__ Packed<T, VEC> input_grad(const Packed<T, VEC>& dy, const Packed<T, VEC>& s,
                                                     const float (&w)[VEC], float rstd, float mean_gn,
                                                     const T* d_new_residual, float (&dw)[VEC]) {
  float extra[VEC];
  residual_grad<T, VEC>(d_new_residual, extra);
  return input_grad<ROUND_N>(dy, s, w, rstd, mean_gn, extra, dw);
}

template <typename T, typename W, int VEC, int CHUNKS, bool ROUND_N>
__global__ void __launch_bounds__(kBwdBlock, 2)
    rms_norm_bwd_registers(BwdProblem p, int threads_per_row, int cluster, int stages) {
  using Unit = Packed<T, VEC>;
  __shared__ RowSumScratch scratch;
  // Dynamic shared memory: the weight row as float (read every row: from shared memory
  // it costs no L1/L2 traffic), then the staging ring, [stages][dy, s][CHUNKS][blockDim]
  // units and [stages][blockDim] rstd. Each thread copies in exactly the ring units it
  // later reads, so the ring needs no barrier; after the rows it merges the slots' dweight.
  // 128-byte aligned: starting 16 bytes past a 128-byte line (where the static scratch
  // ended) made the backward 7-11% slower, for a cause not established (benchmarks/NOTES.md,
  // entry 18).
  extern __shared__ __align__(128) unsigned char staging[];
  float* weight_row = reinterpret_cast<float*>(staging);
  Unit* ring = reinterpret_cast<Unit*>(
      weight_row + bwd_weight_floats(p.hidden, p.weight != nullptr, cluster, CHUNKS, blockDim.x, VEC));
  float* ring_rstd = reinterpret_cast<float*>(ring + int64_t(stages) * 2 * CHUNKS * blockDim.x);
  auto unit_at = [&](int stage, int array, int c) -> Unit& {
    return ring[((stage * 2 + array) * CHUNKS + c) * blockDim.x + threadIdx.x];
  };

  // A row's threads: threads_per_row of this CTA, or every thread of the cluster.
  start_cluster(scratch, cluster);
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
  int stage = 0, step = 0;
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
    const float mean_gn = row_sum(dot, threads_per_row, cluster, scratch, step++) / static_cast<float>(p.hidden);
    if (row_ok) {
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) {
          float w[VEC];
          load_weight<VEC>(weight, weight_index(c), w);
          store_packed(static_cast<T*>(p.dx) + offset + column(c),
                       input_grad<ROUND_N>(load_packed<T, VEC>(unit_at(stage, 0, c).v), load_packed<T, VEC>(unit_at(stage, 1, c).v), w, rstd, mean_gn,
                                  d_new_residual ? d_new_residual + offset + column(c) : nullptr,
                                  dw[c]));
        }
      }
    }
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

// The CTAs of one row-tile lane meet through a counter in global memory rather than a
// grid-wide barrier (measured on the H200: 5.2 us per row step with cg::grid_group::sync,
// where the step's bytes take 1.5 us): a CTA publishes its partial dot product with a
// release increment, and waits with acquire loads until every tile of its lane has.
__device__ __forceinline__ void publish_arrival(unsigned* counter) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(counter) : "memory");
}
__device__ __forceinline__ unsigned load_acquire(const unsigned* counter) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(counter) : "memory");
  return v;
}

// Rows split into `tiles` column tiles, one CTA each; `lanes` rows are in flight at once
// (CTA = lane * tiles + tile). Row step k of a lane: its CTAs put their partial dot
// products into `exchange` [2][lanes][tiles] (parity k % 2) and bump the lane's counter
// (`arrivals` [lanes], zeroed before the launch); each waits until the counter says all
// tiles have arrived, adds the row's partials in tile order (the same bits in every CTA)
// and writes its dx tile. The next row's tile is loaded before the wait, so the wait
// overlaps loads. Parity k's partials are rewritten at step k + 2, which a CTA reaches
// only after every CTA of its lane arrived at step k + 1, i.e. after each had read step k.
// Waiting on other CTAs needs them all resident: the grid is launched cooperatively.
// dweight: each lane's float32 sums for its rows, one partial row per lane and weight row;
// the sums live in shared memory (each thread's own), leaving the registers to two tiles.
template <typename T, typename W, int VEC, int CHUNKS, bool ROUND_N>
__global__ void __launch_bounds__(kBwdBlock, 2)
    rms_norm_bwd_row_tiles(BwdProblem p, int tiles, int lanes, float* exchange, unsigned* arrivals) {
  using Unit = Packed<T, VEC>;
  __shared__ RowSumScratch scratch;
  __shared__ float row_total;
  // Dynamic shared memory: this thread's weights as float, then its dweight sums, both
  // [CHUNKS * VEC][blockDim] (each thread reads and writes only its own).
  extern __shared__ __align__(128) float tile_floats[];  // as `staging` above
  float* tile_weight = tile_floats;
  float* tile_dw = tile_floats + CHUNKS * VEC * blockDim.x;
  const int tile = blockIdx.x % tiles, lane = blockIdx.x / tiles;
  unsigned* arrived = arrivals + lane;
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  auto column = [&](int c) {
    return (int64_t(tile) * CHUNKS * blockDim.x + int64_t(c) * blockDim.x + threadIdx.x) * VEC;
  };
  auto own = [&](int c, int j) { return (c * VEC + j) * blockDim.x + threadIdx.x; };
  const int64_t steps = (p.rows_per_weight + lanes - 1) / lanes;

  struct RowTile {
    Unit dy[CHUNKS], s[CHUNKS];
    float rstd;
  };
  auto load_tile = [&](int64_t first_row, int64_t step, RowTile& t) {
    const int64_t group_row = step * lanes + lane;
    if (group_row >= p.rows_per_weight) return;  // also every step past the last
    const int64_t row = first_row + group_row;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (column(c) < p.hidden) {
        t.dy[c] = load_packed<T, VEC>(static_cast<const T*>(p.dy) + row * p.hidden + column(c));
        t.s[c] = load_packed<T, VEC>(static_cast<const T*>(p.s) + row * p.hidden + column(c));
      }
    }
    t.rstd = p.rstd[row];
  };

  unsigned expected = 0;  // arrivals on this lane's counter once the current step is in
  for (int64_t group = 0; group < p.weight_rows; ++group) {
    const int64_t first_row = group * p.rows_per_weight;
    const W* w_row = weight_of_group<W>(p, group);
    if (w_row != nullptr) {
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (column(c) < p.hidden) {
          float w[VEC];
          load_as_float<VEC>(w_row + column(c), w);
#pragma unroll
          for (int j = 0; j < VEC; ++j) tile_weight[own(c, j)] = w[j];
        }
      }
    }
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) tile_dw[own(c, j)] = 0.f;
    }
    auto weights = [&](int c, float (&w)[VEC]) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) w[j] = w_row != nullptr ? tile_weight[own(c, j)] : 1.f;
    };
    // One row step on `cur`, loading the next step's tile into `next` meanwhile; the
    // loop below alternates the two tiles (no copies between them).
    auto row_step = [&](int64_t step, const RowTile& cur, RowTile& next) {
      const int64_t group_row = step * lanes + lane;
      const bool row_ok = group_row < p.rows_per_weight;
      float dot = 0.f;
      if (row_ok) {
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
          if (column(c) < p.hidden) {
            float w[VEC];
            weights(c, w);
            dot += dot_g_n(cur.dy[c], cur.s[c], w, cur.rstd);
          }
        }
      }
      dot = row_sum(dot, blockDim.x, 1, scratch);  // every thread has the CTA's sum
      float* sums = exchange + (int64_t(expected / tiles % 2) * lanes + lane) * tiles;
      expected += tiles;
      if (threadIdx.x == 0) {
        sums[tile] = dot;
        publish_arrival(arrived);  // release: the partial above is visible first
      }
      load_tile(first_row, step + 1, next);
      if (threadIdx.x < kWarp) {
        while (load_acquire(arrived) < expected) {
        }
        // The row's partials in tile order: lane i adds tiles i, i + 32, ..., then the
        // 32 lane sums go through the butterfly: the same bits in every CTA of the row.
        float v = 0.f;
        for (int k = threadIdx.x; k < tiles; k += kWarp) v += __ldcg(sums + k);
        v = row_sum(v, kWarp, 1, scratch);
        if (threadIdx.x == 0) row_total = v;
      }
      __syncthreads();
      const float mean_gn = row_total / static_cast<float>(p.hidden);
      if (row_ok) {
        const int64_t offset = (first_row + group_row) * p.hidden;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
          if (column(c) < p.hidden) {
            float w[VEC], dw[VEC] = {};
            weights(c, w);
            store_packed(static_cast<T*>(p.dx) + offset + column(c),
                         input_grad<ROUND_N>(cur.dy[c], cur.s[c], w, cur.rstd, mean_gn,
                                    d_new_residual ? d_new_residual + offset + column(c) : nullptr, dw));
#pragma unroll
            for (int j = 0; j < VEC; ++j) tile_dw[own(c, j)] += dw[j];
          }
        }
      }
    };
    RowTile even, odd;
    load_tile(first_row, 0, even);
    for (int64_t step = 0; step < steps; step += 2) {
      row_step(step, even, odd);
      if (step + 1 < steps) row_step(step + 1, odd, even);
    }
    if (p.dweight == nullptr) continue;  // the partials are only the exchange's scratch
    float* partial = p.dweight_partials + (group * p.ctas_per_weight_row + lane) * p.hidden;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (column(c) + j < p.hidden) partial[column(c) + j] = tile_dw[own(c, j)];
      }
    }
  }
}

// What a staged backward CTA needs besides the problem.
struct BwdStagedMap {
  int cluster_log2 = 0;            // CTAs of a cluster sharing a row
  int stages = 3;                  // the ring: the row being written, the next, the rest in flight
  int64_t clusters_per_group = 1;  // persistent clusters per weight row (one partial row each)
  float inv_hidden = 0.f;
  // Rows beyond a cluster: `tiles` (> 1) CTAs of a cooperative grid share each row instead,
  // CTA = (group * lanes + lane) * tiles + tile (a lane per cluster above), their sums
  // meeting in the weight row's last partial row: [slot][lanes][tiles] floats, then a
  // counter per slot and lane (zeroed before the launch), as the row tiles' do.
  int tiles = 1;
};

// Long rows, persistent (staging.cuh): cluster i of a weight row's clusters_per_group walks
// that weight row's rows i, i + clusters_per_group, ..., each CTA with its slice of the
// coming rows' dy and s in a shared-memory ring of `stages` (FUSED: d_new_residual is read
// from global memory, one row ahead of its use).
// The register kernel's clusters hold one row each and wait for it with nothing else in
// flight. Here the ring keeps the next rows in flight, and the cluster exchange of a row's
// dot product, which grows with the cluster (H200: 87% of copy bandwidth without a
// cluster, 68% at 16 CTAs when each row waited for it), overlaps the next row: row k + 1's
// dot product is computed and sent before row k's sum is received and its dx written. So
// rows k and k + 1 are both read from the ring (twice each), and the stage of row k - 1 is
// refilled at row k + 1's barrier: at least 3 stages. The weight slice (as float) and the
// float32 dweight sums live in registers; each cluster writes one partial row of dweight.
template <typename T, typename W, int VEC, int CHUNKS, bool FUSED, bool ROUND_N>
__global__ void __launch_bounds__(kRegistersBlock, 1) rms_norm_bwd_staged(BwdProblem p, BwdStagedMap m) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Unit = Packed<T, VEC>;
  static_assert(sizeof(Unit) == 16, "the staged kernel moves 16-byte accesses");
  // [stages][dy, s][CHUNKS x blockDim] accesses.
  extern __shared__ __align__(128) unsigned char staged_shared[];
  __shared__ RowSumScratch scratch;
  __shared__ unsigned long long stage_landed[kMaxStages];
  __shared__ float row_totals[kClusterSlots];  // tiled: a step's row sum, for every thread
  const bool tiled = m.tiles > 1;
  const int cluster = tiled ? 1 : 1 << m.cluster_log2;
  start_cluster(scratch, cluster);

  const int block = blockDim.x;
  const int rank = tiled ? static_cast<int>(blockIdx.x % m.tiles) : static_cast<int>(blockIdx.x & (cluster - 1));
  StagedSlices ring(staged_shared, stage_landed, static_cast<int>(p.hidden / VEC), CHUNKS * block, rank, 2,
                    m.stages, p.hidden * int64_t{sizeof(T)});
  ring.sources[0] = static_cast<const unsigned char*>(p.dy);
  ring.sources[1] = static_cast<const unsigned char*>(p.s);
  const int first = ring.first, count = ring.count;
  auto mine = [&](int c) { return c * block + static_cast<int>(threadIdx.x); };  // index in the slice
  const int64_t unit = tiled ? int64_t{blockIdx.x / m.tiles} : int64_t{blockIdx.x >> m.cluster_log2};
  const int64_t group = unit / m.clusters_per_group, lane = unit % m.clusters_per_group;
  const int64_t group_first_row = group * p.rows_per_weight;
  // Step k's row of this cluster, or -1 past the weight row's rows.
  auto row_of = [&](int64_t k) {
    const int64_t group_row = lane + k * m.clusters_per_group;
    return group_row < p.rows_per_weight ? group_first_row + group_row : int64_t{-1};
  };
  if (threadIdx.x == 0) ring.init_barriers();
  __syncthreads();  // the mbarriers are initialized before anyone waits on them
  if (threadIdx.x == 0) {
    for (int k = 0; k < m.stages; ++k) {
      if (row_of(k) >= 0) ring.copy_row(row_of(k), k);
    }
  }
  // The weight slice as float, beside the first rows' copies.
  const W* weight = weight_of_group<W>(p, group);
  float w[CHUNKS][VEC];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    if (mine(c) < count) {
      load_weight<VEC>(weight, int64_t{first + mine(c)} * VEC, w[c]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) w[c][j] = 0.f;
    }
  }
  auto unit_at = [&](int stage, int array, int c) {
    return unpack<T, VEC>(mine(c) < count ? ring.slot(stage, array)[mine(c)] : uint4{});
  };
  // This thread's part of a staged row's sum of g * n (zero past the slice).
  auto dot_of = [&](int stage, float rstd) {
    float dot = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) dot += dot_g_n(unit_at(stage, 0, c), unit_at(stage, 1, c), w[c], rstd);
    return dot;
  };
  float* exchange = tiled ? p.dweight_partials + ((group + 1) * p.ctas_per_weight_row - 1) * p.hidden : nullptr;
  unsigned* arrivals =
      tiled ? reinterpret_cast<unsigned*>(exchange + int64_t{kClusterSlots} * m.tiles * m.clusters_per_group) : nullptr;
  // A row step's sum over the CTAs sharing the row: sent (the CTA's sum, returned), then
  // received (the row's). Over a cluster, row_sum_send / row_sum_receive. Tiled, thread 0
  // publishes the CTA's sum with a release increment of the slot's counter, and warp 0
  // waits for all tiles' and adds them in tile order (the same bits in every CTA of the
  // row). Sends run at most one step ahead of receives, so slot k % 4 is rewritten at step
  // k + 4 only after every CTA of the lane has sent k + 2, which each did after reading k.
  auto send = [&](float dot, int64_t k, auto after_barrier) {
    const float v = row_sum_send(dot, block, cluster, scratch, static_cast<int>(k), after_barrier);
    if (tiled && threadIdx.x == 0) {
      const int64_t slot = (k % kClusterSlots) * m.clusters_per_group + lane;
      exchange[slot * m.tiles + rank] = v;
      publish_arrival(arrivals + slot);  // release: the sum above is visible first
    }
    return v;
  };
  auto receive = [&](float v, int64_t k) {
    if (!tiled) return row_sum_receive(v, cluster, scratch, static_cast<int>(k));
    const int64_t slot = (k % kClusterSlots) * m.clusters_per_group + lane;
    if (threadIdx.x < kWarp) {
      const unsigned expected = static_cast<unsigned>(k / kClusterSlots + 1) * static_cast<unsigned>(m.tiles);
      while (load_acquire(arrivals + slot) < expected) {
      }
      const float* sums = exchange + slot * m.tiles;
      float total = 0.f;
      for (int t = static_cast<int>(threadIdx.x); t < m.tiles; t += kWarp) total += __ldcg(sums + t);
      total = lane_group_sum(total, kWarp);
      if (threadIdx.x == 0) row_totals[k % kClusterSlots] = total;
    }
    __syncthreads();
    return row_totals[k % kClusterSlots];
  };

  float dw[CHUNKS][VEC] = {};
  if (row_of(0) >= 0) {
    // Row k is in stage k % stages, landing in phase (k / stages) % 2 of its mbarrier.
    int stage = 0, phase = 0;
    auto advance = [&](int& st, int& ph) {
      if (++st == m.stages) {
        st = 0;
        ph ^= 1;
      }
    };
    float rstd = p.rstd[row_of(0)];
    float next_rstd = row_of(1) >= 0 ? p.rstd[row_of(1)] : 0.f;
    ring.wait(0, 0);
    float cta_sum = send(dot_of(0, rstd), 0, NothingAfterBarrier{});
    int free_stage = 0;  // the stage of row k - 1 (from k = 1)
    for (int64_t k = 0;; ++k) {
      const int64_t row = row_of(k);
      const bool has_next = row_of(k + 1) >= 0;  // the same for every CTA of the cluster
      const int64_t at = row * p.hidden + int64_t{first} * VEC;
      // FUSED: row k's d_new_residual term, in flight during row k + 1's dot product.
      WordOf<T, VEC> extra[FUSED ? CHUNKS : 1];
      if constexpr (FUSED) {
        const T* d_new_residual = static_cast<const T*>(p.d_new_residual) + at;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) extra[c] = load_word_or_zero<T, VEC>(d_new_residual + mine(c) * VEC, mine(c) < count);
      }
      int next_stage = stage, next_phase = phase;
      advance(next_stage, next_phase);
      float next_sum = 0.f, after_next_rstd = 0.f;
      if (has_next) {
        if (row_of(k + 2) >= 0) after_next_rstd = p.rstd[row_of(k + 2)];  // in flight meanwhile
        ring.wait(next_stage, next_phase);
        // Past this barrier every thread is done with row k - 1: refill its stage.
        auto refill = [&] {
          if (threadIdx.x == 0 && k >= 1 && row_of(k - 1 + m.stages) >= 0) {
            ring.refill(row_of(k - 1 + m.stages), free_stage);
          }
        };
        next_sum = send(dot_of(next_stage, next_rstd), k + 1, refill);
      }
      const float mean_gn = receive(cta_sum, k) * m.inv_hidden;
      T* dx = static_cast<T*>(p.dx) + at;
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) {
        if (mine(c) < count) {
          float residual_term[VEC] = {};
          if constexpr (FUSED) {
            const Unit r = unpack<T, VEC>(extra[c]);
#pragma unroll
            for (int j = 0; j < VEC; ++j) residual_term[j] = to_float(r.v[j]);
          }
          store_packed(dx + mine(c) * VEC, input_grad<ROUND_N>(unit_at(stage, 0, c), unit_at(stage, 1, c), w[c], rstd,
                                                      mean_gn, residual_term, dw[c]));
        }
      }
      if (!has_next) break;
      free_stage = stage;
      stage = next_stage;
      phase = next_phase;
      cta_sum = next_sum;
      rstd = next_rstd;
      next_rstd = after_next_rstd;
    }
  }
  if (p.dweight_partials == nullptr || p.dweight == nullptr) return;  // tiled without dweight: scratch
  float* partial = p.dweight_partials + (group * p.ctas_per_weight_row + lane) * p.hidden + int64_t{first} * VEC;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    if (mine(c) < count) {
#pragma unroll
      for (int j = 0; j < VEC; j += 4) {
        *reinterpret_cast<float4*>(partial + mine(c) * VEC + j) =
            make_float4(dw[c][j], dw[c][j + 1], dw[c][j + 2], dw[c][j + 3]);
      }
    }
  }
#endif
}

// What a few-rows CTA needs besides the problem (launch_config.h: fit_few_rows).
struct BwdFewRowsMap {
  int cluster_log2 = 0;     // CTAs of a weight row's cluster, each with a column slice
  int lanes_log2 = 0;       // threads sharing a row in a CTA (at most a warp)
  int rows_per_thread = 1;  // row slots of the CTA x this cover the weight row's rows
  float inv_hidden = 0.f;
};

// Few rows (decode): one cluster per weight row holds all its rows at once. CTA `rank`
// owns accesses [rank, rank + 1) x CHUNKS x lanes of every row; lanes-thread groups of
// it (the row slots) take rows slot, slot + slots, ... Every thread issues all its loads
// first; a row's dot product is summed over its lanes by shuffles, then over the cluster
// in one exchange for all rows (each CTA's sum of row r lands in slot [r][rank] of every
// CTA, by st.async, on one mbarrier); then dx, and the slice's dweight summed over the
// CTA's slots in slot order and written directly: one kernel, no partial rows.
template <typename T, typename W, int VEC, int CHUNKS, bool ROUND_N>
__global__ void __launch_bounds__(kFewRowsMaxBlock) rms_norm_bwd_few_rows(BwdProblem p, BwdFewRowsMap m) {
  constexpr int kRows = kFewRowsItems / CHUNKS;  // the most rows a thread takes
  using Word = WordOf<T, VEC>;
  // [rows][cluster] the CTA sums of each row's dot product, then [slots][CHUNKS x lanes x
  // VEC] the slots' dweight sums.
  extern __shared__ __align__(16) float few_rows_shared[];
  __shared__ unsigned long long sums_landed;
  const int cluster = 1 << m.cluster_log2;
  const int rows = static_cast<int>(p.rows_per_weight);
  const int lanes = 1 << m.lanes_log2;
  const int lane = threadIdx.x & (lanes - 1), slot = threadIdx.x >> m.lanes_log2;
  const int slots = blockDim.x >> m.lanes_log2;
  const int rank = blockIdx.x & (cluster - 1);
  const int64_t group = blockIdx.x >> m.cluster_log2;
  float* row_sums = few_rows_shared;
  float* slot_dw = few_rows_shared + (rows * cluster + 3) / 4 * 4;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster > 1) {
    if (threadIdx.x == 0) {
      init_mbarrier(shared_address(&sums_landed), 1);
      fence_mbarrier_inits();
    }
    arrive_at_cluster_barrier();  // waited on before the first send: its latency hides behind the loads
  }
#endif
  const int64_t units = p.hidden / VEC;
  auto unit_of = [&](int c) { return (int64_t(rank) * CHUNKS + c) * lanes + lane; };
  auto row_of = [&](int q) { return slot + q * slots; };
  auto has_row = [&](int q) { return q < m.rows_per_thread && row_of(q) < rows; };  // a real row in slot q
  const int64_t first = group * p.rows_per_weight * p.hidden;
  const T* dy = static_cast<const T*>(p.dy) + first;
  const T* s = static_cast<const T*>(p.s) + first;
  const bool fused = p.d_new_residual != nullptr;
  const T* d_new_residual = fused ? static_cast<const T*>(p.d_new_residual) + first : dy;  // dy: never read

  // Every load in flight before anything waits on one: rstd, dy, s, the d_new_residual
  // term as machine words, then the weights.
  Word dy_w[kRows][CHUNKS], s_w[kRows][CHUNKS], extra_w[kRows][CHUNKS];
  float rstd[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    const bool row_ok = has_row(q);
    rstd[q] = row_ok ? p.rstd[group * p.rows_per_weight + row_of(q)] : 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const bool ok = row_ok && unit_of(c) < units;
      const int64_t at = row_of(q) * p.hidden + unit_of(c) * VEC;
      dy_w[q][c] = load_word_or_zero<T, VEC>(dy + at, ok);
      s_w[q][c] = load_word_or_zero<T, VEC>(s + at, ok);
      extra_w[q][c] = load_word_or_zero<T, VEC>(d_new_residual + at, ok && fused);
    }
  }
  const W* weight = weight_of_group<W>(p, group);
  float w[CHUNKS][VEC];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    if (unit_of(c) < units) {
      load_weight<VEC>(weight, unit_of(c) * VEC, w[c]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) w[c][j] = 0.f;
    }
  }

  // Each row's CTA sum: over the thread's accesses, then its lanes (xor butterfly: every
  // lane gets the same bits), sent to every CTA of the cluster.
  float sum[kRows];
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    sum[q] = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) sum[q] += dot_g_n(unpack<T, VEC>(dy_w[q][c]), unpack<T, VEC>(s_w[q][c]), w[c], rstd[q]);
    sum[q] = lane_group_sum(sum[q], lanes);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster > 1) {
    // Lane l of a row's group sends its sum to CTAs l, l + lanes, ...; each CTA then adds
    // the cluster's sums of a row in rank order: the same bits everywhere.
    wait_at_cluster_barrier();
    const unsigned landed = shared_address(&sums_landed);
    if (threadIdx.x == 0) arrive_expecting_bytes(landed, rows * cluster * int(sizeof(float)));
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      if (has_row(q)) {
        const unsigned local = shared_address(&row_sums[row_of(q) * cluster + rank]);
        for (int peer = lane; peer < cluster; peer += lanes) store_to_peer(local, landed, peer, sum[q]);
      }
    }
    wait_mbarrier_phase<WaitScope::kCluster>(landed, 0);
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      if (has_row(q)) {
        float total = 0.f;
        for (int r = 0; r < cluster; ++r) total += row_sums[row_of(q) * cluster + r];
        sum[q] = total;
      }
    }
  }
#endif

  // dx, and each thread's dweight sums over its rows, kept in its own entries of the
  // slots' array (shared memory: registers hold the rows), e = (c * lanes + lane) * VEC + j.
  const int slice = CHUNKS * lanes * VEC;
  float* my_dw = slot_dw + slot * slice + lane * VEC;  // 16-byte aligned: VEC >= 4
  const bool want_dweight = p.dweight != nullptr;
  T* dx = static_cast<T*>(p.dx) + first;
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    if (q >= m.rows_per_thread) break;
    const bool row_ok = has_row(q);
    const float mean_gn = sum[q] * m.inv_hidden;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      float dw[VEC] = {};
      if (row_ok && unit_of(c) < units) {
        float residual_term[VEC];
        const Packed<T, VEC> r = unpack<T, VEC>(extra_w[q][c]);  // zeros without d_new_residual
#pragma unroll
        for (int j = 0; j < VEC; ++j) residual_term[j] = to_float(r.v[j]);
        store_packed(dx + row_of(q) * p.hidden + unit_of(c) * VEC,
                     input_grad<ROUND_N>(unpack<T, VEC>(dy_w[q][c]), unpack<T, VEC>(s_w[q][c]), w[c], rstd[q], mean_gn,
                                residual_term, dw));
      }
      if (want_dweight) {
#pragma unroll
        for (int j = 0; j < VEC; j += 4) {
          float4& to = *reinterpret_cast<float4*>(my_dw + c * lanes * VEC + j);
          const float4 before = q == 0 ? make_float4(0.f, 0.f, 0.f, 0.f) : to;
          to = make_float4(before.x + dw[j], before.y + dw[j + 1], before.z + dw[j + 2], before.w + dw[j + 3]);
        }
      }
    }
  }
  if (!want_dweight) return;
  // The slice's columns summed over the slots in slot order.
  __syncthreads();
  W* dweight = static_cast<W*>(p.dweight) + group * p.hidden;
  const int64_t slice_first = int64_t(rank) * slice;
  for (int e = threadIdx.x; e < slice && slice_first + e < p.hidden; e += blockDim.x) {
    float total = 0.f;
    for (int k = 0; k < slots; ++k) total += slot_dw[k * slice + e];
    dweight[slice_first + e] = from_float<W>(total);
  }
}

template <typename T, typename W, int VEC, bool ROUND_N>
__global__ void __launch_bounds__(kMaxBlock) rms_norm_bwd_streaming(BwdProblem p) {
  __shared__ RowSumScratch scratch;
  const CtaRows cta(p, 1);
  const W* weight = weight_of_group<W>(p, cta.group);
  const T* dy_all = static_cast<const T*>(p.dy);
  const T* s_all = static_cast<const T*>(p.s);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  // Without dweight the partials, if any, are the row tiles' scratch (when this is their fallback).
  float* partial = p.dweight == nullptr ? nullptr : p.dweight_partials + blockIdx.x * p.hidden;
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
                   input_grad<ROUND_N>(load_packed<T, VEC>(dy_all + offset + col),
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

// dweight[group, col] = sum over k < summed of partials[group * ctas + k, col], in a fixed
// order. A CTA covers blockDim.x x VEC columns (sum_partials_cols; VEC = 4: 16-byte loads,
// where the rows allow); its blockDim.y thread rows ("lanes", sum_partials_lanes) each sum
// every lanes-th partial, in order, and thread row 0 adds the lane sums in lane order.
// A lane issues its next kSumBatch loads before it adds them (still in order): one round
// trip to L2 per batch, not per partial (264 partials were 4.2 us at H = 4096 with the
// loop's loads one after another). The lane sums are added as whole accesses, the VEC
// columns' chains side by side (one column at a time, 4 x 32 dependent shared loads: the
// kernel took 3.6 us at 4096 x 4096 then, 3.1 now; benchmarks/NOTES.md entry 24).

template <typename W, int VEC>
__global__ void sum_dweight_partials(BwdProblem p, int64_t summed) {
  using Word = Packed<float, VEC>;
  // Machine words, so each lane sum moves as one shared access (see MachineWord).
  __shared__ WordOf<float, VEC> sums[kSumMaxLanes][kSumMaxCols];
  const int lanes = blockDim.y;
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const int64_t group = blockIdx.y;
  const float* partials = p.dweight_partials + group * p.ctas_per_weight_row * p.hidden;
  Word acc = {};
  if (col < p.hidden) {
    const float* column = partials + col;
    for (int64_t k = threadIdx.y; k < summed; k += int64_t{kSumBatch} * lanes) {
      Word batch[kSumBatch];
#pragma unroll
      for (int b = 0; b < kSumBatch; ++b) {
        if (k + b * lanes < summed) batch[b] = load_packed<float, VEC>(column + (k + b * lanes) * p.hidden);
      }
#pragma unroll
      for (int b = 0; b < kSumBatch; ++b) {
        if (k + b * lanes < summed) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc.v[j] += batch[b].v[j];
        }
      }
    }
  }
  memcpy(&sums[threadIdx.y][threadIdx.x], &acc, sizeof(acc));
  __syncthreads();
  if (threadIdx.y == 0 && col < p.hidden) {
    Word total = {};
    for (int k = 0; k < lanes; ++k) {
      const Word lane_sum = unpack<float, VEC>(sums[k][threadIdx.x]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) total.v[j] += lane_sum.v[j];
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) static_cast<W*>(p.dweight)[group * p.hidden + col + j] = from_float<W>(total.v[j]);
  }
}

// Launches sum_dweight_partials over the first `summed` partial rows of each weight row.
template <typename W>
cudaError_t launch_sum_partials(const BwdProblem& p, int64_t summed, cudaStream_t stream) {
  const int vec = p.hidden % 4 == 0 && aligned_to(p.dweight_partials, 16) ? 4 : 1;
  const int lanes = sum_partials_lanes(summed);
  const int cols = sum_partials_cols(ceil_div(p.hidden, int64_t{vec}), p.weight_rows);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.hidden, int64_t{cols} * vec)), static_cast<unsigned>(p.weight_rows));
  const dim3 block(cols, lanes);
  return vec == 4 ? launch(sum_dweight_partials<W, 4>, grid, block, 0, 1, stream, p, summed)
                  : launch(sum_dweight_partials<W, 1>, grid, block, 0, 1, stream, p, summed);
}

// Launches the row kernel for launch `l`; `summed` gets how many partial rows per weight
// row hold dweight sums (rms_norm_bwd_row_tiles keeps one for its exchange).
template <typename T, typename W, int VEC, bool ROUND_N>
cudaError_t launch_bwd(const BwdProblem& p, const BwdLaunch& l, cudaStream_t stream, int64_t& summed) {
  const int64_t units = p.weight_rows * p.ctas_per_weight_row;
  summed = p.ctas_per_weight_row;
  if (l.kernel == FwdKernel::kRowTiles) {
    // It needs the partials (its exchange row lives there: the partial sums, then one
    // arrival counter per lane), a lane per partial row but one, and the whole grid
    // resident; a call that cannot have that (no dweight wanted, a saved export's
    // partial count) streams instead.
    const int64_t lanes = p.ctas_per_weight_row - 1;
    constexpr int kChunks = bwd_row_tile_chunks(VEC);
    constexpr auto kernel = rms_norm_bwd_row_tiles<T, W, VEC, kChunks, ROUND_N>;
    const size_t smem = size_t{2} * 4 * kChunks * l.block * VEC;  // weights, dweight sums
    if (l.chunks == kChunks && p.dweight_partials != nullptr && lanes >= 1 &&
        (2 * l.tiles + 1) * lanes <= p.hidden && l.tiles * lanes <= resident_ctas<kernel>(l.block, smem)) {
      float* exchange = p.dweight_partials + lanes * p.hidden;
      unsigned* arrivals = reinterpret_cast<unsigned*>(exchange + 2 * l.tiles * lanes);
      cudaError_t e = cudaMemsetAsync(arrivals, 0, sizeof(unsigned) * lanes, stream);
      if (e != cudaSuccess) return e;
      summed = lanes;
      return launch_with(kernel, dim3(static_cast<unsigned>(l.tiles * lanes)), dim3(l.block), smem, 1,
                         /*cooperative=*/true, stream, p, l.tiles, static_cast<int>(lanes), exchange, arrivals);
    }
  }
  if (l.kernel == FwdKernel::kStaged) {
    if constexpr (VEC * sizeof(T) == 16) {
      BwdStagedMap m;
      m.cluster_log2 = ceil_log2(l.cluster);
      m.stages = l.stages;
      m.inv_hidden = static_cast<float>(1.0 / static_cast<double>(p.hidden));
      const size_t smem = staged_bytes(l.block, l.chunks, VEC, l.stages, 2, 0);
      const bool fused = p.d_new_residual != nullptr;
      auto kernel = fused ? rms_norm_bwd_staged<T, W, VEC, kBwdStagedChunks, true, ROUND_N>
                          : rms_norm_bwd_staged<T, W, VEC, kBwdStagedChunks, false, ROUND_N>;
      if (l.tiles > 1) {
        // Rows beyond a cluster: `tiles` CTAs a row over a cooperative grid, at most a lane
        // per partial row but one (fewer where the weight rows' lanes would not all be
        // resident), the exchange and its counters in that last partial row. A call that
        // cannot have that (no partials, a saved export's partial count) takes the row tiles.
        const int64_t resident = persistent_clusters(kernel, l.block, smem, 1, int64_t{1} << 30);
        int64_t lanes = p.ctas_per_weight_row - 1;
        const int64_t fit = resident / (int64_t{l.tiles} * p.weight_rows);
        if (fit < lanes) lanes = fit;
        if (p.dweight_partials == nullptr || lanes < 1 ||
            (int64_t{kClusterSlots} * l.tiles + kClusterSlots) * lanes > p.hidden) {
          BwdLaunch tiles = l;
          use_row_tiles(tiles, ceil_div(p.hidden, int64_t{VEC}));
          return launch_bwd<T, W, VEC, ROUND_N>(p, tiles, stream, summed);
        }
        m.tiles = l.tiles;
        m.clusters_per_group = lanes;
        // Every weight row's counters: one strided memset.
        const size_t pitch = sizeof(float) * size_t(p.ctas_per_weight_row) * size_t(p.hidden);
        float* first_exchange = p.dweight_partials + (p.ctas_per_weight_row - 1) * p.hidden;
        cudaError_t e = cudaMemset2DAsync(first_exchange + int64_t{kClusterSlots} * l.tiles * lanes, pitch, 0,
                                          sizeof(unsigned) * kClusterSlots * lanes, size_t(p.weight_rows), stream);
        if (e != cudaSuccess) return e;
        summed = lanes;
        const int64_t grid = p.weight_rows * lanes * l.tiles;
        return launch_with(kernel, dim3(static_cast<unsigned>(grid)), dim3(l.block), smem, 1, /*cooperative=*/true,
                           stream, p, m);
      }
      // Persistent, per weight row: at most one cluster per partial row and per row (one
      // cluster when there are no rows: it writes the zero partial).
      const int64_t rows = p.rows_per_weight > 1 ? p.rows_per_weight : 1;
      const int64_t clusters = persistent_clusters(kernel, l.block, smem, l.cluster,
                                                   p.ctas_per_weight_row < rows ? p.ctas_per_weight_row : rows);
      if (clusters <= 0) return cudaErrorInvalidConfiguration;
      m.clusters_per_group = clusters;
      summed = clusters;
      const int64_t grid = p.weight_rows * clusters * l.cluster;
      if (grid > 0x7fffffff) return cudaErrorInvalidConfiguration;
      return launch(kernel, dim3(static_cast<unsigned>(grid)), dim3(l.block), smem, l.cluster, stream, p, m);
    } else {
      return cudaErrorInvalidConfiguration;  // refused by check_staged_bwd first
    }
  }
  if (l.kernel == FwdKernel::kFewRows) {
    if constexpr (VEC * sizeof(T) == 16) {
      BwdFewRowsMap m;
      m.cluster_log2 = ceil_log2(l.cluster);
      m.lanes_log2 = ceil_log2(l.threads_per_row);
      m.rows_per_thread = few_rows_per_thread(l, p.rows_per_weight);
      m.inv_hidden = static_cast<float>(1.0 / static_cast<double>(p.hidden));
      const size_t smem = few_rows_bytes(l, p.rows_per_weight);
      const int64_t grid = p.weight_rows * l.cluster;
      return dispatch_chunks<kFewRowsMaxChunks>(l.chunks, [&](auto chunks) {
        return launch(rms_norm_bwd_few_rows<T, W, VEC, decltype(chunks)::value, ROUND_N>, dim3(static_cast<unsigned>(grid)),
                      dim3(l.block), smem, l.cluster, stream, p, m);
      });
    } else {
      return cudaErrorInvalidConfiguration;  // refused by check_few_rows_bwd first
    }
  }
  if (l.kernel != FwdKernel::kRegisters) {
    return launch(rms_norm_bwd_streaming<T, W, VEC, ROUND_N>, dim3(static_cast<unsigned>(units)), dim3(kMaxBlock), 0,
                  1, stream, p);
  }
  const size_t smem =
      4 * bwd_weight_floats(p.hidden, p.weight != nullptr, l.cluster, l.chunks, l.block, l.vec) +
      l.stages * bwd_stage_bytes(l, sizeof(T));
  return dispatch_chunks<kMaxBwdChunks>(l.chunks, [&](auto chunks) {
    return launch(rms_norm_bwd_registers<T, W, VEC, decltype(chunks)::value, ROUND_N>,
                  dim3(static_cast<unsigned>(units * l.cluster)), dim3(l.block), smem, l.cluster, stream, p,
                  l.threads_per_row, l.cluster, l.stages);
  });
}

// The largest cluster a backward launch may take: probed on the staged kernel at the most
// shared memory the chooser gives one of its CTAs.
int max_backward_cluster() {
  return largest_cluster<rms_norm_bwd_staged<__nv_bfloat16, float, 8, kBwdStagedChunks, false, false>>(
      kRegistersBlock, size_t(staged_bytes(kRegistersBlock, kBwdStagedChunks, 8, kBwdStagedStages, 2, 0)),
      kMaxCluster);
}

// The staged kernel's limits, for launches given from outside (kernel_sweep); empty when
// `l` is one it runs.
std::string check_staged_bwd(const BwdLaunch& l, int64_t hidden, int elem_bytes) {
  if (l.vec * elem_bytes != 16) return "staged launch: 16-byte accesses only";
  if (!is_pow2(l.block) || l.block < 2 * kWarp || l.block > kRegistersBlock || l.threads_per_row != l.block ||
      l.chunks != kBwdStagedChunks || !is_pow2(l.cluster) || l.cluster > kMaxCluster ||
      l.stages < 3 || l.stages > kMaxStages) {
    return "staged launch: 4 chunks, 3 or 4 stages, counts powers of two within the kernel's limits";
  }
  if (l.tiles < 1 || (l.tiles > 1 && l.cluster != 1)) return "staged launch: tiles over CTAs of the grid, or a cluster";
  if (ceil_div(hidden, l.vec) > int64_t{l.cluster} * l.tiles * l.block * l.chunks) {
    return "staged launch: the row does not fit its cluster (or tiles)";
  }
  if (max_cluster_size() < 2) return "staged launch: needs sm_90 or newer";
  return {};
}

}  // namespace

double device_memory_bandwidth() {
  static std::atomic<int64_t> cached[kMaxDevices];
  return double(once_per_device(cached, int64_t{0}, [](int device) -> int64_t {
    int clock_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
      return 0;
    }
    return int64_t{2} * clock_khz * 1000 * (bus_bits / 8);
  }));
}

// The few-rows kernel's limits, for launches given from outside (kernel_sweep); empty when
// `l` is one it runs.
std::string check_few_rows_bwd(const BwdLaunch& l, int64_t rows, int64_t hidden, bool vector_ok, int max_cluster) {
  BwdLaunch fitted = l;
  if (l.vec == 1 || !vector_ok || !fit_few_rows(fitted, rows, ceil_div(hidden, l.vec)) || fitted.block != l.block ||
      fitted.chunks != l.chunks || (l.cluster > 1 && l.cluster > max_cluster)) {
    return "few-rows launch: 16-byte accesses, and the rows must fit one cluster of that shape";
  }
  return {};
}

std::string rms_norm_bwd_cuda(const BwdProblem& problem, cudaStream_t stream, const BwdLaunch* chosen) {
  // No rows still writes dweight (zeros, through zero partials); no columns writes nothing.
  if (problem.hidden == 0 || problem.weight_rows == 0) return {};
  BwdProblem p = problem;
  const int elem_bytes = dtype_bytes(p.x_dtype);
  const int vec = 16 / elem_bytes;
  const bool vector_ok =
      p.hidden % vec == 0 && aligned_to(p.dy, 16) && aligned_to(p.s, 16) && aligned_to(p.dx, 16) &&
      (p.d_new_residual == nullptr || aligned_to(p.d_new_residual, 16)) &&
      (p.dweight_partials == nullptr || aligned_to(p.dweight_partials, 16)) &&
      (p.weight == nullptr ||
       aligned_to(p.weight, weight_alignment(vec, dtype_bytes(p.weight_dtype))));
  const int max_cluster = max_backward_cluster();
  BwdLaunch l = chosen != nullptr ? *chosen
                                  : choose_bwd_launch(p.hidden, elem_bytes, vector_ok, max_cluster, p.rows_per_weight);
  if (chosen == nullptr) fit_bwd_stages_to_device(l, p.rows_per_weight, p.ctas_per_weight_row, device_memory_bandwidth());
  if (l.vec != 1 && !vector_ok) return "vector launch for unaligned buffers";
  // Without dweight only the column-tile kernels use the partials (their exchange): the
  // other kernels would write partial rows nobody reads.
  if (p.dweight == nullptr && !exchanges_in_partials(l)) p.dweight_partials = nullptr;
  if (l.kernel == FwdKernel::kStaged || l.kernel == FwdKernel::kFewRows) {
    const std::string bad = l.kernel == FwdKernel::kStaged ? check_staged_bwd(l, p.hidden, elem_bytes)
                                                           : check_few_rows_bwd(l, p.rows_per_weight, p.hidden, vector_ok, max_cluster);
    if (!bad.empty()) return bad;
  }
  if (p.weight_rows * p.ctas_per_weight_row * l.cluster > 0x7fffffff) return "too many CTAs for one launch";
  if (p.weight_rows > 65535) return "too many weight rows (vmap size) for one launch";
  // row_sum's cluster exchange relies on its barrier over the whole CTA (reduce.cuh).
  if (l.cluster > 1 && l.kernel != FwdKernel::kFewRows && (l.threads_per_row != l.block || l.block <= kWarp)) {
    return "cluster launch: one row per CTA, of more than a warp";
  }

  const cudaError_t err = dispatch_dtypes<CudaTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    int64_t summed = 0;
    auto launch_rows = [&](auto round_n) {
      constexpr bool kRoundN = decltype(round_n)::value;
      return l.vec == 1 ? launch_bwd<T, W, 1, kRoundN>(p, l, stream, summed)
                        : launch_bwd<T, W, 16 / sizeof(T), kRoundN>(p, l, stream, summed);
    };
    // The HF order's rounding of n is the identity for float32 rows: no kernels for it.
    cudaError_t e;
    if constexpr (sizeof(T) < 4) {
      e = p.round_normalized ? launch_rows(std::true_type{}) : launch_rows(std::false_type{});
    } else {
      e = launch_rows(std::false_type{});
    }
    // The few-rows kernel writes dweight itself, the register kernel when one CTA covers a weight row.
    const bool direct =
        l.kernel == FwdKernel::kFewRows || (l.kernel == FwdKernel::kRegisters && p.ctas_per_weight_row == 1);
    if (e != cudaSuccess || p.dweight == nullptr || direct) return e;
    return launch_sum_partials<W>(p, summed, stream);
  });
  if (err != cudaSuccess) return std::string("kernel launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace jax_rmsnorm
