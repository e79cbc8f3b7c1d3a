"""TFDS builders for the ReID datasets, filled by reidjax's own layout parsers.

One `tfds.core.GeneratorBasedBuilder` per dataset: market1501, dukemtmc,
occluded_duke, msmt17 (configs ``list_train`` / ``list_train_val``), cuhk03
(configs ``labeled`` / ``detected``), mars, dukemtmc_video, ilidsvid and
prid2011 (configs ``split_0`` .. ``split_9``).
Every builder reads the unpacked official archive from
``dl_manager.manual_dir`` and parses it with the same parser as the
direct-from-folder path (`reidjax.data.layouts.parse_dataset`), so both paths
see the same splits, junk/distractor handling and train relabelling.

Readings taken here:

* Stored ids are the parser's ids: train pids are already relabelled 0..P-1
  (sorted original pid), query/gallery keep the dataset's pids (0 = Market
  distractor); camids are 0-based.
* ``file_name`` is the file's path relative to the parsed dataset root, with
  '/' separators (e.g. ``bounding_box_train/0002_c1s1_000451_03.jpg``): the
  base name alone is not unique in MSMT17 or the video sets.
* ``image`` holds the original file bytes (JPEG or PNG as on disk, never
  re-encoded); ``tfds.load`` decodes it, `tfds_reader` passes it through.
* Examples are written in the parser's order (``disable_shuffling``), so
  example ``i`` of a split is item ``i`` of the parsed split: random access
  needs no extra lookup table.
* The default file format is ArrayRecord (random access, what
  `reidjax.data.tfds_reader` and ``tfds.data_source`` read). TFDS 4.9 cannot
  stream ArrayRecord with ``as_dataset``: for ``tfds.load``, prepare with
  ``builder_kwargs={"file_format": "tfrecord"}`` instead.
* Video sets are stored one example per FRAME, in ``split.frame_table()``
  order, each carrying its tracklet index and position. A tracklet-level
  example (a sequence of frames) would make reading one frame of a 900-frame
  MARS tracklet deserialise all 900; frame-level records keep a frame read
  O(1) in time and memory.
* A small index (pids, camids and, for video, frames per tracklet) is saved
  beside the records as the dataset's metadata, with the file names in one
  text file per split read only on demand, so an index is loaded without
  touching a single image record.

Preparation note: TFDS sorts each split by example key before writing. With
``disable_shuffling`` the keys are the item indices, which all fall into one
of its on-disk sort buckets, so preparing MARS / DukeMTMC-VideoReID holds
about the largest split (1-2 GB) in RAM once. Reading stays bounded.

Command line (prepares one dataset)::

  python -m reidjax.data.tfds_builders --dataset market1501 \\
      --manual_dir /data/Market-1501-v15.09.15 --data_dir ~/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, ClassVar, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from reidjax.data import layouts
# Imported for its effect: TensorFlow (under TFDS) never sees a GPU.
from reidjax.data import tensorflow_cpu  # pylint: disable=unused-import
from reidjax.data.index import Dataset, is_video
from reidjax.data.layout_common import DatasetNotFoundError, LayoutError
from reidjax.data.market_layouts import (DUKEMTMC_ARCHIVE_DIR,
                                         MARKET1501_ARCHIVE_DIR,
                                         OCCLUDED_DUKE_ARCHIVE_DIR)
from reidjax.data.msmt17 import MSMT17_STATS, MSMT17_WITH_VAL_STATS

SPLITS = ("train", "query", "gallery")
VERSION = tfds.core.Version("1.0.0")
DEFAULT_FILE_FORMAT = tfds.core.FileFormat.ARRAY_RECORD
METADATA_FILE = "metadata.json"  # The name TFDS looks for before loading it.
_NAMES_FILE = "reid_file_names_{split}.txt"


# ----------------------------------------------------------------- index --


class ReidIndexMetadata(tfds.core.Metadata):
  """The parsed index of a prepared dataset, saved beside its records.

  ``self["kind"]`` is ``"image"`` or ``"video"``; ``self["splits"][split]``
  holds ``"pids"`` and ``"camids"`` (per image, or per tracklet for video) and,
  for video, ``"num_frames"`` per tracklet. These go to ``metadata.json``
  (small: one int per item). The file names (one per image or frame, in record
  order) go to one text file per split and are read on first use only.
  """

  def __init__(self):
    super().__init__()
    self._file_names: dict[str, tuple[str, ...]] = {}
    self._dir: epath.Path | None = None

  def set_split(self, split: str, *, kind: str, pids: np.ndarray,
                camids: np.ndarray, file_names: Sequence[str],
                num_frames: np.ndarray | None = None) -> None:
    """Records one split of the parsed index (called while preparing)."""
    self["kind"] = kind
    entry = {"pids": np.asarray(pids).tolist(),
             "camids": np.asarray(camids).tolist()}
    if num_frames is not None:
      entry["num_frames"] = np.asarray(num_frames).tolist()
    self.setdefault("splits", {})[split] = entry
    self._file_names[split] = tuple(file_names)

  def file_names(self, split: str) -> tuple[str, ...]:
    """(N,) file names of ``split`` in record order (image or frame)."""
    if split not in self._file_names:
      if self._dir is None:
        raise KeyError(f"No file names recorded for split {split!r}.")
      path = self._dir / _NAMES_FILE.format(split=split)
      # Names never contain a newline (checked when writing).
      self._file_names[split] = tuple(
          path.read_text(encoding="utf-8").split("\n")[:-1])
    return self._file_names[split]

  def save_metadata(self, data_dir) -> None:
    data_dir = epath.Path(data_dir)
    (data_dir / METADATA_FILE).write_text(json.dumps(dict(self)))
    for split in self.get("splits", {}):
      (data_dir / _NAMES_FILE.format(split=split)).write_text(
          "".join(n + "\n" for n in self.file_names(split)), encoding="utf-8")

  def load_metadata(self, data_dir) -> None:
    self._dir = epath.Path(data_dir)
    self._file_names = {}
    self.clear()
    self.update(json.loads((self._dir / METADATA_FILE).read_text()))


def _relative_names(paths: Sequence[str], root: str) -> list[str]:
  """Paths relative to the dataset root, '/'-separated (the stored names)."""
  names = []
  for path in paths:
    rel = os.path.relpath(path, root)
    if rel == ".." or rel.startswith(".." + os.path.sep):
      raise ValueError(
          f"Parsed file {path!r} lies outside the dataset root {root!r}; "
          "cannot store it under a name relative to the root.")
    if "\n" in rel:
      raise ValueError(f"File name {rel!r} contains a newline; rename it.")
    names.append(rel.replace(os.path.sep, "/"))
  return names


# --------------------------------------------------------------- configs --


@dataclasses.dataclass(eq=False)
class ReidConfig(tfds.core.BuilderConfig):
  """A builder config: keyword options of the dataset's parser, fixed.

  Attributes:
    options: (key, value) pairs of parser options, e.g.
      (("variant", "detected"),) or (("split_index", 3), ("seed", 0)).
  """

  options: tuple[tuple[str, Any], ...] = ()


def _split_configs(label: str, **fixed) -> list[ReidConfig]:
  """split_0 .. split_9: the parser's ``split_index`` 0..9 (+ fixed options)."""
  return [ReidConfig(name=f"split_{i}",
                     description=f"{label}, train/test identity split {i}.",
                     options=(("split_index", i),) + tuple(fixed.items()))
          for i in range(10)]


