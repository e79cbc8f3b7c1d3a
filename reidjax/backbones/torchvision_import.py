"""Offline import of torchvision ResNet-50 / DenseNet-121 weights into Flax.

Reads a torchvision ``state_dict`` saved with ``torch.save`` (read with
``torch.load(..., map_location="cpu", weights_only=True)``: tensors only,
never arbitrary unpickling) or an ``.npz`` written by
``python -m reidjax.tools.convert_weights`` (no torch needed), and maps it
onto the variables of ``reidjax.backbones.resnet.ResNet`` or
``reidjax.backbones.densenet.DenseNet``:

* conv weights OIHW -> HWIO kernels, linear weights (out, in) -> (in, out);
* BN ``weight``/``bias`` -> ``params`` ``scale``/``bias``,
  ``running_mean``/``running_var`` -> ``batch_stats`` ``mean``/``var``;
* ``num_batches_tracked`` and the classifier (``fc.*`` / ``classifier.*``)
  are dropped;
* old-style DenseNet keys (``denselayer1.norm.1.weight``, as in the official
  ImageNet file) are renamed to the current ``denselayer1.norm1.weight``.

The file is checked against the Flax model's own variable tree: every
missing key, unexpected key and shape mismatch is reported in one
``WeightImportError`` that names the file. The key mapping is the one in the
``resnet.py`` and ``densenet.py`` module docstrings.

The ``.npz`` format: one array per (normalised) torchvision key in torch
layout, plus ``__arch__`` (a 0-d string array). It holds exactly the
backbone tensors, so it goes through the same checks as a ``.pth``.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
import pickle
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from reidjax.backbones import densenet
from reidjax.backbones import resnet

ARCHS = ("resnet50", "densenet121")
ARCH_KEY = "__arch__"

# At most this many entries of each kind are listed in an error message.
_MAX_LISTED = 20

# The classifier each torchvision model carries; backbones have none.
_CLASSIFIER_PREFIX = {"resnet50": "fc.", "densenet121": "classifier."}
# torchvision's ImageNet files, named in messages.
_EXAMPLE_FILE = {"resnet50": "resnet50-0676ba61.pth",
                 "densenet121": "densenet121-a639ec97.pth"}

# torchvision < 0.3 named DenseNet layers' modules "norm.1", "conv.2", ...
# (its nn.Sequential.add_module("norm.1", ...)); the official densenet121
# ImageNet file still uses those keys. "(norm|relu|conv).(1|2)." -> "\1\2.".
_OLD_DENSE_KEY = re.compile(
    r"^(.*\.denselayer\d+\.(?:norm|relu|conv))\.([12])\."
    r"(weight|bias|running_mean|running_var)$")

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


class WeightImportError(ValueError):
  """A weights file does not fit the model (keys or shapes), or is refused."""


def build_backbone(arch: str, **kwargs):
  """The Flax backbone whose variables a torchvision ``arch`` file fills."""
  if arch == "resnet50":
    return resnet.resnet50(**kwargs)
  if arch == "densenet121":
    return densenet.densenet121(**kwargs)
  raise ValueError(f"Unknown arch {arch!r}; known: {list(ARCHS)}.")


def abstract_variables(arch: str) -> dict[str, Any]:
  """Shapes/dtypes of ``{"params", "batch_stats"}`` of ``arch`` (no compute)."""
  model = build_backbone(arch)
  # Variable shapes do not depend on the image size; 64x64 is valid for both.
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)


def torch_key(arch: str, path: tuple[str, ...]) -> str:
  """Flax variable path ``(collection, *modules, leaf)`` -> torchvision key.

  Args:
    arch: ``"resnet50"`` or ``"densenet121"``.
    path: e.g. ``("params", "layer1_0", "downsample_conv", "kernel")``,
      relative to the backbone module.

  Returns:
    The torchvision ``state_dict`` key, e.g. ``layer1.0.downsample.0.weight``.
  """
  collection, *modules, leaf = path
  torch_leaf = _LEAF_TO_TORCH.get((collection, leaf))
  if torch_leaf is None:
    raise ValueError(f"No torchvision counterpart for variable {path}.")
  if arch == "resnet50":
    names = []
    for m in modules:
      if m.startswith("layer"):  # "layer1_0" -> "layer1.0" (Sequential index)
        names.append(m.replace("_", ".", 1))
      else:
        names.append({"downsample_conv": "downsample.0",
                      "downsample_bn": "downsample.1"}.get(m, m))
    return ".".join(names + [torch_leaf])
  if arch == "densenet121":
    # Module names are torchvision's, under its "features" Sequential.
    return ".".join(["features", *modules, torch_leaf])
  raise ValueError(f"Unknown arch {arch!r}; known: {list(ARCHS)}.")


def _torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
  """A Flax leaf shape in torch layout: HWIO -> OIHW, (in, out) -> (out, in)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if array.ndim == 2:
    return array.T  # nn.Linear (out, in) -> nn.Dense (in, out)
  return array


