"""reidjax: person re-identification in JAX/Flax.

Sub-packages: ``backbones``, ``layers``, ``models``, ``losses``, ``train``,
``evaluate`` (all TensorFlow-free) and ``data`` (tf.data input, CPU only).

``reidjax.restore(workdir)`` returns a trained run's embedder
(``reidjax.inference.ReidEmbedder``: image files or arrays in, features or
distances out); it is imported on first use, so ``import reidjax`` stays light.
"""

__version__ = "0.1.0"


def restore(workdir: str, step: int | None = None):
  """The ``ReidEmbedder`` of ``workdir``'s checkpoint at ``step`` (default: latest)."""
  from reidjax import inference  # pylint: disable=g-import-not-at-top
  return inference.restore(workdir, step)
