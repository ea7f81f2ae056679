// Every launch heuristic lives here: one chooser per kernel family.
#pragma once

#include <cstdint>

namespace jax_rmsnorm {

// kRowTiles: backward only (long rows split into column tiles over a cooperative grid).
// kStaged: long rows over persistent clusters, rows staged in shared memory (sm_90).
// kFewRows: backward only (decode: one cluster holds all rows of a weight row at once).
enum class FwdKernel { kRegisters, kStreaming, kRowTiles, kStaged, kFewRows };

struct FwdLaunch {
  FwdKernel kernel = FwdKernel::kRegisters;
  int vec = 1;              // elements per access: 16 bytes, or 1 on the scalar path
  int chunks = 1;           // accesses per thread per row (kRegisters: the row lives in registers)
  int threads_per_row = 1;  // threads sharing a row inside one CTA (power of two)
  int cluster = 1;          // CTAs sharing one row through distributed shared memory
  int split = 1;            // CTAs that each reduce the whole row and write 1/split of it
  int block = 1;            // threads per CTA
  int stages = 1;           // kStaged: rows each CTA has in flight (its shared-memory ring)
  bool shared_weight = true;  // kStaged: a weight row shared by all rows is copied to shared memory
  int64_t grid = 0;         // CTAs; kStaged: 0 = as many clusters as the device runs at once
  bool fixed_block = true;  // split: the kernel compiled for this block when there is one (kernel_sweep fixed=0: not)
};

// Accesses per thread per row: 4 x 16 B in flight per thread with 64 registers, so
// four 256-thread CTAs (or two of 512) share an SM. 8 chunks need ~107 registers, one
// CTA per SM, and measured 40-47% of copy bandwidth against 65-69% for 4 chunks over
// a cluster twice as large (benchmarks/NOTES.md, entry 5).
constexpr int kMaxChunks = 4;
constexpr int kTargetChunks = 4;
constexpr int kWarp = 32;
constexpr int kPortableCluster = 8;  // clusters every sm_90 device runs
constexpr int kMaxCluster = 16;      // the largest an sm_90 device may run (opted into per kernel)
constexpr int kMinBlock = 256;         // short rows: several rows per CTA
constexpr int kMaxBlock = 1024;        // the streaming kernels
// The register-row forward's CTAs have at most 512 threads.
constexpr int kRegistersBlock = 512;
constexpr int kSmCount = 132;  // H100 and H200 SXM: sizes grids only, never correctness
// Below this many 16-byte accesses in all (about 1 MB of bf16: decode, a few rows),
// latency rules: one access per thread, as many threads per row as a CTA holds.
constexpr int64_t kSmallProblemAccesses = int64_t{kSmCount} * kRegistersBlock;
// Few short rows (decode) leave most SMs idle, and one CTA's chain of dependent
// instructions sets the time. Each row goes to `split` CTAs of at most kDecodeBlock
// threads: each reads the whole row (the re-reads hit L2), reduces it and writes its
// 1/split, so more SMs share the work. About 64 CTAs in all measured best (H200,
// benchmarks/NOTES.md entry 16): 4 parts up to 16 rows, 2 up to 64, none beyond.
constexpr int kDecodeBlock = 512;
constexpr int64_t kDecodeCtas = 64;
inline int decode_split(int64_t rows) {
  if (rows * 4 <= kDecodeCtas) return 4;
  return rows * 2 <= 2 * kDecodeCtas ? 2 : 1;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The smallest k with 2^k >= v (0 for v <= 1), and that power of two.
inline int ceil_log2(int64_t v) {
  int k = 0;
  while ((int64_t{1} << k) < v) ++k;
  return k;
}

inline int next_pow2(int64_t v) { return 1 << ceil_log2(v); }

inline bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// CTAs a forward launch takes for `rows`: one a row (streaming), `cluster` or `split` a
// row, else block / threads_per_row rows to a CTA; 0 for the staged kernel, whose grid
// the device's capacity sets at launch.
inline int64_t fwd_grid(const FwdLaunch& l, int64_t rows) {
  if (l.kernel == FwdKernel::kStaged) return 0;
  if (l.kernel == FwdKernel::kStreaming) return rows;
  if (l.cluster > 1 || l.split > 1) return rows * l.cluster * l.split;
  return ceil_div(rows, l.block / l.threads_per_row);
}

// The staged forward (long rows): each CTA of a cluster owns a slice of block x chunks
// 16-byte accesses of every row, and a persistent cluster walks the rows, the next
// `stages` of them in flight in a shared-memory ring; the weight slice is copied once.
constexpr int kMaxStagedChunks = 8;
constexpr int kMaxStages = 4;
// Shared memory one staged CTA may take: under the 227 KB an sm_90 CTA can have, with
// room for the kernel's static scratch.
constexpr int64_t kStagedMaxBytes = 200 << 10;
// Shared memory of a staged CTA (staging.cuh): `stages` x `arrays` slices of block x
// chunks 16-byte accesses, then the weight slice when `weight_bytes` (the weight's element
// size when its slice lives in shared memory, else 0).
inline int64_t staged_bytes(int block, int chunks, int vec, int stages, int arrays, int weight_bytes) {
  const int64_t slice = int64_t{block} * chunks;  // accesses
  return int64_t{stages} * arrays * slice * 16 + slice * vec * weight_bytes;
}
inline int64_t fwd_staged_bytes(const FwdLaunch& l, bool fused, int weight_bytes) {
  return staged_bytes(l.block, l.chunks, l.vec, l.stages, fused ? 2 : 1, weight_bytes);
}

// `vector_ok`: every pointer is 16-byte aligned and hidden is a multiple of the
// vector width. `max_cluster`: the largest cluster the device runs (16 on the H100 and
// H200, the register kernel takes at most the portable 8), 1 without clusters.
// `fused`: the residual variant; `wide_y`: y in float32 from a narrower x; `weight_bytes`:
// the weight's element size (0: none).
inline FwdLaunch choose_fwd_launch(int64_t rows, int64_t hidden, int elem_bytes, bool vector_ok,
                                   int max_cluster, bool fused, bool wide_y, int weight_bytes) {
  FwdLaunch l;
  l.vec = vector_ok ? 16 / elem_bytes : 1;
  const int64_t units = ceil_div(hidden, l.vec);  // accesses per row
  const bool small = rows * units <= kSmallProblemAccesses;
  const int split = decode_split(rows);
  if (small && split > 1 && units >= split * kWarp) {
    // Every CTA holds the whole row, and each thread writes at most one access:
    // ceil(units / split) <= threads_per_row, true for chunks <= split.
    l.threads_per_row = next_pow2(units) < kDecodeBlock ? next_pow2(units) : kDecodeBlock;
    const int64_t chunks = ceil_div(units, l.threads_per_row);
    if (chunks <= split && chunks <= kMaxChunks) {
      l.split = split;
      l.chunks = next_pow2(chunks);
      l.block = l.threads_per_row;
      l.grid = fwd_grid(l, rows);
      return l;
    }
  }
  // float32 rows (the forward without the residual): two accesses a thread with twice the
  // threads measured 0.3-2.5% faster than four on the H100 (kernel_sweep, benchmarks/NOTES.md
  // entry 42; through JAX, entry 43: 4096^2 46.1 against 47.2 us, 16384 x 1024 45.9 against 46.6).
  const int target = small ? 1 : (elem_bytes == 4 && vector_ok && !fused ? kTargetChunks / 2 : kTargetChunks);
  l.threads_per_row = next_pow2(ceil_div(units, target));
  if (l.threads_per_row > kRegistersBlock) l.threads_per_row = kRegistersBlock;
  const int64_t chunks = ceil_div(units, l.threads_per_row);
  if (chunks <= kMaxChunks) {
    l.chunks = next_pow2(chunks);
    l.block = l.threads_per_row > kMinBlock ? l.threads_per_row : kMinBlock;
    l.grid = fwd_grid(l, rows);
    return l;
  }
  // Long rows with 16-byte accesses: the staged kernel (benchmarks/NOTES.md, entry 19):
  // 512-thread CTAs with 4 accesses each (8 when 16 CTAs do not hold the row), one row
  // staged ahead, two where it measured faster: clusters of at most two CTAs (each walks
  // many rows) and the fused residual (two arrays a row). The register kernel keeps the
  // rows it holds in a cluster of at most 4 for the residual (level or faster there). A
  // float32 y from bf16 is not staged: 59% of copy against 75% for the register kernel at
  // 1024 x 65536, 58% against 67% at 512 x 131072, 49% against 52% streaming at 128 x 262144.
  if (vector_ok && max_cluster > 1) {
    FwdLaunch staged = l;
    staged.kernel = FwdKernel::kStaged;
    staged.block = staged.threads_per_row = kRegistersBlock;
    staged.chunks = kTargetChunks;
    staged.cluster = next_pow2(ceil_div(units, int64_t{staged.block} * staged.chunks));
    if (staged.cluster > max_cluster) {
      staged.chunks = kMaxStagedChunks;
      staged.cluster = next_pow2(ceil_div(units, int64_t{staged.block} * staged.chunks));
    }
    const bool registers_faster = fused && staged.cluster <= 4;
    if (staged.cluster <= max_cluster && !registers_faster && !wide_y) {
      // The ring as deep as chosen and fits beside the weight slice, else one stage with
      // the weight read from global memory.
      staged.stages = staged.cluster <= 2 || fused ? 2 : 1;
      staged.shared_weight = true;
      while (staged.stages > 1 && fwd_staged_bytes(staged, fused, weight_bytes) > kStagedMaxBytes) --staged.stages;
      if (fwd_staged_bytes(staged, fused, weight_bytes) > kStagedMaxBytes) staged.shared_weight = false;
      if (fwd_staged_bytes(staged, fused, 0) <= kStagedMaxBytes) {
        staged.grid = fwd_grid(staged, rows);
        return staged;
      }
    }
  }
  // Long rows: split each row over a cluster of full CTAs, still one read per element.
  const int cluster = next_pow2(ceil_div(units, int64_t{kRegistersBlock} * kMaxChunks));
  if (cluster <= max_cluster && cluster <= kPortableCluster) {
    l.cluster = cluster;
    l.block = kRegistersBlock;
    l.chunks = next_pow2(ceil_div(units, int64_t{kRegistersBlock} * cluster));
    l.grid = fwd_grid(l, rows);
    return l;
  }
  // Rows longer than a cluster holds: two passes over the row (the second mostly from L2).
  l.kernel = FwdKernel::kStreaming;
  l.block = kMaxBlock;
  l.threads_per_row = kMaxBlock;
  l.chunks = 1;
  l.grid = fwd_grid(l, rows);
  return l;
}

// The backward's register kernel (rows under 8192 bf16 / 4096 float32 on sm_90, where the
// staged kernel below takes longer rows, and 4096 bf16 with few row steps; all rows it holds
// elsewhere) stages dy and s of `stages` row groups in a shared-memory ring (cp.async: the
// next group is in flight while this one computes), keeps the weight row in shared memory
// and float32 dweight accumulators in registers: 256-thread CTAs, two per SM (128 registers
// each), at most 4 chunks; longer rows take clusters, row tiles or stream.
constexpr int kMaxBwdChunks = 4;
constexpr int kBwdBlock = 256;
// Row groups staged at once: the next group is in flight during this one's math. Two
// stages against one (benchmarks/NOTES.md, entry 6): 94% vs 75% of copy bandwidth at
// 65536 x 2048, 82% vs 61% at 8192 x 8192, level at 4096 x 4096, but 79% vs 85% at
// 16384 x 4096. More than two leave too little L1. On devices of less than 4 TB/s, rows with
// many row groups a CTA take one (fit_bwd_stages_to_device, below).
constexpr int kBwdStages = 2;
// Ring bytes per CTA: with the float weight row (at most 32 KB) two CTAs fit an SM.
constexpr int64_t kBwdStagingBudget = 72 << 10;
constexpr int64_t kPartialBudgetBytes = 8 << 20;  // dweight partials: small beside the rows

struct BwdLaunch {
  FwdKernel kernel = FwdKernel::kRegisters;
  int vec = 1;
  int chunks = 1;
  int threads_per_row = 1;  // within one CTA
  int cluster = 1;          // CTAs sharing one row (long rows): each owns a column slice
  int block = 1;
  int stages = 1;  // row groups in the staging ring (kRegisters), the ring's rows (kStaged)
  int tiles = 1;   // CTAs sharing one row, each with a column tile (kRowTiles)
};

// The staged backward (rows of 8K elements and more, sm_90; staging.cuh): persistent
// clusters, each CTA's slice of 4 accesses a thread in a ring of 3 rows, its weights and
// float32 dweight sums in registers. 256-thread CTAs, two a SM (96 KB of ring each), up
// to 16 of them a row; longer rows 512-thread CTAs, one a SM (192 KB). Every launch has
// 512 threads and 192 KB of ring a SM, so CTAs of 128 threads run four a SM.
constexpr int kBwdStagedChunks = 4;
constexpr int kBwdStagedStages = 3;
constexpr int64_t kBwdStagedMinUnits = 1024;  // shorter rows: the register kernel, but see below
// Rows of 257-512 accesses (4096 bf16, 2048 float32) with few row steps a CTA also take
// the staged kernel, in 128-thread CTAs that one row fills. H200, kernel_sweep
// (benchmarks/NOTES.md, entry 25), against the register kernel: 1024 x 4096 bf16 19.1
// against 21.2 us, 2048-8192 rows 5-8% faster (4096^2 36.7 against 39.8), 4096 x 3072 4%,
// float32 4096-8192 x 2048 4-5%; but 12288 rows (23-24 steps a CTA) 2.5% slower, 16384 4%.
// So up to 16 steps a CTA, from 1024 rows (fewer were not measured).
constexpr int kBwdStagedMidBlock = 128;
constexpr int64_t kBwdStagedMidMinRows = 1024;
constexpr int64_t kBwdStagedMidMaxSteps = 16;
// Persistent CTAs a SM of a staged launch of `block` threads.
constexpr int bwd_staged_ctas_per_sm(int block) {
  return block >= kRegistersBlock ? 1 : kRegistersBlock / block;
}
inline bool staged_bwd_mid_rows(int64_t units, int64_t rows_per_weight) {
  const int64_t row_units = int64_t{kBwdStagedMidBlock} * kBwdStagedChunks;
  const int64_t ctas = int64_t{bwd_staged_ctas_per_sm(kBwdStagedMidBlock)} * kSmCount;
  return units > row_units / 2 && units <= row_units && rows_per_weight >= kBwdStagedMidMinRows &&
         rows_per_weight <= kBwdStagedMidMaxSteps * ctas;
}
// Partial rows of dweight per weight row: one per persistent cluster, as many as a
// 132-SM device runs (at most the rows there are). A device running fewer clusters leaves
// the rest unused (the sum kernel adds only those written).
inline int64_t bwd_staged_partials(int64_t rows_per_weight, const BwdLaunch& l) {
  const int64_t clusters = int64_t{bwd_staged_ctas_per_sm(l.block)} * kSmCount / l.cluster;
  return rows_per_weight < clusters ? (rows_per_weight > 1 ? rows_per_weight : 1) : clusters;
}
// The staged launch for rows of `units` accesses (its vec set in `l`), in CTAs of `block`
// threads (0: 256, or 512 for rows a cluster of 16 such CTAs does not hold); false when no
// cluster of at most `max_cluster` holds the row.
inline bool use_staged_bwd(BwdLaunch& l, int64_t units, int max_cluster, int block = 0) {
  BwdLaunch staged = l;
  staged.kernel = FwdKernel::kStaged;
  staged.chunks = kBwdStagedChunks;
  staged.stages = kBwdStagedStages;
  staged.block = block > 0 ? block
                 : units <= int64_t{kMaxCluster} * kBwdBlock * kBwdStagedChunks ? kBwdBlock
                                                                                 : kRegistersBlock;
  staged.threads_per_row = staged.block;
  staged.cluster = next_pow2(ceil_div(units, int64_t{staged.block} * staged.chunks));
  if (staged.cluster > max_cluster) return false;
  l = staged;
  return true;
}

// Long rows in the backward, beyond what a cluster holds: each row is split into column
// tiles of kBwdBlock threads x 16 elements, one CTA per tile, and the CTAs of a row add
// their partial dot products through global memory, waiting on a counter per row (a
// cooperative launch keeps them all resident), each keeping its tile of dy and s in registers:
// one read of each, like the register kernel. Two CTAs per SM stay resident, so a row
// of `tiles` tiles leaves room for 2 x SMs / tiles rows ("lanes") at once.
constexpr int64_t kMaxResidentBwdCtas = 2 * kSmCount;
// 16 elements per thread (two tiles of dy and s in registers, the next row's loading):
// 32 elements of bf16 spilled at the 128-register cap of two CTAs per SM.
constexpr int bwd_row_tile_chunks(int vec) { return vec >= 4 ? 16 / vec : kMaxBwdChunks; }
inline int64_t bwd_row_tiles(int64_t units, int vec) {
  return ceil_div(units, int64_t{kBwdBlock} * bwd_row_tile_chunks(vec));
}
// Turns `l` (its vec set) into the row-tile launch for rows of `units` accesses: the
// chooser's, and kernel_sweep's when it forces the kernel on shorter rows.
inline void use_row_tiles(BwdLaunch& l, int64_t units) {
  l.kernel = FwdKernel::kRowTiles;
  l.block = kBwdBlock;
  l.cluster = 1;
  l.chunks = bwd_row_tile_chunks(l.vec);
  l.tiles = static_cast<int>(bwd_row_tiles(units, l.vec));
}
// The staged backward over column tiles (rows beyond a cluster): its 512-thread CTAs of 4
// accesses a thread, one a SM, `tiles` a row, meeting in global memory; lanes = partial
// rows - 1, as the row tiles' (fewer where the weight rows do not all fit one wave).
inline void use_staged_tiles(BwdLaunch& l, int64_t units) {
  l.kernel = FwdKernel::kStaged;
  l.block = l.threads_per_row = kRegistersBlock;
  l.chunks = kBwdStagedChunks;
  l.stages = kBwdStagedStages;
  l.cluster = 1;
  l.tiles = static_cast<int>(ceil_div(units, int64_t{kRegistersBlock} * kBwdStagedChunks));
}
// Partial rows per weight row of a column-tile launch (the row tiles' 256-thread CTAs, two
// a SM, or the staged tiles' 512, one a SM: `resident_ctas` of them fit one wave): one per
// lane (at most the rows there are, and as many as the resident CTAs hold), plus one in
// which the CTAs exchange their row sums.
inline int64_t bwd_column_tile_partials(int64_t rows_per_weight, int tiles, int64_t resident_ctas) {
  const int64_t lanes = resident_ctas / tiles;
  return (rows_per_weight < lanes ? rows_per_weight : lanes) + 1;
}
// Whether launch `l` is the staged kernel over column tiles of the grid (not a cluster).
inline bool staged_over_tiles(const BwdLaunch& l) { return l.kernel == FwdKernel::kStaged && l.tiles > 1; }
// Whether launch `l` exchanges its rows' sums in the partials (so needs them without dweight).
inline bool exchanges_in_partials(const BwdLaunch& l) {
  return l.kernel == FwdKernel::kRowTiles || staged_over_tiles(l);
}
// Partial rows per weight row of a row-tile or staged launch (their persistent grids).
inline int64_t bwd_persistent_partials(int64_t rows_per_weight, const BwdLaunch& l) {
  if (l.kernel == FwdKernel::kRowTiles) return bwd_column_tile_partials(rows_per_weight, l.tiles, kMaxResidentBwdCtas);
  if (staged_over_tiles(l)) return bwd_column_tile_partials(rows_per_weight, l.tiles, kSmCount);
  return bwd_staged_partials(rows_per_weight, l);
}

// Shared memory of the staging ring: per stage, dy and s of every thread's chunks plus
// one rstd per thread.
inline int64_t bwd_stage_bytes(const BwdLaunch& l, int elem_bytes) {
  return int64_t{2} * l.chunks * l.block * l.vec * elem_bytes + int64_t{4} * l.block;
}

// The launch without the staged kernel: the register kernel (clusters of at most the
// portable 8 and `max_cluster`), row tiles or streaming.
inline BwdLaunch choose_bwd_register_launch(int64_t hidden, int elem_bytes, bool vector_ok, int max_cluster) {
  BwdLaunch l;
  l.vec = vector_ok ? 16 / elem_bytes : 1;
  const int64_t units = ceil_div(hidden, l.vec);
  // Four chunks per thread, short rows too (several rows then share a warp): each row
  // costs a reduction (above a warp, a barrier), so more bytes per row go faster. H200,
  // bf16 (benchmarks/NOTES.md, entry 17), against the 1-2 chunks chosen on the H100 with
  // older code (entry 7): 65536 x 2048 254 -> 208 us, 16384 x 1024 40.9 -> 36.4, 16384 x
  // 512 29.2 -> 23.4. Rows of 16 accesses or fewer take 2: 262144 x 128 58.6 us against
  // 63.5 at 4 chunks and 68.0 at 1.
  const int target = units <= 16 ? 2 : kTargetChunks;
  l.threads_per_row = next_pow2(ceil_div(units, target));
  if (l.threads_per_row > kBwdBlock) l.threads_per_row = kBwdBlock;
  l.block = kBwdBlock;
  const int64_t chunks = ceil_div(units, l.threads_per_row);
  if (chunks > kMaxBwdChunks) {
    // Long rows: a cluster of CTAs per row, each with its column slice (and its slice of
    // the dweight sums) in registers.
    const int cluster = next_pow2(ceil_div(units, int64_t{kBwdBlock} * kMaxBwdChunks));
    if (cluster > max_cluster || cluster > kPortableCluster) {
      l.tiles = static_cast<int>(bwd_row_tiles(units, l.vec));
      if (l.tiles <= kMaxResidentBwdCtas) {
        use_row_tiles(l, units);
        return l;
      }
      l.kernel = FwdKernel::kStreaming;  // rows too long for one wave of tiles
      l.threads_per_row = kMaxBlock;
      l.block = kMaxBlock;
      return l;
    }
    l.cluster = cluster;
    l.chunks = next_pow2(ceil_div(units, int64_t{kBwdBlock} * cluster));
  } else {
    l.chunks = next_pow2(chunks);
  }
  const int64_t fit = kBwdStagingBudget / bwd_stage_bytes(l, elem_bytes);
  l.stages = fit < 1 ? 1 : (fit > kBwdStages ? kBwdStages : static_cast<int>(fit));
  return l;
}

// The register kernel's ring depth on slower memory. On the H100 (3.35 TB/s peak) one stage
// beat two when each CTA walks many row groups; kernel_sweep, bf16 (benchmarks/NOTES.md, entry
// 41): 16384 x 4096 152.1 against 168.3 us, 32768 x 4096 288.1 against 321.9, 65536 x 2048
// 287.1 against 320.6; at about 8 row groups a CTA (4096^2, 16384 x 1024) one stage was level
// or slower. On the H200 (4.8 TB/s) two stages win (entry 17: 16384 x 4096 115 against 133
// us). The depth changes no result and no buffer size, so it may follow the device:
// `device_bandwidth` is its peak DRAM bandwidth in bytes/s (0: unknown, two stages stay).
constexpr double kTwoStagesMinBandwidth = 4e12;
constexpr int64_t kOneStageMinSteps = 16;
inline void fit_bwd_stages_to_device(BwdLaunch& l, int64_t rows_per_weight, int64_t ctas_per_weight_row,
                                     double device_bandwidth) {
  if (l.kernel != FwdKernel::kRegisters || l.stages < 2 || ctas_per_weight_row < 1) return;
  if (device_bandwidth <= 0 || device_bandwidth >= kTwoStagesMinBandwidth) return;
  const int64_t groups = ceil_div(rows_per_weight, int64_t{l.block / l.threads_per_row});
  if (ceil_div(groups, ctas_per_weight_row) >= kOneStageMinSteps) l.stages = 1;
}

// Few rows (decode), rms_norm_bwd_few_rows: one cluster per weight row holds all its rows
// at once. CTA `rank` of the cluster owns the column slice of `chunks` x threads_per_row
// accesses (threads_per_row at most a warp, so a row's CTA sum needs shuffles only) of
// every row; its block / threads_per_row row slots take rows slot, slot + slots, ..., at
// most kFewRowsItems (row, access) pairs a thread, all loaded at once. No partial rows:
// the CTA writes the dweight of its slice. The register kernel there ran one CTA's
// chain of 7.4 us for one row (ncu, H200: issue-bound at 2 warps a scheduler), 8.6 us for
// 8 rows with the partial sums' second kernel, against XLA's 3.4-3.6.
constexpr int64_t kFewRowsMax = 64;  // rows per weight row
constexpr int kFewRowsItems = 4;     // (row, access) pairs per thread: 64 x 4096 bf16 over 16 CTAs of 512
constexpr int kFewRowsMaxChunks = 2;  // accesses of a row per thread (4 spilled 20-40 bytes of 16-bit rows)
constexpr int kFewRowsMaxBlock = 512;
// Shared memory: the cluster's sums [rows][cluster], then the slots' dweight sums of the
// slice [slots][chunks x threads_per_row x vec]; under the 48 KB a CTA has without opt-in.
constexpr int64_t kFewRowsMaxBytes = 48 << 10;
inline int64_t few_rows_bytes(const BwdLaunch& l, int64_t rows) {
  return 4 * ((rows * l.cluster + 3) / 4 * 4 + int64_t{l.block} * l.chunks * l.vec);
}
// Rows each thread of a few-rows launch takes: its CTA has block / threads_per_row row slots.
inline int few_rows_per_thread(const BwdLaunch& l, int64_t rows) {
  return static_cast<int>(ceil_div(rows, l.block / l.threads_per_row));
}
// Fills in the few-rows launch of `l` (its vec, threads_per_row and cluster set) for
// `rows` rows of `units` accesses: false when one cluster of that shape does not hold them.
inline bool fit_few_rows(BwdLaunch& l, int64_t rows, int64_t units) {
  if (rows < 1 || rows > kFewRowsMax || !is_pow2(l.threads_per_row) || l.threads_per_row > kWarp ||
      !is_pow2(l.cluster)) {
    return false;
  }
  l.kernel = FwdKernel::kFewRows;
  l.chunks = next_pow2(ceil_div(units, int64_t{l.threads_per_row} * l.cluster));
  // At least a warp (the shuffles take whole warps), at most kFewRowsMaxBlock threads.
  int64_t slots = next_pow2(rows);
  if (slots * l.threads_per_row < kWarp) slots = kWarp / l.threads_per_row;
  if (slots * l.threads_per_row > kFewRowsMaxBlock) slots = kFewRowsMaxBlock / l.threads_per_row;
  l.block = static_cast<int>(slots * l.threads_per_row);
  return l.chunks <= kFewRowsMaxChunks && l.chunks * few_rows_per_thread(l, rows) <= kFewRowsItems &&
         few_rows_bytes(l, rows) <= kFewRowsMaxBytes;
}
// The chooser's few-rows launch: a warp per row slice, as many CTAs as give each thread
// one access of a row (at most `max_cluster`).
inline bool use_few_rows_bwd(BwdLaunch& l, int64_t rows, int64_t units, int max_cluster) {
  BwdLaunch few = l;
  few.threads_per_row = units < kWarp ? next_pow2(units) : kWarp;
  few.cluster = next_pow2(ceil_div(units, few.threads_per_row));
  if (few.cluster > max_cluster) few.cluster = max_cluster;
  if (!fit_few_rows(few, rows, units)) return false;
  l = few;
  return true;
}

// `max_cluster`: the largest cluster the device runs (16 on the H100 and H200; the
// default, for the partial-buffer size below, which must not depend on the device: the
// kernels are right for any), 1 without clusters. `rows_per_weight`: the rows sharing a
// weight row, when known (0: not; the partial-buffer size passes 0 for decode rows, whose
// few-rows kernel needs no partials).
inline BwdLaunch choose_bwd_launch(int64_t hidden, int elem_bytes, bool vector_ok, int max_cluster = kMaxCluster,
                                   int64_t rows_per_weight = 0) {
  BwdLaunch l;
  l.vec = vector_ok ? 16 / elem_bytes : 1;
  const int64_t units = ceil_div(hidden, l.vec);
  if (vector_ok && use_few_rows_bwd(l, rows_per_weight, units, max_cluster)) return l;
  // Rows of 8K bf16 elements and more: the staged kernel (benchmarks/NOTES.md, entry 20);
  // 4K with few row steps a CTA too, in 128-thread CTAs (entry 25).
  if (vector_ok && units >= kBwdStagedMinUnits && max_cluster > 1 && use_staged_bwd(l, units, max_cluster)) return l;
  if (vector_ok && max_cluster > 1 && staged_bwd_mid_rows(units, rows_per_weight) &&
      use_staged_bwd(l, units, max_cluster, kBwdStagedMidBlock)) {
    return l;
  }
  // Rows beyond a cluster of staged CTAs (float32 past 131072, bf16 past 262144), up to one
  // wave of 512-thread tiles: the staged kernel over column tiles of the grid (kernel_sweep,
  // benchmarks/NOTES.md entry 44: 1.14-1.40x the row tiles on the H100).
  if (vector_ok && max_cluster > 1 && units >= kBwdStagedMinUnits) {
    BwdLaunch tiled = l;
    use_staged_tiles(tiled, units);
    if (tiled.tiles <= kSmCount) return tiled;
  }
  return choose_bwd_register_launch(hidden, elem_bytes, vector_ok, max_cluster);
}

// Column accesses per CTA of sum_dweight_partials (which adds the partial rows of dweight):
// 32 unless that leaves SMs idle, halved down to 2 (a 32-byte sector of a partial row at
// 16-byte accesses). At 32, 4096 columns were 32 CTAs: 5.8 us of a 40 us backward at 4096 x
// 4096, DRAM 15% (ncu, benchmarks/NOTES.md entry 22). Any value gives the same bits: each
// column's additions do not depend on which CTA holds it.
constexpr int kSumMaxCols = 32;
// Thread rows ("lanes") of sum_dweight_partials, each adding every lanes-th partial row: as
// many as give each about one batch of kSumBatch loads (issued together), at most 32 (a
// power of two; the order of the additions then follows from the partial count alone).
// With 32 lanes always, the staged backward's 33 partials of 65536 columns were one load a
// lane and a 32-long chain of adds through shared memory: 10.7 us of a 115 us backward
// (benchmarks/NOTES.md, entry 24).
constexpr int kSumMaxLanes = 32;
constexpr int kSumBatch = 8;
inline int sum_partials_lanes(int64_t summed) {
  const int64_t lanes = next_pow2(ceil_div(summed, int64_t{kSumBatch}));
  return lanes > kSumMaxLanes ? kSumMaxLanes : static_cast<int>(lanes);
}
inline int sum_partials_cols(int64_t column_units, int64_t weight_rows) {
  int cols = kSumMaxCols;
  while (cols > 2 && ceil_div(column_units, int64_t{cols}) * weight_rows < kSmCount) cols /= 2;
  return cols;
}

// How many CTAs (and so float32 partial rows of dweight) the backward uses per weight
// row: enough to fill the GPU, few enough that the partials stay small. The JAX
// primitive sizes the partial buffer with this same function (exported by the module),
// so it must not depend on the device; the kernels stay correct for any value.
inline int64_t bwd_ctas_per_weight_row(int64_t rows_per_weight, int64_t hidden, int elem_bytes) {
  if (rows_per_weight <= 0 || hidden <= 0) return 1;
  // The rows choose too (the staged kernel's mid rows), but not the few-rows kernel's: it
  // writes dweight itself, and the count for those rows stays the chooser's without rows.
  const BwdLaunch l = choose_bwd_launch(hidden, elem_bytes, hidden % (16 / elem_bytes) == 0, kMaxCluster,
                                        rows_per_weight > kFewRowsMax ? rows_per_weight : 0);
  if (l.kernel == FwdKernel::kRowTiles || l.kernel == FwdKernel::kStaged) return bwd_persistent_partials(rows_per_weight, l);
  const int64_t row_groups = ceil_div(rows_per_weight, l.block / l.threads_per_row);
  // Two register-kernel CTAs are resident per SM: a grid of 2 x SMs runs in one wave.
  // With clusters, a "CTA" here is a cluster (one partial row).
  int64_t ctas = kPartialBudgetBytes / (4 * hidden);
  if (ctas > 2 * kSmCount / l.cluster) ctas = 2 * kSmCount / l.cluster;
  if (ctas < kSmCount / l.cluster) ctas = kSmCount / l.cluster;
  return row_groups < ctas ? row_groups : ctas;
}

// Whether a backward that wants no dweight still takes the partial buffer: the row-tile
// kernel exchanges its rows' sums there (without it those rows stream, about 14x slower:
// benchmarks/NOTES.md entry 43). From the row length alone, so the primitive keeps its
// results under vmap and row sharding, which change the row count; device-independent
// like the buffer's size.
inline bool bwd_exchanges_in_partials(int64_t hidden, int elem_bytes) {
  if (hidden <= 0) return false;
  return exchanges_in_partials(choose_bwd_launch(hidden, elem_bytes, hidden % (16 / elem_bytes) == 0));
}

}  // namespace jax_rmsnorm
