r"""Trains a ReID model, checkpoints it and evaluates it.

  python train.py --config configs/baseline.py:synthetic --workdir workdirs/quickstart
  python train.py --config configs/baseline.py:market1501 --workdir /tmp/m \
      --config.data.root=/data/Market-1501-v15.09.15 --config.optimizer.lr=3e-4

Re-running the same command on a workdir that holds a checkpoint resumes from
it. SIGTERM or Ctrl-C saves a checkpoint and stops. Outputs in the workdir:
``checkpoints/``, ``train_metrics.jsonl``, ``eval_metrics.jsonl`` and
``results.json`` (the final evaluation).
"""

import functools
import json
import os
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reidjax.data import datasets, pipeline, transforms
from reidjax.data.sampler import IdentitySampler
from reidjax.evaluate import runner
from reidjax.models import build_model, get_objective
from reidjax.train import checkpoint, optimizer, progress, sharding, state as state_lib, step as step_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
flags.mark_flags_as_required(["config", "workdir"])


class StopRequest:
  """Turns SIGTERM / SIGINT into a flag the loop checks once per step."""

  def __init__(self):
    self.signum = None
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signum = signum


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  progress.quiet_library_logs()
  os.makedirs(workdir, exist_ok=True)
  stop = StopRequest()
  mesh = sharding.make_data_mesh()
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())

  # Data.
  dataset = datasets.load_dataset(config.data)
  logging.info("%s", dataset.summary())
  with config.unlocked():
    config.model.num_classes = dataset.num_train_pids
  cfg_data = config.data
  sampler = IdentitySampler(dataset.train.pids, cfg_data.num_identities,
                            cfg_data.num_instances, config.seed, **process)
  global_batch = sampler.global_batch_size
  sharding.check_batch_size(global_batch, mesh, "data.num_identities * data.num_instances")
  sharding.check_batch_size(cfg_data.eval_batch_size, mesh, "data.eval_batch_size")
  steps_per_epoch = sampler.steps_per_epoch
  total_steps = config.schedule.epochs * steps_per_epoch

  # Model, optimizer, state (fresh or resumed).
  model = build_model(config.model, config.model.num_classes)
  schedule = optimizer.make_schedule(config.schedule, lr=config.optimizer.lr,
                                     steps_per_epoch=steps_per_epoch)
  tx = optimizer.make_optimizer(config.optimizer, schedule)
  input_shape = (cfg_data.height, cfg_data.width, 3)
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=config.train.checkpoint_every_steps,
                                 max_to_keep=config.train.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state_lib.abstract_train_state(model, tx, input_shape=input_shape,
                                                        mesh=mesh))
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
  else:
    state = state_lib.create_train_state(model, tx, seed=config.seed,
                                         input_shape=input_shape, mesh=mesh,
                                         backbone_config=config.model.backbone)
  start_step = int(state.step)

  train_step = step_lib.make_train_step(get_objective(config.model.name), config.loss,
                                        mesh, schedule)
  augment = transforms.AugmentConfig(height=cfg_data.height, width=cfg_data.width,
                                     flip=cfg_data.flip, pad=cfg_data.pad,
                                     random_erasing=cfg_data.random_erasing)
  batches = pipeline.train_batches(dataset.train, num_identities=cfg_data.num_identities,
                                   num_instances=cfg_data.num_instances, augment=augment,
                                   seed=config.seed, start_step=start_step, **process)
  evaluator = runner.Evaluator(
      model, mesh, query=dataset.query, gallery=dataset.gallery,
      make_batches=functools.partial(pipeline.eval_batches, batch_size=cfg_data.eval_batch_size,
                                     height=cfg_data.height, width=cfg_data.width, **process),
      metric=config.eval.metric, max_rank=config.eval.max_rank, workdir=workdir,
      flip=config.eval.flip, normalize=config.eval.normalize, protocol=config.eval.protocol,
      num_repeats=config.eval.num_repeats, seed=config.seed,
      camera_filter=config.eval.camera_filter, streaming=config.eval.streaming)
  logger = progress.ProgressLogger(workdir, total_steps=total_steps, start_step=start_step,
                                   global_batch_size=global_batch,
                                   every_steps=config.train.log_every_steps)
  logging.info("Training %s: %d epochs x %d steps, global batch %d on %d device(s).",
               config.model.name, config.schedule.epochs, steps_per_epoch, global_batch,
               mesh.size)

  # The loop: data -> train step -> checkpoint -> (periodic) evaluation.
  eval_every = config.train.eval_every_epochs * steps_per_epoch
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = train_step(state, sharding.to_global_batch(next(batches), mesh))
    logger.update(step, metrics)
    ckpt.save(step, state, config)
    if stop.signum is not None:
      ckpt.save(step, state, config, force=True)
      ckpt.wait()
      logging.warning("Stopped by signal %d at step %d; checkpoint saved. Re-run the same "
                      "command to resume.", stop.signum, step)
      sys.exit(128 + stop.signum)
    if eval_every and step % eval_every == 0 and step != total_steps:
      evaluator.run(state, step)
      logger.reset_timer(step)

  batches.close()  # Stop the training pipeline's background prefetching.
  ckpt.save(total_steps, state, config, force=True)
  ckpt.wait()
  results = evaluator.run(state, total_steps)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  print(f"{dataset.name}: mAP {results['mAP']:.4f}  rank-1 {results['rank1']:.4f}  "
        f"rank-5 {results['rank5']:.4f}  mINP {results['mINP']:.4f}", flush=True)


if __name__ == "__main__":
  app.run(main)
