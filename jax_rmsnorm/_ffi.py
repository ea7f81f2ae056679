"""Loads the compiled extension and registers its FFI targets with XLA, once.

Target names carry a version suffix (``_v1``): a saved ``jax.export`` artifact
names the target it was lowered with, so a later release that changes a handler's
signature registers a new name beside the old one instead of breaking old exports.
"""

import os

import jax

from jax_rmsnorm import _partition

try:
  from jax_rmsnorm import _jax_rmsnorm
except ImportError as e:
  raise ImportError(
      f"jax_rmsnorm's compiled extension is missing from {os.path.dirname(__file__)}. If that "
      "is the source checkout (Python puts the current directory first on sys.path), run "
      "from another directory, or install with `pip install .`.") from e

FWD_TARGET = "jax_rmsnorm_fwd_v1"
#: The forward with v2's options (a float32 y, the HF order: attribute round_normalized).
FWD_TARGET_V2 = "jax_rmsnorm_fwd_v2"
BWD_TARGET = "jax_rmsnorm_bwd_v1"
#: The backward with v2's option (attribute round_normalized: the HF order's dweight).
BWD_TARGET_V2 = "jax_rmsnorm_bwd_v2"

#: How many CTAs (float32 dweight partial rows) the backward uses per weight row;
#: shared with the kernels' launch heuristic (csrc/kernels/launch_config.h).
bwd_ctas_per_weight_row = _jax_rmsnorm.bwd_ctas_per_weight_row
#: Whether a backward without dweight still takes the partial buffer (the row-tile
#: kernel's exchange scratch), from the row length and element size alone.
bwd_exchanges_in_partials = _jax_rmsnorm.bwd_exchanges_in_partials

_CPU_TARGETS = _jax_rmsnorm.cpu_targets()
_CUDA_TARGETS = _jax_rmsnorm.cuda_targets()

#: True when the extension was built with the CUDA handlers.
HAS_CUDA = all(t in _CUDA_TARGETS for t in (FWD_TARGET, FWD_TARGET_V2, BWD_TARGET, BWD_TARGET_V2))



def manual_target(target):
  """The name a target's handler also goes by inside `shard_map` bodies (see _partition)."""
  return target + "_local"


#: Every FFI target name our lowerings emit (what `jax.export` callers allow).
TARGETS = tuple(name for target in (FWD_TARGET, FWD_TARGET_V2, BWD_TARGET, BWD_TARGET_V2)
                for name in (target, manual_target(target)))

for _platform, _targets in (("cpu", _CPU_TARGETS), ("CUDA", _CUDA_TARGETS)):
  for _name, _capsule in _targets.items():
    jax.ffi.register_ffi_target(_name, _capsule, platform=_platform)
    jax.ffi.register_ffi_target(manual_target(_name), _capsule, platform=_platform)

# XLA asks our partitioners how to split each call across devices (see _partition); the
# process that deserializes a jax.export artifact gets them by importing jax_rmsnorm, as
# it must anyway for the handlers.
_partition.register((FWD_TARGET, FWD_TARGET_V2), (BWD_TARGET, BWD_TARGET_V2))
