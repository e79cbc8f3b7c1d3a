"""The papers' building blocks, each usable on its own.

DuATM (Si et al. CVPR 2018): ``dual_attention`` holds the dual attention
block and distance (Eq. 1-5) and DuATM's own losses and pooling: the
de-correlation loss (Eq. 7) and the random convex combination (Eq. 8).

DCANet (Hu et al. BMVC 2021): ``dcam`` holds the Discriminative Clue
Alignment Module (Eq. 1-4), to place after any backbone stage, and its
discriminant loss (Eq. 5).
"""

from reidjax.layers.dcam import DCAM
from reidjax.layers.dual_attention import DualAttention
from reidjax.layers.dual_attention import SequenceItems
from reidjax.layers.dual_attention import attention_weights as dual_attention_weights
from reidjax.layers.dual_attention import decorrelation_loss
from reidjax.layers.dual_attention import pair_distance as dual_attention_pair_distance
from reidjax.layers.dual_attention import pair_distance_flops as dual_attention_pair_distance_flops
from reidjax.layers.dual_attention import random_convex_combination
from reidjax.layers.dual_attention import random_convex_weights

__all__ = ["DCAM", "DualAttention", "SequenceItems", "decorrelation_loss",
           "dual_attention_pair_distance", "dual_attention_pair_distance_flops",
           "dual_attention_weights", "random_convex_combination",
           "random_convex_weights"]
