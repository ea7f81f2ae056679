// The CPU kernels: the same semantics as the CUDA ones, row by row, over chunks of rows
// that a caller may run at once (the FFI handlers pass XLA's thread pool).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/half.h"
#include "kernels/dispatch.h"
#include "kernels/problem.h"

namespace jax_rmsnorm {

// The row loops compiled three times, for AVX-512 (x86-64-v4), AVX2 with FMA (x86-64-v3)
// and the baseline, the best one picked when the library loads (GCC's function
// multiversioning; glibc's ifunc). XLA compiles its own CPU code for the host, and the
// baseline's 4-wide SSE2 ran 2-3x slower than AVX-512 here (benchmarks/NOTES.md, entry 36).
// nvcc (kernel_sweep's reference) and other compilers take the baseline.
#if defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__) && defined(__x86_64__) && \
    defined(__GLIBC__) && !defined(__CUDACC__)
#define JAX_RMSNORM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define JAX_RMSNORM_CPU_CLONES
#endif

struct CpuTypes {
  using BF16 = BFloat16;
  using F16 = Float16;
};

// Sums over a row run in kBlock-element blocks of kLanes independent float sums (the
// compiler vectorizes them), each block total added into a double: fast, accurate and
// in a fixed order.
constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 512;

template <typename F>
JAX_RMSNORM_ALWAYS_INLINE inline double sum_over_row(int64_t n, F&& term) {
  double total = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    float lanes[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(i + l);
    }
    for (; i < end; ++i) lanes[0] += term(i);
    float block = 0.f;
    for (int64_t l = 0; l < kLanes; ++l) block += lanes[l];
    total += block;
  }
  return total;
}

// Runs body(i) for every i in [0, n) in turn. A stand-in for the handlers' thread pool
// (ffi/cpu_handlers.cc), which runs them in any order and at once.
struct InTurn {
  template <typename F>
  void operator()(int64_t n, F&& body) const {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
};

// Rows per chunk: enough elements to outweigh a task's scheduling, few enough chunks that
// the backward's per-chunk dweight sums stay small. It depends on the shape alone, so
// results do not depend on how many threads run the chunks.
constexpr int64_t kRowChunkElements = int64_t{1} << 16;
constexpr int64_t kMaxRowChunks = 64;
constexpr int64_t kRowChunkSumBytes = int64_t{16} << 20;  // the backward's double sums, all chunks
inline int64_t rows_per_chunk(int64_t rows, int64_t hidden) {
  const int64_t h = std::max<int64_t>(hidden, 1);
  const int64_t max_chunks = std::clamp<int64_t>(kRowChunkSumBytes / (8 * h), 1, kMaxRowChunks);
  return std::max({int64_t{1}, kRowChunkElements / h, (rows + max_chunks - 1) / max_chunks});
}

// The weight row (or ones) as float in `buffer` (hidden floats), converted once per weight row.
template <typename W>
const float* weight_as_float(const W* weight, int64_t hidden, float* buffer) {
  for (int64_t i = 0; i < hidden; ++i) buffer[i] = weight != nullptr ? to_float(weight[i]) : 1.0f;
  return buffer;
}

// The multiversioned row functions below allocate nothing (their callers pass the scratch):
// GCC compiles calls to a target_clones function as if it could not throw, so an exception
// from inside one (std::bad_alloc) ended the process where the caller would have caught it
// (benchmarks/NOTES.md, entry 37).

template <typename T, typename W, typename O>
JAX_RMSNORM_CPU_CLONES void rms_norm_fwd_rows(const FwdProblem& p, int64_t first_row, int64_t end_row,
                                              float* w_buffer /* hidden floats */) {
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.residual);
  T* residual_out = static_cast<T*>(p.residual_out);
  O* y = static_cast<O*>(p.y);
  const W* weight = static_cast<const W*>(p.weight);
  const float* w = nullptr;
  int64_t w_row = -1;
  for (int64_t row = first_row; row < end_row; ++row) {
    const int64_t offset = row * p.hidden;
    // With a residual, the normalized row is the rounded sum, stored first.
    const T* s = x + offset;
    if (residual != nullptr) {
      for (int64_t i = 0; i < p.hidden; ++i) {
        residual_out[offset + i] = from_float<T>(to_float(x[offset + i]) + to_float(residual[offset + i]));
      }
      s = residual_out + offset;
    }
    const double sum_sq = sum_over_row(p.hidden, [&](int64_t i) JAX_RMSNORM_ALWAYS_INLINE {
      const float f = to_float(s[i]);
      return f * f;
    });
    const float mean_sq = static_cast<float>(sum_sq / static_cast<double>(p.hidden));
    const float rstd = 1.0f / std::sqrt(mean_sq + p.eps);
    if (p.rstd != nullptr) p.rstd[row] = rstd;
    const int64_t wanted_w_row = weight != nullptr ? row / p.rows_per_weight : 0;
    if (wanted_w_row != w_row) {
      w = weight_as_float(weight != nullptr ? weight + wanted_w_row * p.hidden : nullptr, p.hidden, w_buffer);
      w_row = wanted_w_row;
    }
    if (p.round_normalized) {
      for (int64_t i = 0; i < p.hidden; ++i) {
        y[offset + i] = from_float<O>(to_float(from_float<T>(to_float(s[i]) * rstd)) * w[i]);
      }
    } else {
      for (int64_t i = 0; i < p.hidden; ++i) y[offset + i] = from_float<O>(to_float(s[i]) * rstd * w[i]);
    }
  }
}

