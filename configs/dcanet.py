"""DCANet (Hu, Zhou, Huang, BMVC 2021): DCAMs between ResNet-50 stages.

Usage:
  python train.py --config configs/dcanet.py:synthetic --workdir /tmp/dcanet
  python train.py --config configs/dcanet.py:cuhk03_labeled --workdir /tmp/dcanet_cuhk \
      --config.data.root=/data/cuhk03 \
      --config.model.backbone.pretrained=/weights/resnet50-0676ba61.pth
  python -m reidjax.viz.dcanet --workdir /tmp/dcanet --image x.jpg --out maps.png

Arguments: any dataset of ``configs/common.py``; the paper's are
cuhk03_labeled (767/700), dukemtmc, msmt17, mars, dukemtmc_video, ilidsvid
(cuhk03_detected and market1501 work alike).

The paper's recipe (Sec. 4.2), the defaults here:
- ResNet-50 (ImageNet weights from ``model.backbone.pretrained``), last
  stride 1; one DCAM after stage 3 with K = 8 attention blocks.
- P = 8 identities x K = 4 images (video: tracklets), 256 x 128, random
  horizontal flips (no padding/cropping, no random erasing: the paper
  names flips only).
- ID cross-entropy + batch-hard triplet + 0.5 x the discriminant loss.
- Adam, lr 3e-4, weight decay 5e-4, x0.1 every 60 epochs, 130 epochs.
- Video: 4 frames 8 apart from each tracklet to train ("stride"
  strategy), features averaged over the frames; at test time the mean over
  all frames of the tracklet (every frame its own one-frame clip; clip
  features are averaged per tracklet, and the BNNeck is affine in
  inference, so this is exactly the mean frame feature).
Chosen where the paper is silent: triplet margin 0.3, no label smoothing,
no warm-up, the BNNeck head (its BN output is the embedding).

Ablations (switches):
  Table 1, stages:   --config.model.dcam_stages='(2,3,4)'   ({2} {3} {4} {2,3} {3,4} {2,3,4})
  Table 2, K:        --config.model.num_blocks=4            (2-16; K must divide the
                     map height: 16 at stages 3-4, 32 at stage 2 for 256 x 128)
                     --config.model.num_blocks_per_stage='(4,8,8)'  (one K per stage)
  modules:           --config.model.attention=spatial | channel | both
  Eq. 2 reading:     --config.model.alignment=stack | max
  Table 3 "BS+DCAM": --config.loss.discriminant_weight=0.0

  synthetic        CPU quick start: the baseline's (configs/baseline.py:
                   synthetic: same set, tiny ResNet (blocks 1-1-1-1, width
                   16), 64 x 32 inputs, P16 x K4, pad 4, random erasing, label
                   smoothing 0.1, Adam 1e-3, 31 epochs) plus the DCAM and the
                   discriminant loss, so that the two differ only there. At
                   64 x 32 the stage-3 map is 4 x 2, so K = 4 (K must divide H).
  synthetic_video  The same for video, on the shared synthetic MARS set
                   (configs/common.py: 300 ids, 4-6 tracklets). P8 x K4
                   tracklets, 4-frame "stride" clips, every frame at test,
                   60 epochs.
"""

import ml_collections

from configs import common


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  common.check_dataset(arg, "configs/dcanet.py")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = common.data_config(arg)
  c.data.num_identities, c.data.num_instances = 8, 4
  c.data.height, c.data.width = 256, 128
  c.data.flip = True
  c.data.pad = 0
  c.data.random_erasing = 0.0
  if c.data.video:
    c.data.clip_length = 4
    c.data.train_clip_strategy = "stride"
    c.data.clip_stride = 8
    # Test: every frame is a one-frame clip; clips are averaged per tracklet.
    c.data.test_clip_length = 1
    c.data.test_clip_strategy = "all"
    c.data.test_clip_stride = 1
    c.data.eval_batch_size = 128

  c.model = ml_collections.ConfigDict()
  c.model.name = "dcanet"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = common.MODEL_DTYPE  # "auto": bfloat16 on GPU/TPU, float32 on CPU.
  c.model.embed_feature = "bn"
  c.model.center_loss = False
  c.model.video = c.data.get_ref("video")
  c.model.dcam_stages = (3,)
  c.model.num_blocks = 8  # K of every DCAM
  c.model.num_blocks_per_stage = ()  # or one K per entry of dcam_stages
  c.model.alignment = "stack"  # Eq. 2 literally; "max": max over the blocks
  c.model.attention = "both"  # "spatial" | "channel" | "both"
  c.model.spatial_reduction = 16
  c.model.channel_reduction = 16
  c.model.backbone = common.resnet50_backbone()

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0
  c.loss.triplet_margin = 0.3  # None: soft margin.
  c.loss.ce_weight = 1.0
  c.loss.triplet_weight = 1.0
  c.loss.discriminant_weight = 0.5  # Eq. 5's L_dis; 0.0: Table 3's BS + DCAM
  c.loss.center_weight = 5e-4  # used when model.center_loss

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-4
  c.optimizer.weight_decay = 5e-4
  c.optimizer.center_lr = 0.5
  c.optimizer.freeze_backbone_epochs = 0
  c.optimizer.freeze_backbone_bn = "eval"

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "multistep"
  c.schedule.epochs = 130
  c.schedule.warmup_epochs = 0
  c.schedule.warmup_factor = 1.0
  c.schedule.milestones = (60, 120)  # x0.1 every 60 epochs
  c.schedule.gamma = 0.1

  c.train = common.train_config()
  c.eval = common.eval_config(arg)

  if arg in ("synthetic", "synthetic_video"):
    # The baseline's quick start (configs/baseline.py) plus the DCAM.
    c.data.height, c.data.width = 64, 32
    c.data.num_identities = 16
    c.data.pad = 4
    c.data.random_erasing = 0.5
    c.model.backbone.stage_sizes = (1, 1, 1, 1)
    c.model.backbone.width = 16
    c.model.num_blocks = 4  # the stage-3 map is 4 x 2: K must divide 4
    c.loss.label_smoothing = 0.1
    c.optimizer.lr = 1e-3
    c.schedule.warmup_factor = 0.01
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 500
    c.train.eval_every_epochs = 0
  if arg == "synthetic":
    # 4800 train images / (P16 x K4) = 75 steps an epoch: 2325 steps.
    c.schedule.epochs = 31
    c.schedule.warmup_epochs = 1
    c.schedule.milestones = (22, 28)
  if arg == "synthetic_video":
    # The paper's P = 8 x K = 4 tracklets of 4 frames: 128 frames a step; the
    # ~1,500 training tracklets make about 37 steps an epoch (full K groups).
    c.data.num_identities = 8
    # The baseline's video schedule shape: 60 x 37 = 2,220 steps.
    c.schedule.epochs = 60
    c.schedule.warmup_epochs = 3
    c.schedule.milestones = (40, 52)
  return c
