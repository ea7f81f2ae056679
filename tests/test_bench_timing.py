"""benchmarks/bench.py's split of a profiler trace's kernels into calls (its per-call
kernel times and the per-kernel split in its JSON come from it)."""
import importlib.util
import pathlib

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_under_test", _BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def trace(calls):
  """(start, duration, name) for calls given as [(offset from the call's start, duration,
  name), ...], the calls 200 µs apart."""
  return sorted((200.0 * i + t, d, n) for i, call in enumerate(calls) for t, d, n in call)


def test_memset_far_ahead_in_some_calls(bench):
  # A memset 40 µs ahead of its cooperative launch in two calls, right before it in the
  # third: a fixed gap width split the first two in two and not the third.
  calls = [[(0, 0.8, "memset"), (40, 100.0, "tiles"), (141, 3.0, "sum")],
           [(0, 0.9, "memset"), (1, 101.0, "tiles"), (103, 3.1, "sum")],
           [(0, 0.7, "memset"), (45, 99.0, "tiles"), (145, 2.9, "sum")]]
  grouped = bench.split_into_calls(trace(calls), 3)
  assert grouped is not None
  assert [round(sum(g.values()), 3) for g in grouped] == [103.8, 105.0, 102.6]
  assert [g["tiles"] for g in grouped] == [100.0, 101.0, 99.0]


def test_one_call(bench):
  grouped = bench.split_into_calls([(0.0, 5.0, "a"), (50.0, 2.0, "b")], 1)
  assert grouped == [{"a": 5.0, "b": 2.0}]


def test_calls_that_differ_are_refused(bench):
  # A kernel missing from one call: no split into calls alike, so the caller takes the mean.
  calls = [[(0, 1.0, "a"), (2, 1.0, "b")], [(0, 1.0, "a")], [(0, 1.0, "a"), (2, 1.0, "b")]]
  assert bench.split_into_calls(trace(calls), 3) is None


def test_fewer_kernels_than_calls_are_refused(bench):
  assert bench.split_into_calls([(0.0, 1.0, "a"), (10.0, 1.0, "a")], 3) is None
  assert bench.split_into_calls([], 2) is None


def test_overlapping_kernels_are_not_split(bench):
  # Two kernels that overlap (a gap of at most zero) cannot be two synchronised calls.
  assert bench.split_into_calls([(0.0, 10.0, "a"), (5.0, 10.0, "a")], 2) is None
