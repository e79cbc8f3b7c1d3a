"""Configs: every paper config takes every dataset; the DuATM recipe numbers."""

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
