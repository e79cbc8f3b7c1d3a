"""Train-step time with the backbone frozen vs trained, on one config.

The frozen step (``reidjax.train.step``, ``freeze_backbone=True``) runs the
backbone in inference mode and differentiates only the parameters outside
it; the other is the ordinary step. Both are timed in the same run on the
same in-memory batch (random pixels, the config's P x K and input size),
after compilation. Prints one JSON object: ms/step (median) of each, their
ratio, compile times, devices.

  python benchmarks/frozen_backbone.py --config configs/duatm.py:synthetic --iters 20
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax

from reidjax.models import build_model, get_objective, interface
from reidjax import sharding
from reidjax.train import optimizer, state as state_lib, step as step_lib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_config(spec: str):
  """"configs/duatm.py:synthetic" -> that file's get_config("synthetic")."""
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(arg) if arg else module.get_config()


def _time(step, state, batch, iters):
  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return state, statistics.median(times) * 1e3, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/duatm.py:synthetic")
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--num_classes", type=int, default=300)
  args = parser.parse_args()

  config = _load_config(args.config)
  data = config.data
  model = build_model(config.model, args.num_classes)
  mesh = sharding.make_data_mesh()
  p, k = data.num_identities, data.num_instances
  with config.unlocked():
    config.optimizer.freeze_backbone_epochs = 1
  tx = optimizer.make_optimizer(config.optimizer, optax.constant_schedule(config.optimizer.lr),
                                steps_per_epoch=10**6)
  state = state_lib.create_train_state(model, tx, seed=0, data_config=data, mesh=mesh)
  rng = np.random.default_rng(0)
  batch = {name: rng.normal(size=shape).astype(dtype)
           for name, (shape, dtype) in interface.input_specs(model, data, p * k).items()}
  batch["pids"] = np.repeat(np.arange(p), k).astype(np.int32)
  batch = sharding.to_global_batch(batch, mesh)
  make = functools.partial(step_lib.make_train_step, get_objective(config.model.name),
                           config.loss, mesh, model=model)

  state, frozen_ms, frozen_compile = _time(
      make(freeze_backbone=True, frozen_backbone_bn=config.optimizer.freeze_backbone_bn),
      state, batch, args.iters)
  _, full_ms, full_compile = _time(make(), state, batch, args.iters)
  print(json.dumps({
      "config": args.config, "batch": p * k,
      "input": list(interface.input_specs(model, data)["images"][0][1:]),
      "frozen_ms_per_step": round(frozen_ms, 2), "trained_ms_per_step": round(full_ms, 2),
      "frozen_over_trained": round(frozen_ms / full_ms, 3),
      "compile_s": {"frozen": round(frozen_compile, 1), "trained": round(full_compile, 1)},
      "devices": jax.device_count(), "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "iters": args.iters}))


if __name__ == "__main__":
  main()
