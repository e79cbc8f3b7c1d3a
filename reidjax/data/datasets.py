"""From the ``data`` config section to a dataset index (and its readers).

``data.name = "synthetic"`` / ``"synthetic_video"`` writes the generated
Market-1501 / MARS layout under ``data.root`` the first time (a no-op
afterwards) and parses it with the real parser; any other name is parsed
from ``data.root`` (``data.options`` go to the parser, e.g. ``split_index``).

``data.source = "tfds"`` reads a dataset prepared by
``reidjax.data.tfds_builders`` instead of the folder; the pipelines then read
images through the returned readers.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from reidjax.data import layouts, synthetic, synthetic_video, video_layouts
from reidjax.data.index import Dataset

SPLITS = ("train", "query", "gallery")
SOURCES = ("folder", "tfds")


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Parses (and for the synthetic sets, first writes) the dataset of ``config``."""
  options = dict(config.get("options", None) or {})
  if config.name == "synthetic":
    root = config.root or "data/synthetic_market"
    synthetic.write_synthetic_market(root, **config.get("synthetic", {}))
    return layouts.parse_market1501(root, name="synthetic")
  if config.name == "synthetic_video":
    root = config.root or "data/synthetic_mars"
    synthetic_video.write_synthetic_mars(root, **config.get("synthetic", {}))
    return video_layouts.parse_mars(root, name="synthetic_video")
  if not config.root:
    raise ValueError(
        f"data.root is empty: point it at the unpacked {config.name} folder, "
        f"e.g. --config.data.root=/data/{config.name}, or use a synthetic "
        "set (configs/<paper>.py:synthetic or :synthetic_video).")
  return layouts.parse_dataset(config.name, config.root, **options)


def load_data(config: ml_collections.ConfigDict) -> tuple[Dataset, dict[str, Any]]:
  """The dataset index and a reader per split (None: read the files on disk)."""
  source = config.get("source", "folder")
  if source == "folder":
    return load_dataset(config), dict.fromkeys(SPLITS)
  if source == "tfds":
    from reidjax.data import tfds_reader  # pylint: disable=g-import-not-at-top
    options = dict(config.get("options", None) or {})
    return tfds_reader.load_prepared(config.name, config.get("tfds_data_dir", "") or None,
                                     **options)
  raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}.")
