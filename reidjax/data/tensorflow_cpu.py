"""TensorFlow for the input pipeline, kept off every accelerator.

Import ``tf`` from here (``from reidjax.data.tensorflow_cpu import tf``) in
every reidjax module that runs TensorFlow (the tf.data pipelines, transforms,
TFDS builders and reader): the first such import hides all GPUs from
TensorFlow before any TF op runs, so TF never takes accelerator memory from
JAX. (tf.data only needs the CPU.) The rest of `reidjax.data` (parsers,
index, synthetic writers, `datasets.load_dataset`) never imports TensorFlow.
"""

import logging

import tensorflow as tf

__all__ = ["tf"]


def _hide_gpus_from_tensorflow() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TF's devices were already initialised.
    if tf.config.get_visible_devices("GPU"):
      logging.warning(
          "reidjax.data: TensorFlow was initialised before reidjax's input "
          "pipeline was imported and can see GPUs %s; it may take "
          "accelerator memory from JAX. Import reidjax.data.pipeline (or "
          "reidjax.data.tensorflow_cpu) before running any TensorFlow op. "
          "(%s)", tf.config.get_visible_devices("GPU"), e)


_hide_gpus_from_tensorflow()
