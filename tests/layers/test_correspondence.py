"""CACE-Net correspondence attention (Eq. 2-4, Table 1-2 switches) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax import layers
from reidjax.layers import correspondence
from tests.layers import cacenet_reference as ref

N, D = 6, 5  # positions per image (e.g. a 3 x 2 map), channels


def _maps(seed, *lead):
  ku, kv = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(ku, lead + (N, D)), jax.random.normal(kv, lead + (N, D)))


def _with_random_weights(variables, seed=7):
  """Replace W and W' (all ones at init) by random positive and negative weights."""
  params = jax.tree.map(lambda a: a, variables["params"])
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  for key, name in zip(keys, ("intra", "inter")):
    if name in params:
      params[name]["weight"] = jax.random.normal(key, params[name]["weight"].shape)
  return {"params": params}


def test_eq_2_to_4_match_numpy_with_diagonal_weights():
  x_u, x_v = _maps(0, 2)
  module = correspondence.CorrespondenceAttention()
  variables = _with_random_weights(module.init(jax.random.PRNGKey(1), x_u, x_v))
  params = variables["params"]
  assert params["intra"]["weight"].shape == (D,)  # W diagonal: one weight per channel
  assert params["inter"]["weight"].shape == (D,)
  a = np.asarray(module.apply(variables, x_u, x_v))
  assert a.shape == (2, 2 * N, 2 * N) and a.dtype == np.float32
  for b in range(2):
    expected = ref.correspondence(x_u[b], x_v[b], params["intra"]["weight"],
                                  params["inter"]["weight"])
    np.testing.assert_allclose(a[b], expected, rtol=1e-5, atol=1e-5)
  # The ReLU of Eq. 4 cut something, and nothing negative is left.
  assert (a == 0).sum() > 0 and a.min() == 0.0


def test_init_is_identity_weights_so_blocks_are_gram_matrices():
  x_u, x_v = _maps(2)
  module = correspondence.CorrespondenceAttention()
  variables = module.init(jax.random.PRNGKey(0), x_u, x_v)
  np.testing.assert_array_equal(variables["params"]["intra"]["weight"], np.ones(D))
  np.testing.assert_array_equal(variables["params"]["inter"]["weight"], np.ones(D))
  a = module.apply(variables, x_u, x_v)
  x = np.concatenate([x_u, x_v], axis=0).astype(np.float64)
  np.testing.assert_allclose(a, np.maximum(x @ x.T, 0.0), rtol=1e-5, atol=1e-5)


def test_pure_functions_match_the_module_and_numpy():
  x_u, x_v = _maps(3)
  w, w_prime = jax.random.normal(jax.random.PRNGKey(5), (2, D))
  s_u = correspondence.intra_importance(x_u, w)
  s_uv = correspondence.inter_importance(x_u, x_v, w_prime)
  np.testing.assert_allclose(s_u, ref.bilinear_diagonal(x_u, x_u, w), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s_uv, ref.bilinear_diagonal(x_u, x_v, w_prime),
                             rtol=1e-5, atol=1e-5)
  a = correspondence.joint_adjacency(s_u, s_uv, s_uv.T, correspondence.intra_importance(x_v, w))
  np.testing.assert_allclose(a, ref.correspondence(x_u, x_v, w, w_prime), rtol=1e-5, atol=1e-5)
  # Exported from reidjax.layers.
  assert layers.intra_importance is correspondence.intra_importance
  assert layers.CorrespondenceAttention is correspondence.CorrespondenceAttention


def test_per_image_blocks_broadcast_over_a_pair_grid():
  """S_u once per image, then the (Na, Nb) grid of joint adjacencies by broadcasting."""
  queries, _ = _maps(4, 3)
  _, gallery = _maps(5, 2)
  module = correspondence.CorrespondenceAttention()
  variables = _with_random_weights(module.init(jax.random.PRNGKey(0), queries, queries))
  s_q = module.apply(variables, queries, method=module.intra_block)  # (3, N, N)
  s_g = module.apply(variables, gallery, method=module.intra_block)  # (2, N, N)
  grid = module.apply(variables, s_q[:, None], s_g[None], queries[:, None], gallery[None],
                      method=module.joint)
  assert grid.shape == (3, 2, 2 * N, 2 * N)
  direct = module.apply(variables, queries[:, None], gallery[None])  # broadcast __call__
  np.testing.assert_allclose(grid, direct, rtol=1e-6, atol=1e-6)
  for i in range(3):
    for j in range(2):
      one = module.apply(variables, queries[i], gallery[j])
      np.testing.assert_allclose(grid[i, j], one, rtol=1e-5, atol=1e-5)


def _swap_halves(a):
  """P A P^T with P exchanging the u and v halves of the 2N nodes."""
  perm = np.concatenate([np.arange(N, 2 * N), np.arange(N)])
  return np.asarray(a)[..., perm, :][..., :, perm]


