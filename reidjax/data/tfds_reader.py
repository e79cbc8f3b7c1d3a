"""Reads a prepared TFDS ReID dataset: the index, and random-access readers.

`load_prepared` turns a dataset prepared by `reidjax.data.tfds_builders` back
into the index the folder parser gives (same items, order, pids, camids and
train relabelling; paths replaced by the stored file names, relative to the
dataset root) plus, per split, a `PreparedReader` that the tf.data pipelines
use instead of reading files: ``reader.read(index)`` returns the stored
(original, encoded) image bytes of item ``index``.

The index comes from the small metadata saved beside the records (no image
record is touched); images are read one record at a time from the ArrayRecord
shards through `tf.numpy_function`, so memory stays bounded whatever the
dataset size. TFDS has no in-graph random-access op for ArrayRecord, hence the
NumPy hop (it holds the GIL only while one record is fetched and parsed).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from reidjax.data import tfds_builders
from reidjax.data.tensorflow_cpu import tf
from reidjax.data.index import (Dataset, ImageDataset, ImageSplit,
                                VideoDataset, VideoSplit)


class PreparedReader:
  """Encoded images of one prepared split, by index (the pipeline protocol).

  Index = image index (image split) or flat frame index in
  ``split.frame_table()`` order (video split); record ``index`` of the split
  holds exactly that item (the builders write in parser order).
  """

  def __init__(self, source: Sequence[dict], file_names: Sequence[str],
               label: str):
    """
    Args:
      source: the split's TFDS data source, images left undecoded.
      file_names: (N,) stored file name of each record, from the index.
      label: what to call the split in messages, e.g. "market1501 gallery
        (/data/tfds/market1501/1.0.0)".
    """
    if len(source) != len(file_names):
      raise ValueError(
          f"{label}: {len(source)} records but the saved index lists "
          f"{len(file_names)} files; the prepared dataset is incomplete or "
          "mixed up. Prepare it again with --overwrite.")
    self._source = source
    self._file_names = file_names
    self._label = label

  def __len__(self) -> int:
    return len(self._file_names)

  def read_bytes(self, index: int) -> bytes:
    """The stored image bytes of item ``index`` (eager, Python)."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(
          f"{self._label}: index {index} is outside [0, {len(self)}).")
    example = self._source[index]
    stored = example["file_name"]
    stored = stored.decode("utf-8") if isinstance(stored, bytes) else stored
    if stored != self._file_names[index]:
      raise ValueError(
          f"{self._label}: record {index} holds {stored!r}, but the saved "
          f"index names {self._file_names[index]!r} there. The prepared "
          "files are inconsistent; prepare the dataset again with "
          "--overwrite.")
    return example["image"]

  def read(self, index: tf.Tensor) -> tf.Tensor:
    """int scalar tensor -> scalar tf.string of the encoded image.

    Usable inside `tf.data.Dataset.map` (graph mode) and eagerly.
    """
    def read_one(i):
      # An object array keeps the bytes as they are (a NumPy 'S' array would
      # strip trailing NUL bytes).
      return np.array(self.read_bytes(i), dtype=object)

    data = tf.numpy_function(read_one, [tf.cast(index, tf.int64)], tf.string,
                             stateful=False, name="read_prepared_image")
    return tf.ensure_shape(data, [])

  def name(self, index: int) -> str:
    """Human-readable name of item ``index``, for error messages."""
    index = int(index)
    return f"{self._file_names[index]} (item {index} of {self._label})"


def load_prepared(name: str, data_dir: str, **builder_options,
                  ) -> tuple[Dataset, dict[str, PreparedReader]]:
  """The index and per-split readers of a prepared dataset.

  Args:
    name: a builder name (`tfds_builders.BUILDERS`: market1501, dukemtmc,
      occluded_duke, msmt17, cuhk03, mars, dukemtmc_video, ilidsvid,
      prid2011) or a folder-path alias (cuhk03_labeled, cuhk03_detected).
      Recorded as the index's name.
    data_dir: the TFDS data dir it was prepared into.
    **builder_options: the parser options that pick the config, as the
      folder path takes them: ``variant="detected"`` (cuhk03),
      ``split_index=3`` (ilidsvid, prid2011), ``include_val=True``
      (msmt17); none = the default config.

  Returns:
    (index, readers): an `ImageDataset` / `VideoDataset` whose paths are the
    stored file names and whose root is the prepared dataset's folder, and
    {"train" | "query" | "gallery": `PreparedReader`}.

  Raises:
    ValueError: unknown name or options.
    FileNotFoundError: the dataset (config) is not prepared in data_dir; the
      message gives the command that prepares it.
  """
  cls, config = tfds_builders.resolve(name, **builder_options)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = cls(data_dir=data_dir, config=config)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"Dataset {cls.name}{'/' + config if config else ''} is not prepared "
        f"in {data_dir!r} (no {builder.data_dir}). Prepare it from the "
        f"unpacked dataset with:\n  "
        f"{tfds_builders.prepare_command(cls.name, data_dir, config)}\n"
        f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if builder.info.file_format != tfds_builders.DEFAULT_FILE_FORMAT:
    raise ValueError(
        f"{builder.data_dir} holds {cls.name} as "
        f"{builder.info.file_format.value}, which has no random access; the "
        f"reader needs {tfds_builders.DEFAULT_FILE_FORMAT.value}. Delete that "
        "folder and prepare it again with:\n  "
        f"{tfds_builders.prepare_command(cls.name, data_dir, config)}")
  metadata = builder.info.metadata
  if not isinstance(metadata, tfds_builders.ReidIndexMetadata) or (
      "splits" not in metadata):
    raise ValueError(
        f"{builder.data_dir} holds no reidjax index (metadata.json); it was "
        "not prepared by reidjax.data.tfds_builders. Prepare it again with "
        "--overwrite.")
  root = str(builder.data_dir)
  splits, readers = {}, {}
  for split in tfds_builders.SPLITS:
    entry = metadata["splits"][split]
    names = metadata.file_names(split)
    pids = np.asarray(entry["pids"], np.int32)
    camids = np.asarray(entry["camids"], np.int32)
    if cls.VIDEO:
      num_frames = np.asarray(entry["num_frames"], np.int64)
      if num_frames.sum() != len(names):
        raise ValueError(
            f"{builder.data_dir}: the {split} tracklets have "
            f"{num_frames.sum()} frames but {len(names)} file names are "
            "saved; prepare the dataset again with --overwrite.")
      ends = np.cumsum(num_frames)
      starts = ends - num_frames
      splits[split] = VideoSplit(
          tracklets=tuple(tuple(names[s:e]) for s, e in zip(starts, ends)),
          pids=pids, camids=camids)
    else:
      splits[split] = ImageSplit(paths=names, pids=pids, camids=camids)
    source = builder.as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()})
    readers[split] = PreparedReader(source, names,
                                    f"{cls.name} {split} ({root})")
  kind = VideoDataset if cls.VIDEO else ImageDataset
  return kind(name=name, root=root, **splits), readers
