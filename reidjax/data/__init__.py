"""Datasets and input pipelines (the only part of reidjax that uses TensorFlow).

TensorFlow is hidden from every GPU as soon as this package is imported, so
that it never competes with JAX for accelerator memory.
"""

from reidjax.data.index import ImageDataset, ImageSplit

__all__ = ["ImageDataset", "ImageSplit"]
