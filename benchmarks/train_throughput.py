r"""Training throughput of every model: compile time, images/s and MFU.

For each model (its paper config, ``configs/<model>.py:<dataset>``: the paper's
batch P x K, resolution, backbone, loss and optimizer), the real train step
(``reidjax.train.step.make_train_step``, jitted over a data mesh of all local
devices) runs on in-memory random batches: no input pipeline, no TensorFlow,
no torch. Reported per model:

* ``compile_s``: lowering + XLA compilation of the step;
* ``step_ms`` / ``images_per_s``: steady state, after ``--warmup`` steps, the
  mean over ``--steps`` dispatched back to back (one sync at the end, as in
  training). Images are items: whole-body images (Attention-Driven ReID's four
  part crops ride along with each), or clips for video (``frames_per_s`` too);
* ``flops_per_step``: XLA's cost analysis of the compiled step (forward,
  backward and optimizer update, as compiled) and ``mfu``: those FLOPs per
  second / the device's peak. XLA counts a loop body once, so with
  ``--grad_accum_steps`` M > 1 (a scan over micro-batches) both are under-counted:
  compare images/s there.

The peak: accelerators from ``PEAK_FLOPS`` (dense, no sparsity, the vendor's
datasheet; the source is printed); on CPU, or an accelerator not in the table,
the matmul rate measured in this run (best of 3 of a 4096^2 ``jnp.dot`` in the
compute dtype) is the reference, so CPU MFU is "fraction of what this
machine's matmul reaches".

Prints one JSON object.

  python benchmarks/train_throughput.py                         # paper settings
  python benchmarks/train_throughput.py --preset synthetic --steps 3 \
      --models baseline,dcanet --batch 16                       # CPU, minutes
  python benchmarks/train_throughput.py --models baseline --profile_dir /tmp/trace
  python benchmarks/train_throughput.py --lower_only --dtype bfloat16  # trace check

``--preset synthetic`` takes each model's quick-start config (tiny backbones,
64x32 inputs); ``--batch``, ``--height``/``--width`` and ``--set
model.backbone.width=16`` (any config key) override either preset.
``--dtype``: ``model.dtype`` ("auto": bfloat16 on GPU/TPU, float32 on CPU).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import platform
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # configs/ is a top-level package of the repository
  sys.path.insert(0, _ROOT)

from reidjax import sharding  # noqa: E402
from reidjax.backbones import compute_dtype  # noqa: E402
from reidjax.models import build_model, get_objective, interface  # noqa: E402
from reidjax.train import optimizer, state as state_lib, step as step_lib  # noqa: E402

MODELS = ("baseline", "duatm", "dcanet", "cacenet", "attdriven", "fgra")
# The dataset of each model's headline figures, and its training identities.
PAPER_DATASET = {"baseline": "market1501", "duatm": "market1501", "dcanet": "market1501",
                 "cacenet": "market1501", "attdriven": "market1501", "fgra": "mars"}
TRAIN_IDS = {"market1501": 751, "mars": 625, "synthetic": 300, "synthetic_video": 300}

# Dense (no 2:4 sparsity) peak FLOP/s per device, by a substring of
# jax.Device.device_kind: (bfloat16, float32 matmuls as JAX runs them).
# JAX's default matmul precision on NVIDIA GPUs lets float32 use TF32 tensor
# cores, so the float32 column is the TF32 peak there.
PEAK_FLOPS = {
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 TFLOPS and TF32
    # 989 TFLOPS "with sparsity"; dense is half.
    "H200": (989e12, 494.5e12, "NVIDIA H200 datasheet (SXM), dense = sparse / 2"),
    # NVIDIA H100 Tensor Core GPU datasheet: SXM BF16 1,979 / TF32 989, PCIe
    # 1,513 / 756, NVL 1,671 / 835 TFLOPS with sparsity; dense is half.
    "H100 PCIe": (756e12, 378e12, "NVIDIA H100 datasheet (PCIe), dense = sparse / 2"),
    "H100 NVL": (835e12, 417.5e12, "NVIDIA H100 datasheet (NVL), dense = sparse / 2"),
    "H100": (989e12, 494.5e12, "NVIDIA H100 datasheet (SXM), dense = sparse / 2"),
    # NVIDIA A100 datasheet: BF16 312, TF32 156 TFLOPS dense.
    "A100": (312e12, 156e12, "NVIDIA A100 datasheet, dense"),
    # NVIDIA L4 datasheet: BF16 242.5, TF32 120 TFLOPS with sparsity.
    "L4": (121e12, 60e12, "NVIDIA L4 datasheet, dense = sparse / 2"),
    # Google Cloud TPU documentation, bf16 peak per chip.
    "TPU v5 lite": (197e12, 197e12, "Google Cloud TPU v5e documentation"),
    "TPU v5p": (459e12, 459e12, "Google Cloud TPU v5p documentation"),
    "TPU v4": (275e12, 275e12, "Google Cloud TPU v4 documentation"),
}


def measured_matmul_rate(dtype, size: int = 4096, repeats: int = 3) -> float:
  """FLOP/s of a (size, size) x (size, size) ``jnp.dot`` in ``dtype``, best of repeats."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def device_peak(dtype, matmul_size: int) -> tuple[float, str]:
  """(peak FLOP/s, where it comes from) for the first local device."""
  device = jax.local_devices()[0]
  if device.platform != "cpu":
    for key, (bf16, f32, source) in PEAK_FLOPS.items():
      if key in device.device_kind:
        return (bf16 if dtype == jnp.bfloat16 else f32) * jax.local_device_count(), \
            f"{source} x {jax.local_device_count()} device(s)"
  rate = measured_matmul_rate(dtype, matmul_size)
  return rate, (f"measured in this run: {matmul_size}^2 {jnp.dtype(dtype).name} jnp.dot, "
                f"best of 3, all {jax.local_device_count()} local device(s) of "
                f"{device.device_kind!r}")


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def model_config(name: str, args) -> ml_collections.ConfigDict:
  """The model's paper (or quick-start) config with the command line's overrides."""
  dataset = PAPER_DATASET[name] if args.preset == "paper" else (
      "synthetic_video" if name == "fgra" else "synthetic")
  config = importlib.import_module(f"configs.{name}").get_config(dataset)
  config.model.dtype = args.dtype
  config.model.num_classes = TRAIN_IDS[dataset]
  if args.height:
    config.data.height = args.height
  if args.width:
    config.data.width = args.width
  if args.batch:
    if args.batch % config.data.num_instances:
      raise ValueError(f"--batch {args.batch} must be a multiple of K = "
                       f"data.num_instances = {config.data.num_instances} for {name}.")
    config.data.num_identities = args.batch // config.data.num_instances
  for item in args.set:
    key, _, value = item.partition("=")
    *sections, field = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = parse_value(value)
  return config


