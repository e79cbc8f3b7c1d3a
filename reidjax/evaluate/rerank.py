"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), jitted.

"Re-ranking Person Re-identification with k-reciprocal Encoding": every one
of the P = Q + G items is a probe; with d the original distance (each column
of the (P, P) matrix divided by its maximum, then transposed, as the authors'
code), N(p, k) the k + 1 nearest items of p and R(p, k) = {g in N(p, k) :
p in N(g, k)} (Eq. 3):

1. R*(p, k1) = R(p, k1) u R(c, k1/2) for each c in R(p, k1) whose
   |R(c, k1/2) n R(p, k1)| > 2/3 |R(c, k1/2)| (Eq. 6; k1/2 rounded half to
   even, as ``np.around``);
2. V_p,g = exp(-d(p, g)) on R*(p, k1), L1-normalised (Eq. 7);
3. local query expansion: V_p <- mean of V over the k2 nearest items of p
   (Eq. 11);
4. Jaccard distance d_J(p, g) = 1 - m / (2 - m), m = sum_k min(V_p,k, V_g,k)
   (Eq. 10 with rows summing to 1);
5. final = (1 - lambda) d_J + lambda d (Eq. 12); the (Q, G) block is returned.

Defaults are the paper's k1 = 20, k2 = 6, lambda = 0.3. The input distances
are used as given (the authors' code squares its input first: pass d**2 to
reproduce it). Neighbour lists are ``lax.top_k`` (ties: lower index first, a
stable argsort). ``numpy_reference.k_reciprocal_rerank`` is the loop version
this matches.

Memory is O(P^2): the (P, P) distance, the weights V, their expansion and its
transpose are dense, about ``memory_bytes(P)`` = 24 P^2 bytes at peak
(Market-1501, P = 19,281: 8.9 GB). ``k_reciprocal_rerank`` estimates it first
and raises ``MemoryError`` with the numbers when it exceeds the memory
available to the backend (or when P > ``max_items``). Time: the Jaccard step
is Q x P x S (S = the largest support of an expanded V row, a few hundred).
``rerank_sparse`` is the same re-ranking in memory linear in P (MSMT17).
"""

from __future__ import annotations

import functools
import os

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import distance

_BYTES_PER_ITEM_PAIR = 24


def memory_bytes(num_items: int) -> int:
  """Estimated peak bytes of re-ranking P = num_items items."""
  return _BYTES_PER_ITEM_PAIR * int(num_items) ** 2


def available_bytes() -> int | None:
  """Free memory of the default device (host RAM on CPU), None if unknown."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):
    return None


def check_fits(num_items: int, max_items: int | None = None) -> None:
  """Raises MemoryError if re-ranking num_items items would not fit."""
  need = memory_bytes(num_items)
  if max_items is not None and num_items > max_items:
    raise MemoryError(
        f"k-reciprocal re-ranking of {num_items} items (queries + gallery) "
        f"exceeds max_items={max_items}; it needs ~{need / 2**30:.1f} GiB "
        "(O((Q+G)^2)). Raise max_items, or re-rank a subset.")
  free = available_bytes()
  if free is not None and need > free:
    raise MemoryError(
        f"k-reciprocal re-ranking of {num_items} items (queries + gallery) "
        f"needs ~{need / 2**30:.1f} GiB (24 bytes x (Q+G)^2) but only "
        f"{free / 2**30:.1f} GiB are available on {jax.devices()[0].platform}."
        " Re-rank a subset of the gallery, or use a machine with more memory.")


def check_parameters(k1, k2, lambda_value, num_items: int) -> None:
  """Raises ValueError unless 1 <= k2 <= k1 + 1 <= P and 0 <= lambda <= 1."""
  if not (isinstance(k1, (int, np.integer)) and isinstance(k2, (int, np.integer))
          and 1 <= k2 <= k1 + 1 and k1 + 1 <= num_items):
    raise ValueError(f"Need integers 1 <= k2 <= k1 + 1 <= Q + G = {num_items}, "
                     f"got k1={k1!r}, k2={k2!r}.")
  if not 0.0 <= lambda_value <= 1.0:
    raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}.")


