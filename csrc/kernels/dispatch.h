// The one dtype dispatch. `Types` maps each DType to the platform's element type
// (CUDA: __nv_bfloat16 and __half; CPU: the storage types in cpu/half.h).
#pragma once

#include "kernels/problem.h"

namespace jax_rmsnorm {

template <typename T>
struct TypeTag {
  using type = T;
};

template <typename Types, typename F>
decltype(auto) dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBF16:
      return f(TypeTag<typename Types::BF16>{});
    case DType::kF16:
      return f(TypeTag<typename Types::F16>{});
    case DType::kF32:
    default:
      return f(TypeTag<float>{});
  }
}

// Calls f(TypeTag<X>, TypeTag<W>) for the row dtype X and the weight dtype W.
template <typename Types, typename F>
decltype(auto) dispatch_dtypes(DType x_dtype, DType weight_dtype, F&& f) {
  return dispatch_dtype<Types>(x_dtype, [&](auto x_tag) -> decltype(auto) {
    return dispatch_dtype<Types>(weight_dtype,
                                 [&](auto w_tag) -> decltype(auto) { return f(x_tag, w_tag); });
  });
}

// Calls f(TypeTag<O>) for y's type O, given the row type T and y's dtype: float from a
// bf16/f16 row, bf16 or f16 from a float row, else T itself (the pairs calls.h admits).
template <typename Types, typename T, typename F>
decltype(auto) dispatch_output(DType y_dtype, F&& f) {
  if constexpr (sizeof(T) < sizeof(float)) {
    if (y_dtype == DType::kF32) return f(TypeTag<float>{});
  } else {
    if (y_dtype == DType::kBF16) return f(TypeTag<typename Types::BF16>{});
    if (y_dtype == DType::kF16) return f(TypeTag<typename Types::F16>{});
  }
  return f(TypeTag<T>{});
}

}  // namespace jax_rmsnorm
