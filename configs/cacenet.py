"""CACE-Net (Yu et al., 2020): clue alignment and conditional embedding, a pair model.

Usage:
  python train.py --config configs/cacenet.py:synthetic --workdir /tmp/cacenet
  python train.py --config configs/cacenet.py:synthetic,official --workdir /tmp/cacenet_off
  python train.py --config configs/cacenet.py:market1501 --workdir /tmp/cacenet_market \
      --config.data.root=/data/Market-1501-v15.09.15 \
      --config.model.backbone.pretrained=/weights/resnet50-0676ba61.pth
  python -m reidjax.viz.cacenet --workdir /tmp/cacenet --query q.jpg --gallery g.jpg \
      --out edges.png

Arguments: ``<dataset>`` or ``<dataset>,official``, with any dataset of
``configs/common.py``; the paper's are market1501, dukemtmc, msmt17 and
occluded_duke. ``,official`` selects the published code's design
(``model.variant = "official"``, below) and its loss settings.

The paper's recipe (Sec. 4.2), the defaults here:
- ResNet-50 (ImageNet weights from ``model.backbone.pretrained``), last
  stride 1: a 24 x 8 x 2048 stage-4 map at 384 x 128.
- P = 4 identities x M = 4 images, 384 x 128, random flips, random crops
  (zero padding 10, then a 384 x 128 crop), random erasing p = 0.5.
- SGD, momentum 0.9, weight decay 5e-4, lr 6.25e-3 reached linearly from 0
  over 5 warm-up epochs, then cosine decay to 0 at epoch 80.
- Losses: ID cross-entropy on the individual feature (Eq. 1), the mix-up
  ID loss of Eq. 8 over all PM x PM ordered pairs (alpha = 0.9) and a
  batch-hard triplet on the individual features.
- Inference (Sec. 3.5): rank by the individual features, re-rank each
  query's top K = 100 by the conditional features; the top K are ordered by
  the sum of the two cosine similarities (``eval.rerank_combine = "sum"``,
  cosine distances).
Chosen where the paper is silent: triplet margin 0.3, no label smoothing,
the individual feature's BatchNorm neck (``reidjax.models.cacenet``).

Ablations (switches):
  Table 1  --config.model.cross_image=False    (individual-only graph)
           --config.model.gcn=smoothing        ("normal" GCN, Eq. 6; default
                                                discrepancy, Eq. 7)
           --config.loss.mixup_alpha=1.0       (plain CE on f(u|v): no mix-up)
           --config.model.pair_score=individual --config.eval.rerank_top_k=0
                                               (individual features only)
  Table 2  --config.model.adjacency=correspondence | top_k | part | fully_connected
           --config.model.top_k=1              (neighbours per pixel, "top_k")
  Table 3  --config.loss.mixup_alpha=0.95 ...

Official variant (``:<dataset>,official``; the YouReID toolbox's
``models/cacenet.py`` and ``example/cacenet/cacenet.yaml``): non-local blocks
after the second-to-last bottleneck of stages 2-4, the pair of stage-4 maps
concatenated along the width through the PairGraph step, GeM pooling and a
1x1 conv to 768 + BN shared by the individual and the pair features;
label-smoothed CE (0.1), the 0.9 / 0.1 pair CE with its own classifier,
batch-hard triplet (margin 0.5, L2-normalised features) and the pair triplet;
the same optimizer and schedule. At test time that code ranks by the global
768-d embedding only: ``model.pair_score = "individual"`` and
``eval.rerank_top_k = 0`` (the pair distance is then the cosine distance of
the global embeddings, ranked over the whole gallery).

  synthetic   CPU quick start: the baseline's set and tiny ResNet (blocks
              1-1-1-1, width 16; configs/baseline.py:synthetic), 64 x 32
              inputs (a 4 x 2 x 512 stage-4 map: 8 nodes an image), pad 4,
              random erasing 0.5, E = 256, Adam 1e-3 with 1 warm-up epoch
              and cosine decay (SGD at 6.25e-3 gets much less far from a
              random start in a few thousand steps), P8 x M4 batches (1,024
              ordered pairs for Eq. 8), 16 epochs; re-ranking K = 100.
              ``synthetic,official``: the same for the official variant, but
              P4 x M4 (its B^2 PairGraph maps dominate a step), Adam 2e-3,
              10 epochs: quick-start choices, not the published recipe.
"""

import ml_collections

from configs import common

VARIANTS = ("paper", "official")


