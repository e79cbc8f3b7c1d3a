"""Paper models and the strong baseline, picked by name (``registry``)."""

from reidjax.models.baseline import StrongBaseline
from reidjax.models.interface import EMBEDDING, PAIR, model_kind
from reidjax.models.registry import MODELS, build_model, get_objective

__all__ = ["EMBEDDING", "MODELS", "PAIR", "StrongBaseline", "build_model",
           "get_objective", "model_kind"]
