"""Every input a user can get wrong, and the message each one gives.

Issue 17, item 5: each test feeds one bad input (a missing or misnamed
dataset folder, an empty split, a corrupt image, a .mat without its
variables, a list file with a bad line, a bad --config override, settings
that cannot work together, a pretrained file of another architecture, a
pickle that runs code) and checks that the error names the culprit (the
file, folder or value) and says what to do. The randomised tests at the end
throw generated file names at every layout parser's name parsing and accept
only a parse or our own `LayoutError` (`DatasetNotFoundError` is one), never
an IndexError, OverflowError or other traceback.

No paper equations here; the readings taken: reidjax pads every short
tracklet circularly (``reidjax.data.clips``), so "a clip longer than any
tracklet" is not an error but a documented circular read, checked as such.
"""

import atexit
import itertools
import os
import pathlib
import shutil
import tempfile
import types

from absl import flags
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis import configuration as hypothesis_configuration
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest
import scipy.io
import torch

from configs import common as config_common
from reidjax import sharding
from reidjax.backbones import torchvision_import
from reidjax.backbones.torchvision_import import WeightImportError
from reidjax.data import clips
from reidjax.data import cuhk03
from reidjax.data import custom_layout
from reidjax.data import datasets
from reidjax.data import layout_common
from reidjax.data import layouts
from reidjax.data import market_layouts
from reidjax.data import msmt17
from reidjax.data import pipeline
from reidjax.data import tfds_reader
from reidjax.data import video_layouts as vl
from reidjax.data.layout_common import LayoutError
from reidjax.layers import dcam
from tests.data import test_pipeline as image_pipeline_tests
from tests.data import test_video_pipeline as video_pipeline_tests
from tests.data.test_cuhk03 import (_make_cuhk03, _rows, _split_rows,
                                    _write_config)
from tests.data.test_layouts import _TRAIN, _make_market
from tests.data.test_layouts_more import (_CUSTOM, _DUKE_QUERY, _MSMT_LISTS,
                                          _make_custom, _make_duke, _make_msmt)
from tests.data.test_pipeline import _truncate
from tests.data.test_video_layouts import (_DUKE_VIDEO, _make_duke_video,
                                           _make_ilids, _make_mars, _make_prid,
                                           _touch)


# Hypothesis keeps caches (even with database=None) under its home folder,
# by default .hypothesis/ in the working tree: keep them out of the repo.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="reidjax_hypothesis_")
hypothesis_configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)


# ------------------------------------------------ missing / misnamed folders --

# What each layout names when its root holds only a misnamed folder: the
# piece it looked for. Every layout of the registry must be listed.
_EXPECTED_PIECE = {
    "market1501": "'bounding_box_train/'",
    "dukemtmc": "'bounding_box_train/'",
    "occluded_duke": "'bounding_box_train/'",
    "msmt17": "'train/' + 'test/' (V1)",
    "cuhk03_labeled": "'cuhk03_new_protocol_config_labeled.mat'",
    "cuhk03_detected": "'cuhk03_new_protocol_config_detected.mat'",
    "custom": "'train/'",
    "synthetic": "'bounding_box_train/'",
    "mars": "'bbox_train/'",
    "dukemtmc_video": "'train/'",
    "ilidsvid": "cam1",
    "prid2011": "cam_a",
    "synthetic_video": "'bbox_train/'",
}


def test_every_layout_is_covered():
  assert set(_EXPECTED_PIECE) == set(layouts.LAYOUTS)


@pytest.mark.parametrize("name", sorted(layouts.LAYOUTS))
def test_missing_root_names_it_and_the_flag(tmp_path, name):
  root = str(tmp_path / "not_here")
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    layouts.parse_dataset(name, root)
  message = str(e.value)
  assert repr(root) in message and "does not exist" in message
  assert "--config.data.root" in message  # the fix


@pytest.mark.parametrize("name", sorted(layouts.LAYOUTS))
def test_misnamed_folder_names_the_missing_piece(tmp_path, name):
  (tmp_path / "Images").mkdir()  # e.g. a re-packed copy with its own names
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    layouts.parse_dataset(name, str(tmp_path))
  message = str(e.value)
  assert repr(str(tmp_path)) in message
  assert _EXPECTED_PIECE[name] in message
  assert "--config.data.root" in message


# -------------------------------------------------------------- empty splits --


def test_empty_custom_msmt_and_mars_splits(tmp_path):
  root = _make_custom(tmp_path / "custom", dict(_CUSTOM, query=[]))
  with pytest.raises(LayoutError) as e:
    layouts.parse_dataset("custom", str(root))
  assert repr(str(root / "query")) in str(e.value)
  assert "contains no images" in str(e.value)

  base = _make_msmt(tmp_path / "msmt")
  (base / "list_query.txt").write_text("\n")
  with pytest.raises(LayoutError) as e:
    msmt17.parse_msmt17(str(base))
  assert (f"List file {str(base / 'list_query.txt')!r} names no images. "
          "Replace it with the original") in str(e.value)

  root = _make_mars(tmp_path / "mars")
  (root / "info" / "test_name.txt").write_text("")
  with pytest.raises(LayoutError) as e:
    vl.parse_mars(str(root))
  assert f"Name list {str(root / 'info' / 'test_name.txt')!r} is empty" in (
      str(e.value))


# ------------------------------------------- moved from the per-module tests --

# Moved from tests/data/test_layouts.py.


def _assert_help(msg):
  for needle in ("bounding_box_train/", "query/", "bounding_box_test/",
                 "PPPP_cCsS_FFFFFF_NN.jpg", "--config.data.root",
                 market_layouts.MARKET1501_ARCHIVE_DIR, "synthetic"):
    assert needle in msg, needle


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    market_layouts.parse_market1501(str(tmp_path / "nope"))
  assert "does not exist" in str(e.value)
  _assert_help(str(e.value))


