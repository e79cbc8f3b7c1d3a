"""Tests for the TFDS builders and the prepared-dataset reader.

Dummy data: the miniature real layouts of the parser tests (their helpers),
with every image file replaced by a distinct tiny real image, generated into
temp dirs. Each builder runs TFDS's own `DatasetBuilderTestCase` (prepare,
read back, split counts computed by hand below); round trips check that
`load_prepared` + readers give what the folder parser + reading the files
give.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from reidjax.data import layout_common
from reidjax.data import layouts
from reidjax.data import market_layouts
from reidjax.data import pipeline
from reidjax.data import sampler
from reidjax.data import tfds_builders
from reidjax.data import tfds_reader
from reidjax.data import video_layouts
from reidjax.data.index import ImageDataset, VideoDataset
from reidjax.data.transforms import AugmentConfig
from tests.data.test_cuhk03 import _make_cuhk03
from tests.data.test_layouts import _make_market
from tests.data.test_layouts_more import _make_duke, _make_msmt
from tests.data.test_video_layouts import (_make_duke_video, _make_ilids,
                                           _make_mars, _make_prid)

SPLITS = ("train", "query", "gallery")


def _fill_images(root):
  """Overwrites every .jpg / .png under root with a distinct 8x4 image."""
  paths = sorted(p for p in pathlib.Path(root).rglob("*")
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  for i, path in enumerate(paths):
    pixels = np.random.default_rng(i).integers(0, 256, (8, 4, 3), np.uint8)
    Image.fromarray(pixels).save(
        path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
  return root


# ------------------------------------------- TFDS's DatasetBuilderTestCase --


class _DummyData:
  """Mixin: writes the dummy data into a temp dir used as the manual dir.

  Not a TestCase itself, so pytest does not collect it. The test case reads
  the prepared splits back with ``as_dataset``, which TFDS 4.9 has only for
  TFRecord, so it prepares TFRecord; the round trips below cover ArrayRecord,
  the builders' default.
  """

  def test_session(self, *args, **kwargs):
    return super().test_session(*args, **kwargs)

  # tf.test.TestCase's session helper, not a test: keep pytest off it.
  test_session.__test__ = False

  def _make_builder(self, config=None):
    return self.dataset_class(data_dir=self.tmp_dir, config=config,
                              version=self.VERSION, file_format="tfrecord")

  @staticmethod
  def make_dummy(root: pathlib.Path) -> None:
    raise NotImplementedError

  @classmethod
  def setUpClass(cls):
    cls._dummy = tempfile.TemporaryDirectory()
    cls.make_dummy(pathlib.Path(cls._dummy.name))
    cls.EXAMPLE_DIR = cls._dummy.name
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    cls._dummy.cleanup()


class Market1501Test(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.Market1501
  # test_layouts: train 8 files - 1 junk - 1 distractor; query 3; gallery
  # 7 files - 2 junk (distractors kept).
  SPLITS = {"train": 6, "query": 3, "gallery": 5}

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_market(root / market_layouts.MARKET1501_ARCHIVE_DIR))


class DukemtmcTest(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.Dukemtmc
  SPLITS = {"train": 6, "query": 2, "gallery": 4}  # Every file is kept.

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_duke(root))


class OccludedDukeTest(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.OccludedDuke
  SPLITS = {"train": 6, "query": 2, "gallery": 4}

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_duke(root / market_layouts.OCCLUDED_DUKE_ARCHIVE_DIR))


class _Msmt17(_DummyData):
  DATASET_CLASS = tfds_builders.Msmt17

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_msmt(root / "MSMT17_V2", version="V2"))


class Msmt17ListTrainTest(_Msmt17, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["list_train"]
  # test_layouts_more: list_train 3 (list_val 2 left out); query 2; gallery 3.
  SPLITS = {"train": 3, "query": 2, "gallery": 3}


class Msmt17ListTrainValTest(_Msmt17, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["list_train_val"]
  SPLITS = {"train": 3 + 2, "query": 2, "gallery": 3}


class Cuhk03LabeledTest(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.Cuhk03
  BUILDER_CONFIG_NAMES_TO_TEST = ["labeled"]
  # test_cuhk03 labeled: 14 images. Train labels 2 (2 images) + 4 (3);
  # query = first image per (test label, camera): labels 1, 3, 5 x 2 cams;
  # gallery = the rest: label 1 two, label 3 one, label 5 none.
  SPLITS = {"train": 5, "query": 6, "gallery": 3}

  @staticmethod
  def make_dummy(root):
    _make_cuhk03(root)  # Images are extracted from cuhk-03.mat on parsing.


class Cuhk03DetectedTest(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.Cuhk03
  BUILDER_CONFIG_NAMES_TO_TEST = ["detected"]
  # Detected: label 3 lacks its slot-8 image, so its gallery is empty.
  SPLITS = {"train": 5, "query": 6, "gallery": 2}

  @staticmethod
  def make_dummy(root):
    _make_cuhk03(root)


# Video builders store one example per frame: the counts are frames.


class MarsTest(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.Mars
  # test_video_layouts MARS rows (pid, cam, tracklet, frames): train
  # 3 + 2 + 4 + 2 (the junk row dropped); query rows 3, 1, 8: 2 + 3 + 2;
  # gallery rows 2, 4, 5, 6: 2 + 3 + 2 + 2 (junk row 7 dropped).
  SPLITS = {"train": 11, "query": 7, "gallery": 9}

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_mars(root / "MARS"))


class DukemtmcVideoTest(_DummyData, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = tfds_builders.DukemtmcVideo
  # Tracklets of 3 + 1 + 2 / 1 + 2 / 1 + 2 + 1 + 1 frames.
  SPLITS = {"train": 6, "query": 3, "gallery": 5}

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_duke_video(root / "DukeMTMC-VideoReID"))


class _Ilidsvid(_DummyData):
  DATASET_CLASS = tfds_builders.Ilidsvid

  @staticmethod
  def make_dummy(root):
    _fill_images(_make_ilids(root))


class IlidsvidSplit0Test(_Ilidsvid, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["split_0"]
  # Persons 1, 2, 4, 7, 10, 12 have 2 + pid % 3 frames per camera: 3, 4, 3,
  # 3, 3, 2. ls_set row 0 = [3, 6, 1 | 2, 4, 5]: test persons 4, 12, 1
  # (3 + 2 + 3 frames per camera), train persons 2, 7, 10 (both cameras).
  SPLITS = {"train": 2 * (4 + 3 + 3), "query": 8, "gallery": 8}


class IlidsvidSplit1Test(_Ilidsvid, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["split_1"]
  # Row 1 = [1, 2, 3 | 4, 5, 6]: test persons 1, 2, 4; train 7, 10, 12.
  SPLITS = {"train": 2 * (3 + 3 + 2), "query": 10, "gallery": 10}


# PRID-2011 with a split file, so the configs' splits are known by hand:
# person -> (cam_a frames, cam_b frames).
_PRID_FRAMES = {1: (2, 3), 2: (3, 2), 4: (1, 2), 5: (2, 2)}
_PRID_SPLITS = [{"train": ["person_0001", "person_0002"],
                 "test": ["person_0004"]},
                {"train": ["person_0004", "person_0005"],
                 "test": ["person_0001"]}]


class _Prid2011(_DummyData):
  DATASET_CLASS = tfds_builders.Prid2011

  @staticmethod
  def make_dummy(root):
    base = _fill_images(_make_prid(root, frames=_PRID_FRAMES))
    (base / "splits_prid2011.json").write_text(json.dumps(_PRID_SPLITS))


class Prid2011Split0Test(_Prid2011, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["split_0"]
  # Train persons 1, 2: (2 + 3) + (3 + 2); test person 4: cam_a 1, cam_b 2.
  SPLITS = {"train": 10, "query": 1, "gallery": 2}


class Prid2011Split1Test(_Prid2011, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["split_1"]
  # Train persons 4, 5: (1 + 2) + (2 + 2); test person 1: cam_a 2, cam_b 3.
  SPLITS = {"train": 7, "query": 2, "gallery": 3}


# ------------------------------------------------------------ round trips --


@pytest.fixture(name="market", scope="module")
def _market(tmp_path_factory):
  """(manual dir, data dir) of a prepared miniature Market-1501."""
  manual = _fill_images(_make_market(tmp_path_factory.mktemp("market")))
  data_dir = str(tmp_path_factory.mktemp("tfds_market"))
  tfds_builders.prepare("market1501", str(manual), data_dir)
  return manual, data_dir


def _read_all(reader, n):
  """Every item's bytes, read in graph mode through tf.data."""
  dataset = tf.data.Dataset.range(n).map(
      reader.read, num_parallel_calls=4, deterministic=True)
  return list(dataset.as_numpy_iterator())


