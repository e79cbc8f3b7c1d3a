"""Procedurally rendered pedestrians, written in the Market-1501 layout.

The synthetic set lets the real parser, input pipeline, models and evaluator
run end to end without downloading anything. It is built from four pieces that
a video generator can reuse:

  * `Identity` (`sample_identity`): what a person looks like - skin, hair,
    garments per body region (colour, pattern with its own second colour),
    accessories (hat, backpack, shoulder bag) and build. Fixed per pid.
  * `Camera` (`sample_camera`): illumination gain, colour cast, haze, gamma,
    saturation and a background style. Fixed per camera.
  * `View` (`sample_view`): everything that changes per frame - scale,
    misalignment, flip, front/back, gait phase, occluders, noise, blur, JPEG
    quality. A tracklet is a smooth sequence of views.
  * `render(identity, camera, view, size)`: a pure function to a uint8 image,
    vectorised with NumPy (soft masks on coordinate grids).

The nuisances are calibrated so that raw pixels are a poor descriptor (raw
pixel Euclidean mAP well below 0.3) while garment colours and patterns stay
distinguishable after the camera transform, so a small CNN can learn them.

Pose keypoints (for Attention-Driven ReID's part boxes): `person_joints`
gives the 18 COCO-18 joints of the rendered geometry, and the set holds
`keypoints/{train,query,gallery}.json` (`reidjax.data.keypoints` format)
with pose-estimator-like errors (`estimate_keypoints`): per-joint position
noise, confidences spread over (0.3, 0.95), face joints lost from behind,
joints under an occluder or outside the image missing or at low confidence,
a few random drop-outs, and no person at all in clutter images. Their noise
comes from its own random stream, so the images are the same as without
keypoints; a set written before the keypoints existed gets its files added
on its next use, without touching its images.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from reidjax.data import keypoints as keypoints_lib

Color = tuple[float, float, float]

# Bumped whenever rendering changes, so a stale set on disk is not reused.
GENERATOR_VERSION = 1
# Bumped whenever the keypoints change; the files are rewritten, not the images.
KEYPOINTS_VERSION = 1
MARKER_NAME = "synthetic_market.json"
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
# Market folder -> split name of its keypoints file (keypoints.SPLIT_FILES).
KEYPOINT_SPLITS = {"bounding_box_train": "train", "query": "query",
                   "bounding_box_test": "gallery"}

# Clothing palette (sRGB in [0, 1]); the names only document intent.
PALETTE: dict[str, Color] = {
    "black": (0.07, 0.07, 0.08),
    "charcoal": (0.26, 0.26, 0.28),
    "grey": (0.52, 0.52, 0.52),
    "white": (0.92, 0.92, 0.90),
    "navy": (0.10, 0.13, 0.36),
    "denim": (0.22, 0.33, 0.55),
    "blue": (0.13, 0.38, 0.82),
    "light_blue": (0.56, 0.74, 0.92),
    "red": (0.80, 0.10, 0.10),
    "maroon": (0.45, 0.07, 0.12),
    "pink": (0.94, 0.55, 0.68),
    "orange": (0.96, 0.50, 0.08),
    "yellow": (0.95, 0.86, 0.18),
    "green": (0.12, 0.58, 0.22),
    "olive": (0.40, 0.43, 0.14),
    "teal": (0.06, 0.52, 0.52),
    "purple": (0.46, 0.18, 0.62),
    "brown": (0.45, 0.28, 0.13),
    "beige": (0.80, 0.71, 0.50),
}
_PALETTE = np.array(list(PALETTE.values()), np.float32)
# Trousers are mostly dark or denim, as in real street scenes.
_LOWER_WEIGHTS = np.array([3, 2, 2, 1, 2, 4, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1,
                           2, 2], np.float64)
_SKIN = np.array([(0.96, 0.80, 0.69), (0.90, 0.70, 0.56), (0.78, 0.57, 0.42),
                  (0.58, 0.40, 0.28), (0.36, 0.24, 0.17)], np.float32)
_HAIR = np.array([(0.05, 0.04, 0.04), (0.22, 0.14, 0.08), (0.45, 0.30, 0.15),
                  (0.85, 0.72, 0.42), (0.60, 0.60, 0.60), (0.55, 0.22, 0.10)],
                 np.float32)
PATTERNS = ("solid", "hstripes", "vstripes", "checks")
LOWER_STYLES = ("trousers", "shorts", "skirt")
BACKGROUNDS = ("plain", "tiles", "columns", "foliage")
OCCLUDERS = ("none", "box", "pole", "person")


# --------------------------------------------------------------------------
# Appearance specs.


@dataclasses.dataclass(frozen=True)
class Garment:
  """A garment's colour and pattern.

  Attributes:
    color: main colour.
    pattern: one of PATTERNS.
    color2: second colour of stripes / checks (unused when solid).
    period: stripe / check period, in units of body height.
  """
  color: Color
  pattern: str = "solid"
  color2: Color = (0.0, 0.0, 0.0)
  period: float = 0.05


@dataclasses.dataclass(frozen=True)
class Identity:
  """Everything about a person's appearance that is fixed across views."""
  skin: Color
  hair: Color
  long_hair: bool
  upper: Garment
  long_sleeves: bool
  lower: Garment
  lower_style: str  # One of LOWER_STYLES.
  shoes: Color
  hat: Optional[Color] = None
  backpack: Optional[Color] = None
  shoulder_bag: Optional[Color] = None
  bag_side: int = 1  # +1: bag on the viewer's right in an unflipped front view.
  height: float = 0.94  # Fraction of the box height at view scale 1.
  width: float = 1.0  # Horizontal build factor.