def infer_arch(keys) -> str:
  """Guesses the architecture of a torchvision ``state_dict`` from its keys."""
  keys = list(keys)
  if any(".denseblock" in k or k.startswith("denseblock") for k in keys):
    return "densenet121"
  if any(k.startswith("layer1.") for k in keys):
    return "resnet50"
  raise WeightImportError(
      "Cannot tell the architecture from the keys (neither ResNet 'layer1.*' "
      f"nor DenseNet '*.denseblock*'); first keys: {keys[:5]}. Pass the arch "
      f"explicitly, one of {list(ARCHS)}.")


def normalize_keys(state_dict: Mapping[str, np.ndarray],
                   arch: str) -> dict[str, np.ndarray]:
  """Drops what a backbone has no use for and renames old DenseNet keys.

  Args:
    state_dict: torchvision key -> array (torch layout).
    arch: the architecture, which says which classifier to drop.

  Returns:
    A new dict without ``num_batches_tracked`` and classifier entries, with
    ``denselayerN.norm.1``-style keys renamed to ``denselayerN.norm1``.
  """
  if arch not in ARCHS:
    raise ValueError(f"Unknown arch {arch!r}; known: {list(ARCHS)}.")
  out = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue  # Flax BN uses a fixed momentum; there is no counter.
    if key.startswith(_CLASSIFIER_PREFIX[arch]):
      continue
    out[_OLD_DENSE_KEY.sub(r"\1\2.\3", key)] = value
  return out


def _format_error(source: str, arch: str, missing, unexpected,
                  mismatched) -> str:
  def listing(title, rows):
    if not rows:
      return []
    lines = [f"  {title} ({len(rows)}):"]
    lines += [f"    {row}" for row in rows[:_MAX_LISTED]]
    if len(rows) > _MAX_LISTED:
      lines.append(f"    ... and {len(rows) - _MAX_LISTED} more")
    return lines

  lines = [
      f"Cannot load weights from {source!r} into the {arch} backbone: "
      f"{len(missing)} missing, {len(unexpected)} unexpected and "
      f"{len(mismatched)} wrongly shaped tensor(s). Shapes are in torch "
      "layout (OIHW)."]
  lines += listing("missing from the file (the model needs them)", missing)
  lines += listing("unexpected in the file (the model has no such variable)",
                   unexpected)
  lines += listing("shape mismatches (file vs model)", mismatched)
  lines.append(
      f"Is this a torchvision {arch} state_dict (model.state_dict()), and does "
      "model.backbone describe the full-size network?")
  return "\n".join(lines)


