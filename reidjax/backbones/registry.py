"""Backbones by name: the ``model.backbone`` config section -> a Flax module.

``build_backbone`` is the one place where a backbone section becomes a
module. Every key of the section other than the weight-loading keys
(``name``, ``pretrained``, ``from_scratch``; read by
``torchvision_import.apply_pretrained`` and the training script) is a field
of the backbone class, passed as is: defaults live on the module fields
only, and a key the class does not have is a ``ValueError`` that lists the
accepted ones. Lists become tuples (module fields must be hashable).

Names:

* ``"resnet50"``: ``resnet.ResNet`` (defaults: torchvision ResNet-50 with
  ``last_stride=1``); the name torchvision weights load into. Config keys in
  use: ``stage_sizes``, ``width``, ``last_stride``; any other ``ResNet``
  field works too (then ImageNet weights no longer fit).
* ``"resnet"``: the same class under a name that promises no torchvision
  weights (slim or re-shaped ResNets, e.g. Attention-Driven's branches).
* ``"densenet121"``: ``densenet.DenseNet`` (defaults: DenseNet-121). Config
  keys in use: ``growth_rate``, ``block_config``, ``num_init_features``.

``last_feature_map(name)`` says which key of the backbone's output dict is
its last feature map (the one a head pools).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import difflib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reidjax.backbones import densenet
from reidjax.backbones import resnet

# name -> (module class, key of its last feature map in the output dict).
BACKBONES: dict[str, tuple[type[nn.Module], str]] = {
    "resnet50": (resnet.ResNet, "stage4"),
    "resnet": (resnet.ResNet, "stage4"),
    "densenet121": (densenet.DenseNet, "block4"),
}

# Section keys that describe where the weights come from, not the module.
WEIGHT_KEYS = ("name", "pretrained", "from_scratch")

# Module fields that are not config options (``dtype`` is ``model.dtype``).
_NOT_OPTIONS = ("parent", "name", "dtype")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# ``model.dtype = "auto"`` (configs/common.py MODEL_DTYPE): bfloat16 on the
# platforms whose matrix units run it at full rate, float32 elsewhere (CPU).
AUTO_BFLOAT16_PLATFORMS = ("gpu", "tpu")


def compute_dtype(name: str) -> Any:
  """``model.dtype`` -> the jnp computation dtype; the one place "auto" is resolved.

  ``"float32"``, ``"bfloat16"``, or ``"auto"``: bfloat16 when JAX's default
  backend is a GPU or TPU, float32 on CPU. Parameters, BatchNorm statistics
  and losses stay float32 in every case (the models cast only activations).
  """
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in AUTO_BFLOAT16_PLATFORMS else jnp.float32
  if not isinstance(name, str) or name not in _DTYPES:
    raise ValueError(
        f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r} (or 'auto': "
        "bfloat16 on GPU/TPU, float32 on CPU).")
  return _DTYPES[name]


def _entry(name: str) -> tuple[type[nn.Module], str]:
  if name not in BACKBONES:
    raise ValueError(
        f"Unknown model.backbone.name {name!r}; known: {sorted(BACKBONES)}.")
  return BACKBONES[name]


def last_feature_map(name: str) -> str:
  """The output-dict key of backbone ``name``'s last feature map.

  Args:
    name: a ``model.backbone.name``, e.g. ``"resnet50"``.

  Returns:
    ``"stage4"`` for the ResNets, ``"block4"`` for DenseNet-121.
  """
  return _entry(name)[1]


def backbone_options(name: str) -> tuple[str, ...]:
  """The config keys backbone ``name`` accepts besides ``WEIGHT_KEYS``."""
  cls = _entry(name)[0]
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in _NOT_OPTIONS)


def _hashable(value):
  """Lists (also nested, e.g. per-stage (h, w) strides) -> tuples."""
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def build_backbone(config: Mapping[str, Any], dtype: str) -> nn.Module:
  """The ``model.backbone`` section -> a backbone module.

  Args:
    config: ``name`` plus any fields of that backbone class (a
      ``ConfigDict`` or a mapping); ``pretrained`` and ``from_scratch`` are
      ignored here (weight loading reads them).
    dtype: the computation dtype's name, ``"float32"``, ``"bfloat16"`` or
      ``"auto"`` (``compute_dtype``).

  Returns:
    The module, e.g. ``ResNet(stage_sizes=..., dtype=jnp.bfloat16)``.

  Raises:
    ValueError: unknown name or dtype, or a key that is not an option of
      the backbone (the message names it and lists the accepted ones).
  """
  if "name" not in config:
    raise ValueError(
        f"model.backbone needs a name, one of {sorted(BACKBONES)}; got keys "
        f"{sorted(config.keys())}.")
  name = config["name"]
  cls, _ = _entry(name)
  accepted = backbone_options(name)
  options = {k: config[k] for k in config.keys() if k not in WEIGHT_KEYS}
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    hints = [f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k)
             for k in unknown
             for close in [difflib.get_close_matches(k, accepted, n=1)]]
    if "dtype" in unknown:
      hints.append("(the dtype is model.dtype, not model.backbone.dtype)")
    raise ValueError(
        f"model.backbone.{unknown[0]} is not an option of backbone {name!r} "
        f"({cls.__name__}): unknown {', '.join(hints)}. Accepted: "
        f"{list(accepted)}, plus {list(WEIGHT_KEYS)} for the weights.")
  options = {k: _hashable(v) for k, v in options.items()}
  return cls(dtype=compute_dtype(dtype), **options)
