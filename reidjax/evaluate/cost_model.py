"""Cost model of the ranking engines: which rows the host "head" method takes.

Only speed depends on it, never results (both engines of ``counting.py`` are
exact). Costs in ns, fitted on a shared 2-core AMD EPYC with Market-1501-sized
structured and random distances: per head item (extract, pack), per (head
item, match) compare, and per (gallery item, match) in the counting kernel.
A row goes to the kernel when its head is large: > 69% of G with 12 matches
(random features: ~92%).

``clearly_heavy`` estimates each row's head from a sample of 1/16 of its
columns (16 contiguous chunks) first, so that rows whose head is far too large for the host (weak
models, uniform random distances) go to the kernel without paying the full
host pass over their row.
"""

from __future__ import annotations

import numpy as np

HEAD_ITEM_NS, HEAD_MATCH_NS, COUNT_NS = 2.0, 1.0, 0.8
# Sample 1 / SAMPLE_STRIDE of the columns; a row is "clearly heavy" when its
# estimated head costs more than SAFETY x the kernel's cost (the sample's
# fraction is within ~2% of the row's).
SAMPLE_STRIDE = 16
SAMPLE_CHUNKS = 16
SAFETY = 1.1
# evaluate_ranking sends every row to the kernel when this fraction of a
# sample of rows is clearly heavy.
HEAVY_FRACTION = 0.9


def head_cost(heads, num_matches):
  """ns of the head method for rows of ``heads`` items and matches."""
  return np.asarray(heads) * (HEAD_ITEM_NS
                              + HEAD_MATCH_NS * np.asarray(num_matches))


def kernel_cost(num_matches, num_gallery: int):
  """ns of the counting kernel for rows of ``num_matches`` matches."""
  return np.asarray(num_matches) * num_gallery * COUNT_NS


def prefer_head(heads, num_matches, num_gallery: int) -> np.ndarray:
  """(B,) bool: the head method is not dearer than the kernel."""
  return head_cost(heads, num_matches) <= kernel_cost(num_matches,
                                                     num_gallery)


def clearly_heavy(dist: np.ndarray, thresh: np.ndarray,
                  num_matches: np.ndarray) -> np.ndarray:
  """(B,) bool: rows (with a match) whose sampled head says "kernel".

  Args:
    dist: (B, G) host distances.
    thresh: (B,) each row's last match distance (its head's bound).
    num_matches: (B,).
  """
  num_g = dist.shape[1]
  # SAMPLE_CHUNKS contiguous chunks spread over G (a strided sample would
  # still read every cache line).
  width = max(1, num_g // (SAMPLE_STRIDE * SAMPLE_CHUNKS))
  starts = np.linspace(0, num_g - width, SAMPLE_CHUNKS).astype(int)
  sample = np.concatenate([dist[:, s:s + width] for s in starts], axis=1)
  est = np.count_nonzero(sample <= thresh[:, None], axis=1) * (
      num_g / sample.shape[1])
  return (num_matches > 0) & (
      head_cost(est, num_matches)
      > SAFETY * kernel_cost(num_matches, num_g))
