"""Attention-Driven ReID (Yang, Yan, Lu et al., Pattern Recognition 2019).

Usage:
  python train.py --config configs/attdriven.py:synthetic --workdir /tmp/attd
  python train.py --config configs/attdriven.py:market1501 --workdir /tmp/attd_market \
      --config.data.root=/data/Market-1501-v15.09.15 \
      --config.data.parts.keypoints_dir=/data/market_keypoints
  python -m reidjax.viz.attdriven --workdir /tmp/attd --image x.jpg --out maps.png

Arguments: market1501, dukemtmc, cuhk03_labeled, cuhk03_detected (the
767/700 protocol), their classic-split variants cuhk03_labeled_classic /
cuhk03_detected_classic (the paper's: the first of the 20 splits of
cuhk-03.mat, 1,367 / 100 identities), synthetic (CPU quick start); any
other image dataset of ``configs/common.py`` works alike.

The paper's recipe (Sec. 3, 4.1), the defaults here:
- Five slim ResNet branches of Table 1 (``model.backbone``: the global
  branch, ``reidjax.backbones.resnet.attdriven_branch("global")``'s fields;
  the part branches: ``model.part_stage_widths`` / ``part_pool_strides``),
  Conv1 shared, intra-attention in B2-B4 (2, 1, 1 max pools), inter-
  attention, final feature [E_g, E_l] (768-d).
- Inputs: whole-body crop 384 x 192, part crops 96 x 192 from pose boxes
  (``data.parts``, beta = 3H/48), each crop minus its channel means
  (``model.subtract_image_mean``); no augmentation is named, so none.
- Eq. 11 with lambda = ``loss.branch_weight``: 0.1 (Market-1501, Duke),
  0.2 (CUHK03), Table 10 / Table 6's starred row; the text's 0.5 for other
  datasets.
- SGD (momentum 0.9 and no weight decay: the paper names neither), lr
  0.01, x0.1 every 40 epochs, 100 epochs, batch 32 in random order
  (``data.sampler = "random"``).
- Pretraining: the paper pretrains this network on ImageNet for 9
  epochs. No ImageNet weights of it exist, so ``model.pretrained`` names a
  reidjax workdir/checkpoint of the same network to start from
  (``reidjax.models.attdriven.transfer_pretrained``; every variable except
  the ID classifiers). ``model.backbone.from_scratch`` is True because the
  branch has no torchvision weights (``model.backbone.pretrained`` is for
  those and must stay empty).

Ablations (switches):
  Table 6 Baseline:   --config.data.parts.source=stripes --config.model.intra_attention=False
                      --config.model.fusion=concat
  Table 6 Aligned:    --config.model.intra_attention=False --config.model.fusion=concat
  Table 6 Intra:      --config.model.fusion=concat
  Table 6 Inter:      --config.model.intra_attention=False
  Table 7:            --config.model.branches=global | parts (| all)
                      (with --config.model.intra_attention=False: the right half)
  Table 8:            --config.model.decomposition=none  (| both | spatial | channel)
  Table 9:            --config.model.fusion=concat | fc | inter
  Table 10:           --config.loss.branch_weight=0.0 .. 1.0
  Table 11:           --config.data.parts.beta=0.0625  (k/48)

  synthetic           CPU quick start: the shared synthetic Market set with its
                      generated keypoints, whole body 64 x 32, parts 16 x 32,
                      branches of one bottleneck per stage at a quarter of the
                      paper's widths (global 8/16/32/64, parts 4/8/16/32), FC
                      reduce 64 / 32, flips, Adam 1e-3 (the CPU budget allows
                      few epochs; SGD 0.01 learns too slowly in them).
"""

import ml_collections

from configs import common
from reidjax.backbones import resnet

PAPER_DATASETS = ("market1501", "dukemtmc", "cuhk03_labeled", "cuhk03_detected")
CLASSIC = {"cuhk03_labeled_classic": "cuhk03_labeled",
           "cuhk03_detected_classic": "cuhk03_detected"}
# Table 10 / Table 6 (starred row): the best lambda per dataset.
BEST_BRANCH_WEIGHT = {"market1501": 0.1, "dukemtmc": 0.1, "cuhk03_labeled": 0.2,
                      "cuhk03_detected": 0.2}
