"""DuATM's dual attention block, sequence distance and its own losses.

Si et al., "Dual Attention Matching Network for Context-Aware Feature
Sequence based Person Re-Identification", CVPR 2018, Sec. 3.2 (the block)
and Sec. 3.3 (the losses that only DuATM uses):

- Eq. 1, the transform layer: q_a^i = ReLU(BN(W x_a^i + b)), W a D x D
  matrix (q must have x's dimension D: it is dotted with x in Eq. 2).
- Eq. 2-3, the attention layer:
    x_bar_a^i = sum_m softmax_m(<q_a^i, x_a^m>) x_a^m   (intra-sequence),
    x_hat_b^i = sum_n softmax_n(<q_a^i, x_b^n>) x_b^n   (inter-sequence).
- Eq. 4-5, the distance: d_a^i = ||x_bar_a^i - x_hat_b^i||_2 and, with the
  roles of a and b swapped, d_b^j = ||x_bar_b^j - x_hat_a^j||_2;
    ||X_a - X_b||_M = 1/(2 S_a) sum_i d_a^i + 1/(2 S_b) sum_j d_b^j.
- Eq. 7, ``decorrelation_loss``: (1/N^2) ||I - X^T X||_F^2 per sequence.
- Eq. 8, ``random_convex_weights`` / ``random_convex_combination``: the
  training-time pooling z = sum_i w_i x_i that feeds the ID classifier.
- Eq. 6 (batch-hard triplet, margin 0.2, over the P x V batch) is the
  shared ``reidjax.losses.batch_hard_triplet_loss(None, labels, margin=0.2,
  distances=DualAttention()(sequences, mask, train=True))``.

Readings of what the paper leaves open:

- Eq. 3 weighs the *input* vectors x (not the filters q) and has no residual
  term: x_bar and x_hat are plain convex combinations of x. The intra sum
  runs over all positions m including m = i, and the logits are the raw
  inner products (no 1/sqrt(D) temperature; the extractor L2-normalises x,
  Sec. 3.1, which bounds them). Normalising x is the extractor's job, not
  this layer's.
- The filter q_a^i is computed from a's own vector and used for *both*
  attentions, as Fig. 4(b) draws; the b -> a direction uses q_b^j.
- Consequence: for identical sequences x_bar_a^i = x_hat_a^i, so the
  distance of a sequence to itself is exactly 0 (up to round-off here).
- BatchNorm (Eq. 1) normalises each of the D channels over every valid
  position of every sequence in the batch; padded positions of variable
  length (video) sequences are excluded from the statistics (masked mean and
  biased variance, as Flax computes them), and their q is set to 0.
- Masks: padded positions are zeroed on entry (so garbage, even NaN, never
  reaches a matmul), never attended to (their logits are -inf before the
  softmax) and never averaged (S_a in Eq. 5 is the number of valid
  positions). A sequence needs at least one valid position; an all-padding
  sequence yields finite but meaningless distances.
- Ablations (Table 2): the paper names "Intra", "Inter" and "AvePool" but
  does not define them. Reading: switching the intra-sequence attention off
  means no refinement, x_bar_a^i = x_a^i; switching the inter-sequence
  attention off means no alignment, so there is no per-position counterpart
  and the (refined) sequences are compared as the baseline compares them,
  by the Euclidean distance of their average-pooled vectors. Hence
    intra=True,  inter=True:  DuATM (Eq. 1-5);
    intra=False, inter=True:  d_a^i = ||x_a^i - x_hat_b^i||, Eq. 5;
    intra=True,  inter=False: ||mean_i x_bar_a^i - mean_j x_bar_b^j||;
    intra=False, inter=False: ||mean_i x_a^i - mean_j x_b^j||, the paper's
                              AvePool baseline.
  A position-wise intra-only comparison (x_bar_a^i vs x_bar_b^i) was
  rejected: it imposes the fixed correspondence the paper argues against
  and is undefined for sequences of different lengths.

Structure: work that depends on one sequence (q, x_bar, the Gram matrix
X X^T, pooled vectors) is done once per sequence by ``DualAttention.prepare``;
``pair_distance`` is a parameter-free function of two prepared tiles built
from large matmuls. It never materialises the (Na, Nb, S, D) aligned vectors
x_hat; it expands Eq. 4 instead,
    (d_a^i)^2 = |x_bar_a^i|^2 - 2 sum_n w_in <x_bar_a^i, x_b^n>
                + sum_{n,m} w_in w_im <x_b^n, x_b^m>,
with w the inter-attention weights, so the per-pair work is one GEMM of the
stacked [q_a; x_bar_a] rows against x_b's rows, an (S x S') by (S' x S')
product with b's Gram matrix, and elementwise softmax / reductions, done in
blocks of (block_a x block_b) pairs that stay in cache. The expansion
subtracts nearly equal numbers: in float32 its absolute error on d^2 is
~1e-7 |x|^2, so with unit-norm x distances below ~1e-3 are round-off (a
sequence's distance to itself comes out ~1e-4, not 0).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

# Squared distances are clipped to this before the square root: sqrt has an
# infinite derivative at 0, and a sequence's distance to itself is 0.
_SQRT_EPSILON = 1e-12
# Logit of padded positions. Finite (unlike -inf) so that a row with no valid
# position gives uniform weights instead of NaN.
_MASKED_LOGIT = -1e30

Precision = jax.lax.Precision | str | None


class SequenceItems(NamedTuple):
  """Per-sequence quantities for ``pair_distance`` (a pytree).

  Attributes:
    x: (N, S, D) the input sequence, zero at padded positions.
    q: (N, S, D) the transform-layer filters q (Eq. 1), zero at padding.
    x_bar: (N, S, D) the intra-refined vectors (Eq. 3), or x itself when the
      intra-sequence attention is off; zero at padding.
    x_bar_sq: (N, S) |x_bar^i|^2.
    gram: (N, S, S) <x^n, x^m>, for |x_hat|^2 in the expanded Eq. 4.
    pooled: (N, D) mean of x_bar over valid positions (the inter-off
      comparison; also a global vector for a first-stage ranking).
    mask: (N, S) bool, True at valid positions.
    length: (N,) float number of valid positions (at least 1).
  """

  x: jax.Array
  q: jax.Array
  x_bar: jax.Array
  x_bar_sq: jax.Array
  gram: jax.Array
  pooled: jax.Array
  mask: jax.Array
  length: jax.Array


# Pairs per block of ``pair_distance`` (speed only): 16 x 32 and 32 x 16 were
# the fastest of 8-32 x 16-128 on a 2-core XLA:CPU at S = 32, D = 256 (0.77
# of the f32 matmul rate; 16 x 64: 0.71, 8 x 128: 0.52).
BLOCK_A = 16
BLOCK_B = 32


def _safe_sqrt(squared: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.maximum(squared, _SQRT_EPSILON))


def _masked_softmax(logits: jax.Array, valid: jax.Array) -> jax.Array:
  """Softmax over the last axis restricted to ``valid`` entries."""
  logits = jnp.where(valid, logits, _MASKED_LOGIT)
  logits = logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  weights = jnp.exp(logits)
  return weights / weights.sum(axis=-1, keepdims=True)


class _Reference(NamedTuple):
  """The side whose positions i are refined and averaged (a in d_a^i)."""

  probes: jax.Array  # (N, 2S, D): [q; x_bar] stacked along positions.
  x_bar_sq: jax.Array  # (N, S)
  mask: jax.Array  # (N, S)
  length: jax.Array  # (N,)


class _Memory(NamedTuple):
  """The side attended to by the inter-sequence attention (b in x_hat_b^i)."""

  x: jax.Array  # (N, S', D)
  gram: jax.Array  # (N, S', S')
  mask: jax.Array  # (N, S')


def _as_reference(items: SequenceItems) -> _Reference:
  # [q; x_bar] share their right operand x_b: one GEMM gives both the
  # inter-attention logits <q_a^i, x_b^n> and <x_bar_a^i, x_b^n>.
  return _Reference(jnp.concatenate([items.q, items.x_bar], axis=1),
                    items.x_bar_sq, items.mask, items.length)


def _as_memory(items: SequenceItems) -> _Memory:
  return _Memory(items.x, items.gram, items.mask)


def _directed_distance(ref: _Reference, mem: _Memory,
                       precision: Precision) -> jax.Array:
  """(1/S_a) sum_i ||x_bar_a^i - x_hat_b^i||_2 for a in ``ref``, b in ``mem``.

  Returns (Na, Nb). The per-pair arrays are laid out (a, i, b, n) so that
  the first product is one plain GEMM, (Na*2S, D) by (D, Nb*S').
  """
  num_pos = ref.x_bar_sq.shape[1]
  scores = jnp.einsum("aid,bnd->aibn", ref.probes, mem.x, precision=precision)
  logits, cross = scores[:, :num_pos], scores[:, num_pos:]  # (Na, S, Nb, S')
  weights = _masked_softmax(logits, mem.mask[None, None])  # w_in of Eq. 3.
  # |x_hat_b^i|^2 = w_i^T K_b w_i with K_b = X_b X_b^T.
  weighted_gram = jnp.einsum("aibn,bnm->aibm", weights, mem.gram,
                             precision=precision)
  hat_sq = jnp.sum(weighted_gram * weights, axis=-1)  # (Na, S, Nb)
  bar_dot_hat = jnp.sum(weights * cross, axis=-1)  # <x_bar_a^i, x_hat_b^i>
  squared = ref.x_bar_sq[:, :, None] - 2.0 * bar_dot_hat + hat_sq
  distance = _safe_sqrt(squared)  # d_a^i of Eq. 4, (Na, S, Nb).
  distance = jnp.where(ref.mask[:, :, None], distance, 0.0)
  return distance.sum(axis=1) / ref.length[:, None]


def _split_in_blocks(tree, block: int | None):
  """Pads the leading axis to a multiple of ~block and reshapes to blocks.

  Returns (blocked tree or None when one block suffices, original size).
  Padding rows are zero with mask False and length 1, so they stay finite
  (a NaN there would poison gradients even though the rows are dropped).
  """
  size = tree.mask.shape[0]
  if block is None or size <= block:
    return None, size
  num_blocks = -(-size // block)
  block = -(-size // num_blocks)  # Even blocks: pad as little as possible.
  pad = num_blocks * block - size

  def pad_and_split(name, leaf):
    fill = 1.0 if name == "length" else 0
    leaf = jnp.concatenate(
        [leaf, jnp.full((pad,) + leaf.shape[1:], fill, leaf.dtype)])
    return leaf.reshape((num_blocks, block) + leaf.shape[1:])

  return type(tree)(*[pad_and_split(name, leaf)
                      for name, leaf in zip(tree._fields, tree)]), size


def _blocked_directed_distance(ref: _Reference, mem: _Memory,
                               precision: Precision, block_a: int | None,
                               block_b: int | None) -> jax.Array:
  """``_directed_distance`` computed block by block (same (Na, Nb) result).

  A block's per-pair arrays (block_a * S * block_b * S' floats each) stay
  in cache, and peak memory no longer grows with the tile: the elementwise
  softmax and reductions otherwise stream several (Na, S, Nb, S') arrays
  through main memory, e.g. 1 GB each for a 256 x 1024 tile at S = 32.
  """
  ref_blocks, num_a = _split_in_blocks(ref, block_a)
  mem_blocks, num_b = _split_in_blocks(mem, block_b)
  if ref_blocks is None and mem_blocks is None:
    return _directed_distance(ref, mem, precision)

  def row(ref_block):  # -> (ba, Nb padded to whole blocks)
    if mem_blocks is None:
      return _directed_distance(ref_block, mem, precision)
    out = jax.lax.map(
        lambda mem_block: _directed_distance(ref_block, mem_block, precision),
        mem_blocks)  # (num_blocks_b, ba, bb)
    return out.transpose(1, 0, 2).reshape(out.shape[1], -1)

  if ref_blocks is None:
    out = row(ref)
  else:
    out = jax.lax.map(row, ref_blocks)  # (num_blocks_a, ba, Nb')
    out = out.reshape(-1, out.shape[-1])
  return out[:num_a, :num_b]


def _pooled_distance(a: jax.Array, b: jax.Array,
                     precision: Precision) -> jax.Array:
  """(Na, D), (Nb, D) -> (Na, Nb) Euclidean distances."""
  squared = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
             - 2.0 * jnp.einsum("ad,bd->ab", a, b, precision=precision))
  return _safe_sqrt(squared)


def pair_distance(items_a: SequenceItems,
                  items_b: SequenceItems | None = None, *,
                  inter: bool = True,
                  precision: Precision = jax.lax.Precision.HIGHEST,
                  block_a: int | None = BLOCK_A,
                  block_b: int | None = BLOCK_B) -> jax.Array:
  """DuATM sequence distances of a tile against a tile (Eq. 2-5).

  Args:
    items_a: ``DualAttention.prepare`` output for Na sequences of length S.
    items_b: the same for Nb sequences of length S' (S' may differ from S);
      None for all pairs of ``items_a`` (then each direction's work is done
      once: the b -> a half of pair (a, b) is the a -> b half of (b, a)).
    inter: False for the no-alignment ablation (distance of the pooled,
      possibly refined, sequences).
    precision: matmul precision. HIGHEST by default because the expanded
      Eq. 4 subtracts nearly equal terms, which TF32/bf16 matmuls on GPU
      would swamp for small distances.
    block_a: work on blocks of this many a-sequences at a time (None: the
      whole tile at once). Changes speed and memory, not the result.
    block_b: the same for b.

  Returns:
    (Na, Nb) distances ||X_a - X_b||_M, symmetric: pair_distance(a, b) ==
    pair_distance(b, a).T.
  """
  if items_b is None:
    if not inter:
      return _pooled_distance(items_a.pooled, items_a.pooled, precision)
    directed = _blocked_directed_distance(
        _as_reference(items_a), _as_memory(items_a), precision, block_a,
        block_b)
    return 0.5 * directed + 0.5 * directed.T
  if not inter:
    return _pooled_distance(items_a.pooled, items_b.pooled, precision)
  chex.assert_equal(items_a.x.shape[-1], items_b.x.shape[-1])
  a_to_b = _blocked_directed_distance(
      _as_reference(items_a), _as_memory(items_b), precision, block_a, block_b)
  # Same block sizes in both directions: b plays the reference role here.
  b_to_a = _blocked_directed_distance(
      _as_reference(items_b), _as_memory(items_a), precision, block_a, block_b)
  return 0.5 * a_to_b + 0.5 * b_to_a.T


def pair_distance_flops(num_a: int, num_b: int, len_a: int, len_b: int,
                        dim: int, *, inter: bool = True) -> int:
  """Matmul FLOPs (2 per multiply-add) of ``pair_distance(a, b)``.

  Per ordered pair and direction a -> b: the [q_a; x_bar_a] by x_b^T GEMM,
  2 * (2 S) * S' * D, and the weights by Gram product, 2 * S * S'^2. With
  ``inter=False`` only the (Na, D) by (D, Nb) product of pooled vectors.
  Block padding, when a tile is not a multiple of the block, is not counted.
  """
  if not inter:
    return 2 * num_a * num_b * dim
  a_to_b = 4 * len_a * len_b * dim + 2 * len_a * len_b * len_b
  b_to_a = 4 * len_b * len_a * dim + 2 * len_b * len_a * len_a
  return num_a * num_b * (a_to_b + b_to_a)


class DualAttention(nn.Module):
  """DuATM's sequence matching module (dual attention block + distance).

  Use ``prepare`` once per sequence (it holds the only parameters: the
  transform layer W, b and its BatchNorm) and ``pair_distance`` on tiles of
  prepared sequences; ``__call__`` gives the all-pairs distance matrix of one
  batch (the triplet loss's input), ``distance`` a tile against a tile.

  Attributes:
    intra: use the intra-sequence attention (refinement); False: x_bar = x.
    inter: use the inter-sequence attention (alignment); False: compare the
      average-pooled sequences. Both False is the AvePool baseline.
    momentum: BatchNorm running-average momentum.
    epsilon: BatchNorm epsilon.
    precision: matmul precision of the attention and distances.
    block_a, block_b: ``pair_distance`` block sizes (speed/memory only).
  """

  intra: bool = True
  inter: bool = True
  momentum: float = 0.9
  epsilon: float = 1e-5
  precision: Precision = jax.lax.Precision.HIGHEST
  block_a: int | None = BLOCK_A
  block_b: int | None = BLOCK_B

  @nn.compact
  def prepare(self, x: jax.Array, mask: jax.Array | None = None,
              train: bool = False) -> SequenceItems:
    """Per-sequence work: filters q (Eq. 1), refined x_bar (Eq. 2-3, intra).

    Args:
      x: (N, S, D) feature sequences (L2-normalised by the extractor).
      mask: optional (N, S) bool, True at valid positions (default: all).
      train: use and update batch statistics in BatchNorm (then apply with
        ``mutable=["batch_stats"]``).

    Returns:
      ``SequenceItems`` for ``pair_distance``.
    """
    chex.assert_rank(x, 3)
    num, num_pos, dim = x.shape
    if mask is None:
      mask = jnp.ones((num, num_pos), bool)
    chex.assert_shape(mask, (num, num_pos))
    mask = mask.astype(bool)
    valid = mask[:, :, None]
    # where, not a product: padded entries may hold NaN or inf.
    x = jnp.where(valid, x.astype(jnp.float32), 0.0)
    length = jnp.maximum(mask.sum(axis=1), 1).astype(jnp.float32)

    if self.intra or self.inter:
      # Eq. 1. The Dense and BatchNorm are applied once per sequence here,
      # never per pair. BN statistics over valid positions only.
      h = nn.Dense(dim, name="transform")(x)
      h = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                       epsilon=self.epsilon, use_fast_variance=False,
                       name="norm")(h, mask=valid)
      q = jnp.where(valid, nn.relu(h), 0.0)
    else:
      q = jnp.zeros_like(x)

    gram = jnp.einsum("bnd,bmd->bnm", x, x, precision=self.precision)
    if self.intra:
      # Eq. 2-3 intra: softmax_m <q^i, x^m> over valid m, weights on x^m.
      intra_logits = jnp.einsum("bid,bmd->bim", q, x, precision=self.precision)
      intra_weights = _masked_softmax(intra_logits, mask[:, None, :])
      x_bar = jnp.einsum("bim,bmd->bid", intra_weights, x,
                         precision=self.precision)
      x_bar = jnp.where(valid, x_bar, 0.0)
    else:
      x_bar = x
    pooled = x_bar.sum(axis=1) / length[:, None]
    return SequenceItems(x=x, q=q, x_bar=x_bar,
                         x_bar_sq=jnp.sum(x_bar * x_bar, axis=-1), gram=gram,
                         pooled=pooled, mask=mask, length=length)

  def pair_distance(self, items_a: SequenceItems,
                    items_b: SequenceItems | None = None) -> jax.Array:
    """(Na, Nb) distances of two prepared tiles; see ``pair_distance``."""
    return pair_distance(items_a, items_b, inter=self.inter,
                         precision=self.precision, block_a=self.block_a,
                         block_b=self.block_b)

  def distance(self, x_a: jax.Array, x_b: jax.Array,
               mask_a: jax.Array | None = None,
               mask_b: jax.Array | None = None) -> jax.Array:
    """Inference: (Na, S, D) against (Nb, S', D) sequences -> (Na, Nb)."""
    return self.pair_distance(self.prepare(x_a, mask_a, train=False),
                              self.prepare(x_b, mask_b, train=False))

  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """All-pairs distances of one batch: (B, S, D) -> (B, B).

    In training, BatchNorm sees the whole batch once (not once per pair),
    and the matrix feeds ``losses.batch_hard_triplet_loss(distances=...)``.
    """
    items = self.prepare(x, mask, train=train)
    return self.pair_distance(items)


def attention_weights(items_a: SequenceItems, items_b: SequenceItems,
                      index_a: int, index_b: int, *, intra: bool = True,
                      precision: Precision = jax.lax.Precision.HIGHEST
                      ) -> dict[str, jax.Array]:
  """The attention maps and local distances of one pair (the paper's Fig. 8).

  For sequence ``index_a`` of tile a and ``index_b`` of tile b, computed
  directly from the prepared items (the aligned x_hat is formed, not the
  expansion ``pair_distance`` uses), for inspection and plots only.

  Args:
    items_a, items_b: ``DualAttention.prepare`` outputs (Na, S_a, D) and
      (Nb, S_b, D).
    index_a, index_b: which sequence of each tile.
    intra: whether the layer that prepared the items had the
      intra-sequence attention on (``DualAttention.intra``); SequenceItems
      does not record it. False: the intra maps are the identity (x_bar = x).
    precision: matmul precision.

  Returns:
    A dict of float32 arrays; rows and columns of padded positions are 0:
    intra_a (S_a, S_a): softmax_m <q_a^i, x_a^m> (row i, Eq. 2-3);
    inter_a (S_a, S_b): softmax_n <q_a^i, x_b^n>, a -> b;
    intra_b (S_b, S_b), inter_b (S_b, S_a): the same with a and b swapped;
    d_a (S_a,): ||x_bar_a^i - x_hat_b^i||_2 (Eq. 4), d_b (S_b,) likewise;
    mask_a (S_a,), mask_b (S_b,): bool, True at valid positions;
    distance (): mean_i d_a^i / 2 + mean_j d_b^j / 2 over valid positions
      (Eq. 5). With the inter-sequence attention off the layer compares
      pooled vectors instead, so inter_*, d_* and distance describe the
      alignment that layer does not use.
  """
  pick = lambda items, index: SequenceItems(*(leaf[index] for leaf in items))
  a, b = pick(items_a, index_a), pick(items_b, index_b)
  chex.assert_equal(a.x.shape[-1], b.x.shape[-1])

  def one_side(ref: SequenceItems, mem: SequenceItems):
    both = ref.mask[:, None] & ref.mask[None, :]
    if intra:
      logits = jnp.einsum("id,md->im", ref.q, ref.x, precision=precision)
      intra_w = _masked_softmax(logits, ref.mask[None, :])
    else:
      intra_w = jnp.eye(ref.mask.shape[0], dtype=jnp.float32)
    intra_w = jnp.where(both, intra_w, 0.0)
    logits = jnp.einsum("id,nd->in", ref.q, mem.x, precision=precision)
    inter_w = _masked_softmax(logits, mem.mask[None, :])
    inter_w = jnp.where(ref.mask[:, None] & mem.mask[None, :], inter_w, 0.0)
    x_hat = jnp.einsum("in,nd->id", inter_w, mem.x, precision=precision)
    local = jnp.linalg.norm(ref.x_bar - x_hat, axis=-1)  # Eq. 4
    local = jnp.where(ref.mask, local, 0.0)
    return intra_w, inter_w, local

  intra_a, inter_a, d_a = one_side(a, b)
  intra_b, inter_b, d_b = one_side(b, a)
  distance = 0.5 * d_a.sum() / a.length + 0.5 * d_b.sum() / b.length
  return {"intra_a": intra_a, "inter_a": inter_a, "intra_b": intra_b,
          "inter_b": inter_b, "d_a": d_a, "d_b": d_b, "mask_a": a.mask,
          "mask_b": b.mask, "distance": distance}


# Sec. 3.3: DuATM's own regulariser (Eq. 7) and pooling (Eq. 8).


def decorrelation_loss(sequences: jax.Array,
                       mask: jax.Array | None = None) -> jax.Array:
  """DuATM's de-correlation loss (Eq. 7), averaged over the batch.

  Per sequence, with X the D x N matrix of its N valid feature vectors:
  (1/N^2) ||I - X^T X||_F^2. Readings: N is the number of *valid* positions
  (padding of variable-length video sequences is dropped from X, so it
  neither adds rows/columns to X^T X nor counts in N); the loss is applied to
  the sequence as the matching module receives it (L2-normalised vectors,
  whose X^T X has a unit diagonal, so the loss penalises the cosines between
  positions).

  Args:
    sequences: (B, S, D) feature sequences.
    mask: optional (B, S) bool, True at valid positions.

  Returns:
    Scalar loss.
  """
  sequences = sequences.astype(jnp.float32)
  batch, length, _ = sequences.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)
  mask = mask.astype(bool)
  # where, not a product: padded entries may hold NaN or inf.
  sequences = jnp.where(mask[:, :, None], sequences, 0.0)
  gram = jnp.einsum("bsd,btd->bst", sequences, sequences,
                    precision=jax.lax.Precision.HIGHEST)  # X^T X, (B, S, S)
  pair_mask = mask[:, :, None] & mask[:, None, :]
  identity = jnp.eye(length, dtype=jnp.float32)[None]
  residual = jnp.where(pair_mask, identity - gram, 0.0)
  num_valid = jnp.maximum(mask.sum(axis=1), 1).astype(jnp.float32)
  per_sequence = jnp.sum(residual * residual, axis=(1, 2)) / num_valid ** 2
  return per_sequence.mean()


def random_convex_weights(key: jax.Array, mask: jax.Array, *,
                          drop_probability: float = 0.2) -> jax.Array:
  """Random convex-combination weights of DuATM's Eq. 8 augmentation.

  Each valid position gets w_i ~ U[0, 1), reset to 0 with probability
  ``drop_probability``; the weights are renormalised to sum to 1. Padded
  positions get 0. Reading of the degenerate case: when every valid weight
  of a sequence was reset (probability p^S), it falls back to uniform
  weights over the valid positions, i.e. plain averaging, the test-time
  pooling.

  Args:
    key: PRNG key.
    mask: (B, S) bool, True at valid positions.
    drop_probability: p, the probability of resetting a weight to 0.

  Returns:
    (B, S) float32 weights, >= 0, summing to 1 over each row's valid entries.
  """
  if not 0.0 <= drop_probability <= 1.0:
    raise ValueError("drop_probability must be in [0, 1], got "
                     f"{drop_probability}.")
  mask = mask.astype(bool)
  uniform_key, drop_key = jax.random.split(key)
  weights = jax.random.uniform(uniform_key, mask.shape, jnp.float32)
  keep = jax.random.bernoulli(drop_key, 1.0 - drop_probability, mask.shape)
  weights = jnp.where(keep & mask, weights, 0.0)
  total = weights.sum(axis=1, keepdims=True)
  average = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
  degenerate = total <= 0.0
  return jnp.where(degenerate, average,
                   weights / jnp.where(degenerate, 1.0, total))


def random_convex_combination(key: jax.Array | None, features: jax.Array,
                              mask: jax.Array | None = None, *,
                              drop_probability: float = 0.2,
                              deterministic: bool = False) -> jax.Array:
  """z = sum_i w_i x_i with ``random_convex_weights`` (DuATM Eq. 8).

  Args:
    key: PRNG key (unused, may be None, when ``deterministic``).
    features: (B, S, D) feature sequences.
    mask: optional (B, S) bool, True at valid positions.
    drop_probability: p of ``random_convex_weights``.
    deterministic: plain average over the valid positions (test time).

  Returns:
    (B, D) pooled features, to feed the ID classifier.
  """
  features = features.astype(jnp.float32)
  batch, length, _ = features.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)
  mask = mask.astype(bool)
  if deterministic:
    weights = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
  else:
    if key is None:
      raise ValueError("random_convex_combination needs a PRNG key unless "
                       "deterministic=True.")
    weights = random_convex_weights(key, mask,
                                    drop_probability=drop_probability)
  features = jnp.where(mask[:, :, None], features, 0.0)
  return jnp.einsum("bs,bsd->bd", weights.astype(jnp.float32), features,
                    precision=jax.lax.Precision.HIGHEST)
