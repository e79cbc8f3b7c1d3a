"""tf.data input pipelines: P x K training batches and ordered eval batches.

Images are read from disk lazily inside the tf.data graph (only paths, ids
and cameras are held in memory) and come out as NumPy dicts, ready for
``jax.device_put`` / ``jax.make_array_from_process_local_data``.

A file that cannot be read or decoded makes the iterator raise
``FileNotFoundError`` / ``ValueError`` naming the file: TensorFlow's own
decode error does not say which file failed, so the iterator catches it,
re-decodes the failing batch's files eagerly and reports the culprit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import re

import numpy as np
import tensorflow as tf

from reidjax.data import transforms
from reidjax.data.index import ImageSplit
from reidjax.data.sampler import IdentitySampler

# Errors a bad image file raises from read_file / decode.
_FILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.DataLossError)
# On an error in batch k, also look in the next few batches in case an
# element surfaced late (it should not: the pipeline is deterministic).
_SEARCH_AHEAD = 2


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _find_bad_file(paths: Sequence[str]) -> tuple[str, Exception] | None:
  """Returns (path, error) of the first file that fails to read/decode."""
  for path in dict.fromkeys(paths):  # Unique, in order.
    if not tf.io.gfile.exists(path):
      return path, FileNotFoundError(f"Image file not found: {path}")
    try:
      transforms.decode_image(tf.io.read_file(path))
    except _FILE_ERRORS as e:
      # Drop TF's "{{function_node ...}}" prefix; keep libjpeg's reason.
      reason = re.sub(r"\{\{.*?\}\}\s*", "", e.message)
      return path, ValueError(f"Cannot decode image file {path}: {reason}")
  return None


def _iterate(dataset: tf.data.Dataset,
             batch_paths: Callable[[int], Sequence[str]]) -> Iterator[dict]:
  """Iterates ``dataset`` as NumPy, naming the file behind a read error.

  Args:
    dataset: the batched dataset.
    batch_paths: k -> paths of the files read for the k-th batch (0-based,
      counted from the start of this iteration).

  Yields:
    The dataset's batches as dicts of NumPy arrays.
  """
  iterator = dataset.as_numpy_iterator()
  k = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except _FILE_ERRORS as e:
      for j in range(k, k + 1 + _SEARCH_AHEAD):
        paths = batch_paths(j)
        found = _find_bad_file(paths) if paths else None
        if found is not None:
          raise found[1] from e
      raise
    yield batch
    k += 1


def _lookup_tables(split: ImageSplit):
  return (tf.constant(list(split.paths), tf.string),
          tf.constant(split.pids, tf.int32),
          tf.constant(split.camids, tf.int32))


def train_batches(split: ImageSplit,
                  *,
                  num_identities: int,
                  num_instances: int,
                  augment: transforms.AugmentConfig,
                  seed: int,
                  start_step: int = 0,
                  process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of augmented P x K training batches (this process's).

  Batch ``k`` is the sampler's batch at step ``start_step + k``, augmented
  with seeds derived from (seed, step, position in the global batch), so the
  stream is reproducible and a resumed run continues it exactly.

  Args:
    split: the training split (pids relabelled 0..num_pids-1).
    num_identities: P (``data.num_identities``).
    num_instances: K (``data.num_instances``).
    augment: augmentation settings (output size included).
    seed: non-negative int seeding both sampling and augmentation.
    start_step: the training step of the first batch.
    process_index: this process, in [0, process_count).
    process_count: number of processes; each gets P*K / process_count images.

  Yields:
    {"images": float32 (B, H, W, 3), "pids": int32 (B,),
     "camids": int32 (B,)} with B = P * K / process_count.
  """
  sampler = IdentitySampler(split.pids, num_identities, num_instances, seed,
                            process_index=process_index,
                            process_count=process_count)
  b = sampler.local_batch_size
  first_position = process_index * b
  paths, pids, camids = _lookup_tables(split)

  def generate():
    step = start_step
    while True:
      yield step, sampler.local_batch(step)
      step += 1

  def explode(step, indices):
    # One element per image, carrying what its augmentation seed needs.
    return tf.data.Dataset.from_tensor_slices({
        "index": indices,
        "step": tf.fill([b], step),
        "position": tf.range(first_position, first_position + b,
                             dtype=tf.int64),
    })

  def load(element):
    i = element["index"]
    image_seed = transforms.image_seed(seed, element["step"],
                                       element["position"])
    image = transforms.preprocess_train(
        tf.io.read_file(tf.gather(paths, i)), augment, image_seed)
    return {"images": image, "pids": tf.gather(pids, i),
            "camids": tf.gather(camids, i)}

  # The generator yields one small index array per step; file reading and
  # augmentation run in parallel in the graph.
  dataset = tf.data.Dataset.from_generator(
      generate,
      output_signature=(tf.TensorSpec([], tf.int64),
                        tf.TensorSpec([b], tf.int64)))
  dataset = dataset.flat_map(explode)
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dataset = dataset.batch(b, drop_remainder=True)
  dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

  def batch_paths(k):
    return [split.paths[i] for i in sampler.local_batch(start_step + k)]

  return _iterate(dataset, batch_paths)


