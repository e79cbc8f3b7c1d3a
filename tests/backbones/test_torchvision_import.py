"""Tests for reidjax.backbones.torchvision_import and tools.convert_weights.

The reference networks are PyTorch modules with torchvision's names
(``reidjax.backbones.torch_reference``), given random weights and random
BatchNorm statistics, saved with ``torch.save(model.state_dict())`` and
imported. Full-size forwards (one per model, 256x128) compare the Flax
outputs with torch's; everything else works on small networks or on
``jax.eval_shape`` trees.
"""

import functools
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from reidjax.backbones import densenet
from reidjax.backbones import resnet
from reidjax.backbones import torch_reference
from reidjax.backbones import torchvision_import
from reidjax.backbones.torchvision_import import WeightImportError
from reidjax.tools import convert_weights

torch.set_num_threads(min(2, torch.get_num_threads()))

_ARCHS = ("resnet50", "densenet121")


def _rel_err(got, want):
  """max |got - want| / max |want|: relative to the output's scale."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


def _torch_model(arch, seed=0):
  torch.manual_seed(seed)
  model = (torch_reference.resnet50() if arch == "resnet50"
           else torch_reference.densenet121())
  return torch_reference.randomize_batchnorm_(model, seed=seed).eval()


@pytest.fixture(scope="module")
def torch_models():
  return {arch: _torch_model(arch, seed=i) for i, arch in enumerate(_ARCHS)}


@pytest.fixture(scope="module")
def pth_files(torch_models, tmp_path_factory):
  folder = tmp_path_factory.mktemp("weights")
  paths = {}
  for arch, model in torch_models.items():
    paths[arch] = str(folder / f"{arch}.pth")
    torch.save(model.state_dict(), paths[arch])
  return paths


def _numpy_state_dict(model):
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _flax_backbone(arch):
  # last_stride=2: torchvision's own ResNet-50.
  return (resnet.resnet50(last_stride=2) if arch == "resnet50"
          else densenet.densenet121())


def _flatten(tree):
  return flax.traverse_util.flatten_dict(tree)


def _assert_trees_equal(a, b):
  a, b = _flatten(a), _flatten(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


# ---------------------------------------------------------------------------
# Names and counts.


@pytest.mark.parametrize("arch", _ARCHS)
def test_flax_names_are_torchvision_keys(arch, torch_models):
  abstract = torchvision_import.abstract_variables(arch)
  mapped = {torchvision_import.torch_key(arch, path): leaf.shape
            for path, leaf in _flatten(abstract).items()}
  assert len(mapped) == len(_flatten(abstract))  # one key per leaf
  torch_shapes = {
      k: tuple(v.shape) for k, v in torch_models[arch].state_dict().items()
      if not k.endswith("num_batches_tracked")
      and not k.startswith(("fc.", "classifier."))}
  assert set(mapped) == set(torch_shapes)
  for key, shape in mapped.items():
    if len(shape) == 4:  # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    assert tuple(shape) == torch_shapes[key], key


def test_densenet121_counts_match_torch(torch_models):
  abstract = torchvision_import.abstract_variables("densenet121")
  model = torch_models["densenet121"]
  params = sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("classifier."))
  running = sum(b.numel() for n, b in model.named_buffers()
                if n.endswith(("running_mean", "running_var")))
  count = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
  assert count(abstract["params"]) == params == 6_953_856
  assert count(abstract["batch_stats"]) == running == 83_648


# ---------------------------------------------------------------------------
# Full-size equivalence with torch (one forward per model).


@pytest.mark.parametrize("arch, key", [("resnet50", "stage4"),
                                       ("densenet121", "block4")])
def test_imported_forward_matches_torch(arch, key, torch_models, pth_files):
  variables = torchvision_import.load_torchvision(pth_files[arch], arch)
  x = np.random.RandomState(0).normal(size=(2, 3, 256, 128)).astype(
      np.float32)
  with torch.no_grad():
    want_map = torch_models[arch].forward_features(torch.from_numpy(x))
    want_pooled = want_map.mean(dim=(2, 3)).numpy()
    want_map = want_map.numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC
  model = _flax_backbone(arch)
  out = jax.jit(functools.partial(model.apply, train=False))(
      variables, x.transpose(0, 2, 3, 1))
  got_map = np.asarray(out[key])
  got_pooled = np.asarray(out["pooled"] if arch == "densenet121"
                          else got_map.mean(axis=(1, 2)))
  assert got_map.shape == want_map.shape == (
      (2, 8, 4, 2048) if arch == "resnet50" else (2, 8, 4, 1024))
  # A generic output (not all zeros after a ReLU, not saturated).
  assert 0.2 < np.mean(want_map > 0) < 0.9
  assert np.std(want_pooled) > 1e-3 * np.max(np.abs(want_pooled))
  assert _rel_err(got_map, want_map) <= 1e-4
  assert _rel_err(got_pooled, want_pooled) <= 1e-4


# ---------------------------------------------------------------------------
# Small networks at odd sizes, eval and train mode.


@pytest.mark.parametrize("arch", _ARCHS)
def test_tiny_networks_match_torch_at_odd_size(arch):
  torch.manual_seed(3)
  if arch == "resnet50":
    tmodel = torch_reference.ResNet((1, 1, 1, 1), width=8, last_stride=2)
    fmodel = resnet.ResNet((1, 1, 1, 1), width=8, last_stride=2)
    key = "stage4"
  else:
    tmodel = torch_reference.DenseNet(4, (2, 1, 1, 2), 8, bn_size=2)
    fmodel = densenet.DenseNet(4, (2, 1, 1, 2), 8, bn_size=2)
    key = "block4"
  torch_reference.randomize_batchnorm_(tmodel, seed=3)
  # Odd and even sizes, so ceil (stem) and floor (avg pool) both matter.
  x = np.random.RandomState(1).normal(size=(2, 3, 61, 46)).astype(np.float32)
  target = jax.eval_shape(
      lambda x: fmodel.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 61, 46, 3), jnp.float32))
  variables = torchvision_import.convert_state_dict(
      _numpy_state_dict(tmodel), arch, target)
  x_nhwc = x.transpose(0, 2, 3, 1)

  tmodel.eval()
  with torch.no_grad():
    want = tmodel.forward_features(torch.from_numpy(x)).numpy()
  got = jax.jit(functools.partial(fmodel.apply, train=False))(variables,
                                                              x_nhwc)[key]
  assert _rel_err(np.asarray(got).transpose(0, 3, 1, 2), want) <= 1e-5

  # Train mode: batch statistics, and the same running-mean update
  # (torch momentum 0.1 == Flax momentum 0.9).
  tmodel.train()
  with torch.no_grad():
    want = tmodel.forward_features(torch.from_numpy(x)).numpy()
  out, updates = jax.jit(functools.partial(
      fmodel.apply, train=True, mutable=["batch_stats"]))(variables, x_nhwc)
  assert _rel_err(np.asarray(out[key]).transpose(0, 3, 1, 2), want) <= 1e-4
  new_means = {k: v.numpy() for k, v in tmodel.state_dict().items()
               if k.endswith("running_mean")}
  for path, mean in _flatten(updates["batch_stats"]).items():
    if path[-1] == "mean":
      torch_name = torchvision_import.torch_key(arch, ("batch_stats",) + path)
      np.testing.assert_allclose(mean, new_means[torch_name], rtol=1e-4,
                                 atol=1e-5, err_msg=torch_name)


# ---------------------------------------------------------------------------
# File formats: .npz converter, old DenseNet keys, dtypes.


@pytest.mark.parametrize("arch", _ARCHS)
def test_npz_converter_gives_identical_variables(arch, pth_files, tmp_path):
  npz = str(tmp_path / f"{arch}.npz")
  assert convert_weights.main([pth_files[arch], npz]) == 0  # arch inferred
  from_pth = torchvision_import.load_torchvision(pth_files[arch], arch)
  _assert_trees_equal(torchvision_import.load_torchvision(npz), from_pth)
  _assert_trees_equal(torchvision_import.load_torchvision(npz, arch),
                      from_pth)
  with np.load(npz, allow_pickle=False) as archive:
    assert str(archive["__arch__"]) == arch
    # Only backbone tensors: no classifier, no num_batches_tracked.
    assert not any(k.startswith(("fc.", "classifier.")) or
                   k.endswith("num_batches_tracked") for k in archive.files)
  other = "densenet121" if arch == "resnet50" else "resnet50"
  with pytest.raises(WeightImportError, match=f"converted for {arch}"):
    torchvision_import.load_torchvision(npz, other)


def test_npz_loads_without_torch(pth_files, tmp_path):
  npz = str(tmp_path / "resnet50.npz")
  convert_weights.convert(pth_files["resnet50"], npz, "resnet50")
  want = torchvision_import.load_torchvision(npz)
  total = sum(float(np.sum(v, dtype=np.float64))
              for v in jax.tree.leaves(want))
  code = f"""
