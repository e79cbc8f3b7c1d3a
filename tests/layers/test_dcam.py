"""DCAM (DCANet Eq. 1-5) against an independent NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax import layers
from reidjax.layers import dcam

B, H, W, C, K = 2, 8, 3, 16, 4


def _dcam(**fields):
  """A DCAM with a few hidden units per block (C / 16 would be 1 at C = 16)."""
  return dcam.DCAM(**{"num_blocks": K, "spatial_reduction": 4, "channel_reduction": 2,
                      **fields})


def _softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def _relu(x):
  return np.maximum(x, 0.0)


def _numpy_dcam(params, f, k, alignment="stack", attention="both"):
  """Eq. 1-4 and the discriminators, written from the paper with loops over k."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  f = np.asarray(f, np.float64)
  b, h, w, c = f.shape
  ref = {}
  skip_sum = f
  if attention in ("both", "spatial"):
    maps, blocks = [], []
    for j in range(k):
      conv1, conv2 = p["spatial_blocks"]["conv1"], p["spatial_blocks"]["conv2"]
      hidden = _relu(f @ conv1["kernel"][j, 0, 0] + conv1["bias"][j])
      scores = (hidden @ conv2["kernel"][j, 0, 0] + conv2["bias"][j])[..., 0]
      a = _softmax(scores.reshape(b, h * w), axis=1).reshape(b, h, w)  # Eq. 1
      maps.append(a)
      blocks.append(f * a[..., None])
    if alignment == "stack":  # Eq. 2: K*H rows, K x 1 max-pool, stride K x 1
      stacked = np.concatenate(blocks, axis=1)
      aligned = np.stack([stacked[:, r * k:(r + 1) * k].max(axis=1)
                          for r in range(h)], axis=1)
    else:
      aligned = np.max(np.stack(blocks), axis=0)
    pooled = np.stack([x.mean(axis=(1, 2)) for x in blocks], axis=1)
    disc = p["spatial_discriminator"]
    ref.update(spatial_attention=np.stack(maps, 1), spatial_pooled=pooled,
               spatial_logits=pooled @ disc["kernel"] + disc["bias"],
               aligned=aligned)
    skip_sum = aligned + f
  if attention == "spatial":
    ref["out"] = skip_sum
    return ref
  red = p["channel_reduction_conv"]
  f_ch = skip_sum @ red["kernel"][0, 0] + red["bias"]
  fc1, fc2 = p["channel_blocks"]["fc1"], p["channel_blocks"]["fc2"]
  attn, outs, pooled = [], [], []
  for j in range(k):
    fc = lambda v, j=j: _relu(v @ fc1["kernel"][j] + fc1["bias"][j]) @ fc2["kernel"][j] + fc2["bias"][j]
    a = _softmax(fc(f_ch.max(axis=(1, 2))) + fc(f_ch.mean(axis=(1, 2))), axis=1)  # Eq. 3
    x = a[:, None, None, :] * f_ch  # Eq. 4
    attn.append(a)
    outs.append(x)
    pooled.append(x.mean(axis=(1, 2)))
  pooled = np.stack(pooled, 1)
  disc = p["channel_discriminator"]
  ref.update(channel_attention=np.stack(attn, 1), channel_pooled=pooled,
             channel_logits=pooled @ disc["kernel"] + disc["bias"],
             out=np.concatenate(outs, axis=-1), f_ch=f_ch)
  return ref


def _numpy_discriminant(logits):
  """Eq. 5: sum over k of -log P(k | feature of block k), batch mean."""
  logits = np.asarray(logits, np.float64)
  b, k, _ = logits.shape
  total = 0.0
  for i in range(b):
    for j in range(k):
      z = logits[i, j] - logits[i, j].max()
      total -= z[j] - np.log(np.exp(z).sum())
  return total / b


def _random_params(module, f, seed=1):
  """init's structure with larger random weights (peakier, distinct attention)."""
  params = module.init(jax.random.PRNGKey(seed), f)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: jnp.asarray(rng.normal(0.0, 0.7, a.shape), jnp.float32), params)


@pytest.fixture(name="f")
def _f():
  return jax.random.normal(jax.random.PRNGKey(0), (B, H, W, C))


