"""Backbone speed: reidjax ResNet-50 / DenseNet-121 vs the same PyTorch nets.

Times, in one run and on the same weights, the inference forward pass and a
train step (forward in train mode, backward, SGD-with-momentum update) of the
Flax backbones (jit-compiled) and of the PyTorch reference modules with
torchvision's structure (``reidjax.backbones.torch_reference``, eager).
The loss is the mean square of the globally pooled features, the same in both.
Prints one JSON object: ms/iter (median), images/s, torch/JAX ratios, JAX
compile times, device and thread counts.

  python benchmarks/backbone_speed.py --iters 3 --batch 16

Threads: XLA's CPU backend runs on a pool as large as the usable cores;
torch is set to the same number with ``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from reidjax.backbones import densenet
from reidjax.backbones import resnet
from timing import time_calls  # benchmarks/timing.py, beside this script
from reidjax.backbones import torch_reference
from reidjax.backbones import torchvision_import

_LR, _MOMENTUM = 0.01, 0.9


def _models(arch: str):
  """(torch module, Flax module, name of the final map) for ``arch``."""
  if arch == "resnet50":
    # last_stride=1: the ReID configuration the baseline trains.
    return (torch_reference.resnet50(last_stride=1),
            resnet.resnet50(last_stride=1), "stage4")
  return torch_reference.densenet121(), densenet.densenet121(), "block4"


def _summary(jax_times, torch_times, batch):
  jax_ms = 1e3 * statistics.median(jax_times)
  torch_ms = 1e3 * statistics.median(torch_times)
  return {
      "jax_ms": round(jax_ms, 1),
      "torch_ms": round(torch_ms, 1),
      "jax_images_per_s": round(1e3 * batch / jax_ms, 2),
      "torch_images_per_s": round(1e3 * batch / torch_ms, 2),
      "torch_ms_over_jax_ms": round(torch_ms / jax_ms, 3),
  }


def bench_arch(arch: str, batch: int, height: int, width: int, iters: int,
               warmup: int) -> dict:
  torch.manual_seed(0)
  tmodel, fmodel, key = _models(arch)
  # Same weights in both frameworks.
  variables = torchvision_import.convert_state_dict(
      {k: v.numpy() for k, v in tmodel.state_dict().items()}, arch)
  variables = jax.tree.map(jnp.asarray, variables)
  x_nchw = np.random.RandomState(0).normal(
      size=(batch, 3, height, width)).astype(np.float32)
  x_nhwc = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
  x_torch = torch.from_numpy(x_nchw)

  # --- JAX ---------------------------------------------------------------
  forward = jax.jit(functools.partial(fmodel.apply, train=False))

  def jax_forward():
    jax.block_until_ready(forward(variables, x_nhwc)[key])

  tx = optax.sgd(_LR, momentum=_MOMENTUM)

  def loss_fn(params, batch_stats, x):
    out, updates = fmodel.apply({"params": params, "batch_stats": batch_stats},
                                x, train=True, mutable=["batch_stats"])
    pooled = jnp.mean(out[key].astype(jnp.float32), axis=(1, 2))
    return jnp.mean(pooled**2), updates["batch_stats"]

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, batch_stats, opt_state, x):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  state = [jax.tree.map(jnp.copy, variables["params"]),
           jax.tree.map(jnp.copy, variables["batch_stats"])]
  state.append(tx.init(state[0]))

  def jax_train():
    *new_state, loss = train_step(*state, x_nhwc)
    state[:] = new_state
    jax.block_until_ready(loss)

  # --- torch -------------------------------------------------------------
  optimizer = torch.optim.SGD(tmodel.parameters(), lr=_LR, momentum=_MOMENTUM)

  def torch_forward():
    tmodel.eval()
    with torch.inference_mode():
      tmodel.forward_features(x_torch)

  def torch_train():
    tmodel.train()
    optimizer.zero_grad(set_to_none=True)
    loss = tmodel.forward_features(x_torch).mean(dim=(2, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()

  jf, jf_first = time_calls(jax_forward, iters, warmup)
  tf, _ = time_calls(torch_forward, iters, warmup)
  jt, jt_first = time_calls(jax_train, iters, warmup)
  tt, _ = time_calls(torch_train, iters, warmup)
  return {
      "forward": _summary(jf, tf, batch),
      "train_step": _summary(jt, tt, batch),
      # First call minus a steady-state call: roughly the jit compile time.
      "jax_compile_s": {
          "forward": round(jf_first - statistics.median(jf), 1),
          "train_step": round(jt_first - statistics.median(jt), 1)},
      "final_map_shape": list(jax.eval_shape(
          lambda: forward(variables, x_nhwc))[key].shape),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archs", nargs="+", default=["resnet50", "densenet121"],
                      choices=["resnet50", "densenet121"])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed calls (the first one compiles)")
  args = parser.parse_args()

  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  device = jax.devices()[0]
  results = {
      "benchmark": "backbone_speed",
      "batch": args.batch,
      "input_hw": [args.height, args.width],
      "iters": args.iters,
      "statistic": "median over iters, after warmup",
      "device": {"jax": f"{device.platform}:{device.device_kind}",
                 "torch": "cpu", "cpu": platform.processor() or
                 platform.machine()},
      "threads": {"usable_cores": cores,
                  "torch_num_threads": torch.get_num_threads(),
                  "xla_cpu": "default pool = usable cores"},
      "versions": {"jax": jax.__version__, "torch": torch.__version__},
      "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
  }
  for arch in args.archs:
    results[arch] = bench_arch(arch, args.batch, args.height, args.width,
                               args.iters, args.warmup)
  results["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
