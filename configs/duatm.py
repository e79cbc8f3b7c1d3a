"""DuATM (Si et al., CVPR 2018): dual attention matching of feature sequences.

Usage:
  python train.py --config configs/duatm.py:synthetic --workdir /tmp/duatm
  python train.py --config configs/duatm.py:market1501 --workdir /tmp/duatm_market \
      --config.data.root=/data/Market-1501-v15.09.15 \
      --config.model.backbone.pretrained=/weights/densenet121-a639ec97.pth

Arguments: any dataset of ``configs/common.py``; the paper's are market1501,
dukemtmc, mars (and cuhk03 / ilidsvid / prid2011 in its comparisons).

The paper's recipe (Sec. 4.1), the defaults here:
- DenseNet-121 (ImageNet weights from ``model.backbone.pretrained``), D = 256.
  Image: the 8 x 4 Block-4 map at 256 x 128 is a sequence of S = 32 vectors.
  Video: 128 x 64 frames, one vector per frame through a BiLSTM.
- Batches of P = 10 identities x V = 4 images (video: P = 7 x V = 3
  tracklets of 16 consecutive frames, circular when shorter; tested on the
  first 64 frames). Random flips and crops, no random erasing.
- Triplet (margin 0.2, batch-hard over all pairs of the batch) +
  lambda_1 = 0.1 de-correlation (Eq. 7) + lambda_2 = 0.5 cross-entropy on the
  random convex combination (Eq. 8, p = 0.2).
- SGD, lr 0.01: backbone frozen for the first 100 epochs, then all layers for
  200 more; lr 0.001 for the last 50.
Chosen where the paper is silent: momentum 0.9, weight decay 5e-4, no
warm-up, no label smoothing.

Ablations (Table 1-2): ``--config.model.matching`` = full | intra | inter |
avepool. Evaluation: full pairwise ranking by default; ``--config.eval.
rerank_top_k=K`` ranks by the mean of the sequence first and re-ranks each
query's top K by the DuATM distance (much faster on Market-sized sets).

  synthetic        CPU quick start (image): a shrunk DenseNet (growth 8,
                   blocks 2-2-2-2), 128 x 64 inputs (S = 8), D = 128, Adam,
                   trained end to end from scratch; under 10 minutes.
  synthetic_video  CPU quick start (video): the same backbone on 64 x 32
                   frames, 6-frame clips (16 to test), D = 128.
"""

import ml_collections

from configs import common


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  common.check_dataset(arg, "configs/duatm.py")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = common.data_config(arg)
  video = c.data.video
  c.data.num_identities, c.data.num_instances = (7, 3) if video else (10, 4)
  c.data.height, c.data.width = (128, 64) if video else (256, 128)
  c.data.random_erasing = 0.0
  if video:
    c.data.clip_length = 16
    c.data.train_clip_strategy = "consecutive"
    c.data.test_clip_length = 64
    c.data.test_clip_strategy = "first"  # one 64-frame sequence per tracklet
    c.data.eval_batch_size = 8

  c.model = ml_collections.ConfigDict()
  c.model.name = "duatm"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = common.MODEL_DTYPE  # bf16 on GPU/TPU, f32 on CPU; the matcher stays f32.
  c.model.video = c.data.get_ref("video")
  c.model.dim = 256
  c.model.matching = "full"  # full | intra | inter | avepool
  c.model.corruption_probability = 0.2  # p of Eq. 8
  c.model.classifier_bn = True  # BatchNorm on z before the ID classifier (our reading)
  c.model.backbone = ml_collections.ConfigDict()
  c.model.backbone.name = "densenet121"
  # DenseNet-121; smaller values shrink it (then no ImageNet weights fit).
  c.model.backbone.growth_rate = 32
  c.model.backbone.block_config = (6, 12, 24, 16)
  c.model.backbone.num_init_features = 64
  # A torchvision DenseNet-121 state_dict (.pth) or its converted .npz. Empty
  # on a real dataset stops train.py unless from_scratch=True.
  c.model.backbone.pretrained = ""
  c.model.backbone.from_scratch = False

  c.loss = ml_collections.ConfigDict()
  c.loss.triplet_margin = 0.2
  c.loss.triplet_weight = 1.0
  c.loss.decorrelation_weight = 0.1  # lambda_1
  c.loss.ce_weight = 0.5  # lambda_2
  c.loss.label_smoothing = 0.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.freeze_backbone_epochs = 100
  # While frozen the backbone runs in inference mode ("eval": its BatchNorm
  # keeps the ImageNet statistics) and gets no gradient; "train": batch stats.
  c.optimizer.freeze_backbone_bn = "eval"

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "multistep"
  c.schedule.epochs = 300
  c.schedule.warmup_epochs = 0
  c.schedule.warmup_factor = 1.0
  c.schedule.milestones = (250,)
  c.schedule.gamma = 0.1

  c.train = common.train_config()
  c.train.eval_every_epochs = 0  # full pairwise ranking is costly: at the end
  c.eval = common.eval_config(arg)
  c.eval.metric = "euclidean"  # first stage of a two-stage ranking

  if arg in ("synthetic", "synthetic_video"):
    # Trained from scratch on 2 CPU cores: a DenseNet shrunk to growth 8,
    # 16 stem features and blocks 2-2-2-2 (the stem's width dominates the
    # CPU time), nothing to freeze, and Adam, which from a random start gets
    # much further than SGD 0.01 in the few thousand steps a quick start has.
    c.model.backbone.growth_rate = 8
    c.model.backbone.block_config = (2, 2, 2, 2)
    c.model.backbone.num_init_features = 16
    c.model.dim = 128
    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-3
    c.optimizer.freeze_backbone_epochs = 0
    c.train.log_every_steps = 300
    c.train.checkpoint_every_steps = 500
  if arg == "synthetic":
    c.data.height, c.data.width = 128, 64  # a 4 x 2 Block-4 map: S = 8
    c.data.pad = 8
    c.schedule.epochs = 25  # 4800 images / (P10 x K4) = 120 steps an epoch
    c.schedule.milestones = (20,)
  if arg == "synthetic_video":
    c.data.height, c.data.width = 64, 32
    c.data.pad = 4
    c.data.clip_length = 6
    c.data.test_clip_length = 16
    # 1,203 of the 1,496 tracklets fill whole K = 3 groups: 57 steps an epoch.
    c.schedule.epochs = 74
    c.schedule.milestones = (63,)
  return c
