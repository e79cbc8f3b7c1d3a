"""Each paper's layers, importable on their own (Flax linen modules and pure functions).

DuATM (Si et al. CVPR 2018): ``dual_attention`` holds the dual attention
matching (Eq. 1-6), the de-correlation loss (Eq. 7) and the random convex
combination (Eq. 8).
DCANet (Hu et al. BMVC 2021): ``dcam`` holds the Discriminative Clue
Alignment Module (Eq. 1-4), to place after any backbone stage, and its
discriminant loss (Eq. 5).
CACE-Net (Yu et al. 2020): ``correspondence`` holds the correspondence
attention (Eq. 2-4, Table 2's alignments); ``graph`` the discrepancy and
smoothing GCNs (Eq. 6-7) and the official code's ``PairGraph``;
``non_local`` the non-local block and ``pooling`` GeM of the official code.
Attention-Driven ReID (Yang et al. PR 2019): ``intra_attention`` (Fig. 5,
Eq. 3-7) and ``inter_attention`` (Eq. 8-9).
FGRA (Chen et al. AAAI 2020): ``alignment`` holds the guide alignment
(Eq. 1-2), the temporal alignment scores (Eq. 4-6), the consistency
regulariser (Eq. 3) and the region spatial attention (Eq. 7-8).
"""

from reidjax.layers.alignment import GuideAlignment
from reidjax.layers.alignment import RegionSpatialAttention
from reidjax.layers.alignment import TemporalAttentionPool
from reidjax.layers.alignment import consistency_loss
from reidjax.layers.alignment import depthwise_cross_correlation
from reidjax.layers.alignment import temporal_alignment_pool
from reidjax.layers.correspondence import CorrespondenceAttention
from reidjax.layers.correspondence import inter_importance
from reidjax.layers.correspondence import intra_importance
from reidjax.layers.correspondence import joint_adjacency
from reidjax.layers.dcam import DCAM
from reidjax.layers.dual_attention import DualAttention
from reidjax.layers.dual_attention import SequenceItems
from reidjax.layers.dual_attention import attention_weights as dual_attention_weights
from reidjax.layers.dual_attention import decorrelation_loss
from reidjax.layers.dual_attention import pair_distance as dual_attention_pair_distance
from reidjax.layers.dual_attention import pair_distance_flops as dual_attention_pair_distance_flops
from reidjax.layers.dual_attention import random_convex_combination
from reidjax.layers.dual_attention import random_convex_weights
from reidjax.layers.graph import GraphConvolution
from reidjax.layers.graph import PairGraph
from reidjax.layers.graph import normalized_adjacency
from reidjax.layers.inter_attention import InterAttention
from reidjax.layers.intra_attention import AttentionEncoderDecoder
from reidjax.layers.intra_attention import AttentionMask
from reidjax.layers.intra_attention import IntraAttention
from reidjax.layers.non_local import NonLocalBlock
from reidjax.layers.pooling import GeM

__all__ = [
    "AttentionEncoderDecoder",
    "AttentionMask",
    "CorrespondenceAttention",
    "DCAM",
    "DualAttention",
    "GeM",
    "GraphConvolution",
    "GuideAlignment",
    "InterAttention",
    "IntraAttention",
    "NonLocalBlock",
    "PairGraph",
    "RegionSpatialAttention",
    "SequenceItems",
    "TemporalAttentionPool",
    "consistency_loss",
    "decorrelation_loss",
    "depthwise_cross_correlation",
    "dual_attention_pair_distance",
    "dual_attention_pair_distance_flops",
    "dual_attention_weights",
    "inter_importance",
    "intra_importance",
    "joint_adjacency",
    "normalized_adjacency",
    "random_convex_combination",
    "random_convex_weights",
    "temporal_alignment_pool",
]
