r"""Export a trained model's embedding function for serving: ONNX or StableHLO.

  python -m reidjax.export --workdir workdirs/baseline_synthetic --format onnx --out model.onnx
  python -m reidjax.export --workdir W --format stablehlo --out model.jaxexport

What is exported: ``embedding_function(embedder)``, the model's ``embed``
(inference mode) of a batch of person crops, preprocessing included:

  input  ``images``: uint8 RGB (B, H, W, 3), B dynamic, (H, W) = the run's
         (data.height, data.width); video models: clips (B, T, H, W, 3) with
         T = data.test_clip_length.
  inside x / 255, minus the ImageNet mean, divided by the ImageNet std
         (``reidjax.imagenet``), as the training pipeline normalises.
  output embedding models: (B, D) float32 features, ranked by the run's
         ``eval.metric`` (cosine or squared Euclidean; ``eval.normalize``);
         pair models: their per-item ``embed`` arrays (a dict: StableHLO keeps
         it; ONNX has one output per key, in sorted key order, named after
         the keys).

Resizing is not in the graph: resize each crop to (H, W) first (the training
pipeline and ``reidjax.inference.load_images`` use bilinear, antialiased
when shrinking). Flip test-time augmentation is not included either.

Pair models (DuATM, CACE-Net): only the per-item embedding is exported; the
pair stage (``model.pair_distance`` of two embedded tiles) stays in JAX:
``ReidEmbedder.distance`` or ``reidjax.evaluate.ranking.
pairwise_distance_tiled`` on the exported embeddings. Serve it next to the
exported embedding (e.g. rank the gallery by the ``global`` embedding, and
re-rank each query's top K with ``pair_distance``, as the two-stage
evaluation does).

Formats:

* ``stablehlo``: ``jax.export`` with a symbolic batch dimension, serialised
  (``Exported.serialize()``). Load with ``jax.export.deserialize(bytes)``
  and call ``.call(images)`` with any batch size, on any platform listed in
  the export (CPU, and CUDA where ``--platforms cpu,cuda``).
* ``onnx``: converted with jax2onnx (``pip install -e ".[onnx]"``), batch
  dimension ``B``, opset 21. Run with onnxruntime. Two jax2onnx limits are
  worked around during conversion (``_onnx_friendly_flax``): its Flax-linen
  shims (which re-implement ``nn.max_pool``, ``nn.Conv`` ... and reject
  positional pooling arguments, explicit ``((1, 1), (1, 1))`` padding and
  vmapped convolutions) are switched off, so the converter sees plain lax
  primitives; and ``nn.max_pool`` / ``nn.avg_pool`` run as the max / mean of
  strided slices (the same numbers), because jax2onnx turns a 4-D
  ``reduce_window`` over NHWC into a 4-D ONNX MaxPool that onnxruntime
  rejects ("Unsupported pooling size"). The intermediate shape annotations
  jax2onnx writes are dropped (some are in the wrong layout; onnxruntime
  infers them). DCANet converts too: its DCAM runs the K attention blocks as
  stacked einsums (``reidjax.layers.dcam.StackedAffine``), not through
  ``nn.vmap``, for which jax2onnx's nn.Conv shim has no batching rule.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from reidjax import imagenet, inference
from reidjax.models import interface

FORMATS = ("onnx", "stablehlo")
ONNX_OPSET = 21


def input_shape(config) -> tuple[int, ...]:
  """Per-item input shape: (H, W, 3), or (T, H, W, 3) for a video model."""
  data = config.data
  frames = (data.test_clip_length,) if data.get("video", False) else ()
  return frames + (data.height, data.width, 3)


def embedding_function(embedder: inference.ReidEmbedder) -> Callable[[jax.Array], Any]:
  """``images`` uint8 (B, ...) -> the model's embedding (see module doc).

  The variables are closed over (they become constants of the export).
  """
  fields = interface.input_fields(embedder.model)
  if fields != ("images",):
    raise ValueError(
        f"{type(embedder.model).__name__} takes the input fields {fields}; export handles "
        "models that take images only.")
  model, variables = embedder.model, embedder.variables
  mean = jnp.asarray(imagenet.IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(imagenet.IMAGENET_STD, jnp.float32)

  def embed(images):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    return model.apply(variables, {"images": x}, method="embed")

  return embed


def export_stablehlo(embedder: inference.ReidEmbedder, path: str | None = None,
                     platforms: Sequence[str] = ("cpu",)) -> jax.export.Exported:
  """``jax.export`` of ``embedding_function`` with a symbolic batch; writes the
  serialised bytes to ``path`` if given."""
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch,) + input_shape(embedder.config), jnp.uint8)
  exported = jax.export.export(jax.jit(embedding_function(embedder)),
                               platforms=tuple(platforms))(spec)
  if path:
    _write(path, exported.serialize())
  return exported


def load_stablehlo(path: str) -> jax.export.Exported:
  """The export written by ``export_stablehlo``; call it with ``.call(images)``."""
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def _write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _explicit_padding(padding, shape, window, strides) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return list(lax.padtype_to_pads(shape, window, strides, padding))
  return [tuple(p) for p in padding]


def _pool_by_slices(x, window_shape, strides, padding, *, mean: bool):
  """Max (or mean, zero padding counted) pooling over the axes before the last,
  as ``flax.linen.max_pool`` / ``avg_pool``, written as strided slices."""
  window = tuple(int(w) for w in window_shape)
  strides = tuple(int(s) for s in strides) if strides is not None else (1,) * len(window)
  first = x.ndim - 1 - len(window)  # the pooled axes end before the features
  spatial = x.shape[first:first + len(window)]
  pads = _explicit_padding(padding, spatial, window, strides)
  fill = 0.0 if mean else -jnp.inf
  x = jnp.pad(x, [(0, 0)] * first + pads + [(0, 0)], constant_values=fill)
  padded = x.shape[first:first + len(window)]
  out_sizes = [(n - w) // s + 1 for n, w, s in zip(padded, window, strides)]
  result = None
  for offsets in itertools.product(*(range(w) for w in window)):
    start = [0] * first + list(offsets) + [0]
    limit = (list(x.shape[:first])
             + [o + (n - 1) * s + 1 for o, n, s in zip(offsets, out_sizes, strides)]
             + [x.shape[-1]])
    part = lax.slice(x, start, limit, [1] * first + list(strides) + [1])
    result = part if result is None else (result + part if mean else jnp.maximum(result, part))
  return result / np.prod(window) if mean else result


def _max_pool(inputs, window_shape, strides=None, padding="VALID"):
  return _pool_by_slices(inputs, window_shape, strides, padding, mean=False)


def _avg_pool(inputs, window_shape, strides=None, padding="VALID", count_include_pad=True):
  if not count_include_pad and not (isinstance(padding, str) and padding == "VALID"):
    # No model of ours pools this way; say so rather than export other numbers.
    raise ValueError("ONNX export does not support avg_pool with count_include_pad=False "
                     f"and padding {padding!r}; export with --format stablehlo instead.")
  return _pool_by_slices(inputs, window_shape, strides, padding, mean=True)


@contextlib.contextmanager
def _onnx_friendly_flax() -> Iterator[None]:
  """During conversion: jax2onnx's Flax-linen shims off, pooling as slices (module doc)."""
  # pylint: disable=g-import-not-at-top
  import flax.linen
  import flax.linen.pooling
  from jax2onnx.plugins import plugin_system
  # pylint: enable=g-import-not-at-top
  plugin_system.import_all_plugins()
  # The pooling shims only: with jax2onnx's nn.Conv shim off too, flax's own
  # Conv fails to trace under the converter (a traced feature count).
  shims = [p for p in plugin_system.PLUGIN_REGISTRY.values()
           if type(p).__module__.startswith("jax2onnx.plugins.flax.linen.")
           and type(p).__module__.endswith("pool")]
  # binding_specs (class) and patch_info (class or instance) install the shims.
  owners = [type(p) for p in shims] + shims
  saved = [(o, {k: vars(o)[k] for k in ("binding_specs", "patch_info") if k in vars(o)})
           for o in owners]
  saved_pools = [(m, name, getattr(m, name)) for m in (flax.linen, flax.linen.pooling)
                 for name in ("max_pool", "avg_pool")]
  try:
    for p in shims:
      type(p).binding_specs = classmethod(lambda cls: [])
      type(p).patch_info = None  # the converter's legacy patch list skips non-callables
      if "patch_info" in vars(p):
        p.patch_info = None
    for module, name, _ in saved_pools:
      setattr(module, name, _max_pool if name == "max_pool" else _avg_pool)
    yield
  finally:
    for module, name, original in saved_pools:
      setattr(module, name, original)
    for owner, attrs in saved:
      for k in ("binding_specs", "patch_info"):
        if k in attrs:
          setattr(owner, k, attrs[k])
        elif k in vars(owner):
          delattr(owner, k)


