"""What must import (and run) without TensorFlow or torch.

The model side runs on GPU machines without TensorFlow; the data side's
parsers, index, synthetic writers and `datasets.load_dataset`, and the
configs, run anywhere. Each check runs in a fresh interpreter in which
``import tensorflow`` (and TFDS, and torch) raises ImportError.
"""

import subprocess
import sys
import textwrap

_BLOCK = """
import sys
for blocked in ("tensorflow", "tensorflow_datasets", "torch"):
  sys.modules[blocked] = None  # any `import <blocked>` now raises ImportError
"""

_CHECK = """
loaded = [m for m in sys.modules if sys.modules[m] is not None]
assert not [m for m in loaded
            if m.split(".")[0] in ("tensorflow", "tensorflow_datasets", "torch")
            or m == "reidjax.data.tensorflow_cpu"], loaded
print("ok")
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                        capture_output=True, text=True, timeout=300)


def test_model_side_imports_without_tensorflow():
  out = _run(_BLOCK + """
import reidjax.models, reidjax.layers, reidjax.losses, reidjax.train
import reidjax.checkpoint, reidjax.train.step, reidjax.train.state
import reidjax.evaluate, reidjax.evaluate.runner, reidjax.inference
""" + _CHECK)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"


def test_evaluation_and_inference_do_not_import_training_code():
  # Data flows one way: training writes checkpoints, evaluation reads them.
  out = _run("""
import sys
import reidjax.evaluate, reidjax.evaluate.__main__, reidjax.inference, reidjax.search
import reidjax.export, reidjax.checkpoint, reidjax.sharding, reidjax.models.variables
training = sorted(m for m in sys.modules if m.startswith("reidjax.train"))
assert not training, training
print("ok")
""")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"


# Every module of reidjax.data that must not need TensorFlow.
_TF_FREE_DATA_MODULES = (
    "reidjax.data", "reidjax.data.index", "reidjax.data.layout_common",
    "reidjax.data.market_layouts", "reidjax.data.msmt17",
    "reidjax.data.custom_layout", "reidjax.data.cuhk03",
    "reidjax.data.video_layouts", "reidjax.data.layouts",
    "reidjax.data.synthetic", "reidjax.data.synthetic_video",
    "reidjax.data.datasets", "configs.common")


def test_data_parsers_writers_and_configs_run_without_tensorflow(tmp_path):
  # Not only importable: write both synthetic sets and parse them through
  # load_dataset, and build every paper config, with TensorFlow blocked.
  out = _run(_BLOCK + f"""
import importlib
for module in {_TF_FREE_DATA_MODULES!r}:
  importlib.import_module(module)
import ml_collections
from configs import baseline, common, duatm
from reidjax.data import datasets, layouts
for name in common.DATASETS:
  baseline.get_config(name), duatm.get_config(name)
image = datasets.load_dataset(ml_collections.ConfigDict(dict(
    name="synthetic", root=sys.argv[1] + "/market", synthetic=dict(
        num_train_ids=2, num_test_ids=2, images_per_id=6, num_distractors=1,
        num_junk=1, image_size=(16, 8)))))
video = datasets.load_dataset(ml_collections.ConfigDict(dict(
    name="synthetic_video", root=sys.argv[1] + "/mars", synthetic=dict(
        num_train_ids=2, num_test_ids=2, tracklets_per_id=2, min_frames=2,
        max_frames=2, height=16, width=8, num_distractor_tracklets=1,
        num_junk_tracklets=1))))
assert image.num_train_pids == 2 and len(image.train) == 12, image.summary()
assert video.num_train_pids == 2 and len(video.train) == 4, video.summary()
""" + _CHECK, str(tmp_path))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == "ok"


def test_tensorflow_modules_hide_gpus_first():
  # The TFDS modules go through reidjax.data.tensorflow_cpu, which
  # hides GPUs from TF; importing reidjax.data alone loads no TensorFlow.
  out = _run("""
import sys
import reidjax.data, reidjax.data.datasets, reidjax.data.layouts
assert "tensorflow" not in sys.modules, "reidjax.data imported TensorFlow"
import reidjax.data.tfds_reader
assert "reidjax.data.tensorflow_cpu" in sys.modules
import tensorflow as tf
assert tf.config.get_visible_devices("GPU") == []
print("ok")
""")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"
