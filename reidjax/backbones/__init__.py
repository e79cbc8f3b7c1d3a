"""Backbone networks (feature extractors) for ReID models."""

from reidjax.backbones.resnet import Bottleneck
from reidjax.backbones.resnet import ResNet
from reidjax.backbones.resnet import resnet50

__all__ = ["Bottleneck", "ResNet", "resnet50"]
