"""FGRA (Chen et al., AAAI 2020): frame-guided region-aligned video ReID.

Usage:
  python train.py --config configs/fgra.py:synthetic_video --workdir /tmp/fgra
  python train.py --config configs/fgra.py:mars --workdir /tmp/fgra_mars \
      --config.data.root=/data/MARS \
      --config.model.backbone.pretrained=/weights/resnet50-0676ba61.pth
  python -m reidjax.tools.splits --config configs/fgra.py:ilidsvid --workdir /tmp/fgra_ilids \
      --config.data.root=/data/iLIDS-VID --config.model.backbone.pretrained=...
      (the 10 splits, one train.py run each, mean and std in summary.json / .md)
  python -m reidjax.viz.fgra --workdir /tmp/fgra --out regions.png

Arguments: the paper's mars, ilidsvid, prid2011 (and dukemtmc_video, any
other video set of ``configs/common.py``), synthetic_video (the default).

The paper's recipe ("Implementation Details"), the defaults here:
- ResNet-50 (ImageNet weights from ``model.backbone.pretrained``), last
  stride 1 (the paper is silent; 256 x 128 then gives 16 x 8 maps, so N_s up
  to 8 stripes of whole rows); N_s = 4 regions; 1x1 reductions to 1024.
- Clips of N = 6 frames. "A subsequence of N = 6 frames is randomly selected
  from the entire tracklet": read as 6 *consecutive* frames from a uniform
  start ("consecutive", circular for shorter tracklets): the model is
  frame-guided (consecutive frames resemble the reference) and the test
  clips are consecutive too.
- P = 16 identities x K = 4 tracklets (64 clips), 256 x 128, random crop
  from the frame enlarged by 1/8, flips, random erasing, one draw per clip.
- Softmax CE (no label smoothing) + batch-hard triplet (margin 0.5) +
  5e-4 x the consistency term (Eq. 3, 12).
- Adam, lr 3e-4, weight decay 5e-4, x0.1 every 100 epochs, 300 epochs.
- Test: clips of 6 consecutive frames every 3 frames (adjacent clips overlap
  by half; the tail gets a last clip, short tracklets one circular clip),
  features averaged per tracklet, cosine distance.
Chosen where the paper is silent: the BNNeck head (its BN output is the
embedding), no warm-up.

Ablations, Table 2 (``--config.model.*`` / ``--config.loss.*``):
  1 AVG          global_branch=False region_alignment=False temporal_aggregation=average
                 spatial_attention=False, loss.consistency_weight=0.0
                 (or the argument suffix ``,avg``: configs/fgra.py:synthetic_video,avg)
  2 GB           local_branch=False, loss.consistency_weight=0.0
  3 GB+AVG       region_alignment=False temporal_aggregation=average spatial_attention=False
                 loss.consistency_weight=0.0
  4 GB+RAM+AVG   temporal_aggregation=average spatial_attention=False consistency_weight=0.0
  5 GB+RAM+TA    temporal_aggregation=attention spatial_attention=False consistency_weight=0.0
  6 GB+RAM+TAS   spatial_attention=False loss.consistency_weight=0.0
  7 +CR          spatial_attention=False
  8 +SA          the defaults (full model)
  Fig. 4:        --config.model.num_regions=1|2|4|8,
                 --config.data.clip_length=2..8 (and data.test_clip_length)
Every row by name: the argument suffix ``,<row>`` with a row of ``ABLATIONS``.

  synthetic_video  CPU quick start on the shared synthetic MARS set
                   (configs/common.py: 300 ids, 4-6 tracklets, 64 x 32): the
                   tiny ResNet the other quick starts use (blocks 1-1-1-1,
                   width 16, 512 channels, 4 x 2 maps), reductions to 256,
                   P8 x K4 clips of 4 frames (test: 4 frames every 2),
                   data.crop="pad" with pad 4, random erasing, label
                   smoothing 0.1, Adam 1e-3 with a short warm-up, 50 epochs
                   x 37 steps.
"""

import ml_collections

from configs import common

# Table 2's rows: model switches and the consistency weight (None: the recipe's).
ABLATIONS = {
    "avg": dict(global_branch=False, region_alignment=False, temporal_aggregation="average",
                spatial_attention=False, consistency_weight=0.0),
    "gb": dict(local_branch=False, consistency_weight=0.0),
    "gb_avg": dict(region_alignment=False, temporal_aggregation="average",
                   spatial_attention=False, consistency_weight=0.0),
    "gb_ram_avg": dict(temporal_aggregation="average", spatial_attention=False,
                       consistency_weight=0.0),
    "gb_ram_ta": dict(temporal_aggregation="attention", spatial_attention=False,
                      consistency_weight=0.0),
    "gb_ram_tas": dict(spatial_attention=False, consistency_weight=0.0),
    "gb_ram_tas_cr": dict(spatial_attention=False),
    "full": dict(),
}