def random_batch(model, config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """Normal-noise images (and parts, keypoints), P x K identity labels."""
  rng = np.random.default_rng(seed)
  batch = {}
  for field, (shape, dtype) in interface.input_specs(model, config.data, batch_size).items():
    batch[field] = (rng.standard_normal(shape, np.float32).astype(dtype)
                    if np.issubdtype(dtype, np.floating) else np.zeros(shape, dtype))
  k = config.data.num_instances
  ids = rng.permutation(config.model.num_classes)[:batch_size // k]
  batch["pids"] = np.repeat(ids, k).astype(np.int32)
  batch["camids"] = rng.integers(0, 6, batch_size).astype(np.int32)
  return batch


def random_train_state(model, tx, data_config, mesh):
  """A train state with NumPy-drawn variables: He-normal kernels, BN scales and
  variances in [0.5, 1.5], the rest N(0, 0.1); the optimizer's own init; zero
  step, RNG key and counters. ``create_train_state`` compiles JAX's RNG for every
  parameter (tens of seconds on a CPU, several on a GPU); the speed of a step
  does not depend on the values."""
  abstract = state_lib.abstract_train_state(model, tx, data_config=data_config, mesh=mesh)
  rng = np.random.RandomState(0)

  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

  params = jax.tree_util.tree_map_with_path(draw, abstract.params)
  batch_stats = jax.tree_util.tree_map_with_path(draw, abstract.batch_stats)
  zeros = jax.tree.map(lambda leaf: jax.device_put(np.zeros(leaf.shape, leaf.dtype),
                                                   leaf.sharding), abstract)
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params)
  return zeros.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)


