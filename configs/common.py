"""Config sections shared by every paper's config: data, train, eval.

A paper config (``configs/<paper>.py``) builds its model, loss, optimizer
and schedule, and takes ``data``, ``train`` and ``eval`` from here for the
dataset named by its argument:

  image: market1501, dukemtmc, occluded_duke, msmt17, cuhk03_labeled,
         cuhk03_detected, custom, synthetic (generated Market layout)
  video: mars, dukemtmc_video, ilidsvid, prid2011, synthetic_video
         (generated MARS layout)

``data.root`` must point at the unpacked dataset (the synthetic sets are
written there on first use). iLIDS-VID and PRID-2011 take
``data.options.split_index`` (0-9); MSMT17 takes ``data.options.include_val``
(False: train on list_train only, 30,248 images; True: list_train +
list_val, 32,621 images). CUHK03 takes ``data.options.split`` ("767/700", or
"classic": the first of cuhk-03.mat's 20 1,367/100 splits, ``classic_split``
picks another; evaluate it with ``eval.protocol = "cuhk03"``).

The dataset names come from the layout registry (`reidjax.data.layouts`),
which imports no TensorFlow.
"""

import difflib
import re
from typing import Sequence

from absl import flags
import ml_collections

from reidjax.data.datasets import SYNTHETIC_WRITERS
# IMAGE_DATASETS / VIDEO_DATASETS are re-exported for the paper configs.
from reidjax.data.layouts import DATASETS, IMAGE_DATASETS, VIDEO_DATASETS, default_options  # noqa: F401


# ``model.dtype`` of every paper config: the computation dtype of the
# activations. "auto" is bfloat16 on GPU/TPU and float32 on CPU, resolved in
# one place (reidjax.backbones.compute_dtype); "float32" / "bfloat16" force
# one. Parameters, BatchNorm statistics, losses, softmaxes and distances stay
# float32 (README "bf16").
MODEL_DTYPE = "auto"

# The generated sets, shared by every paper's quick start (one set per root:
# the writers refuse to overwrite a set written with other arguments).
# reidjax.data.synthetic.write_synthetic_market arguments: 300 train ids.
SYNTHETIC_MARKET = dict(num_train_ids=300, num_test_ids=100, num_cameras=6, images_per_id=16,
                        num_distractors=150, num_junk=50, seed=0)
# reidjax.data.synthetic_video.write_synthetic_mars arguments: 300 train ids
# with 4-6 tracklets each (a tracklet holds one view of a person, so the
# number of tracklets, not frames, is what a model learns from), 64 x 32.
SYNTHETIC_MARS = dict(num_train_ids=300, num_test_ids=100, tracklets_per_id=(4, 6),
                      height=64, width=32, seed=0)


def check_dataset(name: str, config_file: str, extra: tuple[str, ...] = ()) -> None:
  if name not in DATASETS + extra:
    raise ValueError(f"{config_file} takes ':<dataset>' with a dataset in "
                     f"{list(DATASETS + extra)}, got {name!r}.")


def data_config(name: str) -> ml_collections.ConfigDict:
  """The ``data`` section for dataset ``name`` (image or video)."""
  d = ml_collections.ConfigDict()
  d.name = name
  default_root = SYNTHETIC_WRITERS[name][1] if name in SYNTHETIC_WRITERS else ""
  d.root = ml_collections.FieldReference(default_root, field_type=str)
  # The parser's options with its defaults, e.g. split_index, include_val.
  d.options = ml_collections.ConfigDict(default_options(name))
  if name in ("synthetic", "synthetic_video"):
    d.synthetic = ml_collections.ConfigDict(
        SYNTHETIC_MARKET if name == "synthetic" else SYNTHETIC_MARS)
  d.source = "folder"  # or "tfds": a dataset prepared by reidjax.data.tfds_builders
  d.tfds_data_dir = ""  # "": TFDS's default (~/tensorflow_datasets)
  d.skip_corrupt = False  # True: skip (and count, and log) unreadable images
  d.video = name in VIDEO_DATASETS
  d.height, d.width = 256, 128
  d.sampler = "pk"  # P x K identity batches; "random": P*K images, no identity structure
  d.num_identities = 16  # P (identities per batch)
  d.num_instances = 4  # K (images or tracklets per identity)
  # "images": an epoch draws about every training item once (the BoT / torchreid
  # identity sampler's length); "identities": every identity once (num_ids // P).
  d.epoch = "images"
  d.flip = True
  d.pad = 10
  # "pad": zero-pad by data.pad and random-crop back to (H, W); "enlarge": resize
  # to (1 + 1/8) x (H, W) and random-crop (H, W) (FGRA's recipe).
  d.crop = "pad"
  d.random_erasing = 0.5
  d.eval_batch_size = 128
  if d.video:
    # reidjax.data.clips strategies; frames per clip to train and to test.
    d.clip_length = 4
    d.train_clip_strategy = "evenly"
    d.clip_stride = 8  # for the "stride" strategy
    d.test_clip_length = 4
    d.test_clip_strategy = "all"  # all clips of test_clip_length, pooled per tracklet
    d.test_clip_stride = 4
    d.eval_batch_size = 16  # clips
  return d


