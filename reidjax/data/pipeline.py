"""tf.data input pipelines: P x K training batches and ordered eval batches.

Images (``train_batches`` / ``eval_batches``) and video clips
(``train_clip_batches`` / ``eval_clip_batches``; frame choice in
``reidjax.data.clips``). Only indices, ids and cameras are held in memory;
encoded images are fetched lazily inside the tf.data graph by a *reader*
(``FileReader``, the default, reads files on disk; a prepared TFDS dataset can
supply its own reader with the same ``read`` / ``name`` methods) and batches
come out as NumPy dicts, ready for ``jax.device_put`` /
``jax.make_array_from_process_local_data``. For a VideoSplit the reader's
index is the flat frame index into ``split.frame_table()[0]``.

Determinism: training batch k is a pure function of (seed, start_step + k):
the sampler (``reidjax.data.sampler``: P x K identities or plain random
batches; it also holds the process's slice) picks the items, the frames of
the clip at global position j are drawn with a generator seeded by
(seed, step, j), and each image's augmentation is seeded by
``transforms.image_seed(seed, step, j)``.
All frames of a clip share that seed, hence the same flip, crop offset and
erasing box. A resumed run replays the stream exactly.

Pose side inputs (image data only; Attention-Driven ReID). ``train_batches``
and ``eval_batches`` take the model's input ``fields``: "keypoints" adds the
(b, 18, 3) keypoints of each image moved through its augmentation (per-split
(N, 18, 3) ``keypoints`` in original pixels, ``reidjax.data.keypoints``);
"parts" adds the (b, 4, ph, pw, 3) crops of the part boxes R1..R4
(``reidjax.data.part_boxes``, Eq. 1-2) and replaces ``images`` by the
whole-body crop R0 at (H, W). Order: decode -> flip / resize / crop of the
image and its keypoints together -> normalise -> random erasing (of the whole
augmented image, so a crop sees the erased rectangle where it overlaps it)
-> boxes from the augmented keypoints -> crops (outside the image: black, as
zero padding); delivered keypoints are then in R0's pixels. Without these
fields the batches are exactly what they were.
``pose_field_inputs(data_config, dataset, fields)`` builds the per-split
arguments from the config.

Bad files. A file that cannot be read or decoded makes the iterator raise
``FileNotFoundError`` / ``ValueError`` naming it (``reader.name``):
TensorFlow's own error does not say which file failed, so the iterator catches
it, re-reads the failing batch's files eagerly and reports the culprit.

With ``skip_corrupt=True`` (training only) a bad file is instead *replaced*
(``tf.data``'s ``ignore_errors`` would drop it silently and leave a short
batch with a broken P x K structure), keeping batches full-size, P x K intact
and the stream deterministic: an image
by the next readable image of the same identity (in split order, wrapping
around); a video frame by the next readable frame of the same tracklet, else
of the identity's other tracklets. The pipeline discovers bad files lazily (no
up-front scan of a million frames): on an error it finds the file as above,
logs a warning naming it, adds it to the replacement table and rebuilds the
pipeline from the failing batch (dropping what was prefetched: a bad file
costs a pipeline restart, once). Since a replacement is "the first *readable*
candidate", it does not depend on when (or whether, in an earlier run) a file
was found bad, so a resumed run yields the same batches. The iterator's
``stats`` count the distinct bad files (``"corrupt_files"``) and the sampled
items / frames that were replaced in the batches yielded so far
(``"replaced"``); ``corrupt_files`` lists their names. An identity with no
readable image at all is an error: remove it from the split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import re
from typing import Protocol

from absl import logging
import numpy as np

from reidjax.data import clips
from reidjax.data import keypoints as keypoints_lib
from reidjax.data import part_boxes
from reidjax.data import sampler as sampler_lib
from reidjax.data import transforms
from reidjax.data.index import ImageSplit, VideoSplit, is_video
from reidjax.data.tensorflow_cpu import tf

# Errors a bad image file raises from read / decode.
_FILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.DataLossError)
# On an error in batch k, also look in the next few batches in case an
# element surfaced late (it should not: the pipeline is deterministic).
_SEARCH_AHEAD = 2


class Reader(Protocol):
  """Where encoded images come from; indices are int64 item / frame ids."""

  def read(self, index: tf.Tensor) -> tf.Tensor:
    """int64 scalar -> scalar tf.string of encoded image bytes (graph-safe)."""

  def name(self, index: int) -> str:
    """A human-readable name of item ``index`` for error messages."""


class FileReader:
  """Reads image files from disk; item i is ``paths[i]``."""

  def __init__(self, paths: Sequence[str]):
    self._names = tuple(paths)
    # One string tensor, gathered from inside Dataset.map: tf.data passes a
    # captured eager tensor by reference, so even MARS's 1.2M paths cost no
    # graph serialisation.
    self._paths = tf.constant(list(self._names), tf.string)

  def __len__(self) -> int:
    return len(self._names)

  def read(self, index: tf.Tensor) -> tf.Tensor:
    return tf.io.read_file(tf.gather(self._paths, index))

  def name(self, index: int) -> str:
    return self._names[int(index)]


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _find_bad_file(reader: Reader, indices: Iterable[int],
                   skip: Iterable[int] = ()) -> tuple[int, Exception] | None:
  """Returns (index, error) of the first item that fails to read/decode."""
  known = set(skip)
  for i in dict.fromkeys(int(i) for i in indices):  # Unique, in order.
    if i in known:
      continue
    try:
      transforms.decode_image(reader.read(tf.constant(i, tf.int64)))
    except tf.errors.NotFoundError:
      return i, FileNotFoundError(
          f"Image file not found: {reader.name(i)}. The dataset index lists "
          "it: restore the file (re-copy the dataset) or remove it from the "
          "dataset.")
    except _FILE_ERRORS as e:
      # Drop TF's "{{function_node ...}}" prefix; keep libjpeg's reason.
      reason = re.sub(r"\{\{.*?\}\}\s*", "", e.message).rstrip(". ")
      return i, ValueError(
          f"Cannot decode image file {reader.name(i)}: {reason}. Replace it "
          "with an intact copy or delete it (training can skip unreadable "
          "images instead: --config.data.skip_corrupt=True).")
  return None


class _Replacements:
  """Bad items found so far and the readable item standing in for each."""

  def __init__(self, reader: Reader,
               candidates: Callable[[int], Iterable[int]]):
    self._reader = reader
    # candidates(i): the items that may replace item i, in preference order.
    self._candidates = candidates
    self.table: dict[int, int] = {}

  def add(self, index: int) -> None:
    """Marks ``index`` bad and (re)chooses a readable stand-in for each."""
    self.table[index] = -1
    for bad in self.table:
      self.table[bad] = self._choose(bad)

  def _choose(self, bad: int) -> int:
    for candidate in self._candidates(bad):
      candidate = int(candidate)
      if candidate != bad and candidate not in self.table:
        # Unreadable candidates are found when a batch reads them.
        return candidate
    raise ValueError(
        f"No readable replacement for the corrupt image file "
        f"{self._reader.name(bad)}: every other image of its identity is "
        f"unreadable too. Fix the files or remove the identity from the "
        f"split.")

  def snapshot(self) -> Mapping[int, int]:
    return dict(self.table)


def _apply(table: Mapping[int, int], indices: np.ndarray) -> np.ndarray:
  """``indices`` with every bad item replaced by its stand-in."""
  if not table:
    return indices
  out = np.array(indices, np.int64)
  for pos in np.flatnonzero(np.isin(out, list(table))):
    out.flat[pos] = table[int(out.flat[pos])]
  return out


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Iterates a pipeline's batches as NumPy; names or replaces bad files.

  Attributes:
    stats: {"corrupt_files": distinct bad files replaced so far,
      "replaced": items / frames replaced in the batches yielded so far}.
    corrupt_files: names of the bad files replaced so far, in order found.
  """

  def __init__(self,
               build: Callable[[int, Mapping[int, int]], tf.data.Dataset],
               batch_items: Callable[[int], np.ndarray],
               reader: Reader,
               replacements: _Replacements | None = None):
    """Starts the pipeline.

    Args:
      build: (k, replacement table) -> the batched dataset whose first batch
        is batch k of the stream (0-based, from this iterator's start).
      batch_items: k -> reader indices batch k reads, before replacement
        (-1 = padding, read nothing); empty past the end.
      reader: the reader ``build`` reads with.
      replacements: the table to grow on a bad file; None raises instead.
    """
    self._build = build
    self._batch_items = batch_items
    self._reader = reader
    self._replacements = replacements
    self._k = 0
    self.stats = {"corrupt_files": 0, "replaced": 0}
    self.corrupt_files: list[str] = []
    self._iterator = self._start()

  def _table(self) -> Mapping[int, int]:
    return self._replacements.snapshot() if self._replacements else {}

  def _start(self):
    return self._build(self._k, self._table()).as_numpy_iterator()

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      try:
        batch = next(self._iterator)
      except _FILE_ERRORS as e:
        self._handle(e)
        continue
      if self._replacements is not None and self._replacements.table:
        items = self._batch_items(self._k)
        self.stats["replaced"] += int(
            np.isin(items, list(self._replacements.table)).sum())
      self._k += 1
      return batch

  def close(self) -> None:
    """Stops the pipeline: drops the TF iterator and its prefetch threads."""
    self._iterator = iter(())

  def _handle(self, error: Exception) -> None:
    """Raises the error naming the bad file, or replaces it and restarts."""
    known = self._replacements.table if self._replacements else {}
    for j in range(self._k, self._k + 1 + _SEARCH_AHEAD):
      items = _apply(known, self._batch_items(j))
      found = _find_bad_file(self._reader, items[items >= 0], skip=known)
      if found is None:
        continue
      index, named_error = found
      if self._replacements is None:
        raise named_error from error
      self._replacements.add(index)
      self.stats["corrupt_files"] += 1
      self.corrupt_files.append(self._reader.name(index))
      logging.warning(
          "Skipping unreadable image file (skip_corrupt=True) %s: %s; it is "
          "replaced by %s.", self._reader.name(index), named_error,
          self._reader.name(self._replacements.table[index]))
      self._iterator = self._start()
      return
    raise error


