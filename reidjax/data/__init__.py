"""Datasets and input pipelines (the only part of reidjax that uses TensorFlow).

Importing this package does not import TensorFlow: the layout parsers
(`layouts` and the per-family modules it maps names to), the `index`, the
synthetic writers and `datasets.load_dataset` are plain Python/NumPy and run
on hosts without TensorFlow. The tf.data pipelines, transforms and TFDS
modules import it through `tensorflow_cpu`, which hides every GPU from
TensorFlow so that it never competes with JAX for accelerator memory.
"""

from reidjax.data.index import ImageDataset, ImageSplit, VideoDataset, VideoSplit, is_video

__all__ = ["ImageDataset", "ImageSplit", "VideoDataset", "VideoSplit", "is_video"]
