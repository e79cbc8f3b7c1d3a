"""Gradient accumulation (reidjax.train.accumulate): the forward in micro-batches,
batch-hard mining over the whole batch."""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from reidjax import losses, sharding
from reidjax.models import interface
from reidjax.train import accumulate, state as state_lib, step as step_lib

# P4 x K2, identities in consecutive pairs: the strided micro-batches of
# grad_accum_steps=2 (items 0, 2, 4, 6 and 1, 3, 5, 7) hold ONE item of each
# identity, so every item's positive -- its hardest one -- is in the other
# micro-batch, and mining inside a micro-batch would find no positive at all.
PIDS = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
DATA = ml_collections.ConfigDict(dict(height=4, width=2, video=False))


class TinyEmbedding(nn.Module):
  """No BatchNorm: the forward of an item does not depend on the batch split."""

  num_classes: int = 4
  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    features = nn.Dense(6, name="embed")(inputs["images"].reshape(inputs["images"].shape[0], -1))
    features = nn.Dropout(0.0, deterministic=not train)(features)
    return {"features": features, "logits": nn.Dense(self.num_classes, name="fc")(features)}


class TinyPairModel(TinyEmbedding):
  """Computes (B, B) distances inside the forward, as DuATM does."""

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    x = nn.Dense(6, name="embed")(inputs["images"].reshape(inputs["images"].shape[0], -1))
    return {"distances": losses.pairwise_euclidean_distance(x, x)}


def _objective(outputs, batch, config):
  triplet, _ = losses.batch_hard_triplet_loss(outputs["features"], batch["pids"],
                                              margin=config.margin)
  ce, _ = losses.cross_entropy_with_label_smoothing(outputs["logits"], batch["pids"],
                                                    label_smoothing=0.1)
  return triplet + ce, {"loss": triplet + ce, "triplet": triplet}


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"images": rng.normal(size=(8, 4, 2, 3)).astype(np.float32), "pids": PIDS}


def _step(steps: int, margin: float = 5.0):
  mesh = sharding.make_data_mesh()
  model = TinyEmbedding()
  # Plain SGD with learning rate 1: new params = params - gradient.
  state = state_lib.create_train_state(model, optax.sgd(1.0), seed=0, data_config=DATA,
                                       mesh=mesh)
  params = jax.tree.map(np.asarray, state.params)
  train_step = step_lib.make_train_step(
      _objective, ml_collections.ConfigDict(dict(margin=margin)), mesh, model=model,
      grad_accum_steps=steps)
  state, metrics = train_step(state, sharding.to_global_batch(_batch(), mesh))
  grads = jax.tree.map(lambda old, new: old - np.asarray(new), params, state.params)
  return params, float(metrics["loss"]), float(metrics["triplet"]), grads


def test_two_micro_batches_give_the_loss_and_gradients_of_one_batch():
  params, loss_one, triplet_one, grads_one = _step(1)
  _, loss_two, triplet_two, grads_two = _step(2)
  # Same per-item forward, same objective on the same (B, D) outputs: only the
  # order of float32 reductions in the backward differs.
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads_two, grads_one)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_one)) > 1e-3

  # The mining spans the whole batch: the NumPy batch-hard loss of all 8 items.
  x = _batch()["images"].reshape(8, -1) @ params["embed"]["kernel"] + params["embed"]["bias"]
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  same = PIDS[:, None] == PIDS[None]
  hardest_pos = np.where(same & ~np.eye(8, dtype=bool), d, -np.inf).max(1)
  hardest_neg = np.where(~same, d, np.inf).min(1)
  expected = np.maximum(hardest_pos - hardest_neg + 5.0, 0).mean()
  np.testing.assert_allclose(triplet_two, expected, rtol=1e-5)
  # Mining inside each micro-batch would find no positives: a different loss.
  micro = [losses.batch_hard_triplet_loss(jnp.asarray(x[i::2]), PIDS[i::2], margin=5.0)[0]
           for i in (0, 1)]
  assert all(float(m) == 0.0 for m in micro) and expected > 1.0


class TinyBatchNorm(TinyEmbedding):
  """conv -> BN -> ReLU -> dense -> BN: the second BN's input depends on the split."""

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    x = nn.Conv(4, (3, 3), name="conv")(inputs["images"])
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn1")(x))
    x = nn.Dense(6, name="embed")(x.reshape(x.shape[0], -1))
    return {"features": nn.BatchNorm(use_running_average=not train, name="bn2")(x)}


def test_batchnorm_running_mean_of_the_first_layer_matches_one_batch():
  """BN sees micro-batch statistics; the running mean gets their mean, which for
  the first BN layer (its input does not depend on the split) is the batch's."""
  model = TinyBatchNorm()
  images = {"images": jnp.asarray(_batch(1)["images"])}
  variables = model.init({"params": jax.random.PRNGKey(0)}, images)
  run = jax.jit(lambda steps: accumulate.apply_in_micro_batches(
      model.apply, variables, images, steps=steps, rngs={"dropout": jax.random.PRNGKey(0)}),
      static_argnums=0)
  (out_one, upd_one), (out_two, upd_two) = run(1), run(2)
  first_one, first_two = (u["batch_stats"]["bn1"]["mean"] for u in (upd_one, upd_two))
  np.testing.assert_allclose(first_two, first_one, rtol=1e-5, atol=1e-7)
  assert not np.allclose(first_one, 0.0, atol=1e-3)  # the statistics did move
  assert out_two["features"].shape == out_one["features"].shape == (8, 6)
  # The second BN normalises each micro-batch with its own statistics: other numbers.
  assert not np.allclose(out_two["features"], out_one["features"], rtol=1e-3)


def test_pairwise_outputs_and_bad_step_counts_are_refused():
  model = TinyPairModel()
  images = {"images": jnp.zeros((8, 4, 2, 3))}
  variables = model.init({"params": jax.random.PRNGKey(0)}, images)
  apply = lambda steps: accumulate.apply_in_micro_batches(
      model.apply, variables, images, steps=steps, rngs={})
  with pytest.raises(ValueError, match=r"\['distances'\] has shape \(4, 4\) for 4 items"):
    apply(2)
  with pytest.raises(ValueError, match="grad_accum_steps=3 must divide the batch of 8"):
    apply(3)
  with pytest.raises(ValueError, match="positive integer, got 0"):
    apply(0)
