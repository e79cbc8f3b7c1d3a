"""The host thread pool of the ranking: NumPy releases the GIL in its loops,
so host tiles (``counting.head_counts``) run on all cores."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def host_threads() -> int:
  """Cores this process may use, at most 8."""
  if hasattr(os, "sched_getaffinity"):
    cpus = len(os.sched_getaffinity(0))
  else:  # macOS
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8))


def host_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
  """``map(fn, items)`` on ``host_threads()`` threads, results in order."""
  with concurrent.futures.ThreadPoolExecutor(host_threads()) as pool:
    yield from pool.map(fn, items)