# Input fields a pipeline can add to images / pids / camids.
POSE_FIELDS = ("keypoints", "parts")
_BASE_FIELDS = ("images", "camids")


def _check_pose_inputs(function: str, fields: Sequence[str], num_items: int,
                       keypoints: np.ndarray | None,
                       parts: part_boxes.PartConfig | None) -> bool:
  """Checks the pose arguments; True if the pipeline needs the keypoints."""
  unknown = [f for f in fields if f not in _BASE_FIELDS + POSE_FIELDS]
  if unknown:
    raise ValueError(f"{function}: unknown input field(s) {unknown}; the "
                     f"pipelines deliver {list(_BASE_FIELDS + POSE_FIELDS)}.")
  if "parts" in fields and parts is None:
    raise ValueError(
        f"{function}: the model takes 'parts' but no PartConfig was given "
        "(set data.parts = configs.common.parts_config()).")
  needs = "keypoints" in fields or ("parts" in fields and
                                    parts.source == "pose")
  if needs:
    if keypoints is None:
      wanted = [f for f in fields if f in POSE_FIELDS]
      raise ValueError(
          f"{function}: the model takes {wanted} with data.parts.source="
          "'pose', which needs the split's keypoints; none were given "
          "(keypoints.load_keypoints).")
    if np.shape(keypoints) != (num_items, keypoints_lib.NUM_JOINTS, 3):
      raise ValueError(
          f"{function}: keypoints have shape {np.shape(keypoints)}, expected "
          f"({num_items}, {keypoints_lib.NUM_JOINTS}, 3) for this split.")
  return needs


