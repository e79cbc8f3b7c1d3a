"""The strong BNNeck baseline (Luo et al., "Bag of Tricks", CVPRW 2019).

Usage:
  python train.py --config configs/baseline.py:synthetic --workdir /tmp/run
  python train.py --config configs/baseline.py:market1501 \
      --config.data.root=/data/Market-1501-v15.09.15 --workdir /tmp/market

Arguments:
  synthetic   CPU quick start: the generated Market-layout set, a ResNet-50
              shrunk in depth and width, 64x32 inputs, a few minutes on 2 cores.
  market1501  The BoT recipe: ResNet-50 (last stride 1), 256x128, P16 x K4,
              Adam 3.5e-4 with 10 warm-up epochs, x0.1 at 40 and 70, 120 epochs,
              label smoothing 0.1, triplet margin 0.3, random erasing 0.5.
"""

import ml_collections


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  if arg not in ("synthetic", "market1501"):
    raise ValueError(f"configs/baseline.py takes ':synthetic' or ':market1501', got {arg!r}.")
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "market1501"
  c.data.root = ml_collections.FieldReference("", field_type=str)
  c.data.height, c.data.width = 256, 128
  c.data.num_identities = 16  # P
  c.data.num_instances = 4  # K
  c.data.flip = True
  c.data.pad = 10
  c.data.random_erasing = 0.5
  c.data.eval_batch_size = 128

  c.model = ml_collections.ConfigDict()
  c.model.name = "baseline"
  c.model.num_classes = -1  # Filled from the training split.
  c.model.dtype = "float32"  # "bfloat16" on GPUs.
  c.model.embed_feature = "bn"
  c.model.backbone = ml_collections.ConfigDict()
  c.model.backbone.name = "resnet50"
  c.model.backbone.stage_sizes = (3, 4, 6, 3)
  c.model.backbone.width = 64
  c.model.backbone.last_stride = 1
  # A torchvision ImageNet state_dict (.pth) or its converted .npz
  # (python -m reidjax.tools.convert_weights); empty: random init.
  c.model.backbone.pretrained = ""

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.1
  c.loss.triplet_margin = 0.3  # None: soft margin.
  c.loss.ce_weight = 1.0
  c.loss.triplet_weight = 1.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.lr = 3.5e-4
  c.optimizer.weight_decay = 5e-4

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "multistep"
  c.schedule.epochs = 120
  c.schedule.warmup_epochs = 10
  c.schedule.warmup_factor = 0.01
  c.schedule.milestones = (40, 70)
  c.schedule.gamma = 0.1

  c.train = ml_collections.ConfigDict()
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  c.train.eval_every_epochs = 40  # 0: only at the end.

  c.eval = ml_collections.ConfigDict()
  c.eval.metric = "cosine"  # or "euclidean" (squared)
  c.eval.max_rank = 50
  c.eval.normalize = False  # L2-normalise features before the distance
  c.eval.flip = False  # average the features of each image and its mirror
  c.eval.protocol = "market1501"  # or "cuhk03" (single-gallery-shot)
  c.eval.num_repeats = 10  # cuhk03 only
  c.eval.camera_filter = True  # False for data without camera ids
  c.eval.streaming = False  # never build the Q x G matrix (MSMT17 scale)

  if arg == "synthetic":
    c.data.name = "synthetic"
    c.data.root = "data/synthetic_market"
    # reidjax.data.synthetic.write_synthetic_market arguments.
    c.data.synthetic = ml_collections.ConfigDict(dict(
        num_train_ids=300, num_test_ids=100, num_cameras=6, images_per_id=16,
        num_distractors=150, num_junk=50, seed=0))
    c.data.height, c.data.width = 64, 32
    c.data.pad = 4
    c.model.backbone.stage_sizes = (1, 1, 1, 1)
    c.model.backbone.width = 16
    # 300 ids / P16 = 18 steps an epoch: 2340 steps, ~6 min on 2 CPU cores.
    c.schedule.epochs = 130
    c.schedule.warmup_epochs = 5
    c.schedule.milestones = (90, 115)
    c.optimizer.lr = 1e-3
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 500
    c.train.eval_every_epochs = 0
  return c
