"""The kill switch: route every op through the jnp reference, for debugging and A/B runs.

The ops read it when they are traced. JAX caches traces and compilations per function
and argument shapes, not per this switch, so every change clears JAX's caches
(``jax.clear_caches()``): the next call of any jitted function retraces and picks up
the new setting. The switch is process-wide: a per-thread one could not be honoured,
because threads share those caches.
"""

import contextlib
import os
import threading

import jax
import numpy as np

ENV_VAR = "JAX_RMSNORM_DISABLE"
_OFF_VALUES = ("", "0", "false", "no", "off")
_ON_VALUES = ("1", "true", "yes", "on")


def _enabled_from_env():
  value = os.environ.get(ENV_VAR, "").strip().lower()
  if value in _OFF_VALUES:
    return True
  if value in _ON_VALUES:
    return False
  raise ValueError(f"{ENV_VAR} must be one of 1/true/yes/on or 0/false/no/off (or unset), got "
                   f"{os.environ[ENV_VAR]!r}")


_enabled = _enabled_from_env()
_lock = threading.Lock()


def kernels_enabled():
  """Whether the ops use the hand-written kernels (True) or the jnp reference (False)."""
  return _enabled


def set_kernels_enabled(enabled):
  """Sets the switch (``JAX_RMSNORM_DISABLE=1`` in the environment starts it off).

  Returns the previous setting. A change clears JAX's caches.
  """
  global _enabled
  if not isinstance(enabled, (bool, np.bool_)):
    raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
  with _lock:
    previous, _enabled = _enabled, bool(enabled)
    if previous != _enabled:
      jax.clear_caches()
  return previous


@contextlib.contextmanager
def kernels_disabled(disabled=True):
  """Within the block the ops trace the reference path (``disabled=False``: the kernels)."""
  if not isinstance(disabled, (bool, np.bool_)):
    raise TypeError(f"disabled must be a bool, got {type(disabled).__name__}")
  previous = set_kernels_enabled(not bool(disabled))
  try:
    yield
  finally:
    set_kernels_enabled(previous)