def _pose_finisher(fields: Sequence[str], parts: part_boxes.PartConfig | None,
                   height: int, width: int):
  """Batch -> batch with parts cut out (images = R0) and fields trimmed."""

  def finish(batch):
    batch = dict(batch)
    if "parts" in fields:
      keypoints = batch.get("keypoints")
      if keypoints is None:  # Stripes: the boxes need no keypoints.
        keypoints = tf.zeros([tf.shape(batch["images"])[0],
                              keypoints_lib.NUM_JOINTS, 3], tf.float32)
      boxes = part_boxes.part_boxes_tf(keypoints, height, width, parts)
      batch["images"], batch["parts"] = part_boxes.crop_parts_tf(
          batch["images"], boxes, parts, fill=transforms.NORMALIZED_BLACK)
      if "keypoints" in batch:
        batch["keypoints"] = part_boxes.to_box_frame_tf(
            batch["keypoints"], boxes[:, 0], height, width)
    if "keypoints" not in fields:
      batch.pop("keypoints", None)
    elif "keypoints" in batch:  # Missing joints read (0, 0, 0).
      keypoints = batch["keypoints"]
      batch["keypoints"] = tf.where(keypoints[..., 2:] > 0, keypoints, 0.0)
    return batch

  return finish


def pose_field_inputs(data_config, dataset, fields: Sequence[str]
                      ) -> dict[str, dict]:
  """Per split ("train", "query", "gallery"), the pose arguments of the
  pipelines for a model taking ``fields``: {"fields", "keypoints", "parts"}.

  Without "keypoints" / "parts" in ``fields`` every split gets
  ``{"fields": ("images",)}`` and no file is read.

  Raises:
    ValueError: pose fields on video data, or no ``data.parts`` section.
    FileNotFoundError / ValueError: a missing or mismatched keypoints file
      (``reidjax.data.keypoints``).
  """
  wanted = tuple(f for f in fields if f in POSE_FIELDS)
  splits = {"train": dataset.train, "query": dataset.query,
            "gallery": dataset.gallery}
  if not wanted:
    return {name: {"fields": ("images",)} for name in splits}
  if is_video(dataset):
    raise ValueError(
        f"The model takes {list(wanted)}, which the pipelines deliver for "
        f"image data only, but {dataset.name} is a video dataset.")
  if data_config.get("parts", None) is None:
    raise ValueError(
        f"The model takes {list(wanted)} but the data config has no 'parts' "
        "section: set data.parts = configs.common.parts_config().")
  parts = part_boxes.PartConfig.from_config(data_config.parts)
  needs = "keypoints" in wanted or parts.source == "pose"
  out = {}
  loaded = {}
  for name, split in splits.items():
    keypoints = None
    if needs:
      if id(split) not in loaded:
        loaded[id(split)] = keypoints_lib.load_keypoints(
            keypoints_lib.split_keypoints_path(data_config, name),
            split.paths, unmatched=data_config.parts.unmatched)
      keypoints = loaded[id(split)]
    out[name] = {"fields": ("images",) + wanted, "keypoints": keypoints,
                 "parts": parts if "parts" in wanted else None}
  return out


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in "
                     f"[0, process_count={process_count}).")