def check_state_dict(state_dict: Mapping[str, np.ndarray], arch: str,
                     target: Mapping[str, Any], source: str = "<state_dict>"):
  """Raises one ``WeightImportError`` listing every mismatch, else returns.

  Args:
    state_dict: normalised torchvision key -> array (see ``normalize_keys``).
    arch: ``"resnet50"`` or ``"densenet121"``.
    target: ``{"params": ..., "batch_stats": ...}`` of the backbone (arrays
      or ``jax.ShapeDtypeStruct``s).
    source: the file name, for the message.

  Returns:
    Dict torchvision key -> Flax path for every target leaf.
  """
  key_to_path = {}
  for path, leaf in flax.traverse_util.flatten_dict(dict(target)).items():
    key_to_path[torch_key(arch, path)] = (path, tuple(leaf.shape))
  missing = [f"{k}  {_torch_layout(shape)}"
             for k, (_, shape) in key_to_path.items() if k not in state_dict]
  unexpected = [f"{k}  {tuple(np.shape(v))}"
                for k, v in state_dict.items() if k not in key_to_path]
  mismatched = []
  for k, (_, shape) in key_to_path.items():
    if k in state_dict:
      got, want = tuple(np.shape(state_dict[k])), _torch_layout(shape)
      if got != want:
        mismatched.append(f"{k}  file {got}, model {want}")
  if missing or unexpected or mismatched:
    raise WeightImportError(
        _format_error(source, arch, missing, unexpected, mismatched))
  return {k: path for k, (path, _) in key_to_path.items()}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str,
                       target: Mapping[str, Any] | None = None,
                       source: str = "<state_dict>") -> dict[str, Any]:
  """A torchvision ``state_dict`` (as NumPy arrays) -> Flax variables.

  Args:
    state_dict: torchvision key -> array in torch layout; classifier,
      ``num_batches_tracked`` and old DenseNet key spellings are handled.
    arch: ``"resnet50"`` or ``"densenet121"``.
    target: the backbone's ``{"params", "batch_stats"}`` tree (arrays or
      shape structs); defaults to the full-size ``arch``. Leaf dtypes are
      kept (float32).
    source: the file name, for error messages.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` nested dicts of NumPy arrays in
    Flax layout, with exactly the structure of ``target``.

  Raises:
    WeightImportError: listing all missing, unexpected and misshapen keys.
  """
  state_dict = normalize_keys(state_dict, arch)
  if target is None:
    target = abstract_variables(arch)
  target = {c: target[c] for c in ("params", "batch_stats") if c in target}
  key_to_path = check_state_dict(state_dict, arch, target, source)
  flat_target = flax.traverse_util.flatten_dict(target)
  flat = {}
  for key, path in key_to_path.items():
    flat[path] = np.asarray(_to_flax_layout(np.asarray(state_dict[key])),
                            dtype=flat_target[path].dtype)
  return flax.traverse_util.unflatten_dict(flat)