# ------------------------------------------------------------ base class --


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder: parse the manual dir with our parser, write 3 splits.

  Subclasses set ``name``, ``LAYOUT`` (the dataset's name in
  `reidjax.data.layouts.LAYOUTS`), ``VIDEO``, ``MANUAL_DOWNLOAD_INSTRUCTIONS``,
  ``HOMEPAGE``, ``CITATION`` and, where the parser takes options,
  ``BUILDER_CONFIGS`` of `ReidConfig`.
  """

  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "First release, indexed by reidjax's parsers."}
  LAYOUT: ClassVar[str] = ""
  VIDEO: ClassVar[bool] = False
  HOMEPAGE: ClassVar[str] = ""
  CITATION: ClassVar[str] = ""

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.is_prepared():
      # ArrayRecord by default: the reader needs random access by index. (A
      # prepared dataset keeps the format it was written in.)
      self.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)

  @property
  def parser_options(self) -> dict[str, Any]:
    """The parser options of this builder's config ({} without configs)."""
    return dict(self.builder_config.options) if self.builder_config else {}

  def _parse(self, root: str) -> Dataset:
    return layouts.parse_dataset(self.LAYOUT, root, **self.parser_options)

  @classmethod
  def config_for(cls, **options) -> str | None:
    """Name of the one config whose options include ``options``.

    ``{}`` picks the default (first) config; None for builders without
    configs. An option no config pins that has the parser's default value
    (e.g. PRID-2011's ``min_frames=21``, as a config's ``data.options`` built
    from `layouts.default_options` holds it) is ignored: every config was
    prepared with it.

    Raises:
      ValueError: no config, or more than one, matches.
    """
    pinned = {k for c in cls.BUILDER_CONFIGS for k, _ in c.options}
    defaults = layouts.default_options(cls.LAYOUT) if cls.LAYOUT else {}
    options = {k: v for k, v in options.items()
               if k in pinned or k not in defaults or v != defaults[k]}
    if not cls.BUILDER_CONFIGS:
      if options:
        raise ValueError(f"Dataset {cls.name!r} takes no options, got "
                         f"{options}.")
      return None
    if not options:
      return cls.BUILDER_CONFIGS[0].name
    matches = [c.name for c in cls.BUILDER_CONFIGS
               if options.items() <= dict(c.options).items()]
    if len(matches) != 1:
      known = "; ".join(f"{c.name} = {dict(c.options)}"
                        for c in cls.BUILDER_CONFIGS)
      raise ValueError(
          f"Dataset {cls.name!r}: options {options} match "
          f"{'no' if not matches else 'more than one'} config (configs: "
          f"{known}).")
    return matches[0]

  def _features(self) -> tfds.features.FeaturesDict:
    features = {
        # Decodes to (H, W, 3) uint8; stored as the file's own bytes.
        "image": tfds.features.Image(shape=(None, None, 3)),
        "pid": tfds.features.Scalar(
            np.int32, doc="Identity: train relabelled 0..P-1, query/gallery "
            "the dataset's own id (0 = distractor)."),
        "camid": tfds.features.Scalar(np.int32, doc="Camera id, 0-based."),
        "file_name": tfds.features.Text(
            doc="Path relative to the dataset root, '/'-separated."),
    }
    if self.VIDEO:
      features["tracklet"] = tfds.features.Scalar(
          np.int32, doc="Index of the frame's tracklet within the split.")
      features["frame"] = tfds.features.Scalar(
          np.int32, doc="Position of the frame within its tracklet.")
    return tfds.features.FeaturesDict(features)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or self.name).strip(),
        features=self._features(),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        metadata=ReidIndexMetadata(),
        disable_shuffling=True,  # Record i of a split = parsed item i.
    )

  def _split_generators(self, dl_manager):
    dataset = self._parse(os.fspath(dl_manager.manual_dir))
    if is_video(dataset) != self.VIDEO:
      raise TypeError(
          f"Parser of {self.LAYOUT!r} returned a {type(dataset).__name__}, "
          f"but the {self.name} builder stores "
          f"{'video' if self.VIDEO else 'image'} data.")
    metadata = self.info.metadata
    generators = {}
    for split_name in SPLITS:
      split = getattr(dataset, split_name)
      if self.VIDEO:
        paths, _ = split.frame_table()
        names = _relative_names(paths, dataset.root)
        metadata.set_split(split_name, kind="video", pids=split.pids,
                           camids=split.camids, file_names=names,
                           num_frames=split.num_frames)
      else:
        paths = split.paths
        names = _relative_names(paths, dataset.root)
        metadata.set_split(split_name, kind="image", pids=split.pids,
                           camids=split.camids, file_names=names)
      generators[split_name] = self._generate_examples(split, paths, names)
    return generators

  def _generate_examples(self, split, paths, names):
    """Yields (record index, example) in parser order.

    Images go in as paths: TFDS then stores the files' bytes unchanged.
    """
    if not self.VIDEO:
      for i, (path, name) in enumerate(zip(paths, names)):
        yield i, {"image": path, "pid": split.pids[i],
                  "camid": split.camids[i], "file_name": name}
      return
    key = 0
    for t, tracklet in enumerate(split.tracklets):
      for f in range(len(tracklet)):
        yield key, {"image": paths[key], "pid": split.pids[t],
                    "camid": split.camids[t], "file_name": names[key],
                    "tracklet": t, "frame": f}
        key += 1


