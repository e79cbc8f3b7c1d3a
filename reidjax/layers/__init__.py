"""The papers' building blocks, each usable on its own.

DuATM (Si et al. CVPR 2018): ``dual_attention`` holds the dual attention
block and distance (Eq. 1-5) and DuATM's own losses and pooling: the
de-correlation loss (Eq. 7) and the random convex combination (Eq. 8).
"""

from reidjax.layers.dual_attention import DualAttention
from reidjax.layers.dual_attention import SequenceItems
from reidjax.layers.dual_attention import attention_weights as dual_attention_weights
from reidjax.layers.dual_attention import decorrelation_loss
from reidjax.layers.dual_attention import pair_distance as dual_attention_pair_distance
from reidjax.layers.dual_attention import pair_distance_flops as dual_attention_pair_distance_flops
from reidjax.layers.dual_attention import random_convex_combination
from reidjax.layers.dual_attention import random_convex_weights

__all__ = ["DualAttention", "SequenceItems", "decorrelation_loss",
           "dual_attention_pair_distance", "dual_attention_pair_distance_flops",
           "dual_attention_weights", "random_convex_combination",
           "random_convex_weights"]
