"""CACE-Net graph convolutions (Eq. 6-7) and the official PairGraph against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax import layers
from reidjax.layers import correspondence
from reidjax.layers import graph
from tests.layers import cacenet_reference as ref

N, D, F = 6, 5, 4


def _random_adjacency(seed, m, zero_node=None):
  a = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (m, m)), np.float64)
  a = a + a.T
  if zero_node is not None:
    a[zero_node, :] = 0.0
    a[:, zero_node] = 0.0
  return a


def test_normalized_adjacency_is_symmetric_and_guards_zero_degrees():
  a = _random_adjacency(0, 2 * N, zero_node=3)
  a_hat = np.asarray(graph.normalized_adjacency(jnp.asarray(a, jnp.float32)))
  assert np.isfinite(a_hat).all()
  np.testing.assert_allclose(a_hat, ref.normalized_adjacency(a, 1e-12), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a_hat, a_hat.T, atol=1e-7)
  np.testing.assert_array_equal(a_hat[3], 0.0)
  # D^-1/2 A D^-1/2 (not D^-1/2 A D^+1/2): invariant to scaling A.
  np.testing.assert_allclose(graph.normalized_adjacency(jnp.asarray(7.0 * a, jnp.float32)),
                             a_hat, rtol=1e-5, atol=1e-6)
  # Its gradient stays finite through the guarded row.
  grad = jax.grad(lambda t: graph.normalized_adjacency(t).sum())(jnp.asarray(a, jnp.float32))
  assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("mode", graph.MODES)
def test_graph_convolution_matches_eq_6_and_7(mode):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 2 * N, D))
  a = np.stack([_random_adjacency(2, 2 * N), _random_adjacency(3, 2 * N, zero_node=0)])
  module = graph.GraphConvolution(mode=mode, features=F)
  variables = module.init(jax.random.PRNGKey(4), x, jnp.asarray(a, jnp.float32))
  kernel = variables["params"]["theta"]["kernel"]
  assert kernel.shape == (D, F) and "bias" not in variables["params"]["theta"]
  out = np.asarray(module.apply(variables, x, jnp.asarray(a, jnp.float32)))
  assert out.shape == (2, 2 * N, F) and np.isfinite(out).all()
  for b in range(2):
    np.testing.assert_allclose(out[b], ref.graph_convolution(x[b], a[b], kernel, mode, 1e-12),
                               rtol=1e-4, atol=1e-5)
  # The zero-degree node of the second graph passes through as theta x_i.
  np.testing.assert_allclose(out[1, 0], np.asarray(x[1, 0]) @ np.asarray(kernel),
                             rtol=1e-5, atol=1e-6)


def test_discrepancy_and_smoothing_differ_by_twice_the_neighbour_mean():
  x = jax.random.normal(jax.random.PRNGKey(5), (2 * N, D))
  a = jnp.asarray(_random_adjacency(6, 2 * N), jnp.float32)
  minus = graph.propagate(x, a, "discrepancy")
  plus = graph.propagate(x, a, "smoothing")
  np.testing.assert_allclose((plus - minus) / 2, graph.normalized_adjacency(a) @ x,
                             rtol=1e-5, atol=1e-6)
  # A constant signal on a connected graph with equal degrees: the discrepancy is 0.
  ring = jnp.ones((4, 4)) - jnp.eye(4)
  np.testing.assert_allclose(graph.propagate(jnp.ones((4, 3)), ring, "discrepancy"), 0.0,
                             atol=1e-6)


def _pair_gcn(cross_image, mode="discrepancy"):
  corr = correspondence.CorrespondenceAttention(cross_image=cross_image)
  gcn = graph.GraphConvolution(mode=mode, features=F)
  x_u, x_v = jax.random.normal(jax.random.PRNGKey(7), (2, N, D))
  corr_vars = corr.init(jax.random.PRNGKey(8), x_u, x_v)
  gcn_vars = gcn.init(jax.random.PRNGKey(9), jnp.zeros((2 * N, D)), jnp.eye(2 * N))

  def run(u, v):
    a = corr.apply(corr_vars, u, v)
    return gcn.apply(gcn_vars, jnp.concatenate([u, v], axis=-2), a)

  return run, x_u, x_v


@pytest.mark.parametrize("mode", graph.MODES)
def test_individual_only_graph_keeps_the_images_independent(mode):
  run, x_u, x_v = _pair_gcn(cross_image=False, mode=mode)
  other_v = x_v + jax.random.normal(jax.random.PRNGKey(10), x_v.shape)
  before, after = run(x_u, x_v), run(x_u, other_v)
  np.testing.assert_array_equal(before[:N], after[:N])  # u's half: untouched by v
  assert np.abs(np.asarray(before[N:] - after[N:])).max() > 1e-3
  # With the cross-image blocks, u's half does depend on v (the conditional feature).
  joint, _, _ = _pair_gcn(cross_image=True, mode=mode)
  assert np.abs(np.asarray(joint(x_u, x_v)[:N] - joint(x_u, other_v)[:N])).max() > 1e-3


def test_pair_gcn_is_symmetric_under_swapping_the_images():
  run, x_u, x_v = _pair_gcn(cross_image=True)
  uv, vu = run(x_u, x_v), run(x_v, x_u)
  np.testing.assert_allclose(vu[:N], uv[N:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vu[N:], uv[:N], rtol=1e-5, atol=1e-5)


def test_zero_feature_position_gives_finite_output_and_gradient():
  """A zero feature vector has all-zero importances: degree 0, guarded."""
  run, x_u, x_v = _pair_gcn(cross_image=True)
  x_u = x_u.at[2].set(0.0)
  out = run(x_u, x_v)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out[2], 0.0, atol=1e-7)  # theta x_i with x_i = 0
  grad = jax.grad(lambda u: run(u, x_v).sum())(x_u)
  assert np.isfinite(np.asarray(grad)).all()


# ---- official PairGraph -------------------------------------------------------

H, W2, C, REDUCTION = 3, 4, 8, 2  # pair map H x 2W with W = 2; C' = 4


def _pair_graph_setup(seed=11, random_output=True, **fields):
  x = jax.random.normal(jax.random.PRNGKey(seed), (2, H, W2, C))
  module = graph.PairGraph(reduction=REDUCTION, **fields)
  variables = module.init(jax.random.PRNGKey(seed + 1), x)
  if random_output:  # the zero-initialised output conv would hide everything
    params = dict(variables["params"])
    params["output"] = {"kernel": jax.random.normal(jax.random.PRNGKey(seed + 2),
                                                    params["output"]["kernel"].shape)}
    variables = {"params": params}
  return module, variables, x


def test_pair_graph_is_the_identity_at_init_with_bias_free_convs():
  module, variables, x = _pair_graph_setup(random_output=False)
  shapes = jax.tree.map(jnp.shape, variables["params"])
  assert shapes == {"embed_y": {"kernel": (1, 1, C, C // REDUCTION)},
                    "embed_g": {"kernel": (1, 1, C, C // REDUCTION)},
                    "output": {"kernel": (1, 1, C // REDUCTION, C)}}
  np.testing.assert_array_equal(module.apply(variables, x), x)
  # Full size: C = 2048 -> C / 16 = 128 embeddings, by shape only.
  full = jax.eval_shape(graph.PairGraph(reduction=16).init, jax.random.PRNGKey(0),
                        jnp.zeros((1, 24, 16, 2048)))
  assert full["params"]["embed_y"]["kernel"].shape == (1, 1, 2048, 128)
  assert layers.PairGraph is graph.PairGraph


def test_pair_graph_matches_a_transcription_of_the_published_code():
  module, variables, x = _pair_graph_setup()
  out = np.asarray(module.apply(variables, x))
  for b in range(2):
    expected, _ = ref.pair_graph(x[b], variables["params"])
    np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-4)
  assert np.abs(out - np.asarray(x)).max() > 1e-2  # the graph step did something


def test_pair_graph_laplacian_degree_floor_and_no_self_loops():
  # Node 0 points away from every other node: ReLU cuts all its edges (degree 0).
  y = np.array([[1.0, 0.0], [-1.0, 0.2], [-1.0, 0.5], [-0.8, -0.3]])
  lap = np.asarray(graph.pair_graph_laplacian(jnp.asarray(y[None], jnp.float32)))[0]
  expected, norm = ref.pair_graph_laplacian(y.T)
  np.testing.assert_allclose(lap, expected, rtol=1e-5, atol=1e-6)
  assert norm[0, 0] == 1.0  # degree <= 1e-3 replaced by 1
  np.testing.assert_allclose(lap[0], 0.0, atol=1e-7)  # d e_0 - a_0 with d = 0: a zero row
  # Elsewhere L = I - D^-1/2 A D^-1/2 (Eq. 7's operator) with A's diagonal removed.
  unit = y / np.linalg.norm(y, axis=1, keepdims=True)
  a = np.maximum(unit @ unit.T, 0.0) * (1 - np.eye(4))
  np.testing.assert_allclose(lap[1:, 1:], (np.eye(4) - ref.normalized_adjacency(a, 1e-3))[1:, 1:],
                             rtol=1e-5, atol=1e-6)


def test_pair_graph_swapping_the_images_swaps_the_halves():
  module, variables, x = _pair_graph_setup()
  half = W2 // 2
  swapped = jnp.concatenate([x[:, :, half:], x[:, :, :half]], axis=2)
  out, out_swapped = module.apply(variables, x), module.apply(variables, swapped)
  np.testing.assert_allclose(out_swapped[:, :, :half], out[:, :, half:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_swapped[:, :, half:], out[:, :, :half], rtol=1e-5, atol=1e-5)


def _finite_difference(fn, kernel, entries, step=1e-6):
  grads = []
  for index in entries:
    plus, minus = kernel.copy(), kernel.copy()
    plus[index] += step
    minus[index] -= step
    grads.append((fn(plus) - fn(minus)) / (2 * step))
  return np.array(grads)


def test_pair_graph_detached_normalizer_gradient():
  """Same forward; the gradient is that of the code's detached normaliser."""
  module, variables, x = _pair_graph_setup()
  attached = graph.PairGraph(reduction=REDUCTION, detach_normalizer=False)
  weights = jax.random.normal(jax.random.PRNGKey(20), x.shape)
  np.testing.assert_allclose(module.apply(variables, x), attached.apply(variables, x),
                             rtol=1e-6, atol=1e-6)

  def loss(m, kernel):
    params = dict(variables["params"], embed_y={"kernel": kernel})
    return jnp.sum(m.apply({"params": params}, x) * weights)

  kernel = variables["params"]["embed_y"]["kernel"]
  grad_detached = np.asarray(jax.grad(lambda k: loss(module, k))(kernel))
  grad_attached = np.asarray(jax.grad(lambda k: loss(attached, k))(kernel))
  assert np.isfinite(grad_detached).all() and np.isfinite(grad_attached).all()
  assert np.abs(grad_detached - grad_attached).max() > 1e-3

  # Finite differences of the NumPy transcription, normaliser frozen or not.
  params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  x64, w64 = np.asarray(x, np.float64), np.asarray(weights, np.float64)
  frozen = [ref.pair_graph(x64[b], params64)[1] for b in range(2)]

  def numpy_loss(kernel64, freeze):
    params = dict(params64, embed_y={"kernel": kernel64})
    return sum((ref.pair_graph(x64[b], params, frozen_normalizer=frozen[b] if freeze else None)[0]
                * w64[b]).sum() for b in range(2))

  entries = [(0, 0, 0, 0), (0, 0, 3, 1), (0, 0, 7, 3), (0, 0, 5, 2)]
  k64 = np.asarray(kernel, np.float64)
  fd_detached = _finite_difference(lambda k: numpy_loss(k, True), k64, entries)
  fd_attached = _finite_difference(lambda k: numpy_loss(k, False), k64, entries)
  np.testing.assert_allclose([grad_detached[i] for i in entries], fd_detached,
                             rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose([grad_attached[i] for i in entries], fd_attached,
                             rtol=2e-3, atol=2e-3)


def test_bad_mode_raises():
  with pytest.raises(ValueError, match="mode must be one of"):
    graph.GraphConvolution(mode="normal", features=F).init(
        jax.random.PRNGKey(0), jnp.zeros((2 * N, D)), jnp.eye(2 * N))


@pytest.mark.parametrize("mode", graph.MODES)
def test_pooled_equals_the_mean_of_each_half_over_a_pair_grid(mode):
  queries = jax.random.normal(jax.random.PRNGKey(30), (3, N, D))
  gallery = jax.random.normal(jax.random.PRNGKey(31), (2, N, D))
  corr = correspondence.CorrespondenceAttention()
  corr_vars = corr.init(jax.random.PRNGKey(32), queries, queries)
  a = corr.apply(corr_vars, queries[:, None], gallery[None])  # (3, 2, 2N, 2N)
  module = graph.GraphConvolution(mode=mode, features=F, use_bias=True)
  variables = module.init(jax.random.PRNGKey(33), jnp.zeros((2 * N, D)), jnp.eye(2 * N))
  pooled = module.apply(variables, queries[:, None], gallery[None], a, method=module.pooled)
  assert pooled.shape == (3, 2, 2, F)
  full = module.apply(variables, jnp.concatenate(
      jnp.broadcast_arrays(queries[:, None], gallery[None]), axis=-2), a)
  np.testing.assert_allclose(pooled[..., 0, :], full[..., :N, :].mean(axis=-2), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(pooled[..., 1, :], full[..., N:, :].mean(axis=-2), rtol=1e-5,
                             atol=1e-5)