def test_empty_root_names_all_splits(tmp_path):
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    market_layouts.parse_market1501(str(tmp_path))
  msg = str(e.value)
  assert ("missing split folder(s) 'bounding_box_train/', 'query/', "
          "'bounding_box_test/'") in msg
  _assert_help(msg)


@pytest.mark.parametrize("sub", ["", market_layouts.MARKET1501_ARCHIVE_DIR])
def test_missing_split_named(tmp_path, sub):
  base = _make_market(tmp_path / sub if sub else tmp_path)
  shutil.rmtree(base / "query")
  with pytest.raises(FileNotFoundError) as e:
    market_layouts.parse_market1501(str(tmp_path))
  msg = str(e.value)
  assert "missing split folder(s) 'query/'" in msg
  assert f"looked in {str(base)!r}" in msg
  _assert_help(msg)


def test_empty_split(tmp_path):
  root = _make_market(tmp_path, gallery=[])
  (root / "bounding_box_test" / "readme.txt").write_text("no images")
  with pytest.raises(layout_common.LayoutError) as e:
    market_layouts.parse_market1501(str(root))
  assert repr(str(root / "bounding_box_test")) in str(e.value)
  assert "no .jpg images" in str(e.value)


@pytest.mark.parametrize("bad", [
    "2_c1s1_000100_00.jpg",  # pid not 4 digits
    "0002_c0s1_000100_00.jpg",  # camera must be 1-based
    "0002_c1_000100_00.jpg",  # no sequence
    "0002_c1s1_000100_00 (copy).jpg",
    "image.jpg",
])
def test_bad_file_name_is_an_error(tmp_path, bad):
  root = _make_market(tmp_path, train=_TRAIN + [bad])
  with pytest.raises(ValueError) as e:
    market_layouts.parse_market1501(str(root))
  assert repr(bad) in str(e.value)
  assert "PPPP_cCsS_FFFFFF_NN.jpg" in str(e.value)


def test_train_without_identities(tmp_path):
  root = _make_market(tmp_path, train=["-1_c1s1_000001_00.jpg",
                                       "0000_c1s1_000002_00.jpg"])
  with pytest.raises(ValueError, match="bounding_box_train"):
    market_layouts.parse_market1501(str(root))


# Moved from tests/data/test_layouts_more.py.


def test_duke_missing_root_and_split(tmp_path):
  with pytest.raises(layout_common.DatasetNotFoundError,
                     match="does not exist"):
    market_layouts.parse_dukemtmc(str(tmp_path / "nope"))
  base = _make_duke(tmp_path / market_layouts.DUKEMTMC_ARCHIVE_DIR)
  shutil.rmtree(base / "bounding_box_test")
  with pytest.raises(FileNotFoundError) as e:
    market_layouts.parse_dukemtmc(str(tmp_path))
  msg = str(e.value)
  assert "missing split folder(s) 'bounding_box_test/'" in msg
  assert f"looked in {str(base)!r}" in msg
  for needle in ("bounding_box_train/", "query/", "PPPP_cC_fFFFFFFF.jpg",
                 "DukeMTMC-reID"):
    assert needle in msg, needle


@pytest.mark.parametrize("bad", [
    "0002_c1s1_000451_03.jpg",  # a Market name
    "0002_c9_f0000001.jpg",  # Duke has cameras 1..8
    "0002_c0_f0000001.jpg",
    "2_c1_f0000001.jpg",
])
def test_duke_bad_file_name(tmp_path, bad):
  root = _make_duke(tmp_path, query=_DUKE_QUERY + [bad])
  with pytest.raises(layout_common.LayoutError) as e:
    market_layouts.parse_dukemtmc(str(root))
  assert repr(bad) in str(e.value)
  assert "PPPP_cC_fFFFFFFF.jpg" in str(e.value)


def test_msmt17_missing_pieces(tmp_path):
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    msmt17.parse_msmt17(str(tmp_path))
  assert "mask_train_v2/" in str(e.value) and "list_query.txt" in str(e.value)

  base = _make_msmt(tmp_path / "a")
  (base / "list_val.txt").unlink()
  with pytest.raises(layout_common.DatasetNotFoundError,
                     match="'list_val.txt'"):
    msmt17.parse_msmt17(str(base))

  base = _make_msmt(tmp_path / "b")
  (base / "test" / "0011" / "0011_000_09_0113noon_0005_0.jpg").unlink()
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    msmt17.parse_msmt17(str(base))
  assert "list_gallery.txt:3" in str(e.value)
  assert "0011/0011_000_09_0113noon_0005_0.jpg" in str(e.value)


@pytest.mark.parametrize("entry", [
    ("0000/0000_000_16_0303morning_0015_0.jpg", 0),  # camera 16 > 15
    ("0000/image.jpg", 0),
])
def test_msmt17_bad_file_name(tmp_path, entry):
  lists = dict(_MSMT_LISTS)
  lists["list_query.txt"] = lists["list_query.txt"] + [entry]
  base = _make_msmt(tmp_path, lists=lists)
  with pytest.raises(layout_common.LayoutError) as e:
    msmt17.parse_msmt17(str(base))
  assert repr(entry[0].split("/")[1]) in str(e.value)
  assert "list_query.txt:3" in str(e.value)


def test_msmt17_bad_list_line(tmp_path):
  base = _make_msmt(tmp_path)
  with open(base / "list_train.txt", "a") as f:
    f.write("0000/0000_000_01_0303morning_0099_0.jpg\n")
  with pytest.raises(layout_common.LayoutError, match="list_train.txt:4"):
    msmt17.parse_msmt17(str(base))


