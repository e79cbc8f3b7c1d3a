r"""Correspondence attention of CACE-Net: the joint graph of an image pair.

Yu, Jiang, Gong, Zhao, Guo, Zheng, Zheng, Sun, "Devil's in the Details:
Aligning Visual Clues for Conditional Embedding in Person
Re-Identification" (CACE-Net), 2020, Sec. 3.3, Eq. 2-4, and the alignment
alternatives of Table 2. The GCN that reads the graph is
``reidjax.layers.graph``; equation -> code -> test map:
``docs/papers/cacenet.md``.

A feature map X (H, W, D) is read as N = H W node features, X_hat (N, D).
For an image pair (u, v):

- intra-image importance (Eq. 2): S_u = X_u W X_u^T, (N, N);
- inter-image importance (Eq. 3): S'_uv = X_u W' X_v^T, (N, N);
- joint adjacency (Eq. 4): A = ReLU([[S_u, S'_uv], [S'_vu, S_v]]), (2N, 2N):
  rows and columns 0..N-1 are u's positions, N..2N-1 are v's.

W and W' are *diagonal* (one learnable weight per channel), stored as
vectors of shape (D,) (``intra/weight`` and ``inter/weight``). Because W'
is diagonal, S'_vu = S'_uv^T and the joint matrix is symmetric.

Initialisation (the paper is silent): W = W' = I (all ones), so training
starts from the plain Gram matrices S_u = X_u X_u^T, S'_uv = X_u X_v^T: a
graph weighted by feature similarity, with intra- and inter-image edges on
the same scale. The overall scale of the init is immaterial to the GCN,
because the symmetric normalisation D^-1/2 A D^-1/2 is invariant to a
common positive scale of A; only the relative channel weights (and the
balance of W against W') are learned. ``weight_init`` changes it.

Per-image work: S_u depends on u alone, so a pair model computes it once
per image (``intra_block`` / ``intra_importance``) and only S'_uv per pair
(``inter_block`` / ``inter_importance``), then ``joint_adjacency``. All
functions take any leading batch dims and broadcast them, so a (Na, 1, N, D)
query stack against a (1, Nb, N, D) gallery stack gives the (Na, Nb) grid.

Table 1 and Table 2 switches:

- ``cross_image=False``: the individual-only graph of Table 1
  ("Individual-GCN"): the cross-image blocks are zero, so each image's half
  of the GCN output depends on that image only.
- ``adjacency`` chooses the cross-image blocks (Table 2's "alignment
  strategy"): ``"correspondence"`` (Eq. 3, the paper's method);
  ``"fully_connected"`` (every position of u linked to every position of v,
  weight 1); ``"top_k"`` (Sec. 3.3 / Table 2's similarity-based alignment,
  after AlignedReID: each position linked, weight 1, to the ``top_k``
  positions of the other image with the highest cosine similarity; row i of
  the u->v block and row j of the v->u block each hold exactly k ones, so
  this block matrix need not be symmetric); ``"part"`` (same-position
  alignment, like PCB: position i of u linked, weight 1, to position i of v
  only). Semantic alignment needs a human parser and is left out.
  Reading (the paper does not say what the alternatives do inside each
  image): the alternatives replace only the cross-image blocks; the
  intra-image blocks stay Eq. 2's learned S_u, S_v, since Table 2 varies the
  alignment between the images. W' then does not exist.

Everything is computed in float32 whatever the input dtype (the Gram
matrices of D = 2048 channels are sums of 2048 products).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ADJACENCIES = ("correspondence", "fully_connected", "top_k", "part")


def intra_importance(x: jax.Array, w: jax.Array) -> jax.Array:
  """Eq. 2, S = X diag(w) X^T: x (..., N, D), w (D,) -> (..., N, N) float32."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.einsum("...nd,...md->...nm", x * w.astype(jnp.float32), x)


def inter_importance(x_u: jax.Array, x_v: jax.Array, w_prime: jax.Array) -> jax.Array:
  """Eq. 3, S'_uv = X_u diag(w') X_v^T: (..., N, D) x2, (D,) -> (..., N, N) float32.

  Leading dims of x_u and x_v broadcast against each other.
  """
  x_u = jnp.asarray(x_u, jnp.float32)
  x_v = jnp.asarray(x_v, jnp.float32)
  return jnp.einsum("...nd,...md->...nm", x_u * w_prime.astype(jnp.float32), x_v)


def joint_adjacency(s_u: jax.Array, s_uv: jax.Array, s_vu: jax.Array,
                    s_v: jax.Array) -> jax.Array:
  """Eq. 4: ReLU([[S_u, S'_uv], [S'_vu, S_v]]), four (..., N, N) -> (..., 2N, 2N).

  Leading dims broadcast (e.g. S_u (Na, 1, N, N) with S_v (1, Nb, N, N)).
  """
  s_u, s_uv, s_vu, s_v = jnp.broadcast_arrays(s_u, s_uv, s_vu, s_v)
  top = jnp.concatenate([s_u, s_uv], axis=-1)
  bottom = jnp.concatenate([s_vu, s_v], axis=-1)
  return jax.nn.relu(jnp.concatenate([top, bottom], axis=-2))