@dataclasses.dataclass(frozen=True)
class Camera:
  """Per-camera photometry and background style."""
  gain: float
  cast: Color  # Per-channel multipliers, mean ~1.
  haze: Color  # Additive offset (flare / black level).
  gamma: float
  saturation: float
  background: str  # One of BACKGROUNDS.
  wall: Color
  floor: Color
  texture: Color
  horizon: float  # Floor starts at this fraction of the image height.
  texture_period: float  # Pixels.
  texture_seed: int  # Seeds the foliage field.


@dataclasses.dataclass(frozen=True)
class View:
  """Per-image nuisances; smooth sequences of these make a tracklet."""
  scale: float = 1.0  # Person height multiplier.
  dx: float = 0.0  # Horizontal offset of the person, fraction of width.
  dy: float = 0.0  # Vertical offset, fraction of height.
  flip: bool = False
  back: bool = False  # Seen from behind: no face, backpack in full.
  phase: float = 0.0  # Gait phase, radians.
  stride: float = 0.2  # Limb swing amplitude, radians.
  bg_shift: tuple[float, float] = (0.0, 0.0)  # Background texture shift, px.
  light: float = 1.0  # Illumination relative to the camera gain.
  occluder: str = "none"  # One of OCCLUDERS.
  # Occluding box / pole (x0, y0, x1, y1) as fractions of the image.
  occ_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
  occ_color: Color = (0.5, 0.5, 0.5)
  other: Optional[Identity] = None  # The passer-by when occluder == 'person'.
  other_dx: float = 0.0  # Passer-by's offset from the target (of width).
  blur: bool = False
  noise: float = 0.0  # Gaussian noise std (image in [0, 1]).
  seed: int = 0  # Seeds the pixel noise and clutter.
  jpeg_quality: int = 90


def _pick_color(rng, table: np.ndarray, jitter: float,
                p: Optional[np.ndarray] = None, exclude: int = -1):
  if p is None:
    p = np.ones(len(table))
  p = p.astype(np.float64).copy()
  if exclude >= 0:
    p[exclude] = 0.0
  i = int(rng.choice(len(table), p=p / p.sum()))
  c = np.clip(table[i] + rng.uniform(-jitter, jitter, 3), 0.0, 1.0)
  return tuple(float(v) for v in c), i


def _sample_garment(rng, weights, pattern_p) -> Garment:
  color, i = _pick_color(rng, _PALETTE, 0.04, weights)
  pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=pattern_p))]
  color2, _ = _pick_color(rng, _PALETTE, 0.04, exclude=i)
  return Garment(color=color, pattern=pattern, color2=color2,
                 period=float(rng.uniform(0.035, 0.07)))


def sample_identity(rng: np.random.Generator) -> Identity:
  """Samples a person's appearance."""
  skin, _ = _pick_color(rng, _SKIN, 0.03)
  hair, _ = _pick_color(rng, _HAIR, 0.03)
  upper = _sample_garment(rng, None, [0.5, 0.2, 0.1, 0.2])
  lower = _sample_garment(rng, _LOWER_WEIGHTS, [0.8, 0.05, 0.05, 0.1])
  lower_style = LOWER_STYLES[int(rng.choice(3, p=[0.65, 0.2, 0.15]))]
  shoes, _ = _pick_color(rng, _PALETTE, 0.03,
                         np.where(np.arange(len(_PALETTE)) < 4, 4.0, 0.3))

  def accessory(p):
    return _pick_color(rng, _PALETTE, 0.04)[0] if rng.random() < p else None

  return Identity(
      skin=skin, hair=hair, long_hair=bool(rng.random() < 0.35),
      upper=upper, long_sleeves=bool(rng.random() < 0.6),
      lower=lower, lower_style=lower_style, shoes=shoes,
      hat=accessory(0.2), backpack=accessory(0.3),
      shoulder_bag=accessory(0.25),
      bag_side=int(rng.choice([-1, 1])),
      height=float(rng.uniform(0.88, 0.98)),
      width=float(rng.uniform(0.85, 1.2)))


def sample_camera(rng: np.random.Generator,
                  background: Optional[str] = None) -> Camera:
  """Samples a camera: moderate photometric shift, distinct background."""
  cast = np.exp(rng.normal(0.0, 0.1, 3))
  cast /= cast.mean()
  haze = rng.uniform(0.0, 0.08) * rng.uniform(0.6, 1.0, 3)

  def bg_color(lo, hi):
    return tuple(float(v) for v in rng.uniform(lo, hi) *
                 np.exp(rng.normal(0.0, 0.25, 3)).clip(0.4, 2.0) / 1.2)

  return Camera(
      gain=float(rng.uniform(0.75, 1.2)),
      cast=tuple(float(v) for v in cast),
      haze=tuple(float(v) for v in haze),
      gamma=float(rng.uniform(0.85, 1.15)),
      saturation=float(rng.uniform(0.8, 1.05)),
      background=(background if background is not None else
                  BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]),
      wall=bg_color(0.2, 0.9), floor=bg_color(0.2, 0.8),
      texture=bg_color(0.1, 0.9),
      horizon=float(rng.uniform(0.45, 0.8)),
      texture_period=float(rng.uniform(5.0, 16.0)),
      texture_seed=int(rng.integers(2**31)))