@functools.partial(jax.jit, static_argnames=("k1", "k2"))
def _expanded_weights(original, *, k1: int, k2: int):
  """(P, P) original -> normalised distance d and expanded weights V."""
  num = original.shape[0]
  dist = (original / jnp.max(original, axis=0)).T
  _, rank = lax.top_k(-dist, k1 + 1)  # (P, k1 + 1), ties: lower index first.
  half = int(np.around(k1 / 2.0))
  items = jnp.arange(num)[:, None]
  fwd1 = rank  # N(p, k1)
  fwd2 = rank[:, :half + 1]  # N(p, k1 / 2)
  # p in N(g, k) for each g in N(p, k): reciprocal.
  rec1 = jnp.any(fwd1[fwd1] == items[:, :, None], axis=2)  # (P, k1 + 1)
  rec2 = jnp.any(fwd2[fwd2] == items[:, :, None], axis=2)  # (P, h + 1)
  # R(c, k1/2) of each candidate c = fwd1[p, a].
  cand = fwd2[fwd1]  # (P, k1 + 1, h + 1)
  cand_valid = rec2[fwd1]
  in_r1 = jnp.any((cand[..., None] == fwd1[:, None, None, :])
                  & rec1[:, None, None, :], axis=3)
  overlap = jnp.sum(in_r1 & cand_valid, axis=2)
  size = jnp.sum(cand_valid, axis=2)
  accept = rec1 & (3 * overlap > 2 * size)  # |R(c) n R(p)| > 2/3 |R(c)|
  members = jnp.concatenate(
      [fwd1, cand.reshape(num, -1)], axis=1)  # (P, W)
  valid = jnp.concatenate(
      [rec1, (cand_valid & accept[:, :, None]).reshape(num, -1)], axis=1)
  indicator = jnp.zeros((num, num), jnp.bool_).at[
      jnp.broadcast_to(items, members.shape),
      jnp.where(valid, members, num)].set(True, mode="drop")
  weight = jnp.where(indicator, jnp.exp(-dist), 0.0)
  v = weight / jnp.sum(weight, axis=1, keepdims=True)
  if k2 != 1:
    acc = v[rank[:, 0]]
    for r in range(1, k2):
      acc = acc + v[rank[:, r]]
    v = acc / k2
  return dist, v


@functools.partial(jax.jit, static_argnames=("num_query", "support"))
def _jaccard_final(dist, v, lambda_value, *, num_query: int, support: int):
  """(Q, G) final distances from d and V (only queries' rows)."""
  num = v.shape[0]
  vt = v.T

  def one(p):
    row = v[p]
    (cols,) = jnp.nonzero(row > 0, size=support, fill_value=num)
    vals = jnp.take(row, cols, mode="fill", fill_value=0.0)
    other = jnp.take(vt, cols, axis=0, mode="fill", fill_value=0.0)  # (S, P)
    common = jnp.sum(jnp.minimum(vals[:, None], other), axis=0)
    return 1.0 - common / (2.0 - common)

  jaccard = lax.map(one, jnp.arange(num_query))
  final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_query]
  return final[:, num_query:]


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, *, k1: int = 20,
                        k2: int = 6, lambda_value: float = 0.3,
                        max_items: int | None = None) -> np.ndarray:
  """Re-ranked (Q, G) distances (see module doc).

  Args:
    q_g_dist: (Q, G) query-gallery distances.
    q_q_dist: (Q, Q) query-query distances.
    g_g_dist: (G, G) gallery-gallery distances.
    k1, k2, lambda_value: the paper's parameters.
    max_items: refuse (MemoryError) above this many items Q + G.

  Returns:
    (Q, G) float32 host array; rank it with ``metrics.evaluate_ranking``.

  Raises:
    MemoryError: the O((Q+G)^2) buffers would not fit.
    ValueError: bad shapes or parameters.
  """
  q_g = np.asarray(q_g_dist, np.float32)
  q_q = np.asarray(q_q_dist, np.float32)
  g_g = np.asarray(g_g_dist, np.float32)
  if q_g.ndim != 2 or q_q.shape != (q_g.shape[0],) * 2 or g_g.shape != (
      q_g.shape[1],) * 2:
    raise ValueError(
        "Expected q_g (Q, G), q_q (Q, Q) and g_g (G, G), got "
        f"{q_g.shape}, {q_q.shape} and {g_g.shape}.")
  num_q, num_g = q_g.shape
  num = num_q + num_g
  check_parameters(k1, k2, lambda_value, num)
  check_fits(num, max_items)
  original = np.block([[q_q, q_g], [q_g.T, g_g]])
  dist, v = _expanded_weights(jnp.asarray(original), k1=k1, k2=k2)
  del original
  support = int(jnp.max(jnp.sum(v[:num_q] > 0, axis=1)))
  support = 1 << max(support - 1, 0).bit_length()  # Few compiled shapes.
  final = _jaccard_final(dist, v, jnp.float32(lambda_value),
                         num_query=num_q, support=min(support, num))
  return np.asarray(final)


def k_reciprocal_rerank_features(query_features, gallery_features, *,
                                 metric: str = "euclidean",
                                 normalize: bool = False, **kwargs
                                 ) -> np.ndarray:
  """``k_reciprocal_rerank`` of the ``distance.pairwise_distance`` matrices.

  Args:
    query_features: (Q, D); gallery_features: (G, D).
    metric, normalize: as ``distance.pairwise_distance``.
    **kwargs: k1, k2, lambda_value, max_items.

  Returns:
    (Q, G) float32 re-ranked distances.
  """
  q = np.asarray(query_features)
  g = np.asarray(gallery_features)
  check_fits(q.shape[0] + g.shape[0], kwargs.get("max_items"))
  both = np.concatenate([q, g])
  full = np.asarray(distance.pairwise_distance(both, both, metric=metric,
                                               normalize=normalize))
  num_q = q.shape[0]
  return k_reciprocal_rerank(full[:num_q, num_q:], full[:num_q, :num_q],
                             full[num_q:, num_q:], **kwargs)