def _tensor_to_numpy(value) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  value = value.detach().cpu()
  if value.is_floating_point():
    # NumPy has no bfloat16; float32 is what the Flax params hold anyway.
    value = value.to(torch.float32)
  return value.numpy()


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray],
                                                      str | None]:
  """Reads a ``.pth``/``.pt`` state_dict or a converter ``.npz``.

  Args:
    path: the file. ``.npz`` is read with NumPy (``allow_pickle=False``);
      anything else with ``torch.load(weights_only=True)``.

  Returns:
    (key -> NumPy array in torch layout, arch recorded in an ``.npz`` or
    None).

  Raises:
    FileNotFoundError: no such file.
    WeightImportError: the file holds something other than a flat mapping
      of tensors (weights_only refuses pickled Python objects).
    ImportError: a torch file but torch is not installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Pretrained weights file {path!r} does not exist. Set "
        "model.backbone.pretrained to a torchvision .pth or a converted .npz, "
        "or to '' for random initialisation.")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    except ValueError as e:  # object arrays need pickle, which is refused
      raise WeightImportError(
          f"Refused {path!r}: it holds pickled objects, not plain arrays "
          f"({e}).") from e
    arch = arrays.pop(ARCH_KEY, None)
    return arrays, (None if arch is None else str(arch))

  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading the PyTorch file {path!r} needs torch (pip install "
        "'reidjax[torch]'), or convert it once, where torch is installed, "
        "with `python -m reidjax.tools.convert_weights IN.pth OUT.npz` and "
        "point model.backbone.pretrained at the .npz.") from e
  try:
    # weights_only: tensors and plain containers only. Full unpickling would
    # run whatever code the file names.
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # Only torch's one-line reason: the rest of its message suggests
    # weights_only=False, which is exactly what must not be done here.
    reason = next((line.strip() for line in str(e).splitlines()
                   if "WeightsUnpickler error" in line),
                  str(e).splitlines()[0] if str(e) else "")
    raise WeightImportError(
        f"Refused {path!r}: torch.load(weights_only=True) found more than "
        "tensors in it (a pickled Python object, which could run code when "
        "unpickled). Use a plain state_dict: where you trust the file, save "
        "`torch.save(model.state_dict(), 'weights.pth')` and point "
        f"model.backbone.pretrained at that. ({reason})") from e
  if not isinstance(obj, Mapping):
    raise WeightImportError(
        f"{path!r} holds a {type(obj).__name__}, not a state_dict (a mapping "
        "of names to tensors).")
  not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise WeightImportError(
        f"{path!r} is not a flat state_dict: entries "
        f"{not_tensors[:_MAX_LISTED]} are not tensors (a training checkpoint? "
        "save model.state_dict()).")
  return {k: _tensor_to_numpy(v) for k, v in obj.items()}, None


def resolve_arch(arch: str | None, file_arch: str | None,
                 state_dict: Mapping[str, Any], source: str) -> str:
  """The arch asked for, else the one an ``.npz`` records, else inferred."""
  if arch is not None and arch not in ARCHS:
    raise ValueError(f"Unknown arch {arch!r}; known: {list(ARCHS)}.")
  if arch is not None and file_arch is not None and arch != file_arch:
    raise WeightImportError(
        f"{source!r} was converted for {file_arch}, not {arch}. Point "
        f"model.backbone.pretrained at {arch} weights, or set "
        f"model.backbone.name={file_arch}.")
  if arch is not None and file_arch is None:
    # A file of another architecture would otherwise be reported as every
    # tensor missing and unexpected; name the mix-up instead.
    try:
      inferred = infer_arch(state_dict)
    except WeightImportError:
      inferred = None  # Unknown keys: check_state_dict lists them.
    if inferred is not None and inferred != arch:
      raise WeightImportError(
          f"{source!r} holds {inferred} weights, but the backbone is {arch}. "
          f"Point model.backbone.pretrained at a torchvision {arch} file "
          f"(e.g. {_EXAMPLE_FILE[arch]}), or set "
          f"model.backbone.name={inferred}.")
  return arch or file_arch or infer_arch(state_dict)


def load_torchvision(path: str | os.PathLike,
                     arch: str | None = None) -> dict[str, Any]:
  """Loads a torchvision ``.pth`` (or converted ``.npz``) for a backbone.

  Args:
    path: the weights file.
    arch: ``"resnet50"`` or ``"densenet121"``; inferred from the keys (or
      the ``.npz``'s record) when None.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (NumPy float32 leaves) for
    ``resnet.resnet50()`` / ``densenet.densenet121()``, ready for
    ``model.apply``.

  Raises:
    WeightImportError: the file does not fit the model; the message lists
      every missing, unexpected and misshapen tensor.
  """
  state_dict, file_arch = read_state_dict(path)
  arch = resolve_arch(arch, file_arch, state_dict, os.fspath(path))
  return convert_state_dict(state_dict, arch, source=os.fspath(path))


def apply_pretrained(variables: Mapping[str, Any], backbone_config,
                     backbone_scope: str = "backbone") -> dict[str, Any]:
  """Overwrites the backbone part of freshly initialised variables.

  Reads ``backbone_config.pretrained`` (a ``.pth`` or ``.npz`` path; empty
  or absent = keep the random initialisation) for the architecture
  ``backbone_config.name`` and replaces ``variables[c][backbone_scope]`` for
  ``c`` in ``params`` and ``batch_stats``. Everything else (heads, BNNeck,
  other collections) is left as it is. Checked against the model's actual
  backbone tree, so a shrunken backbone (``stage_sizes``/``width``) is
  reported, not silently half-loaded.

  Call it outside ``jit`` (it reads a file). New leaves keep each old
  leaf's dtype and, for ``jax.Array`` leaves, its sharding.

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` of the whole model.
    backbone_config: the ``model.backbone`` config section.
    backbone_scope: the backbone submodule's name in the model
      (``"backbone"`` in ``StrongBaseline``).

  Returns:
    A new variables dict (the input is not modified).
  """
  path = backbone_config.get("pretrained", "") or ""
  if not path:
    return variables
  arch = backbone_config.name
  if arch not in ARCHS:
    raise ValueError(
        f"model.backbone.pretrained is set but model.backbone.name {arch!r} "
        f"has no torchvision weights; known: {list(ARCHS)}.")
  params = variables.get("params", {})
  if backbone_scope not in params:
    raise ValueError(
        f"No params[{backbone_scope!r}] in the model's variables (top-level "
        f"modules: {sorted(params)}); pass the backbone's submodule name.")
  target = {c: variables[c][backbone_scope]
            for c in ("params", "batch_stats")
            if backbone_scope in variables.get(c, {})}

  state_dict, file_arch = read_state_dict(path)
  arch = resolve_arch(arch, file_arch, state_dict, path)
  loaded = convert_state_dict(state_dict, arch, target, source=path)

  def place(new, old):
    new = np.asarray(new, dtype=old.dtype)
    if isinstance(old, jax.Array):
      return jax.device_put(new, old.sharding)
    return jnp.asarray(new)

  out = dict(variables)
  for collection, subtree in loaded.items():
    out[collection] = dict(variables[collection])
    out[collection][backbone_scope] = jax.tree.map(
        place, subtree, flax.core.unfreeze(target[collection]))
  return out
