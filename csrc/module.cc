// The Python extension: hands JAX the handler capsules, one dict per platform,
// keyed by versioned FFI target name.
#include <nanobind/nanobind.h>

#include "ffi/handlers.h"

namespace nb = nanobind;

namespace {

template <typename Fn>
nb::capsule capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_jax_rmsnorm, m) {
  m.def("cpu_targets", []() {
    nb::dict targets;
    targets["jax_rmsnorm_fwd_v1"] = capsule(jax_rmsnorm_fwd_cpu);
    return targets;
  });
  m.def("cuda_targets", []() {
    nb::dict targets;
#ifdef JAX_RMSNORM_WITH_CUDA
    targets["jax_rmsnorm_fwd_v1"] = capsule(jax_rmsnorm_fwd_cuda);
#endif
    return targets;
  });
}