def sample_view(rng: np.random.Generator, *, fragment: bool = False) -> View:
  """Samples per-image nuisances; `fragment` zooms into part of a person."""
  if fragment:
    scale = float(rng.uniform(1.6, 2.8))
    dx, dy = (float(v) for v in rng.uniform(-0.6, 0.6, 2))
  else:
    scale = float(rng.uniform(0.78, 1.05))
    dx = float(rng.uniform(-0.13, 0.13))
    dy = float(rng.uniform(-0.07, 0.07))
  occluder = OCCLUDERS[int(rng.choice(4, p=[0.7, 0.12, 0.08, 0.1]))]
  other, other_dx = None, 0.0
  occ_box = (0.0, 0.0, 0.0, 0.0)
  if occluder == "box":
    # Something entering from an edge: a car, a railing, a bin.
    side = int(rng.integers(3))
    a = float(rng.uniform(0.15, 0.35))
    occ_box = [(0.0, 1.0 - a, 1.0, 1.0), (0.0, 0.3, a, 1.0),
               (1.0 - a, 0.3, 1.0, 1.0)][side]
  elif occluder == "pole":
    x0 = float(rng.uniform(0.1, 0.8))
    occ_box = (x0, 0.0, x0 + float(rng.uniform(0.04, 0.1)), 1.0)
  elif occluder == "person":
    other = sample_identity(rng)
    other_dx = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.45, 0.7))
  occ_color, _ = _pick_color(rng, _PALETTE, 0.1)
  return View(
      scale=scale, dx=dx, dy=dy,
      flip=bool(rng.random() < 0.5), back=bool(rng.random() < 0.5),
      phase=float(rng.uniform(0.0, 2 * np.pi)),
      stride=float(rng.uniform(0.0, 0.35)),
      bg_shift=(float(rng.uniform(0, 64)), float(rng.uniform(0, 64))),
      light=float(np.exp(rng.normal(0.0, 0.08))),
      occluder=occluder, occ_box=occ_box, occ_color=occ_color, other=other,
      other_dx=other_dx,
      blur=bool(rng.random() < 0.3),
      noise=float(rng.uniform(0.0, 0.05)),
      seed=int(rng.integers(2**31)),
      jpeg_quality=int(rng.integers(35, 96)))


# --------------------------------------------------------------------------
# Rendering: painter's algorithm with anti-aliased masks on coordinate grids.


def _paint(img, alpha, color, shade=None):
  """Composites `color` (3,) or (H, W, 3) over img with (H, W) alpha."""
  # Blend only inside the mask's bounding box: most parts are small, and the
  # blend is the dominant cost of rendering.
  rows = np.flatnonzero(alpha.any(axis=1))
  if not rows.size:
    return
  cols = np.flatnonzero(alpha.any(axis=0))
  box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  c = np.asarray(color, np.float32)
  if c.ndim == 3:
    c = c[box]
  if shade is not None:
    c = c * (shade[box][..., None] if np.ndim(shade) else shade)
  sub = img[box]
  sub += alpha[box][..., None] * (c - sub)


def _soft(signed_dist, px):
  """Alpha from a signed distance (positive inside) in body units."""
  return np.clip(signed_dist * px + 0.5, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry, px):
  d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
  return _soft((1.0 - d) * min(rx, ry), px)


def _box(x, y, x0, y0, x1, y1, px):
  d = np.minimum(np.minimum(x - x0, x1 - x), np.minimum(y - y0, y1 - y))
  return _soft(d, px)


def _trapezoid(x, y, y0, y1, hw0, hw1, px, cx=0.0):
  """Vertical trapezoid: half-width hw0 at y0 to hw1 at y1; returns shade."""
  t = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
  hw = hw0 + (hw1 - hw0) * t
  d = np.minimum(hw - np.abs(x - cx), np.minimum(y - y0, y1 - y))
  shade = 1.0 - 0.35 * np.clip(np.abs(x - cx) / hw, 0, 1) ** 2
  return _soft(d, px), shade


def _capsule(x, y, p0, p1, r, px):
  """Segment with radius r; returns alpha and a cylindrical shade."""
  dxs, dys = p1[0] - p0[0], p1[1] - p0[1]
  t = np.clip(((x - p0[0]) * dxs + (y - p0[1]) * dys) /
              (dxs * dxs + dys * dys), 0.0, 1.0)
  d = np.sqrt((x - p0[0] - t * dxs) ** 2 + (y - p0[1] - t * dys) ** 2)
  shade = 1.0 - 0.35 * np.clip(d / r, 0, 1) ** 2
  return _soft(r - d, px), shade


def _garment_color(g: Garment, x, y):
  if g.pattern == "solid":
    return np.asarray(g.color, np.float32)
  u, v = np.floor(x / g.period), np.floor(y / g.period)
  sel = {"hstripes": v, "vstripes": u, "checks": u + v}[g.pattern] % 2
  return np.where(sel[..., None] > 0, np.asarray(g.color2, np.float32),
                  np.asarray(g.color, np.float32))


def _limb_end(p0, length, angle):
  return (p0[0] + length * np.sin(angle), p0[1] + length * np.cos(angle))


