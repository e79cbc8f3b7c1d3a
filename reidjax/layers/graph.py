r"""CACE-Net's graph convolutions over the joint graph of an image pair.

Yu et al., "Devil's in the Details: Aligning Visual Clues for Conditional
Embedding in Person Re-Identification" (CACE-Net), 2020, Sec. 3.4.1,
Eq. 5-7 (paper reading), and the graph step of the authors' published
PyTorch code (``PairGraph``, the ``variant="official"`` model). The
adjacency comes from ``reidjax.layers.correspondence`` (Eq. 2-4);
equation -> code -> test map: ``docs/papers/cacenet.md``.

Paper reading
-------------
``normalized_adjacency``: A_hat = D^-1/2 A D^-1/2 with D = diag(row sums
of A). The paper prints D^-1/2 A D^+1/2 in Eq. 5-7; we read the +1/2 as a
typo for the symmetric normalisation (``shared/papers/NOTES.md``), which
Eq. 7's second line (the normalised Laplacian) also implies. A node whose
degree is <= ``eps`` (no edges, e.g. every importance of its row cut by
Eq. 4's ReLU) gets 1/sqrt(d) := 0, so its row and column of A_hat are 0
instead of NaN (and so are the gradients). For a non-symmetric A (Table 2's
top-k blocks) the row sums are used on both sides.

``GraphConvolution`` (x (..., 2N, D), A (..., 2N, 2N) -> (..., 2N, F)):

- ``mode="discrepancy"``, Eq. 7 (the paper's GCN):
  theta (I - A_hat) X = theta (X - A_hat X): each node minus the weighted
  mean of its neighbours, a "second derivative" of the node features.
- ``mode="smoothing"``, Eq. 6 (the "normal" GCN of Table 1):
  theta (I + A_hat) X.

theta is one dense layer D -> F applied per node (Eq. 6-7 have no bias;
``use_bias`` adds one). A zero-degree node gets theta x_i under both modes.

``GraphConvolution.pooled`` / ``propagated_half_means``: the conditional
feature is GAP + 1x1 conv of each image's half of the output (Sec. 3.4.2),
and theta and the mean are linear, so each half's mean of theta (I -/+ A_hat) X
is theta applied to (mean of that half's x_i) -/+ sum_j w_j x_j, with w_j the
half's mean of column j of A_hat: the same numbers as pooling the full
output, without the O(N^2 D) propagation or the (2N, D) concatenation.

Official code (``PairGraph``), read from TencentYoutuResearch/
PersonReID-YouReID (``core/layers.py``, ``models/cacenet.py``); our own
code, written from those facts. Its input is one map per ordered pair: the
two stage-4 maps concatenated along the *width*, (..., H, 2W, C) NHWC, the
graph's P = H * 2W nodes being all positions of both images. Steps:

1. y = conv1x1_y(x), g = conv1x1_g(x): bias-free, C -> C' = C // reduction
   (C / 16 in the code; at least 1).
2. y L2-normalised over channels per position (y / (||y|| + 1e-12)).
3. A = ReLU(y y^T) (P, P) with the diagonal zeroed (self-loops removed).
4. d = row sums of A; D = diag(d). The normaliser uses d where d > 1e-3 and
   1 elsewhere: N = diag(1 / sqrt(d')), and N is *detached* (stop_gradient):
   gradients flow through D - A but not through the normaliser.
5. L = N (D - A) N (P, P), the normalised Laplacian.
6. o = L^T g (P, C'), reshaped to (H, 2W, C'); o = conv1x1_o(o), bias-free
   C' -> C, its kernel initialised to zero; output x + o.

Where it differs from the paper:

- one graph over both images' positions alike: intra- and inter-image edges
  both come from the cosine similarity of a learned C/16-channel embedding
  (one bias-free 1x1 conv), not from Eq. 2-3's diagonal W and W';
- self-loops are removed (Eq. 4's diagonal S_ii stays in the paper);
- L = N (D - A) N equals Eq. 7's I - A_hat wherever d > 1e-3; a node with
  d <= 1e-3 gets the row d_i e_i - a_i (about 0) instead of the identity
  row, so it contributes ~nothing rather than x_i;
- the normaliser is detached, which Eq. 7 does not have;
- Eq. 7's theta is factored as g (C -> C/16) before the propagation and o
  (C/16 -> C) after it (a rank-C/16 theta, which commutes with L), without
  bias, zero-initialised so the step starts as the identity, plus the
  residual x + o (the paper's output is theta (I - A_hat) X alone);
- training builds every ordered pair of the batch (B^2 maps) and pools each
  half separately; the layer itself is equivariant to a permutation of the
  positions (1x1 convs and a graph on all nodes), so the (v | u) map's
  output is the (u | v) output with its halves swapped: one ordering per
  unordered pair suffices (tested).

Not confirmed from the code: whether the published numbers were produced
by exactly this stored version of ``PairGraph`` (the repository has several
versions of ``core/layers.py``; the one with ``PairGraph`` is the one
transcribed here).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("discrepancy", "smoothing")


def normalized_adjacency(a: jax.Array, eps: float = 1e-12) -> jax.Array:
  """D^-1/2 A D^-1/2 with degrees <= eps giving 0: (..., M, M) -> (..., M, M) float32."""
  a = jnp.asarray(a, jnp.float32)
  degree = a.sum(axis=-1)
  positive = degree > eps
  # The inner where keeps rsqrt (and its gradient) finite on guarded rows.
  inv_sqrt = jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, degree, 1.0)), 0.0)
  return inv_sqrt[..., :, None] * a * inv_sqrt[..., None, :]


def propagate(x: jax.Array, a: jax.Array, mode: str, eps: float = 1e-12) -> jax.Array:
  """(I -/+ A_hat) X before theta: x (..., M, D), a (..., M, M) -> (..., M, D) float32.

  ``mode="discrepancy"`` (Eq. 7) subtracts, ``"smoothing"`` (Eq. 6) adds.
  """
  if mode not in MODES:
    raise ValueError(f"graph convolution mode must be one of {MODES}, got {mode!r}.")
  x = jnp.asarray(x, jnp.float32)
  neighbours = jnp.einsum("...ij,...jd->...id", normalized_adjacency(a, eps), x)
  return x - neighbours if mode == "discrepancy" else x + neighbours


def propagated_half_means(x_u: jax.Array, x_v: jax.Array, a: jax.Array, mode: str,
                          eps: float = 1e-12) -> jax.Array:
  """Mean over each image's nodes of (I -/+ A_hat) [X_u; X_v], without forming the pair.

  Args:
    x_u, x_v: (..., N, D) each (leading dims broadcast, e.g. (Na, 1) and (1, Nb)).
    a: (..., 2N, 2N) joint adjacency, u's nodes first.
    mode: ``"discrepancy"`` (Eq. 7) or ``"smoothing"`` (Eq. 6).
    eps: degree guard of ``normalized_adjacency``.

  Returns:
    (..., 2, D) float32: row 0 the mean over u's N nodes, row 1 over v's.
    Because theta and global average pooling are linear, the pooled
    conditional feature theta(GAP(.)) needs only these: per pair O(N^2) for
    the column weights and O(N D) for the weighted sums, instead of the
    O(N^2 D) of propagating the whole map and the (..., 2N, D) concatenation.
  """
  if mode not in MODES:
    raise ValueError(f"graph convolution mode must be one of {MODES}, got {mode!r}.")
  n = x_u.shape[-2]
  x_u = jnp.asarray(x_u, jnp.float32)
  x_v = jnp.asarray(x_v, jnp.float32)
  a_hat = normalized_adjacency(a, eps)
  # weights[..., h, j] = mean over the nodes i of half h of A_hat[i, j].
  weights = jnp.stack([a_hat[..., :n, :].mean(axis=-2), a_hat[..., n:, :].mean(axis=-2)],
                      axis=-2)  # (..., 2, 2N)
  neighbours = (jnp.einsum("...hj,...jd->...hd", weights[..., :n], x_u)
                + jnp.einsum("...hj,...jd->...hd", weights[..., n:], x_v))
  self_means = jnp.stack(jnp.broadcast_arrays(x_u.mean(axis=-2), x_v.mean(axis=-2)), axis=-2)
  return self_means - neighbours if mode == "discrepancy" else self_means + neighbours


class GraphConvolution(nn.Module):
  """Eq. 7 (or Eq. 6) over a joint graph (module docstring).

  Attributes:
    mode: ``"discrepancy"`` (Eq. 7) or ``"smoothing"`` (Eq. 6).
    features: F, output channels of theta.
    use_bias: a bias in theta (not in the paper).
    eps: degrees <= eps count as zero (see ``normalized_adjacency``).
    dtype: computation dtype of theta (the propagation runs in float32).

  Parameters: ``theta/kernel`` (D, F) (and ``theta/bias`` (F,) with ``use_bias``).
  """

  mode: str
  features: int
  use_bias: bool = False
  eps: float = 1e-12
  dtype: Any = jnp.float32

  def setup(self):
    if self.mode not in MODES:
      raise ValueError(f"graph convolution mode must be one of {MODES}, got {self.mode!r}.")
    self.theta = nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype,
                          param_dtype=jnp.float32)

  def __call__(self, x: jax.Array, a: jax.Array) -> jax.Array:
    """x (..., M, D) node features, a (..., M, M) adjacency -> (..., M, F)."""
    if x.ndim < 2 or a.shape[-2:] != (x.shape[-2], x.shape[-2]):
      raise ValueError(f"GraphConvolution expects x (..., M, D) and a (..., M, M); "
                       f"got x {x.shape} and a {a.shape}.")
    return self.theta(propagate(x, a, self.mode, self.eps))

  def pooled(self, x_u: jax.Array, x_v: jax.Array, a: jax.Array) -> jax.Array:
    """Each image's mean of ``__call__``'s output: (..., N, D) x2, (..., 2N, 2N) -> (..., 2, F).

    Equals ``__call__(concat([x_u, x_v], -2), a)`` averaged over each half
    (theta is linear), at a fraction of the cost (``propagated_half_means``).
    """
    if a.shape[-2:] != (x_u.shape[-2] + x_v.shape[-2],) * 2 or x_u.shape[-2] != x_v.shape[-2]:
      raise ValueError(f"GraphConvolution.pooled expects x_u, x_v (..., N, D) and a "
                       f"(..., 2N, 2N); got {x_u.shape}, {x_v.shape} and {a.shape}.")
    return self.theta(propagated_half_means(x_u, x_v, a, self.mode, self.eps))


def pair_graph_laplacian(y: jax.Array, degree_floor: float = 1e-3,
                         detach_normalizer: bool = True) -> jax.Array:
  """Steps 2-5 of ``PairGraph``: y (B, P, C') -> L (B, P, P) float32."""
  y = jnp.asarray(y, jnp.float32)
  y = y / (jnp.linalg.norm(y, axis=-1, keepdims=True) + 1e-12)
  p = y.shape[-2]
  adjacency = jax.nn.relu(jnp.einsum("bic,bjc->bij", y, y))
  adjacency = adjacency * (1.0 - jnp.eye(p, dtype=jnp.float32))
  degree = adjacency.sum(axis=-1)  # (B, P)
  normalizer = jax.lax.rsqrt(jnp.where(degree > degree_floor, degree, 1.0))
  if detach_normalizer:
    normalizer = jax.lax.stop_gradient(normalizer)
  laplacian = degree[..., None] * jnp.eye(p, dtype=jnp.float32) - adjacency
  return normalizer[..., :, None] * laplacian * normalizer[..., None, :]


class PairGraph(nn.Module):
  """The official code's graph step (module docstring, steps 1-6).

  Attributes:
    reduction: embedding width C' = max(C // reduction, 1) (16 in the code).
    degree_floor: degrees <= this use 1 in the normaliser (1e-3 in the code).
    detach_normalizer: stop the gradient through D^-1/2 (True in the code).
    dtype: computation dtype of the 1x1 convs (the graph runs in float32).
  """

  reduction: int = 16
  degree_floor: float = 1e-3
  detach_normalizer: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., H, 2W, C): a pair's maps side by side -> (..., H, 2W, C)."""
    if x.ndim < 3:
      raise ValueError(f"PairGraph expects a (..., H, 2W, C) map, got shape {x.shape}.")
    *lead, height, width, channels = x.shape
    inner = max(channels // self.reduction, 1)
    flat = x.reshape((-1, height, width, channels))

    def conv(features, name, init=nn.initializers.lecun_normal()):
      return nn.Conv(features, (1, 1), use_bias=False, dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=init, name=name)

    y = conv(inner, "embed_y")(flat).reshape(flat.shape[0], -1, inner)
    g = conv(inner, "embed_g")(flat).reshape(flat.shape[0], -1, inner)
    laplacian = pair_graph_laplacian(y, self.degree_floor, self.detach_normalizer)
    o = jnp.einsum("bij,bic->bjc", laplacian, g.astype(jnp.float32))
    o = o.reshape(flat.shape[0], height, width, inner).astype(self.dtype)
    o = conv(channels, "output", nn.initializers.zeros)(o)
    return (flat + o).reshape(tuple(lead) + (height, width, channels))
