r"""Attention-Driven ReID: five slim ResNet branches, intra- and inter-attention.

Yang, Yan, Lu et al., "Attention driven person re-identification", Pattern
Recognition 2019, Sec. 3 (Fig. 3, Table 1, Eq. 3-11). Equations -> code ->
tests: ``docs/papers/attdriven.md``. Layers: ``reidjax.layers.intra_attention``
(Fig. 5, Eq. 3-7) and ``reidjax.layers.inter_attention`` (Eq. 8-9).

Inputs (``input_fields``): ``images`` (N, H, W, 3), the aligned whole-body
crop R0 (paper: 384 x 192), and ``parts`` (N, K, Hp, Wp, 3), the K = 4
body-part crops R1..R4 (head, upper body, upper legs, lower legs; paper:
96 x 192), both normalised like images. Where the crops come from (pose
boxes, Eq. 1-2, or fixed stripes, Table 6's baseline) is the data
pipeline's ``data.parts.source``; the model does not care.

Network (Sec. 3.1, Table 1):

* The five branches. ``backbone`` (built by the registry from
  ``model.backbone``, a ``ResNet`` with Table 1's global-branch fields, see
  ``reidjax.backbones.resnet.attdriven_branch``) is the global branch;
  the K part branches ``part{k}`` are clones of it with
  ``part_stage_widths`` and ``part_pool_strides`` (Table 1's part column:
  half widths, stem max pool (1, 2)). So one config section describes all
  five, and the registry's single ``backbone`` is still the module built
  from ``model.backbone``.
* Conv1 "shared": the global branch's 3x3 stride-2 ``conv1`` kernel is
  applied to the whole body and to every part (one call on the (N K) part
  crops); each branch has its own BatchNorm after it (Table 1 lists no BN;
  whole-body and part crops have different statistics, and one BN called
  twice per step in training mode would mix them). The part branches'
  own ``conv1`` is never called, so it has no variables.
* Stages B1..B4 (= Conv2_x..Conv5_x, three bottlenecks each, no last
  down-sampling). With ``intra_attention``, after each stage of
  ``attention_stages`` (B2-B4 = stages 2, 3, 4) an ``IntraAttention`` with
  ``attention_pools`` max pools (2, 1, 1): its input is the output of the
  stage's first residual unit, a_i the output of the remaining units, and
  the stage outputs (1 + m) a_i (Eq. 7).
* Head per branch: global average pool -> FC reduce (``global_reduce``
  256, ``part_reduce`` 128) -> BatchNorm -> ReLU = E_g / E_k (BN + ReLU are
  our reading: Table 1 lists "FC reduce" only) -> dropout (0.5, "applied
  before every prediction layer") -> FC ID (with bias).
* Fusion (``InterAttention``, ``fusion``): "inter" (Eq. 8-9), "concat" or
  "fc" (Table 9). The final feature [E_g, E_l] (Sec. 3.4) is the
  embedding; with "inter" or "fc" it also feeds a dropout + FC ID
  (``fused_classifier``, the l_inter of Eq. 11). "concat" has no fused
  classifier: Table 9's concatenation "in testing stage", equal to Table
  6's Aligned / Intra rows (the same figures), i.e. the "no inter" model.
* ``branches``: "all" (five), "global" (Table 7's Global row: E_g only) or
  "parts" (Table 7's Part Fusion: E_l only).
* ``subtract_image_mean`` (Sec. 4.1: "each training image is first
  normalized by subtracting its channel means"): the per-image,
  per-channel mean over the pixels is subtracted from every crop inside
  the model, in training and at test time. Our inputs are ImageNet
  normalised first, so this is the paper's input divided per channel by
  the ImageNet std, a per-channel scale that Conv1 absorbs.

Objective (Eq. 11, ``attdriven_objective``): lambda * sum of the branch CEs
+ the CE of the fused classifier, lambda = ``loss.branch_weight`` (0.5 in
the paper's text; 0.1 / 0.2 best per dataset, Table 10). Without a fused
classifier ("concat", or a single branch) the branch CEs are summed with
weight 1: lambda only balances them against l_inter.

Pretraining: the paper pretrains its own network on ImageNet. We cannot,
so ``model.pretrained`` names a reidjax checkpoint of the same network
(e.g. a run on another dataset); ``transfer_pretrained`` copies its
variables into a fresh model's, except the ID classifiers (their number
of identities differs). ``feature_key`` (from the registry) is unused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reidjax import losses
from reidjax.layers.inter_attention import InterAttention, check_fusion
from reidjax.layers.intra_attention import IntraAttention, check_decomposition
from reidjax.models import interface

BRANCHES = ("all", "global", "parts")
ATTENTION_STAGES = (2, 3, 4)


class AttentionDriven(nn.Module):
  """The five-branch network of Fig. 3 (module doc).

  Attributes:
    backbone: the global branch, a ``reidjax.backbones.resnet.ResNet``.
    num_classes: training identities.
    feature_key: unused (the registry passes it to every model).
    num_parts: K, the body-part crops in ``inputs["parts"]``.
    part_stage_widths: bottleneck widths of the part branches' stages.
    part_pool_strides: stem max-pool stride of the part branches (h, w).
    branches: "all" | "global" | "parts".
    intra_attention: add the attention path to ``attention_stages``.
    attention_stages: stages (of 2, 3, 4) with an attention path.
    attention_pools: max pools of each of those stages' encoder.
    decomposition: "both" | "spatial" | "channel" | "none".
    fusion: "inter" | "concat" | "fc".
    global_reduce, part_reduce: widths of the FC reduce layers.
    dropout: dropout rate before every ID classifier.
    subtract_image_mean: subtract each crop's channel means.
    pretrained: a reidjax checkpoint of this network to start from (read by
      the training script, see ``transfer_pretrained``; not by the module).
  """

  backbone: nn.Module
  num_classes: int
  feature_key: str = "stage4"
  num_parts: int = 4
  part_stage_widths: Sequence[int] = (16, 32, 64, 128)
  part_pool_strides: Sequence[int] = (1, 2)
  branches: str = "all"
  intra_attention: bool = True
  attention_stages: Sequence[int] = (2, 3, 4)
  attention_pools: Sequence[int] = (2, 1, 1)
  decomposition: str = "both"
  fusion: str = "inter"
  global_reduce: int = 256
  part_reduce: int = 128
  dropout: float = 0.5
  subtract_image_mean: bool = True
  pretrained: str = ""

  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images", "parts")

  @property
  def branch_names(self) -> tuple[str, ...]:
    """"global", "part1".."partK" (those ``branches`` selects)."""
    if self.branches not in BRANCHES:
      raise ValueError(f"model.branches must be one of {BRANCHES}, got {self.branches!r}.")
    names = ("global",) if self.branches in ("all", "global") else ()
    if self.branches in ("all", "parts"):
      names += tuple(f"part{k + 1}" for k in range(self.num_parts))
    return names

  @property
  def pools_per_stage(self) -> dict[int, int]:
    """{stage: max pools} of the attention paths (empty without intra-attention)."""
    if not self.intra_attention:
      return {}
    stages = tuple(int(s) for s in self.attention_stages)
    pools = tuple(int(p) for p in self.attention_pools)
    if (len(set(stages)) != len(stages) or any(s not in ATTENTION_STAGES for s in stages)
        or len(pools) != len(stages) or any(p < 1 for p in pools)):
      raise ValueError(
          f"model.attention_stages must be distinct stages of {ATTENTION_STAGES} and "
          f"model.attention_pools one count >= 1 per stage; got {tuple(self.attention_stages)} "
          f"and {tuple(self.attention_pools)}.")
    return dict(zip(stages, pools))

  @property
  def has_fused_classifier(self) -> bool:
    """Whether Eq. 11's l_inter exists: a fusion that trains, over parts."""
    return self.fusion != "concat" and self.branches != "global"

  def setup(self):
    if not (callable(getattr(self.backbone, "stem_pool", None))
            and callable(getattr(self.backbone, "stage", None))):
      raise ValueError(
          f"Attention-Driven's branches are ResNets run stage by stage (model.backbone.name "
          f"'resnet'), got {type(self.backbone).__name__}.")
    check_fusion(self.fusion)
    check_decomposition(self.decomposition)
    if self.num_parts < 1:
      raise ValueError(f"model.num_parts must be >= 1, got {self.num_parts}.")
    if len(tuple(self.part_stage_widths)) != 4:
      raise ValueError(f"model.part_stage_widths needs 4 widths, got "
                       f"{tuple(self.part_stage_widths)}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}.")
    branch_modules = {"global": self.backbone}
    for name in self.branch_names[1 if self.branches != "parts" else 0:]:
      branch_modules[name] = self.backbone.clone(
          parent=self, name=name, stage_widths=tuple(self.part_stage_widths),
          stem_pool_strides=tuple(self.part_pool_strides))
    self.branch_modules = branch_modules
    dtype = self.backbone.dtype
    attention, reduce, reduce_bn, classifier = {}, {}, {}, {}
    for name in self.branch_names:
      branch = branch_modules[name]
      for stage, pools in self.pools_per_stage.items():
        attention[f"{name}_stage{stage}"] = IntraAttention(
            num_pools=pools, decomposition=self.decomposition, expansion=branch.expansion,
            dtype=dtype, bn_momentum=branch.bn_momentum, bn_epsilon=branch.bn_epsilon,
            name=f"{name}_attention{stage}")
      width = self.global_reduce if name == "global" else self.part_reduce
      reduce[name] = nn.Dense(width, name=f"{name}_reduce")
      reduce_bn[name] = nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=f"{name}_reduce_bn")
      classifier[name] = nn.Dense(self.num_classes, name=f"{name}_classifier")
    self.attention = attention
    self.reduce, self.reduce_bn, self.classifier = reduce, reduce_bn, classifier
    self.inter_attention = InterAttention(self.fusion, name="inter_attention")
    if self.has_fused_classifier:
      self.fused_classifier = nn.Dense(self.num_classes, name="fused_classifier")
    self.drop = nn.Dropout(self.dropout)

  def _check_inputs(self, inputs: Mapping[str, jax.Array]):
    images, parts = inputs["images"], inputs["parts"]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"inputs['images'] must be (N, H, W, 3) whole-body crops, got "
                       f"shape {images.shape}.")
    if parts.ndim != 5 or parts.shape[1] != self.num_parts or parts.shape[-1] != 3:
      raise ValueError(f"inputs['parts'] must be (N, {self.num_parts}, Hp, Wp, 3) body-part "
                       f"crops (model.num_parts = {self.num_parts}), got shape {parts.shape}.")
    if parts.shape[0] != images.shape[0]:
      raise ValueError(f"inputs['images'] has {images.shape[0]} items but inputs['parts'] "
                       f"{parts.shape[0]}.")

  def _prepare(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if self.subtract_image_mean:
      x = x - jnp.mean(x, axis=(-3, -2), keepdims=True)
    return x

  def _branch_maps(self, name: str, stem: jax.Array, train: bool):
    """Conv1 output (N, h, w, 32) -> (stage-4 map, {"stage{i}": attention aux})."""
    branch = self.branch_modules[name]
    x = nn.relu(branch.bn1(stem, use_running_average=not train))
    x = branch.stem_pool(x)
    aux = {}
    for stage in range(1, 5):
      key = f"{name}_stage{stage}"
      if key not in self.attention:
        x = branch.stage(stage, x, train)
        continue
      shared = branch.stage(stage, x, train, blocks=slice(0, 1))
      features = branch.stage(stage, shared, train, blocks=slice(1, None))
      x, aux[f"stage{stage}"] = self.attention[key](shared, features, train)
    return x, aux

  def branch_outputs(self, inputs: Mapping[str, jax.Array], train: bool) -> dict[str, Any]:
    """Runs the selected branches.

    Args:
      inputs: ``images`` (N, H, W, 3) and ``parts`` (N, K, Hp, Wp, 3).
      train: BatchNorm mode.

    Returns:
      {"features": {branch: E (N, D_b) float32}, "attention": {branch:
      {"stage{i}": ``IntraAttention`` aux}}}.
    """
    self._check_inputs(inputs)
    conv1 = self.backbone.conv1  # Table 1's shared Conv1
    stems = {}
    if "global" in self.branch_names:
      stems["global"] = conv1(self._prepare(inputs["images"]).astype(self.backbone.dtype))
    part_names = [n for n in self.branch_names if n != "global"]
    if part_names:
      parts = self._prepare(inputs["parts"]).astype(self.backbone.dtype)
      n, k = parts.shape[:2]
      maps = conv1(parts.reshape((n * k,) + parts.shape[2:]))
      maps = maps.reshape((n, k) + maps.shape[1:])
      stems.update({name: maps[:, i] for i, name in enumerate(part_names)})
    features, attention = {}, {}
    for name in self.branch_names:
      x, attention[name] = self._branch_maps(name, stems[name], train)
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      reduced = self.reduce_bn[name](self.reduce[name](pooled), use_running_average=not train)
      features[name] = nn.relu(reduced)
    return {"features": features, "attention": attention}

  def _fuse(self, features: Mapping[str, jax.Array]):
    parts = [features[n] for n in self.branch_names if n != "global"]
    return self.inter_attention(parts, features.get("global"))

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """The training outputs.

    Returns:
      ``embeddings`` (N, D) the final feature [E_g, E_l] (D = 768 at the
      paper's widths), ``branch_logits`` {branch: (N, num_classes)},
      ``fused_logits`` (N, num_classes) when there is a fused classifier,
      ``features`` {branch: E}, ``attention`` {branch: {"stage{i}": aux}},
      ``inter`` the fusion's aux (``weights`` mu (N, K) for "inter").
    """
    out = self.branch_outputs(inputs, train)
    fused, inter = self._fuse(out["features"])
    drop = lambda x: self.drop(x, deterministic=not train)
    outputs = {
        **out, "embeddings": fused, "inter": inter,
        "branch_logits": {name: self.classifier[name](drop(e))
                          for name, e in out["features"].items()},
    }
    if self.has_fused_classifier:
      outputs["fused_logits"] = self.fused_classifier(drop(fused))
    return outputs

  def embed(self, inputs: dict[str, jax.Array]) -> jax.Array:
    """(N, D) test-time embeddings: the final feature [E_g, E_l]."""
    return self._fuse(self.branch_outputs(inputs, train=False)["features"])[0]

  def attention_maps(self, inputs: dict[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """{branch: {"stage{i}": (N, h, w) channel-mean mask m}} in inference mode (Fig. 7)."""
    attention = self.branch_outputs(inputs, train=False)["attention"]
    return {name: {stage: aux["mask_map"] for stage, aux in stages.items()}
            for name, stages in attention.items()}


def attdriven_objective(outputs: dict[str, Any], batch: dict[str, jax.Array],
                        config: ml_collections.ConfigDict):
  """Eq. 11: lambda * sum_j l_intra^j + l_inter (softmax CE, Eq. 10).

  Args:
    outputs: ``AttentionDriven.__call__`` outputs.
    batch: must hold ``pids`` (N,).
    config: the ``loss`` section: ``branch_weight`` (lambda) and
      ``label_smoothing`` (0: the paper's plain CE).

  Returns:
    (total, metrics): ``ce_<branch>`` and ``accuracy_<branch>`` per branch,
    ``ce_fused`` / ``accuracy`` of the fused classifier when there is one
    (else ``accuracy`` is the first branch's).
  """
  metrics, branch_total = {}, 0.0
  for name, logits in outputs["branch_logits"].items():
    ce, ce_metrics = losses.cross_entropy_with_label_smoothing(
        logits, batch["pids"], label_smoothing=config.label_smoothing)
    metrics[f"ce_{name}"], metrics[f"accuracy_{name}"] = ce, ce_metrics["accuracy"]
    branch_total = branch_total + ce
  if "fused_logits" in outputs:
    fused, fused_metrics = losses.cross_entropy_with_label_smoothing(
        outputs["fused_logits"], batch["pids"], label_smoothing=config.label_smoothing)
    total = config.branch_weight * branch_total + fused
    metrics.update(ce_fused=fused, accuracy=fused_metrics["accuracy"])
  else:
    total = branch_total
    metrics["accuracy"] = metrics[f"accuracy_{next(iter(outputs['branch_logits']))}"]
  return total, {**metrics, "loss": total}


def _is_classifier(path: tuple[str, ...]) -> bool:
  return any(str(p).endswith("_classifier") for p in path)


def transfer_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any]
                        ) -> dict[str, Any]:
  """A fresh model's variables with every non-classifier leaf from ``pretrained``.

  Args:
    variables: ``{"params", "batch_stats"}`` of the model being trained.
    pretrained: the same of a checkpoint of the same network (any number of
      identities; the ``*_classifier`` layers are not copied).

  Returns:
    New variables (leaves keep the fresh leaves' dtype; ``jax.Array`` leaves
    their sharding).

  Raises:
    ValueError: a leaf is missing from ``pretrained`` or has another shape
      (the network differs: check ``model.backbone`` and the switches).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(variables)))
  source = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(pretrained)))
  out = {}
  for path, leaf in flat.items():
    if _is_classifier(path):
      out[path] = leaf
      continue
    if path not in source or tuple(np.shape(source[path])) != tuple(np.shape(leaf)):
      found = "missing" if path not in source else f"shape {tuple(np.shape(source[path]))}"
      raise ValueError(
          f"model.pretrained does not fit this network: {'/'.join(map(str, path))} has "
          f"shape {tuple(np.shape(leaf))} here, {found} in the checkpoint. It must be a run "
          "of the same configs/attdriven.py network (model.backbone and switches).")
    new = np.asarray(source[path], dtype=np.asarray(leaf).dtype) if not isinstance(
        leaf, jax.Array) else jax.device_put(jnp.asarray(source[path], leaf.dtype),
                                             leaf.sharding)
    out[path] = new
  return flax.traverse_util.unflatten_dict(out)