def num_eval_batches(n: int, batch_size: int) -> int:
  """Number of (global) eval batches covering n images: ceil(n / batch_size)."""
  return -(-n // batch_size)


def _eval_local_indices(n: int, batch_size: int, process_index: int,
                        process_count: int) -> np.ndarray:
  """Returns (num_batches, batch_size / process_count) int64, -1 = padding."""
  num_batches = num_eval_batches(n, batch_size)
  padded = np.full(num_batches * batch_size, -1, np.int64)
  padded[:n] = np.arange(n)
  local = batch_size // process_count
  per_batch = padded.reshape(num_batches, batch_size)
  return per_batch[:, process_index * local:(process_index + 1) * local]


def eval_batches(split: ImageSplit,
                 *,
                 batch_size: int,
                 height: int,
                 width: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over a split once in dataset order, without augmentation.

  The split is cut into ``num_eval_batches(len(split), batch_size)`` global
  batches, the last padded to full size; process i takes the contiguous
  slice ``[i*B/n, (i+1)*B/n)`` of each global batch (B = batch_size, n =
  process_count), so every process yields the same number of batches.

  Args:
    split: the split (query or gallery).
    batch_size: global batch size B; must be divisible by process_count.
    height: output height H.
    width: output width W.
    process_index: this process, in [0, process_count).
    process_count: number of processes.

  Yields:
    {"images": float32 (b, H, W, 3) (zeros for padding),
     "pids": int32 (b,), "camids": int32 (b,) (-1 for padding),
     "mask": bool (b,) False for padding,
     "index": int32 (b,) dataset index, -1 for padding} with b = B / n.
  """
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"eval batch size ({batch_size}) must be a positive multiple of the "
        f"process count ({process_count}).")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in "
                     f"[0, process_count={process_count}).")
  local_indices = _eval_local_indices(len(split), batch_size, process_index,
                                      process_count)
  b = local_indices.shape[1]
  paths, pids, camids = _lookup_tables(split)

  def load(i):
    valid = i >= 0
    j = tf.maximum(i, 0)  # Padding reads nothing, but gather needs an index.
    image = tf.cond(
        valid,
        lambda: transforms.preprocess_eval(
            tf.io.read_file(tf.gather(paths, j)), height, width),
        lambda: tf.zeros((height, width, 3), tf.float32))
    return {
        "images": image,
        "pids": tf.where(valid, tf.gather(pids, j), -1),
        "camids": tf.where(valid, tf.gather(camids, j), -1),
        "mask": valid,
        "index": tf.cast(i, tf.int32),
    }

  dataset = tf.data.Dataset.from_tensor_slices(local_indices.reshape(-1))
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dataset = dataset.batch(b, drop_remainder=True)
  dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

  def batch_paths(k):
    if k >= local_indices.shape[0]:
      return []
    return [split.paths[i] for i in local_indices[k] if i >= 0]

  return _iterate(dataset, batch_paths)