def _draw_person(img, ident: Identity, view: View, yy, xx, dx: float):
  """Paints one person onto img (in place)."""
  h, w = img.shape[:2]
  px = view.scale * ident.height * h  # Pixels per body unit (vertical).
  top = (h - px) * 0.5 + view.dy * h
  cx = w * 0.5 + dx * w
  y = (yy - top) / px
  x = (xx - cx) / (px * ident.width)
  if view.flip:
    x = -x
  swing = view.stride * np.sin(view.phase)
  skin = ident.skin
  sleeve = _garment_color(ident.upper, x, y)
  trousers = _garment_color(ident.lower, x, y)
  # Seen from behind, the bag hangs on the other side of the image.
  side = -ident.bag_side if view.back else ident.bag_side

  # Backpack bulk seen past the torso edges (front) - behind everything.
  if ident.backpack is not None and not view.back:
    for s in (-1, 1):
      x0, x1 = sorted((s * 0.11, s * 0.165))
      _paint(img, _box(x, y, x0, 0.2, x1, 0.44, px),
             np.asarray(ident.backpack) * 0.8)

  # Legs, shoes and lower garment.
  hips = [(-0.05, 0.54), (0.05, 0.54)]
  legs = [(hips[0], _limb_end(hips[0], 0.41, swing)),
          (hips[1], _limb_end(hips[1], 0.41, -swing))]
  for p0, p1 in legs:
    a, sh = _capsule(x, y, p0, p1, 0.047, px)
    _paint(img, a, skin if ident.lower_style != "trousers" else trousers, sh)
    if ident.lower_style == "shorts":
      knee = (p0[0] + 0.45 * (p1[0] - p0[0]), p0[1] + 0.45 * (p1[1] - p0[1]))
      a, sh = _capsule(x, y, p0, knee, 0.052, px)
      _paint(img, a, trousers, sh)
    _paint(img, _ellipse(x, y, p1[0] + 0.01, p1[1] + 0.02, 0.048, 0.026, px),
           ident.shoes)
  if ident.lower_style == "skirt":
    a, sh = _trapezoid(x, y, 0.49, 0.74, 0.11, 0.17, px)
  else:
    a, sh = _trapezoid(x, y, 0.49, 0.6, 0.11, 0.1, px)
  _paint(img, a, trousers, sh)

  # Torso.
  a, sh = _trapezoid(x, y, 0.15, 0.52, 0.135, 0.11, px)
  _paint(img, a, sleeve, sh)

  # Backpack in full from behind, straps from the front.
  if ident.backpack is not None:
    if view.back:
      a = _box(x, y, -0.105, 0.19, 0.105, 0.46, px)
      _paint(img, a, ident.backpack, 1.0 - 0.3 * np.clip(np.abs(x) / 0.1, 0, 1))
      _paint(img, _box(x, y, -0.08, 0.33, 0.08, 0.35, px),
             np.asarray(ident.backpack) * 0.6)
    else:
      for s in (-1, 1):
        _paint(img, _box(x, y, s * 0.075 - 0.013, 0.15, s * 0.075 + 0.013,
                         0.36, px), np.asarray(ident.backpack) * 0.7)

  # Arms swing against the legs; short sleeves show the forearm.
  shoulders = [(-0.135, 0.18), (0.135, 0.18)]
  for s, p0 in zip((-1, 1), shoulders):
    p1 = _limb_end(p0, 0.31, s * (0.1 + 0.8 * swing))
    a, sh = _capsule(x, y, p0, p1, 0.036, px)
    _paint(img, a, sleeve if ident.long_sleeves else skin, sh)
    if not ident.long_sleeves:
      elbow = (p0[0] + 0.4 * (p1[0] - p0[0]), p0[1] + 0.4 * (p1[1] - p0[1]))
      a, sh = _capsule(x, y, p0, elbow, 0.04, px)
      _paint(img, a, sleeve, sh)
    _paint(img, _ellipse(x, y, p1[0], p1[1] + 0.01, 0.03, 0.03, px), skin)

  # Shoulder bag: a diagonal strap and a bag at the hip.
  if ident.shoulder_bag is not None:
    a, _ = _capsule(x, y, (-side * 0.09, 0.16), (side * 0.13, 0.47), 0.012, px)
    _paint(img, a, np.asarray(ident.shoulder_bag) * 0.7)
    a = _box(x, y, min(side * 0.1, side * 0.23), 0.44,
             max(side * 0.1, side * 0.23), 0.59, px)
    _paint(img, a, ident.shoulder_bag,
           1.0 - 0.25 * np.clip((y - 0.44) / 0.15, 0, 1))

  # Neck, head, hair, hat.
  _paint(img, _box(x, y, -0.03, 0.11, 0.03, 0.17, px), skin)
  if ident.long_hair:
    hair_box = (-0.07, 0.04, 0.07, 0.24) if view.back else (-0.07, 0.05, 0.07,
                                                            0.2)
    _paint(img, _box(x, y, *hair_box, px), ident.hair)
  if view.back:
    _paint(img, _ellipse(x, y, 0.0, 0.075, 0.057, 0.072, px), ident.hair)
  else:
    _paint(img, _ellipse(x, y, 0.0, 0.078, 0.054, 0.07, px), skin)
    cap = _ellipse(x, y, 0.0, 0.062, 0.06, 0.062, px) * _soft(0.055 - y, px)
    _paint(img, cap, ident.hair)
  if ident.hat is not None:
    _paint(img, _ellipse(x, y, 0.0, 0.035, 0.062, 0.04, px) *
           _soft(0.055 - y, px), ident.hat)
    _paint(img, _box(x, y, -0.085, 0.045, 0.085, 0.062, px),
           np.asarray(ident.hat) * 0.8)