def test_custom_errors(tmp_path):
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    custom_layout.parse_custom(str(_make_custom(tmp_path / "a", {
        "train": _CUSTOM["train"], "query": _CUSTOM["query"]})))
  assert "missing split folder(s) 'gallery/'" in str(e.value)
  assert "train/<pid>/<camid>_<anything>.jpg" in str(e.value)

  with pytest.raises(layout_common.LayoutError,
                     match="alice' is not named by an integer"):
    custom_layout.parse_custom(str(_make_custom(tmp_path / "b", dict(
        _CUSTOM, query=["alice/0_q.jpg"]))))

  with pytest.raises(layout_common.LayoutError) as e:
    custom_layout.parse_custom(str(_make_custom(tmp_path / "c", dict(
        _CUSTOM, gallery=["8/cam0_g.jpg"]))))
  assert "'cam0_g.jpg'" in str(e.value)


# Moved from tests/data/test_datasets.py.


def test_missing_dataset_names_the_expected_layout(tmp_path):
  config = ml_collections.ConfigDict(dict(name="market1501", root=str(tmp_path / "nope")))
  with pytest.raises(FileNotFoundError) as err:
    datasets.load_dataset(config)
  message = str(err.value)
  for folder in ("bounding_box_train", "query", "bounding_box_test"):
    assert folder in message
  assert str(tmp_path / "nope") in message


