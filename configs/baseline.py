"""The strong BNNeck baseline (Luo et al., "Bag of Tricks", CVPRW 2019).

Usage:
  python train.py --config configs/baseline.py:synthetic --workdir /tmp/run
  python train.py --config configs/baseline.py:market1501 \
      --config.data.root=/data/Market-1501-v15.09.15 --workdir /tmp/market

Arguments: any dataset of ``configs/common.py``.
  synthetic   CPU quick start: the generated Market-layout set, a ResNet-50
              shrunk in depth and width, 64x32 inputs, a few minutes on 2 cores.
  synthetic_video  The same for video: the generated MARS-layout set,
              4-frame clips, frame features averaged over time.
  <dataset>   The BoT recipe: ResNet-50 (last stride 1), 256x128, P16 x K4,
              Adam 3.5e-4 with 10 warm-up epochs, x0.1 at 40 and 70, 120 epochs,
              label smoothing 0.1, triplet margin 0.3, random erasing 0.5;
              an epoch is about one pass over the training images.
              Center loss (weight 5e-4): --config.model.center_loss=True.
              Video sets: the same per frame, features averaged over the
              frames of a clip and over the clips of a tracklet.
"""

import ml_collections

from configs import common


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  common.check_dataset(arg, "configs/baseline.py")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = common.data_config(arg)

  c.model = ml_collections.ConfigDict()
  c.model.name = "baseline"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = common.MODEL_DTYPE  # "auto": bfloat16 on GPU/TPU, float32 on CPU.
  c.model.embed_feature = "bn"
  c.model.center_loss = False  # BoT's optional center loss (weight loss.center_weight)
  c.model.video = c.data.get_ref("video")
  c.model.backbone = common.resnet50_backbone()

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.1
  c.loss.triplet_margin = 0.3  # None: soft margin.
  c.loss.ce_weight = 1.0
  c.loss.triplet_weight = 1.0
  c.loss.center_weight = 5e-4  # used when model.center_loss

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.lr = 3.5e-4
  c.optimizer.weight_decay = 5e-4
  c.optimizer.center_lr = 0.5  # the center loss's centres: their own SGD (BoT)
  c.optimizer.freeze_backbone_epochs = 0
  c.optimizer.freeze_backbone_bn = "eval"  # frozen backbone's BatchNorm: "eval" | "train"

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "multistep"
  c.schedule.epochs = 120
  c.schedule.warmup_epochs = 10
  c.schedule.warmup_factor = 0.01
  c.schedule.milestones = (40, 70)
  c.schedule.gamma = 0.1

  c.train = common.train_config()
  c.eval = common.eval_config(arg)

  if arg in ("synthetic", "synthetic_video"):
    c.data.height, c.data.width = 64, 32
    c.data.pad = 4
    c.model.backbone.stage_sizes = (1, 1, 1, 1)
    c.model.backbone.width = 16
    c.optimizer.lr = 1e-3
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 500
    c.train.eval_every_epochs = 0
  if arg == "synthetic":
    # 4800 train images / (P16 x K4) = 75 steps an epoch: 2325 steps, ~6 min
    # on 2 CPU cores.
    c.schedule.epochs = 31
    c.schedule.warmup_epochs = 1
    c.schedule.milestones = (22, 28)
  if arg == "synthetic_video":
    # 300 ids x 1 group of K = 4 tracklets / P16 = 18 steps an epoch: 540 steps.
    c.schedule.epochs = 30
    c.schedule.warmup_epochs = 2
    c.schedule.milestones = (20, 26)
  return c