# --------------------------------------------------------------------------
# Pose keypoints of the rendered geometry (the numbers of `_draw_person`).


def person_joints(ident: Identity, view: View, size: Sequence[int],
                  dx: Optional[float] = None) -> np.ndarray:
  """(18, 2) exact COCO-18 joints (x, y) of a rendered person, in pixels.

  Continuous coordinates (the image's top-left corner at (0, 0), pixel
  centres at +0.5, as `render` samples). "Right" is the side a pose
  estimator calls right: the image's left in a front view, its right from
  behind. A flipped view is the mirror image of the unflipped one, so its
  joints are the mirrored joints with left and right swapped (what an
  estimator reports for a mirrored photo).
  """
  h, w = int(size[0]), int(size[1])
  px = view.scale * ident.height * h
  top = (h - px) * 0.5 + view.dy * h
  cx = w * 0.5 + (view.dx if dx is None else dx) * w
  swing = view.stride * np.sin(view.phase)
  # Body-x side of the estimator's "right" (body x is mirrored by a flip).
  right = (1.0 if view.back else -1.0) * (-1.0 if view.flip else 1.0)
  body = {"nose": (0.0, 0.095), "neck": (0.0, 0.16)}
  for side, sign in (("right", right), ("left", -right)):
    body[f"{side}_eye"] = (sign * 0.022, 0.07)
    body[f"{side}_ear"] = (sign * 0.055, 0.08)
  # Arms and legs exactly as `_draw_person` draws them (s = body-x side).
  for s in (-1.0, 1.0):
    side = "right" if s == right else "left"
    shoulder = (s * 0.135, 0.18)
    hand = _limb_end(shoulder, 0.31, s * (0.1 + 0.8 * swing))
    body[f"{side}_shoulder"] = shoulder
    body[f"{side}_elbow"] = tuple(0.5 * (a + b) for a, b in zip(shoulder, hand))
    body[f"{side}_wrist"] = hand
    hip = (s * 0.05, 0.54)
    foot = _limb_end(hip, 0.41, -s * swing)
    body[f"{side}_hip"] = hip
    body[f"{side}_knee"] = tuple(0.5 * (a + b) for a, b in zip(hip, foot))
    body[f"{side}_ankle"] = foot
  mirror = -1.0 if view.flip else 1.0
  out = np.empty((keypoints_lib.NUM_JOINTS, 2), np.float64)
  for name, (x, y) in body.items():
    out[keypoints_lib.JOINT_INDEX[name]] = (
        cx + mirror * x * px * ident.width, top + y * px)
  return out


_FACE = tuple(keypoints_lib.JOINT_INDEX[n]
              for n in ("nose", "right_eye", "left_eye"))
_EARS = tuple(keypoints_lib.JOINT_INDEX[n] for n in ("right_ear", "left_ear"))
_EXTREMITIES = tuple(keypoints_lib.JOINT_INDEX[n] for n in (
    "right_wrist", "left_wrist", "right_ankle", "left_ankle"))


def estimate_keypoints(ident: Optional[Identity], view: View,
                       size: Sequence[int],
                       rng: np.random.Generator) -> np.ndarray:
  """(18, 3) [x, y, confidence] as a pose estimator might report them.

  Position noise of ~1.2% of the body height (2% at wrists and ankles),
  confidences U(0.3, 0.95); face joints usually lost from behind; joints
  under a box / pole occluder or outside the image missing or below 0.3;
  5% random drop-outs and 5% unreliable (confidence < 0.1, larger noise).
  Clutter images (no identity) have no person: all zeros.
  """
  out = np.zeros((keypoints_lib.NUM_JOINTS, 3), np.float64)
  if ident is None:
    return out
  h, w = int(size[0]), int(size[1])
  exact = person_joints(ident, view, size)
  stature = view.scale * ident.height * h
  n = keypoints_lib.NUM_JOINTS
  spread = np.full(n, 0.012)
  spread[list(_EXTREMITIES)] = 0.02
  xy = exact + rng.normal(0.0, 1.0, (n, 2)) * spread[:, None] * stature
  conf = rng.uniform(0.3, 0.95, n)
  if view.back:
    face = np.asarray(_FACE)
    lost = rng.random(face.size) < 0.8
    conf[face] = np.where(lost, 0.0, rng.uniform(0.02, 0.2, face.size))
    conf[list(_EARS)] *= 0.7
  if view.occluder in ("box", "pole"):
    x0, y0, x1, y1 = view.occ_box
    under = ((exact[:, 0] >= x0 * w) & (exact[:, 0] <= x1 * w)
             & (exact[:, 1] >= y0 * h) & (exact[:, 1] <= y1 * h))
    low = rng.uniform(0.02, 0.3, n)
    conf = np.where(under, np.where(rng.random(n) < 0.6, 0.0, low), conf)
  outside = ((exact[:, 0] < 0) | (exact[:, 0] >= w) | (exact[:, 1] < 0)
             | (exact[:, 1] >= h))
  conf[outside] = 0.0
  unreliable = rng.random(n) < 0.05
  conf = np.where(unreliable, np.minimum(conf, rng.uniform(0.01, 0.1, n)),
                  conf)
  xy += (unreliable[:, None] * rng.normal(0.0, 0.05, (n, 2)) * stature)
  conf[rng.random(n) < 0.05] = 0.0
  out[:, :2] = xy
  out[:, 2] = conf
  out[conf <= 0] = 0.0
  return out