def _image_candidates(pids: np.ndarray) -> Callable[[int], Iterable[int]]:
  """i -> the other images of i's identity, in split order after i."""

  def candidates(i):
    members = np.flatnonzero(pids == pids[i])
    return np.roll(members, -int(np.searchsorted(members, i)) - 1)

  return candidates


def _frame_candidates(split: VideoSplit,
                      offsets: np.ndarray) -> Callable[[int], Iterable[int]]:
  """f -> the tracklet's other frames after f, then its identity's others."""
  counts = split.num_frames

  def candidates(f):
    t = int(np.searchsorted(offsets, f, side="right")) - 1
    own = offsets[t] + np.roll(np.arange(counts[t]), -(f - offsets[t]) - 1)
    yield from own
    siblings = np.flatnonzero(split.pids == split.pids[t])
    siblings = np.roll(siblings, -int(np.searchsorted(siblings, t)) - 1)
    for u in siblings:
      if u != t:
        yield from offsets[u] + np.arange(counts[u])

  return candidates


def _generated_steps(start_step: int, make: Callable[[int], tuple],
                     signature: tuple) -> tf.data.Dataset:
  """A dataset of ``make(step)`` for step = start_step, start_step + 1, ..."""

  def generate():
    step = start_step
    while True:
      yield make(step)
      step += 1

  return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _check_sampler(function: str, pids: np.ndarray,
                   sampler: sampler_lib.Sampler, process_index: int | None,
                   process_count: int | None) -> None:
  """Checks that ``sampler`` was built for this split (and process)."""
  if sampler.num_items != len(pids):
    raise ValueError(
        f"{function}: the sampler was built for {sampler.num_items} items but "
        f"the split has {len(pids)}; build it from this split's pids.")
  given = (process_index, process_count)
  own = (sampler.process_index, sampler.process_count)
  if any(g is not None and g != o for g, o in zip(given, own)):
    raise ValueError(
        f"{function}: process_index / process_count {given} differ from the "
        f"sampler's {own}; the sampler holds the process slice.")


