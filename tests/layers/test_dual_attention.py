"""DuATM's dual attention layer against NumPy Eq. 1-5 and its properties."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.layers import DualAttention
from reidjax.layers import dual_attention
from tests.layers import duatm_reference as ref

DIM = 8  # Differs from every length and count below (jaxpr shape checks).
LENGTHS_A = (5, 2, 4)  # S = 5.
LENGTHS_B = (7, 3, 1, 6)  # S' = 7.


def unit_sequences(seed, lengths, max_len=None, garbage=np.nan):
  """(N, S, DIM) unit vectors, padded with ``garbage``; (N, S) mask."""
  rng = np.random.default_rng(seed)
  max_len = max_len or max(lengths)
  x = rng.normal(size=(len(lengths), max_len, DIM))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  mask = np.arange(max_len)[None, :] < np.array(lengths)[:, None]
  x[~mask] = garbage
  return x.astype(np.float32), mask


def make_variables(model, seed=0):
  """Initialised variables with non-trivial BN parameters and statistics."""
  x, mask = unit_sequences(seed, (3, 2), garbage=0.0)
  variables = flax.core.unfreeze(
      jax.jit(model.init)(jax.random.key(seed), x, mask))
  if "params" not in variables:
    return variables
  rng = np.random.default_rng(seed + 100)
  params, stats = variables["params"], variables["batch_stats"]
  # A larger W makes the attention weights far from uniform.
  params["transform"]["kernel"] = 3.0 * params["transform"]["kernel"]
  params["transform"]["bias"] = rng.normal(0, 0.3, DIM).astype(np.float32)
  params["norm"]["scale"] = rng.uniform(0.5, 2.0, DIM).astype(np.float32)
  params["norm"]["bias"] = rng.normal(0, 0.5, DIM).astype(np.float32)
  stats["norm"]["mean"] = rng.normal(0, 0.3, DIM).astype(np.float32)
  stats["norm"]["var"] = rng.uniform(0.5, 2.0, DIM).astype(np.float32)
  return variables


def numpy_eval_distances(variables, x_a, mask_a, x_b, mask_b, **ablation):
  stats = variables["batch_stats"]["norm"]
  return ref.distance_matrix(ref.unpad(x_a, mask_a), ref.unpad(x_b, mask_b),
                             variables["params"], np.float64(stats["mean"]),
                             np.float64(stats["var"]), **ablation)


@pytest.fixture(scope="module")
def setup():
  # Unblocked (compiles faster); blocks have their own tests below.
  model = DualAttention(block_a=None, block_b=None)
  variables = make_variables(model)
  x_a, mask_a = unit_sequences(1, LENGTHS_A)
  x_b, mask_b = unit_sequences(2, LENGTHS_B)
  return model, variables, x_a, mask_a, x_b, mask_b


@functools.partial(jax.jit, static_argnums=0)
def _jit_distance(model, variables, x_a, mask_a, x_b, mask_b):
  return model.apply(variables, x_a, x_b, mask_a, mask_b, method="distance")


@functools.partial(jax.jit, static_argnums=0)
def _jit_train(model, variables, x, mask):
  """Training-mode all-pairs matrix and updated batch statistics."""
  return model.apply(variables, x, mask, train=True, mutable=["batch_stats"])


def tile_distance(model, variables, x_a, mask_a, x_b, mask_b):
  return np.asarray(_jit_distance(model, variables, x_a, mask_a, x_b, mask_b))


def test_importable_from_layers():
  from reidjax.layers import DualAttention as imported  # pylint: disable=g-import-not-at-top
  assert imported is dual_attention.DualAttention


def test_tile_matches_numpy_per_pair(setup):
  model, variables, x_a, mask_a, x_b, mask_b = setup
  result = tile_distance(model, variables, x_a, mask_a, x_b, mask_b)
  expected = numpy_eval_distances(variables, x_a, mask_a, x_b, mask_b)
  assert result.shape == (3, 4)
  assert expected.min() > 0.05  # no self pairs: far above round-off
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_blocking_does_not_change_the_result(setup):
  # (2, 2): 3 sequences of a become 2 blocks of 2 plus a padding row, as
  # reference (a -> b) and as memory (b -> a).
  _, variables, x_a, mask_a, x_b, mask_b = setup
  results = [tile_distance(DualAttention(block_a=ba, block_b=bb), variables,
                           x_a, mask_a, x_b, mask_b)
             for ba, bb in [(None, None), (1, 1), (2, 2)]]
  for result in results[1:]:
    np.testing.assert_allclose(result, results[0], rtol=1e-6)


def test_tile_equals_separate_pairs(setup):
  model, variables, x_a, mask_a, x_b, mask_b = setup
  tile = tile_distance(model, variables, x_a, mask_a, x_b, mask_b)
  for a in range(3):
    for b in range(4):
      single = tile_distance(model, variables, x_a[a:a + 1], mask_a[a:a + 1],
                             x_b[b:b + 1], mask_b[b:b + 1])
      np.testing.assert_allclose(single[0, 0], tile[a, b], rtol=1e-5)


@pytest.mark.parametrize("intra,inter", [(False, True), (True, False),
                                         (False, False)])
def test_ablations_match_numpy(setup, intra, inter):
  _, _, x_a, mask_a, x_b, mask_b = setup
  model = DualAttention(intra=intra, inter=inter, block_a=None, block_b=None)
  variables = make_variables(model)
  result = tile_distance(model, variables, x_a, mask_a, x_b, mask_b)
  if not intra and not inter:
    assert "params" not in variables  # AvePool has nothing to learn.
    mean_a = [x.mean(0) for x in ref.unpad(x_a, mask_a)]
    mean_b = [x.mean(0) for x in ref.unpad(x_b, mask_b)]
    expected = np.array([[np.linalg.norm(ma - mb) for mb in mean_b]
                         for ma in mean_a])
  else:
    expected = numpy_eval_distances(variables, x_a, mask_a, x_b, mask_b,
                                    intra=intra, inter=inter)
  assert expected.min() > 0.05
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_symmetric_in_a_and_b(setup):
  model, variables, x_a, mask_a, x_b, mask_b = setup
  ab = tile_distance(model, variables, x_a, mask_a, x_b, mask_b)
  ba = tile_distance(model, variables, x_b, mask_b, x_a, mask_a)
  np.testing.assert_allclose(ab, ba.T, rtol=1e-6)


def test_all_pairs_of_a_batch_is_symmetric_and_equals_tile_path(setup):
  model, variables, _, _, x_b, mask_b = setup
  all_pairs, items = jax.jit(lambda x, m: (
      model.apply(variables, x, m),
      model.apply(variables, x, m, method="prepare")))(x_b, mask_b)
  tile = np.asarray(jax.jit(dual_attention.pair_distance)(items, items))
  # 0.5 d + 0.5 d^T: symmetric to the bit.
  np.testing.assert_array_equal(all_pairs, all_pairs.T)
  # The diagonal is round-off (~1e-4) in both: compared apart, loosely.
  off_diagonal = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(all_pairs[off_diagonal], tile[off_diagonal],
                             rtol=1e-6)
  assert np.all(np.diag(all_pairs) < 2e-3) and np.all(np.diag(tile) < 2e-3)


def test_invariant_to_permuting_positions(setup):
  model, variables, x_a, mask_a, x_b, mask_b = setup
  rng = np.random.default_rng(5)
  # One permutation per sequence, padding positions mixed in with the rest.
  perm_a = np.stack([rng.permutation(x_a.shape[1]) for _ in x_a])
  perm_b = np.stack([rng.permutation(x_b.shape[1]) for _ in x_b])
  take = lambda v, p: np.take_along_axis(v, p if v.ndim == 2 else p[..., None],
                                         axis=1)
  permuted = tile_distance(model, variables, take(x_a, perm_a),
                           take(mask_a, perm_a), take(x_b, perm_b),
                           take(mask_b, perm_b))
  original = tile_distance(model, variables, x_a, mask_a, x_b, mask_b)
  assert not np.array_equal(take(mask_b, perm_b), mask_b)
  np.testing.assert_allclose(permuted, original, rtol=1e-5)


def test_masked_padding_changes_nothing(setup):
  model, variables, x_a, mask_a, x_b, mask_b = setup
  def pad(x, mask, extra, fill):
    x = np.concatenate([x, np.full((len(x), extra, DIM), fill, np.float32)], 1)
    return x, np.concatenate([mask, np.zeros((len(x), extra), bool)], 1)
  original = tile_distance(model, variables, x_a, mask_a, x_b, mask_b)
  padded = tile_distance(model, variables, *pad(x_a, mask_a, 3, 1e4),
                         *pad(x_b, mask_b, 2, np.inf))
  np.testing.assert_allclose(padded, original, rtol=1e-5)
  # Training: batch statistics and the all-pairs matrix ignore padding too.
  x_pad, mask_pad = pad(x_b, mask_b, 4, -7.0)
  out, stats = _jit_train(model, variables, x_b, mask_b)
  out_pad, stats_pad = _jit_train(model, variables, x_pad, mask_pad)
  # Self-distances (diagonal) are ~1e-4 of round-off, see below: compared
  # apart; every other pair tightly.
  off_diagonal = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(out_pad[off_diagonal], out[off_diagonal],
                             rtol=1e-5)
  assert np.all(np.diag(out) < 2e-3) and np.all(np.diag(out_pad) < 2e-3)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5),
               stats, stats_pad)


def test_identical_sequences_have_zero_distance(setup):
  model, variables, _, _, x_b, mask_b = setup
  # Exactly 0 in the equations: x_bar_a^i and x_hat_a^i are the same sum.
  xs = ref.unpad(x_b, mask_b)
  stats = variables["batch_stats"]["norm"]
  q = ref.transform(xs[0], variables["params"], np.float64(stats["mean"]),
                    np.float64(stats["var"]))
  assert ref.duatm_distance(xs[0], xs[0], q, q) < 1e-12
  # Here: round-off of the expanded Eq. 4, also with different padding.
  x_more = np.concatenate([x_b, np.full((4, 3, DIM), 5.0, np.float32)], 1)
  mask_more = np.concatenate([mask_b, np.zeros((4, 3), bool)], 1)
  d = tile_distance(model, variables, x_b, mask_b, x_more, mask_more)
  assert np.all(np.diag(d) < 2e-3), np.diag(d)
  assert np.all(d[~np.eye(4, dtype=bool)] > 0.05)


def test_train_mode_uses_masked_batch_statistics(setup):
  model, variables, _, _, x_b, mask_b = setup
  items, new_vars = jax.jit(lambda x, m: model.apply(
      variables, x, m, train=True, method="prepare",
      mutable=["batch_stats"]))(x_b, mask_b)
  xs = ref.unpad(x_b, mask_b)
  mean, var = ref.batch_statistics(xs, variables["params"])
  for k, x in enumerate(xs):
    expected_q = ref.transform(x, variables["params"], mean, var)
    np.testing.assert_allclose(items.q[k][mask_b[k]], expected_q, rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_array_equal(items.q[~mask_b], 0.0)
  old = variables["batch_stats"]["norm"]
  new = new_vars["batch_stats"]["norm"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * mean,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * var,
                             rtol=1e-5)
  # The all-pairs training matrix uses these statistics once for the batch.
  all_pairs = _jit_train(model, variables, x_b, mask_b)[0]
  expected = ref.distance_matrix(xs, xs, variables["params"], mean, var)
  # The diagonal is 0 in float64 and round-off here (see above): apart.
  off_diagonal = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(all_pairs[off_diagonal], expected[off_diagonal],
                             rtol=1e-5)
  assert np.all(np.diag(expected) < 1e-12)
  assert np.all(np.diag(all_pairs) < 2e-3)


def _dot_flops(jaxpr, multiplier=1, found=None):
  """[(lhs shape, rhs shape, FLOPs)] of every dot_general, scans unrolled."""
  found = [] if found is None else found
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      flops = 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs[c] for c in contracting])
      found.append((lhs, rhs, int(flops) * multiplier))
    inner = multiplier * (eqn.params["length"]
                          if eqn.primitive.name == "scan" else 1)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _dot_flops(sub.jaxpr, inner, found)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _dot_flops(sub, inner, found)
  return found


@pytest.mark.parametrize("num_a,num_b", [(4, 6), (2, 12)])
def test_per_sequence_work_is_done_once_per_sequence(setup, num_a, num_b):
  """Matmul FLOPs = per-sequence work x (Na + Nb) + pair work x Na Nb."""
  _, variables, *_ = setup
  model = DualAttention(block_a=2, block_b=3)  # Divide both tiles: no padding.
  len_a, len_b = 5, 7
  x_a = jnp.zeros((num_a, len_a, DIM))
  x_b = jnp.zeros((num_b, len_b, DIM))
  jaxpr = jax.make_jaxpr(lambda u, v: model.apply(
      variables, u, v, method="distance"))(x_a, x_b)
  dots = _dot_flops(jaxpr.jaxpr)
  # The transform Dense (a DIM x DIM kernel) runs once per tile side.
  transform = [(lhs, rhs) for lhs, rhs, _ in dots if rhs == (DIM, DIM)]
  assert sorted(transform) == sorted([((num_a, len_a, DIM), (DIM, DIM)),
                                      ((num_b, len_b, DIM), (DIM, DIM))])
  # Dense, Gram, intra logits, intra weighted sum: per sequence.
  per_sequence = lambda s: 2 * s * DIM * DIM + 3 * 2 * s * s * DIM
  expected = (num_a * per_sequence(len_a) + num_b * per_sequence(len_b)
              + dual_attention.pair_distance_flops(num_a, num_b, len_a, len_b,
                                                   DIM))
  assert sum(f for *_, f in dots) == expected


def test_gradients_are_finite(setup):
  _, variables, x_a, mask_a, _, _ = setup  # NaN padding, self pairs.
  # Blocks over the reference side only, as for a P x V = 40 training batch
  # with the defaults; 3 sequences in blocks of 2 also add a padding row.
  model = DualAttention(block_a=2, block_b=None)
  def loss(params, x):
    out, _ = model.apply({"params": params,
                          "batch_stats": variables["batch_stats"]},
                         x, mask_a, train=True, mutable=["batch_stats"])
    return out.sum()
  grad_params, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      variables["params"], x_a)
  for leaf in jax.tree.leaves(grad_params) + [grad_x]:
    assert np.all(np.isfinite(leaf))
  np.testing.assert_array_equal(grad_x[~mask_a], 0.0)
  assert np.abs(grad_x[mask_a]).max() > 0