def get_config(arg: str = "synthetic_video") -> ml_collections.ConfigDict:
  dataset, _, row = arg.partition(",")
  common.check_dataset(dataset, "configs/fgra.py")
  if dataset not in common.VIDEO_DATASETS:
    raise ValueError(f"FGRA is a video model; configs/fgra.py takes a video dataset "
                     f"{list(common.VIDEO_DATASETS)}, got {dataset!r}.")
  if row and row not in ABLATIONS:
    raise ValueError(f"configs/fgra.py:{arg}: unknown Table 2 row {row!r}; choose one of "
                     f"{list(ABLATIONS)}.")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = common.data_config(dataset)
  c.data.num_identities, c.data.num_instances = 16, 4
  c.data.height, c.data.width = 256, 128
  c.data.flip = True
  c.data.crop = "enlarge"  # resize to 9/8 x (H, W), random (H, W) crop, one draw per clip
  c.data.pad = 0  # used by crop="pad" only
  c.data.random_erasing = 0.5
  c.data.clip_length = 6
  c.data.train_clip_strategy = "consecutive"
  c.data.test_clip_length = c.data.get_ref("clip_length")
  c.data.test_clip_strategy = "all"
  c.data.test_clip_stride = 3
  c.data.eval_batch_size = 16  # clips

  c.model = ml_collections.ConfigDict()
  c.model.name = "fgra"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = common.MODEL_DTYPE  # "auto": bfloat16 on GPU/TPU, float32 on CPU.
  c.model.embed_feature = "bn"
  c.model.center_loss = False  # Bag of Tricks' learned centres; FGRA's Eq. 3 has none.
  c.model.video = c.data.get_ref("video")
  c.model.num_regions = 4  # N_s
  c.model.reduced_features = 1024
  c.model.global_branch = True  # GB
  c.model.local_branch = True
  c.model.region_alignment = True  # RAM
  c.model.temporal_aggregation = "alignment_score"  # TAS | "attention" (TA) | "average"
  c.model.spatial_attention = True  # SA
  # Eq. 1 as an einsum (a broadcast product), or "conv": the grouped convolution the
  # paper names, the same numbers; XLA:CPU crashed differentiating it with
  # B x C = 16,384 groups (the quick start's batch), so it is not the default.
  c.model.correlation = "einsum"
  c.model.backbone = common.resnet50_backbone()

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0
  c.loss.triplet_margin = 0.5
  c.loss.ce_weight = 1.0
  c.loss.triplet_weight = 1.0
  c.loss.consistency_weight = 5e-4  # lambda (CR); 0.0 turns it off
  c.loss.center_weight = 0.0  # used only with model.center_loss

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-4
  c.optimizer.weight_decay = 5e-4
  c.optimizer.center_lr = 0.5  # used only with model.center_loss
  c.optimizer.freeze_backbone_epochs = 0
  c.optimizer.freeze_backbone_bn = "eval"

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "multistep"
  c.schedule.epochs = 300
  c.schedule.warmup_epochs = 0
  c.schedule.warmup_factor = 1.0
  c.schedule.milestones = (100, 200)  # x0.1 every 100 epochs
  c.schedule.gamma = 0.1

  c.train = common.train_config()
  c.eval = common.eval_config(dataset)
  c.eval.metric = "cosine"
  c.eval.clip_pooling = "mean"

  if dataset == "synthetic_video":
    c.data.height, c.data.width = 64, 32
    c.data.num_identities = 8
    c.data.crop, c.data.pad = "pad", 4  # the other quick starts' augmentation
    # 4-frame clips (test: 4 frames every 2, still overlapping by half): the
    # 6-frame clips of the paper cost 1.5x the time on 2 CPU cores.
    c.data.clip_length = 4
    c.data.test_clip_stride = 2
    c.model.backbone.stage_sizes = (1, 1, 1, 1)
    c.model.backbone.width = 16
    c.model.reduced_features = 256
    c.loss.label_smoothing = 0.1
    c.optimizer.lr = 1e-3
    # ~1,500 training tracklets / (P8 x K4) = 37 steps an epoch: 1,850 steps.
    c.schedule.epochs = 50
    c.schedule.warmup_epochs = 2
    c.schedule.warmup_factor = 0.01
    c.schedule.milestones = (35, 45)
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 500
    c.train.eval_every_epochs = 0

  for key, value in ABLATIONS.get(row, {}).items():
    if key == "consistency_weight":
      c.loss.consistency_weight = value
    else:
      c.model[key] = value
  return c
