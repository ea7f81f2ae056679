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
constexpr int kMaxBlock = 1024;

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
  l.threads_per_row = next_pow2(ceil_div(units, kTargetChunks));
  if (l.threads_per_row > kMaxBlock) l.threads_per_row = kMaxBlock;
  const int64_t chunks = ceil_div(units, l.threads_per_row);
  if (chunks <= kMaxChunks) {
    l.chunks = next_pow2(chunks);
    l.block = l.threads_per_row > kMinBlock ? l.threads_per_row : kMinBlock;
    l.grid = ceil_div(rows, l.block / l.threads_per_row);
    return l;
  }
  // Long rows: split each row over a cluster of full CTAs, still one read per element.
  const int cluster = next_pow2(ceil_div(units, int64_t{kMaxBlock} * kMaxChunks));
  if (cluster <= max_cluster) {
    l.cluster = cluster;
    l.block = kMaxBlock;
    l.chunks = next_pow2(ceil_div(units, int64_t{kMaxBlock} * cluster));
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

}  // namespace jax_rmsnorm
