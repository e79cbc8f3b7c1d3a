"""Gradient accumulation with batch-hard mining over the whole P x K batch.

``train.grad_accum_steps = M`` (configs/common.py; 1: off) is for recipes
whose batch of activations does not fit in the accelerator's memory. It is
not the usual "M optimizer-free steps whose gradients are summed": batch-hard
triplet mining (Hermans et al. 2017; every paper model's objective) needs the
distances between ALL P x K items of the batch, and mining inside each slice
of the batch finds other (easier) hardest positives and negatives -- the
fast-reid #282 failure. So only the model's forward is split:

1. The batch (B, ...) is cut into M micro-batches of b = B / M items
   (strided: micro-batch i holds items i, i + M, i + 2M, ..., so on a data
   mesh every micro-batch stays spread over all devices, and each of the P
   identities of a P x K batch keeps K / M items in each micro-batch).
2. ``jax.lax.scan`` runs the model on one micro-batch after the other; its
   body is under ``jax.checkpoint``, so the backward pass recomputes a
   micro-batch's activations instead of storing them: the activation memory
   is one micro-batch's (plus the outputs of all of them, a few vectors per
   item).
3. The outputs of all micro-batches are put back in batch order, (B, ...),
   and the objective (mining, cross-entropy, every loss) runs once on the
   whole batch, exactly as with M = 1. One gradient, one optimizer update.

What differs from M = 1 (the reading we take, stated here once):

- BatchNorm in training mode normalises each micro-batch with its own
  statistics (b items, not B), as a batch of b would. The running statistics
  get one update per step from the mean of the micro-batches' statistics (the
  means average to the batch mean exactly; the variances miss the spread
  between micro-batches), so the BN momentum keeps its per-step meaning.
- Dropout draws a fresh mask per micro-batch (the step's key folded with the
  micro-batch index).
- Outputs that do not grow with the batch (e.g. the center loss's (N, C)
  centres) are the same in every micro-batch and are averaged over them.
- Outputs that grow with the batch in more than their first axis (a pair
  model's (B, B) distances, computed inside the forward: DuATM, CACE-Net)
  cannot be split: such a model is refused with an error. Those models would
  need their pairwise stage moved into the objective.

Cost: one extra forward of each micro-batch in the backward pass (the
rematerialisation), about a third more compute than M = 1.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp


def _split(x: jax.Array, steps: int) -> jax.Array:
  """(B, ...) -> (steps, B / steps, ...), micro-batch i = items i, i + steps, ..."""
  return jnp.swapaxes(x.reshape((x.shape[0] // steps, steps) + x.shape[1:]), 0, 1)


def _merge(x: jax.Array) -> jax.Array:
  """(steps, b, ...) -> (steps * b, ...): the inverse of ``_split``."""
  return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def batch_size_of(inputs: Mapping[str, jax.Array]) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(inputs)}
  if len(sizes) != 1:
    raise ValueError(f"Inputs of different batch sizes: {sorted(sizes)}.")
  return sizes.pop()


def apply_in_micro_batches(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
                           inputs: Mapping[str, jax.Array], *, steps: int,
                           rngs: Mapping[str, jax.Array]) -> tuple[Any, dict[str, Any]]:
  """The training-mode forward of ``apply_fn`` over ``steps`` micro-batches.

  Args:
    apply_fn: ``model.apply``.
    variables: ``{"params", "batch_stats"}``.
    inputs: the model's input dict, every field (B, ...).
    steps: M, the number of micro-batches (``train.grad_accum_steps``); must
      divide B. 1: one plain ``apply_fn`` call (bitwise the forward without
      accumulation).
    rngs: e.g. ``{"dropout": key}``; folded with the micro-batch index.

  Returns:
    ``(outputs, {"batch_stats": updated})`` as
    ``apply_fn(variables, inputs, train=True, mutable=["batch_stats"])``
    returns them: per-item outputs (B, ...) in batch order (see the module
    docstring for BatchNorm and batch-independent outputs).

  Raises:
    ValueError: ``steps`` < 1 or not a divisor of B, or an output that grows
      with the batch in more than its first axis (pairwise, e.g. (B, B)).
  """
  def run(params, batch_stats, micro_inputs, micro_rngs):
    return apply_fn({"params": params, "batch_stats": batch_stats}, micro_inputs,
                    train=True, mutable=["batch_stats"], rngs=micro_rngs)

  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"train.grad_accum_steps must be a positive integer, got {steps!r}.")
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  if steps == 1:
    return run(params, batch_stats, inputs, rngs)
  batch = batch_size_of(inputs)
  if batch % steps:
    raise ValueError(f"train.grad_accum_steps={steps} must divide the batch of {batch} "
                     "items (data.num_identities x data.num_instances); pick a divisor.")
  micro = batch // steps

  # Which outputs are per item: their shapes at b and at B items (no compute).
  shapes_at = lambda n: jax.eval_shape(
      run, params, batch_stats,
      {k: jax.ShapeDtypeStruct((n,) + v.shape[1:], v.dtype) for k, v in inputs.items()},
      rngs)[0]
  micro_shapes, full_shapes = shapes_at(micro), shapes_at(batch)

  def kind_of(path, small, full):
    if small.shape == full.shape:
      return "shared"
    if (small.shape[:1] == (micro,) and full.shape[:1] == (batch,)
        and small.shape[1:] == full.shape[1:]):
      return "item"
    raise ValueError(
        f"Output {jax.tree_util.keystr(path)} has shape {small.shape} for {micro} items and "
        f"{full.shape} for {batch}: it couples the items of the batch (pairwise), so "
        f"train.grad_accum_steps={steps} cannot split the forward. Use "
        "train.grad_accum_steps=1 (or a smaller batch) for this model.")

  kinds = jax.tree_util.tree_map_with_path(kind_of, micro_shapes, full_shapes)

  @jax.checkpoint
  def one_micro_batch(params, micro_inputs, index):
    micro_rngs = {name: jax.random.fold_in(key, index) for name, key in rngs.items()}
    return run(params, batch_stats, micro_inputs, micro_rngs)

  def body(carry, xs):
    micro_inputs, index = xs
    return carry, one_micro_batch(params, micro_inputs, index)

  split_inputs = jax.tree.map(lambda x: _split(x, steps), dict(inputs))
  _, (outputs, updates) = jax.lax.scan(body, None, (split_inputs, jnp.arange(steps)))
  outputs = jax.tree.map(
      lambda kind, x: (_merge(x) if kind == "item" else
                       jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.inexact) else x[0]),
      kinds, outputs)
  # One running-statistics update per step: the mean of the micro-batches'.
  updates = jax.tree.map(lambda x: jnp.mean(x, axis=0), updates)
  return outputs, updates