# ---------------------------------------------------------- image builders --


class Market1501(ReidBuilder):
  """Market-1501 (Zheng et al., ICCV 2015): 1,501 ids, 6 cameras.

  Junk images (pid -1) are dropped; distractors (pid 0) are kept in the
  gallery only.
  """

  name = "market1501"
  LAYOUT = "market1501"
  HOMEPAGE = "https://zheng-lab-anu.github.io/Project/project_reid.html"
  CITATION = """@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and
          Wang, Jingdong and Tian, Qi},
  booktitle={ICCV}, year={2015}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the official archive {MARKET1501_ARCHIVE_DIR}.zip (linked
from the Market-1501 page of Zheng et al., ICCV 2015) and unzip it. Pass the
unzipped {MARKET1501_ARCHIVE_DIR}/ folder (or its parent) as the manual
dir: it holds bounding_box_train/, query/ and bounding_box_test/, with file
names like 0002_c1s1_000451_03.jpg."""


class Dukemtmc(ReidBuilder):
  """DukeMTMC-reID (Zheng et al., ICCV 2017): 702 train ids, 8 cameras."""

  name = "dukemtmc"
  LAYOUT = "dukemtmc"
  HOMEPAGE = "https://github.com/layumi/DukeMTMC-reID_evaluation"
  CITATION = """@inproceedings{zheng2017unlabeled,
  title={Unlabeled Samples Generated by GAN Improve the Person
         Re-identification Baseline in vitro},
  author={Zheng, Zhedong and Zheng, Liang and Yang, Yi},
  booktitle={ICCV}, year={2017}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Unzip DukeMTMC-reID.zip, the archive released with Zheng et al., ICCV 2017
(github.com/layumi/DukeMTMC-reID_evaluation). The source DukeMTMC data has
been withdrawn by its authors: use a copy obtained under its original terms.
Pass the unzipped {DUKEMTMC_ARCHIVE_DIR}/ folder (or its parent) as the
manual dir: it holds bounding_box_train/, query/ and bounding_box_test/, with
file names like 0005_c2_f0046985.jpg."""


