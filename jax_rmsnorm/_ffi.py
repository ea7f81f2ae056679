"""Loads the compiled extension and registers its FFI targets with XLA, once.

Target names carry a version suffix (``_v1``): a saved ``jax.export`` artifact
names the target it was lowered with, so a later release that changes a handler's
signature registers a new name beside the old one instead of breaking old exports.
"""

import jax

from jax_rmsnorm import _jax_rmsnorm

FWD_TARGET = "jax_rmsnorm_fwd_v1"

_CPU_TARGETS = _jax_rmsnorm.cpu_targets()
_CUDA_TARGETS = _jax_rmsnorm.cuda_targets()

#: True when the extension was built with the CUDA handlers.
HAS_CUDA = FWD_TARGET in _CUDA_TARGETS

for _name, _capsule in _CPU_TARGETS.items():
  jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")
for _name, _capsule in _CUDA_TARGETS.items():
  jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")