def parts_config() -> ml_collections.ConfigDict:
  """The ``data.parts`` section: body-part boxes (Attention-Driven ReID, Eq. 1-2).

  A model that declares the input field "parts" gets the crops of the part
  boxes R1..R4 and, as "images", the whole-body crop R0 (reidjax.data.part_boxes);
  keypoints come from one JSON file per split (reidjax.data.keypoints).
  """
  p = ml_collections.ConfigDict()
  p.source = "pose"  # or "stripes": four fixed horizontal stripes (Table 6 baseline)
  p.height, p.width = 96, 192  # part crops (the paper's 96x192; whole body 384x192)
  # Overlap of neighbouring boxes as a fraction of the body height H: 3H/48 is
  # Table 11's best; the text's H/10 is 0.1.
  p.beta = 3 / 48
  # The joint sets P0..P4 (COCO-18 names; NOTES.md's reading of the garbled text).
  p.joint_sets = ml_collections.ConfigDict(dict(
      whole="all",
      head=("nose", "right_eye", "left_eye", "right_ear", "left_ear"),
      upper_body=("neck", "right_shoulder", "left_shoulder", "right_elbow",
                  "left_elbow", "right_wrist", "left_wrist"),
      upper_legs=("right_hip", "left_hip", "right_knee", "left_knee"),
      lower_legs=("right_knee", "left_knee", "right_ankle", "left_ankle")))
  # Joints below this confidence are filled from the canonical poses.
  p.min_confidence = 0.1
  # Folder of train.json / query.json / gallery.json; "" = <data.root>/keypoints
  # (the synthetic sets write theirs there).
  p.keypoints_dir = ""
  # Images of a split without keypoints: "error", or "warn" (they get the
  # stripes). Keypoints of images not in the split are only logged.
  p.unmatched = "error"
  return p


def resnet50_backbone() -> ml_collections.ConfigDict:
  """The ``model.backbone`` section of the ResNet-50 papers (last stride 1)."""
  b = ml_collections.ConfigDict()
  b.name = "resnet50"
  b.stage_sizes = (3, 4, 6, 3)
  b.width = 64
  b.last_stride = 1
  # A torchvision ImageNet state_dict (.pth) or its converted .npz
  # (python -m reidjax.tools.convert_weights). Empty on a real dataset stops
  # train.py unless from_scratch=True.
  b.pretrained = ""
  b.from_scratch = False
  return b


def train_config() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.log_every_steps = 50
  t.checkpoint_every_steps = 1000
  t.keep_checkpoints = 3
  t.eval_every_epochs = 40  # 0: only at the end.
  # M > 1: the forward in M micro-batches (activation memory of one), the
  # losses and batch-hard mining on the whole P x K batch (reidjax.train.accumulate).
  t.grad_accum_steps = 1
  # A step whose loss or gradient is not finite never updates the state; then
  # "stop": stop, naming the step and the last good checkpoint; "skip": drop
  # that update, count it and go on.
  t.on_nonfinite = "stop"
  return t


