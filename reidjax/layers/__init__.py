"""The papers' building blocks, each usable on its own."""

from reidjax.layers.dual_attention import DualAttention
from reidjax.layers.dual_attention import pair_distance as dual_attention_pair_distance
from reidjax.layers.dual_attention import pair_distance_flops as dual_attention_pair_distance_flops
from reidjax.layers.dual_attention import SequenceItems
from reidjax.layers.dual_attention import attention_weights as dual_attention_weights

__all__ = ["DualAttention", "SequenceItems", "dual_attention_pair_distance",
           "dual_attention_pair_distance_flops", "dual_attention_weights"]
