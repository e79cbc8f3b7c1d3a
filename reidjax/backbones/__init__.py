"""Backbone networks (feature extractors) for ReID models, and torchvision weight import.

``torchvision_import.load_torchvision(path, arch)`` reads a torchvision
state_dict (``.pth``, ``weights_only=True``) or a converted ``.npz``; it needs
torch only for ``.pth`` files.
"""

from reidjax.backbones.densenet import DenseNet
from reidjax.backbones.densenet import densenet121
from reidjax.backbones.resnet import Bottleneck
from reidjax.backbones.resnet import ResNet
from reidjax.backbones.resnet import resnet50
from reidjax.backbones.torchvision_import import load_torchvision

__all__ = ["Bottleneck", "DenseNet", "ResNet", "densenet121", "load_torchvision",
           "resnet50"]