# ResNet fields that make a branch of Table 1.
_BRANCH_FIELDS = ("stage_sizes", "width", "stage_widths", "expansion", "stage_strides",
                  "last_stride", "stem_kernel_size", "stem_pool_strides")


def branch_backbone() -> ml_collections.ConfigDict:
  """``model.backbone``: the global branch of Table 1 (a ``ResNet`` "resnet")."""
  branch = resnet.attdriven_branch("global")
  b = ml_collections.ConfigDict({f: getattr(branch, f) for f in _BRANCH_FIELDS})
  b.name = "resnet"
  b.pretrained = ""  # torchvision weights only: this branch has none.
  b.from_scratch = True  # no ImageNet weights exist; model.pretrained is the start
  return b


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  common.check_dataset(arg, "configs/attdriven.py", extra=tuple(CLASSIC))
  dataset = CLASSIC.get(arg, arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = common.data_config(dataset)
  if c.data.video:
    raise ValueError(f"configs/attdriven.py takes image datasets (part crops of one "
                     f"image), got the video set {arg!r}.")
  if arg in CLASSIC:
    c.data.options.split = "classic"  # the first of the 20 cuhk-03.mat splits
  c.data.parts = common.parts_config()
  c.data.height, c.data.width = 384, 192
  c.data.parts.height, c.data.parts.width = 96, 192
  c.data.sampler = "random"  # "fed to the network in a random order"
  c.data.num_identities, c.data.num_instances = 8, 4  # batch 32 (random: P * K images)
  c.data.flip = False
  c.data.pad = 0
  c.data.random_erasing = 0.0
  c.data.eval_batch_size = 64

  part = resnet.attdriven_branch("part")
  c.model = ml_collections.ConfigDict()
  c.model.name = "attdriven"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = common.MODEL_DTYPE  # "auto": bfloat16 on GPU/TPU, float32 on CPU.
  c.model.backbone = branch_backbone()
  c.model.num_parts = 4
  c.model.part_stage_widths = tuple(part.stage_widths)
  c.model.part_pool_strides = tuple(part.stem_pool_strides)
  c.model.branches = "all"  # "global" | "parts": Table 7
  c.model.intra_attention = True  # False: Table 6's Aligned / Inter rows
  c.model.attention_stages = (2, 3, 4)  # B2-B4
  c.model.attention_pools = (2, 1, 1)  # max pools of each encoder (Fig. 5)
  c.model.decomposition = "both"  # "none" | "spatial" | "channel": Table 8
  c.model.fusion = "inter"  # "concat" | "fc": Table 9
  c.model.global_reduce = 256
  c.model.part_reduce = 128
  c.model.dropout = 0.5
  c.model.subtract_image_mean = True
  c.model.pretrained = ""  # a reidjax workdir of this network (module doc)

  c.loss = ml_collections.ConfigDict()
  c.loss.branch_weight = BEST_BRANCH_WEIGHT.get(dataset, 0.5)  # lambda of Eq. 11
  c.loss.label_smoothing = 0.0
  c.loss.center_weight = 0.0  # no center loss (train.py reads the key)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.freeze_backbone_epochs = 0
  c.optimizer.freeze_backbone_bn = "eval"

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "multistep"
  c.schedule.epochs = 100
  c.schedule.warmup_epochs = 0
  c.schedule.warmup_factor = 1.0
  c.schedule.milestones = (40, 80)  # x0.1 every 40 epochs
  c.schedule.gamma = 0.1

  c.train = common.train_config()
  c.eval = common.eval_config(dataset)
  if arg in CLASSIC:
    c.eval.protocol = "cuhk03"  # single-gallery-shot, as the paper reports CUHK03

  if arg == "synthetic":
    c.data.height, c.data.width = 64, 32
    c.data.parts.height, c.data.parts.width = 16, 32
    c.data.flip = True
    c.model.backbone.stage_sizes = (1, 1, 1, 1)
    c.model.backbone.width = 8
    c.model.backbone.stage_widths = (8, 16, 32, 64)
    c.model.part_stage_widths = (4, 8, 16, 32)
    c.model.global_reduce = 64
    c.model.part_reduce = 32
    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 5e-4
    # 4800 train images / 32 = 150 steps an epoch: 3000 steps.
    c.schedule.epochs = 20
    c.schedule.milestones = (14, 18)
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_epochs = 0
  return c