def export_onnx(embedder: inference.ReidEmbedder, path: str | None = None):
  """ONNX ModelProto of ``embedding_function`` (batch dimension ``B``); written
  to ``path`` if given. Needs ``pip install -e ".[onnx]"``."""
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("ONNX export needs jax2onnx: pip install -e \".[onnx]\"") from e
  fn = embedding_function(embedder)
  keys = None
  if embedder.kind == interface.PAIR:
    keys = sorted(jax.eval_shape(fn, jax.ShapeDtypeStruct(
        (1,) + input_shape(embedder.config), jnp.uint8)))
    pair_fn = fn
    fn = lambda images: tuple(pair_fn(images)[k] for k in keys)
  with _onnx_friendly_flax():
    proto = jax2onnx.to_onnx(
        fn, [jax.ShapeDtypeStruct(jax.export.symbolic_shape("B")
                                  + input_shape(embedder.config), jnp.uint8)],
        opset=ONNX_OPSET, input_names=["images"],
        output_names=keys or ["features"])
  # jax2onnx stamps some intermediate shapes in the wrong layout (NCHW for
  # NHWC), which onnxruntime rejects ("Incompatible dimensions" at a residual
  # Add); the shapes of intermediate values are optional: let the runtime
  # infer them.
  del proto.graph.value_info[:]
  if path:
    _write(path, proto.SerializeToString())
  return proto


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m reidjax.export",
                                   description="Export a workdir's embedding function.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default: latest)")
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--out", required=True, help="output file")
  parser.add_argument("--platforms", default="cpu",
                      help="stablehlo: comma-separated platforms, e.g. cpu,cuda")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  embedder = inference.restore(args.workdir, args.step)
  if args.format == "stablehlo":
    export_stablehlo(embedder, args.out, platforms=args.platforms.split(","))
  else:
    export_onnx(embedder, args.out)
  shape = ("B",) + input_shape(embedder.config)
  print(f"{args.format}: {args.out} (input images uint8 {shape})", flush=True)
  return args.out


if __name__ == "__main__":
  main()
