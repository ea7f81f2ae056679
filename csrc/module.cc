// The Python extension: hands JAX the handler capsules, one dict per platform,
// keyed by versioned FFI target name.
#include <nanobind/nanobind.h>

#include "ffi/handlers.h"
#include "kernels/launch_config.h"

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
    targets["jax_rmsnorm_fwd_v2"] = capsule(jax_rmsnorm_fwd_v2_cpu);
    targets["jax_rmsnorm_bwd_v1"] = capsule(jax_rmsnorm_bwd_cpu);
    targets["jax_rmsnorm_bwd_v2"] = capsule(jax_rmsnorm_bwd_v2_cpu);
    return targets;
  });
  // The backward's dweight partial buffer is sized from the same launch heuristic the
  // kernel uses, so the primitive's abstract evaluation asks for it here.
  m.def("bwd_ctas_per_weight_row", &jax_rmsnorm::bwd_ctas_per_weight_row, nb::arg("rows_per_weight"),
        nb::arg("hidden"), nb::arg("elem_bytes"));
  m.def("bwd_exchanges_in_partials", &jax_rmsnorm::bwd_exchanges_in_partials, nb::arg("hidden"),
        nb::arg("elem_bytes"));
  m.def("cuda_targets", []() {
    nb::dict targets;
#ifdef JAX_RMSNORM_WITH_CUDA
    targets["jax_rmsnorm_fwd_v1"] = capsule(jax_rmsnorm_fwd_cuda);
    targets["jax_rmsnorm_fwd_v2"] = capsule(jax_rmsnorm_fwd_v2_cuda);
    targets["jax_rmsnorm_bwd_v1"] = capsule(jax_rmsnorm_bwd_cuda);
    targets["jax_rmsnorm_bwd_v2"] = capsule(jax_rmsnorm_bwd_v2_cuda);
#endif
    return targets;
  });
}
