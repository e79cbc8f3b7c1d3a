"""Models by name: the config's ``model.name`` picks a builder and an objective.

A builder turns the ``model`` config section and the number of training
identities into a ``flax.linen.Module`` (see ``interface``); an objective
turns that module's training outputs and the batch into (loss, metrics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from reidjax.backbones.densenet import densenet121
from reidjax.backbones.resnet import ResNet
from reidjax.models import baseline, duatm

Objective = Callable[[dict[str, Any], dict[str, Any], ml_collections.ConfigDict],
                     tuple[Any, dict[str, Any]]]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The backbone output a head pools: its last feature map.
LAST_FEATURE_MAP = {"resnet50": "stage4", "densenet121": "block4"}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  build: Callable[[ml_collections.ConfigDict, int], nn.Module]
  objective: Objective


def compute_dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}.")
  return _DTYPES[name]


def build_backbone(config: ml_collections.ConfigDict, dtype: str) -> nn.Module:
  """The ``model.backbone`` section -> a backbone module."""
  if config.name == "resnet50":
    # stage_sizes / width may shrink the same architecture for CPU runs.
    return ResNet(stage_sizes=tuple(config.get("stage_sizes", (3, 4, 6, 3))),
                  width=config.get("width", 64),
                  last_stride=config.get("last_stride", 1),
                  dtype=compute_dtype(dtype))
  if config.name == "densenet121":
    # growth_rate / block_config / num_init_features may shrink it for CPU runs.
    shrink = {k: (tuple(config[k]) if k == "block_config" else config[k])
              for k in ("growth_rate", "block_config", "num_init_features")
              if k in config}
    return densenet121(dtype=compute_dtype(dtype), **shrink)
  raise ValueError(f"Unknown model.backbone.name {config.name!r}; known: "
                   "['densenet121', 'resnet50'].")


def _build_baseline(config: ml_collections.ConfigDict, num_classes: int):
  return baseline.StrongBaseline(
      backbone=build_backbone(config.backbone, config.get("dtype", "float32")),
      num_classes=num_classes,
      feature_key=LAST_FEATURE_MAP[config.backbone.name],
      embed_feature=config.get("embed_feature", "bn"),
      video=config.get("video", False))


def _build_duatm(config: ml_collections.ConfigDict, num_classes: int):
  return duatm.DuATM(
      backbone=build_backbone(config.backbone, config.get("dtype", "float32")),
      num_classes=num_classes,
      feature_key=LAST_FEATURE_MAP[config.backbone.name],
      dim=config.get("dim", 256), video=config.get("video", False),
      matching=config.get("matching", "full"),
      corruption_probability=config.get("corruption_probability", 0.2),
      classifier_bn=config.get("classifier_bn", True))


MODELS: dict[str, ModelEntry] = {
    "baseline": ModelEntry(_build_baseline, baseline.baseline_objective),
    "duatm": ModelEntry(_build_duatm, duatm.duatm_objective),
}


def _entry(name: str) -> ModelEntry:
  if name not in MODELS:
    raise ValueError(f"Unknown model.name {name!r}; known: {sorted(MODELS)}.")
  return MODELS[name]


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The ``model`` config section -> a Flax module for ``num_classes`` ids."""
  return _entry(config.name).build(config, num_classes)


def get_objective(name: str) -> Objective:
  return _entry(name).objective
