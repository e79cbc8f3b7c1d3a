"""The model-side packages must work without TensorFlow (GPU machines) or torch."""

import subprocess
import sys

_CODE = """
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
sys.modules["torch"] = None  # torch is only for reading .pth files
import reidjax.models, reidjax.layers, reidjax.losses, reidjax.train
import reidjax.train.checkpoint, reidjax.train.step, reidjax.train.state
import reidjax.evaluate, reidjax.evaluate.runner, reidjax.inference
loaded = [m for m in sys.modules if sys.modules[m] is not None]
assert "tensorflow" not in loaded and "torch" not in loaded
print("ok")
"""


def test_model_side_imports_without_tensorflow():
  out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"
