"""A model that needs a second input field (``camids``), for the contract tests.

The baseline plus a learnable per-camera offset added to the pooled feature
(a camera-aware embedding in the spirit of TransReID's side information).
Run through train.py as ``--config.model.name=tests.models.camera_model:ENTRY``.
"""

from typing import ClassVar

import flax.linen as nn
import jax

from reidjax.models import baseline, registry


class CameraOffsets(nn.Module):
  """camids (B,) -> (B, dim) rows of a learnable (num_cameras, dim) table."""

  num_cameras: int

  @nn.compact
  def __call__(self, camids: jax.Array, dim: int) -> jax.Array:
    table = self.param("table", nn.initializers.zeros, (self.num_cameras, dim))
    return table[camids]


class CameraAwareBaseline(baseline.StrongBaseline):
  num_cameras: int = 8

  input_fields: ClassVar[tuple[str, ...]] = ("images", "camids")

  def setup(self):
    super().setup()
    self.camera_offsets = CameraOffsets(self.num_cameras)

  def pooled(self, inputs, train):
    features = super().pooled(inputs, train)
    return features + self.camera_offsets(inputs["camids"], features.shape[-1])


ENTRY = registry.ModelEntry(CameraAwareBaseline, baseline.baseline_objective)