def _keypoint_tables(params: dict) -> dict[str, dict[str, np.ndarray]]:
  """{split: {file name: (18, 3)}} of the set: no rendering, own RNG."""
  size = tuple(params["image_size"])
  tables = {split: {} for split in KEYPOINT_SPLITS.values()}
  for i, item in enumerate(_plan(params)):
    if item.name.startswith("-1_"):
      continue  # Junk: the Market-1501 parser drops it.
    # Tag 7: a stream apart from the plan's (tags 0-4); the images' draws
    # are untouched.
    rng = np.random.default_rng([params["seed"], 7, i])
    tables[KEYPOINT_SPLITS[item.split]][item.name] = estimate_keypoints(
        item.identity, item.view, size, rng)
  return tables


def _keypoints_stamp(params: dict) -> dict:
  return {"name": "reidjax.data.synthetic",
          "keypoints_version": KEYPOINTS_VERSION, "params": params}


def _write_keypoints(root: str, params: dict) -> None:
  folder = os.path.join(root, "keypoints")
  os.makedirs(folder, exist_ok=True)
  for split, table in _keypoint_tables(params).items():
    keypoints_lib.write_keypoints_file(
        os.path.join(folder, keypoints_lib.SPLIT_FILES[split]), table,
        generator=_keypoints_stamp(params))


def ensure_keypoints(root: str, params: dict) -> bool:
  """Adds (or renews) the keypoint files of a complete set; True if written.

  A set written before the keypoints existed, or with an older
  KEYPOINTS_VERSION, gets them without its images being rewritten.
  """
  stamp = _keypoints_stamp(params)
  for name in keypoints_lib.SPLIT_FILES.values():
    path = os.path.join(root, "keypoints", name)
    try:
      with open(path, encoding="utf-8") as f:
        if json.load(f).get("generator") == stamp:
          continue
    except (OSError, ValueError):
      pass
    _write_keypoints(root, params)
    return True
  return False


def _background(camera: Camera, view: View, yy, xx, h, w):
  yb, xb = yy + view.bg_shift[0], xx + view.bg_shift[1]
  wall = np.asarray(camera.wall, np.float32)
  floor = np.asarray(camera.floor, np.float32)
  tex = np.asarray(camera.texture, np.float32)
  horizon = camera.horizon * h
  p = camera.texture_period
  # Lighting falls off towards the top of the wall / far end of the floor.
  grad = (0.8 + 0.3 * yy / h)[..., None]
  if camera.background == "columns":
    sel = (np.floor(xb / p) % 3 == 0)[..., None]
    wall = np.where(sel, tex, wall)
  elif camera.background == "foliage":
    rng = np.random.default_rng(camera.texture_seed)
    field = rng.random((16, 16)).astype(np.float32)
    mix = _sample_wrapped(field, yb / p, xb / p)[..., None]
    wall = wall + (tex - wall) * mix
  img = np.where((yy < horizon)[..., None], wall * grad, floor * grad)
  if camera.background == "tiles":
    sel = ((np.floor(xb / p) + np.floor(yb / (0.6 * p))) % 2 == 0)
    img = np.where((sel & (yy >= horizon))[..., None], tex * grad, img)
  return np.ascontiguousarray(img, np.float32)


def _sample_wrapped(field, y, x):
  """Bilinear lookup into a periodic 2-D field (smooth random texture)."""
  fh, fw = field.shape
  y0, x0 = np.floor(y), np.floor(x)
  ty, tx = y - y0, x - x0
  y0 = y0.astype(np.int64) % fh
  x0 = x0.astype(np.int64) % fw
  y1, x1 = (y0 + 1) % fh, (x0 + 1) % fw
  top = field[y0, x0] * (1 - tx) + field[y0, x1] * tx
  bot = field[y1, x0] * (1 - tx) + field[y1, x1] * tx
  return top * (1 - ty) + bot * ty


def _clutter(img, rng, yy, xx):
  """Non-person clutter (distractor detections): random boxes and blobs."""
  h, w = img.shape[:2]
  for _ in range(int(rng.integers(2, 6))):
    c, _ = _pick_color(rng, _PALETTE, 0.1)
    x0, x1 = np.sort(rng.uniform(-0.2, 1.2, 2)) * w
    y0, y1 = np.sort(rng.uniform(-0.2, 1.2, 2)) * h
    if rng.random() < 0.5:
      a = _box(xx, yy, x0, y0, x1, y1, 1.0)
    else:
      a = _ellipse(xx, yy, (x0 + x1) / 2, (y0 + y1) / 2,
                   max((x1 - x0) / 2, 2.0), max((y1 - y0) / 2, 2.0), 1.0)
    _paint(img, a, c)