@pytest.mark.parametrize("adjacency", correspondence.ADJACENCIES)
def test_swapping_the_images_permutes_the_blocks(adjacency):
  x_u, x_v = _maps(6, 2)
  module = correspondence.CorrespondenceAttention(adjacency=adjacency, top_k=2)
  variables = _with_random_weights(module.init(jax.random.PRNGKey(0), x_u, x_v))
  a_uv = module.apply(variables, x_u, x_v)
  a_vu = module.apply(variables, x_v, x_u)
  np.testing.assert_allclose(a_vu, _swap_halves(a_uv), rtol=1e-6, atol=1e-6)
  if adjacency != "top_k":  # top-k rows pick their own k neighbours: not symmetric
    np.testing.assert_allclose(a_uv, np.swapaxes(a_uv, -1, -2), rtol=1e-6, atol=1e-6)


def test_individual_only_graph_has_zero_cross_blocks_and_no_w_prime():
  x_u, x_v = _maps(7)
  module = correspondence.CorrespondenceAttention(cross_image=False)
  variables = module.init(jax.random.PRNGKey(0), x_u, x_v)
  assert set(variables["params"]) == {"intra"}
  variables = _with_random_weights(variables)
  a = np.asarray(module.apply(variables, x_u, x_v))
  np.testing.assert_array_equal(a[:N, N:], 0.0)
  np.testing.assert_array_equal(a[N:, :N], 0.0)
  w = variables["params"]["intra"]["weight"]
  np.testing.assert_allclose(a[:N, :N], np.maximum(ref.bilinear_diagonal(x_u, x_u, w), 0),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a[N:, N:], np.maximum(ref.bilinear_diagonal(x_v, x_v, w), 0),
                             rtol=1e-5, atol=1e-5)


def test_part_alignment_links_only_the_same_position():
  # Hand-checkable: 2 positions, 1 channel, W = 1.
  x_u = jnp.array([[1.0], [2.0]])
  x_v = jnp.array([[3.0], [-1.0]])
  module = correspondence.CorrespondenceAttention(adjacency="part")
  variables = module.init(jax.random.PRNGKey(0), x_u, x_v)
  assert set(variables["params"]) == {"intra"}
  a = module.apply(variables, x_u, x_v)
  expected = np.array([[1.0, 2.0, 1.0, 0.0],
                       [2.0, 4.0, 0.0, 1.0],
                       [1.0, 0.0, 9.0, 0.0],  # S_v[0, 1] = -3, cut by the ReLU
                       [0.0, 1.0, 0.0, 1.0]])
  np.testing.assert_array_equal(a, expected)


def test_fully_connected_links_every_cross_pair_with_weight_one():
  x_u, x_v = _maps(8)
  module = correspondence.CorrespondenceAttention(adjacency="fully_connected")
  a = np.asarray(module.apply(module.init(jax.random.PRNGKey(0), x_u, x_v), x_u, x_v))
  np.testing.assert_array_equal(a[:N, N:], 1.0)
  np.testing.assert_array_equal(a[N:, :N], 1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_keeps_exactly_k_most_similar_per_row(k):
  x_u, x_v = _maps(9)
  module = correspondence.CorrespondenceAttention(adjacency="top_k", top_k=k)
  a = np.asarray(module.apply(module.init(jax.random.PRNGKey(0), x_u, x_v), x_u, x_v))
  u, v = np.asarray(x_u, np.float64), np.asarray(x_v, np.float64)
  cosine = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (
      v / np.linalg.norm(v, axis=1, keepdims=True)).T
  for block, sims in ((a[:N, N:], cosine), (a[N:, :N], cosine.T)):
    assert set(np.unique(block)) <= {0.0, 1.0}
    np.testing.assert_array_equal(block.sum(axis=1), k)
    for row in range(N):
      chosen = set(np.flatnonzero(block[row]))
      assert chosen == set(np.argsort(-sims[row])[:k])
  # A hand-checkable case: u's position 0 is closest to v's position 1.
  hand_u = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  hand_v = jnp.array([[0.0, 2.0], [3.0, 0.1]])
  one = correspondence.CorrespondenceAttention(adjacency="top_k", top_k=1)
  a = one.apply(one.init(jax.random.PRNGKey(0), hand_u, hand_v), hand_u, hand_v)
  np.testing.assert_array_equal(a[:2, 2:], [[0.0, 1.0], [1.0, 0.0]])
  np.testing.assert_array_equal(a[2:, :2], [[0.0, 1.0], [1.0, 0.0]])


def test_bad_settings_raise_clear_errors():
  x_u, x_v = _maps(10)
  with pytest.raises(ValueError, match="adjacency must be one of"):
    module = correspondence.CorrespondenceAttention(adjacency="semantic")
    module.init(jax.random.PRNGKey(0), x_u, x_v)
  with pytest.raises(ValueError, match="top_k must be in"):
    module = correspondence.CorrespondenceAttention(adjacency="top_k", top_k=N + 1)
    module.init(jax.random.PRNGKey(0), x_u, x_v)
  with pytest.raises(ValueError, match="same D"):
    module = correspondence.CorrespondenceAttention()
    module.init(jax.random.PRNGKey(0), x_u, x_v[:, :2])
