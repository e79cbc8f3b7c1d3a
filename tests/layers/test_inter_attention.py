"""Inter-attention (Attention-Driven ReID, Eq. 8-9, Table 9) against NumPy."""

import jax
import numpy as np
import pytest

from reidjax.layers.inter_attention import InterAttention


def _features():
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  global_feature = np.asarray(jax.random.normal(keys[0], (3, 6)))
  parts = [np.asarray(jax.random.normal(k, (3, 4))) for k in keys[1:]]
  return global_feature, parts


def test_inter_fusion_is_eq_8_and_9():
  global_feature, parts = _features()
  layer = InterAttention("inter")
  params = layer.init(jax.random.PRNGKey(1), parts, global_feature)["params"]
  fused, aux = layer.apply({"params": params}, parts, global_feature)
  weights, expected = [], [global_feature]
  for i, e in enumerate(parts):
    w = params[f"part{i + 1}_weight"]
    mu = 1.0 / (1.0 + np.exp(-(e @ np.asarray(w["kernel"])[:, 0] + np.asarray(w["bias"])[0])))
    weights.append(mu)
    expected.append((1.0 + mu[:, None]) * e)  # Eq. 9's residual weighting
  assert fused.shape == (3, 6 + 4 * 4)
  np.testing.assert_allclose(aux["weights"], np.stack(weights, 1), rtol=1e-5)
  np.testing.assert_allclose(fused, np.concatenate(expected, 1), rtol=1e-5, atol=1e-6)
  # One weight vector and bias per part, nothing for the global feature.
  assert sorted(params) == [f"part{i}_weight" for i in range(1, 5)]
  assert sum(x.size for x in jax.tree.leaves(params)) == 4 * (4 + 1)
  # Parts only (Table 7's Part Fusion): E_l alone.
  fused_parts, _ = layer.apply({"params": params}, parts)
  np.testing.assert_allclose(fused_parts, np.concatenate(expected[1:], 1), rtol=1e-5, atol=1e-6)


def test_concat_and_fc_fusion():
  global_feature, parts = _features()
  concat = InterAttention("concat")
  variables = concat.init(jax.random.PRNGKey(1), parts, global_feature)
  assert not jax.tree.leaves(variables)
  fused, aux = concat.apply(variables, parts, global_feature)
  plain = np.concatenate([global_feature] + parts, 1)
  np.testing.assert_allclose(fused, plain, rtol=1e-6)
  assert aux == {}
  fc = InterAttention("fc")
  params = fc.init(jax.random.PRNGKey(2), parts, global_feature)["params"]
  fused, _ = fc.apply({"params": params}, parts, global_feature)
  np.testing.assert_allclose(
      fused, plain @ np.asarray(params["fc"]["kernel"]) + np.asarray(params["fc"]["bias"]),
      rtol=1e-4, atol=1e-5)


def test_bad_settings_are_clear_errors():
  global_feature, parts = _features()
  with pytest.raises(ValueError, match="model.fusion must be one of"):
    InterAttention("sum").init(jax.random.PRNGKey(0), parts, global_feature)
  with pytest.raises(ValueError, match="needs part features or a global feature"):
    InterAttention("inter").init(jax.random.PRNGKey(0), [])
