"""Restore a trained model from a workdir and embed images with it.

  embedder = ReidEmbedder.from_workdir("workdirs/quickstart")  # or reidjax.restore(...)
  features = embedder.embed(images)        # (N, H, W, 3) uint8 RGB -> (N, D)
  features = embedder.embed(["a.jpg", "b.png"])  # image files of any size
  dist = embedder.distance(query_features, gallery_features)   # (Q, G)
  order = embedder.rank(query_features, gallery_features)      # (Q, G) indices

Video models take clips, (N, T, H, W, 3). A model that declares more input
fields than ``images`` gets them as keyword arguments of ``embed``, e.g.
``embed(images, camids=camids)``. Pose models (Attention-Driven ReID, input
field ``parts``) take ``embed(images, keypoints=kp)``: (N, 18, 3) COCO-18
[x, y, confidence] in each image's own pixels (a file's: before resizing;
``reidjax.data.keypoints``); ``embed`` then does what the evaluation
pipeline does (``pose_inputs``): keypoints scaled with the resize, the part
boxes of Eq. 1-2 (``reidjax.data.part_boxes.part_boxes_np``), R0 as
``images`` and R1..R4 as ``parts`` (``crop_parts_tf``, black outside the
image). Without keypoints (and ``data.parts.source == "pose"``) it warns
and uses the four stripes, the pipeline's fallback for an image without
keypoints. Pair models (DuATM) return a dict
of per-item arrays from ``embed``; ``distance`` then runs the model's
``pair_distance`` in tiles. The checkpoint carries the run's config, so
nothing but the workdir is needed; it restores onto whatever devices this
process has.

Image files are read with PIL as RGB and resized to the run's (data.height,
data.width) one by one (PIL bilinear, antialiased when shrinking), then
normalised like the pipeline's images.

``RecordingEvaluator`` is the trainer's evaluator that also keeps the last
features it computed, so that train.py and ``python -m reidjax.evaluate``
can draw ranked lists without embedding the test set twice.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reidjax import imagenet
from reidjax.evaluate import distance, features, ranking, runner
from reidjax.models import build_model, interface
from reidjax import checkpoint, sharding
from reidjax.models.variables import abstract_variables


def normalize_images(images: np.ndarray, height: int, width: int) -> jax.Array:
  """uint8 RGB (N, h, w, 3) -> ImageNet-normalised float32 (N, height, width, 3).

  Clips (N, T, h, w, 3) are normalised frame by frame. Float inputs are taken
  as already normalised and only resized. Resizing is bilinear (antialiased
  when shrinking), like the training pipeline's.
  """
  images = np.asarray(images)
  if images.ndim == 5 and images.shape[-1] == 3:
    frames = normalize_images(images.reshape((-1,) + images.shape[2:]), height, width)
    return frames.reshape(images.shape[:2] + frames.shape[1:])
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (N, H, W, 3) RGB or clips (N, T, H, W, 3), got "
                     f"shape {images.shape}.")
  x = jnp.asarray(images, jnp.float32)
  if images.dtype == np.uint8:
    x = (x / 255.0 - jnp.asarray(imagenet.IMAGENET_MEAN)) / jnp.asarray(imagenet.IMAGENET_STD)
  if x.shape[1:3] != (height, width):
    x = jax.image.resize(x, (x.shape[0], height, width, 3), "bilinear")
  return x


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The pipelines' pose side inputs (``reidjax.models.interface`` FIELDS).
POSE_FIELDS = ("keypoints", "parts")


def _is_path(item: Any) -> bool:
  return isinstance(item, (str, os.PathLike))


def load_images(paths: Sequence[str | os.PathLike], height: int, width: int) -> np.ndarray:
  """Image files (any size, any PIL format) -> uint8 RGB (N, height, width, 3)."""
  # pylint: disable=g-import-not-at-top
  from PIL import Image, UnidentifiedImageError
  out = np.empty((len(paths), height, width, 3), np.uint8)
  for i, path in enumerate(paths):
    try:
      with Image.open(path) as image:
        out[i] = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
      raise ValueError(f"Cannot read image {os.fspath(path)!r} ({e}); pass JPEG or PNG "
                       "files.") from e
  return out


def image_sizes(paths: Sequence[str | os.PathLike]) -> np.ndarray:
  """(N, 2) (height, width) of image files (read from their headers)."""
  # pylint: disable-next=g-import-not-at-top
  from PIL import Image, UnidentifiedImageError
  sizes = np.empty((len(paths), 2), np.int64)
  for i, path in enumerate(paths):
    try:
      with Image.open(path) as image:
        sizes[i] = image.height, image.width
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
      raise ValueError(f"Cannot read image {os.fspath(path)!r} ({e}); pass JPEG or PNG "
                       "files.") from e
  return sizes


def pose_inputs(images: Any, keypoints: np.ndarray, data_config: Any,
                fields: Sequence[str]) -> dict[str, np.ndarray]:
  """A pose model's inputs from whole images, as the evaluation pipeline cuts them.

  Attention-Driven ReID, Eq. 1-2 (``reidjax.data.part_boxes``): the boxes
  R0..R4 of each image from its keypoints (``part_boxes_np``; too few
  confident joints or ``data.parts.source == "stripes"``: the stripes), then
  ``crop_parts_tf`` with black (``transforms.NORMALIZED_BLACK``) outside
  the image, like ``reidjax.data.pipeline``'s pose finisher.

  Args:
    images: (N, H, W, 3) ImageNet-normalised images at (data.height, data.width).
    keypoints: (N, 18, 3) [x, y, confidence] in those images' pixels.
    data_config: the ``data`` section (its ``parts``).
    fields: the model's input fields ("parts" and / or "keypoints").

  Returns:
    {"images": (N, H, W, 3) R0 crops, "parts": (N, 4, ph, pw, 3) R1..R4} and,
    when ``fields`` has it, "keypoints" in R0's pixels (missing joints (0, 0, 0)).
  """
  # pylint: disable-next=g-import-not-at-top
  from reidjax.data import part_boxes as part_boxes_lib
  images = np.asarray(images, np.float32)
  keypoints = np.asarray(keypoints, np.float32)
  height, width = images.shape[1:3]
  config = part_boxes_lib.PartConfig.from_config(data_config.parts)
  boxes = np.stack([part_boxes_lib.part_boxes_np(k, height, width, config)
                    for k in keypoints]).astype(np.float32)
  whole, parts = cut_parts(images, boxes, data_config)
  out = {"images": whole, "parts": parts}
  if "keypoints" in fields:
    moved = part_boxes_lib.to_box_frame(keypoints, boxes[:, 0].T, height, width)
    out["keypoints"] = np.where(keypoints[..., 2:] > 0, moved, 0.0).astype(np.float32)
  return out


def cut_parts(images: Any, boxes: np.ndarray, data_config: Any
              ) -> tuple[np.ndarray, np.ndarray]:
  """(N, H, W, 3) normalised images and their (N, 5, 4) boxes R0..R4 (their pixels)
  -> R0 crops (N, H, W, 3) and R1..R4 crops (N, 4, parts.height, parts.width, 3),
  cut like the pipeline (``crop_parts_tf``, black outside the image)."""
  # pylint: disable=g-import-not-at-top
  from reidjax.data import part_boxes as part_boxes_lib
  from reidjax.data import transforms
  from reidjax.data.tensorflow_cpu import tf
  # pylint: enable=g-import-not-at-top
  whole, parts = part_boxes_lib.crop_parts_tf(
      tf.constant(np.asarray(images, np.float32)), tf.constant(np.asarray(boxes, np.float32)),
      part_boxes_lib.PartConfig.from_config(data_config.parts),
      fill=transforms.NORMALIZED_BLACK)
  return whole.numpy(), parts.numpy()


def list_images(folder: str) -> list[str]:
  """The image files directly under ``folder`` (IMAGE_EXTENSIONS), sorted by name."""
  if not os.path.isdir(folder):
    raise NotADirectoryError(f"{folder!r} is not a folder of images.")
  paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"No image ({', '.join(IMAGE_EXTENSIONS)}) directly under {folder!r}.")
  return paths


def query_distances(kind: str, query_features: Any, gallery_features: Any, *,
                    metric: str, normalize: bool, pair_fn=None, params: Any = None,
                    mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """(Q, G) distances as the evaluator computes them for a model of ``kind``.

  Embedding models: ``distance.pairwise_distance`` with ``metric`` /
  ``normalize``; pair models: ``pair_fn(params, a, b)`` tile by tile.
  """
  if kind == interface.PAIR:
    return ranking.pairwise_distance_tiled(pair_fn, query_features, gallery_features,
                                           mesh=mesh, params=params)
  return np.asarray(distance.pairwise_distance(query_features, gallery_features,
                                               metric=metric, normalize=normalize))


def take(tree: Any, indices: Sequence[int]) -> Any:
  """Rows ``indices`` of every leaf of a features pytree."""
  indices = np.asarray(indices)
  return jax.tree.map(lambda x: np.asarray(x)[indices], tree)


class RecordingEvaluator(runner.Evaluator):
  """The trainer's evaluator, keeping the features of its last ``run``.

  ``last_features[split]`` ("query" / "gallery") holds the (N, ...) features
  (tracklet features for video) of the last evaluation, and
  ``last_variables`` the variables they came from.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.last_features: dict[str, Any] = {}
    self.last_variables: Any = None

  def embed(self, variables: Any, split: Any) -> Any:
    out = super().embed(variables, split)
    self.last_features["query" if split is self.query else "gallery"] = out
    self.last_variables = variables
    return out

  def distances(self, query_indices: Sequence[int] | None = None) -> np.ndarray:
    """(len(query_indices), G) distances of the last run's features (all queries
    by default), by the run's metric or the pair model's distance."""
    query = self.last_features["query"]
    if query_indices is not None:
      query = take(query, query_indices)
    return query_distances(self.kind, query, self.last_features["gallery"],
                           metric=self.metric, normalize=self.normalize,
                           pair_fn=self._pair_fn, params=self.last_variables,
                           mesh=self.mesh)

  def ranked_list(self, query_indices: Sequence[int], *, top_k: int = 10,
                  cell: tuple[int, int] = (128, 64), path: str | None = None):
    """``reidjax.viz.report.ranked_list_image`` of ``query_indices`` (PIL image)."""
    # pylint: disable=g-import-not-at-top
    from reidjax.viz import report
    query_indices = list(query_indices)
    return report.ranked_list_image(
        split_items(self.query), split_items(self.gallery), self.distances(query_indices),
        self.query.pids, self.gallery.pids, self.query.camids, self.gallery.camids,
        query_indices=query_indices, top_k=top_k, cell=cell,
        camera_filter=self._protocol["camera_filter"], path=path)