def render(identity: Optional[Identity], camera: Camera, view: View,
           size: Sequence[int] = (128, 64)) -> np.ndarray:
  """Renders one pedestrian image.

  Args:
    identity: the person, or None for a non-person clutter image.
    camera: the camera that sees it.
    view: per-image nuisances.
    size: (height, width).

  Returns:
    (height, width, 3) uint8 image, before JPEG compression.
  """
  h, w = int(size[0]), int(size[1])
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  img = _background(camera, view, yy, xx, h, w)
  rng = np.random.default_rng(view.seed)
  if identity is None:
    _clutter(img, rng, yy, xx)
  else:
    if view.occluder == "person" and view.other is not None:
      # A passer-by partly in the box, behind the target.
      _draw_person(img, view.other, dataclasses.replace(view, flip=False),
                   yy, xx, view.dx + view.other_dx)
    _draw_person(img, identity, view, yy, xx, view.dx)
  if view.occluder in ("box", "pole"):
    x0, y0, x1, y1 = view.occ_box
    a = _box(xx, yy, x0 * w, y0 * h, x1 * w, y1 * h, 1.0)
    shade = 0.85 + 0.3 * (xx / w) if view.occluder == "pole" else None
    _paint(img, a, view.occ_color, shade)

  # Camera photometry. Casts are moderate, so a red shirt stays reddish.
  img *= (np.asarray(camera.cast, np.float32) * (camera.gain * view.light))
  img += np.asarray(camera.haze, np.float32)
  lum = img.mean(axis=-1, keepdims=True)
  img = lum + camera.saturation * (img - lum)
  img = np.clip(img, 0.0, 1.0) ** camera.gamma
  if view.blur:
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
  if view.noise > 0:
    img = img + rng.normal(0.0, view.noise, img.shape).astype(np.float32)
  return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()


# --------------------------------------------------------------------------
# The Market-1501-style dataset on disk.


@dataclasses.dataclass(frozen=True)
class _Item:
  split: str
  name: str
  identity: Optional[Identity]
  camera: int
  view: View


def _plan(params: dict) -> list[_Item]:
  """Decides every image of the set (no rendering): splits, names, specs."""
  seed = params["seed"]
  n_cams = params["num_cameras"]
  per_id = params["images_per_id"]
  rng = np.random.default_rng([seed, 0])
  n_ids = params["num_train_ids"] + params["num_test_ids"]
  perm = rng.permutation(np.arange(1, n_ids + 1))
  train_pids = set(int(p) for p in perm[:params["num_train_ids"]])
  frame = rng.integers(0, 500, n_cams)

  def name(pid, cam):
    # Frames grow per camera, so (camera, frame) makes every name unique.
    frame[cam] += rng.integers(1, 20)
    if frame[cam] > 999999:
      raise ValueError("Too many images per camera for 6-digit frame numbers.")
    pid_str = "-1" if pid < 0 else f"{pid:04d}"
    return (f"{pid_str}_c{cam + 1}s{int(rng.integers(1, 7))}_"
            f"{int(frame[cam]):06d}_{int(rng.integers(0, 4)):02d}.jpg")

  items = []
  test_identities = []
  min_cams = min(3, n_cams)
  for pid in range(1, n_ids + 1):
    ident = sample_identity(np.random.default_rng([seed, 2, pid]))
    view_rng = np.random.default_rng([seed, 3, pid])
    # At most per_id // 2 cameras: two images in each (same draws as before
    # whenever per_id >= 2 * n_cams).
    k = int(rng.integers(min_cams, min(n_cams, per_id // 2) + 1))
    cams = np.sort(rng.choice(n_cams, k, replace=False))
    # Two images per camera at least, so that a query can be taken from any
    # camera and still leave a gallery image there.
    counts = 2 + rng.multinomial(per_id - 2 * k, np.ones(k) / k)
    is_train = pid in train_pids
    if not is_train:
      test_identities.append(ident)
      in_query = rng.random(k) < 0.6
      in_query[rng.integers(k)] = True
    for j, (cam, n) in enumerate(zip(cams, counts)):
      for i in range(n):
        split = ("bounding_box_train" if is_train else
                 "query" if (i == 0 and in_query[j]) else "bounding_box_test")
        items.append(_Item(split, name(pid, int(cam)), ident, int(cam),
                           sample_view(view_rng)))

  extra_rng = np.random.default_rng([seed, 4])
  for _ in range(params["num_distractors"]):
    cam = int(extra_rng.integers(n_cams))
    if extra_rng.random() < 0.5:
      ident = None  # Clutter.
      view = sample_view(extra_rng)
    else:
      ident = sample_identity(extra_rng)  # A fragment of a stranger.
      view = sample_view(extra_rng, fragment=True)
    items.append(_Item("bounding_box_test", name(0, cam), ident, cam, view))
  for _ in range(params["num_junk"]):
    # Market junk: bad crops of real test people; the protocol ignores them.
    cam = int(extra_rng.integers(n_cams))
    ident = test_identities[int(extra_rng.integers(len(test_identities)))]
    items.append(_Item("bounding_box_test", name(-1, cam), ident, cam,
                       sample_view(extra_rng, fragment=True)))
  return items


def make_cameras(seed: int, num_cameras: int) -> list[Camera]:
  """The cameras of a synthetic set; background styles are spread evenly."""
  rng = np.random.default_rng([seed, 1])
  order = rng.permutation(len(BACKGROUNDS))
  return [sample_camera(np.random.default_rng([seed, 1, c]),
                        BACKGROUNDS[order[c % len(BACKGROUNDS)]])
          for c in range(num_cameras)]


def read_marker(root: str, marker_name: str = MARKER_NAME) -> Optional[dict]:
  """The marker of a generated set in `root`, or None if there is none."""
  path = os.path.join(root, marker_name)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_synthetic_market(
    root: str,
    *,
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    num_cameras: int = 6,
    images_per_id: int = 16,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 64),
    num_distractors: int = 150,
    num_junk: int = 50,
) -> str:
  """Writes a synthetic pedestrian set in the Market-1501 layout.

  Train and test ids are disjoint; every id is seen by >= min(3, num_cameras)
  cameras with >= 2 images in each, so every query (one per (id, camera) for a
  random subset of the id's cameras) has a cross-camera match in the gallery.
  The gallery also holds distractors (pid 0000) and junk (pid -1).

  Deterministic in `seed` (byte-identical files) and idempotent: a complete
  set written with the same parameters is reused. The set is written to a
  sibling temporary folder and moved into place, so `root` is never left
  half-written, and an existing foreign folder is never overwritten.

  Args:
    root: destination folder; must not exist, be empty, or hold this set.
    num_train_ids: identities in bounding_box_train/.
    num_test_ids: identities in query/ and bounding_box_test/.
    num_cameras: cameras (1..9, Market names hold one digit).
    images_per_id: images per identity (>= 2 per camera it is seen in).
    seed: random seed.
    image_size: (height, width) of the images.
    num_distractors: pid-0000 gallery images (clutter, body fragments).
    num_junk: pid -1 gallery images.

  Returns:
    root.

  Raises:
    ValueError: bad parameters, or `root` holds something else.
  """
  root = os.fspath(root)
  if not 2 <= num_cameras <= 9:
    raise ValueError(f"num_cameras must be in 2..9, got {num_cameras}.")
  if images_per_id < 2 * min(3, num_cameras):
    raise ValueError(
        f"images_per_id={images_per_id} is too small: each id needs >= 2 "
        f"images in each of >= {min(3, num_cameras)} cameras.")
  if num_train_ids < 1 or num_test_ids < 1:
    raise ValueError("num_train_ids and num_test_ids must be >= 1.")
  if num_train_ids + num_test_ids > 9999:
    raise ValueError("At most 9999 identities fit 4-digit Market pids.")
  params = dict(
      version=GENERATOR_VERSION, num_train_ids=int(num_train_ids),
      num_test_ids=int(num_test_ids), num_cameras=int(num_cameras),
      images_per_id=int(images_per_id), seed=int(seed),
      image_size=[int(image_size[0]), int(image_size[1])],
      num_distractors=int(num_distractors), num_junk=int(num_junk))

  write_once(root, params, lambda tmp: _write(tmp, params),
             generator="reidjax.data.synthetic")
  # A set from before the keypoints existed gets them now (images untouched).
  ensure_keypoints(root, params)
  return root


def write_once(root: str, params: dict, write, *, generator: str,
               marker_name: str = MARKER_NAME) -> dict:
  """Writes a generated set to `root` once, atomically, behind a marker file.

  `write(folder) -> counts` fills a sibling temporary folder; the marker
  (generator, params, counts) goes in last and the folder is renamed into
  place, so `root` is never left half-written. A complete set with the same
  params is reused as is; anything else in `root` is refused.

  Args:
    root: destination folder; must not exist, be empty, or hold this set.
    params: JSON-serialisable parameters (compared with the marker's).
    write: callable taking the temporary folder, returning a counts dict.
    generator: module name recorded in the marker.
    marker_name: file name of the marker.

  Returns:
    The marker's contents: {"generator", "params", "counts"}.

  Raises:
    ValueError: `root` holds something else.
  """
  if is_complete(root, params, marker_name):
    return read_marker(root, marker_name)
  parent = os.path.dirname(os.path.abspath(root))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.partial-",
                         dir=parent)
  try:
    marker = {"generator": generator, "params": params, "counts": write(tmp)}
    # The marker goes last: its presence means the set is complete.
    with open(os.path.join(tmp, marker_name), "w") as f:
      json.dump(marker, f, indent=1, sort_keys=True)
    try:
      # rename() replaces an empty folder atomically and fails on a
      # non-empty one, so a concurrent writer can't be clobbered.
      os.rename(tmp, root)
    except OSError:
      if not is_complete(root, params, marker_name):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)
  return read_marker(root, marker_name)