class OccludedDuke(ReidBuilder):
  """Occluded-DukeMTMC (Miao et al., ICCV 2019), built from DukeMTMC-reID."""

  name = "occluded_duke"
  LAYOUT = "occluded_duke"
  HOMEPAGE = "https://github.com/lightas/Occluded-DukeMTMC-Dataset"
  CITATION = """@inproceedings{miao2019pose,
  title={Pose-Guided Feature Alignment for Occluded Person
         Re-Identification},
  author={Miao, Jiaxu and Wu, Yu and Liu, Ping and Ding, Yuhang and
          Yang, Yi},
  booktitle={ICCV}, year={2019}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Build Occluded-DukeMTMC from a DukeMTMC-reID copy with the scripts of Miao et
al., ICCV 2019 (github.com/lightas/Occluded-DukeMTMC-Dataset); they write an
{OCCLUDED_DUKE_ARCHIVE_DIR}/ folder. Pass that folder (or its parent) as
the manual dir: it holds bounding_box_train/, query/ and bounding_box_test/,
with file names like 0005_c2_f0046985.jpg."""


class Msmt17(ReidBuilder):
  """MSMT17 (Wei et al., CVPR 2018), release V1 or V2: 4,101 ids, 15 cameras.

  Configs: ``list_train`` (default) trains on list_train.txt only (1,041 ids,
  30,248 images), as torchreid and fast-reid do by default and as published
  results are reported; ``list_train_val`` on list_train.txt + list_val.txt
  (1,041 ids, 32,621 images). Query and gallery are the same in both. Each
  config is a full copy of the images.
  """

  name = "msmt17"
  LAYOUT = "msmt17"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "No configs; train = list_train + list_val.",
      "2.0.0": "Configs list_train (default; train = list_train only) and "
               "list_train_val (train = list_train + list_val).",
  }
  BUILDER_CONFIGS = [
      ReidConfig(name="list_train",
                 description=(
                     "Train = list_train.txt: "
                     f"{MSMT17_STATS['train'][1]:,} images."),
                 options=(("include_val", False),)),
      ReidConfig(name="list_train_val",
                 description=(
                     "Train = list_train.txt + list_val.txt: "
                     f"{MSMT17_WITH_VAL_STATS['train'][1]:,} images."),
                 options=(("include_val", True),)),
  ]
  HOMEPAGE = "https://www.pkuvmc.com/dataset.html"
  CITATION = """@inproceedings{wei2018person,
  title={Person Transfer GAN to Bridge Domain Gap for Person
         Re-Identification},
  author={Wei, Longhui and Zhang, Shiliang and Gao, Wen and Tian, Qi},
  booktitle={CVPR}, year={2018}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request the MSMT17 archive from the authors of Wei et al., CVPR 2018
(www.pkuvmc.com) and unzip it. Pass the unzipped MSMT17_V1/ (or MSMT17_V2/)
folder, or its parent, as the manual dir: it holds train/ + test/ (V1) or
mask_train_v2/ + mask_test_v2/ (V2), and list_train.txt, list_val.txt,
list_query.txt and list_gallery.txt."""


