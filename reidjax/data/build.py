"""From the ``data`` config section to the pipelines (training and evaluation).

One place builds what ``train.py`` and ``python -m reidjax.evaluate`` feed:
the training stream (``pipeline.train_batches`` / ``train_clip_batches``
with the augmentation of the config), the evaluator's batch maker
(``pipeline.eval_batches`` / ``eval_clip_batches``) and, for video, the
test-clip planner (``clips.plan_test_clips``). ``fields`` are the model's
input fields: they decide whether the image pipelines add the pose fields
(``pipeline.pose_field_inputs``: Attention-Driven ReID's keypoints / parts).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from reidjax.data import clips, pipeline, transforms


def augment_config(cfg) -> transforms.AugmentConfig:
  """The training augmentation of the ``data`` section."""
  return transforms.AugmentConfig(height=cfg.height, width=cfg.width, flip=cfg.flip,
                                  pad=cfg.pad, crop=cfg.crop,
                                  random_erasing=cfg.random_erasing)


def eval_inputs(cfg, dataset, readers, fields: Sequence[str], *, process_index: int,
                process_count: int, pose: dict | None = None
                ) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
  """(make_batches, test_clips) for ``reidjax.evaluate.runner.Evaluator``.

  ``test_clips`` is None for image data; ``pose`` is
  ``pipeline.pose_field_inputs(cfg, dataset, fields)`` when the caller has it.
  """
  evaluation = dict(batch_size=cfg.eval_batch_size, height=cfg.height, width=cfg.width,
                    process_index=process_index, process_count=process_count)
  reader = lambda split: readers["query"] if split is dataset.query else readers["gallery"]
  if not cfg.video:
    pose = pose or pipeline.pose_field_inputs(cfg, dataset, fields)
    make_batches = lambda split: pipeline.eval_batches(
        split, reader=reader(split), **evaluation,
        **pose["query" if split is dataset.query else "gallery"])
    return make_batches, None
  make_batches = lambda split, plan: pipeline.eval_clip_batches(
      split, plan, reader=reader(split), **evaluation)
  test_clips = functools.partial(clips.plan_test_clips, clip_length=cfg.test_clip_length,
                                 strategy=cfg.test_clip_strategy,
                                 stride=cfg.test_clip_stride)
  return make_batches, test_clips


def make_pipelines(cfg, dataset, readers, fields: Sequence[str], *, train_sampler, seed: int,
                   start_step: int, process_index: int, process_count: int):
  """The training stream, and the evaluator's batch maker and clip planner.

  Returns:
    (train batches, make_batches, test_clips): ``test_clips`` is None for
    image data.
  """
  process = dict(process_index=process_index, process_count=process_count)
  # Also the check that pose fields are asked of image data only.
  pose = pipeline.pose_field_inputs(cfg, dataset, fields)
  sampling = dict(sampler=train_sampler, augment=augment_config(cfg), seed=seed,
                  start_step=start_step, reader=readers["train"],
                  skip_corrupt=cfg.skip_corrupt, **process)
  if cfg.video:
    batches = pipeline.train_clip_batches(
        dataset.train, clip_length=cfg.clip_length, strategy=cfg.train_clip_strategy,
        stride=cfg.clip_stride, **sampling)
  else:
    batches = pipeline.train_batches(dataset.train, **sampling, **pose["train"])
  make_batches, test_clips = eval_inputs(cfg, dataset, readers, fields, pose=pose, **process)
  return batches, make_batches, test_clips
