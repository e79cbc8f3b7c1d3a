"""The official CACE-Net code's non-local block and GeM pooling against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax import layers
from reidjax.layers import non_local
from reidjax.layers import pooling
from tests.layers import cacenet_reference as ref

B, H, W, C, REDUCTION = 2, 3, 2, 8, 2


def _x(seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, H, W, C))


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_non_local_block_is_the_identity_at_init(use_batch_norm):
  x = _x()
  module = non_local.NonLocalBlock(reduction=REDUCTION, use_batch_norm=use_batch_norm)
  variables = module.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(module.apply(variables, x), x)
  out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(out, x)


def test_non_local_block_matches_numpy_with_random_parameters():
  x = _x(2)
  module = non_local.NonLocalBlock(reduction=REDUCTION)
  variables = module.init(jax.random.PRNGKey(3), x)
  params = variables["params"]
  assert params["theta"]["kernel"].shape == (1, 1, C, C // REDUCTION)
  assert params["output"]["kernel"].shape == (1, 1, C // REDUCTION, C)
  keys = iter(jax.random.split(jax.random.PRNGKey(4), 16))
  params = jax.tree.map(lambda a: 0.5 * jax.random.normal(next(keys), a.shape), params)
  out = np.asarray(module.apply({"params": params}, x))
  for b in range(B):
    np.testing.assert_allclose(out[b], ref.non_local(x[b], params), rtol=1e-4, atol=1e-5)
  assert np.abs(out - np.asarray(x)).max() > 1e-2


def test_non_local_inner_width_is_c_over_16_at_full_size():
  shapes = jax.eval_shape(non_local.NonLocalBlock(reduction=16).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 24, 8, 2048)))
  assert shapes["params"]["theta"]["kernel"].shape == (1, 1, 2048, 128)
  assert layers.NonLocalBlock is non_local.NonLocalBlock


def _gem(p, x):
  module = pooling.GeM(p_init=p)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert variables["params"]["p"].shape == (1,)
  return np.asarray(module.apply(variables, x))


def test_gem_default_p_matches_numpy_and_clamps():
  x = _x(5)  # has negative entries: clamped to eps
  out = _gem(3.0, x)
  assert out.shape == (B, C)
  np.testing.assert_allclose(out, ref.gem(x, 3.0, 1e-6), rtol=1e-5, atol=1e-6)
  assert pooling.GeM().p_init == 3.0 and layers.GeM is pooling.GeM


def test_gem_p_1_is_average_pooling_and_large_p_approaches_max():
  x = jax.random.uniform(jax.random.PRNGKey(6), (B, H, W, C), minval=0.1, maxval=1.0)
  x = x / x.max(axis=(1, 2), keepdims=True)  # each channel's max is 1: no overflow at large p
  np.testing.assert_allclose(_gem(1.0, x), np.asarray(x).mean(axis=(1, 2)), rtol=1e-6)
  big = _gem(200.0, x)
  # (mean x^p)^(1/p) lies in [max (1/HW)^(1/p), max]: within 1.3% of the max here.
  assert np.all(big <= 1.0 + 1e-6) and np.all(big >= (1.0 / (H * W)) ** (1 / 200.0) - 1e-6)
  assert np.all(big > _gem(3.0, x))


def test_gem_gradient_reaches_p():
  x = jax.random.uniform(jax.random.PRNGKey(7), (B, H, W, C), minval=0.1, maxval=2.0)
  module = pooling.GeM(p_init=3.0)
  variables = module.init(jax.random.PRNGKey(0), x)
  grad = jax.grad(lambda v: module.apply(v, x).sum())(variables)
  assert np.isfinite(grad["params"]["p"]).all() and abs(float(grad["params"]["p"][0])) > 0