class Cuhk03(ReidBuilder):
  """CUHK03 (Li et al., CVPR 2014) under the 767/700 protocol of Zhong et al.

  Configs ``labeled`` (hand-drawn boxes) and ``detected`` (DPM boxes).
  """

  name = "cuhk03"
  LAYOUT = "cuhk03_labeled"  # Its parser options' defaults (split="767/700").
  BUILDER_CONFIGS = [
      ReidConfig(name=v, description=f"CUHK03-NP, {v} bounding boxes.",
                 options=(("variant", v),))
      for v in ("labeled", "detected")]
  HOMEPAGE = "https://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html"
  CITATION = """@inproceedings{li2014deepreid,
  title={DeepReID: Deep Filter Pairing Neural Network for Person
         Re-identification},
  author={Li, Wei and Zhao, Rui and Xiao, Tong and Wang, Xiaogang},
  booktitle={CVPR}, year={2014}}
@inproceedings{zhong2017re,
  title={Re-ranking Person Re-identification with k-reciprocal Encoding},
  author={Zhong, Zhun and Zheng, Liang and Cao, Donglin and Li, Shaozi},
  booktitle={CVPR}, year={2017}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put into one folder, passed as the manual dir (or into its cuhk03/ subfolder):
  cuhk03_release/cuhk-03.mat
      from cuhk03_release.zip, on the CUHK03 page of Li et al., CVPR 2014
      (www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html);
  cuhk03_new_protocol_config_labeled.mat
  cuhk03_new_protocol_config_detected.mat
      the 767/700 split of Zhong et al., CVPR 2017
      (github.com/zhunzhong07/person-re-ranking, evaluation/data/CUHK03/).
The parser extracts the images of the chosen variant from cuhk-03.mat into
images_labeled/ or images_detected/ inside that folder (so it must be
writable), unless those folders (as written by torchreid) are already there."""

  def _parse(self, root):
    # The folder-path registry names the variants cuhk03_labeled / _detected.
    return layouts.parse_dataset(f"cuhk03_{self.parser_options['variant']}",
                                 root)


# ---------------------------------------------------------- video builders --


class Mars(ReidBuilder):
  """MARS (Zheng et al., ECCV 2016): 1,261 ids, 6 cameras, 20,715 tracklets.

  One example per frame; see the module docstring.
  """

  name = "mars"
  LAYOUT = "mars"
  VIDEO = True
  HOMEPAGE = "https://zheng-lab-anu.github.io/Project/project_mars.html"
  CITATION = """@inproceedings{zheng2016mars,
  title={MARS: A Video Benchmark for Large-Scale Person Re-identification},
  author={Zheng, Liang and Bie, Zhi and Sun, Yifan and Wang, Jingdong and
          Su, Chi and Wang, Shengjin and Tian, Qi},
  booktitle={ECCV}, year={2016}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download bbox_train.zip and bbox_test.zip from the MARS page of Zheng et al.,
ECCV 2016, and the info/ folder (train_name.txt, test_name.txt,
tracks_train_info.mat, tracks_test_info.mat, query_IDX.mat) from
github.com/liangzheng06/MARS-evaluation. Unzip all into one folder and pass
it (or its parent, if it is named MARS/ or mars/) as the manual dir:
  bbox_train/0001/0001C1T0001F001.jpg ...
  bbox_test/0000/ 00-1/ 0002/ ...
  info/train_name.txt  info/test_name.txt  info/tracks_train_info.mat
  info/tracks_test_info.mat  info/query_IDX.mat"""