import sys
import numpy as np
import jax
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from reidjax.backbones import torchvision_import
v = torchvision_import.load_torchvision({npz!r})
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print(repr(sum(float(np.sum(x, dtype=np.float64))
               for x in jax.tree.leaves(v))))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert float(out.stdout.strip()) == total


def test_pth_without_torch_says_how_to_convert(pth_files):
  code = f"""
import sys
sys.modules["torch"] = None
from reidjax.backbones import torchvision_import
try:
  torchvision_import.load_torchvision({pth_files["resnet50"]!r})
except ImportError as e:
  print(e)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "needs torch" in out.stdout
  assert "reidjax.tools.convert_weights" in out.stdout


def test_old_densenet_key_style(torch_models, tmp_path):
  new_style = torch_models["densenet121"].state_dict()
  old_style = {}
  for key, value in new_style.items():
    # features.denseblock1.denselayer1.norm1.weight -> ...norm.1.weight
    parts = key.split(".")
    if "denselayer" in key and parts[-2][-1] in "12":
      parts[-2] = parts[-2][:-1] + "." + parts[-2][-1]
    old_style[".".join(parts)] = value
  assert "features.denseblock1.denselayer1.norm.1.weight" in old_style
  assert "features.denseblock4.denselayer16.conv.2.weight" in old_style
  # Transition and stem keys never had the dotted form.
  assert "features.transition1.norm.weight" in old_style
  path = str(tmp_path / "old.pth")
  torch.save(old_style, path)
  _assert_trees_equal(
      torchvision_import.load_torchvision(path),
      torchvision_import.convert_state_dict(
          {k: v.numpy() for k, v in new_style.items()}, "densenet121"))


def test_half_precision_file_is_read_as_float32(tmp_path):
  tmodel = torch_reference.DenseNet(4, (1, 1, 1, 1), 8, bn_size=2)
  torch_reference.randomize_batchnorm_(tmodel)
  path = str(tmp_path / "bf16.pth")
  torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in tmodel.state_dict().items()}, path)
  state_dict, arch = torchvision_import.read_state_dict(path)
  assert arch is None
  weight = state_dict["features.conv0.weight"]
  assert weight.dtype == np.float32
  np.testing.assert_array_equal(
      weight, tmodel.features.conv0.weight.detach().to(torch.bfloat16)
      .to(torch.float32).numpy())


# ---------------------------------------------------------------------------
# Errors.


def test_one_error_lists_missing_unexpected_and_misshapen(
    torch_models, tmp_path):
  state_dict = dict(torch_models["resnet50"].state_dict())
  del state_dict["layer2.1.bn2.running_var"]
  state_dict["layer5.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
  state_dict["conv1.weight"] = torch.zeros(64, 3, 5, 5)
  path = str(tmp_path / "broken.pth")
  torch.save(state_dict, path)
  with pytest.raises(WeightImportError) as info:
    torchvision_import.load_torchvision(path, "resnet50")
  message = str(info.value)
  assert path in message
  assert "1 missing, 1 unexpected and 1 wrongly shaped" in message
  assert "layer2.1.bn2.running_var  (128,)" in message
  assert "layer5.0.conv1.weight  (3, 3, 1, 1)" in message
  assert "conv1.weight  file (64, 3, 5, 5), model (64, 3, 7, 7)" in message


def test_error_lists_at_most_twenty_of_each(torch_models):
  state_dict = _numpy_state_dict(torch_models["densenet121"])
  # DenseNet weights into a ResNet: everything is missing or unexpected.
  with pytest.raises(WeightImportError) as info:
    torchvision_import.convert_state_dict(state_dict, "resnet50",
                                          source="dense.pth")
  message = str(info.value)
  assert "'dense.pth'" in message
  want_missing = len(_flatten(
      torchvision_import.abstract_variables("resnet50")))
  assert f"missing from the file (the model needs them) ({want_missing})" in (
      message)
  assert f"... and {want_missing - 20} more" in message
  listed = [l for l in message.splitlines() if l.startswith("    ")
            and not l.startswith("    ...")]
  assert len(listed) == 40  # 20 missing + 20 unexpected


def test_converter_cli_reports_errors(torch_models, tmp_path, capsys):
  state_dict = dict(torch_models["resnet50"].state_dict())
  del state_dict["conv1.weight"]
  path = str(tmp_path / "broken.pth")
  torch.save(state_dict, path)
  out = str(tmp_path / "out.npz")
  assert convert_weights.main([path, out, "--arch", "resnet50"]) == 1
  assert "conv1.weight" in capsys.readouterr().err
  assert not os.path.exists(out)


# ---------------------------------------------------------------------------
# apply_pretrained.


class _BackboneAndHead(flax.linen.Module):
  """A model holding the backbone under "backbone", like StrongBaseline."""

  backbone: flax.linen.Module
  feature_key: str = "block4"

  @flax.linen.compact
  def __call__(self, x, train=False):
    pooled = self.backbone(x, train=train)[self.feature_key].mean(axis=(1, 2))
    pooled = flax.linen.BatchNorm(use_running_average=not train,
                                  name="neck")(pooled)
    return flax.linen.Dense(3, name="head")(pooled)


def _numpy_filled(abstract, seed):
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype),
      abstract)


@pytest.mark.parametrize("fmt", ["pth", "npz"])
def test_apply_pretrained_replaces_only_the_backbone(fmt, pth_files,
                                                     tmp_path):
  path = pth_files["densenet121"]
  if fmt == "npz":
    path = str(tmp_path / "d.npz")
    convert_weights.convert(pth_files["densenet121"], path)
  model = _BackboneAndHead(densenet.densenet121())
  abstract = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  variables = _numpy_filled(abstract, seed=0)
  config = ml_collections.ConfigDict(
      {"name": "densenet121", "pretrained": path})

  out = torchvision_import.apply_pretrained(variables, config, "backbone")
  want = torchvision_import.load_torchvision(pth_files["densenet121"])
  _assert_trees_equal(
      {c: out[c]["backbone"] for c in ("params", "batch_stats")}, want)
  for collection, name in [("params", "head"), ("params", "neck"),
                           ("batch_stats", "neck")]:
    _assert_trees_equal(out[collection][name], variables[collection][name])
  for leaf in jax.tree.leaves(out):
    assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32
  # The input is not modified.
  assert not np.array_equal(variables["params"]["backbone"]["conv0"]["kernel"],
                            out["params"]["backbone"]["conv0"]["kernel"])


def test_apply_pretrained_no_path_and_bad_scope(pth_files):
  variables = {"params": {"backbone": {}}, "batch_stats": {}}
  for pretrained in ("", None):
    config = ml_collections.ConfigDict({"name": "resnet50",
                                        "pretrained": pretrained})
    assert torchvision_import.apply_pretrained(variables, config) is variables
  # A config without the field at all is random init too.
  config = ml_collections.ConfigDict({"name": "resnet50"})
  assert torchvision_import.apply_pretrained(variables, config) is variables

  config = ml_collections.ConfigDict({"name": "resnet50",
                                      "pretrained": pth_files["resnet50"]})
  with pytest.raises(ValueError, match=r"No params\['encoder'\]"):
    torchvision_import.apply_pretrained(variables, config, "encoder")
  config.name = "slim_resnet"
  with pytest.raises(ValueError, match="no torchvision weights"):
    torchvision_import.apply_pretrained(variables, config)


def test_apply_pretrained_checks_the_actual_backbone_and_keeps_sharding(
    pth_files, tmp_path):
  model = _BackboneAndHead(resnet.ResNet((1, 1, 1, 1), width=8), "stage4")
  abstract = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 64, 32, 3), jnp.float32))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  variables = jax.device_put(_numpy_filled(abstract, seed=1), replicated)

  # A full-size ResNet-50 file does not fit a shrunken backbone config.
  config = ml_collections.ConfigDict({"name": "resnet50",
                                      "pretrained": pth_files["resnet50"]})
  with pytest.raises(WeightImportError) as info:
    torchvision_import.apply_pretrained(variables, config)
  assert "layer1.0.conv1.weight  file (64, 64, 1, 1), model (8, 8, 1, 1)" in (
      str(info.value))

  # A file of the same small network loads, onto the same sharding.
  torch.manual_seed(0)
  tmodel = torch_reference.ResNet((1, 1, 1, 1), width=8)
  torch_reference.randomize_batchnorm_(tmodel)
  config.pretrained = str(tmp_path / "small.pth")
  torch.save(tmodel.state_dict(), config.pretrained)
  out = torchvision_import.apply_pretrained(variables, config)
  np.testing.assert_array_equal(
      out["params"]["backbone"]["layer1_0"]["conv2"]["kernel"],
      tmodel.layer1[0].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      out["batch_stats"]["backbone"]["layer4_0"]["downsample_bn"]["var"],
      tmodel.layer4[0].downsample[1].running_var.numpy())
  for leaf in jax.tree.leaves(out):
    assert leaf.sharding == replicated