def test_market_round_trip_matches_the_folder_parser(market):
  manual, data_dir = market
  parsed = market_layouts.parse_market1501(str(manual))
  index, readers = tfds_reader.load_prepared("market1501", data_dir)
  assert isinstance(index, ImageDataset) and index.name == "market1501"
  assert index.root == os.path.join(data_dir, "market1501", "1.0.0")
  assert set(readers) == set(SPLITS)
  for s in SPLITS:
    want, got = getattr(parsed, s), getattr(index, s)
    assert got.paths == tuple(
        os.path.relpath(p, parsed.root) for p in want.paths)
    np.testing.assert_array_equal(got.pids, want.pids)
    np.testing.assert_array_equal(got.camids, want.camids)
    assert got.pids.dtype == np.int32 and got.camids.dtype == np.int32
    files = [pathlib.Path(p).read_bytes() for p in want.paths]
    assert len(set(files)) == len(files)  # Distinct: order errors show.
    assert _read_all(readers[s], len(got)) == files
  # The relabelling, by hand: train pids 0002, 0007, 0015 -> 0, 1, 2.
  assert [(p.split("/")[-1][:4], l) for p, l in zip(
      index.train.paths, index.train.pids)] == [
          ("0002", 0), ("0002", 0), ("0002", 0), ("0007", 1), ("0007", 1),
          ("0015", 2)]
  np.testing.assert_array_equal(index.gallery.pids, [0, 0, 3, 3, 9])


