"""From the ``data`` config section to a dataset index (and its readers).

``data.name = "synthetic"`` / ``"synthetic_video"`` writes the generated
Market-1501 / MARS layout under ``data.root`` the first time (a no-op
afterwards) and parses it with the real parser; any other name is parsed
from ``data.root`` (``data.options`` go to the parser, e.g. ``split_index``,
``include_val``). Names and parsers: `reidjax.data.layouts`.

``data.source = "tfds"`` reads a dataset prepared by
``reidjax.data.tfds_builders`` instead of the folder; the pipelines then read
images through the returned readers. Only that path imports TensorFlow.
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

from reidjax.data import layouts, synthetic, synthetic_video
from reidjax.data.index import Dataset

SPLITS = ("train", "query", "gallery")
SOURCES = ("folder", "tfds")

# Generated sets: (writer, default root). The writer is a no-op when the set
# is already there with the same arguments.
SYNTHETIC_WRITERS: dict[str, tuple[Callable[..., Any], str]] = {
    "synthetic": (synthetic.write_synthetic_market, "data/synthetic_market"),
    "synthetic_video": (synthetic_video.write_synthetic_mars,
                        "data/synthetic_mars"),
}


def _options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``data.options`` as keyword arguments of the parser (or TFDS config)."""
  return dict(config.get("options", None) or {})


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Parses (and for the synthetic sets, first writes) the dataset of ``config``."""
  options = _options(config)
  if config.name in SYNTHETIC_WRITERS:
    write, default_root = SYNTHETIC_WRITERS[config.name]
    root = config.root or default_root
    write(root, **config.get("synthetic", {}))
    return layouts.parse_dataset(config.name, root, **options)
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
    # Imported here: TensorFlow (via TFDS) is needed on this path only.
    from reidjax.data import tfds_reader  # pylint: disable=g-import-not-at-top
    return tfds_reader.load_prepared(config.name, config.get("tfds_data_dir", "") or None,
                                     **_options(config))
  raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}.")
