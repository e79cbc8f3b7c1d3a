"""Query expansion: average QE (Chum et al., ICCV 2007) and alpha-QE
(Radenovic et al., TPAMI 2018, "Fine-tuning CNN image retrieval with no
human annotation", Sec. 4.2), streamed over query tiles.

On L2-normalised features (x_hat = x / max(||x||, eps)), each query is
replaced by

  q' = normalise(q_hat + sum_{i in top-k(q)} w_i g_hat_i),

top-k(q) its k most similar gallery items by cosine similarity s_i (ties:
lower gallery index first, ``lax.top_k``) and w_i = 1 (``"average"``) or
max(s_i, 0) ** alpha (``"alpha"``; the query's own weight is s = 1, 1 ** alpha
= 1). Readings: only the queries are expanded, from the gallery (no
database-side expansion of the gallery, which would cost a G x G pass); the
gallery comes back L2-normalised so that both metrics rank q' and g_hat by
cosine similarity (squared Euclidean = 2 - 2 cos). Negative similarities get
weight 0 in alpha-QE (a fractional power of a negative number is undefined).

One pass over the gallery per query tile ((tile, G) similarities, never the
(Q, G) matrix); the expanded queries are (Q, D).
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import distance

METHODS = ("none", "average", "alpha")


def check_options(method: str, top_k, alpha) -> None:
  if method not in METHODS:
    raise ValueError(f"eval.query_expansion must be one of {METHODS}, got "
                     f"{method!r}.")
  if not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise ValueError("eval.query_expansion_top_k must be a positive int, got "
                     f"{top_k!r}.")
  if not np.isfinite(alpha) or alpha < 0:
    raise ValueError("eval.query_expansion_alpha must be finite and >= 0, got "
                     f"{alpha!r}.")


@functools.partial(jax.jit, static_argnames=("top_k", "alpha", "eps"))
def _expand_tile(q, g_hat, *, top_k: int, alpha: float | None, eps: float):
  q_hat = distance.l2_normalize(q, eps)
  sim = lax.dot_general(q_hat, g_hat, (((1,), (1,)), ((), ())),
                        precision=lax.Precision.HIGHEST)
  s, idx = lax.top_k(sim, top_k)  # (B, k)
  w = jnp.ones_like(s) if alpha is None else jnp.maximum(s, 0.0) ** alpha
  expanded = q_hat + jnp.einsum("bk,bkd->bd", w, g_hat[idx],
                                precision=lax.Precision.HIGHEST)
  return distance.l2_normalize(expanded, eps)


def expand_queries(query_features, gallery_features, *, method: str,
                   top_k: int, alpha: float, eps: float = 1e-12,
                   query_tile: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """(expanded queries (Q, D), L2-normalised gallery (G, D)), float32 host.

  Args:
    query_features: (Q, D); gallery_features: (G, D).
    method: ``"none"`` (only the normalisation), ``"average"`` or
      ``"alpha"``.
    top_k: gallery items per query (clipped to G).
    alpha: the exponent of alpha-QE (ignored by ``"average"``).
    eps: lower bound of a norm.
    query_tile: queries per step.
  """
  check_options(method, top_k, alpha)
  q = np.asarray(query_features, np.float32)
  g_hat = distance.l2_normalize(jnp.asarray(gallery_features, jnp.float32),
                                eps)
  if method == "none":
    return np.asarray(distance.l2_normalize(jnp.asarray(q), eps)), np.asarray(
        g_hat)
  k = int(min(top_k, g_hat.shape[0]))
  tile = int(min(query_tile, q.shape[0]))
  out = np.empty_like(q)
  for lo in range(0, q.shape[0], tile):
    n = min(tile, q.shape[0] - lo)
    rows = q[lo:lo + n]
    if n < tile:  # One compiled shape.
      rows = np.pad(rows, ((0, tile - n), (0, 0)))
    out[lo:lo + n] = np.asarray(_expand_tile(
        rows, g_hat, top_k=k, alpha=None if method == "average" else
        float(alpha), eps=float(eps)))[:n]
  return out, np.asarray(g_hat)
