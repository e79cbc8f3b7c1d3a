"""Models by name: ``model.name`` -> a model class and its objective.

``build_model`` is the one place where a ``model`` config section becomes a
module: every key of the section other than ``name``, ``backbone``,
``dtype`` and ``num_classes`` is a field of the model class, passed as is
(defaults live in the config, not here); a key the class does not have is a
clear error that lists the accepted ones. ``backbone`` is built by
``reidjax.backbones.build_backbone`` and the model reads its last map
(``feature_key``).

Your own model: put ``ENTRY = ModelEntry(MyModule, my_objective)`` in an
importable module and set ``--config.model.name=my_package.my_module:ENTRY``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from reidjax.backbones import build_backbone, last_feature_map
from reidjax.models import attdriven, baseline, cacenet, dcanet, duatm, fgra, interface

Objective = Callable[[dict[str, Any], dict[str, jax.Array], ml_collections.ConfigDict],
                     tuple[Any, dict[str, Any]]]

# Config keys that are not fields of the model class.
_SECTION_KEYS = ("name", "backbone", "dtype", "num_classes")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A model class and the objective that trains it.

  ``transfer_pretrained(fresh, restored)``: for models whose ``model.pretrained``
  names a reidjax run of the same network (no ImageNet weights exist), the
  variables to start from (``reidjax.train.state.start_from_run``).
  """
  model: type[nn.Module]
  objective: Objective
  transfer_pretrained: Callable[[Any, Any], dict[str, Any]] | None = None


MODELS: dict[str, ModelEntry] = {
    "baseline": ModelEntry(baseline.StrongBaseline, baseline.baseline_objective),
    "duatm": ModelEntry(duatm.DuATM, duatm.duatm_objective),
    "dcanet": ModelEntry(dcanet.DCANet, dcanet.dcanet_objective),
    "cacenet": ModelEntry(cacenet.CACENet, cacenet.cacenet_objective),
    "fgra": ModelEntry(fgra.FGRA, fgra.fgra_objective),
    "attdriven": ModelEntry(attdriven.AttentionDriven, attdriven.attdriven_objective,
                            attdriven.transfer_pretrained),
}


def model_entry(name: str) -> ModelEntry:
  """A name of ``MODELS``, or ``"package.module:ATTRIBUTE"`` naming a ``ModelEntry``."""
  if name in MODELS:
    return MODELS[name]
  if ":" in name:
    module_name, _, attribute = name.partition(":")
    entry = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(entry, ModelEntry):
      raise ValueError(f"model.name {name!r}: {module_name}.{attribute} must be a "
                       f"reidjax.models.registry.ModelEntry, got {type(entry).__name__}.")
    return entry
  raise ValueError(f"Unknown model.name {name!r}; known: {sorted(MODELS)}, or "
                   "'package.module:ENTRY' for a ModelEntry of your own.")


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The ``model`` config section -> a Flax module for ``num_classes`` ids."""
  cls = model_entry(config.name).model
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  options = {k: v for k, v in config.items() if k not in _SECTION_KEYS}
  unknown = sorted(set(options) - fields)
  if unknown:
    accepted = sorted(fields - {"backbone", "num_classes", "feature_key"})
    raise ValueError(f"model.{unknown[0]} is not an option of model {config.name!r} "
                     f"({cls.__name__}); accepted: {accepted}.")
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  backbone = build_backbone(config.backbone, config.get("dtype", "float32"))
  model = cls(backbone=backbone, num_classes=num_classes,
              feature_key=last_feature_map(config.backbone.name), **options)
  interface.model_kind(model)
  interface.input_fields(model)
  return model


def get_objective(name: str) -> Objective:
  return model_entry(name).objective
