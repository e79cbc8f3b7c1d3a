r"""CACE-Net: clue alignment and conditional embedding (a pair model).

Yu, Jiang, Gong, Zhao, Guo, Zheng, Zheng, Sun, "Devil's in the Details:
Aligning Visual Clues for Conditional Embedding in Person
Re-Identification", 2020. Equations -> code -> tests, and every reading we
take: ``docs/papers/cacenet.md``. Layers: ``reidjax.layers.correspondence``
(Eq. 2-4, Table 2), ``reidjax.layers.graph`` (Eq. 6-7, the official
``PairGraph``), ``reidjax.layers.non_local``, ``reidjax.layers.pooling``.

Paper variant (``variant="paper"``, the default)
-----------------------------------------------
X (B, H, W, D), the backbone's last map, read as N = H W node features.

- Individual feature (Sec. 3.2, Eq. 1): f(u) = conv1x1(GAP(X_u)) (B, E);
  the ID classifier reads it through a BatchNorm neck without shift (the
  BNNeck of Luo et al. 2019; our reading: the paper names only "a weight
  matrix of a fully connected layer"), whose output is the "global"
  embedding the first ranking stage sorts by (cosine).
- Joint graph (Eq. 2-4): A = ReLU([[S_u, S'_uv], [S'_vu, S_v]]) (2N, 2N)
  from ``CorrespondenceAttention`` (``adjacency``, ``top_k``,
  ``cross_image`` switch Table 2's alignments and Table 1's individual-only
  graph).
- GCN (Eq. 7, or Eq. 6 with ``gcn="smoothing"``): theta (I -/+ A_hat) X
  over the 2N nodes (``GraphConvolution``, theta D -> D, no bias).
- Conditional features (Sec. 3.4.2): each image's half of the GCN output
  through GAP and the 1x1 conv: f(u|v), f(v|u) (E,), then a BatchNorm neck
  of their own; the stage-2 distance of (u, v) is the cosine distance
  1 - cos(f(u|v), f(v|u)) of the two necked vectors, and the ranking adds
  the stage-1 cosine distance (``eval.rerank_combine="sum"``: the sum of
  the two cosine similarities of Sec. 3.5).

Readings: the conditional features use the *same* 1x1 conv as the
individual feature ("similar to the individual exam stage ... a feature
encoder") and the *same* ID classifier (Eq. 8's L_CE "is the softmax and
cross entropy loss shown in Eq. 1"), each with its own BatchNorm neck
(conditional features are not distributed like individual ones).

Cost. Eq. 6-7, GAP and the 1x1 conv have no non-linearity between them,
so the pooled output of u's half is exactly
theta(mean_u(X) -/+ mean_{i in u} (A_hat X)_i), and mean_{i in u} (A_hat
X)_i = p^T X_joint with p the mean of A_hat's rows of u (2N weights). The
model computes that: per pair, Eq. 3's S'_uv (N^2 D multiply-adds), the
(2N, 2N) normalisation, two 2N-weight sums of the maps (4 N D) and theta
and the conv on two vectors; theta is never applied to the 2N x D maps.
(theta is ``GraphConvolution``'s own dense layer, applied to a one-node
graph with no edge, which that layer defines as theta x.) The per-image
work (the map, S_u of Eq. 2, GAP, f(u)) is done once per image by
``prepare``; ``pair_distance`` does only the per-pair work above.
``conditional_maps`` gives the full GCN output maps (Fig. 4 of the paper);
the tests check the pooled shortcut against it.

Official variant (``variant="official"``)
-----------------------------------------
The design of the authors' published code (TencentYoutuResearch/
PersonReID-YouReID: ``models/cacenet.py``, ``models/backbones/resnet.py``,
``core/layers.py``, ``core/loss.py``, ``example/cacenet/cacenet.yaml``), our
own code written from its facts:

- ResNet-50 with an embedded-Gaussian ``NonLocalBlock`` (C/16 inner
  channels, zero-initialised output, residual) after the second-to-last
  bottleneck of each stage in ``non_local_stages`` (2, 3, 4); a stage of
  one block gets none;
- for every ordered pair (u, v) of the batch the two stage-4 maps side by
  side along the width (H, 2W, C) through ``PairGraph``; the left half is
  u's conditional map;
- one head for individual and pair maps alike: GeM (p = 3 learnable) ->
  bias-free 1x1 conv to ``embed_dim`` (768) -> BatchNorm (the test-time
  embedding);
- ID classifier: ReLU -> dropout (0.5) -> bias-free linear, and a second
  one of the same form for the pair features;
- at test time the code ranks by the global embedding only; here
  ``pair_score="individual"`` (its config default) makes ``pair_distance``
  the cosine distance of the global embeddings, and ``"conditional"`` gives
  1 - cos(f(u|v), f(v|u)) through ``PairGraph`` instead.

``pair_score="individual"`` does the same for the paper variant (Table 1's
"Individual Feature Embedding" row): ``embed`` then holds only "global".

Training outputs (``__call__``): "features" (B, E) the triplet's input,
"embeddings" (B, E) the global embedding, "logits" (B, C), "pair_features"
(B, B, E) with [u, v] = f(u|v) (the conditional features the ranking
compares) and "pair_logits" (B, B, C). Objective: ``cacenet_objective``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from reidjax import losses
from reidjax.layers.correspondence import ADJACENCIES, CorrespondenceAttention
from reidjax.layers.graph import MODES, GraphConvolution, PairGraph, normalized_adjacency
from reidjax.layers.non_local import NonLocalBlock
from reidjax.layers.pooling import GeM
from reidjax.models import interface

VARIANTS = ("paper", "official")
PAIR_SCORES = ("conditional", "individual")
NON_LOCAL_STAGES = (2, 3, 4)
# torchvision-style kaiming normal, fan out (the official embedding conv's init).
_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _unit(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """1 - cos(a, b) over the last axis; leading dims broadcast."""
  return 1.0 - jnp.sum(_unit(a) * _unit(b), axis=-1)


def pooled_propagation(a_hat: jax.Array, x_u: jax.Array, x_v: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """The means over each image's nodes of A_hat X_joint, without X_joint.

  Args:
    a_hat: (..., 2N, 2N) normalised joint adjacency; nodes 0..N-1 are u's.
    x_u, x_v: (..., N, D) maps (leading dims broadcast against a_hat's).

  Returns:
    (m_u, m_v), each (..., D): mean_{i in u} (A_hat X)_i and the same over v.
  """
  n = x_u.shape[-2]
  rows_u = jnp.mean(a_hat[..., :n, :], axis=-2)  # (..., 2N) weights of the nodes
  rows_v = jnp.mean(a_hat[..., n:, :], axis=-2)

  def weighted(weights):
    return (jnp.einsum("...n,...nd->...d", weights[..., :n], x_u)
            + jnp.einsum("...n,...nd->...d", weights[..., n:], x_v))

  return weighted(rows_u), weighted(rows_v)


class CACENet(nn.Module):
  """CACE-Net, paper or official variant (module docstring).

  Attributes:
    backbone: a ResNet (``stem`` / ``stage``); its last map is X.
    num_classes: training identities.
    feature_key: unused (the model runs the stages itself).
    variant: ``"paper"`` or ``"official"``.
    embed_dim: E, output of the 1x1 conv(s).
    adjacency, top_k, cross_image: ``CorrespondenceAttention`` (paper).
    gcn: ``"discrepancy"`` (Eq. 7) or ``"smoothing"`` (Eq. 6) (paper).
    pair_score: ``"conditional"`` or ``"individual"``: what
      ``pair_distance`` compares.
    non_local_stages: stages with a non-local block (official).
    dropout: dropout rate before the official classifiers.
  """

  backbone: nn.Module
  num_classes: int
  feature_key: str = "stage4"
  variant: str = "paper"
  embed_dim: int = 2048
  adjacency: str = "correspondence"
  top_k: int = 1
  cross_image: bool = True
  gcn: str = "discrepancy"
  pair_score: str = "conditional"
  non_local_stages: Sequence[int] = (2, 3, 4)
  dropout: float = 0.5

  kind: ClassVar[str] = interface.PAIR
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  def _check(self):
    for name, value, choices in (("variant", self.variant, VARIANTS),
                                 ("pair_score", self.pair_score, PAIR_SCORES),
                                 ("adjacency", self.adjacency, ADJACENCIES),
                                 ("gcn", self.gcn, MODES)):
      if value not in choices:
        raise ValueError(f"model.{name} must be one of {choices}, got {value!r}.")
    stages = tuple(self.non_local_stages)
    if any(s not in NON_LOCAL_STAGES for s in stages) or len(set(stages)) != len(stages):
      raise ValueError(f"model.non_local_stages must be distinct stages of "
                       f"{NON_LOCAL_STAGES}, got {stages}.")
    if not (callable(getattr(self.backbone, "stem", None))
            and callable(getattr(self.backbone, "stage", None))):
      raise ValueError(f"CACE-Net runs the backbone stage by stage; model.backbone "
                       f"must be a ResNet, got {type(self.backbone).__name__}.")

  @property
  def official(self) -> bool:
    return self.variant == "official"

  def setup(self):
    self._check()
    dense = lambda name, init=_FAN_OUT: nn.Dense(
        self.embed_dim, use_bias=False, kernel_init=init, name=name)
    classifier = lambda name: nn.Dense(self.num_classes, use_bias=False,
                                       kernel_init=nn.initializers.normal(1e-3), name=name)
    bn = lambda name, **kw: nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=name, **kw)
    if self.official:
      self.non_local = {str(s): NonLocalBlock(dtype=self.backbone.dtype, name=f"non_local{s}")
                        for s in self.non_local_stages}
      self.pair_graph = PairGraph(dtype=self.backbone.dtype, name="pair_graph")
      self.gem = GeM(name="gem")
      self.embedding = dense("embedding")
      self.embedding_bn = bn("embedding_bn")
      self.classifier = classifier("classifier")
      self.pair_classifier = classifier("pair_classifier")
      self.drop = nn.Dropout(self.dropout)
    else:
      self.correspondence = CorrespondenceAttention(
          adjacency=self.adjacency, top_k=self.top_k, cross_image=self.cross_image,
          name="correspondence")
      self.gcn_layer = GraphConvolution(mode=self.gcn,
                                        features=self.backbone.stage_features[-1],
                                        dtype=self.backbone.dtype, name="graph_conv")
      # The 1x1 conv after GAP.
      self.encoder = nn.Dense(self.embed_dim, dtype=self.backbone.dtype, name="encoder")
      self.neck = bn("neck", use_bias=False)
      self.pair_neck = bn("pair_neck", use_bias=False)
      self.classifier = classifier("classifier")

  # --------------------------------------------------------------------------
  # Per image.

  def feature_map(self, images: jax.Array, train: bool) -> jax.Array:
    """Images (B, H, W, 3) -> X (B, h, w, D) float32, the last stage's map
    (official: with the non-local blocks inside stages 2-4)."""
    if images.ndim != 4:
      raise ValueError(f"CACE-Net expects images (B, H, W, 3), got shape {images.shape}.")
    x = self.backbone.stem(images, train)
    for index in range(1, 5):
      blocks = self.backbone.stage_sizes[index - 1]
      if self.official and index in self.non_local_stages and blocks >= 2:
        x = self.backbone.stage(index, x, train, blocks=slice(0, blocks - 1))
        x = self.non_local[str(index)](x, train)
        x = self.backbone.stage(index, x, train, blocks=slice(blocks - 1, None))
      else:
        x = self.backbone.stage(index, x, train)
    return x.astype(jnp.float32)

  def _official_head(self, maps: jax.Array, train: bool) -> jax.Array:
    """(..., h, w, C) -> GeM -> 1x1 conv -> BN: (..., E)."""
    lead = maps.shape[:-3]
    pooled = self.gem(maps.reshape((-1,) + maps.shape[-3:]))
    out = self.embedding_bn(self.embedding(pooled), use_running_average=not train)
    return out.reshape(lead + out.shape[-1:])

  def _official_logits(self, classifier: nn.Module, f: jax.Array, train: bool) -> jax.Array:
    return classifier(self.drop(nn.relu(f), deterministic=not train))

  def _paper_items(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """X (B, h, w, D) -> per-image quantities: map (B, N, D), intra S (B, N, N)
    (Eq. 2), features f (B, E) and global (B, E) (the neck's output)."""
    batch, h, w, d = x.shape
    nodes = x.reshape(batch, h * w, d)
    features = self.encoder(jnp.mean(nodes, axis=1)).astype(jnp.float32)
    return {"map": nodes, "intra": self.correspondence.intra_block(nodes),
            "features": features,
            "global": self.neck(features, use_running_average=not train)}

  # --------------------------------------------------------------------------
  # Per pair.

  def _conditional_pooled(self, items_u: dict[str, jax.Array],
                          items_v: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Pooled GCN outputs of both halves, (..., D) each (module doc, "Cost").

    ``items_u`` / ``items_v``: "map" (..., N, D) and "intra" (..., N, N),
    leading dims broadcasting (e.g. (Na, 1, ...) against (1, Nb, ...)).
    """
    x_u, x_v = items_u["map"], items_v["map"]
    a = self.correspondence.joint(items_u["intra"], items_v["intra"], x_u, x_v)
    m_u, m_v = pooled_propagation(normalized_adjacency(a), x_u, x_v)
    sign = -1.0 if self.gcn == "discrepancy" else 1.0
    g_u = jnp.mean(x_u, axis=-2) + sign * m_u
    g_v = jnp.mean(x_v, axis=-2) + sign * m_v
    return g_u, g_v

  def _theta(self, pooled: jax.Array) -> jax.Array:
    """The GCN's theta on pooled vectors (..., D): a one-node graph, no edge."""
    nodes = pooled[..., None, :]
    return self.gcn_layer(nodes, jnp.zeros(nodes.shape[:-1] + (1,), jnp.float32))[..., 0, :]

  def _paper_conditional(self, items_u, items_v, train: bool):
    """(f(u|v), f(v|u)) after the pair neck, (..., E) each."""
    g_u, g_v = self._conditional_pooled(items_u, items_v)
    f = self.encoder(self._theta(jnp.stack([g_u, g_v]))).astype(jnp.float32)
    shape = f.shape
    f = self.pair_neck(f.reshape(-1, shape[-1]), use_running_average=not train)
    f = f.reshape(shape)
    return f[0], f[1]

  def _official_conditional(self, x_u: jax.Array, x_v: jax.Array, train: bool):
    """Maps (..., h, w, C) -> (f(u|v), f(v|u)) (..., E) through PairGraph."""
    x_u, x_v = jnp.broadcast_arrays(x_u, x_v)
    width = x_u.shape[-2]
    pair = self.pair_graph(jnp.concatenate([x_u, x_v], axis=-2))
    f = self._official_head(jnp.stack([pair[..., :width, :], pair[..., width:, :]]), train)
    return f[0], f[1]

  # --------------------------------------------------------------------------
  # The model contract.

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """Training outputs (module docstring): features, embeddings (B, E), logits
    (B, C), pair_features (B, B, E) ([u, v] = f(u|v)), pair_logits (B, B, C)."""
    x = self.feature_map(inputs["images"], train)
    if self.official:
      f = self._official_head(x, train)
      pair, _ = self._official_conditional(x[:, None], x[None], train)
      return {"features": f, "embeddings": f,
              "logits": self._official_logits(self.classifier, f, train),
              "pair_features": pair,
              "pair_logits": self._official_logits(self.pair_classifier, pair, train)}
    items = self._paper_items(x, train)
    first = {k: items[k][:, None] for k in ("map", "intra")}
    second = {k: items[k][None] for k in ("map", "intra")}
    pair, _ = self._paper_conditional(first, second, train)
    return {"features": items["features"], "embeddings": items["global"],
            "logits": self.classifier(items["global"]),
            "pair_features": pair, "pair_logits": self.classifier(pair)}

  def features(self, inputs: dict[str, jax.Array],
               mirrored: bool = False) -> dict[str, jax.Array]:
    """{"map": X (B, h, w, D)} in inference mode (``mirrored``: a flipped
    image's map with its columns put back in place)."""
    x = self.feature_map(inputs["images"], False)
    return {"map": x[:, :, ::-1] if mirrored else x}

  def prepare(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-image items for ``pair_distance``, computed once per image.

    Paper: "map" (B, N, D), "intra" (B, N, N) = S of Eq. 2, "global" (B, E).
    Official: "map" (B, h, w, C) and "global" (B, E). With
    ``pair_score="individual"``: "global" only.
    """
    x = features["map"]
    if self.official:
      items = {"map": x, "global": self._official_head(x, False)}
    else:
      items = self._paper_items(x, False)
      del items["features"]
    return {"global": items["global"]} if self.pair_score == "individual" else items

  def embed(self, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``prepare(features(inputs))``."""
    return self.prepare(self.features(inputs))

  def conditional_features(self, items_a: dict[str, jax.Array],
                           items_b: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(f(a|b), f(b|a)), each (Na, Nb, E), of two tiles of ``embed`` items
    (``pair_score="conditional"``), in inference mode."""
    first = jax.tree.map(lambda t: t[:, None], items_a)
    second = jax.tree.map(lambda t: t[None], items_b)
    if self.official:
      return self._official_conditional(first["map"], second["map"], False)
    return self._paper_conditional(first, second, False)

  def pair_distance(self, items_a: dict[str, jax.Array],
                    items_b: dict[str, jax.Array]) -> jax.Array:
    """(Na, Nb) distances of two tiles of ``embed`` items.

    ``pair_score="conditional"``: 1 - cos(f(a|b), f(b|a)) (Sec. 3.5's second
    stage); ``"individual"``: 1 - cos of the global embeddings.
    """
    if self.pair_score == "individual":
      return cosine_distance(items_a["global"][:, None], items_b["global"][None])
    return cosine_distance(*self.conditional_features(items_a, items_b))

  def conditional_maps(self, items_u: dict[str, jax.Array],
                       items_v: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Paper variant: the joint graph and the GCN output maps of pairs.

    Args:
      items_u, items_v: ``embed`` items (``pair_score="conditional"``) whose
        leading dims broadcast (e.g. (Na, 1) against (1, Nb)).

    Returns:
      "adjacency" (..., 2N, 2N) A of Eq. 4 and "maps" (..., 2N, D), the GCN
      output theta (I -/+ A_hat) X of both images (u's nodes first).
    """
    a = self.correspondence.joint(items_u["intra"], items_v["intra"],
                                  items_u["map"], items_v["map"])
    joint = jnp.concatenate(jnp.broadcast_arrays(items_u["map"], items_v["map"]), axis=-2)
    return {"adjacency": a, "maps": self.gcn_layer(joint, a).astype(jnp.float32)}


def cacenet_objective(outputs: dict[str, Any], batch: dict[str, jax.Array],
                      config: ml_collections.ConfigDict):
  """ID CE (Eq. 1) + mix-up ID loss (Eq. 8) + batch-hard triplet (+ pair triplet).

  Args:
    outputs: ``CACENet.__call__`` outputs.
    batch: must hold ``pids`` (B,).
    config: the ``loss`` section: label_smoothing (ID CE only), ce_weight,
      triplet_margin, triplet_weight, triplet_normalize (L2-normalise the
      triplet's features, as the official code does), mixup_alpha,
      mixup_weight, pair_triplet_weight.

  Returns:
    (total loss, dict of scalar metrics).
  """
  pids = batch["pids"]
  ce, ce_metrics = losses.cross_entropy_with_label_smoothing(
      outputs["logits"], pids, label_smoothing=config.label_smoothing)
  mixup = mixup_id_loss(outputs["pair_logits"], pids, config.mixup_alpha)
  features = outputs["features"]
  if config.triplet_normalize:
    features = _unit(features)
  triplet, triplet_metrics = losses.batch_hard_triplet_loss(
      features, pids, margin=config.triplet_margin)
  total = (config.ce_weight * ce + config.mixup_weight * mixup
           + config.triplet_weight * triplet)
  metrics = {"ce": ce, "mixup": mixup, "triplet": triplet, **ce_metrics, **triplet_metrics}
  if config.pair_triplet_weight:
    pair_triplet, _ = losses.batch_hard_triplet_loss(
        None, pids, margin=config.triplet_margin,
        distances=pair_triplet_distances(outputs["pair_features"]))
    total = total + config.pair_triplet_weight * pair_triplet
    metrics["pair_triplet"] = pair_triplet
  return total, {"loss": total, **metrics}


def mixup_id_loss(pair_logits: jax.Array, pids: jax.Array, alpha: float) -> jax.Array:
  """Eq. 8, averaged over all B x B ordered pairs (u, v), self pairs included.

  pair_logits[u, v] (C,) classifies f(u|v); the loss of the pair is
  alpha CE(y_u) + (1 - alpha) CE(y_v). Reading: the paper writes a sum over
  the PM x PM pairs; we take the mean, so its scale is that of Eq. 1 and
  ``mixup_weight`` compares with ``ce_weight``.
  """
  log_p = jax.nn.log_softmax(pair_logits.astype(jnp.float32), axis=-1)
  own = jnp.take_along_axis(log_p, jnp.broadcast_to(pids[:, None, None], log_p.shape[:2] + (1,)),
                            axis=-1)[..., 0]
  other = jnp.take_along_axis(log_p, jnp.broadcast_to(pids[None, :, None], log_p.shape[:2] + (1,)),
                              axis=-1)[..., 0]
  return -jnp.mean(alpha * own + (1.0 - alpha) * other)


def pair_triplet_distances(pair_features: jax.Array) -> jax.Array:
  """The official "pair triplet" distances: (B, B, E) [u, v] = f(u|v) -> (B, B).

  d(u, v) = || f(u|v)/|f(u|v)| - f(v|u)/|f(v|u)| ||, the distance of the two
  conditioned features of the pair (the official code's ``PairTripletLoss``
  on its f_0, f_1), then mined batch-hard like the triplet on individual
  features.
  """
  unit = _unit(pair_features.astype(jnp.float32))
  diff = unit - jnp.swapaxes(unit, 0, 1)
  return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)