class DukemtmcVideo(ReidBuilder):
  """DukeMTMC-VideoReID (Wu et al., CVPR 2018): 702 train ids, 8 cameras.

  One example per frame; see the module docstring.
  """

  name = "dukemtmc_video"
  LAYOUT = "dukemtmc_video"
  VIDEO = True
  HOMEPAGE = "https://github.com/Yu-Wu/DukeMTMC-VideoReID"
  CITATION = """@inproceedings{wu2018cvpr_oneshot,
  title={Exploit the Unknown Gradually: One-Shot Video-Based Person
         Re-Identification by Stepwise Learning},
  author={Wu, Yu and Lin, Yutian and Dong, Xuanyi and Yan, Yan and
          Ouyang, Wanli and Yang, Yi},
  booktitle={CVPR}, year={2018}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Unzip DukeMTMC-VideoReID.zip, released with Wu et al., CVPR 2018
(github.com/Yu-Wu/DukeMTMC-VideoReID; the source DukeMTMC data has been
withdrawn by its authors, so use a copy obtained under its original terms).
Pass the unzipped DukeMTMC-VideoReID/ folder (or its parent) as the manual
dir: it holds train/, query/ and gallery/, each as
<pid>/<tracklet>/0001_C6_F0001_X30823.jpg ..."""


class Ilidsvid(ReidBuilder):
  """iLIDS-VID (Wang et al., ECCV 2014): 300 ids, 2 cameras, 600 tracklets.

  Configs ``split_0`` .. ``split_9``: the ten 150/150 identity splits. Each
  config is a full copy of the frames.
  """

  name = "ilidsvid"
  LAYOUT = "ilidsvid"
  VIDEO = True
  BUILDER_CONFIGS = _split_configs("iLIDS-VID")
  HOMEPAGE = ("https://xiatian-zhu.github.io/downloads_qmul_iLIDS-VID_ReID_"
              "dataset.html")
  CITATION = """@inproceedings{wang2014person,
  title={Person Re-identification by Video Ranking},
  author={Wang, Taiqing and Gong, Shaogang and Zhu, Xiatian and Wang,
          Shengjin},
  booktitle={ECCV}, year={2014}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download iLIDS-VID.tar from the iLIDS-VID page of Wang et al., ECCV 2014
(QMUL) and untar it. Pass the folder holding i-LIDS-VID/ and
'train-test people splits/' (or its parent, if it is named ilids-vid/ or
iLIDS-VID/) as the manual dir:
  i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png ...
  i-LIDS-VID/sequences/cam2/person001/...
  train-test people splits/train_test_splits_ilidsvid.mat"""


class Prid2011(ReidBuilder):
  """PRID-2011 (Hirzer et al., SCIA 2011), multi-shot: 2 cameras.

  Configs ``split_0`` .. ``split_9``: entry i of splits_prid2011.json when
  the folder has one, else the parser's seeded split i (seed 0). Each config
  is a full copy of the frames.
  """

  name = "prid2011"
  LAYOUT = "prid2011"
  VIDEO = True
  BUILDER_CONFIGS = _split_configs("PRID-2011", seed=0)
  HOMEPAGE = ("https://www.tugraz.at/institute/icg/research/team-bischof/"
              "learning-recognition-surveillance/downloads/prid11")
  CITATION = """@inproceedings{hirzer2011person,
  title={Person Re-Identification by Descriptive and Discriminative
         Classification},
  author={Hirzer, Martin and Beleznai, Csaba and Roth, Peter M. and
          Bischof, Horst},
  booktitle={SCIA}, year={2011}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download prid_2011.zip from the PRID 2011 page of TU Graz (Hirzer et al.,
SCIA 2011) and unzip it. Pass the folder holding prid_2011/ (or its parent,
if it is named prid2011/) as the manual dir:
  prid_2011/multi_shot/cam_a/person_0001/0001.png ...
  prid_2011/multi_shot/cam_b/person_0001/...
  splits_prid2011.json   optional: the 10 splits as torchreid distributes
                         them; without it the parser draws 10 seeded splits"""


BUILDERS: dict[str, type[ReidBuilder]] = {
    b.name: b for b in (Market1501, Dukemtmc, OccludedDuke, Msmt17, Cuhk03,
                        Mars, DukemtmcVideo, Ilidsvid, Prid2011)}
# Folder-path names (`layouts.LAYOUTS`) that are one builder + fixed options.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cuhk03_labeled": ("cuhk03", {"variant": "labeled"}),
    "cuhk03_detected": ("cuhk03", {"variant": "detected"}),
}


