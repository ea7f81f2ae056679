"""The jitted train step (forward, backward, adamw update) of examples/decoder.py with
flax's RMSNorm, with ours, and with no norm at all (the yardstick: what a perfect norm
could save), in bf16.

Timing: a step is one XLA executable; 10 steps are dispatched back to back and the clock
stops when the last one is done, so the device never waits on the host; per-step time is
that over 10. The three variants are compiled and warmed up (3 steps) first, then timed in
turn, round after round (7 rounds), so that drift hits them alike; the table gives the
medians and the spread (max - min over the rounds) of each.

With --layout, the step runs on every visible device (issue 8: two GPUs): `data` shards
the batch (parameters replicated), `model` shards every parameter matrix along its last
axis (tensor parallel: the residual stream, and so the norms, are then split along
hidden), `data,model` does both on a 2-D mesh.

    python benchmarks/train_step.py [--quick] [--layout data|model|data,model] [--json FILE]
"""

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import statistics
import time

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_spec = importlib.util.spec_from_file_location(
    "decoder", pathlib.Path(__file__).parents[1] / "examples" / "decoder.py")
decoder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decoder)

# (name, config, batch, sequence): the two sizes of ../shared/ANCHORS.md.
SIZES = [
    ("hidden 1024", decoder.Config(hidden=1024, layers=4, heads=8, kv_heads=8, mlp=4096), 8, 2048),
    ("hidden 4096", decoder.Config(hidden=4096, layers=2, heads=32, kv_heads=8, mlp=14336), 2, 2048),
]
QUICK = [("hidden 256 (quick)", decoder.Config(vocab=1024, hidden=256, layers=2, heads=2, kv_heads=2,
                                               mlp=512), 2, 128)]


def mesh_for(layout, devices=None):
  """A mesh over all devices for a layout: `data` and/or `model` axes."""
  devices = np.array(devices or jax.devices())
  axes = layout.split(",")
  if axes == ["data", "model"]:
    shape = (2, len(devices) // 2) if len(devices) % 2 == 0 and len(devices) > 2 else (1, len(devices))
  elif axes in (["data"], ["model"]):
    shape = (len(devices),)
  else:
    raise ValueError(f"layout: 'data', 'model' or 'data,model', not {layout!r}")
  return Mesh(devices.reshape(shape), tuple(axes))


def place(mesh, params, tokens):
  """Tokens sharded by batch over `data`; each parameter of rank >= 2 along its last axis
  over `model` (where it divides), the rest replicated."""
  model_size = mesh.shape.get("model", 1)

  def param_spec(a):
    if "model" in mesh.axis_names and a.ndim >= 2 and a.shape[-1] % model_size == 0:
      return NamedSharding(mesh, P(*([None] * (a.ndim - 1)), "model"))
    return NamedSharding(mesh, P())

  batch = "data" if "data" in mesh.axis_names and tokens.shape[0] % mesh.shape["data"] == 0 else None
  return (jax.tree.map(lambda a: jax.device_put(a, param_spec(a)), params),
          jax.device_put(tokens, NamedSharding(mesh, P(batch, None))))


def prepare(cfg, batch, seq, norm, mesh=None):
  """A compiled, warmed-up step of one variant: a callable that runs `steps` steps and
  returns the seconds per step, and the last loss. With a mesh, sharded (see place())."""
  model = decoder.Decoder(dataclasses.replace(cfg, norm=norm))
  tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, cfg.vocab)
  init_as = model if norm == "none" else decoder.Decoder(dataclasses.replace(cfg, norm="flax"))
  params = init_as.init(jax.random.key(1), tokens[:, :-1])
  if mesh is not None:
    params, tokens = place(mesh, params, tokens)
  optimizer = optax.adamw(1e-4)
  step = decoder.make_train_step(model, optimizer)
  state = [params, optimizer.init(params), None]
  for _ in range(3):
    state = list(step(*state[:2], tokens))
  jax.block_until_ready(state[2])

  def run(steps=10):
    start = time.perf_counter()
    for _ in range(steps):
      state[:] = step(*state[:2], tokens)
    jax.block_until_ready(state[2])
    return (time.perf_counter() - start) / steps, float(state[2])

  return run


def step_times(cfg, batch, seq, norms=("flax", "ours", "none"), rounds=7, mesh=None):
  """{norm: (median ms, spread ms, last loss)}, the variants timed in turn each round."""
  runs = {norm: prepare(cfg, batch, seq, norm, mesh) for norm in norms}
  times, losses = {norm: [] for norm in norms}, {}
  for _ in range(rounds):
    for norm, run in runs.items():
      seconds, losses[norm] = run()
      times[norm].append(seconds * 1e3)
  return {norm: (statistics.median(t), max(t) - min(t), losses[norm]) for norm, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a tiny model, for the CPU")
  parser.add_argument("--json", help="write the results here")
  parser.add_argument("--layout", help="data, model or data,model: shard over all devices")
  args = parser.parse_args()
  device = jax.devices()[0]
  mesh = mesh_for(args.layout) if args.layout else None
  where = (f"{len(jax.devices())} devices, mesh {dict(mesh.shape)}" if mesh is not None
           else "one device")
  print(f"device: {device.device_kind} ({device.platform}), {where}; jax {jax.__version__}; bf16 "
        "activations, float32 parameters, adamw; ms per step: median of 7 rounds of 10 steps, "
        "± half the spread over the rounds; the variants alternate")
  print(f"{'model':<20} {'tokens':>8} {'flax ms':>14} {'ours ms':>14} {'no norm ms':>14} "
        f"{'speedup':>8} {'norm share':>10} {'captured':>9}")
  rows = []
  for name, cfg, batch, seq in (QUICK if args.quick else SIZES):
    t = step_times(cfg, batch, seq, mesh=mesh)
    (flax_ms, flax_spread, flax_loss), (ours_ms, ours_spread, ours_loss), (none_ms, none_spread, _) = (
        t["flax"], t["ours"], t["none"])
    share = (flax_ms - none_ms) / flax_ms
    captured = (flax_ms - ours_ms) / (flax_ms - none_ms) if flax_ms > none_ms else float("nan")
    rows.append(dict(model=name, config=dataclasses.asdict(cfg) | {"dtype": "bfloat16", "param_dtype": "float32"},
                     batch=batch, seq=seq, flax_ms=flax_ms, ours_ms=ours_ms, no_norm_ms=none_ms,
                     flax_spread_ms=flax_spread, ours_spread_ms=ours_spread, no_norm_spread_ms=none_spread,
                     speedup=flax_ms / ours_ms, flax_loss=flax_loss, ours_loss=ours_loss))
    cell = lambda ms, spread: f"{ms:7.2f} ±{spread / 2:5.2f}"
    print(f"{name:<20} {batch}x{seq:<6} {cell(flax_ms, flax_spread)} {cell(ours_ms, ours_spread)} "
          f"{cell(none_ms, none_spread)} {flax_ms / ours_ms:7.3f}x {share:9.1%} {captured:9.0%}", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(
        device=device.device_kind, jax=jax.__version__, devices=len(jax.devices()),
        mesh=dict(mesh.shape) if mesh is not None else None, rows=rows), indent=1, default=str))


if __name__ == "__main__":
  main()
