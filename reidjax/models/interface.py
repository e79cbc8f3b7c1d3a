"""What every reidjax model is: an *embedding* model or a *pair* model.

Embedding models (the strong baseline, DCANet, FGRA, Attention-Driven ReID)
map an item to one vector, so query-gallery distances are one matrix
product. Pair models (DuATM, CACE-Net) compare two items with a function of
both; the evaluator calls their ``pair_distance`` tile by tile.

Inputs are a dict of named per-item arrays. A model declares the fields it
needs in the class attribute ``input_fields`` (default ``("images",)``); the
pipelines always deliver ``images`` and ``camids``, and ``keypoints`` /
``parts`` only to a model that declares them (``reidjax.data.build``
is given the model's fields), and the train step, the initialisation, the
evaluator, ``ReidEmbedder`` and the restore target all pass
``select_inputs(model, batch)``: the same dict, the declared fields only.

Pose side inputs (Attention-Driven ReID; ``reidjax.data.keypoints``,
``reidjax.data.part_boxes``, config ``data.parts``): ``keypoints`` are the
18 COCO-18 joints [x, y, confidence] of each image in the pixels of the
delivered ``images`` (after augmentation; confidence 0 = missing);
``parts`` are the crops of the part boxes R1..R4 (head, upper body, upper
legs, lower legs). A model that asks for ``parts`` gets as ``images`` the
whole-body crop R0, resized to (data.height, data.width). Image data only.

A model is a ``flax.linen.Module`` with

- ``__call__(inputs, train) -> dict``: the training outputs its objective
  needs (features, logits, attention maps ...).
- ``embed(inputs) -> (N, D)`` for embedding models, or a dict of per-item
  arrays (e.g. ``{"sequence": (N, S, D), "global": (N, D)}``) for pair models,
  always in inference mode.
- pair models only: ``features(inputs, mirrored=False)`` -> a dict of
  per-item float arrays that can be averaged over test-time augmentations
  (``mirrored=True``: the inputs were flipped, and the features are put back
  into the unflipped layout, e.g. a spatial sequence's columns reversed);
  ``prepare(features)`` -> the ``embed`` dict (``embed = prepare o
  features``); ``pair_distance(a, b) -> (Na, Nb)`` on the outputs of
  ``embed`` for two tiles of items.

and a class attribute ``kind`` (``EMBEDDING`` or ``PAIR``). Call a method
with ``model.apply(variables, inputs, method="embed")``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

EMBEDDING = "embedding"
PAIR = "pair"
KINDS = (EMBEDDING, PAIR)

# Per-item input fields the pipelines deliver, with (per-item shape, dtype)
# as a function of the ``data`` config section. New fields are added here and
# to the pipelines together.
FIELDS = {
    # (H, W, 3) images, or (T, H, W, 3) clips; ImageNet-normalised float32.
    # With "parts" requested: the whole-body crop R0.
    "images": (lambda data: ((data.clip_length,) if data.get("video", False) else ())
               + (data.height, data.width, 3), np.float32),
    # The camera of each item (int32 scalar); camera-aware models use it.
    "camids": (lambda data: (), np.int32),
    # (18, 3) COCO-18 [x, y, confidence] in the pixels of the delivered images.
    "keypoints": (lambda data: (18, 3), np.float32),
    # (4, parts.height, parts.width, 3) part crops R1..R4, normalised like images.
    "parts": (lambda data: (4, data.parts.height, data.parts.width, 3), np.float32),
}
# Fields that are images, mirrored by flip test-time augmentation: a part
# crop's mirror is the crop of the mirrored image's part (the part boxes are
# mirror-equivariant, ``reidjax.data.part_boxes``).
IMAGE_FIELDS = ("images", "parts")
# Fields that flip test-time augmentation cannot mirror by reversing an axis
# (x -> W - x and left / right joints swapped): evaluation with flip refuses
# models that take them (``check_flip``).
UNMIRRORED_FIELDS = ("keypoints",)


def check_flip(fields, flip: bool) -> None:
  """Raises if flip test-time augmentation would mis-mirror one of ``fields``."""
  bad = [f for f in fields if f in UNMIRRORED_FIELDS]
  if flip and bad:
    raise ValueError(
        f"eval.flip=True mirrors only the image fields {IMAGE_FIELDS}, but the "
        f"model takes {bad}, which a mirror must also transform (x -> W - x, "
        "left and right joints swapped). Set --config.eval.flip=False.")


def model_kind(model: Any) -> str:
  """Returns ``EMBEDDING`` or ``PAIR`` and checks the model has its methods."""
  kind = getattr(model, "kind", None)
  if kind not in KINDS:
    raise TypeError(
        f"{type(model).__name__} must set the class attribute kind to one of "
        f"{KINDS}, got {kind!r}.")
  needed = (("embed", "features", "prepare", "pair_distance") if kind == PAIR
            else ("embed",))
  missing = [m for m in needed if not callable(getattr(model, m, None))]
  if missing:
    raise TypeError(f"{type(model).__name__} is a {kind} model but has no "
                    f"{', '.join(missing)} method.")
  return kind


def input_fields(model: Any) -> tuple[str, ...]:
  """The input fields ``model`` declares (``("images",)`` when it declares none)."""
  fields = tuple(getattr(model, "input_fields", ("images",)))
  unknown = [f for f in fields if f not in FIELDS]
  if unknown or "images" not in fields:
    raise TypeError(
        f"{type(model).__name__}.input_fields = {fields}: every model needs "
        f"'images', and the pipelines deliver only {sorted(FIELDS)}"
        + (f" (unknown: {unknown})." if unknown else "."))
  return fields


def select_inputs(model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
  """The model's declared fields of ``batch``, with a clear error if one is missing."""
  fields = input_fields(model)
  missing = [f for f in fields if f not in batch]
  if missing:
    raise KeyError(f"{type(model).__name__} needs input fields {list(fields)}, but "
                   f"the batch has only {sorted(batch)} (missing {missing}).")
  return {f: batch[f] for f in fields}


def input_specs(model: Any, data_config: Any, batch_size: int = 1) -> dict[str, tuple]:
  """``{field: ((batch_size, *per_item_shape), dtype)}`` from the ``data`` section."""
  return {f: ((batch_size, *FIELDS[f][0](data_config)), FIELDS[f][1])
          for f in input_fields(model)}


def example_inputs(model: Any, data_config: Any, batch_size: int = 1) -> dict[str, np.ndarray]:
  """Zero inputs of the declared fields, e.g. to initialise the model."""
  return {f: np.zeros(shape, dtype)
          for f, (shape, dtype) in input_specs(model, data_config, batch_size).items()}