def train_batches(split: ImageSplit,
                  *,
                  augment: transforms.AugmentConfig,
                  seed: int,
                  sampler: sampler_lib.Sampler,
                  start_step: int = 0,
                  reader: Reader | None = None,
                  skip_corrupt: bool = False,
                  process_index: int | None = None,
                  process_count: int | None = None,
                  fields: Sequence[str] = ("images",),
                  keypoints: np.ndarray | None = None,
                  parts: part_boxes.PartConfig | None = None
                  ) -> BatchIterator:
  """Infinite iterator of augmented training batches (this process's).

  Batch ``k`` is the sampler's local batch at step ``start_step + k``,
  augmented with seeds derived from (seed, step, position in the global
  batch), so the stream is reproducible and a resumed run continues it
  exactly.

  Args:
    split: the training split (pids relabelled 0..num_pids-1).
    augment: augmentation settings (output size included).
    seed: non-negative int seeding augmentation.
    sampler: picks the images and holds this process's slice; built from
      ``split.pids`` (``sampler.make_sampler(config.data, split.pids, ...)``).
    start_step: the training step of the first batch.
    reader: where images come from (default: ``FileReader(split.paths)``).
    skip_corrupt: replace unreadable images by readable ones of the same
      identity instead of raising (see the module docstring).
    process_index: optional; if given, must equal ``sampler.process_index``.
    process_count: optional; if given, must equal ``sampler.process_count``.
    fields: the model's input fields; "keypoints" / "parts" add those
      fields (see the module docstring).
    keypoints: (N, 18, 3) keypoints of the split in original pixels; needed
      for "keypoints", and for "parts" with ``parts.source == "pose"``.
    parts: part settings; needed for "parts".

  Returns:
    A BatchIterator (``stats`` counts skipped files) yielding
    {"images": float32 (b, H, W, 3), "pids": int32 (b,),
     "camids": int32 (b,)} with b = ``sampler.local_batch_size``, plus
    "keypoints" float32 (b, 18, 3) and "parts" float32 (b, 4, ph, pw, 3) when
    ``fields`` asks for them.
  """
  _check_sampler("train_batches", split.pids, sampler, process_index,
                 process_count)
  needs_keypoints = _check_pose_inputs("train_batches", fields, len(split),
                                       keypoints, parts)
  keypoint_table = (tf.constant(keypoints, tf.float32) if needs_keypoints
                    else None)
  reader = FileReader(split.paths) if reader is None else reader
  b = sampler.local_batch_size
  first_position = sampler.process_index * b
  pids = tf.constant(split.pids, tf.int32)
  camids = tf.constant(split.camids, tf.int32)

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
    out = {"pids": tf.gather(pids, i), "camids": tf.gather(camids, i)}
    if needs_keypoints:
      out["images"], out["keypoints"] = transforms.preprocess_train_keypoints(
          reader.read(i), tf.gather(keypoint_table, i), augment, image_seed)
    else:
      out["images"] = transforms.preprocess_train(reader.read(i), augment,
                                                  image_seed)
    return out

  def build(k, table):
    # The generator yields one small index array per step; file reading and
    # augmentation run in parallel in the graph. It runs in a tf.data thread
    # (the samplers' epoch caches are thread-safe).
    dataset = _generated_steps(
        start_step + k,
        lambda step: (step, _apply(table, sampler.local_batch(step))),
        (tf.TensorSpec([], tf.int64), tf.TensorSpec([b], tf.int64)))
    dataset = dataset.flat_map(explode)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(b, drop_remainder=True)
    if needs_keypoints or "parts" in fields:
      dataset = dataset.map(
          _pose_finisher(fields, parts, augment.height, augment.width),
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

  replacements = (_Replacements(reader, _image_candidates(split.pids))
                  if skip_corrupt else None)
  return BatchIterator(build, lambda k: sampler.local_batch(start_step + k),
                       reader, replacements)


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


def _check_eval_args(batch_size: int, process_index: int,
                     process_count: int) -> None:
  if process_count < 1 or batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"eval batch size ({batch_size}) must be a positive multiple of the "
        f"process count ({process_count}).")
  _check_process(process_index, process_count)