def paper_figure(model_name: str, model: Any, variables: Any, data_config: Any,
                 query: tuple[Any, str, int], gallery: tuple[Any, str, int],
                 path: str | None = None):
  """The paper's figure (PIL image) of a query and a gallery item of the splits,
  or None where the model has none (``reidjax.viz.paper_figure``).

  Args:
    model_name: ``model.name``.
    model, variables: the model and its variables.
    data_config: the ``data`` section of the splits.
    query, gallery: (split, split name "query" / "gallery", item index).
    path: where the PNG goes (None: not written).
  """
  # pylint: disable-next=g-import-not-at-top
  from reidjax import viz
  if model_name not in viz.PAPER_FIGURES:
    return None
  items = [figure_item(model, data_config, *item) for item in (query, gallery)]
  return viz.paper_figure(model_name, model, variables, data_config, *items, path=path)


def figure_item(model: Any, data_config: Any, split: Any, split_name: str, index: int):
  """Item ``index`` of ``split`` as a ``reidjax.viz.panels.Item``: its file (video:
  its frame files) and, for a model with pose inputs whose parts come from
  pose (``data.parts.source == "pose"``), its keypoints from the split's
  keypoints file (None where the file lacks it: the stripes, as in the pipeline)."""
  # pylint: disable-next=g-import-not-at-top
  from reidjax.viz import panels
  item = split_items(split)[index]
  keypoints = None
  parts = data_config.get("parts", None)
  if (set(interface.input_fields(model)) & set(POSE_FIELDS) and parts is not None
      and parts.source == "pose"):
    # pylint: disable-next=g-import-not-at-top
    from reidjax.data import keypoints as keypoints_lib
    table = keypoints_lib.read_keypoints_file(
        keypoints_lib.split_keypoints_path(data_config, split_name))
    keypoints = table.get(os.path.basename(item))
  return panels.Item(item, keypoints)