def flops_of(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def benchmark(name: str, args, mesh, peak: float) -> dict:
  config = model_config(name, args)
  model = build_model(config.model, config.model.num_classes)
  batch_size = config.data.num_identities * config.data.num_instances
  schedule = optimizer.make_schedule(config.schedule, lr=config.optimizer.lr, steps_per_epoch=100)
  tx = optimizer.make_optimizer(
      config.optimizer, schedule, steps_per_epoch=100,
      center_weight=config.loss.center_weight if config.model.get("center_loss") else 0.0)
  start = time.perf_counter()
  state = random_train_state(model, tx, config.data, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  train_step = step_lib.make_train_step(get_objective(name), config.loss, mesh, schedule,
                                        model=model, grad_accum_steps=args.grad_accum_steps)
  batch = sharding.to_global_batch(random_batch(model, config, batch_size, seed=0), mesh)

  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  if args.lower_only:  # a check that the step traces at these settings
    return {"config": f"configs/{name}.py:{config.data.name}", "batch": batch_size,
            "lower_s": round(time.perf_counter() - start, 2),
            "flops_per_step_estimate": flops_of(lowered)}
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = flops_of(compiled)

  losses = []
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
    losses.append(metrics["loss"])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  losses.append(metrics["loss"])

  if args.profile_dir and name == args.profile_model:
    # A few more steps under the profiler (TensorBoard / Perfetto trace).
    jax.profiler.start_trace(os.path.join(args.profile_dir, name))
    for _ in range(args.profile_steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()

  inputs = interface.input_specs(model, config.data, batch_size)
  result = {
      "config": f"configs/{name}.py:{config.data.name}",
      "batch": batch_size, "inputs": {f: "x".join(map(str, s)) for f, (s, _) in inputs.items()},
      "compute_dtype": jnp.dtype(compute_dtype(args.dtype)).name,
      "init_s": round(init_s, 2), "compile_s": round(compile_s, 2), "step_ms": round(1e3 * seconds, 2),
      "images_per_s": round(batch_size / seconds, 1),
      "flops_per_step": flops, "tflops_per_s": round(flops / seconds / 1e12, 4),
      "mfu": round(flops / seconds / peak, 4),
      "loss_first": round(float(losses[0]), 4), "loss_last": round(float(losses[-1]), 4),
  }
  if config.data.get("video", False):
    result["frames_per_s"] = round(batch_size * config.data.clip_length / seconds, 1)
  if args.grad_accum_steps > 1:
    result["grad_accum_steps"] = args.grad_accum_steps
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated, of {list(MODELS)}")
  parser.add_argument("--preset", choices=("paper", "synthetic"), default="paper")
  parser.add_argument("--dtype", default="auto", help="model.dtype: auto|bfloat16|float32")
  parser.add_argument("--batch", type=int, default=0, help="0: the config's P x K")
  parser.add_argument("--height", type=int, default=0, help="0: the config's")
  parser.add_argument("--width", type=int, default=0, help="0: the config's")
  parser.add_argument("--set", action="append", default=[],
                      help="config override key=value, e.g. model.backbone.width=16")
  parser.add_argument("--grad_accum_steps", type=int, default=1)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--matmul_size", type=int, default=4096,
                      help="the measured reference matmul (CPU / unknown devices)")
  parser.add_argument("--lower_only", action="store_true",
                      help="only trace and lower each step (no compile, no timing)")
  parser.add_argument("--profile_dir", default="",
                      help="write a jax.profiler trace of --profile_model's step here")
  parser.add_argument("--profile_model", default="baseline")
  parser.add_argument("--profile_steps", type=int, default=5)
  args = parser.parse_args(argv)
  names = [n for n in args.models.split(",") if n]
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f"--models: unknown {unknown}; known {list(MODELS)}")

  mesh = sharding.make_data_mesh()
  dtype = compute_dtype(args.dtype)
  peak, peak_source = device_peak(dtype, args.matmul_size)
  device = jax.local_devices()[0]
  result = {
      "device": device.device_kind, "platform": device.platform,
      "devices": jax.device_count(), "cpus": os.cpu_count(), "jax": jax.__version__,
      "python": platform.python_version(), "dtype": args.dtype,
      "compute_dtype": jnp.dtype(dtype).name, "preset": args.preset,
      "overrides": args.set, "steps": args.steps, "warmup": args.warmup,
      "peak_flops": peak, "peak_source": peak_source,
      "load_1min_before": os.getloadavg()[0], "models": {}}
  for name in names:
    try:
      result["models"][name] = benchmark(name, args, mesh, peak)
    except Exception as error:  # one model's failure must not hide the others'
      traceback.print_exc()
      result["models"][name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    print(f"{name}: {json.dumps(result['models'][name])}", file=sys.stderr, flush=True)
  if device.platform == "cpu":  # the reference again: the load may have changed
    result["peak_flops_after"] = measured_matmul_rate(dtype, args.matmul_size)
  result["load_1min_after"] = os.getloadavg()[0]
  json.dump(result, sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main()