@pytest.mark.parametrize("include_val,config", [(False, "list_train"),
                                                 (True, "list_train_val")])
def test_msmt17_configs_round_trip(tmp_path, include_val, config):
  manual = _fill_images(_make_msmt(tmp_path / "manual"))
  data_dir = str(tmp_path / "tfds")
  tfds_builders.prepare("msmt17", str(manual), data_dir, config=config)
  parsed = layouts.parse_dataset("msmt17", str(manual),
                                 include_val=include_val)
  index, readers = tfds_reader.load_prepared("msmt17", data_dir,
                                             include_val=include_val)
  assert index.root == os.path.join(data_dir, "msmt17", config, "2.0.0")
  for s in SPLITS:
    want, got = getattr(parsed, s), getattr(index, s)
    assert got.paths == tuple(
        os.path.relpath(p, parsed.root) for p in want.paths)
    np.testing.assert_array_equal(got.pids, want.pids)
    np.testing.assert_array_equal(got.camids, want.camids)
  # The train ids by hand (test_layouts_more): list_train pids 0, 0, 3 and
  # list_val pids 1, 3.
  np.testing.assert_array_equal(
      index.train.pids, [0, 0, 2, 1, 2] if include_val else [0, 0, 1])
  assert _read_all(readers["train"], len(index.train)) == [
      pathlib.Path(p).read_bytes() for p in parsed.train.paths]


@pytest.fixture(name="mars", scope="module")
def _mars(tmp_path_factory):
  """(manual dir, data dir) of a prepared miniature MARS."""
  manual = _fill_images(_make_mars(tmp_path_factory.mktemp("mars")))
  data_dir = str(tmp_path_factory.mktemp("tfds_mars"))
  tfds_builders.prepare("mars", str(manual), data_dir)
  return manual, data_dir


def test_mars_round_trip_matches_the_folder_parser(mars):
  manual, data_dir = mars
  parsed = video_layouts.parse_mars(str(manual))
  index, readers = tfds_reader.load_prepared("mars", data_dir)
  assert isinstance(index, VideoDataset) and index.name == "mars"
  for s in SPLITS:
    want, got = getattr(parsed, s), getattr(index, s)
    assert got.tracklets == tuple(
        tuple(os.path.relpath(p, parsed.root) for p in t)
        for t in want.tracklets)
    np.testing.assert_array_equal(got.pids, want.pids)
    np.testing.assert_array_equal(got.camids, want.camids)
    np.testing.assert_array_equal(got.num_frames, want.num_frames)
    # The reader's index is the flat frame index of frame_table().
    paths, _ = want.frame_table()
    files = [pathlib.Path(p).read_bytes() for p in paths]
    assert len(set(files)) == len(files)
    assert _read_all(readers[s], len(paths)) == files
  # Train rows (pid, cam): (3, 1) (3, 2) (1, 4) (7, 6), junk dropped; pids
  # 1, 3, 7 -> 0, 1, 2.
  np.testing.assert_array_equal(index.train.pids, [1, 1, 0, 2])
  np.testing.assert_array_equal(index.train.camids, [0, 1, 3, 5])
  assert index.train.tracklets[1] == ("bbox_train/0003/0003C2T0001F001.jpg",
                                      "bbox_train/0003/0003C2T0001F002.jpg")
  np.testing.assert_array_equal(index.gallery.pids, [2, 5, 5, 0])


