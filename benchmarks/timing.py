"""The timing loop the benchmark scripts share (no torch, no TensorFlow, so it
also runs on the GPU machine)."""

from __future__ import annotations

import time
from typing import Callable


def time_calls(fn: Callable[[], object], iters: int, warmup: int) -> tuple[list[float], float]:
  """Runs ``fn`` warmup + iters times; (per-iteration seconds, first call s).

  ``fn`` must block until its result is ready (e.g. ``jax.block_until_ready``).
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times, first
