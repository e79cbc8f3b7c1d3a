"""Configs: every paper config takes every dataset; the DuATM and Bag-of-Tricks recipe numbers."""

import pytest

from configs import baseline, common, duatm
from reidjax.train import optimizer


@pytest.mark.parametrize("module", [baseline, duatm])
@pytest.mark.parametrize("dataset", common.DATASETS)
def test_every_dataset_argument(module, dataset):
  c = module.get_config(dataset)
  assert c.data.name == dataset
  assert c.data.video == (dataset in common.VIDEO_DATASETS)
  assert c.model.video == c.data.video  # one switch, shared by reference
  c.data.video = not c.data.video
  assert c.model.video == c.data.video
  if dataset in ("ilidsvid", "prid2011"):
    assert c.data.options.split_index == 0


@pytest.mark.parametrize("module", [baseline, duatm])
def test_unknown_dataset_is_a_clear_error(module):
  with pytest.raises(ValueError, match="market1501"):
    module.get_config("market")


def test_duatm_paper_recipe():
  image, video = duatm.get_config("market1501"), duatm.get_config("mars")
  assert (image.data.num_identities, image.data.num_instances) == (10, 4)
  assert (video.data.num_identities, video.data.num_instances) == (7, 3)
  assert (image.data.height, image.data.width) == (256, 128)
  assert (video.data.height, video.data.width) == (128, 64)
  assert (video.data.clip_length, video.data.train_clip_strategy) == (16, "consecutive")
  assert (video.data.test_clip_length, video.data.test_clip_strategy) == (64, "first")
  assert image.model.dim == 256 and image.model.backbone.name == "densenet121"
  assert (image.loss.triplet_margin, image.loss.decorrelation_weight,
          image.loss.ce_weight, image.model.corruption_probability) == (0.2, 0.1, 0.5, 0.2)
  # SGD 0.01; backbone frozen for 100 epochs, then 200 more; 0.001 for the last 50.
  assert (image.optimizer.name, image.optimizer.lr) == ("sgd", 0.01)
  assert image.optimizer.freeze_backbone_epochs == 100
  assert image.schedule.epochs == 300 and tuple(image.schedule.milestones) == (250,)
  schedule = optimizer.make_schedule(image.schedule, lr=image.optimizer.lr, steps_per_epoch=10)
  assert float(schedule(0)) == pytest.approx(0.01)
  assert float(schedule(2499)) == pytest.approx(0.01)
  assert float(schedule(2500)) == pytest.approx(0.001)


@pytest.mark.parametrize("dataset", ["market1501", "mars"])
def test_baseline_bag_of_tricks_recipe(dataset):
  """Luo et al. 2019, Sec. 3-4 (their reid-strong-baseline defaults)."""
  c = baseline.get_config(dataset)
  # ResNet-50 with the last stride 1; BNNeck, the BN feature at test time.
  assert c.model.name == "baseline" and c.model.embed_feature == "bn"
  assert c.model.backbone.name == "resnet50"
  assert tuple(c.model.backbone.stage_sizes) == (3, 4, 6, 3)
  assert c.model.backbone.width == 64 and c.model.backbone.last_stride == 1
  # 256x128, P16 x K4, random erasing 0.5, padding 10 (then a random crop), flip.
  assert (c.data.height, c.data.width) == (256, 128)
  assert (c.data.num_identities, c.data.num_instances) == (16, 4)
  assert c.data.random_erasing == 0.5 and c.data.pad == 10 and c.data.flip is True
  # Label-smoothed CE (eps 0.1) + batch-hard triplet (margin 0.3), weights 1.
  assert c.loss.label_smoothing == 0.1 and c.loss.triplet_margin == 0.3
  assert (c.loss.ce_weight, c.loss.triplet_weight) == (1.0, 1.0)
  # Adam 3.5e-4, weight decay 5e-4; 120 epochs, linear warm-up over 10 epochs
  # from 0.01 x lr, x0.1 at epochs 40 and 70.
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay) == ("adam", 3.5e-4, 5e-4)
  assert c.schedule.kind == "multistep" and c.schedule.epochs == 120
  assert (c.schedule.warmup_epochs, c.schedule.warmup_factor) == (10, 0.01)
  assert tuple(c.schedule.milestones) == (40, 70) and c.schedule.gamma == 0.1
  steps = 10  # per epoch
  schedule = optimizer.make_schedule(c.schedule, lr=c.optimizer.lr, steps_per_epoch=steps)
  for epoch, lr in [(0, 3.5e-6), (5, 0.5 * (3.5e-6 + 3.5e-4)), (10, 3.5e-4), (39.9, 3.5e-4),
                    (40, 3.5e-5), (69.9, 3.5e-5), (70, 3.5e-6), (119.9, 3.5e-6)]:
    assert float(schedule(int(epoch * steps))) == pytest.approx(lr, rel=1e-5), epoch