def split_items(split: Any) -> Sequence[Any]:
  """Per item of an image or video split: its path (video: its frame paths)."""
  return split.paths if hasattr(split, "paths") else split.tracklets


class ReidEmbedder:
  """A trained model with its variables, ready to embed images."""

  def __init__(self, model: Any, variables: Any, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh):
    self.model, self.variables, self.config, self.mesh = model, variables, config, mesh
    self.kind = interface.model_kind(model)
    self._embed = features.make_embed_fn(model, mesh)
    self._pair_fn = lambda v, a, b: model.apply(v, a, b, method="pair_distance")

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, *,
                   model_name: str | None = None) -> "ReidEmbedder":
    """Restores the checkpoint at ``step`` (default: latest) of ``workdir``.

    ``model_name``: the ``model.name`` the caller needs (e.g. a paper's figure);
    a workdir of another model is a ValueError naming both.
    """
    ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1)
    if ckpt.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint under {ckpt.directory!r}; train first with "
          f"`python train.py --config ... --workdir {workdir}`.")
    config = ckpt.restore_config(step)
    if model_name is not None and config.model.name != model_name:
      ckpt.close()
      raise ValueError(f"{workdir!r} holds a {config.model.name!r} model; this needs "
                       f"model.name {model_name!r}.")
    mesh = sharding.make_data_mesh()
    model = build_model(config.model, config.model.num_classes)
    variables = ckpt.restore_variables(abstract_variables(model, config.data, mesh), step)
    ckpt.close()
    return cls(model, variables, config, mesh)

  def embed(self, images: np.ndarray | Sequence[str], batch_size: int = 64,
            **fields: np.ndarray) -> Any:
    """Images (N, H, W, 3) or clips (N, T, H, W, 3), uint8 RGB or normalised
    float, or a list of N image files of any size -> (N, D) features (pair
    models: a dict of (N, ...) arrays).

    ``fields``: the model's other input fields, (N, ...) each.
    """
    height, width = self.config.data.height, self.config.data.width
    wanted = interface.input_fields(self.model)
    # Pose models get their parts cut here from keypoints (module doc), unless
    # the caller passes the parts themselves.
    cut_parts = "parts" in wanted and "parts" not in fields
    sizes = None
    if not isinstance(images, np.ndarray) and len(images) and all(map(_is_path, images)):
      if self.config.data.get("video", False):
        raise ValueError("This is a video model: pass clips (N, T, H, W, 3), not image "
                         "files.")
      sizes = image_sizes(images) if cut_parts else None
      images = load_images(images, height, width)
    if cut_parts:
      if sizes is None:
        sizes = np.tile(np.asarray(images).shape[1:3], (len(images), 1))
      fields = {**fields, "keypoints": self._scaled_keypoints(fields.get("keypoints"), sizes)}
      inputs = {f: v for f, v in {"images": images, **fields}.items()
                if f in wanted or f == "keypoints"}
    else:
      inputs = interface.select_inputs(self.model, {"images": images, **fields})
    for name, value in inputs.items():
      if len(value) != len(images):
        raise ValueError(f"embed: {len(images)} images but {len(value)} {name}.")
    devices = self.mesh.size
    batch_size = -(-batch_size // devices) * devices
    out = []
    for start in range(0, len(images), batch_size):
      chunk = {k: np.asarray(v[start:start + batch_size]) for k, v in inputs.items()}
      chunk["images"] = normalize_images(chunk["images"], height, width)
      if cut_parts:
        whole, keypoints = chunk.pop("images"), chunk.pop("keypoints")
        chunk.update(pose_inputs(whole, keypoints, self.config.data, wanted))
      n = len(chunk["images"])
      pad = -n % devices  # The batch axis is split over devices.
      chunk = {k: np.asarray(jnp.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1)))
               for k, v in chunk.items()}
      out.append(jax.tree.map(lambda f, n=n: np.asarray(f)[:n],
                              self._embed(self.variables, chunk)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

  def _scaled_keypoints(self, keypoints: Any, sizes: np.ndarray) -> np.ndarray:
    """(N, 18, 3) keypoints in each image's pixels -> in (data.height, data.width)
    pixels; None -> no joints (the stripes), with a warning when the parts
    should come from pose."""
    data = self.config.data
    if keypoints is None:
      if data.parts.source == "pose":
        warnings.warn(
            f"This {self.config.model.name} model cuts its body parts from pose keypoints "
            "(data.parts.source='pose') but none were given: the part boxes are the four "
            "fixed stripes (the fallback for an image without keypoints), which the model "
            "was not trained on for these images. Pass keypoints= (N, 18, 3) in each "
            "image's pixels (python -m reidjax.search: --keypoints file.json).",
            stacklevel=3)
      return np.zeros((len(sizes), 18, 3), np.float32)
    keypoints = np.array(keypoints, np.float32)
    if keypoints.shape != (len(sizes), 18, 3):
      raise ValueError(f"keypoints must be (N, 18, 3) = ({len(sizes)}, 18, 3) COCO-18 "
                       f"[x, y, confidence] per image, got shape {keypoints.shape}.")
    keypoints[..., 0] *= data.width / sizes[:, None, 1]
    keypoints[..., 1] *= data.height / sizes[:, None, 0]
    return keypoints

  def distance(self, query_features: Any, gallery_features: Any) -> np.ndarray:
    """(Q, G) distances of two ``embed`` outputs, as the run evaluated them.

    Embedding models: the config's ``eval.metric`` (and ``eval.normalize``);
    pair models: the model's ``pair_distance``, tile by tile.
    """
    return query_distances(self.kind, query_features, gallery_features,
                           metric=self.config.eval.metric,
                           normalize=self.config.eval.get("normalize", False),
                           pair_fn=self._pair_fn, params=self.variables, mesh=self.mesh)

  def rank(self, query_features: Any, gallery_features: Any) -> np.ndarray:
    """(Q, G) gallery indices, nearest first (stable: ties by gallery index)."""
    return np.argsort(self.distance(query_features, gallery_features), axis=1,
                      kind="stable")


def restore(workdir: str, step: int | None = None) -> ReidEmbedder:
  """The embedder of ``workdir``'s checkpoint at ``step`` (default: the latest)."""
  return ReidEmbedder.from_workdir(workdir, step)
