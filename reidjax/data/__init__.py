"""Datasets and input pipelines (the only part of reidjax that uses TensorFlow).

TensorFlow is hidden from every GPU as soon as this package is imported, so
that it never competes with JAX for accelerator memory.
"""

import logging

import tensorflow as tf

# Hide GPUs from TensorFlow before any TF op runs: tf.data only needs the CPU,
# and a TF that sees the GPU would grab its memory from under JAX.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError as e:  # TF's devices were already initialised.
  if tf.config.get_visible_devices("GPU"):
    logging.warning(
        "reidjax.data: TensorFlow was initialised before reidjax.data was "
        "imported and can see GPUs %s; it may take accelerator memory from "
        "JAX. Import reidjax.data first. (%s)",
        tf.config.get_visible_devices("GPU"), e)

from reidjax.data.index import ImageDataset, ImageSplit, VideoDataset, VideoSplit, is_video  # pylint: disable=g-import-not-at-top

__all__ = ["ImageDataset", "ImageSplit", "VideoDataset", "VideoSplit", "is_video"]
