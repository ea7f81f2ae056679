"""Plots bench.py results: % of copy bandwidth against hidden size, ours beside XLA.

    python benchmarks/plot.py benchmarks/results/h100.json [more.json ...] -o out.png

One panel per op. Each point is one (rows, hidden) shape of the sweep at the first
dtype found; the dashed line at 100% is the device's copy bandwidth measured in the
same run. Decode shapes (under 1M elements) are left out: they measure latency.
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MIN_ELEMENTS = 1 << 20


def plot(paths, out):
  """Writes the plot to `out` and returns it; None when no shape is large enough to plot."""
  results, device = [], ""
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    results += [r for r in record["results"] if r["rows"] * r["hidden"] >= MIN_ELEMENTS]
    device = record["device"]
  if not results:
    return None
  ops = list(dict.fromkeys(r["op"] for r in results))
  fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.8), squeeze=False, sharey=True)
  for ax, op in zip(axes[0], ops):
    rows = [r for r in results if r["op"] == op]
    dtype = rows[0]["dtype"] if rows else ""
    rows = sorted((r for r in rows if r["dtype"] == dtype), key=lambda r: (r["hidden"], r["rows"]))
    hidden = [r["hidden"] for r in rows]
    ax.plot(hidden, [r["ours_pct_copy_bw"] for r in rows], "o-", label="jax_rmsnorm")
    ax.plot(hidden, [r["xla_pct_copy_bw"] for r in rows], "s--", label="XLA jnp")
    ax.axhline(100, color="gray", linestyle=":", label="copy bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hidden")
    ax.set_title(f"{op} ({dtype})")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("% of copy bandwidth")
  axes[0][-1].legend(loc="lower right", fontsize=8)
  fig.suptitle(f"{device}: kernel time as % of copy bandwidth (rows x hidden >= 1M)", fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("json", nargs="+")
  parser.add_argument("-o", "--out", required=True)
  args = parser.parse_args()
  print(plot(args.json, args.out))
