r"""Trains a ReID model, checkpoints it and evaluates it.

  python train.py --config configs/duatm.py     # the paper's synthetic set
  python train.py --config configs/baseline.py:synthetic --workdir workdirs/quickstart
  python train.py --config configs/baseline.py:market1501 --workdir /tmp/m \
      --config.data.root=/data/Market-1501-v15.09.15 --config.optimizer.lr=3e-4

Re-running the same command on a workdir that holds a checkpoint resumes from
it. SIGTERM or Ctrl-C saves a checkpoint and stops. Without ``--workdir`` the
run goes to ``workdirs/<config file name>_<data.name>`` (printed at the
start). Outputs in the workdir: ``checkpoints/``, ``train_metrics.jsonl``,
``eval_metrics.jsonl``, ``results.json`` (the final evaluation) and
TensorBoard event files (losses, lr, img/s, rank-k, mAP, mINP, and at each
evaluation a ranked list of a few fixed queries and the paper's figure
(every paper but the baseline): ``tensorboard --logdir workdirs``).
"""

import functools
import json
import os
import signal
import sys

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from reidjax import inference
from reidjax.data import build, datasets, sampler as sampler_lib
from reidjax.data.index import VideoDataset
from reidjax.models import build_model, get_objective, interface
from reidjax.models.registry import model_entry
from reidjax import checkpoint, distributed, logs, sharding
from reidjax.train import guard, optimizer, progress, state as state_lib, step as step_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints and metrics go; default "
    "workdirs/<config file name>_<data.name>, e.g. workdirs/duatm_synthetic.")
# Several processes (README "Several hosts"): SLURM, Open MPI and indexed
# Kubernetes Jobs are detected; on a plain list of hosts pass all three.
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "Several processes: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Several processes: this one's index, 0..N-1.")
_LOCAL_DEVICE_IDS = flags.DEFINE_string(
    "local_device_ids", None, "Several processes: this one's local devices, e.g. "
    "0,1,2,3 (one process per node under SLURM); default: JAX's choice.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a checkpoint even though the config changes "
    "what is trained (model, data, optimizer, schedule, loss); see reidjax.train.guard.")
flags.mark_flags_as_required(["config"])

# Queries drawn in the TensorBoard ranked list at each evaluation (evenly
# spaced over the query split, the same ones every time) and their top k.
RANKED_LIST_QUERIES = 4
RANKED_LIST_TOP_K = 10


def default_workdir(config_path: str, config) -> str:
  """``workdirs/<config file name>_<data.name>``, e.g. ``workdirs/duatm_synthetic``."""
  paper = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdirs", f"{paper}_{config.data.name}")


def evaluate_and_write(evaluator, state, step: int, writer, model_name: str,
                       data_config) -> dict:
  """Runs the evaluator; writes its scalars, a ranked list and the paper's
  figure (``reidjax.viz.paper_figure``; none for the baseline) to TensorBoard."""
  results = evaluator.run(state, step)
  writer.scalars(step, "eval", results)
  # Every process draws: the distances of a pair model and the figure's forward
  # pass are computations all processes join; only process 0's writer writes.
  num_queries = len(evaluator.query.pids)
  shown = sorted(set(np.linspace(0, num_queries - 1, RANKED_LIST_QUERIES).astype(int)))
  images = {"ranked_list": np.asarray(evaluator.ranked_list(shown,
                                                             top_k=RANKED_LIST_TOP_K))}
  # The paper's figure of the first shown query and its nearest gallery item.
  nearest = int(np.argmin(evaluator.distances(shown[:1])[0]))
  attention = inference.paper_figure(
      model_name, evaluator.model, evaluator.last_variables, data_config,
      (evaluator.query, "query", shown[0]), (evaluator.gallery, "gallery", nearest))
  if attention is not None:
    images["attention"] = np.asarray(attention.convert("RGB"))
  writer.images(step, "eval", images)
  return results


class StopRequest:
  """Turns SIGTERM / SIGINT into a flag the loop checks once per step."""

  def __init__(self):
    self.signum = None
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signum = signum