def cosine_similarity(x_u: jax.Array, x_v: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Cosine similarity of every position pair: (..., N, D) x2 -> (..., N, M)."""
  def unit(x):
    x = jnp.asarray(x, jnp.float32)
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)
  return jnp.einsum("...nd,...md->...nm", unit(x_u), unit(x_v))


def top_k_mask(similarity: jax.Array, k: int) -> jax.Array:
  """1 at each row's k largest entries, else 0: (..., N, M) -> (..., N, M) float32.

  Exactly k ones per row (ties broken by position, as ``jax.lax.top_k``).
  """
  _, index = jax.lax.top_k(similarity, k)
  return jax.nn.one_hot(index, similarity.shape[-1], dtype=jnp.float32).sum(axis=-2)


class DiagonalBilinear(nn.Module):
  """x_a diag(w) x_b^T with a learnable w (D,): (..., N, D) x2 -> (..., N, M)."""

  weight_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x_a: jax.Array, x_b: jax.Array) -> jax.Array:
    w = self.param("weight", self.weight_init, (x_a.shape[-1],), jnp.float32)
    return inter_importance(x_a, x_b, w)


class CorrespondenceAttention(nn.Module):
  """The joint adjacency of an image pair (module docstring: Eq. 2-4, Table 1-2).

  Attributes:
    adjacency: cross-image blocks, one of ``ADJACENCIES``.
    top_k: k of ``adjacency="top_k"`` (1 <= k <= N); unused otherwise.
    cross_image: False gives the individual-only graph (zero cross blocks).
    weight_init: initialiser of W and W' (diagonals, shape (D,)).

  Parameters: ``intra/weight`` (D,) = diag(W); ``inter/weight`` (D,) =
  diag(W'), only with ``adjacency="correspondence"`` and ``cross_image``.
  """

  adjacency: str = "correspondence"
  top_k: int = 1
  cross_image: bool = True
  weight_init: Callable = nn.initializers.ones

  def setup(self):
    if self.adjacency not in ADJACENCIES:
      raise ValueError(f"CorrespondenceAttention adjacency must be one of "
                       f"{ADJACENCIES}, got {self.adjacency!r}.")
    self.intra = DiagonalBilinear(self.weight_init)
    self.inter = DiagonalBilinear(self.weight_init)

  @property
  def learns_inter(self) -> bool:
    """Whether W' exists (the cross blocks are Eq. 3's)."""
    return self.cross_image and self.adjacency == "correspondence"

  def intra_block(self, x: jax.Array) -> jax.Array:
    """S = X W X^T (Eq. 2) of one image's map: (..., N, D) -> (..., N, N) float32."""
    return self.intra(x, x)

  def inter_block(self, x_u: jax.Array, x_v: jax.Array) -> jax.Array:
    """The u -> v cross block: (..., N, D) x2 -> (..., N, N) float32.

    Eq. 3's S'_uv with ``adjacency="correspondence"``, else Table 2's
    choice; zeros when ``cross_image`` is False. The v -> u block is
    ``inter_block(x_v, x_u)`` (for Eq. 3, the transpose of this one).
    """
    shape = jnp.broadcast_shapes(x_u.shape[:-2], x_v.shape[:-2]) + (
        x_u.shape[-2], x_v.shape[-2])
    if not self.cross_image:
      return jnp.zeros(shape, jnp.float32)
    if self.adjacency == "correspondence":
      return self.inter(x_u, x_v)
    if self.adjacency == "fully_connected":
      return jnp.ones(shape, jnp.float32)
    if self.adjacency == "part":
      if x_u.shape[-2] != x_v.shape[-2]:
        raise ValueError(
            "part alignment links position i of u to position i of v, so both "
            f"maps need the same number of positions; got {x_u.shape[-2]} and "
            f"{x_v.shape[-2]}.")
      return jnp.broadcast_to(jnp.eye(x_u.shape[-2], dtype=jnp.float32), shape)
    # top_k
    if not 1 <= self.top_k <= x_v.shape[-2]:
      raise ValueError(f"CorrespondenceAttention top_k must be in [1, N = "
                       f"{x_v.shape[-2]}] (positions of the other image), got "
                       f"{self.top_k}.")
    return top_k_mask(cosine_similarity(x_u, x_v), self.top_k)

  def joint(self, s_u: jax.Array, s_v: jax.Array, x_u: jax.Array,
            x_v: jax.Array) -> jax.Array:
    """Eq. 4 from precomputed per-image blocks: -> (..., 2N, 2N) float32.

    Args:
      s_u, s_v: ``intra_block`` of each image, (..., N, N).
      x_u, x_v: the maps (..., N, D), for the cross blocks.
    """
    s_uv = self.inter_block(x_u, x_v)
    if self.learns_inter:
      s_vu = jnp.swapaxes(s_uv, -1, -2)  # W' diagonal: S'_vu = S'_uv^T.
    else:
      s_vu = self.inter_block(x_v, x_u)
    return joint_adjacency(s_u, s_uv, s_vu, s_v)

  def __call__(self, x_u: jax.Array, x_v: jax.Array) -> jax.Array:
    """A (Eq. 4) of the pair: x_u, x_v (..., N, D) -> (..., 2N, 2N) float32."""
    if x_u.ndim < 2 or x_v.ndim < 2 or x_u.shape[-1] != x_v.shape[-1]:
      raise ValueError("CorrespondenceAttention expects two (..., N, D) maps with "
                       f"the same D, got shapes {x_u.shape} and {x_v.shape}.")
    return self.joint(self.intra_block(x_u), self.intra_block(x_v), x_u, x_v)