@pytest.mark.parametrize("dataset", common.DATASETS)
def test_dcanet_paper_recipe(dataset):
  """Hu, Zhou, Huang 2021, Sec. 4.2, on every dataset; the quick starts' own sets."""
  from configs import dcanet  # pylint: disable=g-import-not-at-top
  c = dcanet.get_config(dataset)
  video = dataset in common.VIDEO_DATASETS
  assert c.data.name == dataset and c.model.video == c.data.video == video
  assert c.model.name == "dcanet" and c.model.backbone.name == "resnet50"
  assert c.loss.discriminant_weight == 0.5
  assert (c.loss.ce_weight, c.loss.triplet_weight) == (1.0, 1.0)
  assert c.model.alignment == "stack" and c.model.attention == "both"
  if dataset.startswith("synthetic"):
    # The baseline's quick start plus the DCAM: K = 4 divides the 4-row stage-3 map.
    assert (c.data.height, c.data.width) == (64, 32)
    assert tuple(c.model.backbone.stage_sizes) == (1, 1, 1, 1) and c.model.backbone.width == 16
    assert c.model.num_blocks == 4 and tuple(c.model.dcam_stages) == (3,)
    if dataset == "synthetic":
      assert (c.schedule.epochs, tuple(c.schedule.milestones)) == (31, (22, 28))
    else:
      assert c.data.root == "data/synthetic_mars"  # the shared set (common.py)
      assert c.data.synthetic.num_train_ids == 300
      assert tuple(c.data.synthetic.tracklets_per_id) == (4, 6)
    return
  # ResNet-50 (last stride 1), one DCAM after stage 3 with K = 8.
  assert tuple(c.model.backbone.stage_sizes) == (3, 4, 6, 3) and c.model.backbone.last_stride == 1
  assert tuple(c.model.dcam_stages) == (3,) and c.model.num_blocks == 8
  # P = 8 x K = 4, 256 x 128, flips only.
  assert (c.data.num_identities, c.data.num_instances) == (8, 4)
  assert (c.data.height, c.data.width) == (256, 128)
  assert c.data.flip is True and c.data.random_erasing == 0.0 and c.data.pad == 0
  if video:  # 4 frames 8 apart to train; every frame (1-frame clips, stride 1) to test.
    assert (c.data.clip_length, c.data.train_clip_strategy, c.data.clip_stride) == (4, "stride", 8)
    assert (c.data.test_clip_length, c.data.test_clip_strategy, c.data.test_clip_stride) == (
        1, "all", 1)
    assert c.eval.clip_pooling == "mean"
  # Adam 3e-4, weight decay 5e-4, x0.1 every 60 epochs, 130 epochs, no warm-up.
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay) == ("adam", 3e-4, 5e-4)
  assert c.schedule.epochs == 130 and c.schedule.warmup_epochs == 0
  schedule = optimizer.make_schedule(c.schedule, lr=c.optimizer.lr, steps_per_epoch=10)
  for epoch, lr in [(0, 3e-4), (59.9, 3e-4), (60, 3e-5), (119.9, 3e-5), (120, 3e-6),
                    (129.9, 3e-6)]:
    assert float(schedule(int(epoch * 10))) == pytest.approx(lr, rel=1e-5), epoch
  assert c.model.backbone.pretrained == "" and c.model.backbone.from_scratch is False
  with pytest.raises(ValueError, match="market1501"):
    dcanet.get_config("market")