def test_wrong_layout_names_the_missing_split(tmp_path):
  (tmp_path / "bounding_box_train").mkdir()
  (tmp_path / "query").mkdir()
  config = ml_collections.ConfigDict(dict(name="market1501", root=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="bounding_box_test"):
    datasets.load_dataset(config)


def test_empty_root_says_how_to_set_it():
  config = ml_collections.ConfigDict(dict(name="market1501", root=""))
  with pytest.raises(ValueError, match="--config.data.root"):
    datasets.load_dataset(config)


# Moved from tests/data/test_cuhk03.py.


def test_missing_files(tmp_path):
  with pytest.raises(layout_common.DatasetNotFoundError,
                     match="does not exist"):
    cuhk03.parse_cuhk03(str(tmp_path / "nope"))
  root = _make_cuhk03(tmp_path, raw=False, variants=("labeled",))
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    cuhk03.parse_cuhk03(str(root), variant="detected")
  assert "'cuhk03_new_protocol_config_detected.mat'" in str(e.value)
  assert "person-re-ranking" in str(e.value)  # the help text
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    cuhk03.parse_cuhk03(str(root))
  msg = str(e.value)
  assert "14 of the 14 labeled images" in msg
  # Reported in train, query, gallery row order.
  first_train_row = _split_rows(_rows("labeled"))[0][0]
  assert f"(first: {_rows('labeled')[first_train_row - 1][0]!r})" in msg
  assert "cuhk-03.mat" in msg


@pytest.mark.parametrize("change,needle", [
    (dict(drop=("camId",)), "lacks the variable(s) camId"),
    (dict(rows=_rows("labeled")[:-1] + [("2_2_2_06.png", 5, 2)]),
     "filelist[14] = '2_2_2_06.png' does not match"),
    (dict(splits=([1, 2], [3, 4], [4, 5])),
     "query_idx and gallery_idx share row 4"),
    (dict(splits=([1, 2], [3, 15], [4])),
     "query_idx holds row 15, outside the 1-based range 1..14"),
])
def test_bad_config(tmp_path, change, needle):
  root = _make_cuhk03(tmp_path, variants=())
  _write_config(root / "cuhk03_new_protocol_config_labeled.mat", "labeled",
                **change)
  with pytest.raises(layout_common.LayoutError) as e:
    cuhk03.parse_cuhk03(str(root))
  assert needle in str(e.value)
  assert "cuhk03_new_protocol_config_labeled.mat" in str(e.value)


# Moved from tests/data/test_video_layouts.py.


def test_mars_missing_pieces(tmp_path):
  root = _make_mars(tmp_path)
  os.remove(root / "info" / "query_IDX.mat")
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    vl.parse_mars(str(root))
  assert "missing info file(s) 'info/query_IDX.mat'" in str(e.value)
  assert "tracks_test_info.mat" in str(e.value)  # the help text

  shutil.rmtree(root / "bbox_test")
  with pytest.raises(layout_common.DatasetNotFoundError,
                     match="missing split folder\\(s\\) 'bbox_test/'"):
    vl.parse_mars(str(root))


def test_mars_bad_name(tmp_path):
  root = _make_mars(tmp_path)
  path = root / "info" / "train_name.txt"
  lines = path.read_text().splitlines()
  lines[4] = "0001_c4s1_000005_00.jpg"  # a Market name
  path.write_text("\n".join(lines))
  with pytest.raises(layout_common.LayoutError) as e:
    vl.parse_mars(str(root))
  assert f"{path}:5: '0001_c4s1_000005_00.jpg' does not match" in str(e.value)
  assert "0001C1T0001F001.jpg" in str(e.value)


@pytest.mark.parametrize("rows,needle", [
    # Row 1 runs into the frames of row 2 (another camera).
    ([[1, 4, 3, 1], [4, 5, 3, 2]], "line 4 of"),
    ([[1, 3, 3, 1], [4, 99, 3, 2]], "frame range 4..99 is outside"),
    ([[1, 3, 3, 7]], "camera 7 is not 1..6"),
])
def test_mars_bad_track_rows(tmp_path, rows, needle):
  root = _make_mars(tmp_path)
  path = root / "info" / "tracks_train_info.mat"
  scipy.io.savemat(path, {"track_train_info": np.asarray(rows, float)})
  with pytest.raises(layout_common.LayoutError) as e:
    vl.parse_mars(str(root))
  assert needle in str(e.value) and str(path) in str(e.value)


def test_mars_bad_mat_contents(tmp_path):
  root = _make_mars(tmp_path)
  scipy.io.savemat(root / "info" / "query_IDX.mat",
                   {"query_IDX": np.asarray([[1, 9]], float)})
  with pytest.raises(layout_common.LayoutError,
                     match="query_IDX holds row 9, outside the 8 rows"):
    vl.parse_mars(str(root))
  scipy.io.savemat(root / "info" / "tracks_test_info.mat",
                   {"tracks": np.zeros((2, 4))})
  with pytest.raises(layout_common.LayoutError,
                     match="has no variable 'track_test_info'"):
    vl.parse_mars(str(root))


@pytest.mark.parametrize("change,needle", [
    ({("0001", "0001"): ["0003_C2_F0001_X00001.jpg"]},
     "names person 0003 but lies in the folder of person 0001"),
    ({("0001", "0001"): ["0001_C2_F0001_X00001.jpg",
                         "0001_C3_F0002_X00002.jpg"]}, "mixes cameras [2, 3]"),
    ({("0001", "0001"): ["0001_C2_F0001_X00001.jpg",
                         "0001_C2_F0001_X00002.jpg"]},
     "same frame number F0001"),
    ({("0001", "0001"): ["0001_C9_F0001_X00001.jpg"]},
     "'0001_C9_F0001_X00001.jpg' in"),
    ({("01", "0001"): ["0001_C2_F0001_X00001.jpg"]}, "is not a 4-digit person"),
])
def test_duke_video_bad_layout(tmp_path, change, needle):
  content = dict(_DUKE_VIDEO, train=change)
  root = _make_duke_video(tmp_path, content)
  with pytest.raises(layout_common.LayoutError) as e:
    vl.parse_dukemtmc_video(str(root))
  assert needle in str(e.value)


def test_duke_video_missing_split_and_empty_tracklet(tmp_path):
  root = _make_duke_video(tmp_path / "a")
  shutil.rmtree(root / "query")
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    vl.parse_dukemtmc_video(str(root))
  assert "missing split folder(s) 'query/'" in str(e.value)
  assert "DukeMTMC-VideoReID" in str(e.value)
  root = _make_duke_video(tmp_path / "b")
  (root / "gallery" / "0002" / "0009").mkdir()
  with pytest.raises(layout_common.LayoutError,
                     match="0009' has no .jpg frames"):
    vl.parse_dukemtmc_video(str(root))


def test_ilidsvid_errors(tmp_path):
  root = _make_ilids(tmp_path / "a")
  with pytest.raises(ValueError, match="split_index 2 is out of range.*0..1"):
    vl.parse_ilidsvid(str(root), split_index=2)
  os.remove(root / vl.ILIDSVID_SPLIT_MAT)
  with pytest.raises(layout_common.DatasetNotFoundError,
                     match="train_test_splits_ilidsvid.mat"):
    vl.parse_ilidsvid(str(root))

  root = _make_ilids(tmp_path / "b")
  _touch(root / "i-LIDS-VID" / "sequences" / "cam1" / "person099" / "1.png")
  with pytest.raises(layout_common.LayoutError,
                     match="person 099 has a sequence in only one camera"):
    vl.parse_ilidsvid(str(root))

  root = _make_ilids(tmp_path / "c", ls_set=[[1, 2, 3, 4, 5]])
  with pytest.raises(layout_common.LayoutError,
                     match="ls_set has shape \\(1, 5\\)"):
    vl.parse_ilidsvid(str(root))

  root = _make_ilids(tmp_path / "d", ls_set=[[1, 1, 3, 4, 5, 6]])
  with pytest.raises(layout_common.LayoutError,
                     match="not a permutation of 1..6"):
    vl.parse_ilidsvid(str(root))


def test_prid2011_errors(tmp_path):
  root = _make_prid(tmp_path / "a", only={"cam_a": [201, 150]})
  with pytest.raises(layout_common.LayoutError,
                     match="person_0150 appears in only one camera"):
    vl.parse_prid2011(str(root))
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    vl.parse_prid2011(str(tmp_path / "b"))
  assert "does not exist" in str(e.value) and "multi_shot" in str(e.value)
  root = _make_prid(tmp_path / "c")
  _touch(root / "prid_2011" / "multi_shot" / "cam_a" / "person_0001" / "x.png")
  with pytest.raises(layout_common.LayoutError,
                     match="'x.png' in .* does not end in a frame number"):
    vl.parse_prid2011(str(root))


# --------------------------------------------------- corrupt / missing images --
# Moved from tests/data/test_pipeline.py and tests/data/test_video_pipeline.py,
# with their fixtures' split builders.

_IMG = image_pipeline_tests
_VID = video_pipeline_tests


@pytest.fixture(name="image_split")
def _image_split(tmp_path):
  return _IMG.make_split(tmp_path)


@pytest.fixture(name="video_split")
def _video_split(tmp_path):
  return _VID.make_split(tmp_path)


def _fix_named(message):
  """The fix every unreadable-image message ends with."""
  assert "Replace it with an intact copy or delete it" in message
  assert "--config.data.skip_corrupt=True" in message


def test_eval_corrupt_jpeg_error_names_the_file(image_split):
  split = image_split
  bad = split.paths[13]
  _truncate(bad)
  batches = pipeline.eval_batches(split, batch_size=4, height=_IMG.H,
                                  width=_IMG.W)
  # The three batches before it are fine.
  assert [b["index"][0] for b in itertools.islice(batches, 3)] == [0, 4, 8]
  with pytest.raises(ValueError, match=f"Cannot decode.*{bad}") as e:
    next(batches)
  _fix_named(str(e.value))


def test_eval_garbage_bytes_error_names_the_file(image_split):
  bad = image_split.paths[2]
  pathlib.Path(bad).write_bytes(b"<html>404 Not Found</html>")  # a bad download
  with pytest.raises(ValueError, match=f"Cannot decode image file {bad}") as e:
    list(pipeline.eval_batches(image_split, batch_size=8, height=_IMG.H,
                               width=_IMG.W))
  _fix_named(str(e.value))


def test_eval_missing_file_error_names_it(image_split):
  split = image_split
  missing = split.paths[5]
  os.remove(missing)
  with pytest.raises(FileNotFoundError, match=missing) as e:
    list(pipeline.eval_batches(split, batch_size=8, height=_IMG.H,
                               width=_IMG.W))
  assert "restore the file" in str(e.value)


def test_train_corrupt_jpeg_error_names_the_file(image_split):
  split = image_split
  # pid 0 has one image and P divides NUM_IDS: it is in every epoch.
  bad = split.paths[0]
  assert split.pids[0] == 0 and (split.pids == 0).sum() == 1
  _truncate(bad)
  with pytest.raises(ValueError, match=f"Cannot decode.*{bad}") as e:
    for _ in itertools.islice(_IMG._train(split), _IMG.NUM_IDS // 4):
      pass
  _fix_named(str(e.value))


def test_eval_corrupt_frame_error_names_the_file(video_split):
  split = video_split
  bad = split.tracklets[3][7]
  _truncate(bad)
  plan = clips.plan_test_clips(split, _VID.N, "all")
  with pytest.raises(ValueError, match=f"Cannot decode.*{bad}"):
    list(pipeline.eval_clip_batches(split, plan, batch_size=4, height=_VID.H,
                                    width=_VID.W))


def test_train_corrupt_frame_error_names_the_file(video_split):
  split = video_split
  # Tracklet 2 has 3 frames: every clip of it (4 frames) reads all of them.
  bad = split.tracklets[2][1]
  _truncate(bad)
  with pytest.raises(ValueError, match=f"Cannot decode.*{bad}"):
    for _ in itertools.islice(_VID._train(split), 12):
      pass


# Moved from tests/data/test_tfds_builders.py.


def test_missing_prepared_dataset_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tfds_reader.load_prepared("dukemtmc", str(tmp_path))
  msg = str(e.value)
  assert ("python -m reidjax.data.tfds_builders --dataset dukemtmc "
          f"--manual_dir <unpacked dukemtmc folder> --data_dir {tmp_path}"
          ) in msg
  assert "DukeMTMC-reID.zip" in msg  # The manual download instructions.
  with pytest.raises(FileNotFoundError, match="--config split_3"):
    tfds_reader.load_prepared("ilidsvid", str(tmp_path), split_index=3)


# Moved from tests/data/test_clips.py.


@pytest.mark.parametrize("call", [
    lambda: clips.sample_clip(10, 0, "random", np.random.default_rng(0)),
    lambda: clips.sample_clip(0, 4, "random", np.random.default_rng(0)),
    lambda: clips.sample_clip(10, 4, "stride", np.random.default_rng(0),
                              stride=0),
    lambda: clips.test_clips(10, 0, "all"),
    lambda: clips.test_clips(10, 4, "all", stride=0),
])
def test_bad_lengths_raise(call):
  with pytest.raises(ValueError, match=r"must be >= 1|at least one frame"):
    call()


# Moved from tests/backbones/test_torchvision_import.py.


class _RunsCodeWhenUnpickled:
  """Unpickling this calls ``Path.touch(marker)``: arbitrary code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_objects_are_refused(tmp_path):
  marker = tmp_path / "code_ran"
  path = str(tmp_path / "evil.pth")
  torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7),
              "payload": _RunsCodeWhenUnpickled(str(marker))}, path)
  with pytest.raises(WeightImportError, match="weights_only=True") as e:
    torchvision_import.load_torchvision(path, "resnet50")
  assert not marker.exists()
  assert f"Refused {path!r}" in str(e.value)
  assert "torch.save(model.state_dict(), 'weights.pth')" in str(e.value)
  assert "weights_only=False" not in str(e.value)  # never advise it
  # The file really does run code under full unpickling.
  torch.load(path, weights_only=False)
  assert marker.exists()


def test_npz_with_object_arrays_is_refused(tmp_path):
  path = str(tmp_path / "objects.npz")
  np.savez(path, **{"conv1.weight": np.array([{"a": 1}], dtype=object)})
  with pytest.raises(WeightImportError, match="pickled objects"):
    torchvision_import.load_torchvision(path, "resnet50")


def test_training_checkpoint_is_not_a_state_dict(tmp_path):
  path = str(tmp_path / "ckpt.pth")
  torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 3},
             path)
  with pytest.raises(WeightImportError, match="not a flat state_dict"):
    torchvision_import.load_torchvision(path, "resnet50")


def test_missing_file_and_unknown_arch(tmp_path):
  with pytest.raises(FileNotFoundError, match="pretrained"):
    torchvision_import.load_torchvision(str(tmp_path / "nope.pth"))
  with pytest.raises(WeightImportError, match="Cannot tell the architecture"):
    torchvision_import.infer_arch(["conv.weight", "bn.bias"])
  with pytest.raises(ValueError, match="Unknown arch"):
    torchvision_import.normalize_keys({}, "vgg16")


# Moved from tests/layers/test_dcam.py.


def test_h_not_divisible_by_k_is_a_clear_error():
  f = jnp.zeros((1, 4, 2, 12))
  with pytest.raises(ValueError, match=r"stage 3.*H = 4.*K = 3.*Choose K "
                     r"dividing 4, another input height, or alignment='max'"):
    dcam.DCAM(num_blocks=3, stage=3).init(jax.random.PRNGKey(0), f)
  # The max reading has no such constraint.
  out, _ = dcam.DCAM(num_blocks=3, stage=3, alignment="max").init_with_output(
      jax.random.PRNGKey(0), f)[0]
  assert out.shape == (1, 4, 2, 12)
  with pytest.raises(ValueError, match=r"C = 12.*K = 8"):
    dcam.DCAM(num_blocks=8, stage=2, alignment="max").init(jax.random.PRNGKey(0),
                                                           jnp.zeros((1, 8, 2, 12)))
  with pytest.raises(ValueError, match="alignment"):
    dcam.DCAM(num_blocks=2, alignment="stacked").init(jax.random.PRNGKey(0), f)
  with pytest.raises(ValueError, match="attention"):
    dcam.DCAM(num_blocks=2, attention="none").init(jax.random.PRNGKey(0), f)


# ---------------------------------------------- list files and .mat variables --


def test_list_file_that_is_not_text(tmp_path):
  base = _make_msmt(tmp_path / "msmt")
  (base / "list_val.txt").write_bytes(b"\xff\xfe\x00binary\x80\n")
  with pytest.raises(LayoutError) as e:
    msmt17.parse_msmt17(str(base))
  assert repr(str(base / "list_val.txt")) in str(e.value)
  assert "is not a text file" in str(e.value)
  assert "Replace it with the original" in str(e.value)

  root = _make_mars(tmp_path / "mars")
  (root / "info" / "train_name.txt").write_bytes(b"0001C1T0001F001.jpg\n\xc3\n")
  with pytest.raises(LayoutError, match="train_name.txt' is not a text file"):
    vl.parse_mars(str(root))


def test_list_line_with_a_non_ascii_or_huge_pid(tmp_path):
  base = _make_msmt(tmp_path)
  for pid in ("\u00b2", "99999999999999999999", "-3"):  # superscript two, ...
    with open(base / "list_train.txt", "w", encoding="utf-8") as f:
      f.write(f"0000/0000_000_01_0303morning_0015_0.jpg {pid}\n")
    with pytest.raises(LayoutError) as e:
      msmt17.parse_msmt17(str(base))
    assert "list_train.txt:1: expected '<relative path> <pid>'" in str(e.value)
    assert repr(f"0000/0000_000_01_0303morning_0015_0.jpg {pid}") in (
        str(e.value))
    assert "Fix or remove the line" in str(e.value)


def test_ilidsvid_split_mat_without_its_variable(tmp_path):
  root = _make_ilids(tmp_path)
  path = root / vl.ILIDSVID_SPLIT_MAT
  scipy.io.savemat(path, {"splits": np.zeros((2, 6))})
  with pytest.raises(LayoutError) as e:
    vl.parse_ilidsvid(str(root))
  assert f"{str(path)!r} has no variable 'ls_set'" in str(e.value)
  assert "replace it with the original file" in str(e.value)
  path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
  with pytest.raises(LayoutError, match="Cannot read .*train_test_splits"):
    vl.parse_ilidsvid(str(root))


def test_custom_ids_that_do_not_fit(tmp_path):
  cases = (  # (file under train/, culprit, what the message says)
      ("99999999999/0_a.jpg", "folder", "is larger than 2147483647; renumber "
       "the person ids from 0"),
      ("3/99999999999_a.jpg", "'99999999999_a.jpg'", "is larger than "
       "2147483647; number the cameras from 0"),
      ("\u00b3/0_a.jpg", "folder", "is not named by an integer person id. "
       "Rename it"),
      ("-4/0_a.jpg", "folder", "is not named by an integer person id. Rename "
       "it"),
  )
  for i, (rel, culprit, needle) in enumerate(cases):
    root = _make_custom(tmp_path / str(i),
                        dict(_CUSTOM, train=_CUSTOM["train"] + [rel]))
    if culprit == "folder":
      culprit = repr(str(root / "train" / rel.split("/")[0]))
    with pytest.raises(LayoutError) as e:
      custom_layout.parse_custom(str(root))
    assert culprit in str(e.value) and needle in str(e.value)


# ------------------------------------------------------- --config overrides --


def _parse(argv_tail):
  """What train.py's flags_parser does with these --config.* overrides."""
  argv = ["train.py", "--config=configs/baseline.py:synthetic", *argv_tail]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  config_common.parse_flags(argv, flag_values)
  return flag_values.config


def test_unknown_config_key_names_the_flag_and_the_fields():
  with pytest.raises(SystemExit) as e:
    _parse(["--config.data.num_identitie=8"])
  message = str(e.value.code)
  assert message.startswith("FATAL Flags parsing error: "
                            "--config.data.num_identitie: in "
                            "configs/baseline.py:synthetic, 'data' has no "
                            "field 'num_identitie'; its fields are ")
  assert "num_instances, options" in message
  assert "Did you mean 'num_identities'" in message
  assert "Fix the name" in message

  with pytest.raises(SystemExit) as e:
    _parse(["--config.data.options.include_val=True"])  # synthetic: no options
  assert "'data.options' has no field 'include_val'; it has no fields." in (
      str(e.value.code))
  with pytest.raises(SystemExit) as e:
    _parse(["--config.data.root.path=/x"])
  assert ("'data.root' is a value ('data/synthetic_market'), not a section "
          "with a field 'path'.") in str(e.value.code)
  with pytest.raises(SystemExit) as e:
    _parse(["--config.modle.name=baseline"])
  assert "'the config' has no field 'modle'" in str(e.value.code)
  assert "Did you mean 'model'" in str(e.value.code)


@pytest.mark.parametrize("override, needle", [
    ("--config.data.num_identities=sixteen",
     "config.data.num_identities takes a value of type int (now 16): pass "
     "e.g. --config.data.num_identities=16."),
    ("--config.data.num_instances=2.5",
     "config.data.num_instances takes a value of type int (now 4)"),
    ("--config.data.flip=maybe",
     "config.data.flip takes a value of type bool (now True): pass True or "
     "False."),
    ("--config.optimizer.lr=fast",
     "config.optimizer.lr takes a value of type float"),
])
def test_wrong_typed_value_names_the_flag_and_the_type(override, needle):
  with pytest.raises(SystemExit) as e:
    _parse([override])
  message = str(e.value.code)
  assert f"flag {override}:" in message
  assert needle in message


def test_good_overrides_still_parse():
  config = _parse(["--config.data.num_identities=8", "--config.data.flip=False",
                   "--noconfig.data.skip_corrupt"])
  assert (config.data.num_identities, config.data.flip,
          config.data.skip_corrupt) == (8, False, False)


def test_unknown_dataset_argument_of_a_config():
  with pytest.raises(ValueError) as e:
    config_common.check_dataset("market", "configs/baseline.py")
  assert "configs/baseline.py takes ':<dataset>'" in str(e.value)
  assert "'market1501'" in str(e.value) and "got 'market'" in str(e.value)


# ------------------------------------------------ settings that do not agree --


def test_batch_not_divisible_by_the_devices():
  four_devices = types.SimpleNamespace(shape={sharding.DATA_AXIS: 4})
  with pytest.raises(ValueError) as e:
    sharding.check_batch_size(6, four_devices,
                              "data.num_identities * data.num_instances")
  assert str(e.value) == (
      "data.num_identities * data.num_instances = 6 is not divisible by the 4 "
      "devices of the mesh; choose a multiple of the device count.")
  sharding.check_batch_size(8, four_devices, "data.eval_batch_size")  # fine


def test_clip_longer_than_every_tracklet_is_read_circularly():
  # No setting forbids padding: a 3-frame tracklet gives an 8-frame clip
  # that wraps around (module docstring of reidjax.data.clips).
  np.testing.assert_array_equal(clips.test_clips(3, 8, "first"),
                                [[0, 1, 2, 0, 1, 2, 0, 1]])
  assert clips.test_clips(3, 8, "all").shape == (1, 8)
  rng = np.random.default_rng(0)
  assert set(clips.sample_clip(3, 8, "consecutive", rng).tolist()) == {0, 1, 2}


# ------------------------------------------------- pretrained weight files --


_DENSENET_KEYS = ("features.conv0.weight",
                  "features.denseblock1.denselayer1.conv1.weight")
_RESNET_KEYS = ("conv1.weight", "layer1.0.conv1.weight")


def test_file_of_another_architecture_says_which(tmp_path):
  dense = str(tmp_path / "densenet121-a639ec97.pth")
  torch.save({k: torch.zeros(2) for k in _DENSENET_KEYS}, dense)
  with pytest.raises(WeightImportError) as e:
    torchvision_import.load_torchvision(dense, "resnet50")
  assert str(e.value) == (
      f"{dense!r} holds densenet121 weights, but the backbone is resnet50. "
      "Point model.backbone.pretrained at a torchvision resnet50 file (e.g. "
      "resnet50-0676ba61.pth), or set model.backbone.name=densenet121.")

  # What train.py calls: the backbone config names the architecture.
  resnet = str(tmp_path / "resnet.npz")
  np.savez(resnet, **{k: np.zeros(2, np.float32) for k in _RESNET_KEYS})
  config = ml_collections.ConfigDict(dict(name="densenet121", pretrained=resnet))
  variables = {"params": {"backbone": {}}, "batch_stats": {"backbone": {}}}
  with pytest.raises(WeightImportError,
                     match="holds resnet50 weights, but the backbone is "
                     "densenet121.*densenet121-a639ec97.pth"):
    torchvision_import.apply_pretrained(variables, config)

  converted = str(tmp_path / "converted.npz")
  np.savez(converted, **{k: np.zeros(2, np.float32) for k in _DENSENET_KEYS},
           **{torchvision_import.ARCH_KEY: np.array("densenet121")})
  with pytest.raises(WeightImportError) as e:
    torchvision_import.load_torchvision(converted, "resnet50")
  assert str(e.value) == (
      f"{converted!r} was converted for densenet121, not resnet50. Point "
      "model.backbone.pretrained at resnet50 weights, or set "
      "model.backbone.name=densenet121.")


# ------------------------------------------- generated names at every parser --
# Each parser's name parsing gets generated names: random unicode, names near
# the real formats with pieces missing or doubled, huge and negative numbers,
# non-ASCII digits, wrong extensions. A parse or a LayoutError is fine;
# anything else (IndexError, OverflowError, a ValueError from int()) fails.

_NAME_CHARS = st.characters(blacklist_categories=("Cs",),
                            blacklist_characters="/\x00")
_PIECES = st.one_of(
    st.integers(-10**25, 10**25).map(str),
    st.integers(0, 10**7).map(lambda i: f"{i:04d}"),
    st.sampled_from(["c", "s", "C", "T", "F", "X", "f", "_", "__", "-", "-1",
                     "00-1", "person", "person_", "cam", "\u0663", "\u00b2",
                     "\uff11", " ", ".", "0001", "1", "01", "morning"]),
    st.text(_NAME_CHARS, max_size=4))
_EXTENSIONS = st.sampled_from(["", ".jpg", ".JPG", ".jpeg", ".png", ".PNG",
                               ".jpg.txt", ".jpg ", ".mat", "."])
_NEAR_MISS = st.builds(lambda parts, ext: "".join(parts) + ext,
                       st.lists(_PIECES, min_size=1, max_size=8), _EXTENSIONS)


def _fits_a_folder(name):
  return name not in ("", ".", "..") and len(name.encode()) <= 200


NAMES = st.one_of(_NEAR_MISS, st.text(_NAME_CHARS, min_size=1,
                                      max_size=40)).filter(_fits_a_folder)
# A number field: the right width, any size or sign, non-ASCII digits, empty.
_NUMBERISH = st.one_of(
    st.sampled_from([1, 2, 3, 4, 6, 7]).flatmap(  # the widths in the formats
        lambda w: st.integers(0, 10**w - 1).map(lambda i: f"{i:0{w}d}")),
    st.integers(-10**25, 10**25).map(str),
    st.text("0123456789", min_size=1, max_size=12),
    st.sampled_from(["", "-1", "00-1", "\u00b2", "\u0663", "\uff11", "1e3",
                     "2147483647", "2147483648", "9" * 30]))


def _near(template, extension):
  """Names of ``template`` (e.g. "{}_c{}_f{}") with generated number fields."""
  fields = st.tuples(*[_NUMBERISH] * template.count("{}"))
  return st.builds(lambda values, ext: template.format(*values) + ext, fields,
                   st.one_of(st.just(extension), _EXTENSIONS)).filter(
                       _fits_a_folder)


def _names(template, extension):
  """Random names, near-misses of any format, and near-misses of this one."""
  near = _near(template, extension)
  return st.one_of(near, near, near, NAMES)  # mostly near-misses
_FAST = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


def _parse_or_layout_error(call):
  """call()'s result, or None if it raised our LayoutError."""
  try:
    return call()
  except LayoutError:
    return None


def _touch_file(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"\xff\xd8")


@pytest.mark.parametrize("pattern, fmt, cameras, template", [
    (market_layouts.MARKET1501_NAME, market_layouts.MARKET1501_FORMAT, 6,
     "{}_c{}s{}_{}_{}"),
    (market_layouts.DUKE_NAME, market_layouts.DUKE_FORMAT, 8, "{}_c{}_f{}"),
])
@_FAST
@given(data=st.data())
def test_market_and_duke_names(pattern, fmt, cameras, template, data):
  name = data.draw(_names(template, ".jpg"))
  with tempfile.TemporaryDirectory() as folder:
    _touch_file(os.path.join(folder, name))
    got = _parse_or_layout_error(lambda: layout_common.read_flat_split(
        folder, pattern, label="test", name_format=fmt, help_text=""))
  if got is not None:
    paths, pids, camids = got
    assert paths == [os.path.join(folder, name)]
    assert pids.dtype == camids.dtype == np.int32
    assert 0 <= camids[0] < cameras and pids[0] >= -1


@_FAST
@given(name=st.one_of(  # valid names too, so that odd pids reach int()
    st.sampled_from([rel.split("/")[1] for rel, _ in _MSMT_LISTS["list_train.txt"]]),
    _names("{}_{}_{}_0303morning_{}_{}", ".jpg")),
       pid=st.one_of(_NUMBERISH, st.text(_NAME_CHARS, max_size=6)))
# Crashes found before: int("\u00b2") and an int32 overflow.
@example(name="0000_000_01_0303morning_0015_0.jpg", pid="\u00b2")
@example(name="0000_000_01_0303morning_0015_0.jpg", pid="2147483648")
def test_msmt17_list_lines(name, pid):
  with tempfile.TemporaryDirectory() as folder:
    _touch_file(os.path.join(folder, "train", name))
    list_file = os.path.join(folder, "list_train.txt")
    with open(list_file, "w", encoding="utf-8") as f:
      f.write(f"{name} {pid}\n")
    got = _parse_or_layout_error(
        lambda: msmt17.read_msmt17_list(list_file, os.path.join(folder, "train")))
  if got is not None:
    assert got.pids[0] == int(pid) and 0 <= got.camids[0] < 15


@_FAST
@given(pid_folder=_names("{}", ""), name=_names("{}_frame", ".jpg"))
# Crashes found before: int("\u00b2") and int32 overflows.
@example(pid_folder="\u00b2", name="0_frame.jpg")
@example(pid_folder="2147483648", name="0_frame.jpg")
@example(pid_folder="3", name="2147483648_frame.jpg")
def test_custom_pid_folders_and_names(pid_folder, name):
  with tempfile.TemporaryDirectory() as folder:
    _touch_file(os.path.join(folder, pid_folder, name))
    got = _parse_or_layout_error(
        lambda: custom_layout._read_pid_folders(folder))
  if got is not None:
    assert got.pids.tolist() == [int(pid_folder)]
    assert got.camids[0] >= 0 and got.camids.dtype == np.int32


@_FAST
@given(name=st.one_of(_NEAR_MISS, _near("{}_{}_{}_{}", ".png"), st.text(
    st.characters(blacklist_categories=("Cs",), max_codepoint=0xFFFF),
    max_size=30)))
def test_cuhk03_filelist_names(name):
  rows = _rows("labeled")
  rows[3] = (name,) + rows[3][1:]
  with tempfile.TemporaryDirectory() as folder:
    path = pathlib.Path(folder) / "config.mat"
    _write_config(path, "labeled", rows=rows, splits=_split_rows(_rows("labeled")))
    got = _parse_or_layout_error(lambda: cuhk03._read_config(str(path)))
  if got is not None:
    assert got["filelist"][3] == name


@_FAST
@given(name=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
       | _NEAR_MISS | _near("{}C{}T{}F{}", ".jpg"))
def test_mars_name_lists(name):
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "train_name.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write(f"0001C1T0001F001.jpg\n{name}\n")
    got = _parse_or_layout_error(lambda: vl._read_mars_names(path))
  if got is not None:
    names, pids, cams = got
    assert pids.dtype == cams.dtype == np.int32
    assert ((1 <= cams) & (cams <= 6)).all() and (pids >= -1).all()


@_FAST
@given(pid_folder=_names("{}", ""), tracklet_folder=_names("{}", ""),
       name=_names("{}_C{}_F{}_X{}", ".jpg"))
def test_duke_video_folders_and_frames(pid_folder, tracklet_folder, name):
  with tempfile.TemporaryDirectory() as folder:
    _touch_file(os.path.join(folder, pid_folder, tracklet_folder, name))
    got = _parse_or_layout_error(lambda: vl._read_duke_video_split(folder))
  if got is not None:
    assert got.pids.tolist() == [int(pid_folder)]
    assert 0 <= got.camids[0] < 8


@pytest.mark.parametrize("pattern, person, frame_name", [
    (vl._ILIDS_PERSON, "person{}", "cam1_person001_{}"),
    (vl._PRID_PERSON, "person_{}", "{}"),
])
@_FAST
@given(data=st.data())
def test_ilids_and_prid_folders_and_frames(pattern, person, frame_name, data):
  person_folder = data.draw(_names(person, ""))
  frame = data.draw(_names(frame_name, ".png"))
  with tempfile.TemporaryDirectory() as folder:
    _touch_file(os.path.join(folder, person_folder, frame))
    people = _parse_or_layout_error(lambda: vl._person_folders(
        folder, pattern, example="person001", help_text=""))
    frames = _parse_or_layout_error(lambda: vl._sequence_frames(
        os.path.join(folder, person_folder), help_text=""))
  if people is not None:
    assert list(people.values()) == [os.path.join(folder, person_folder)]
  if frames is not None:
    assert frames == (os.path.join(folder, person_folder, frame),)
