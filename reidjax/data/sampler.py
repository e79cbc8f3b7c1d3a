"""P x K identity sampling for metric-learning (triplet) batches.

A training batch holds P identities with K images each, so that every anchor
has K - 1 positives and (P - 1) * K negatives for batch-hard triplet mining
(Hermans et al. 2017). The sampler is pure NumPy and stateless: the global
batch at a given step is a function of (seed, step) only, so a resumed run
(``batches(start_step)``) sees exactly the batches it would have seen, and every
process of a multi-host job computes the same global batch and keeps its own
contiguous slice.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class IdentitySampler:
  """An infinite, deterministic stream of P x K batches of dataset indices.

  Epoch ``e`` shuffles the identities (with a generator seeded by
  ``(seed, e)``) and cuts the permutation into consecutive groups of P; the
  ``len(ids) % P`` identities left over sit out that epoch (a different few
  each epoch). So ``steps_per_epoch == num_ids // P``.

  For each identity of a step, K of its images are drawn without replacement
  if it has at least K images and with replacement otherwise (a generator
  seeded by ``(seed, step)``).

  A global batch is laid out identity-major: positions ``[j*K, (j+1)*K)`` are
  the K images of the j-th identity. Process ``i`` of ``n`` keeps positions
  ``[i*B/n, (i+1)*B/n)`` where ``B = P*K``; an identity may straddle two
  processes, which is fine when the loss is computed on the global batch.

  Attributes:
    num_identities: P.
    num_instances: K.
    global_batch_size: P * K.
    local_batch_size: P * K / process_count.
    steps_per_epoch: number of identities // P.
  """

  def __init__(self,
               pids: np.ndarray,
               num_identities: int,
               num_instances: int,
               seed: int,
               process_index: int = 0,
               process_count: int = 1):
    """Builds the sampler.

    Args:
      pids: (N,) int identity label of every image of the split.
      num_identities: P, identities per global batch (``data.num_identities``).
      num_instances: K, images per identity (``data.num_instances``).
      seed: non-negative int; the whole stream is a function of it.
      process_index: this process, in ``[0, process_count)``.
      process_count: number of processes sharing each global batch.

    Raises:
      ValueError: on a configuration that cannot produce P x K batches.
    """
    pids = np.asarray(pids)
    if pids.ndim != 1 or pids.size == 0:
      raise ValueError(f"IdentitySampler: pids must be a non-empty 1-D array, "
                       f"got shape {pids.shape}.")
    if num_identities < 1:
      raise ValueError(
          f"data.num_identities (P) must be >= 1, got {num_identities}.")
    if num_instances < 2:
      # With K = 1 no anchor has a positive and the triplet loss is undefined.
      raise ValueError(
          f"data.num_instances (K) must be >= 2 for triplet mining, got "
          f"{num_instances}.")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(
          f"IdentitySampler: process_index {process_index} is not in "
          f"[0, process_count={process_count}).")
    global_batch = num_identities * num_instances
    if global_batch % process_count:
      raise ValueError(
          f"data.num_identities * data.num_instances (P*K = {num_identities}"
          f"*{num_instances} = {global_batch}) must be divisible by the "
          f"process count ({process_count}).")
    if seed < 0:
      raise ValueError(f"IdentitySampler: seed must be >= 0, got {seed}.")

    ids, inverse = np.unique(pids, return_inverse=True)
    if ids.size < num_identities:
      raise ValueError(
          f"data.num_identities (P = {num_identities}) exceeds the number of "
          f"identities in the split ({ids.size}).")
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=ids.size))[:-1]
    # _members[j]: indices of the images of the j-th (sorted) identity.
    self._members = np.split(order.astype(np.int64), bounds)

    self.num_identities = num_identities
    self.num_instances = num_instances
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.global_batch_size = global_batch
    self.local_batch_size = global_batch // process_count
    self.steps_per_epoch = ids.size // num_identities
    self._perm_cache: tuple[int, np.ndarray] | None = None

  @property
  def num_ids(self) -> int:
    return len(self._members)

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    # Consecutive steps share an epoch: cache its permutation.
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, 0, epoch])
      self._perm_cache = (epoch, rng.permutation(self.num_ids))
    return self._perm_cache[1]

  def global_batch(self, step: int) -> np.ndarray:
    """Returns (P*K,) int64 dataset indices of the global batch at ``step``."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    epoch, i = divmod(step, self.steps_per_epoch)
    p, k = self.num_identities, self.num_instances
    chosen = self._epoch_permutation(epoch)[i * p:(i + 1) * p]
    # Separate stream (tag 1) so instance draws do not depend on the epoch's
    # shuffle and a step can be computed without replaying earlier steps.
    rng = np.random.default_rng([self.seed, 1, step])
    out = np.empty((p, k), np.int64)
    for j, ident in enumerate(chosen):
      members = self._members[ident]
      out[j] = rng.choice(members, size=k, replace=members.size < k)
    return out.reshape(-1)

  def local_batch(self, step: int) -> np.ndarray:
    """Returns (P*K / process_count,) int64: this process's slice."""
    b = self.local_batch_size
    start = self.process_index * b
    return self.global_batch(step)[start:start + b]

  def batches(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """Yields this process's (P*K / process_count,) index arrays forever.

    Args:
      start_step: first step to produce; resuming at step s yields the same
        arrays as skipping the first s of ``batches(0)``.
    """
    step = start_step
    while True:
      yield self.local_batch(step)
      step += 1
