"""Training samplers: P x K identity batches and plain shuffled batches.

A P x K batch holds P identities with K images (or tracklets) each, so that
every anchor has K - 1 positives and (P - 1) * K negatives for batch-hard
triplet mining (Hermans et al. 2017, "In Defense of the Triplet Loss"). Three
samplers, built from the ``data`` config section by ``make_sampler`` (or from
explicit settings by ``build_sampler``):

* ``data.sampler = "pk"``, ``data.epoch = "images"``:
  ``ChunkedIdentitySampler``, the epoch of the identity sampler of Bag of
  Tricks (Luo et al. 2019) and torchreid (``RandomIdentitySampler``): about
  every training image once per epoch. On Market-1501 at P = 16, K = 4 that is ~190 steps.
* ``data.sampler = "pk"``, ``data.epoch = "identities"``: ``IdentitySampler``,
  an epoch visits every identity once (``num_ids // P`` steps; 46 on
  Market-1501 at P = 16). This is reidjax's stream before the "images" epoch
  existed, reproduced exactly.
* ``data.sampler = "random"``: ``RandomSampler``, B = P * K random images
  without identity structure, for recipes with classification losses only.

Every sampler is pure NumPy and stateless in effect: the global batch at a
given step is a function of (seed, step) only (an epoch is precomputed from a
generator seeded by (seed, epoch) and cached), so a resumed run
(``batches(start_step)``) sees exactly the batches it would have seen, and
every process of a multi-host job computes the same global batch and keeps
its own contiguous slice: process ``i`` of ``n`` keeps positions
``[i*B/n, (i+1)*B/n)``. In a P x K batch an identity may straddle two
processes, which is fine when the loss is computed on the global batch.

For video data an item is a tracklet: pass the tracklets' pids.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
import functools

import numpy as np

SAMPLERS = ("pk", "random")
EPOCHS = ("images", "identities")

# Generator stream tags, so that no two streams share a seed sequence.
_TAG_IDENTITY_ORDER = 0  # IdentitySampler: the epoch's identity permutation.
_TAG_IDENTITY_DRAW = 1  # IdentitySampler: a step's K-of-n draws.
# (Tag 2 is pipeline.train_clip_batches' frame choice.)
_TAG_CHUNKED_EPOCH = 3  # ChunkedIdentitySampler: a whole epoch.
_TAG_RANDOM_EPOCH = 4  # RandomSampler: an epoch's permutation.

# Epochs cached per sampler: the current one and the next (a prefetching
# pipeline thread may run ahead of the thread that counts replacements).
_CACHED_EPOCHS = 2


class Sampler(abc.ABC):
  """An infinite, deterministic stream of global batches of item indices.

  Attributes:
    num_items: N, the number of items (images or tracklets) of the split.
    seed: the stream is a function of it (and of the step).
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes sharing each global batch.
    global_batch_size: B, items per global batch.
    local_batch_size: B / process_count.
    steps_per_epoch: steps of one epoch (see each sampler).
  """

  num_items: int
  seed: int
  process_index: int
  process_count: int
  global_batch_size: int
  local_batch_size: int
  steps_per_epoch: int

  def _init_common(self, pids: np.ndarray, global_batch_size: int,
                   batch_name: str, seed: int, process_index: int,
                   process_count: int) -> np.ndarray:
    """Checks and stores what every sampler shares; returns pids as (N,)."""
    name = type(self).__name__
    pids = np.asarray(pids)
    if pids.ndim != 1 or pids.size == 0:
      raise ValueError(f"{name}: pids must be a non-empty 1-D array, got "
                       f"shape {pids.shape}.")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(
          f"{name}: process_index {process_index} is not in "
          f"[0, process_count={process_count}).")
    if global_batch_size % process_count:
      raise ValueError(
          f"{batch_name} must be divisible by the process count "
          f"({process_count}).")
    if seed < 0:
      raise ValueError(f"{name}: seed must be >= 0, got {seed}.")
    self.num_items = pids.size
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    return pids

  def _epoch_permutations(self, tag: int, size: int):
    """``epoch -> permutation of range(size)`` from a generator seeded by
    (seed, tag, epoch). Consecutive steps share an epoch, so the last few are
    cached (``lru_cache`` is thread-safe: pipeline threads may share it)."""

    @functools.lru_cache(_CACHED_EPOCHS)
    def permutation(epoch: int) -> np.ndarray:
      return np.random.default_rng([self.seed, tag, epoch]).permutation(size)

    return permutation

  def _check_step(self, step: int) -> None:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")

  @abc.abstractmethod
  def global_batch(self, step: int) -> np.ndarray:
    """Returns (B,) int64 item indices of the global batch at ``step``."""

  def local_batch(self, step: int) -> np.ndarray:
    """Returns (B / process_count,) int64: this process's slice."""
    b = self.local_batch_size
    start = self.process_index * b
    return self.global_batch(step)[start:start + b]

  def batches(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """Yields this process's (B / process_count,) index arrays forever.

    Args:
      start_step: first step to produce; resuming at step s yields the same
        arrays as skipping the first s of ``batches(0)``.
    """
    step = start_step
    while True:
      yield self.local_batch(step)
      step += 1


def _members_by_identity(pids: np.ndarray) -> list[np.ndarray]:
  """[j] -> (n_j,) int64 indices of the images of the j-th sorted identity."""
  _, inverse = np.unique(pids, return_inverse=True)
  order = np.argsort(inverse, kind="stable")
  bounds = np.cumsum(np.bincount(inverse))[:-1]
  return np.split(order.astype(np.int64), bounds)


def _check_pk(num_identities: int, num_instances: int) -> None:
  if num_identities < 1:
    raise ValueError(
        f"data.num_identities (P) must be >= 1, got {num_identities}.")
  if num_instances < 2:
    # With K = 1 no anchor has a positive and the triplet loss is undefined.
    raise ValueError(
        f"data.num_instances (K) must be >= 2 for triplet mining, got "
        f"{num_instances}; for batches without identity structure set "
        f"data.sampler = 'random'.")


def _check_enough_ids(num_identities: int, num_ids: int) -> None:
  if num_ids < num_identities:
    raise ValueError(
        f"data.num_identities (P = {num_identities}) exceeds the number of "
        f"identities in the split ({num_ids}).")


def _pk_batch_name(num_identities: int, num_instances: int) -> str:
  return (f"data.num_identities * data.num_instances (P*K = {num_identities}"
          f"*{num_instances} = {num_identities * num_instances})")


class IdentitySampler(Sampler):
  """P x K batches; an epoch visits each identity once ("identities" epoch).

  Epoch ``e`` shuffles the identities (with a generator seeded by
  ``(seed, e)``) and cuts the permutation into consecutive groups of P; the
  ``num_ids % P`` identities left over sit out that epoch (a different few
  each epoch). So ``steps_per_epoch == num_ids // P``.

  For each identity of a step, K of its images are drawn without replacement
  if it has at least K images and with replacement otherwise (a generator
  seeded by ``(seed, step)``).

  A global batch is laid out identity-major: positions ``[j*K, (j+1)*K)`` are
  the K images of the j-th identity.

  Attributes (besides ``Sampler``'s):
    num_identities: P.
    num_instances: K.
    num_ids: number of identities in the split.
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
      pids: (N,) int identity label of every item of the split.
      num_identities: P, identities per global batch (``data.num_identities``).
      num_instances: K, items per identity (``data.num_instances``).
      seed: non-negative int; the whole stream is a function of it.
      process_index: this process, in ``[0, process_count)``.
      process_count: number of processes sharing each global batch.

    Raises:
      ValueError: on a configuration that cannot produce P x K batches.
    """
    _check_pk(num_identities, num_instances)
    pids = self._init_common(
        pids, num_identities * num_instances,
        _pk_batch_name(num_identities, num_instances), seed, process_index,
        process_count)
    self._members = _members_by_identity(pids)
    _check_enough_ids(num_identities, len(self._members))
    self.num_identities = num_identities
    self.num_instances = num_instances
    self.steps_per_epoch = self.num_ids // num_identities
    self._epoch_permutation = self._epoch_permutations(_TAG_IDENTITY_ORDER, self.num_ids)

  @property
  def num_ids(self) -> int:
    return len(self._members)

  def global_batch(self, step: int) -> np.ndarray:
    """Returns (P*K,) int64 dataset indices of the global batch at ``step``."""
    self._check_step(step)
    epoch, i = divmod(step, self.steps_per_epoch)
    p, k = self.num_identities, self.num_instances
    chosen = self._epoch_permutation(epoch)[i * p:(i + 1) * p]
    # Separate stream so instance draws do not depend on the epoch's
    # shuffle and a step can be computed without replaying earlier steps.
    rng = np.random.default_rng([self.seed, _TAG_IDENTITY_DRAW, step])
    out = np.empty((p, k), np.int64)
    for j, ident in enumerate(chosen):
      members = self._members[ident]
      out[j] = rng.choice(members, size=k, replace=members.size < k)
    return out.reshape(-1)


class ChunkedIdentitySampler(Sampler):
  """P x K batches; an epoch covers about every item once (``epoch="images"``).

  The epoch of Bag of Tricks' / torchreid's ``RandomIdentitySampler``. Each
  epoch every identity's items are shuffled and cut into *chunks* of K: an
  identity with n >= K items gives floor(n / K) chunks (the n % K items left
  over sit out the epoch, a different few each epoch); one with n < K items
  gives one chunk, its n items plus K - n drawn again from them with
  replacement. Then each batch takes one chunk from each of P distinct
  identities that still hold chunks. The number of steps is that sampler's
  length, fixed for every epoch::

      chunks(n)        = floor(max(n, K) / K)
      steps_per_epoch  = floor( sum over identities of K * chunks(n) / (P*K) )
                       = floor( sum over identities of chunks(n) / P )

  (torchreid's ``__len__`` is the sum of ``K * chunks(n)`` in images; its
  DataLoader drops the last partial batch.)

  Readings and departures, all deliberate:

  * torchreid draws an identity with n < K items as K draws with replacement,
    which may miss some of its n items; here all n are always in its chunk.
  * torchreid picks the P identities of a batch uniformly among those still
    holding chunks and stops when fewer than P hold any, which usually
    happens before its stated length (identities with many chunks are left
    over) and leaves some chunks unseen. Here the epoch always has
    ``steps_per_epoch`` batches and, whenever possible, uses every chunk but
    the ``sum(chunks) % P`` last: the P identities are drawn uniformly except
    that, with ``S`` steps left, identities holding ``>= S`` chunks are
    included just often enough that the rest of the epoch stays feasible
    (a schedule of S batches of P distinct identities exists iff
    ``sum_i min(c_i, S) >= P * S`` for remaining chunk counts ``c_i``; each
    batch leaves out at most that slack of such identities). So one epoch
    shows every item of an identity with n >= K at most once.
  * Refill: when that is impossible (an identity holds more chunks than
    there are steps, e.g. a tiny split dominated by one identity) and fewer
    than P identities still hold chunks, every identity's items are
    reshuffled into a fresh round of chunks queued behind its remaining ones,
    and the epoch continues.

  The epoch is drawn by a generator seeded by ``(seed, epoch)`` and cached.
  A global batch is laid out identity-major: positions ``[j*K, (j+1)*K)`` are
  one chunk of the j-th identity, in random order.

  Attributes (besides ``Sampler``'s):
    num_identities: P.
    num_instances: K.
    num_ids: number of identities in the split.
    num_chunks: sum over identities of chunks(n).
  """

  def __init__(self,
               pids: np.ndarray,
               num_identities: int,
               num_instances: int,
               seed: int,
               process_index: int = 0,
               process_count: int = 1):
    """Builds the sampler; arguments and errors as ``IdentitySampler``'s."""
    _check_pk(num_identities, num_instances)
    pids = self._init_common(
        pids, num_identities * num_instances,
        _pk_batch_name(num_identities, num_instances), seed, process_index,
        process_count)
    self._members = _members_by_identity(pids)
    _check_enough_ids(num_identities, len(self._members))
    self.num_identities = num_identities
    self.num_instances = num_instances
    sizes = np.array([m.size for m in self._members])
    self._chunks_per_id = np.maximum(sizes, num_instances) // num_instances
    self.num_chunks = int(self._chunks_per_id.sum())
    # >= 1: every identity has a chunk and there are at least P identities.
    self.steps_per_epoch = self.num_chunks // num_identities
    self._epoch = functools.lru_cache(_CACHED_EPOCHS)(self._make_epoch)

  @property
  def num_ids(self) -> int:
    return len(self._members)

  def _chunk_round(self, rng: np.random.Generator) -> list[np.ndarray]:
    """[j] -> (chunks_j, K) int64: the j-th identity's items, reshuffled."""
    k = self.num_instances
    out = []
    for members in self._members:
      if members.size < k:
        padded = np.concatenate(
            [members, rng.choice(members, k - members.size)])
        out.append(rng.permutation(padded)[None])
      else:
        use = members.size - members.size % k
        out.append(rng.permutation(members)[:use].reshape(-1, k))
    return out

  def _make_epoch(self, epoch: int) -> np.ndarray:
    """(steps_per_epoch, P*K) int64: every global batch of the epoch."""
    rng = np.random.default_rng([self.seed, _TAG_CHUNKED_EPOCH, epoch])
    p, k = self.num_identities, self.num_instances
    queues = self._chunk_round(rng)  # [j]: identity j's chunks, in order.
    next_chunk = np.zeros(self.num_ids, np.int64)
    remaining = self._chunks_per_id.copy()
    out = np.empty((self.steps_per_epoch, p, k), np.int64)
    for step in range(self.steps_per_epoch):
      if np.count_nonzero(remaining) < p:  # Refill (see the docstring).
        for j, fresh in enumerate(self._chunk_round(rng)):
          queues[j] = np.concatenate([queues[j][next_chunk[j]:], fresh])
        next_chunk[:] = 0
        remaining = np.array([len(q) for q in queues])
      steps_left = self.steps_per_epoch - step
      saturated = np.flatnonzero(remaining >= steps_left)
      slack = int(np.minimum(remaining, steps_left).sum()) - p * steps_left
      # Leaving out a saturated identity costs one unit of slack.
      num_forced = min(p, max(0, saturated.size - max(slack, 0)))
      forced = rng.choice(saturated, num_forced, replace=False)
      free = np.flatnonzero(remaining > 0)
      free = free[~np.isin(free, forced)]
      chosen = rng.permutation(np.concatenate(
          [forced, rng.choice(free, p - num_forced, replace=False)]))
      for j, ident in enumerate(chosen):
        out[step, j] = queues[ident][next_chunk[ident]]
      next_chunk[chosen] += 1
      remaining[chosen] -= 1
    return out.reshape(self.steps_per_epoch, p * k)

  def global_batch(self, step: int) -> np.ndarray:
    """Returns (P*K,) int64 dataset indices of the global batch at ``step``."""
    self._check_step(step)
    epoch, i = divmod(step, self.steps_per_epoch)
    return self._epoch(epoch)[i].copy()  # A copy: the cache stays intact.


class RandomSampler(Sampler):
  """Batches of B random items without identity structure (``"random"``).

  Epoch ``e`` is a permutation of the N items (a generator seeded by
  ``(seed, e)``) cut into ``steps_per_epoch = floor(N / B)`` batches of B;
  the ``N % B`` items at its end sit out that epoch (a different few each
  epoch), so no item repeats within an epoch.
  """

  def __init__(self,
               pids: np.ndarray,
               batch_size: int,
               seed: int,
               process_index: int = 0,
               process_count: int = 1):
    """Builds the sampler.

    Args:
      pids: (N,) identity label of every item (only N is used).
      batch_size: B, items per global batch (``data.num_identities *
        data.num_instances``, so that configs keep one batch size).
      seed: non-negative int; the whole stream is a function of it.
      process_index: this process, in ``[0, process_count)``.
      process_count: number of processes sharing each global batch.

    Raises:
      ValueError: on a batch size that cannot be served.
    """
    batch_name = (f"The batch size (data.num_identities * data.num_instances "
                  f"= {batch_size})")
    if batch_size < 1:
      raise ValueError(f"{batch_name} must be >= 1.")
    self._init_common(pids, batch_size, batch_name, seed, process_index,
                      process_count)
    if batch_size > self.num_items:
      raise ValueError(f"{batch_name} exceeds the {self.num_items} items of "
                       f"the training split.")
    self.steps_per_epoch = self.num_items // batch_size
    self._epoch_permutation = self._epoch_permutations(_TAG_RANDOM_EPOCH, self.num_items)

  def global_batch(self, step: int) -> np.ndarray:
    """Returns (B,) int64 dataset indices of the global batch at ``step``."""
    self._check_step(step)
    epoch, i = divmod(step, self.steps_per_epoch)
    b = self.global_batch_size
    perm = self._epoch_permutation(epoch)
    return perm[i * b:(i + 1) * b].astype(np.int64)


def build_sampler(pids: np.ndarray,
                  *,
                  kind: str,
                  epoch: str,
                  num_identities: int,
                  num_instances: int,
                  seed: int,
                  process_index: int = 0,
                  process_count: int = 1) -> Sampler:
  """The training sampler of ``kind`` ("pk" or "random"); see the module doc.

  Args:
    pids: (N,) identity of every training item (image, or tracklet).
    kind: ``data.sampler``: "pk" (P x K identities) or "random".
    epoch: ``data.epoch``: "images" (an epoch covers about every item once)
      or "identities" (every identity once; "pk" only).
    num_identities: P (``data.num_identities``).
    num_instances: K (``data.num_instances``); "random" batches hold P*K
      items.
    seed: non-negative int.
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes sharing each global batch.

  Raises:
    ValueError: naming the setting, on an unknown kind or epoch, or a
      combination that cannot be served.
  """
  if kind not in SAMPLERS:
    raise ValueError(f"data.sampler must be one of {SAMPLERS}, got {kind!r}.")
  if epoch not in EPOCHS:
    raise ValueError(f"data.epoch must be one of {EPOCHS}, got {epoch!r}.")
  process = dict(process_index=process_index, process_count=process_count)
  if kind == "random":
    if epoch != "images":
      raise ValueError(
          f"data.epoch = {epoch!r} needs identity batches (data.sampler = "
          f"'pk'); a data.sampler = 'random' epoch is floor(N / batch size) "
          f"steps: set data.epoch = 'images'.")
    return RandomSampler(pids, num_identities * num_instances, seed,
                         **process)
  cls = ChunkedIdentitySampler if epoch == "images" else IdentitySampler
  return cls(pids, num_identities, num_instances, seed, **process)


def make_sampler(data_config,
                 pids: np.ndarray,
                 seed: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Sampler:
  """The training sampler the ``data`` config section asks for.

  Reads ``data.sampler``, ``data.epoch``, ``data.num_identities`` and
  ``data.num_instances``; see ``build_sampler``.

  Args:
    data_config: the ``data`` section (a ConfigDict or any mapping).
    pids: (N,) identity of every training item (image, or tracklet).
    seed: non-negative int (the experiment's ``seed``).
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes sharing each global batch.
  """
  keys = ("sampler", "epoch", "num_identities", "num_instances")
  missing = [key for key in keys if key not in data_config]
  if missing:
    raise ValueError(
        f"The data config lacks {', '.join('data.' + k for k in missing)}; "
        f"add them to configs/common.py (data.sampler in {SAMPLERS}, "
        f"data.epoch in {EPOCHS}).")
  return build_sampler(
      pids, kind=data_config["sampler"], epoch=data_config["epoch"],
      num_identities=data_config["num_identities"],
      num_instances=data_config["num_instances"], seed=seed,
      process_index=process_index, process_count=process_count)