def check_pretrained(config) -> None:
  """Stops a real-dataset run that would start from random weights by accident."""
  backbone = config.model.backbone
  if (config.data.name in datasets.SYNTHETIC_WRITERS or backbone.get("pretrained", "")
      or backbone.get("from_scratch", False)):
    return
  raise SystemExit(
      f"model.backbone.pretrained is empty, so {config.model.backbone.name} would start "
      f"from random weights on {config.data.name}, far from the paper's figures. Get the "
      "torchvision ImageNet file (e.g. resnet50-0676ba61.pth or densenet121-a639ec97.pth "
      "from torchvision's model zoo on a machine with internet), then pass "
      "--config.model.backbone.pretrained=/path/to/file.pth (or convert it once with "
      "`python -m reidjax.tools.convert_weights` and pass the .npz). To train from "
      "scratch on purpose, add --config.model.backbone.from_scratch=True.")


def main(argv):
  del argv
  # Before anything touches the devices; does nothing on one process.
  distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         local_device_ids=distributed.parse_device_ids(_LOCAL_DEVICE_IDS.value))
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(
      flags.FLAGS["config"]), config)
  if jax.process_index() == 0:
    print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  logs.quiet_library_logs()
  check_pretrained(config)
  # Before a large dataset loads: the workdir is writable and ours alone.
  guard.check_workdir_writable(workdir)
  guard.lock_workdir(workdir)
  stop = StopRequest()
  mesh = sharding.make_data_mesh()
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())

  # Data.
  dataset, readers = datasets.load_data(config.data)
  logging.info("%s", dataset.summary())
  if config.data.video != isinstance(dataset, VideoDataset):
    raise ValueError(f"data.video is {config.data.video} but {dataset.name} is "
                     f"{'a video' if isinstance(dataset, VideoDataset) else 'an image'} "
                     "dataset; set --config.data.video accordingly.")
  with config.unlocked():
    config.model.num_classes = dataset.num_train_pids
  cfg_data = config.data
  sampler = sampler_lib.make_sampler(cfg_data, dataset.train.pids, config.seed, **process)
  global_batch = sampler.global_batch_size
  sharding.check_batch_size(global_batch, mesh, "data.num_identities * data.num_instances")
  sharding.check_batch_size(cfg_data.eval_batch_size, mesh, "data.eval_batch_size")
  steps_per_epoch = sampler.steps_per_epoch
  total_steps = config.schedule.epochs * steps_per_epoch

  # Model, optimizer, state (fresh or resumed). A resumed config is checked
  # against the checkpoint's, and the disk for room for one more checkpoint.
  model = build_model(config.model, config.model.num_classes)
  schedule = optimizer.make_schedule(config.schedule, lr=config.optimizer.lr,
                                     steps_per_epoch=steps_per_epoch)
  tx = optimizer.make_optimizer(
      config.optimizer, schedule, steps_per_epoch=steps_per_epoch,
      center_weight=config.loss.center_weight if config.model.get("center_loss") else 0.0)
  frozen_steps = optimizer.frozen_steps(config.optimizer, steps_per_epoch)
  if frozen_steps and not config.model.backbone.pretrained:
    logging.warning("optimizer.freeze_backbone_epochs = %s with a randomly initialised "
                    "backbone: it stays random for that long. Set "
                    "model.backbone.pretrained to an ImageNet checkpoint, or set "
                    "freeze_backbone_epochs=0.", config.optimizer.freeze_backbone_epochs)
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=config.train.checkpoint_every_steps,
                                 max_to_keep=config.train.keep_checkpoints,
                                 remove_unfinished=True)
  nonfinite = guard.NonFiniteWatch(config.train.on_nonfinite, ckpt)
  resume_step = ckpt.latest_step()
  if resume_step is not None:  # Before any Orbax restore: the same model and recipe?
    guard.check_resume_config(checkpoint.config_to_json(ckpt.restore_config()),
                              checkpoint.config_to_json(config),
                              checkpoint_path=ckpt.path(resume_step),
                              allow_change=_ALLOW_CONFIG_CHANGE.value)
  abstract_state = state_lib.abstract_train_state(model, tx, data_config=cfg_data, mesh=mesh)
  guard.check_room_for_checkpoint(ckpt.directory, abstract_state,
                                  keep_checkpoints=config.train.keep_checkpoints)
  if resume_step is not None:
    state = ckpt.restore(abstract_state)
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
  else:
    state = state_lib.create_train_state(model, tx, seed=config.seed,
                                         data_config=cfg_data, mesh=mesh,
                                         backbone_config=config.model.backbone)
    if config.model.get("pretrained", ""):
      transfer = model_entry(config.model.name).transfer_pretrained
      if transfer is None:
        raise ValueError(f"model.pretrained is set, but model {config.model.name!r} starts "
                         "from model.backbone.pretrained (ImageNet weights) instead.")
      state = state_lib.start_from_run(state, tx, config.model.pretrained, mesh, transfer)
      logging.info("Started from the variables of %s.", config.model.pretrained)
  state = nonfinite.start(state, mesh)
  start_step = int(state.step)
  if jax.process_index() == 0:
    # A run killed after its last checkpoint logged steps that are trained again.
    for name in ("train_metrics.jsonl", "eval_metrics.jsonl"):
      guard.drop_rows_after(os.path.join(workdir, name), start_step)

  make_step = functools.partial(step_lib.make_train_step, get_objective(config.model.name),
                                config.loss, mesh, schedule, model=model,
                                grad_accum_steps=config.train.grad_accum_steps)
  train_step = make_step()
  # While the backbone is frozen: no gradient through it, BatchNorm as configured.
  frozen_step = (make_step(freeze_backbone=True,
                           frozen_backbone_bn=config.optimizer.freeze_backbone_bn)
                 if frozen_steps > start_step else None)
  fields = interface.input_fields(model)
  interface.check_flip(fields, config.eval.flip)
  batches, make_batches, test_clips = build.make_pipelines(
      cfg_data, dataset, readers, fields, train_sampler=sampler, seed=config.seed,
      start_step=start_step, **process)
  evaluator = inference.RecordingEvaluator.from_config(
      config.eval, model, mesh, query=dataset.query, gallery=dataset.gallery,
      make_batches=make_batches, test_clips=test_clips, workdir=workdir, seed=config.seed)
  writer = progress.TensorBoardWriter(workdir)
  logger = progress.ProgressLogger(workdir, total_steps=total_steps, start_step=start_step,
                                   global_batch_size=global_batch,
                                   every_steps=config.train.log_every_steps, writer=writer)
  logging.info("Training %s: %d epochs x %d steps (an epoch: %s), global batch %d on %d "
               "device(s).", config.model.name, config.schedule.epochs, steps_per_epoch,
               cfg_data.epoch, global_batch, mesh.size)

  # The loop: data -> train step -> checkpoint -> (periodic) evaluation.
  eval_every = config.train.eval_every_epochs * steps_per_epoch
  for step in range(start_step + 1, total_steps + 1):
    run_step = frozen_step if step <= frozen_steps else train_step
    state, metrics = run_step(state, sharding.to_global_batch(next(batches), mesh))
    logged = logger.update(step, metrics) is not None
    stopping = stop.signum is not None
    if jax.process_count() > 1:
      # Every process stops at the same step; agreeing waits for the device,
      # so it is asked on logging steps only.
      stopping = logged and distributed.any_process(stopping)
    # Non-finite steps are checked where the host waits anyway (logging, saving),
    # and always before a save: no state after a non-finite step is saved in
    # "stop" mode.
    if logged or stopping or step == total_steps or ckpt.should_save(step):
      nonfinite.check(state, step, metrics)
    ckpt.save(step, state, config)
    if stopping:
      logger.close()
      writer.close()
      ckpt.save(step, state, config, force=True)
      ckpt.wait()
      signum = stop.signum or signal.SIGTERM  # Another process got the signal.
      logging.warning("Stopped by signal %d at step %d; checkpoint saved. Re-run the same "
                      "command to resume.", signum, step)
      sys.exit(128 + signum)
    if eval_every and step % eval_every == 0 and step != total_steps:
      evaluate_and_write(evaluator, state, step, writer, config.model.name, cfg_data)
      logger.reset_timer(step)

  batches.close()  # Stop the training pipeline's background prefetching.
  logger.close()
  ckpt.save(total_steps, state, config, force=True)
  ckpt.wait()
  results = evaluate_and_write(evaluator, state, total_steps, writer, config.model.name,
                               cfg_data)
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    print(f"{dataset.name}: mAP {results['mAP']:.4f}  rank-1 {results['rank1']:.4f}  "
          f"rank-5 {results['rank5']:.4f}  mINP {results['mINP']:.4f}", flush=True)


if __name__ == "__main__":
  # A misnamed or wrongly typed --config.* override: a clear message, no traceback.
  from configs import common as config_common  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_common.parse_flags)