def _parse(arg: str) -> tuple[str, str]:
  dataset, _, variant = arg.partition(",")
  variant = variant or "paper"
  if variant not in VARIANTS:
    raise ValueError(f"configs/cacenet.py takes ':<dataset>' or ':<dataset>,official', "
                     f"got {arg!r} (variant {variant!r} is not one of {VARIANTS}).")
  common.check_dataset(dataset, "configs/cacenet.py")
  return dataset, variant


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  dataset, variant = _parse(arg)
  official = variant == "official"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = common.data_config(dataset)
  if c.data.video:
    raise ValueError(f"configs/cacenet.py is for image datasets; {dataset!r} is a video set.")
  c.data.num_identities, c.data.num_instances = 4, 4  # P x M
  c.data.height, c.data.width = 384, 128
  c.data.flip = True
  c.data.pad = 10
  c.data.random_erasing = 0.5

  c.model = ml_collections.ConfigDict()
  c.model.name = "cacenet"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = common.MODEL_DTYPE  # bf16 on GPU/TPU, f32 on CPU; graph and losses f32.
  c.model.variant = variant  # "paper" | "official"
  c.model.embed_dim = 768 if official else 2048  # the 1x1 convs' output
  # Paper variant:
  # Table 2: correspondence (Eq. 3) | top_k (similarity) | part | fully_connected
  c.model.adjacency = "correspondence"
  c.model.top_k = 1  # "top_k": neighbours of a pixel in the other image
  c.model.cross_image = True  # Table 1: False = the individual-only graph
  c.model.gcn = "discrepancy"  # Table 1: "discrepancy" (Eq. 7) | "smoothing" (Eq. 6)
  # What pair_distance scores: "conditional" (Sec. 3.5) or "individual"
  # (the global features only: Table 1's first row, and the official code).
  c.model.pair_score = "individual" if official else "conditional"
  # Official variant:
  c.model.non_local_stages = (2, 3, 4)
  c.model.dropout = 0.5  # before the official classifiers
  c.model.backbone = common.resnet50_backbone()

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.1 if official else 0.0
  c.loss.triplet_margin = 0.5 if official else 0.3
  c.loss.ce_weight = 1.0
  c.loss.triplet_weight = 1.0
  c.loss.triplet_normalize = official  # the official code L2-normalises first
  c.loss.mixup_alpha = 0.9  # Eq. 8; 1.0: plain CE on f(u|v)
  # The official code adds the pair CE of f(u|v) and of f(v|u): both are the
  # mean of Eq. 8 over the same ordered pairs, hence weight 2.
  c.loss.mixup_weight = 2.0 if official else 1.0
  c.loss.pair_triplet_weight = 1.0 if official else 0.0  # official only

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 6.25e-3
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.freeze_backbone_epochs = 0
  c.optimizer.freeze_backbone_bn = "eval"

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "cosine"
  c.schedule.epochs = 80
  c.schedule.warmup_epochs = 5
  c.schedule.warmup_factor = 0.0  # linear from 0
  c.schedule.final_lr_factor = 0.0  # cosine to 0

  c.train = common.train_config()
  c.train.eval_every_epochs = 0  # re-ranking is costly: at the end
  c.eval = common.eval_config(dataset)
  c.eval.metric = "cosine"  # both stages are cosine distances, 1 - s
  c.eval.rerank_top_k = 0 if official else 100
  c.eval.rerank_combine = "sum"

  if dataset == "synthetic":
    c.data.height, c.data.width = 64, 32
    c.data.pad = 4
    c.model.backbone.stage_sizes = (1, 1, 1, 1)
    c.model.backbone.width = 16
    c.model.embed_dim = 256
    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-3
    c.schedule.warmup_factor = 0.01
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 1000
    c.schedule.warmup_epochs = 1
    if official:
      # Quick-start choices for the tiny synthetic set only (the dataset
      # recipes above stay as published; the architecture and the losses are
      # the official ones): P4 x M4 (the recipe's batch: 256 PairGraph maps a
      # step, as costly as a P8 x M4 step of the paper variant), 300 steps an
      # epoch, 10 epochs (3000 steps), Adam at 2e-3 (at 1e-3 the same 3000
      # steps stall longer and reach less; 3e-4 and 5e-4 are slower still,
      # SGD at 0.05 collapses the normalised embedding).
      c.optimizer.lr = 2e-3
      c.schedule.epochs = 10
    else:
      c.data.num_identities = 8  # P8 x M4: 1,024 ordered pairs for Eq. 8
      # 4800 train images / (P8 x M4) = 150 steps an epoch: 2400 steps.
      c.schedule.epochs = 16
  return c