def resolve(name: str, **options) -> tuple[type[ReidBuilder], str | None]:
  """(builder class, config name) of a dataset name and parser options.

  Args:
    name: a key of `BUILDERS` or `ALIASES` (the folder-path name).
    **options: parser options, e.g. ``variant="detected"``,
      ``split_index=3``, ``include_val=True``; {} picks the default config.

  Raises:
    ValueError: unknown name, or options that match no (or several) configs.
  """
  if name in ALIASES:
    base, fixed = ALIASES[name]
    clash = {k for k in options if k in fixed and options[k] != fixed[k]}
    if clash:
      raise ValueError(f"Dataset {name!r} fixes {fixed}; got {options}.")
    name, options = base, {**options, **fixed}
  if name not in BUILDERS:
    raise ValueError(
        f"No TFDS builder for dataset {name!r}; known: "
        f"{', '.join(sorted([*BUILDERS, *ALIASES]))}.")
  cls = BUILDERS[name]
  return cls, cls.config_for(**options)


def prepare_command(name: str, data_dir: str, config: str | None) -> str:
  """The shell command that prepares dataset ``name`` (for error messages)."""
  command = (f"python -m reidjax.data.tfds_builders --dataset {name} "
             f"--manual_dir <unpacked {name} folder> --data_dir {data_dir}")
  return command + (f" --config {config}" if config else "")


def prepare(name: str, manual_dir: str, data_dir: str, *,
            config: str | None = None,
            overwrite: bool = False) -> ReidBuilder:
  """Prepares one dataset (config) from its unpacked folder.

  Args:
    name: a key of `BUILDERS`.
    manual_dir: the unpacked official archive (see the builder's
      ``MANUAL_DOWNLOAD_INSTRUCTIONS``).
    data_dir: TFDS data dir; the dataset goes to
      ``<data_dir>/<name>/<config>/<version>/``.
    config: config name; None = the default one.
    overwrite: regenerate even if already prepared.

  Returns:
    The prepared builder.

  Raises:
    ValueError: unknown name or config.
    DatasetNotFoundError: manual_dir is not a folder (with the builder's
      download instructions); the parser's errors for a bad layout.
  """
  if name not in BUILDERS:
    raise ValueError(f"No TFDS builder for dataset {name!r}; known: "
                     f"{', '.join(sorted(BUILDERS))}.")
  cls = BUILDERS[name]
  known = [c.name for c in cls.BUILDER_CONFIGS]
  if config is not None and config not in known:
    raise ValueError(
        f"Dataset {name!r} has no config {config!r}; configs: "
        f"{', '.join(known) if known else 'none'}.")
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise DatasetNotFoundError(
        f"Manual dir {manual_dir!r} of {name} does not exist or is not a "
        f"folder.\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  builder = cls(data_dir=os.path.expanduser(os.fspath(data_dir)),
                config=config)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode,
      try_download_gcs=False))
  return builder


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.data.tfds_builders",
      description="Prepares one ReID dataset as TFDS (ArrayRecord) from its "
      "unpacked official archive.")
  parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
  parser.add_argument("--manual_dir", required=True,
                      help="the unpacked dataset folder")
  parser.add_argument("--data_dir", default="~/tensorflow_datasets",
                      help="TFDS data dir (default: %(default)s)")
  parser.add_argument(
      "--config", default=None,
      help="msmt17: list_train | list_train_val; cuhk03: labeled | detected; "
      "ilidsvid, prid2011: split_0 .. split_9 (default: the first)")
  parser.add_argument("--overwrite", action="store_true",
                      help="regenerate an already prepared dataset")
  args = parser.parse_args(argv)
  known = [c.name for c in BUILDERS[args.dataset].BUILDER_CONFIGS]
  if args.config is not None and args.config not in known:
    parser.error(f"--config {args.config!r} is not a config of "
                 f"{args.dataset} ({', '.join(known) if known else 'none'}).")
  try:
    builder = prepare(args.dataset, args.manual_dir, args.data_dir,
                      config=args.config, overwrite=args.overwrite)
  except LayoutError as e:  # Missing or malformed folder: say so.
    sys.exit(f"error: {e}")
  counts = ", ".join(f"{s} {builder.info.splits[s].num_examples}"
                     for s in SPLITS)
  unit = "frames" if builder.VIDEO else "images"
  print(f"Prepared {builder.info.full_name} in {builder.data_dir} "
        f"({unit}: {counts}).")


if __name__ == "__main__":
  main(sys.argv[1:])
