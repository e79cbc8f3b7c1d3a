"""The layout registry: dataset names, their parsers, options and defaults;
and the module rules of the parsers (no importlib, no private imports)."""

import ast
import pathlib

import numpy as np
import pytest

from configs import common
from reidjax.data import (cuhk03, custom_layout, index, layouts,
                          market_layouts, msmt17, video_layouts)
from tests.data.test_layouts import _make_market
from tests.data.test_video_layouts import _make_mars

DATA_DIR = pathlib.Path(layouts.__file__).parent


def test_dataset_names_image_then_video():
  assert layouts.IMAGE_DATASETS == (
      "market1501", "dukemtmc", "occluded_duke", "msmt17", "cuhk03_labeled",
      "cuhk03_detected", "custom", "synthetic")
  assert layouts.VIDEO_DATASETS == (
      "mars", "dukemtmc_video", "ilidsvid", "prid2011", "synthetic_video")
  assert layouts.DATASETS == layouts.IMAGE_DATASETS + layouts.VIDEO_DATASETS
  assert set(layouts.DATASETS) == set(layouts.LAYOUTS)
  assert set(layouts.SYNTHETIC_DATASETS) <= set(layouts.DATASETS)
  assert [layouts.is_video_dataset(n) for n in layouts.DATASETS] == (
      [False] * 8 + [True] * 5)


def test_configs_take_the_registry_lists():
  # One list, not a copy that can drift.
  assert common.IMAGE_DATASETS is layouts.IMAGE_DATASETS
  assert common.VIDEO_DATASETS is layouts.VIDEO_DATASETS
  assert common.DATASETS is layouts.DATASETS
  common.check_dataset("msmt17", "configs/x.py")
  with pytest.raises(ValueError, match="got 'market'"):
    common.check_dataset("market", "configs/x.py")


def test_each_name_maps_to_its_family_parser():
  parsers = {n: (layout.parser, dict(layout.fixed))
             for n, layout in layouts.LAYOUTS.items()}
  assert parsers == {
      "market1501": (market_layouts.parse_market1501, {}),
      "dukemtmc": (market_layouts.parse_dukemtmc, {}),
      "occluded_duke": (market_layouts.parse_occluded_duke, {}),
      "msmt17": (msmt17.parse_msmt17, {}),
      "cuhk03_labeled": (cuhk03.parse_cuhk03, {"variant": "labeled"}),
      "cuhk03_detected": (cuhk03.parse_cuhk03, {"variant": "detected"}),
      "custom": (custom_layout.parse_custom, {}),
      "synthetic": (market_layouts.parse_market1501, {}),
      "mars": (video_layouts.parse_mars, {}),
      "dukemtmc_video": (video_layouts.parse_dukemtmc_video, {}),
      "ilidsvid": (video_layouts.parse_ilidsvid, {}),
      "prid2011": (video_layouts.parse_prid2011, {}),
      "synthetic_video": (video_layouts.parse_mars, {}),
  }


def test_options_and_their_defaults():
  defaults = {n: layouts.default_options(n) for n in layouts.DATASETS}
  assert defaults == {
      "market1501": {}, "dukemtmc": {}, "occluded_duke": {},
      "msmt17": {"include_val": False},
      "cuhk03_labeled": {"split": "767/700", "classic_split": 0},
      "cuhk03_detected": {"split": "767/700", "classic_split": 0}, "custom": {}, "synthetic": {}, "mars": {},
      "dukemtmc_video": {}, "ilidsvid": {"split_index": 0},
      "prid2011": {"split_index": 0, "seed": 0, "min_frames": 21},
      "synthetic_video": {}}
  # Every option has a default, so a config can start from default_options.
  assert all(tuple(defaults[n]) == layouts.layout_options(n)
             for n in layouts.DATASETS)
  with pytest.raises(ValueError, match="'msmt17' does not take option.*"
                     "'split_index'; it accepts 'include_val'"):
    layouts.parse_dataset("msmt17", "/nowhere", split_index=1)
  with pytest.raises(ValueError, match="Unknown dataset layout 'msmt'"):
    layouts.default_options("msmt")


def test_synthetic_names_parse_their_layouts(tmp_path):
  market = _make_market(tmp_path / "market")
  ds = layouts.parse_dataset("synthetic", str(market))
  direct = market_layouts.parse_market1501(str(market))
  assert isinstance(ds, index.ImageDataset) and ds.name == "synthetic"
  for split in ("train", "query", "gallery"):
    assert getattr(ds, split).paths == getattr(direct, split).paths
    np.testing.assert_array_equal(getattr(ds, split).pids,
                                  getattr(direct, split).pids)

  mars = _make_mars(tmp_path / "mars")
  ds = layouts.parse_dataset("synthetic_video", str(mars))
  direct = video_layouts.parse_mars(str(mars))
  assert isinstance(ds, index.VideoDataset) and ds.name == "synthetic_video"
  assert ds.gallery.tracklets == direct.gallery.tracklets


def _imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield None, alias.name
    elif isinstance(node, ast.ImportFrom):
      for alias in node.names:
        yield node.module, alias.name


def test_no_importlib_and_no_private_imports_across_modules():
  modules = sorted(DATA_DIR.glob("*.py"))
  assert len(modules) >= 10
  offending = []
  for path in modules:
    for module, name in _imports(path):
      if name == "importlib" or (module or "").startswith("importlib"):
        offending.append(f"{path.name}: imports importlib")
      if module and module.startswith("reidjax") and name.startswith("_"):
        offending.append(f"{path.name}: from {module} import {name}")
  assert not offending, offending
