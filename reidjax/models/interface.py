"""What every reidjax model is: an *embedding* model or a *pair* model.

Embedding models (the strong baseline, DCANet, FGRA, Attention-Driven ReID)
map an image to one vector, so query-gallery distances are one matrix
product. Pair models (DuATM, CACE-Net) compare two items with a function of
both; the evaluator calls their ``pair_distance`` tile by tile.

A model is a ``flax.linen.Module`` with

- ``__call__(images, train) -> dict``: the training outputs its objective
  needs (features, logits, attention maps ...).
- ``embed(images) -> (N, D)`` for embedding models, or a dict of per-item
  arrays (e.g. ``{"sequence": (N, S, D), "global": (N, D)}``) for pair models,
  always in inference mode.
- pair models only: ``pair_distance(a, b) -> (Na, Nb)`` on the outputs of
  ``embed`` for two tiles of items.

and a class attribute ``kind`` (``EMBEDDING`` or ``PAIR``). Call a method
with ``model.apply(variables, images, method="embed")``.
"""

from __future__ import annotations

from typing import Any

EMBEDDING = "embedding"
PAIR = "pair"
KINDS = (EMBEDDING, PAIR)


def model_kind(model: Any) -> str:
  """Returns ``EMBEDDING`` or ``PAIR`` and checks the model has its methods."""
  kind = getattr(model, "kind", None)
  if kind not in KINDS:
    raise TypeError(
        f"{type(model).__name__} must set the class attribute kind to one of "
        f"{KINDS}, got {kind!r}.")
  needed = ("embed", "pair_distance") if kind == PAIR else ("embed",)
  missing = [m for m in needed if not callable(getattr(model, m, None))]
  if missing:
    raise TypeError(f"{type(model).__name__} is a {kind} model but has no "
                    f"{', '.join(missing)} method.")
  return kind
