// The CPU kernels: the same semantics as the CUDA ones, row by row.
#pragma once

#include <algorithm>
#include <cmath>
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

// Sums over a row run in kBlock-element blocks of kLanes independent float sums (the
// compiler vectorizes them), each block total added into a double: fast, accurate and
// in a fixed order.
constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 512;

template <typename F>
double sum_over_row(int64_t n, F&& term) {
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

// The weight row (or ones) as float, converted once per weight row.
template <typename W>
const float* weight_as_float(const W* weight, int64_t hidden, std::vector<float>& buffer) {
  buffer.resize(hidden);
  for (int64_t i = 0; i < hidden; ++i) buffer[i] = weight != nullptr ? to_float(weight[i]) : 1.0f;
  return buffer.data();
}

template <typename T, typename W, typename O>
void rms_norm_fwd_rows(const FwdProblem& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.residual);
  T* residual_out = static_cast<T*>(p.residual_out);
  O* y = static_cast<O*>(p.y);
  const W* weight = static_cast<const W*>(p.weight);
  std::vector<float> w_buffer;
  const float* w = nullptr;
  int64_t w_row = -1;
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
    const double sum_sq = sum_over_row(p.hidden, [&](int64_t i) {
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

template <typename T, typename W>
void rms_norm_bwd_rows(const BwdProblem& p) {
  const T* dy = static_cast<const T*>(p.dy);
  const T* s = static_cast<const T*>(p.s);
  const T* d_new_residual = static_cast<const T*>(p.d_new_residual);
  const W* weight = static_cast<const W*>(p.weight);
  T* dx = static_cast<T*>(p.dx);
  std::vector<float> w_buffer;
  // dweight rows accumulate each row's float terms into doubles, in row order:
  // deterministic and accurate.
  std::vector<double> dweight(p.dweight != nullptr ? p.hidden : 0);
  std::vector<float> dweight_terms(p.hidden);  // dy * n of one row, kept from the dx pass
  for (int64_t group = 0; group < p.weight_rows; ++group) {
    std::fill(dweight.begin(), dweight.end(), 0.0);
    const float* w = weight_as_float(weight != nullptr ? weight + group * p.hidden : nullptr, p.hidden, w_buffer);
    // rows_per_weight is 0 without rows: dweight stays zero.
    for (int64_t row = group * p.rows_per_weight; row < (group + 1) * p.rows_per_weight; ++row) {
      const T* dy_row = dy + row * p.hidden;
      const T* s_row = s + row * p.hidden;
      T* dx_row = dx + row * p.hidden;
      const float rstd = p.rstd[row];
      const double dot = sum_over_row(p.hidden, [&](int64_t i) {
        return to_float(dy_row[i]) * w[i] * (to_float(s_row[i]) * rstd);
      });
      const float mean_gn = static_cast<float>(dot / static_cast<double>(p.hidden));
      for (int64_t i = 0; i < p.hidden; ++i) {
        const float n = to_float(s_row[i]) * rstd;
        const float dy_i = to_float(dy_row[i]);
        const float extra = d_new_residual != nullptr ? to_float(d_new_residual[row * p.hidden + i]) : 0.0f;
        dx_row[i] = from_float<T>(rstd * (dy_i * w[i] - n * mean_gn) + extra);
        dweight_terms[i] = dy_i * n;
      }
      for (size_t i = 0; i < dweight.size(); ++i) dweight[i] += dweight_terms[i];
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
    using T = typename decltype(x_tag)::type;
    dispatch_output<CpuTypes, T>(p.y_dtype, [&](auto y_tag) {
      rms_norm_fwd_rows<T, typename decltype(w_tag)::type, typename decltype(y_tag)::type>(p);
    });
  });
}

}  // namespace jax_rmsnorm