def _load_eval(reader: Reader, index: tf.Tensor, height: int,
               width: int) -> tf.Tensor:
  """float32 (height, width, 3) of item ``index``; zeros for -1 (padding)."""
  return tf.cond(
      index >= 0,
      lambda: transforms.preprocess_eval(
          reader.read(tf.maximum(index, 0)), height, width),
      lambda: tf.zeros((height, width, 3), tf.float32))


def _load_eval_keypoints(reader: Reader, index: tf.Tensor,
                         keypoints: tf.Tensor, height: int,
                         width: int) -> tuple[tf.Tensor, tf.Tensor]:
  """``_load_eval`` and the item's keypoints in its pixels (zeros for -1)."""
  return tf.cond(
      index >= 0,
      lambda: transforms.preprocess_eval_keypoints(
          reader.read(tf.maximum(index, 0)),
          tf.gather(keypoints, tf.maximum(index, 0)), height, width),
      lambda: (tf.zeros((height, width, 3), tf.float32),
               tf.zeros((keypoints_lib.NUM_JOINTS, 3), tf.float32)))


def eval_batches(split: ImageSplit,
                 *,
                 batch_size: int,
                 height: int,
                 width: int,
                 process_index: int = 0,
                 process_count: int = 1,
                 reader: Reader | None = None,
                 fields: Sequence[str] = ("images",),
                 keypoints: np.ndarray | None = None,
                 parts: part_boxes.PartConfig | None = None) -> BatchIterator:
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
    reader: where images come from (default: ``FileReader(split.paths)``).
    fields: the model's input fields; "keypoints" / "parts" add those
      fields (see the module docstring; padding rows get the stripes).
    keypoints: (N, 18, 3) keypoints of the split in original pixels; needed
      for "keypoints", and for "parts" with ``parts.source == "pose"``.
    parts: part settings; needed for "parts".

  Yields:
    {"images": float32 (b, H, W, 3) (zeros for padding),
     "pids": int32 (b,), "camids": int32 (b,) (-1 for padding),
     "mask": bool (b,) False for padding,
     "index": int32 (b,) dataset index, -1 for padding} with b = B / n,
    plus "keypoints" float32 (b, 18, 3) and "parts" float32
    (b, 4, ph, pw, 3) when ``fields`` asks for them.
  """
  _check_eval_args(batch_size, process_index, process_count)
  needs_keypoints = _check_pose_inputs("eval_batches", fields, len(split),
                                       keypoints, parts)
  keypoint_table = (tf.constant(keypoints, tf.float32) if needs_keypoints
                    else None)
  reader = FileReader(split.paths) if reader is None else reader
  local_indices = _eval_local_indices(len(split), batch_size, process_index,
                                      process_count)
  b = local_indices.shape[1]
  pids = tf.constant(split.pids, tf.int32)
  camids = tf.constant(split.camids, tf.int32)

  def load(i):
    valid = i >= 0
    j = tf.maximum(i, 0)  # Padding reads nothing, but gather needs an index.
    out = {
        "pids": tf.where(valid, tf.gather(pids, j), -1),
        "camids": tf.where(valid, tf.gather(camids, j), -1),
        "mask": valid,
        "index": tf.cast(i, tf.int32),
    }
    if needs_keypoints:
      out["images"], out["keypoints"] = _load_eval_keypoints(
          reader, i, keypoint_table, height, width)
    else:
      out["images"] = _load_eval(reader, i, height, width)
    return out

  def build(k, table):
    del table  # Evaluation never replaces files.
    dataset = tf.data.Dataset.from_tensor_slices(
        local_indices[k:].reshape(-1))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(b, drop_remainder=True)
    if needs_keypoints or "parts" in fields:
      dataset = dataset.map(_pose_finisher(fields, parts, height, width),
                            num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

  def batch_items(k):
    if k >= local_indices.shape[0]:
      return np.zeros(0, np.int64)
    return local_indices[k]

  return BatchIterator(build, batch_items, reader)


def train_clip_batches(split: VideoSplit,
                       *,
                       clip_length: int,
                       strategy: str,
                       stride: int = 8,
                       augment: transforms.AugmentConfig,
                       seed: int,
                       sampler: sampler_lib.Sampler,
                       start_step: int = 0,
                       reader: Reader | None = None,
                       skip_corrupt: bool = False,
                       process_index: int | None = None,
                       process_count: int | None = None) -> BatchIterator:
  """Infinite iterator of augmented batches of tracklet clips.

  The sampler draws the tracklets (one item = one tracklet; e.g. P
  identities x K tracklets); the clip of the tracklet at global position j of
  step s is ``clips.sample_clip(..., rng)`` with rng seeded by (seed, s, j),
  and all its frames are augmented alike with
  ``transforms.image_seed(seed, s, j)``.

  Args:
    split: the training split (pids relabelled 0..num_pids-1).
    clip_length: n, frames per clip.
    strategy: a ``clips.TRAIN_STRATEGIES`` name.
    stride: frame step of the "stride" strategy.
    augment: augmentation settings (output size included).
    seed: non-negative int seeding frame choice and augmentation.
    sampler: picks the tracklets and holds this process's slice; built from
      ``split.pids`` (the tracklets' pids).
    start_step: the training step of the first batch.
    reader: where frames come from, indexed by flat frame index (default:
      ``FileReader(split.frame_table()[0])``).
    skip_corrupt: replace unreadable frames by readable ones of the same
      tracklet (else identity) instead of raising.
    process_index: optional; if given, must equal ``sampler.process_index``.
    process_count: optional; if given, must equal ``sampler.process_count``.

  Returns:
    A BatchIterator yielding {"images": float32 (b, n, H, W, 3),
    "pids": int32 (b,), "camids": int32 (b,)} with b =
    ``sampler.local_batch_size``.
  """
  _check_sampler("train_clip_batches", split.pids, sampler, process_index,
                 process_count)
  # Fail now, not in the generator thread, on a bad strategy or length.
  clips.sample_clip(1, clip_length, strategy, np.random.default_rng(0),
                    stride=stride)
  paths, offsets = split.frame_table()
  reader = FileReader(paths) if reader is None else reader
  num_frames = split.num_frames
  b, n = sampler.local_batch_size, clip_length
  first_position = sampler.process_index * b
  pids = tf.constant(split.pids, tf.int32)
  camids = tf.constant(split.camids, tf.int32)

  def clip_frames(step):
    """(b,) tracklets and (b, n) flat frame indices of this step's clips."""
    tracklets = sampler.local_batch(step)
    frames = np.empty((b, n), np.int64)
    for j, t in enumerate(tracklets):
      # Tag 2: a stream apart from the samplers' (tags 0, 1, 3 and 4).
      rng = np.random.default_rng([seed, 2, step, first_position + j])
      frames[j] = offsets[t] + clips.sample_clip(
          int(num_frames[t]), n, strategy, rng, stride=stride)
    return tracklets, frames

  def explode(step, tracklets, frames):
    # One element per frame; a clip's frames share its position (its seed).
    return tf.data.Dataset.from_tensor_slices({
        "frame": tf.reshape(frames, [-1]),
        "tracklet": tf.repeat(tracklets, n),
        "step": tf.fill([b * n], step),
        "position": tf.repeat(tf.range(first_position, first_position + b,
                                       dtype=tf.int64), n),
    })

  def load(element):
    image_seed = transforms.image_seed(seed, element["step"],
                                       element["position"])
    t = element["tracklet"]
    return {"images": transforms.preprocess_train(
                reader.read(element["frame"]), augment, image_seed),
            "pids": tf.gather(pids, t), "camids": tf.gather(camids, t)}

  def to_clips(batch):
    return {"images": tf.reshape(batch["images"],
                                 [b, n, augment.height, augment.width, 3]),
            "pids": batch["pids"][::n], "camids": batch["camids"][::n]}

  def build(k, table):

    def make(step):
      tracklets, frames = clip_frames(step)
      return step, tracklets, _apply(table, frames)

    dataset = _generated_steps(
        start_step + k, make,
        (tf.TensorSpec([], tf.int64), tf.TensorSpec([b], tf.int64),
         tf.TensorSpec([b, n], tf.int64)))
    dataset = dataset.flat_map(explode)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(b * n, drop_remainder=True).map(to_clips)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

  replacements = (_Replacements(reader, _frame_candidates(split, offsets))
                  if skip_corrupt else None)
  return BatchIterator(
      build, lambda k: clip_frames(start_step + k)[1].reshape(-1),
      reader, replacements)


def eval_clip_batches(split: VideoSplit,
                      plan: clips.ClipPlan,
                      *,
                      batch_size: int,
                      height: int,
                      width: int,
                      process_index: int = 0,
                      process_count: int = 1,
                      reader: Reader | None = None) -> BatchIterator:
  """Iterates over a plan's clips once in plan order, without augmentation.

  Like ``eval_batches`` with the plan's clips as items: the C clips are cut
  into ``num_eval_batches(C, batch_size)`` global batches, the last padded,
  and process i takes the slice ``[i*B/n, (i+1)*B/n)`` of each.

  Args:
    split: the split the plan was made for (query or gallery).
    plan: ``clips.plan_test_clips(split, ...)``.
    batch_size: global batch size B (clips); divisible by process_count.
    height: output height H.
    width: output width W.
    process_index: this process, in [0, process_count).
    process_count: number of processes.
    reader: where frames come from, indexed by flat frame index (default:
      ``FileReader(split.frame_table()[0])``).

  Yields:
    {"images": float32 (b, n, H, W, 3) (zeros for padding),
     "pids": int32 (b,), "camids": int32 (b,) (-1 for padding),
     "mask": bool (b,) False for padding,
     "index": int32 (b,) clip index into the plan, -1 for padding}
    with b = B / process_count; ``plan.tracklet[index]`` is the tracklet.
  """
  _check_eval_args(batch_size, process_index, process_count)
  num_frames = split.num_frames
  if plan.num_clips and (
      plan.tracklet.min() < 0 or plan.tracklet.max() >= len(split) or
      plan.frames.min() < 0 or
      (plan.frames.max(1) >= num_frames[plan.tracklet]).any()):
    raise ValueError(
        f"eval_clip_batches: the ClipPlan ({plan.num_clips} clips) does not "
        f"fit this split of {len(split)} tracklets: make it with "
        f"clips.plan_test_clips(split, ...) for this very split.")
  paths, offsets = split.frame_table()
  reader = FileReader(paths) if reader is None else reader
  n = plan.clip_length
  local_clips = _eval_local_indices(plan.num_clips, batch_size, process_index,
                                    process_count)
  b = local_clips.shape[1]
  # (num_batches, b, n) flat frame indices, -1 for padding.
  safe = np.maximum(local_clips, 0)
  local_frames = np.where(
      local_clips[..., None] >= 0,
      offsets[plan.tracklet[safe]][..., None] + plan.frames[safe], -1)
  pids = tf.constant(split.pids[plan.tracklet], tf.int32)
  camids = tf.constant(split.camids[plan.tracklet], tf.int32)

  def load(element):
    return {"images": _load_eval(reader, element["frame"], height, width),
            "clip": element["clip"]}

  def to_clips(batch):
    index = batch["clip"][::n]
    valid = index >= 0
    j = tf.maximum(index, 0)
    return {"images": tf.reshape(batch["images"], [b, n, height, width, 3]),
            "pids": tf.where(valid, tf.gather(pids, j), -1),
            "camids": tf.where(valid, tf.gather(camids, j), -1),
            "mask": valid, "index": tf.cast(index, tf.int32)}

  def build(k, table):
    del table  # Evaluation never replaces files.
    dataset = tf.data.Dataset.from_tensor_slices({
        "frame": local_frames[k:].reshape(-1),
        "clip": np.repeat(local_clips[k:].reshape(-1), n),
    })
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(b * n, drop_remainder=True).map(to_clips)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

  def batch_items(k):
    if k >= local_frames.shape[0]:
      return np.zeros(0, np.int64)
    return local_frames[k].reshape(-1)

  return BatchIterator(build, batch_items, reader)