def eval_config(name: str) -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.metric = "cosine"  # or "euclidean" (squared)
  e.max_rank = 50
  e.normalize = False  # L2-normalise features before the distance
  e.flip = False  # average the features of each image and its mirror
  # CUHK03 here is the 767/700 protocol, ranked like Market-1501; "cuhk03" is
  # the old single-gallery-shot protocol (1367/100 splits).
  e.protocol = "market1501"
  e.num_repeats = 10  # cuhk03 protocol only
  e.camera_filter = True  # False for data without camera ids
  e.streaming = name == "msmt17"  # never build the Q x G matrix (MSMT17 scale)
  e.clip_pooling = "mean"  # video: clip features -> tracklet feature
  e.rerank_top_k = 0  # pair models: 0 = full pairwise ranking, K = two-stage
  # Two-stage: the top K ordered by the pair distance ("replace") or by the sum
  # of both stages' distances ("sum", as CACE-Net ranks).
  e.rerank_combine = "replace"
  # Embedding models: k-reciprocal re-ranking (Zhong et al. 2017; k1, k2,
  # lambda); "auto": dense where 24 (Q+G)^2 bytes fit in half the free memory,
  # else the sparse streamed path ("dense" / "sparse" force one).
  e.rerank = False
  e.rerank_k1 = 20
  e.rerank_k2 = 6
  e.rerank_lambda = 0.3
  e.rerank_method = "auto"
  # Query expansion: "none", "average" or "alpha" (weights cos^alpha) over the
  # top-k gallery items.
  e.query_expansion = "none"
  e.query_expansion_top_k = 10
  e.query_expansion_alpha = 3.0
  e.verification = False  # TPR at FPR 1e-4, 1e-3, 1e-2 over all pairs
  return e


# --config.<path>=<value> (or --noconfig.<path> for booleans) on a command line.
_OVERRIDE = re.compile(r"^--?(?:no)?(?P<flag>[A-Za-z_][\w]*)\.(?P<path>[^=]+)")


def _config_argument(argv: Sequence[str], name: str) -> str | None:
  """The value of --<name>=FILE[:ARG] (or --<name> FILE[:ARG]) in argv."""
  for i, arg in enumerate(argv):
    if arg.startswith((f"--{name}=", f"-{name}=")):
      return arg.split("=", 1)[1]
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def unknown_override(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why ``--config.<path>`` names no field of ``config``; None if it does.

  E.g. for ``data.nope``: "'data' has no field 'nope'; its fields are ...",
  with the closest field names when the key looks misspelt.
  """
  node, walked = config, []
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"{'.'.join(walked)!r} is a value ({node!r}), not a section with "
              f"a field {key!r}.")
    if key not in node:
      section = ".".join(walked) or "the config"
      fields = sorted(node.keys())
      close = difflib.get_close_matches(key, fields, n=3)
      hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
      listing = (f"its fields are {', '.join(fields)}" if fields
                 else "it has no fields")
      return f"{section!r} has no field {key!r}; {listing}.{hint}"
    node, walked = node[key], walked + [key]
  return None


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS,
                name: str = "config") -> list[str]:
  """absl's flag parsing, with each bad ``--config.*`` override a clear error.

  train.py passes this to ``app.run`` as its ``flags_parser``. ml_collections
  reports an override of a key the config lacks as a bare ``AttributeError``
  traceback, and a value of the wrong type without the field's type; both
  become a ``SystemExit`` naming the flag, what the config holds there and
  what to pass instead.

  Returns:
    The arguments left after parsing (absl's ``FLAGS(argv)``).

  Raises:
    SystemExit: any flag error, with the message (exit status 1).
  """
  try:
    return flag_values(list(argv))
  except (AttributeError, KeyError, TypeError) as error:
    # The override flags are defined while the config file is parsed, so an
    # unknown key fails before the config is kept: load it again to explain.
    argument = _config_argument(argv, name)
    config = None if argument is None else flag_values[name].parser.parse(argument)
    problems = []
    for arg in argv:
      m = _OVERRIDE.match(arg)
      if m and m["flag"] == name and config is not None:
        why = unknown_override(config, m["path"])
        if why:
          problems.append(f"--{name}.{m['path']}: in {argument}, {why}")
    if not problems:
      raise  # Not a misnamed override: a bug to see in full.
    message = "\n".join(problems) + (
        "\nFix the name, or add the field to the config file if it is new.")
    raise SystemExit(f"FATAL Flags parsing error: {message}") from error
  except flags.Error as error:
    message = str(error)
    m = re.match(rf"flag --{name}\.(?P<path>[^=]+)=", message)
    config = flag_values[name].value if name in flag_values else None
    if m and isinstance(config, ml_collections.ConfigDict):
      path = m["path"]
      try:
        current = config[path]
      except (KeyError, AttributeError):
        current = None
      if current is not None:
        example = ("True or False" if isinstance(current, bool)
                   else f"e.g. --{name}.{path}={current}")
        message += (f"\n{name}.{path} takes a value of type "
                    f"{type(current).__name__} (now {current!r}): pass "
                    f"{example}.")
    raise SystemExit(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.") from error
