"""bfloat16 compute (``model.dtype``): f32 parameters, BatchNorm statistics,
losses; a bf16 train step's loss close to the f32 step's, for every model."""

import importlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.extend import core as jax_core

from reidjax import sharding
from reidjax.backbones import compute_dtype
from reidjax.models import build_model, get_objective, interface
from reidjax.train import state as state_lib, step as step_lib

NUM_CLASSES = 8
PIDS = np.repeat(np.arange(4), 2).astype(np.int32)  # P4 x K2

# The paper configs' quick-start arguments (tiny backbones), shrunk further.
SMALLER = {
    "baseline": {"model.backbone.width": 8},
    "duatm": {"data.height": 64, "data.width": 32},
    "dcanet": {"model.backbone.width": 8},
    "cacenet": {"model.backbone.width": 8, "model.embed_dim": 64},
    "attdriven": {"model.attention_stages": (4,), "model.attention_pools": (1,)},
    "fgra": {"model.backbone.width": 8, "model.reduced_features": 64, "data.clip_length": 2},
}

# Fraction of the train step's matmul / convolution FLOPs (forward and
# backward) allowed on float32 operands at these tiny widths. Measured:
# baseline 0.2 %, dcanet 0.4 %, fgra 0.4 %, attdriven 0.9 % (the classifiers
# and small heads), duatm 2.7 % (its matcher stays float32 on purpose: the
# pair distance), cacenet 43 %: its encoder and graph convolution take no
# dtype yet (reidjax/models/cacenet.py; 6 % once they take
# ``dtype=self.backbone.dtype``: then this bound can be 0.1), and its
# correspondence Gram matrices stay float32 on purpose (top-k selection).
# At the paper's widths the heads are < 1 % of the forward's FLOPs (cacenet 12 %).
MAX_FLOAT32_FLOPS = {"baseline": 0.01, "duatm": 0.05, "dcanet": 0.01, "cacenet": 0.1,
                     "attdriven": 0.02, "fgra": 0.01}


def tiny_config(name: str) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{name}").get_config()
  for key, value in SMALLER[name].items():
    section, _, field = key.rpartition(".")
    node = config
    for part in section.split("."):
      node = node[part]
    node[field] = value
  config.model.num_classes = NUM_CLASSES
  return config


def random_batch(model, data_config, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  specs = interface.input_specs(model, data_config, len(PIDS))
  batch = {f: rng.normal(size=shape).astype(dtype) if np.issubdtype(dtype, np.floating)
           else np.zeros(shape, dtype) for f, (shape, dtype) in specs.items()}
  return {**batch, "pids": PIDS}


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(v, jax_core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax_core.Jaxpr):
        yield v


def matmul_flops(jaxpr, multiplier: int = 1):
  """[(primitive, operand dtypes, FLOPs)] of every dot_general / convolution in
  ``jaxpr`` (scan bodies counted once per iteration)."""
  found = []
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in ("dot_general", "conv_general_dilated"):
      lhs, rhs = (v.aval for v in eqn.invars[:2])
      if name == "dot_general":
        contracted = math.prod(lhs.shape[i] for i in eqn.params["dimension_numbers"][0][0])
      else:  # kernel spatial size x input features per group
        contracted = math.prod(rhs.shape[i] for i in eqn.params["dimension_numbers"].rhs_spec[1:])
      flops = 2 * math.prod(eqn.outvars[0].aval.shape) * contracted * multiplier
      found.append((name, (str(lhs.dtype), str(rhs.dtype)), flops))
    inner = multiplier * (eqn.params["length"] if name == "scan" else 1)
    for sub in _sub_jaxprs(eqn):
      found += matmul_flops(sub, inner)
  return found


def random_variables(abstract, seed: int = 0):
  """NumPy draws for a tree of ShapeDtypeStructs: He-normal kernels, BN scales and
  variances in [0.5, 1.5], the rest N(0, 0.1). ``model.init`` under jit would
  compile JAX's RNG for every parameter: tens of seconds here."""
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0.0, 0.1, leaf.shape)

  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(draw(path, leaf), leaf.dtype), abstract)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_data_mesh()


def test_auto_dtype_is_resolved_once_per_platform():
  expected = jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  assert compute_dtype("auto") == expected
  from configs import common
  assert common.MODEL_DTYPE == "auto"
  assert importlib.import_module("configs.baseline").get_config().model.dtype == "auto"


@pytest.mark.parametrize("name", sorted(SMALLER))
def test_bf16_step_matches_float32(name, mesh):
  """The train step's loss is the objective of the training-mode forward (before
  the update); it is computed in each dtype from the same variables and batch.
  The whole bf16 step (forward, backward, SGD update) is traced, not compiled:
  its matmul / convolution operands and its output state's dtypes are read from
  the trace (compiling the step of six models costs minutes on 2 cores)."""
  config = tiny_config(name)
  models = {}
  for dtype in ("float32", "bfloat16"):
    config.model.dtype = dtype
    models[dtype] = build_model(config.model, NUM_CLASSES)
  batch = random_batch(models["float32"], config.data)
  objective = get_objective(name)
  model = models["bfloat16"]

  # The bf16 step: bf16 operands for (nearly) every matmul and convolution,
  # forward and backward; float32 parameters, BN statistics, optimizer state.
  abstract = state_lib.abstract_train_state(model, optax.sgd(0.01), data_config=config.data,
                                            mesh=mesh)
  train_step = step_lib.make_train_step(objective, config.loss, mesh, model=model)
  jaxpr, (new_state, metrics) = jax.make_jaxpr(train_step, return_shape=True)(abstract, batch)
  flops = matmul_flops(jaxpr.jaxpr)
  total = sum(f for _, _, f in flops)
  in_float32 = sum(f for _, dtypes, f in flops if dtypes != ("bfloat16", "bfloat16"))
  assert in_float32 / total <= MAX_FLOAT32_FLOPS[name], (name, in_float32 / total)
  assert {dtypes for p, dtypes, _ in flops if p == "conv_general_dilated"} == {
      ("bfloat16", "bfloat16")}, name
  for tree in (new_state.params, new_state.batch_stats, new_state.opt_state, metrics):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating)), name

  # The step's loss in each dtype, from the same variables and batch.
  variables = random_variables({"params": abstract.params, "batch_stats": abstract.batch_stats})
  inputs = interface.select_inputs(model, batch)
  results = {}
  for dtype, m in models.items():
    def loss_of(variables, batch, m=m):
      outputs, updates = m.apply(variables, inputs, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.PRNGKey(0)})
      return objective(outputs, batch, config.loss)[0], outputs, updates
    # LLVM's optimisation level 0: half the compile time of these tiny nets.
    results[dtype] = jax.jit(loss_of).lower(variables, batch).compile(
        compiler_options={"xla_backend_optimization_level": 0})(variables, batch)
  (loss32, _, _), (loss16, outputs16, updates16) = results["float32"], results["bfloat16"]
  floating = [x for x in jax.tree.leaves((outputs16, updates16))
              if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floating and all(x.dtype == jnp.float32 for x in floating), name
  assert np.isfinite(float(loss16))
  # bf16 keeps 8 significand bits (relative rounding 2^-9 = 0.2 %); the
  # activations of these few-layer nets carry a few such roundings into
  # features whose distances and logits the losses read in float32. Measured
  # relative differences: dcanet 0.03 %, cacenet 0.3 %, attdriven 0.3 %,
  # baseline 0.4 %, fgra 0.6 %, duatm 0.9 %; 2 % leaves room for other seeds.
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