def _batches(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_pipelines_give_the_same_batches_from_readers(market, mars):
  """Prepared reader vs files on disk, through the real pipelines."""
  parsed = market_layouts.parse_market1501(str(market[0]))
  index, readers = tfds_reader.load_prepared("market1501", market[1])
  kwargs = dict(batch_size=4, height=8, width=4)
  from_files = list(pipeline.eval_batches(parsed.gallery, **kwargs))
  assert len(from_files) == 2 and from_files[0]["mask"].all()
  _assert_same_batches(list(pipeline.eval_batches(
      index.gallery, reader=readers["gallery"], **kwargs)), from_files)

  parsed = video_layouts.parse_mars(str(mars[0]))
  index, readers = tfds_reader.load_prepared("mars", mars[1])
  train_sampler = sampler.build_sampler(
      parsed.train.pids, kind="pk", epoch="images", num_identities=2,
      num_instances=2, seed=3)
  kwargs = dict(sampler=train_sampler, clip_length=2, strategy="random",
                augment=AugmentConfig(8, 4, pad=1), seed=3)
  from_files = _batches(pipeline.train_clip_batches(parsed.train, **kwargs), 2)
  assert from_files[0]["images"].shape == (4, 2, 8, 4, 3)
  _assert_same_batches(_batches(pipeline.train_clip_batches(
      index.train, reader=readers["train"], **kwargs), 2), from_files)


def test_mars_records_carry_tracklet_and_frame(mars):
  _, data_dir = mars
  index, _ = tfds_reader.load_prepared("mars", data_dir)
  source = tfds_builders.Mars(data_dir=data_dir).as_data_source(
      "query", decoders={"image": tfds.decode.SkipDecoding()})
  # Query tracklets of 2, 3, 2 frames.
  np.testing.assert_array_equal(index.query.num_frames, [2, 3, 2])
  got = [(source[k]["tracklet"], source[k]["frame"], source[k]["pid"])
         for k in range(len(source))]
  assert got == [(0, 0, 5), (0, 1, 5), (1, 0, 2), (1, 1, 2), (1, 2, 2),
                 (2, 0, 9), (2, 1, 9)]


def test_reader_eager_name_and_bad_index(market):
  manual, data_dir = market
  _, readers = tfds_reader.load_prepared("market1501", data_dir)
  query = readers["query"]
  assert len(query) == 3
  first = sorted((manual / "query").iterdir())[0]
  assert query.read(tf.constant(0, tf.int32)).numpy() == first.read_bytes()
  assert query.name(0).startswith(f"query/{first.name} (item 0 of market1501 "
                                  "query")
  with pytest.raises(IndexError, match=r"index 3 is outside \[0, 3\)"):
    query.read(tf.constant(3, tf.int64))  # Eager: the Python error.
  with pytest.raises(tf.errors.UnknownError, match=r"index -1 is outside"):
    list(tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64)).map(
        query.read))


class _FakeSource(list):
  """A data source stand-in: a list of decoded-but-undecoded examples."""


def test_reader_keeps_bytes_exactly_and_checks_record_names():
  data = b"\x89PNG\x00ends in NULs\x00\x00"
  source = _FakeSource([{"image": data, "file_name": b"a/x.png"},
                        {"image": b"y", "file_name": b"a/z.png"}])
  reader = tfds_reader.PreparedReader(source, ("a/x.png", "a/y.png"), "t")
  assert reader.read(tf.constant(0)).numpy() == data
  with pytest.raises(ValueError, match="record 1 holds 'a/z.png'.*'a/y.png'"):
    reader.read_bytes(1)
  with pytest.raises(ValueError, match="2 records but the saved index lists "
                     "1 files"):
    tfds_reader.PreparedReader(source, ("a/x.png",), "t")


