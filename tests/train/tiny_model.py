"""A tiny embedding model that compiles in about a second, for the reliability
tests (test_reliability.py, run_device_count_resume.py): one 3x3 conv, tanh,
mean pooling, a Dense embedding of 2 x ``model.backbone.width`` with BatchNorm (so
that batch statistics cross devices), and an id classifier; trained by the
baseline's objective (label-smoothed CE + batch-hard triplet). In train.py:
``--config.model.name=tests.train.tiny_model:ENTRY`` on the baseline config
(its backbone is built but only its width is read).

Also the step-by-step setup: SGD with momentum 0.9 and no weight decay (so a
first update is exactly -lr x the gradient) and P4 x K2 batches that are a
pure function of the step.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from reidjax.models import baseline, build_model, interface, registry
from reidjax.train import optimizer


class TinyEmbedding(nn.Module):
  """images (B, H, W, 3) -> {"features": (B, 2 width), "logits": (B, num_classes)}."""

  backbone: Any = None
  num_classes: int = 6
  feature_key: str = ""
  embed_feature: str = "bn"
  center_loss: bool = False
  video: bool = False

  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  def setup(self):
    self.conv = nn.Conv(8, (3, 3), strides=(2, 2))
    self.embedding = nn.Dense(2 * self.backbone.width)
    self.bn = nn.BatchNorm()
    self.fc = nn.Dense(self.num_classes)

  def _features(self, inputs, train: bool):
    # tanh, not relu: XLA's max may drop a NaN, tanh keeps it (the NaN tests).
    x = jnp.tanh(self.conv(inputs["images"])).mean(axis=(1, 2))
    return self.bn(self.embedding(x), use_running_average=not train)

  def __call__(self, inputs, train: bool = False):
    features = self._features(inputs, train)
    return {"features": features, "logits": self.fc(features)}

  def embed(self, inputs):
    """Test-time embeddings (B, 2 width)."""
    return self._features(inputs, train=False)


ENTRY = registry.ModelEntry(TinyEmbedding, baseline.baseline_objective)

LEARNING_RATE = 0.05
NUM_CLASSES = 6
CONFIG = ml_collections.ConfigDict(dict(
    model=dict(name="tests.train.tiny_model:ENTRY", dtype="float32",
               backbone=dict(name="resnet50", stage_sizes=(1, 1, 1, 1), width=4,
                             last_stride=1)),
    loss=dict(label_smoothing=0.1, triplet_margin=0.3, ce_weight=1.0, triplet_weight=1.0),
    optimizer=dict(name="sgd", momentum=0.9, weight_decay=0.0),
    data=dict(height=32, width=16, video=False)))


def model_and_optimizer():
  return (build_model(CONFIG.model, num_classes=NUM_CLASSES),
          optimizer.make_optimizer(CONFIG.optimizer, LEARNING_RATE))


def batch(step: int, nan: bool = False) -> dict[str, np.ndarray]:
  """The batch of ``step``; ``nan``: with one NaN pixel."""
  rng = np.random.default_rng(step)
  images = rng.normal(size=(8, 32, 16, 3)).astype(np.float32)
  if nan:
    images[3, 5, 2, 1] = np.nan
  return {"images": images,
          "pids": np.repeat(rng.permutation(NUM_CLASSES)[:4], 2).astype(np.int32)}
