"""Dataset name -> layout parser: the one list of datasets reidjax reads.

`parse_dataset(name, root, **options)` indexes the dataset ``name`` found at
``root`` with its family's parser:

  image: market1501, dukemtmc, occluded_duke   `market_layouts`
         msmt17                                `msmt17`
         cuhk03_labeled, cuhk03_detected       `cuhk03`
         custom                                `custom_layout`
         synthetic (the generated set, written in the Market-1501 layout by
         `reidjax.data.synthetic`)
  video: mars, dukemtmc_video, ilidsvid, prid2011   `video_layouts`
         synthetic_video (generated MARS layout, `reidjax.data.synthetic_video`)

`IMAGE_DATASETS` / `VIDEO_DATASETS` are these names; the configs take their
dataset lists from here. Helpers shared by the parsers live in
`layout_common`, whose errors are re-exported here for callers of
`parse_dataset`. Plain Python/NumPy (+ scipy for .mat files): nothing here
imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

from reidjax.data.cuhk03 import parse_cuhk03
from reidjax.data.custom_layout import parse_custom
from reidjax.data.index import Dataset
from reidjax.data.layout_common import (DatasetNotFoundError, LayoutError,
                                        StatisticsError)
from reidjax.data.market_layouts import (parse_dukemtmc, parse_market1501,
                                         parse_occluded_duke)
from reidjax.data.msmt17 import parse_msmt17
from reidjax.data.video_layouts import (parse_dukemtmc_video, parse_ilidsvid,
                                        parse_mars, parse_prid2011)

__all__ = [
    "DATASETS", "IMAGE_DATASETS", "LAYOUTS", "SYNTHETIC_DATASETS",
    "VIDEO_DATASETS", "DatasetNotFoundError", "Layout", "LayoutError",
    "StatisticsError", "default_options", "is_video_dataset", "layout_options",
    "parse_cuhk03", "parse_custom", "parse_dataset", "parse_dukemtmc",
    "parse_dukemtmc_video", "parse_ilidsvid", "parse_market1501", "parse_mars",
    "parse_msmt17", "parse_occluded_duke", "parse_prid2011",
]


@dataclasses.dataclass(frozen=True)
class Layout:
  """The parser of one dataset name, and what the name fixes.

  Attributes:
    parser: called as ``parser(root, name=<dataset name>, **fixed,
      **options)``; its other keyword-only parameters are the user options.
    fixed: keyword arguments implied by the name (e.g. the CUHK03 variant);
      not accepted as user options.
    video: the parser returns a `VideoDataset` (tracklets), not an
      `ImageDataset`.
  """

  parser: Callable[..., Dataset]
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  video: bool = False


# Insertion order is the order of IMAGE_DATASETS / VIDEO_DATASETS.
LAYOUTS: dict[str, Layout] = {
    "market1501": Layout(parse_market1501),
    "dukemtmc": Layout(parse_dukemtmc),
    "occluded_duke": Layout(parse_occluded_duke),
    "msmt17": Layout(parse_msmt17),
    "cuhk03_labeled": Layout(parse_cuhk03, {"variant": "labeled"}),
    "cuhk03_detected": Layout(parse_cuhk03, {"variant": "detected"}),
    "custom": Layout(parse_custom),
    "synthetic": Layout(parse_market1501),
    "mars": Layout(parse_mars, video=True),
    "dukemtmc_video": Layout(parse_dukemtmc_video, video=True),
    "ilidsvid": Layout(parse_ilidsvid, video=True),
    "prid2011": Layout(parse_prid2011, video=True),
    "synthetic_video": Layout(parse_mars, video=True),
}

IMAGE_DATASETS: tuple[str, ...] = tuple(
    n for n, layout in LAYOUTS.items() if not layout.video)
VIDEO_DATASETS: tuple[str, ...] = tuple(
    n for n, layout in LAYOUTS.items() if layout.video)
DATASETS: tuple[str, ...] = IMAGE_DATASETS + VIDEO_DATASETS
# Generated sets: `reidjax.data.datasets.load_dataset` writes them first.
SYNTHETIC_DATASETS: tuple[str, ...] = ("synthetic", "synthetic_video")


def _layout(name: str) -> Layout:
  try:
    return LAYOUTS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset layout {name!r}; known layouts: "
        f"{', '.join(sorted(LAYOUTS))}.") from None


def _option_parameters(name: str) -> list[inspect.Parameter]:
  layout = _layout(name)
  params = inspect.signature(layout.parser).parameters.values()
  return [p for p in params
          if p.kind is inspect.Parameter.KEYWORD_ONLY
          and p.name != "name" and p.name not in layout.fixed]


def is_video_dataset(name: str) -> bool:
  """True if `parse_dataset(name, ...)` returns a `VideoDataset`."""
  return _layout(name).video


def layout_options(name: str) -> tuple[str, ...]:
  """The options (keyword arguments) `parse_dataset(name, ...)` accepts."""
  return tuple(p.name for p in _option_parameters(name))


def default_options(name: str) -> dict[str, Any]:
  """Each option of `layout_options(name)` with the parser's default.

  E.g. ``{"include_val": False}`` for msmt17, ``{"split_index": 0}`` for
  ilidsvid; ``{}`` for a dataset without options. A config's
  ``data.options`` can start from this, so every default is written once, in
  the parser's signature.
  """
  return {p.name: p.default for p in _option_parameters(name)
          if p.default is not inspect.Parameter.empty}


def parse_dataset(name: str, root: str, **options) -> Dataset:
  """Parses the dataset `name` (a key of `LAYOUTS`) found at `root`.

  Args:
    name: dataset name; also recorded as the index's name.
    root: the dataset folder.
    **options: passed to the parser, e.g. ``split_index=3`` for iLIDS-VID or
      PRID-2011, ``include_val=True`` for MSMT17; see `layout_options(name)`.

  Returns:
    An `ImageDataset`, or a `VideoDataset` for names in `VIDEO_DATASETS`.

  Raises:
    ValueError: unknown name, or an option the parser does not take.
    LayoutError (DatasetNotFoundError, StatisticsError): from the parser.
  """
  layout = _layout(name)
  accepted = layout_options(name)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(
        f"Dataset layout {name!r} does not take option(s) "
        f"{', '.join(map(repr, unknown))}; it accepts "
        f"{', '.join(map(repr, accepted)) if accepted else 'no options'}.")
  return layout.parser(root, name=name, **layout.fixed, **options)
