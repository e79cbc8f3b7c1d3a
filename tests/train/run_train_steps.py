"""Runs a few train steps of a tiny baseline on N CPU devices; prints JSON.

Used by test_step.py in a subprocess, because the CPU device count must be
set before JAX starts: ``python -m tests.train.run_train_steps --devices 2``.
"""

import argparse
import json

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from reidjax.models import build_model, get_objective  # noqa: E402
from reidjax import sharding  # noqa: E402
from reidjax.train import optimizer, state as state_lib, step as step_lib  # noqa: E402


def main():
  assert jax.device_count() == args.devices, jax.devices()
  config = ml_collections.ConfigDict(dict(
      name="baseline", dtype="float32", embed_feature="bn",
      backbone=dict(name="resnet50", stage_sizes=(1, 1, 1, 1), width=4, last_stride=1)))
  loss_config = ml_collections.ConfigDict(dict(
      label_smoothing=0.1, triplet_margin=0.3, ce_weight=1.0, triplet_weight=1.0))
  model = build_model(config, num_classes=6)
  mesh = sharding.make_data_mesh()
  tx = optimizer.make_optimizer(ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, weight_decay=5e-4)), 0.05)
  data = ml_collections.ConfigDict(dict(height=32, width=16, video=False))
  state = state_lib.create_train_state(model, tx, seed=0, data_config=data, mesh=mesh)
  train_step = step_lib.make_train_step(get_objective("baseline"), loss_config, mesh,
                                        model=model)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(args.steps):
    batch = {"images": rng.normal(size=(8, 32, 16, 3)).astype(np.float32),
             "pids": np.repeat(rng.permutation(6)[:4], 2).astype(np.int32)}
    state, metrics = train_step(state, sharding.to_global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  stats = jax.tree.leaves(state.batch_stats)
  print(json.dumps({"losses": losses, "devices": jax.device_count(),
                    "batch_stats_sum": float(sum(np.sum(np.abs(s)) for s in stats))}))


main()
