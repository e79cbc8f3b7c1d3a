"""Two processes (jax.distributed, CPU collectives) train exactly like one.

``train.py`` runs a tiny baseline twice on the same synthetic set, global
batch (P4 x K2) and 2-device ``data`` mesh: once as one process with 2 fake
CPU devices (``--xla_force_host_platform_device_count=2``), once as two
processes on localhost with 1 CPU device each, joined by
``jax.distributed`` through the explicit ``--coordinator_address /
--num_processes / --process_id`` flags (``reidjax.distributed``). Each
process of the second run loads only its half of every training and
evaluation batch.

Tolerance: the two runs compile the same SPMD program over the same mesh;
only the transport of the cross-device reductions differs (XLA's in-process
all-reduce vs gloo between processes). With two participants an all-reduce
is one addition, a + b, which is commutative, so the runs should agree to
the bit (they do here). The assertions allow a relative 1e-6 on losses and
parameters (and 1e-6 absolute on parameters near zero): a few float32 ulps,
room for an all-reduce that scales before adding, far below what a wrong
batch (another half, another augmentation, a per-process BatchNorm or
triplet mining) changes (a loss differs in its first digits).
The evaluation metrics are rank counts over 14 queries; they must match to
1e-9.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import test_train as train_tests

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12  # 8 ids x 12 images / (P4 x K2): one epoch.
TIMEOUT_S = 600


def _command(workdir, data_root, *extra):
  """tests/test_train.py's tiny baseline, one epoch, smaller still, plus flags."""
  return train_tests._command(
      workdir, data_root, 1, **{"data.eval_batch_size": 8,
                                "model.backbone.stage_sizes": "(1,1,1,1)",
                                "train.checkpoint_every_steps": 6}) + list(extra)


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _run_together(runs, log_dir):
  """Starts every (command, env) at once and waits for all; the first failure
  stops the others (a process whose peer died would wait for it) and fails
  with its log. Returns the logs."""
  paths = [log_dir / f"process_{i}.log" for i in range(len(runs))]
  procs = []
  for (command, env), path in zip(runs, paths):
    with open(path, "w") as log:
      procs.append(subprocess.Popen(command, cwd=_ROOT, env=env, text=True, stdout=log,
                                    stderr=subprocess.STDOUT))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.returncode for p in procs if p.poll() is not None):
        break
      time.sleep(0.2)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  logs = [path.read_text() for path in paths]
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  return logs


def test_two_processes_train_evaluate_and_checkpoint_like_one(tmp_path):
  data_root = str(tmp_path / "market")
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  address = f"127.0.0.1:{_free_port()}"
  # All three at once (the synthetic set's writer is safe to race): on two
  # cores the one-process run mostly compiles while the pair trains.
  reference_log, log0, log1 = _run_together(
      [(_command(one, data_root), _env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))]
      + [(_command(two, data_root, f"--coordinator_address={address}", "--num_processes=2",
                   f"--process_id={i}"), _env()) for i in range(2)], tmp_path)
  assert "on 2 device(s)" in reference_log and "on 2 device(s)" in log0

  # Losses: every step once (process 0 alone writes the file), as one process.
  want, got = _rows(one / "train_metrics.jsonl"), _rows(two / "train_metrics.jsonl")
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want],
                             rtol=1e-6)
  assert len({r["loss"] for r in got}) > 1  # it trained (the batches differ)

  # Evaluation: each process embedded its half of query and gallery.
  want, got = (json.load(open(d / "results.json")) for d in (one, two))
  for key in ("mAP", "mINP", "rank1", "cmc", "num_valid_queries"):
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-9, err_msg=key)
  assert len(_rows(two / "eval_metrics.jsonl")) == 1

  # Only process 0 logs and writes: one TensorBoard file, no INFO from process 1.
  assert len([f for f in os.listdir(two) if f.startswith("events.out.tfevents")]) == 1
  assert "progress.py" in log0 and "progress.py" not in log1
  assert "runner.py" not in log1

  # The two-process checkpoint restores in this one-process, one-device run,
  # equals the one-process run's, and embeds the same.
  from reidjax.inference import ReidEmbedder
  restored = {d: ReidEmbedder.from_workdir(str(d)) for d in (one, two)}
  assert jax.process_count() == 1
  leaves = [jax.tree.leaves(restored[d].variables) for d in (one, two)]
  assert len(leaves[0]) == len(leaves[1]) > 0
  for a, b in zip(*leaves):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 16, 3), dtype=np.uint8)
  np.testing.assert_allclose(restored[two].embed(images), restored[one].embed(images),
                             rtol=1e-5, atol=1e-6)


# reidjax.distributed's decisions, without starting anything (fake environments).
_SLURM_STEP = {"SLURM_JOB_ID": "123", "SLURM_STEP_NODELIST": "node[01-02]",
               "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}


def test_launcher_detection_says_one_of_several_processes():
  from reidjax import distributed
  assert distributed.detect_launcher({}) is None
  # One task (a plain `python train.py` in an allocation, or srun -n 1): one process.
  assert distributed.detect_launcher({**_SLURM_STEP, "SLURM_NTASKS": "1"}) is None
  assert distributed.detect_launcher({**_SLURM_STEP, "SLURM_NTASKS": "4"}) == "slurm"
  assert distributed.detect_launcher({"OMPI_COMM_WORLD_SIZE": "1"}) is None
  assert distributed.detect_launcher({"OMPI_COMM_WORLD_SIZE": "2",
                                      "OMPI_MCA_orte_hnp_uri": "1.2:tcp://10.0.0.1:5"}) == "ompi"
  assert distributed.detect_launcher({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
  assert distributed.detect_launcher({"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                      "JOB_COMPLETION_INDEX": "0"}) == "k8s"
  # Several tasks without what JAX needs to find the coordinator: say what to do.
  with pytest.raises(RuntimeError, match="SLURM_STEP_NODELIST.*--coordinator_address"):
    distributed.detect_launcher({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1",
                                 "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})


def test_one_process_starts_nothing_and_partial_flags_are_an_error():
  from reidjax import distributed
  assert distributed.initialize(environ={}) is False
  assert distributed.initialize("10.0.0.1:1234", 1, 0, environ={}) is False
  assert distributed.initialize(environ={**_SLURM_STEP, "SLURM_NTASKS": "1"}) is False
  with pytest.raises(ValueError, match="--num_processes and --process_id.*num_processes=None"):
    distributed.initialize("10.0.0.1:1234", environ={})
  assert distributed.parse_device_ids("0, 1,2") == [0, 1, 2]
  assert distributed.parse_device_ids("") is None
  with pytest.raises(ValueError, match="comma-separated integers"):
    distributed.parse_device_ids("gpu0")


def test_host_local_copies_replicated_arrays():
  from reidjax import sharding
  mesh = sharding.make_data_mesh()
  tree = {"w": jax.device_put(np.arange(6.0).reshape(2, 3), sharding.replicated(mesh)),
          "n": 3}
  local = sharding.host_local(tree)
  assert isinstance(local["w"], np.ndarray) and local["n"] == 3
  np.testing.assert_array_equal(local["w"], np.arange(6.0).reshape(2, 3))


def test_any_process_on_one_process_is_the_flag():
  from reidjax import distributed
  assert distributed.any_process(True) is True
  assert distributed.any_process(np.bool_(False)) is False
