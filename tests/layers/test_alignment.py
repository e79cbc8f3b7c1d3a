"""FGRA's layers (Eq. 1-8) against independent NumPy computations, and their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.layers import alignment

B, T, R, H, W, C = 2, 3, 4, 4, 3, 5
EPS = 1e-5


def _rng(seed=0):
  return np.random.default_rng(seed)


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _batch_norm(x, axes, mean=None, var=None, scale=1.0, bias=0.0):
  """Training mode (batch statistics, biased variance) unless mean/var are given."""
  if mean is None:
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
  return (x - mean) / np.sqrt(var + EPS) * scale + bias


def _inputs(seed=0, t=T, r=R):
  rng = _rng(seed)
  return (rng.normal(size=(B, r, C)).astype(np.float32),
          np.abs(rng.normal(size=(B, t, H, W, C))).astype(np.float32))


def _numpy_correlation(templates, frames):
  """Eq. 1 with explicit loops: each channel of the frame map times that channel
  of the template (a 1 x 1 depth-wise kernel)."""
  b, t, h, w, c = frames.shape
  r = templates.shape[1]
  out = np.zeros((b, t, r, h, w, c))
  for bi in range(b):
    for n in range(t):
      for i in range(r):
        for ch in range(c):
          out[bi, n, i, :, :, ch] = templates[bi, i, ch] * frames[bi, n, :, :, ch]
  return out


def test_grouped_convolution_and_einsum_compute_eq1():
  templates, frames = _inputs()
  want = _numpy_correlation(templates.astype(np.float64), frames.astype(np.float64))
  conv = alignment.depthwise_cross_correlation(templates, frames, "conv")
  einsum = alignment.depthwise_cross_correlation(templates, frames, "einsum")
  assert conv.shape == (B, T, R, H, W, C)
  np.testing.assert_allclose(conv, einsum, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(conv, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="method"):
    alignment.depthwise_cross_correlation(templates, frames, "fft")
  with pytest.raises(ValueError, match="channels"):
    alignment.depthwise_cross_correlation(templates[..., :3], frames)


def test_region_pool_is_adaptive_stripe_averaging():
  # H = 4 rows into 3 stripes: rows [0, 2), [1, 3), [2, 4) (adaptive pooling bounds).
  assert alignment.region_bounds(4, 3) == [(0, 2), (1, 3), (2, 4)]
  assert alignment.region_bounds(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
  x = _rng(1).normal(size=(2, 4, 3, 5))
  got = alignment.region_pool(jnp.asarray(x), 3)
  want = np.stack([x[:, a:b].mean(axis=(1, 2)) for a, b in [(0, 2), (1, 3), (2, 4)]], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="num_regions"):
    alignment.region_pool(jnp.asarray(x), 5)


def test_guide_alignment_module_eq1_eq2_eq5_in_training_mode():
  templates, frames = _inputs(2)
  gam = alignment.GuideAlignment()
  variables = gam.init(jax.random.PRNGKey(0), templates, frames, False)
  out, updates = gam.apply(variables, templates, frames, True, mutable=["batch_stats"])
  m = _numpy_correlation(templates.astype(np.float64), frames.astype(np.float64))
  # BatchNorm over C channels: statistics over clips, frames, regions, positions.
  maps = _sigmoid(_batch_norm(m, axes=(0, 1, 2, 3, 4)))
  aligned = (frames[:, :, None].astype(np.float64) * maps).mean(axis=(3, 4))  # Eq. 2
  np.testing.assert_allclose(out["maps"], maps, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["aligned"], aligned, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["scores"], maps.mean(axis=(3, 4)), rtol=1e-4, atol=1e-5)  # Eq. 5
  assert 0 < out["maps"].min() and out["maps"].max() < 1
  # The running statistics move towards the batch's (PyTorch momentum 0.1).
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"],
                             0.1 * m.mean(axis=(0, 1, 2, 3, 4)), rtol=1e-4)


def _inference_gam(seed=3):
  """A GAM with non-trivial running statistics and affine parameters."""
  rng = _rng(seed)
  gam = alignment.GuideAlignment()
  variables = {
      "params": {"bn": {"scale": jnp.asarray(rng.uniform(0.5, 2, C), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=C), jnp.float32)}},
      "batch_stats": {"bn": {"mean": jnp.asarray(rng.normal(size=C), jnp.float32),
                             "var": jnp.asarray(rng.uniform(0.5, 2, C), jnp.float32)}}}
  return gam, variables


def test_guide_alignment_inference_uses_running_statistics():
  gam, v = _inference_gam()
  templates, frames = _inputs(4)
  out = gam.apply(v, templates, frames, False)
  p = {k: np.asarray(x, np.float64) for k, x in {**v["params"]["bn"], **v["batch_stats"]["bn"]}.items()}
  m = _numpy_correlation(templates.astype(np.float64), frames.astype(np.float64))
  maps = _sigmoid(_batch_norm(m, None, p["mean"], p["var"], p["scale"], p["bias"]))
  np.testing.assert_allclose(out["aligned"], (frames[:, :, None] * maps).mean(axis=(3, 4)),
                             rtol=1e-4, atol=1e-5)


def test_region_aligned_features_ignore_where_a_region_moved():
  """For fixed templates, permuting a frame's H x W positions (any permutation)
  leaves that frame's region-aligned features and alignment scores unchanged:
  a region is found wherever it is in the frame."""
  gam, v = _inference_gam()
  templates, frames = _inputs(5)
  apply = jax.jit(lambda f: gam.apply(v, templates, f, False))
  before = apply(frames)
  rng = _rng(6)
  for trial in range(6):
    order = rng.permutation(H * W) if trial else np.arange(H * W)[::-1]
    moved = frames.copy()
    frame = moved[1, 2].reshape(H * W, C)[order].reshape(H, W, C)
    moved[1, 2] = frame  # clip 1, frame 2 only
    after = apply(moved)
    np.testing.assert_allclose(after["aligned"], before["aligned"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after["scores"], before["scores"], rtol=1e-5, atol=1e-6)
    # The maps themselves moved with the frame.
    np.testing.assert_allclose(
        np.asarray(after["maps"][1, 2]).reshape(R, H * W, C),
        np.asarray(before["maps"][1, 2]).reshape(R, H * W, C)[:, order], rtol=1e-5)


def test_temporal_alignment_scores_eq4_eq6():
  rng = _rng(7)
  aligned = rng.normal(size=(B, T, R, C))
  scores = rng.normal(size=(B, T, R, C))
  pooled, weights = alignment.temporal_alignment_pool(jnp.asarray(aligned), jnp.asarray(scores))
  want_weights = np.zeros_like(scores)
  for bi in range(B):
    for i in range(R):
      for ch in range(C):  # softmax over the frames, separately per channel (Eq. 4)
        e = np.exp(scores[bi, :, i, ch])
        want_weights[bi, :, i, ch] = e / e.sum()
  np.testing.assert_allclose(weights, want_weights, rtol=1e-5)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(pooled, (aligned * want_weights).sum(axis=1), rtol=1e-5, atol=1e-6)

  # A masked frame gets weight 0: the same result as the clip without it.
  mask = np.ones((B, T), bool)
  mask[0, 1] = False
  masked, masked_weights = alignment.temporal_alignment_pool(
      jnp.asarray(aligned), jnp.asarray(scores), jnp.asarray(mask))
  assert float(np.abs(masked_weights[0, 1]).max()) == 0.0
  keep = [0, 2]
  without, _ = alignment.temporal_alignment_pool(jnp.asarray(aligned[:1, keep]),
                                                 jnp.asarray(scores[:1, keep]))
  np.testing.assert_allclose(masked[0], without[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(masked[1], pooled[1], rtol=1e-6)


def test_consistency_regulariser_eq3():
  rng = _rng(8)
  aligned = rng.normal(size=(B, T, R, C))
  got = alignment.consistency_loss(jnp.asarray(aligned))
  want = np.zeros(B)
  for bi in range(B):
    for i in range(R):
      centre = aligned[bi, :, i].mean(axis=0)  # c_i: the clip's own centre
      for n in range(T):
        want[bi] += np.sum((aligned[bi, n, i] - centre) ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  mask = np.array([[True, True, False], [True, True, True]])
  masked = alignment.consistency_loss(jnp.asarray(aligned), jnp.asarray(mask))
  np.testing.assert_allclose(masked[0], alignment.consistency_loss(
      jnp.asarray(aligned[:1, :2]))[0], rtol=1e-5)


def test_a_clip_of_one_repeated_frame_is_that_frame():
  """A short tracklet padded by repetition: T copies of one frame give uniform
  temporal weights 1/T, region features equal to the single frame's, and zero
  consistency loss."""
  gam, v = _inference_gam()
  templates, frames = _inputs(9, t=1)
  single = gam.apply(v, templates, frames, False)
  repeated = gam.apply(v, templates, np.repeat(frames, 5, axis=1), False)
  pooled, weights = alignment.temporal_alignment_pool(repeated["aligned"], repeated["scores"])
  np.testing.assert_allclose(weights, 1.0 / 5, rtol=1e-6)
  np.testing.assert_allclose(pooled, single["aligned"][:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(alignment.consistency_loss(repeated["aligned"]), 0.0, atol=1e-9)
  attention = alignment.TemporalAttentionPool()
  av = attention.init(jax.random.PRNGKey(0), repeated["aligned"])
  attended, attention_weights = attention.apply(av, repeated["aligned"])
  np.testing.assert_allclose(attention_weights, 0.2, rtol=1e-5)
  np.testing.assert_allclose(attended, single["aligned"][:, 0], rtol=1e-5, atol=1e-6)


def test_region_spatial_attention_eq7_eq8():
  rng = _rng(10)
  regions = rng.normal(size=(B, R, C)).astype(np.float32)
  layer = alignment.RegionSpatialAttention(features=6)
  variables = layer.init(jax.random.PRNGKey(1), regions, False)
  (local, weights), _ = layer.apply(variables, regions, True, mutable=["batch_stats"])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  kernel, bias = p["conv"]["kernel"][:, :, 0], p["conv"]["bias"][0]  # (3, C), scalar
  padded = np.pad(regions.astype(np.float64), ((0, 0), (1, 1), (0, 0)))
  g = np.stack([sum(padded[:, i + k] @ kernel[k] for k in range(3)) + bias
                for i in range(R)], axis=1)  # Conv1d over the regions, C -> 1
  g = np.maximum(_batch_norm(g, axes=(0, 1)), 0.0)  # BN (one channel) + ReLU
  want_weights = _softmax(g, axis=1)  # Eq. 7
  fused = np.einsum("br,brc->bc", want_weights, regions)  # Eq. 8: F_s W^T
  want = fused @ p["reduce"]["kernel"] + p["reduce"]["bias"]
  np.testing.assert_allclose(weights, want_weights, rtol=1e-5)
  np.testing.assert_allclose(local, want, rtol=1e-4, atol=1e-5)


def test_temporal_attention_pool():
  rng = _rng(11)
  features = rng.normal(size=(B, T, C)).astype(np.float32)
  layer = alignment.TemporalAttentionPool()
  variables = layer.init(jax.random.PRNGKey(2), features)
  pooled, weights = layer.apply(variables, features)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["score"])
  want_weights = _softmax(features @ p["kernel"][:, 0] + p["bias"][0], axis=1)
  np.testing.assert_allclose(weights, want_weights, rtol=1e-5)
  np.testing.assert_allclose(pooled, np.einsum("bt,btc->bc", want_weights, features),
                             rtol=1e-5, atol=1e-6)
  mask = np.array([[True, False, True], [True, True, True]])
  _, masked = layer.apply(variables, features, jnp.asarray(mask))
  assert float(masked[0, 1]) == 0.0
  np.testing.assert_allclose(masked[0, [0, 2]], _softmax(
      (features @ p["kernel"][:, 0])[0, [0, 2]], axis=0), rtol=1e-5)