// Rows [first_row, end_row) of weight row `group`: dx, and (with `dweight_sum`, hidden
// doubles) each row's float dweight terms added in row order. `scratch`: 2 * hidden floats.
template <typename T, typename W, bool ROUND_N>
JAX_RMSNORM_CPU_CLONES void rms_norm_bwd_rows(const BwdProblem& p, int64_t group, int64_t first_row, int64_t end_row,
                                              double* dweight_sum, float* scratch) {
  const T* dy = static_cast<const T*>(p.dy);
  const T* s = static_cast<const T*>(p.s);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  const W* weight = static_cast<const W*>(p.weight);
  T* dx = static_cast<T*>(p.dx);
  const float* w = weight_as_float(weight != nullptr ? weight + group * p.hidden : nullptr, p.hidden, scratch);
  float* dweight_terms = scratch + p.hidden;  // dy * n of one row (ROUND_N: dy * round_T(n))
  for (int64_t row = first_row; row < end_row; ++row) {
    const T* dy_row = dy + row * p.hidden;
    const T* s_row = s + row * p.hidden;
    T* dx_row = dx + row * p.hidden;
    const float rstd = p.rstd[row];
    const double dot = sum_over_row(p.hidden, [&](int64_t i) JAX_RMSNORM_ALWAYS_INLINE {
      return to_float(dy_row[i]) * w[i] * (to_float(s_row[i]) * rstd);
    });
    const float mean_gn = static_cast<float>(dot / static_cast<double>(p.hidden));
    for (int64_t i = 0; i < p.hidden; ++i) {
      const float n = to_float(s_row[i]) * rstd;
      const float dy_i = to_float(dy_row[i]);
      const float extra = d_new_residual != nullptr ? to_float(d_new_residual[row * p.hidden + i]) : 0.0f;
      dx_row[i] = from_float<T>(rstd * (dy_i * w[i] - n * mean_gn) + extra);
      if (!ROUND_N) dweight_terms[i] = dy_i * n;
    }
    if (ROUND_N && dweight_sum != nullptr) {  // its own loop: in the one above GCC left it scalar (4x slower)
      for (int64_t i = 0; i < p.hidden; ++i) {
        dweight_terms[i] = to_float(dy_row[i]) * to_float(from_float<T>(to_float(s_row[i]) * rstd));
      }
    }
    if (dweight_sum != nullptr) {
      for (int64_t i = 0; i < p.hidden; ++i) dweight_sum[i] += dweight_terms[i];
    }
  }
}

// dweight is summed in doubles per chunk of rows, then over the chunks in order:
// deterministic and accurate. Weight rows (a vmap over per-example weights) run at once,
// as many as keep the chunks' sums within kRowChunkSumBytes, each chunked as if alone.
template <typename RunChunks = InTurn>
void rms_norm_bwd_cpu(const BwdProblem& p, RunChunks&& run_chunks = {}) {
  dispatch_dtypes<CpuTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    const int64_t step = rows_per_chunk(p.rows_per_weight, p.hidden);
    const int64_t chunks = (p.rows_per_weight + step - 1) / step;  // 0 without rows: dweight stays zero
    const bool want_dweight = p.dweight != nullptr;
    // The HF order's dweight sums dy * round_T(n): a template parameter, chosen here once, so
    // that the common loop carries no select (a runtime flag in it cost the backward 4x;
    // NOTES entry 39).
    const auto bwd_rows = p.round_normalized && sizeof(T) < sizeof(float) ? rms_norm_bwd_rows<T, W, true>
                                                                           : rms_norm_bwd_rows<T, W, false>;
    const int64_t group_sum_bytes = std::max<int64_t>(1, 8 * chunks * p.hidden);
    const int64_t groups_at_once = std::max<int64_t>(
        1, want_dweight ? std::min(kRowChunkSumBytes / group_sum_bytes, p.weight_rows) : p.weight_rows);
    std::vector<double> sums(want_dweight ? groups_at_once * chunks * p.hidden : 0);
    for (int64_t first_group = 0; first_group < p.weight_rows; first_group += groups_at_once) {
      const int64_t groups = std::min(groups_at_once, p.weight_rows - first_group);
      std::fill(sums.begin(), sums.end(), 0.0);
      run_chunks(groups * chunks, [&](int64_t task) {
        const int64_t g = task / chunks, c = task % chunks;
        const int64_t first = (first_group + g) * p.rows_per_weight;
        std::vector<float> scratch(2 * p.hidden);
        bwd_rows(p, first_group + g, first + c * step, first + std::min(p.rows_per_weight, (c + 1) * step),
             want_dweight ? sums.data() + task * p.hidden : nullptr, scratch.data());
      });
      if (!want_dweight) continue;
      run_chunks(groups, [&](int64_t g) {
        const double* group_sums = sums.data() + g * chunks * p.hidden;
        W* dweight = static_cast<W*>(p.dweight) + (first_group + g) * p.hidden;
        for (int64_t i = 0; i < p.hidden; ++i) {
          double total = 0.0;
          for (int64_t c = 0; c < chunks; ++c) total += group_sums[c * p.hidden + i];
          dweight[i] = from_float<W>(float(total));
        }
      });
    }
  });
}

template <typename RunChunks = InTurn>
void rms_norm_fwd_cpu(const FwdProblem& p, RunChunks&& run_chunks = {}) {
  dispatch_dtypes<CpuTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    dispatch_output<CpuTypes, T>(p.y_dtype, [&](auto y_tag) {
      const int64_t step = rows_per_chunk(p.rows, p.hidden);
      run_chunks((p.rows + step - 1) / step, [&](int64_t c) {
        std::vector<float> w_buffer(p.hidden);
        rms_norm_fwd_rows<T, typename decltype(w_tag)::type, typename decltype(y_tag)::type>(
            p, c * step, std::min(p.rows, (c + 1) * step), w_buffer.data());
      });
    });
  });
}

}  // namespace jax_rmsnorm
