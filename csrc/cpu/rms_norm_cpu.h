// The CPU forward kernel: the same semantics as the CUDA one, row by row.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/half.h"
#include "kernels/dispatch.h"
#include "kernels/problem.h"

namespace jax_rmsnorm {

struct CpuTypes {
  using BF16 = BFloat16;
  using F16 = Float16;
};

template <typename T, typename W>
void rms_norm_fwd_rows(const FwdProblem& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.residual);
  T* residual_out = static_cast<T*>(p.residual_out);
  T* y = static_cast<T*>(p.y);
  const W* weight = static_cast<const W*>(p.weight);
  for (int64_t row = 0; row < p.rows; ++row) {
    const int64_t offset = row * p.hidden;
    // With a residual, the normalized row is the rounded sum, stored first.
    const T* s = x + offset;
    if (residual != nullptr) {
      for (int64_t i = 0; i < p.hidden; ++i) {
        residual_out[offset + i] = from_float<T>(to_float(x[offset + i]) + to_float(residual[offset + i]));
      }
      s = residual_out + offset;
    }
    double sum_sq = 0.0;  // double: the result is then the exactly rounded float mean
    for (int64_t i = 0; i < p.hidden; ++i) {
      const double f = to_float(s[i]);
      sum_sq += f * f;
    }
    const float mean_sq = static_cast<float>(sum_sq / static_cast<double>(p.hidden));
    const float rstd = 1.0f / std::sqrt(mean_sq + p.eps);
    if (p.rstd != nullptr) p.rstd[row] = rstd;
    const W* w = weight != nullptr ? weight + (row / p.rows_per_weight) * p.hidden : nullptr;
    for (int64_t i = 0; i < p.hidden; ++i) {
      const float scale = w != nullptr ? to_float(w[i]) : 1.0f;
      y[offset + i] = from_float<T>(to_float(s[i]) * rstd * scale);
    }
  }
}

template <typename T, typename W>
void rms_norm_bwd_rows(const BwdProblem& p) {
  const T* dy = static_cast<const T*>(p.dy);
  const T* s = static_cast<const T*>(p.s);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  const W* weight = static_cast<const W*>(p.weight);
  T* dx = static_cast<T*>(p.dx);
  // dweight rows accumulate in double, in row order: deterministic and accurate.
  std::vector<double> dweight(p.dweight != nullptr ? p.hidden : 0);
  for (int64_t group = 0; group < p.weight_rows; ++group) {
    std::fill(dweight.begin(), dweight.end(), 0.0);
    const W* w = weight != nullptr ? weight + group * p.hidden : nullptr;
    // rows_per_weight is 0 without rows: dweight stays zero.
    for (int64_t row = group * p.rows_per_weight; row < (group + 1) * p.rows_per_weight; ++row) {
      const int64_t offset = row * p.hidden;
      const float rstd = p.rstd[row];
      double dot = 0.0;
      for (int64_t i = 0; i < p.hidden; ++i) {
        const float g = to_float(dy[offset + i]) * (w != nullptr ? to_float(w[i]) : 1.0f);
        dot += double(g) * (to_float(s[offset + i]) * rstd);
      }
      const float mean_gn = static_cast<float>(dot / static_cast<double>(p.hidden));
      for (int64_t i = 0; i < p.hidden; ++i) {
        const float n = to_float(s[offset + i]) * rstd;
        const float g = to_float(dy[offset + i]) * (w != nullptr ? to_float(w[i]) : 1.0f);
        const float extra = d_new_residual != nullptr ? to_float(d_new_residual[offset + i]) : 0.0f;
        dx[offset + i] = from_float<T>(rstd * (g - n * mean_gn) + extra);
        if (!dweight.empty()) dweight[i] += double(to_float(dy[offset + i])) * n;
      }
    }
    for (size_t i = 0; i < dweight.size(); ++i) {
      static_cast<W*>(p.dweight)[group * p.hidden + int64_t(i)] = from_float<W>(float(dweight[i]));
    }
  }
}

inline void rms_norm_bwd_cpu(const BwdProblem& p) {
  dispatch_dtypes<CpuTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    rms_norm_bwd_rows<typename decltype(x_tag)::type, typename decltype(w_tag)::type>(p);
  });
}

inline void rms_norm_fwd_cpu(const FwdProblem& p) {
  dispatch_dtypes<CpuTypes>(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    rms_norm_fwd_rows<typename decltype(x_tag)::type, typename decltype(w_tag)::type>(p);
  });
}

}  // namespace jax_rmsnorm
