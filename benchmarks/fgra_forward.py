"""FGRA forward speed beside the plain ResNet-50 forward, in one run.

Times the jitted inference forward (``embed``) of FGRA (the paper's model:
ResNet-50 with last stride 1, N_s = 4, 1024-wide reductions) on clips of
``--frames`` (6) frames of 256 x 128, and of the plain video baseline (the
same ResNet-50, frame features averaged over the clip, BNNeck) on the same
clips, so the cost of the two branches and the alignment (Eq. 1-8) is known.
Random weights (speed does not depend on them). Prints one JSON object:
ms per batch (median), frames/s and clips/s of each, the FGRA / ResNet
time ratio, compile times, device.

  python benchmarks/fgra_forward.py --batch 2 --iters 3            # CPU
  python benchmarks/fgra_forward.py --batch 32 --iters 20 --dtype bfloat16  # GPU

Runs unchanged on GPU (the batch goes to the default device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

# The configs package lives at the repository root, beside benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import baseline as baseline_config  # noqa: E402
from configs import fgra as fgra_config  # noqa: E402
from reidjax import models  # noqa: E402
from timing import time_calls  # noqa: E402  (benchmarks/timing.py, beside this script)


def _model(config_module, arg, dtype, **overrides):
  c = config_module.get_config(arg)
  c.model.dtype = dtype
  c.model.update(overrides)
  return models.build_model(c.model, num_classes=625)


def bench(name, model, clips, iters, warmup) -> dict:
  inputs = {"images": clips}
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), inputs)
  embed = jax.jit(lambda v, x: model.apply(v, x, method="embed"))
  times, first = time_calls(lambda: jax.block_until_ready(embed(variables, inputs)), iters, warmup)
  ms = 1e3 * statistics.median(times)
  b, t = clips.shape[:2]
  return {"model": name, "ms": round(ms, 2), "clips_per_s": round(1e3 * b / ms, 2),
          "frames_per_s": round(1e3 * b * t / ms, 2),
          "first_call_s": round(first, 2),
          "parameters": int(sum(x.size for x in jax.tree.leaves(variables["params"])))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=2, help="clips per forward")
  parser.add_argument("--frames", type=int, default=6, help="frames per clip (N)")
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--correlation", default=None, choices=("einsum", "conv"),
                      help="Eq. 1's form (default: the config's)")
  args = parser.parse_args()
  clips = jnp.asarray(np.random.default_rng(0).normal(
      size=(args.batch, args.frames, args.height, args.width, 3)).astype(np.float32))
  fgra_overrides = {"correlation": args.correlation} if args.correlation else {}
  results = [
      bench("resnet50_temporal_average",
            _model(baseline_config, "mars", args.dtype), clips, args.iters, args.warmup),
      bench("fgra", _model(fgra_config, "mars", args.dtype, **fgra_overrides), clips,
            args.iters, args.warmup),
  ]
  device = jax.devices()[0]
  print(json.dumps({
      "benchmark": "fgra_forward",
      "clips": list(clips.shape), "dtype": args.dtype,
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "num_devices": jax.device_count(), "host": platform.node(),
      "iters": args.iters, "results": results,
      "fgra_ms_over_resnet_ms": round(results[1]["ms"] / results[0]["ms"], 3),
  }, indent=2))


if __name__ == "__main__":
  main()