def test_resolve_options_to_configs():
  resolve = tfds_builders.resolve
  assert resolve("market1501") == (tfds_builders.Market1501, None)
  assert resolve("cuhk03") == (tfds_builders.Cuhk03, "labeled")
  assert resolve("cuhk03", variant="detected")[1] == "detected"
  assert resolve("cuhk03_detected") == (tfds_builders.Cuhk03, "detected")
  assert resolve("ilidsvid") == (tfds_builders.Ilidsvid, "split_0")
  assert resolve("ilidsvid", split_index=7)[1] == "split_7"
  assert resolve("prid2011", split_index=4, seed=0)[1] == "split_4"
  with pytest.raises(ValueError, match="takes no options"):
    resolve("market1501", variant="labeled")
  with pytest.raises(ValueError, match="match more than one config"):
    resolve("prid2011", seed=0)
  with pytest.raises(ValueError, match="match no config"):
    resolve("ilidsvid", split_index=10)
  with pytest.raises(ValueError, match="fixes"):
    resolve("cuhk03_labeled", variant="detected")
  # MSMT17: list_train only by default; include_val picks list_train + val.
  assert resolve("msmt17") == (tfds_builders.Msmt17, "list_train")
  assert resolve("msmt17", include_val=False)[1] == "list_train"
  assert resolve("msmt17", include_val=True)[1] == "list_train_val"
  # A config's data.options built from the parser defaults picks the same
  # config as no options; an unpinned option away from its default does not.
  for name in ("msmt17", "ilidsvid", "prid2011", "cuhk03_detected"):
    assert resolve(name, **layouts.default_options(name)) == resolve(name)
  assert resolve("prid2011", split_index=4, seed=0, min_frames=21)[1] == (
      "split_4")
  with pytest.raises(ValueError, match="match no config"):
    resolve("prid2011", split_index=4, min_frames=5)
  with pytest.raises(ValueError, match="known: .*market1501.*prid2011"):
    resolve("viper")


def test_prepare_errors(tmp_path):
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    tfds_builders.prepare("market1501", str(tmp_path / "nope"),
                          str(tmp_path / "tfds"))
  assert "nope" in str(e.value) and "bounding_box_train/" in str(e.value)
  with pytest.raises(ValueError, match="has no config 'split_1'.*labeled"):
    tfds_builders.prepare("cuhk03", str(tmp_path), str(tmp_path),
                          config="split_1")


def test_command_line_prepares_one_dataset(tmp_path, capsys):
  manual = _fill_images(_make_duke(tmp_path / "duke"))
  data_dir = tmp_path / "tfds"
  tfds_builders.main(["--dataset", "dukemtmc", "--manual_dir", str(manual),
                      "--data_dir", str(data_dir)])
  out = capsys.readouterr().out
  assert "images: train 6, query 2, gallery 4" in out
  assert (data_dir / "dukemtmc" / "1.0.0" / "dataset_info.json").is_file()
  index, _ = tfds_reader.load_prepared("dukemtmc", str(data_dir))
  assert (len(index.train), len(index.query), len(index.gallery)) == (6, 2, 4)

  with pytest.raises(SystemExit) as e:
    tfds_builders.main(["--dataset", "cuhk03", "--config", "split_0",
                        "--manual_dir", str(manual), "--data_dir",
                        str(data_dir)])
  assert e.value.code == 2
  assert "'split_0' is not a config of cuhk03" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # A layout error, not a traceback.
    tfds_builders.main(["--dataset", "market1501", "--manual_dir",
                        str(manual), "--data_dir", str(data_dir)])
  assert "does not match the Market-1501 pattern" in str(e.value.code)


def test_module_runs_as_a_script():
  # `python -m` defines (and registers) the builders in __main__: nothing it
  # imports may import tfds_builders a second time.
  result = subprocess.run(
      [sys.executable, "-m", "reidjax.data.tfds_builders", "--help"],
      capture_output=True, text=True, check=False, timeout=120,
      cwd=pathlib.Path(__file__).parents[2])
  assert result.returncode == 0, result.stderr
  assert "--manual_dir" in result.stdout and "prid2011" in result.stdout
