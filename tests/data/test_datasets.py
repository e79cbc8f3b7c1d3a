"""From the data config to an index: synthetic generation and user errors."""

import ml_collections
import numpy as np
import pytest

from reidjax.data import datasets, layouts, synthetic, synthetic_video


def test_synthetic_is_written_once_and_parsed(tmp_path):
  config = ml_collections.ConfigDict(dict(
      name="synthetic", root=str(tmp_path / "synth"),
      synthetic=dict(num_train_ids=4, num_test_ids=3, images_per_id=12,
                     num_distractors=2, num_junk=1, seed=0)))
  first = datasets.load_dataset(config)
  again = datasets.load_dataset(config)  # idempotent: reuses the files
  assert first.name == "synthetic"
  assert first.num_train_pids == 4
  np.testing.assert_array_equal(np.unique(first.train.pids), np.arange(4))
  assert first.train.paths == again.train.paths
  assert first.gallery.paths == again.gallery.paths
  assert np.sum(first.gallery.pids == 0) == 2  # distractors kept, junk dropped


def test_data_options_go_to_the_parser_and_are_checked(tmp_path):
  config = ml_collections.ConfigDict(dict(
      name="market1501", root=str(tmp_path), options=dict(include_val=True)))
  with pytest.raises(ValueError, match="'market1501' does not take option.*"
                     "'include_val'; it accepts no options"):
    datasets.load_dataset(config)


def test_every_synthetic_name_has_a_writer():
  assert set(datasets.SYNTHETIC_WRITERS) == set(layouts.SYNTHETIC_DATASETS)
  assert datasets.SYNTHETIC_WRITERS["synthetic"][0] is (
      synthetic.write_synthetic_market)
  assert datasets.SYNTHETIC_WRITERS["synthetic_video"][0] is (
      synthetic_video.write_synthetic_mars)
