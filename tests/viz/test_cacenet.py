"""CACE-Net's cross-edge figure (viz.cacenet): the red lines of the PNG are
exactly the k largest entries of Eq. 4's cross-image block, recomputed in
NumPy from the model's maps and W'; the CLI from a restored workdir."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import cacenet as cacenet_config
from reidjax import models
from reidjax.inference import normalize_images
from reidjax import checkpoint
from reidjax.viz import cacenet as viz

SIZE = (64, 32)
GRID = (4, 2)  # the tiny ResNet's stage-4 map at 64 x 32
CELL = (256, 128)  # 64 x 32 enlarged x4 to MIN_CELL_WIDTH wide


def _model_config():
  c = cacenet_config.get_config("synthetic").model
  c.backbone.update(stage_sizes=(1, 1, 1, 1), width=4)
  c.embed_dim = 6
  return c


def _image(seed):
  """Random dark stripes: no channel reaches 255, so nothing is the edge colour."""
  rng = np.random.default_rng(seed)
  image = np.zeros(SIZE + (3,), np.uint8)
  for row in range(0, SIZE[0], 8):
    image[row:row + 8] = rng.integers(0, 128, 3)
  return image


@pytest.fixture(name="setup", scope="module")
def _setup():
  model = models.build_model(_model_config(), num_classes=3)
  images = normalize_images(np.stack([_image(0), _image(1)]), *SIZE)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), {"images": images})
  params = jax.tree.map(lambda x: x, variables["params"])
  w = params["correspondence"]["inter"]["weight"]  # W': spread the edge weights
  params["correspondence"]["inter"]["weight"] = jnp.asarray(
      np.random.default_rng(0).uniform(-1, 2, w.shape), jnp.float32)
  return model, {**variables, "params": params}


def _numpy_cross_block(model, variables, query, gallery):
  """ReLU(X_q W' X_g^T) of Eq. 3-4 from the model's maps, in NumPy."""
  maps = model.apply(variables, {"images": normalize_images(np.stack([query, gallery]), *SIZE)},
                     method="features")["map"]
  x = np.asarray(maps, np.float64).reshape(2, GRID[0] * GRID[1], -1)
  w = np.asarray(variables["params"]["correspondence"]["inter"]["weight"], np.float64)
  return np.maximum(x[0] @ np.diag(w) @ x[1].T, 0.0)


def _is_edge_colour(canvas, point):
  """Whether the edge colour is at ``point`` (within one pixel: rasterisation)."""
  x, y = (int(round(v)) for v in point)
  return bool(np.all(canvas[y - 1:y + 2, x - 1:x + 2] == viz.EDGE_COLOR, axis=-1).any())


def test_drawn_edges_are_the_strongest_entries_of_the_cross_block(setup, tmp_path):
  model, variables = setup
  query, gallery = _image(0), _image(1)
  k = 5
  path = tmp_path / "edges.png"
  viz.pair_edges_figure(model, variables, query, gallery, str(path), num_edges=k)
  canvas = np.asarray(Image.open(path).convert("RGB"))
  cross = _numpy_cross_block(model, variables, query, gallery)
  order = np.argsort(-cross.reshape(-1), kind="stable")
  n = GRID[0] * GRID[1]
  top = [(int(p // n), int(p % n), 0.0) for p in order[:k]]
  segments = [viz.edge_segment(e, GRID, CELL) for e in top]
  # Every one of the k strongest edges is drawn: its midpoint and both ends are red.
  for (x0, y0), (x1, y1) in segments:
    for point in ((x0, y0), (x1, y1), ((x0 + x1) / 2, (y0 + y1) / 2)):
      assert _is_edge_colour(canvas, point)
  # Weaker edges are not drawn: the midpoint of any other edge, when it is
  # away from every drawn line and dot, is not red.

  def distance_to(point, segment):
    p, a, b = np.asarray(point), np.asarray(segment[0]), np.asarray(segment[1])
    t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
    return np.linalg.norm(p - (a + t * (b - a)))

  checked = 0
  for p in order[k:]:
    (x0, y0), (x1, y1) = viz.edge_segment((int(p // n), int(p % n), 0.0), GRID, CELL)
    middle = ((x0 + x1) / 2, (y0 + y1) / 2)
    if min(distance_to(middle, s) for s in segments) > viz.EDGE_WIDTH + viz.DOT + 2:
      assert not _is_edge_colour(canvas, middle)
      checked += 1
  assert checked >= 3
  # Red pixels lie only on the drawn segments (or their end dots).
  ys, xs = np.nonzero(np.all(canvas == viz.EDGE_COLOR, axis=-1))
  assert len(xs) > 0
  far = [min(distance_to((x, y), s) for s in segments) for x, y in zip(xs, ys)]
  assert max(far) <= viz.DOT + 1.5
  # The figure's selection is the model's own Eq. 4 adjacency.
  grid, adjacency = viz.cross_image_adjacency(model, variables, query, gallery)
  assert grid == GRID
  np.testing.assert_allclose(adjacency[:n, n:], cross, rtol=1e-4, atol=1e-4)
  assert [e[:2] for e in viz.strongest_cross_edges(adjacency, k)] == [e[:2] for e in top]


def test_bad_inputs_are_clear_errors(setup):
  model, variables = setup
  with pytest.raises(ValueError, match="uint8 RGB"):
    viz.pair_edges_figure(model, variables, _image(0).astype(np.float32), _image(1), None)
  with pytest.raises(ValueError, match=r"\(2N, 2N\)"):
    viz.strongest_cross_edges(np.zeros((3, 3)), 2)
  with pytest.raises(ValueError, match="outside"):
    viz.draw_cross_edges(_image(0), _image(1), GRID, [(8, 0, 1.0)])
  official = models.build_model(ml_collections.ConfigDict(
      {**_model_config().to_dict(), "variant": "official"}), num_classes=3)
  with pytest.raises(ValueError, match="paper variant"):
    viz.pair_edges_figure(official, variables, _image(0), _image(1), None)


def test_cli_restores_a_workdir_and_writes_the_figure(setup, tmp_path):
  model, variables = setup
  model_config = _model_config()
  model_config.num_classes = 3  # train.py fills it in from the training split
  config = ml_collections.ConfigDict(dict(
      data=dict(height=SIZE[0], width=SIZE[1], video=False), model=model_config))
  workdir = tmp_path / "run"
  ckpt = checkpoint.Checkpointer(str(workdir), save_every_steps=1)
  ckpt.save(1, variables, config, force=True)
  ckpt.wait()
  ckpt.close()
  paths = []
  for seed in (0, 1):
    paths.append(str(tmp_path / f"{seed}.png"))
    Image.fromarray(np.repeat(np.repeat(_image(seed), 2, 0), 2, 1)).save(paths[-1])
  out = str(tmp_path / "fig" / "edges.png")
  assert viz.main(["--workdir", str(workdir), "--query", paths[0], "--gallery", paths[1],
                   "--out", out, "--edges", "3"]) == out
  loaded = [np.asarray(Image.open(p).resize((SIZE[1], SIZE[0]), Image.BILINEAR)) for p in paths]
  expected = viz.pair_edges_figure(model, variables, *loaded, None, num_edges=3)
  np.testing.assert_allclose(np.asarray(Image.open(out), float), np.asarray(expected, float),
                             atol=2)
  with pytest.raises(FileNotFoundError, match="No image file"):
    viz.main(["--workdir", str(workdir), "--query", paths[0] + ".x", "--gallery", paths[1],
              "--out", out])