def is_complete(root: str, params: dict,
                marker_name: str = MARKER_NAME) -> bool:
  """True if root holds this set; raises if it holds anything else."""
  if not os.path.exists(root):
    return False
  if not os.path.isdir(root):
    raise ValueError(f"Synthetic set root {root!r} exists and is not a folder.")
  marker = read_marker(root, marker_name)
  if marker is not None:
    if marker.get("params") == params:
      return True
    raise ValueError(
        f"{root!r} already holds a synthetic set written with different "
        f"parameters:\n  on disk:   {marker.get('params')}\n"
        f"  requested: {params}\nDelete it or choose another root.")
  if os.listdir(root):
    raise ValueError(
        f"Refusing to write a synthetic set into {root!r}: the folder is not "
        f"empty and has no {marker_name} marker (it holds something else, or "
        "an interrupted write). Delete it or choose another root.")
  return False


def _write(root: str, params: dict) -> dict:
  cameras = make_cameras(params["seed"], params["num_cameras"])
  size = tuple(params["image_size"])
  for d in SPLIT_DIRS:
    os.makedirs(os.path.join(root, d))
  counts = dict.fromkeys(SPLIT_DIRS, 0)
  for item in _plan(params):
    img = render(item.identity, cameras[item.camera], item.view, size)
    with open(os.path.join(root, item.split, item.name), "wb") as f:
      f.write(encode_jpeg(img, item.view.jpeg_quality))
    counts[item.split] += 1
  _write_keypoints(root, params)
  return counts


def main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m reidjax.data.synthetic ROOT [--seed N]`: writes the set."""
  import argparse  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("root")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  start = time.time()
  write_synthetic_market(args.root, seed=args.seed)
  print(f"Synthetic Market-1501 set at {args.root} "
        f"({time.time() - start:.1f} s).")


if __name__ == "__main__":
  main()
