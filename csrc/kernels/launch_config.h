// Every launch heuristic lives here: one chooser per kernel family.
#pragma once

#include <cstdint>

namespace jax_rmsnorm {

enum class FwdKernel { kRegisters, kStreaming };

struct FwdLaunch {
  FwdKernel kernel = FwdKernel::kRegisters;
  int vec = 1;              // elements per access: 16 bytes, or 1 on the scalar path
  int chunks = 1;           // accesses per thread per row (kRegisters: the row lives in registers)
  int threads_per_row = 1;  // threads sharing a row inside one CTA (power of two)
  int cluster = 1;          // CTAs sharing one row through distributed shared memory
  int block = 1;            // threads per CTA
  int64_t grid = 0;         // CTAs
};

constexpr int kMaxChunks = 8;          // 8 x 16 B of row per thread: 32 registers
constexpr int kTargetChunks = 4;       // independent 16 B loads in flight per thread
constexpr int kMinBlock = 256;         // short rows: several rows per CTA
constexpr int kMaxBlock = 1024;        // the streaming kernels
// The register-row forward: 512-thread CTAs leave 128 registers a thread, room for 8
// chunks of row plus the weights (1024-thread CTAs cap it at 64 and it spilled).
constexpr int kRegistersBlock = 512;
// Below this many 16-byte accesses in all (about 1 MB of bf16: decode, a few rows),
// latency rules: one access per thread, as many threads per row as a CTA holds.
constexpr int64_t kSmallProblemAccesses = int64_t{132} * kRegistersBlock;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p *= 2;
  return p;
}

// `vector_ok`: every pointer is 16-byte aligned and hidden is a multiple of the
// vector width. `max_cluster`: 8 on sm_90 and newer (portable cluster size), else 1.
inline FwdLaunch choose_fwd_launch(int64_t rows, int64_t hidden, int elem_bytes,
                                   bool vector_ok, int max_cluster) {
  FwdLaunch l;
  l.vec = vector_ok ? 16 / elem_bytes : 1;
  const int64_t units = ceil_div(hidden, l.vec);  // accesses per row
  const int target = rows * units <= kSmallProblemAccesses ? 1 : kTargetChunks;
  l.threads_per_row = next_pow2(ceil_div(units, target));
  if (l.threads_per_row > kRegistersBlock) l.threads_per_row = kRegistersBlock;
  const int64_t chunks = ceil_div(units, l.threads_per_row);
  if (chunks <= kMaxChunks) {
    l.chunks = next_pow2(chunks);
    l.block = l.threads_per_row > kMinBlock ? l.threads_per_row : kMinBlock;
    l.grid = ceil_div(rows, l.block / l.threads_per_row);
    return l;
  }
  // Long rows: split each row over a cluster of full CTAs, still one read per element.
  const int cluster = next_pow2(ceil_div(units, int64_t{kRegistersBlock} * kMaxChunks));
  if (cluster <= max_cluster) {
    l.cluster = cluster;
    l.block = kRegistersBlock;
    l.chunks = next_pow2(ceil_div(units, int64_t{kRegistersBlock} * cluster));
    l.grid = rows * cluster;
    return l;
  }
  // Rows longer than a cluster holds: two passes over the row (the second mostly from L2).
  l.kernel = FwdKernel::kStreaming;
  l.block = kMaxBlock;
  l.threads_per_row = kMaxBlock;
  l.chunks = 1;
  l.grid = rows;
  return l;
}

// The backward keeps dy and s of two rows in registers (the next one prefetched) plus
// float32 dweight accumulators: 256-thread CTAs, so the compiler may use up to 255
// registers (about 200 at 4 chunks; a 128 cap spilled), and at most 4 chunks; longer
// rows stream.
constexpr int kMaxBwdChunks = 4;
constexpr int kBwdBlock = 256;
constexpr int kSmCount = 132;                  // H100; only sizes the persistent grid
constexpr int64_t kPartialBudgetBytes = 4 << 20;  // dweight partials: small beside the rows

struct BwdLaunch {
  FwdKernel kernel = FwdKernel::kRegisters;
  int vec = 1;
  int chunks = 1;
  int threads_per_row = 1;
  int block = 1;
};

inline BwdLaunch choose_bwd_launch(int64_t hidden, int elem_bytes, bool vector_ok) {
  BwdLaunch l;
  l.vec = vector_ok ? 16 / elem_bytes : 1;
  const int64_t units = ceil_div(hidden, l.vec);
  l.threads_per_row = next_pow2(ceil_div(units, kTargetChunks));
  if (l.threads_per_row > kBwdBlock) l.threads_per_row = kBwdBlock;
  const int64_t chunks = ceil_div(units, l.threads_per_row);
  if (chunks > kMaxBwdChunks) {
    l.kernel = FwdKernel::kStreaming;
    l.threads_per_row = kMaxBlock;
    l.block = kMaxBlock;
    return l;
  }
  l.chunks = next_pow2(chunks);
  l.block = kBwdBlock;
  return l;
}

// How many CTAs (and so float32 partial rows of dweight) the backward uses per weight
// row: enough to fill the GPU, few enough that the partials stay small. The JAX
// primitive sizes the partial buffer with this same function (exported by the module),
// so it must not depend on the device; the kernels stay correct for any value.
inline int64_t bwd_ctas_per_weight_row(int64_t rows_per_weight, int64_t hidden, int elem_bytes) {
  if (rows_per_weight <= 0 || hidden <= 0) return 1;
  const BwdLaunch l = choose_bwd_launch(hidden, elem_bytes, hidden % (16 / elem_bytes) == 0);
  const int64_t row_groups = ceil_div(rows_per_weight, l.block / l.threads_per_row);
  int64_t ctas = kPartialBudgetBytes / (4 * hidden);
  if (ctas > 1024) ctas = 1024;
  if (ctas < kSmCount) ctas = kSmCount;
  return row_groups < ctas ? row_groups : ctas;
}

}  // namespace jax_rmsnorm