@pytest.mark.parametrize("alignment", ["stack", "max"])
def test_equations_1_to_4_match_numpy(f, alignment):
  module = _dcam(stage=3, alignment=alignment)
  params = _random_params(module, f)
  out, aux = module.apply({"params": params}, f)
  ref = _numpy_dcam(params, f, K, alignment)
  assert out.shape == (B, H, W, C)
  for key in ("spatial_attention", "spatial_pooled", "spatial_logits",
              "channel_attention", "channel_pooled", "channel_logits"):
    np.testing.assert_allclose(aux[key], ref[key], rtol=2e-4, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(out, ref["out"], rtol=2e-4, atol=1e-6)
  # Softmax over the H*W positions (Eq. 1) and over the C/K channels (Eq. 3).
  np.testing.assert_allclose(aux["spatial_attention"].sum(axis=(2, 3)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(aux["channel_attention"].sum(axis=2), 1.0, rtol=1e-5)
  assert aux["channel_attention"].shape == (B, K, C // K)
  # Not a degenerate case: the blocks attend differently.
  peaks = np.asarray(aux["spatial_attention"]).reshape(B, K, -1).argmax(axis=-1)
  assert len(set(peaks[0])) > 1
  assert np.abs(np.diff(np.asarray(aux["channel_attention"]), axis=1)).max() > 1e-2


def test_stack_and_max_readings_differ(f):
  params = _random_params(_dcam(), f)
  stack, _ = _dcam().apply({"params": params}, f)
  maxed, _ = _dcam(alignment="max").apply({"params": params}, f)
  assert np.abs(np.asarray(stack) - np.asarray(maxed)).max() > 1e-3


def test_alignment_puts_block_k_in_rows_k_h_over_k():
  # Block k's map holds the value 10 k + row everywhere: output row r must be
  # block r // (H/K)'s maximum over its rows [(r mod H/K) K, ... + K).
  rows = H // K
  blocks = np.zeros((1, K, H, W, 2), np.float32)
  for k in range(K):
    blocks[0, k] = (10 * k + np.arange(H))[:, None, None]
  out = np.asarray(dcam.align_stack(jnp.asarray(blocks)))
  for r in range(H):
    k, part = divmod(r, rows)
    assert (out[0, r] == 10 * k + (part + 1) * K - 1).all(), r
  # And only block k reaches band k: a huge value put into block j elsewhere
  # changes no row outside band j.
  for j in range(K):
    spiked = blocks.copy()
    spiked[0, j] += 1000.0
    diff = np.asarray(dcam.align_stack(jnp.asarray(spiked))) != out
    changed = np.flatnonzero(diff.any(axis=(0, 2, 3)))
    np.testing.assert_array_equal(changed, np.arange(j * rows, (j + 1) * rows))


def test_through_the_module_band_k_depends_only_on_block_k(f):
  # Spatial module only: out = f_sp + f, so the gradient of band k's output
  # reaches block k's attention parameters and no other block's.
  module = _dcam(attention="spatial")
  params = _random_params(module, f)
  rows = H // K

  for band in range(K):
    def band_sum(p, band=band):
      out, _ = module.apply({"params": p}, f)
      return out[:, band * rows:(band + 1) * rows].sum()
    grads = jax.grad(band_sum)(params)["spatial_blocks"]
    per_block = np.array([sum(float(jnp.abs(g[j]).sum()) for g in jax.tree.leaves(grads))
                          for j in range(K)])
    assert per_block[band] > 1e-6
    np.testing.assert_array_equal(np.delete(per_block, band), 0.0)


@pytest.mark.parametrize("attention", ["spatial", "channel"])
def test_single_module_switches_match_numpy(f, attention):
  module = _dcam(attention=attention)
  params = _random_params(module, f)
  out, aux = module.apply({"params": params}, f)
  ref = _numpy_dcam(params, f, K, attention=attention)
  np.testing.assert_allclose(out, ref["out"], rtol=2e-4, atol=1e-6)
  other = "channel" if attention == "spatial" else "spatial"
  assert not any(key.startswith(other) for key in aux)
  assert not any(key.startswith(other) for key in params)
  assert set(k for k in aux if k.endswith("_logits")) == {f"{attention}_logits"}


def test_equation_5_matches_numpy_and_sums_the_two_parts(f):
  module = _dcam()
  params = _random_params(module, f)
  _, aux = module.apply({"params": params}, f)
  for part in ("spatial", "channel"):
    np.testing.assert_allclose(dcam.discriminant_loss(aux[f"{part}_logits"]),
                               _numpy_discriminant(aux[f"{part}_logits"]), rtol=1e-5)
  total, metrics = dcam.dcam_discriminant_loss(aux)
  expected = (_numpy_discriminant(aux["spatial_logits"])
              + _numpy_discriminant(aux["channel_logits"]))
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  # A dict of DCAM aux (one per stage) sums over the modules.
  total2, _ = dcam.dcam_discriminant_loss({"stage2": aux, "stage3": aux})
  np.testing.assert_allclose(total2, 2 * expected, rtol=1e-5)
  # Hand value: uniform logits give K * log K per part.
  uniform = jnp.zeros((3, K, K))
  np.testing.assert_allclose(dcam.discriminant_loss(uniform), K * np.log(K), rtol=1e-6)
  perfect = 50.0 * jnp.broadcast_to(jnp.eye(K), (3, K, K))
  assert float(dcam.discriminant_loss(perfect)) < 1e-10
  _, perfect_metrics = dcam.dcam_discriminant_loss(
      {"spatial_logits": perfect, "channel_logits": perfect})
  assert float(perfect_metrics["discriminant_accuracy"]) == 1.0
  assert 0.0 <= float(metrics["discriminant_accuracy"]) <= 1.0


def test_discriminant_gradient_reaches_every_attention_block(f):
  module = _dcam(stage=3)
  params = module.init(jax.random.PRNGKey(3), f)["params"]

  def loss(p):
    _, aux = module.apply({"params": p}, f)
    return dcam.dcam_discriminant_loss(aux)[0]

  grads = jax.grad(loss)(params)
  for blocks in ("spatial_blocks", "channel_blocks"):
    for path, g in jax.tree_util.tree_leaves_with_path(grads[blocks]):
      assert g.shape[0] == K
      for j in range(K):
        assert float(jnp.abs(g[j]).max()) > 0.0, (blocks, jax.tree_util.keystr(path), j)
  for name in ("spatial_discriminator", "channel_discriminator", "channel_reduction_conv"):
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[name])), name


def test_exported_and_shapes_in_bfloat16():
  assert layers.DCAM is dcam.DCAM
  f = jnp.ones((2, 8, 4, 32), jnp.bfloat16)
  module = dcam.DCAM(num_blocks=8, dtype=jnp.bfloat16)
  (out, aux), variables = module.init_with_output(jax.random.PRNGKey(0), f)
  assert out.dtype == jnp.bfloat16 and out.shape == f.shape
  assert aux["spatial_attention"].dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
