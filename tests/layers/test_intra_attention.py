"""Intra-attention (Attention-Driven ReID, Fig. 5, Eq. 6-7) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.backbones.resnet import Bottleneck
from reidjax.layers import intra_attention as ia


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _conv(x, kernel, bias):
  """NumPy 'same' convolution (stride 1, zero padding), NHWC x HWIO."""
  kh, kw = kernel.shape[:2]
  padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for i in range(kh):
    for j in range(kw):
      out += padded[:, i:i + h, j:j + w] @ kernel[i, j]
  return out + bias


def _max_pool(x):
  """3x3, stride 2, padding 1 (padded with -inf)."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h, w = -(-x.shape[1] // 2), -(-x.shape[2] // 2)
  out = np.full(x.shape[:1] + (h, w) + x.shape[3:], -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(out, padded[:, i:i + 2 * h:2, j:j + 2 * w:2][:, :h, :w])
  return out


def _upsample(x, size):
  """Bilinear resize with half-pixel centres (edge-clamped), separable."""
  def axis_weights(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m
  rows, cols = axis_weights(x.shape[1], size[0]), axis_weights(x.shape[2], size[1])
  return np.einsum("ah,nhwc,bw->nabc", rows, x, cols)


def _randomise(params, scale=0.3):
  """Random parameters (the fuse kernel is zero-initialised, which would hide it)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(42), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape)
                                   for k, x in zip(keys, leaves)])


def _mask_reference(params, attention, decomposition):
  a = np.asarray(attention, np.float64)
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  spatial = channel = None
  if decomposition in ("both", "spatial"):
    spatial = _conv(a, p["spatial"]["kernel"], p["spatial"]["bias"])  # Eq. 6: (N, h, w, 1)
  if decomposition in ("both", "channel"):
    pooled = a.mean(axis=(1, 2))  # V: average pool
    channel = pooled @ p["channel"]["kernel"][0, 0] + p["channel"]["bias"]  # C (N, c)
  if decomposition == "both":
    logits = (spatial * channel[:, None, None, :]) @ p["fuse"]["kernel"][0, 0] + p["fuse"]["bias"]
  elif decomposition == "none":
    logits = a @ p["fuse"]["kernel"][0, 0] + p["fuse"]["bias"]
  elif decomposition == "spatial":
    logits = spatial
  else:
    logits = channel[:, None, None, :]
  return _sigmoid(logits), spatial, channel


@pytest.mark.parametrize("decomposition", ia.DECOMPOSITIONS)
def test_mask_matches_numpy(decomposition):
  attention = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 6))
  layer = ia.AttentionMask(decomposition)
  params = _randomise(layer.init(jax.random.PRNGKey(1), attention)["params"])
  out = layer.apply({"params": params}, attention)
  mask, spatial, channel = _mask_reference(params, attention, decomposition)
  expected_shape = {"both": (2, 5, 4, 6), "none": (2, 5, 4, 6), "spatial": (2, 5, 4, 1),
                    "channel": (2, 1, 1, 6)}[decomposition]
  assert out["mask"].shape == expected_shape
  np.testing.assert_allclose(out["mask"], mask, rtol=1e-5, atol=1e-6)
  assert (spatial is not None) == ("spatial" in out)
  assert (channel is not None) == ("channel" in out)
  if spatial is not None:
    np.testing.assert_allclose(out["spatial"], spatial[..., 0], rtol=1e-5, atol=1e-5)
  if channel is not None:
    np.testing.assert_allclose(out["channel"], channel, rtol=1e-5, atol=1e-5)
  # The decomposition uses 1 + c (+ c) weights per position instead of c x c.
  assert ("fuse" in params) == (decomposition in ("both", "none"))


@pytest.mark.parametrize("num_pools, size", [(2, (7, 5)), (1, (6, 4))])
def test_encoder_decoder_matches_numpy(num_pools, size):
  x = jax.random.normal(jax.random.PRNGKey(2), (2,) + size + (8,))
  layer = ia.AttentionEncoderDecoder(num_pools=num_pools, expansion=2)
  variables = layer.init(jax.random.PRNGKey(3), x, train=False)
  # Perturb the BN statistics so that the inference-mode residual units are not trivial.
  variables = jax.tree.map(lambda v: v + 0.1, variables)
  out = layer.apply(variables, x, train=False)
  assert ia.encoder_decoder_sizes(*size, num_pools)[-1] == (
      -(-size[0] // 2 ** num_pools), -(-size[1] // 2 ** num_pools))
  # Levels: x, then residual unit p (the backbone's Bottleneck) on a max pool.
  unit = Bottleneck(features=4, expansion=2)
  levels = [np.asarray(x, np.float64)]
  for p in range(1, num_pools + 1):
    pooled = _max_pool(levels[-1])
    unit_vars = {c: variables[c][f"encoder{p}"] for c in ("params", "batch_stats")}
    levels.append(np.asarray(unit.apply(unit_vars, jnp.asarray(pooled, jnp.float32),
                                        train=False), np.float64))
    assert levels[-1].shape[1:3] == ia.encoder_decoder_sizes(*size, num_pools)[p]
  y = levels[-1]
  for p in range(num_pools, 0, -1):  # up-sample and add the skip of the same size
    y = _upsample(y, levels[p - 1].shape[1:3]) + levels[p - 1]
  np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)


def test_intra_attention_is_eq_7_with_the_mask_of_the_attention_input():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 4, 8))
  a = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 4, 8))
  layer = ia.IntraAttention(num_pools=1, decomposition="both", expansion=2)
  variables = layer.init(jax.random.PRNGKey(6), x, a, train=False)
  # At initialisation (zero fuse kernel and bias) m = 1/2 everywhere: (1 + 1/2) a.
  out, aux = layer.apply(variables, x, a, train=False)
  np.testing.assert_allclose(out, 1.5 * a, rtol=1e-6, atol=1e-6)
  variables = {**variables, "params": {**variables["params"],
                                       "mask": _randomise(variables["params"]["mask"])}}
  out, aux = layer.apply(variables, x, a, train=False)
  np.testing.assert_allclose(out, (1.0 + aux["mask"]) * a, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(aux["mask_map"], aux["mask"].mean(-1), rtol=1e-6)
  assert 0.0 < float(aux["mask"].min()) and float(aux["mask"].max()) < 1.0
  assert float(aux["mask"].max() - aux["mask"].min()) > 0.1
  # The mask is a function of the attention input only (Eq. 4: m = M(v)).
  _, aux2 = layer.apply(variables, x, 2.0 * a, train=False)
  np.testing.assert_allclose(aux2["mask"], aux["mask"], rtol=1e-6)
  # The mask is the stand-alone parts applied in sequence.
  attention = ia.AttentionEncoderDecoder(num_pools=1, expansion=2).apply(
      {c: variables[c]["encoder_decoder"] for c in ("params", "batch_stats")}, x, train=False)
  mask, _, _ = _mask_reference(variables["params"]["mask"], attention, "both")
  np.testing.assert_allclose(aux["mask"], mask, rtol=1e-5, atol=1e-6)


def test_train_mode_updates_the_attention_path_batch_stats():
  x = jax.random.normal(jax.random.PRNGKey(7), (3, 4, 4, 8))
  layer = ia.IntraAttention(num_pools=2, decomposition="both", expansion=2)
  variables = layer.init(jax.random.PRNGKey(8), x, x, train=False)
  _, updates = layer.apply(variables, x, x, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["encoder_decoder"]["encoder1"]["bn1"]["mean"]
  after = updates["batch_stats"]["encoder_decoder"]["encoder1"]["bn1"]["mean"]
  assert float(jnp.abs(after - before).max()) > 1e-4


def test_bad_settings_are_clear_errors():
  x = jnp.zeros((1, 4, 4, 8))
  with pytest.raises(ValueError, match="decomposition must be one of"):
    ia.AttentionMask("diagonal").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="same"):
    ia.IntraAttention(1, "both", 2).init(jax.random.PRNGKey(0), x, jnp.zeros((1, 2, 2, 8)),
                                         train=False)
  with pytest.raises(ValueError, match="num_pools >= 1"):
    ia.AttentionEncoderDecoder(0, 2).init(jax.random.PRNGKey(0), x, train=False)
  with pytest.raises(ValueError, match="not divisible"):
    ia.AttentionEncoderDecoder(1, 3).init(jax.random.PRNGKey(0), x, train=False)
