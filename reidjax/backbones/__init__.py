"""Backbone networks (feature extractors) for ReID models, and torchvision weight import.

``build_backbone(config_section, dtype)`` builds a backbone from the
``model.backbone`` config section and ``last_feature_map(name)`` names the
output a head pools (``registry``). ``ResNet`` and ``DenseNet`` can also be
run piece by piece (``stem``, ``stage`` / ``block``, ``transition``) from a
parent module that inserts its own layers.

``torchvision_import.load_torchvision(path, arch)`` reads a torchvision
state_dict (``.pth``, ``weights_only=True``) or a converted ``.npz``; it needs
torch only for ``.pth`` files.
"""

from reidjax.backbones.densenet import DenseNet
from reidjax.backbones.densenet import densenet121
from reidjax.backbones.registry import BACKBONES
from reidjax.backbones.registry import build_backbone
from reidjax.backbones.registry import compute_dtype
from reidjax.backbones.registry import last_feature_map
from reidjax.backbones.resnet import Bottleneck
from reidjax.backbones.resnet import ResNet
from reidjax.backbones.resnet import attdriven_branch
from reidjax.backbones.resnet import resnet50
from reidjax.backbones.torchvision_import import load_torchvision

__all__ = ["BACKBONES", "Bottleneck", "DenseNet", "ResNet", "attdriven_branch",
           "build_backbone", "compute_dtype", "densenet121",
           "last_feature_map", "load_torchvision", "resnet50"]
