"""Crash-safe training (issue 17 items 1-4, 6): SIGKILL anywhere resumes
bitwise, non-finite steps never update or save the state, one run per workdir
and no silent config change on resume, workdir problems before the first step,
checkpoints across device counts.

The SIGKILL test runs train.py in subprocesses; everything else runs in this
process (``train.main`` included) on the tiny baseline of tests/test_train.py.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from reidjax import checkpoint, sharding
from reidjax.models import build_model
from reidjax.train import guard, optimizer, state as state_lib, step as step_lib
from tests.test_train import _command, _env
from tests.train import tiny_model as tiny

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
TMP_SUFFIX = ".orbax-checkpoint-tmp"
TINY_MODEL = "tests.train.tiny_model:ENTRY"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("synthetic") / "market")


def _run_main(workdir, data_root, config="configs/baseline.py:synthetic", flag_args=(),
              **overrides):
  """``train.main`` in this process on the tiny set of tests/test_train.py; on
  the baseline config, with the model of tests/train/tiny_model.py."""
  import train  # pylint: disable=g-import-not-at-top
  from configs import common as config_common  # pylint: disable=g-import-not-at-top
  if config.startswith("configs/baseline.py"):
    overrides = {"model.name": TINY_MODEL, **overrides}
  argv = _command(workdir, data_root, 1, **overrides)[1:]
  argv[argv.index("--config") + 1] = config
  handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  argv += list(flag_args)
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # the last parse's overrides; this one defines its own
  saved_argv, sys.argv = sys.argv, argv  # config_flags reads its overrides from sys.argv
  try:
    config_common.parse_flags(argv)
  finally:
    sys.argv = saved_argv
  try:
    train.main([])
  finally:
    guard.release_held_locks()
    for signum, handler in handlers.items():
      signal.signal(signum, handler)


# -- 1. SIGKILL anywhere ------------------------------------------------------


def _finished_steps(directory):
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit())


def _unfinished(directory):
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(n for n in names if n.endswith(TMP_SUFFIX))


def _last_logged_step(path):
  try:
    with open(path, "rb") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    with contextlib.suppress(ValueError):
      return json.loads(line)["step"]
  return 0


def _kill_when(proc, condition, delay=0.0, timeout=400, signum=signal.SIGKILL):
  """Sends ``signum`` to ``proc`` ``delay`` s after ``condition()`` holds (polled
  every 2 ms); returns its exit code."""
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if condition():
      time.sleep(delay)
      proc.send_signal(signum)
      return proc.wait(timeout=300)
    time.sleep(0.002)
  raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill point")


def test_sigkill_anywhere_resumes_bitwise(tmp_path, data_root):
  """Three SIGKILLs (after a random step, in the middle of an asynchronous
  save, at a random moment) and a SIGTERM, the same command re-run after
  each: the final state and every logged loss equal an uninterrupted run's
  bit for bit, a half-written checkpoint is never restored, and SIGTERM saves
  the step it stopped at and says how to resume."""
  # The compiled programs are cached on disk between the runs: only startup
  # time changes (the cache holds the very programs the first run compiled).
  env = {**_env(), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  extra = {"train.checkpoint_every_steps": 2, "train.keep_checkpoints": 2}
  total = 24  # 2 epochs of 12 steps
  reference = tmp_path / "reference"
  subprocess.run(_command(reference, data_root, 2, **extra), cwd=_ROOT, env=env, check=True,
                 capture_output=True, timeout=600)

  workdir = tmp_path / "killed"
  ckpts = str(workdir / "checkpoints")
  metrics = str(workdir / "train_metrics.jsonl")
  seed = int.from_bytes(os.urandom(4), "little")
  rng = np.random.default_rng(seed)
  why = f"(kill seed {seed})"
  logs = []

  def launch():
    log = open(tmp_path / f"run{len(logs)}.log", "w+", encoding="utf-8")
    logs.append(log)
    return subprocess.Popen(_command(workdir, data_root, 2, **extra), cwd=_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)

  def last_log():
    logs[-1].seek(0)
    return logs[-1].read()

  training = []

  def in_loop():
    """This run has reached its loop (and removed the killed run's leftovers)."""
    if not training and "Training baseline" in last_log():
      training.append(True)
    return bool(training)

  def reached(step):
    """This run (not the killed one before it) has logged ``step``."""
    return in_loop() and _last_logged_step(metrics) >= step

  def saving(from_step):
    """The unfinished save of a step >= ``from_step`` being written now, or None."""
    steps = [int(n.split(".")[0]) for n in _unfinished(ckpts)]
    return next((s for s in sorted(steps) if s >= from_step), None) if in_loop() else None

  previous = None
  for kill in ("after a step", "mid-save", "at a random moment", "sigterm", None):
    training.clear()
    finished = _finished_steps(ckpts)
    start = finished[-1] if finished else 0
    proc = launch()
    if kill == "after a step":
      at_step = start + int(rng.integers(2, 9))
      _kill_when(proc, lambda: reached(at_step))
    elif kill == "mid-save":
      # The save of a random later step, killed while Orbax writes it into
      # "<step>.orbax-checkpoint-tmp", before it renames it to "<step>".
      # (Or of the next one, if a loaded machine let that one slip by.)
      target = start + 2 * int(rng.integers(1, 4))
      _kill_when(proc, lambda: saving(target) is not None)
      killed_in = saving(target)
      assert killed_in is not None and killed_in not in _finished_steps(ckpts), why
    elif kill == "at a random moment":
      # In a step, a save, a log write: wherever 0-300 ms after a step lands.
      at_step = start + int(rng.integers(1, 6))
      _kill_when(proc, lambda: reached(at_step), delay=rng.uniform(0, 0.3))
    elif kill == "sigterm":
      at_step = start + int(rng.integers(1, 6))
      returncode = _kill_when(proc, lambda: reached(at_step), signum=signal.SIGTERM)
      assert returncode == 128 + signal.SIGTERM, (why, last_log()[-3000:])
      assert "Re-run the same command to resume" in last_log(), why
      assert _last_logged_step(metrics) in _finished_steps(ckpts), why  # saved on the way out
    else:
      assert proc.wait(timeout=600) == 0, (why, last_log()[-3000:])
    log = last_log()
    if start:
      # The newest *finished* checkpoint, never an unfinished save.
      resumed = re.search(r"Resumed from \S+ at step (\d+)", log)
      assert resumed and int(resumed.group(1)) == start, (why, kill, log[-3000:])
    if previous not in (None, "sigterm"):  # After a SIGKILL: the dead run's lock is taken over.
      assert "Took over the stale lock" in log, (why, log[-3000:])
    previous = kill
  assert _unfinished(ckpts) == [], why

  # Every step logged exactly once, with the uninterrupted run's loss.
  def losses(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in rows]
  got, want = losses(metrics), losses(reference / "train_metrics.jsonl")
  assert [s for s, _ in got] == list(range(1, total + 1)), why
  assert got == want, why
  final = ocp.StandardCheckpointer().restore(os.path.join(ckpts, str(total), "state"))
  expected = ocp.StandardCheckpointer().restore(
      str(reference / "checkpoints" / str(total) / "state"))
  assert jax.tree.structure(final) == jax.tree.structure(expected)
  for path, a, b in zip(jax.tree_util.tree_flatten_with_path(final)[0],
                        jax.tree.leaves(final), jax.tree.leaves(expected)):
    assert np.array_equal(np.asarray(a), np.asarray(b)), (why, path[0])
  assert (json.load(open(workdir / "results.json"))["mAP"]
          == json.load(open(reference / "results.json"))["mAP"])


def test_an_unfinished_save_is_never_listed_and_the_trainer_removes_it(tmp_path):
  """Orbax's temporary directory + rename, pinned: a killed save's
  ``<step>.orbax-checkpoint-tmp`` is invisible to readers, left alone by them,
  and removed by the training run's Checkpointer."""
  tree = {"w": np.arange(6, dtype=np.float32), "step": np.int32(2)}
  config = ml_collections.ConfigDict({"model": {"name": "baseline"}})
  writer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=2, remove_unfinished=True)
  writer.save(2, tree, config)
  writer.wait()
  writer.close()
  half_written = tmp_path / "checkpoints" / f"4{TMP_SUFFIX}" / "state"
  half_written.mkdir(parents=True)
  (half_written / "manifest.ocdbt").write_bytes(b"\x00" * 7)  # torn
  reader = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
  assert reader.latest_step() == 2 and reader.all_steps() == [2]
  reader.close()
  assert _unfinished(tmp_path / "checkpoints") == [f"4{TMP_SUFFIX}"]  # a reader keeps it
  trainer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=2, remove_unfinished=True)
  assert trainer.latest_step() == 2
  trainer.save(4, {"w": tree["w"] + 1, "step": np.int32(4)}, config)
  trainer.wait()
  assert _unfinished(tmp_path / "checkpoints") == [] and trainer.all_steps() == [2, 4]
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)
  np.testing.assert_array_equal(trainer.restore(target)["w"], tree["w"] + 1)
  trainer.close()


# -- 4. Workdir problems -------------------------------------------------------


def test_a_failed_save_names_its_path_and_keeps_the_earlier_checkpoints(tmp_path,
                                                                      monkeypatch):
  from etils import epath  # pylint: disable=g-import-not-at-top
  tree = {"w": np.arange(6, dtype=np.float32)}
  config = ml_collections.ConfigDict({"model": {"name": "baseline"}})
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=2, remove_unfinished=True)
  ckpt.save(2, tree, config)
  ckpt.wait()
  path_class = type(epath.Path(str(tmp_path)))
  write_text = path_class.write_text

  def disk_full(path, *args, **kwargs):
    if path.name == "metadata" and "config" in path.parent.name:
      raise OSError(28, "No space left on device", str(path))
    return write_text(path, *args, **kwargs)

  monkeypatch.setattr(path_class, "write_text", disk_full)
  assert ckpt.save(4, {"w": tree["w"] + 1}, config)  # fails in the background
  directory = os.path.join(str(tmp_path), "checkpoints")
  with pytest.raises(checkpoint.CheckpointWriteError) as failed:
    ckpt.save(6, {"w": tree["w"] + 2}, config)  # the failure surfaces, for step 4
  message = str(failed.value)
  assert message.startswith(f"Writing the checkpoint of step 4 to {directory}/4 failed: "
                            "OSError: [Errno 28] No space left on device"), message
  assert (f"The earlier checkpoints are intact (steps [2] in {directory}); re-running the "
          "same command resumes from step 2 once the cause is fixed") in message
  monkeypatch.undo()
  ckpt.close()
  after = checkpoint.Checkpointer(str(tmp_path), save_every_steps=2)
  assert after.latest_step() == 2
  np.testing.assert_array_equal(after.restore(
      {"w": jax.ShapeDtypeStruct((6,), np.float32)})["w"], tree["w"])
  after.close()


def _refusal_as_unprivileged_user(check, *args) -> str:
  """``str`` of the ``RunRefused`` that ``check(*args)`` raises, run as a user
  that file permissions apply to: root writes anywhere, so as root the check
  runs in a forked child that has become ``nobody``."""
  if os.geteuid() != 0:
    try:
      check(*args)
    except guard.RunRefused as refused:
      return str(refused)
    return ""
  read_end, write_end = os.pipe()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # JAX warns about fork in a threaded process
    pid = os.fork()
  if pid == 0:  # The child: only os calls, then _exit.
    message = b""
    try:
      os.setuid(65534)
      check(*args)
    except guard.RunRefused as refused:
      message = str(refused).encode()
    finally:
      os.write(write_end, message)
      os._exit(0)
  os.close(write_end)
  with os.fdopen(read_end, "rb") as f:
    message = f.read().decode()
  os.waitpid(pid, 0)
  return message


def test_a_read_only_workdir_is_refused_before_anything_runs(tmp_path):
  workdir = tmp_path / "read_only"
  (workdir / "checkpoints").mkdir(parents=True)
  workdir.chmod(0o555)
  try:
    message = _refusal_as_unprivileged_user(guard.check_workdir_writable, str(workdir))
  finally:
    workdir.chmod(0o755)
  assert message == (
      f"Cannot write to {workdir} (PermissionError: Permission denied), so no checkpoint or "
      "metrics could be saved. Fix its permissions (or free the file system), or pass a "
      "--workdir you can write to.")
  guard.check_workdir_writable(str(workdir))  # writable again: no error


def test_a_disk_too_full_for_one_checkpoint_stops_before_the_first_step(
    tmp_path, data_root, monkeypatch):
  """train.main with a disk of 1 MiB free: refused before any step, with the
  size of one checkpoint of this state."""
  import shutil  # pylint: disable=g-import-not-at-top
  disk = shutil.disk_usage(str(tmp_path))
  monkeypatch.setattr(shutil, "disk_usage",
                      lambda path: disk._replace(free=2**20, used=disk.total - 2**20))
  workdir = tmp_path / "full"
  with pytest.raises(guard.RunRefused) as refused:
    _run_main(workdir, data_root)
  message = str(refused.value)
  needed = re.search(r"takes about ([\d.,]+) MiB", message)
  assert message.startswith(f"Not enough disk space for one checkpoint in {workdir}/"
                            "checkpoints: a checkpoint of this model takes about "), message
  assert message.endswith(" MiB, the disk has 1.0 MiB free. Free some space or pass a "
                          "--workdir on another disk."), message
  # The state of the run's model and optimizer: its bytes + 10 % + 1 MiB.
  from configs import baseline  # pylint: disable=g-import-not-at-top
  config = baseline.get_config("synthetic")
  config.model.name = TINY_MODEL
  config.model.backbone.width = 4
  abstract = state_lib.abstract_train_state(
      build_model(config.model, num_classes=8),
      optimizer.make_optimizer(config.optimizer, 1e-3),
      data_config=ml_collections.ConfigDict(dict(height=32, width=16, video=False)),
      mesh=sharding.make_data_mesh())
  assert float(needed.group(1).replace(",", "")) == pytest.approx(
      (guard.state_bytes(abstract) * 1.1 + 2**20) / 2**20, abs=0.05)
  assert not os.path.exists(workdir / "train_metrics.jsonl")
  assert not os.path.exists(workdir / "train.lock")  # released


# -- 3. One workdir, one run ---------------------------------------------------


def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path, data_root):
  workdir = tmp_path / "busy"
  workdir.mkdir()
  held = guard.WorkdirLock(str(workdir)).acquire()  # another open file: another run
  try:
    with pytest.raises(guard.RunRefused) as refused:
      _run_main(workdir, data_root)
  finally:
    held.release()
  owner = json.loads(json.dumps({"pid": os.getpid()}))
  assert re.fullmatch(
      rf"The workdir {workdir} is in use by another train.py \(pid {owner['pid']} on host "
      rf"\S+, started \S+; lock file {workdir}/train.lock\)\. Wait for that run to finish "
      r"or stop it, or pass another --workdir\.", str(refused.value)), str(refused.value)
  assert not os.path.exists(workdir / "train.lock")
  assert not os.path.exists(workdir / "checkpoints")  # refused before the Checkpointer


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen(["true"])
  dead.wait()
  lock_file = tmp_path / guard.LOCK_FILE
  lock_file.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere",
                                   "started": "2026-01-01T00:00:00+00:00"}))
  with caplog.at_level("WARNING"):
    lock = guard.WorkdirLock(str(tmp_path)).acquire()
  assert (f"Took over the stale lock {lock_file} of a train.py that no longer runs (pid "
          f"{dead.pid} on host elsewhere, started 2026-01-01T00:00:00+00:00).") in caplog.text
  assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock_file.exists()


def test_only_settings_that_change_the_trained_function_block_a_resume():
  from configs import baseline  # pylint: disable=g-import-not-at-top
  stored = checkpoint.config_to_json(baseline.get_config("synthetic"))
  changed = baseline.get_config("synthetic")
  # Free: evaluation, logging, checkpoint frequency, the dataset's location.
  changed.eval.max_rank = 10
  changed.eval.rerank = True
  changed.train.log_every_steps = 7
  changed.train.checkpoint_every_steps = 3
  changed.train.on_nonfinite = "skip"
  changed.data.root = "/elsewhere/market"
  changed.data.eval_batch_size = 16
  assert guard.config_changes(stored, checkpoint.config_to_json(changed)) == []
  # Blocking: model, data, optimizer, schedule, loss, seed; new and lost keys.
  changed.model.backbone.stage_sizes = (2, 1, 1, 1)
  changed.data.num_instances = 8
  changed.optimizer.lr = 0.5
  changed.schedule.milestones = (20,)
  changed.loss.triplet_margin = None
  changed.seed = 3
  del changed.loss["ce_weight"]
  with changed.unlocked():
    changed.model.new_field = 1
  current = checkpoint.config_to_json(changed)
  assert guard.config_changes(stored, current) == [
      ("data.num_instances", 4, 8), ("loss.ce_weight", 1.0, "(absent)"),
      ("loss.triplet_margin", 0.3, None), ("model.backbone.stage_sizes", [1, 1, 1, 1],
                                          [2, 1, 1, 1]),
      ("model.new_field", "(absent)", 1), ("optimizer.lr", 0.001, 0.5),
      ("schedule.milestones", [22, 28], [20]), ("seed", 0, 3)]
  with pytest.raises(guard.RunRefused) as refused:
    guard.check_resume_config(stored, current, checkpoint_path="/w/checkpoints/8",
                              allow_change=False)
  assert str(refused.value).splitlines()[:3] == [
      "Refusing to resume /w/checkpoints/8: this config changes what is trained "
      "(8 setting(s)):",
      "  data.num_instances: 4 in the checkpoint, 8 now",
      "  loss.ce_weight: 1.0 in the checkpoint, (absent) now"]
  guard.check_resume_config(stored, current, checkpoint_path="/w/checkpoints/8",
                            allow_change=True)  # logged, not refused


# -- 2. Non-finite losses ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_step():
  """tests/train/tiny_model.py's jitted step on this process's one device."""
  model, tx = tiny.model_and_optimizer()
  mesh = sharding.make_data_mesh()

  def new_state():
    return state_lib.create_train_state(model, tx, seed=0, data_config=tiny.CONFIG.data,
                                        mesh=mesh)

  def abstract_state():
    return state_lib.abstract_train_state(model, tx, data_config=tiny.CONFIG.data,
                                          mesh=mesh)

  train_step = step_lib.make_train_step(tiny.ENTRY.objective, tiny.CONFIG.loss, mesh,
                                        model=model)
  return new_state, abstract_state, train_step, mesh


def _global(batch, mesh):
  return sharding.to_global_batch(batch, mesh)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _trees_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_nonfinite_step_changes_nothing_but_its_record(tiny_step, tmp_path, caplog):
  new_state, _, train_step, mesh = tiny_step
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
  stop = guard.NonFiniteWatch("stop", ckpt)
  skip = guard.NonFiniteWatch("skip", ckpt)
  state = skip.start(stop.start(new_state(), mesh), mesh)
  initial = _host(state.params)
  state, good = train_step(state, _global(tiny.batch(1), mesh))
  ckpt.save(1, state, tiny.CONFIG)
  before = _host(state)
  state, bad = train_step(state, _global(tiny.batch(2, nan=True), mesh))
  after, bad = _host(state), _host(bad)
  # Params, optimizer state, BatchNorm statistics: the last good ones, bitwise.
  for field in ("params", "opt_state", "batch_stats", "rng"):
    assert _trees_equal(getattr(after, field), getattr(before, field)), field
  assert int(after.step) == 2
  record = {k: int(v) for k, v in after.nonfinite.items()}
  assert record == {"count": 1, "session_first_step": 2, "last_step": 2,
                    "session_first_terms": record["last_terms"],
                    "last_terms": record["last_terms"]}
  terms = step_lib.nonfinite_terms(record["last_terms"], bad)
  # The recorded terms are exactly the metrics that are not finite.
  assert terms == sorted(k for k in step_lib.checked_terms(bad) if not np.isfinite(bad[k]))
  assert {"loss", "ce", "triplet", "grad_norm", "update_norm"} <= set(terms)
  assert "accuracy" not in terms  # an argmax over NaN logits is still a number
  assert (float(good["nonfinite"]), float(bad["nonfinite"])) == (0.0, 1.0)
  state, third = train_step(state, _global(tiny.batch(3), mesh))
  assert float(third["nonfinite"]) == 0.0 and int(state.nonfinite["count"]) == 1
  assert not _trees_equal(_host(state.params), after.params)  # good steps update again

  # The logged norms, independently: the first SGD update is -lr g, so
  # ||params_1 - params_0|| = update_norm = lr grad_norm.
  def distance(a, b):
    return np.sqrt(sum(np.sum((np.asarray(x, np.float64) - y) ** 2)
                       for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
  np.testing.assert_allclose(float(good["update_norm"]),
                             distance(before.params, initial), rtol=1e-4)
  np.testing.assert_allclose(float(good["update_norm"]),
                             tiny.LEARNING_RATE * float(good["grad_norm"]), rtol=1e-5)

  # The host reads the record: "stop" names the step, the terms, the last good checkpoint.
  with pytest.raises(guard.RunRefused) as stopped:
    stop.check(state, 3, third)
  assert str(stopped.value) == (
      f"Training stopped at step 3: the loss or gradient was not finite at step 2 "
      f"(non-finite: {', '.join(terms)}); 1 step(s) so far had their update dropped, and "
      f"nothing after step 1 was saved. The last good checkpoint is {tmp_path}/checkpoints/1 "
      "(step 1), intact: re-running the same command resumes from it, and will reach the "
      "same step again unless the cause changes (a learning rate too high, a corrupt "
      "batch, an overflow in a low precision). Or set --config.train.on_nonfinite=skip to "
      "drop such updates and go on.")
  # "skip" logs the count once and goes on.
  with caplog.at_level("WARNING"):
    skip.check(state, 3, third)
    skip.check(state, 3, third)
  warnings_logged = [r.getMessage() for r in caplog.records if "Dropped" in r.getMessage()]
  assert warnings_logged == [
      f"Dropped 1 update(s) with a non-finite loss or gradient by step 3 (1 in this run so "
      f"far; train.on_nonfinite = 'skip'): the first this session at step 2 (non-finite: "
      f"{', '.join(terms)}), the latest at step 2 (non-finite: {', '.join(terms)})."]
  # A resumed run keeps the count, opens a new session, and warns only of new ones.
  resumed = guard.NonFiniteWatch("skip", ckpt)
  state = resumed.start(state, mesh)
  assert {k: int(v) for k, v in _host(state.nonfinite).items()} == {
      "count": 1, "session_first_step": 0, "session_first_terms": 0, "last_step": 0,
      "last_terms": 0}
  resumed.check(state, 3, third)  # nothing new: no error, no warning
  ckpt.close()
  with pytest.raises(ValueError, match=r"train.on_nonfinite must be one of \('stop', "
                     r"'skip'\), got 'ignore'."):
    guard.NonFiniteWatch("ignore", ckpt)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, data_root):
  """train.py (in-process) with one NaN pixel in the batch of step 5: it stops.
  Checkpoints every 2 steps, a log line (and so a check) every step."""
  workdir = tmp_path_factory.mktemp("nan") / "run"
  calls = []
  to_global_batch = sharding.to_global_batch

  def nan_at_step_5(batch, mesh):
    calls.append(None)
    if len(calls) == 5:
      batch = {**batch, "images": batch["images"].copy()}
      batch["images"][0, 0, 0, 0] = np.nan
    return to_global_batch(batch, mesh)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sharding, "to_global_batch", nan_at_step_5)
    with pytest.raises(guard.RunRefused) as stopped:
      _run_main(workdir, data_root, **{"train.checkpoint_every_steps": 2,
                                       "train.log_every_steps": 1})
  return workdir, str(stopped.value)


def test_training_stops_at_a_nan_and_keeps_the_last_good_checkpoint(stopped_run):
  workdir, message = stopped_run
  with open(workdir / "train_metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert [r["nonfinite"] for r in rows] == [0, 0, 0, 0, 1]
  assert all(np.isfinite(r["grad_norm"]) and r["update_norm"] > 0 for r in rows[:4])
  terms = sorted(k for k, v in rows[4].items() if k not in ("lr", "nonfinite", "step",
                                                            "images_per_s", "eta_s")
                 and not np.isfinite(v))
  assert message == (
      f"Training stopped at step 5: the loss or gradient was not finite at step 5 "
      f"(non-finite: {', '.join(terms)}); 1 step(s) so far had their update dropped, and "
      f"nothing after step 4 was saved. The last good checkpoint is {workdir}/checkpoints/4 "
      "(step 4), intact: re-running the same command resumes from it, and will reach the "
      "same step again unless the cause changes (a learning rate too high, a corrupt "
      "batch, an overflow in a low precision). Or set --config.train.on_nonfinite=skip to "
      "drop such updates and go on.")
  assert "loss" in terms and "grad_norm" in terms
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "4"]  # Orbax saves step 1 too
  state = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "4" / "state"))
  assert int(state["step"]) == 4 and int(state["nonfinite"]["count"]) == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_resuming_with_another_recipe_or_model_is_refused_before_restoring(
    stopped_run, data_root):
  workdir, _ = stopped_run
  where = f"{workdir}/checkpoints/4"
  # Logging may change; the width and the learning rate may not.
  with pytest.raises(guard.RunRefused) as refused:
    _run_main(workdir, data_root, **{"model.backbone.width": 8, "optimizer.lr": 0.01,
                                     "train.log_every_steps": 5})
  assert str(refused.value) == (
      f"Refusing to resume {where}: this config changes what is trained (2 setting(s)):\n"
      "  model.backbone.width: 4 in the checkpoint, 8 now\n"
      "  optimizer.lr: 0.001 in the checkpoint, 0.01 now\n"
      "Resume with the checkpoint's values (drop those overrides), pass another --workdir "
      "for a new run, or pass --allow_config_change to go on with the new values.")
  # Another model: named, even with --allow_config_change.
  with pytest.raises(guard.RunRefused) as refused:
    _run_main(workdir, data_root, config="configs/dcanet.py:synthetic",
              flag_args=["--allow_config_change"])
  assert str(refused.value) == (
      f"The checkpoint {where} is of model {TINY_MODEL!r}; this config trains model "
      "'dcanet'. "
      "A checkpoint resumes only as the model that wrote it: pass another --workdir for "
      "this run.")
  # --allow_config_change with shapes that cannot fit: our error, not Orbax's traceback.
  with pytest.raises(ValueError) as unfit:
    _run_main(workdir, data_root, flag_args=["--allow_config_change"],
              **{"model.backbone.width": 8})
  assert str(unfit.value).startswith(
      f"The checkpoint {where} does not fit the train state this config builds (a "
      "different model, width or optimizer?): ValueError: "), str(unfit.value)
  assert str(unfit.value).endswith("Resume it with the config stored beside it, or train "
                                   "in another --workdir.")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "4"]  # untouched


# -- 6. Device counts ----------------------------------------------------------


def test_a_checkpoint_of_2_devices_continues_on_1_and_4_with_the_same_losses(
    tmp_path, tiny_step):
  """Written on 2 fake CPU devices (a subprocess), continued on 4 (a
  subprocess) and on this process's 1 device (the same jitted step as above)."""
  # Low XLA optimisation: compiles twice as fast; the same for every device count.
  env = {**_env(), "XLA_FLAGS": "--xla_backend_optimization_level=0"}

  def run(devices, mode):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train.run_device_count_resume", "--devices",
         str(devices), "--workdir", str(tmp_path), "--mode", mode],
        cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])

  on_two = result(run(2, "write"))
  four = run(4, "resume")
  _, abstract_state, train_step, mesh = tiny_step
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=2)
  state = ckpt.restore(abstract_state())
  ckpt.close()
  on_one = {"devices": jax.device_count(), "first_step": int(state.step) + 1,
            "state_on_devices": len(jax.tree.leaves(state.opt_state)[0].sharding.device_set),
            "losses": []}
  for step in range(int(state.step) + 1, 6):
    state, metrics = train_step(state, _global(tiny.batch(step), mesh))
    on_one["losses"].append(float(metrics["loss"]))
  on_four = result(four)
  for got, devices in ((on_two, 2), (on_one, 1), (on_four, 4)):
    assert (got["devices"], got["state_on_devices"], got["first_step"]) == (devices,
                                                                            devices, 3)
  # Same state, same global batches: only the order of the float32 sums over
  # the batch (BatchNorm statistics, the losses' means) differs with the split,
  # about 1e-7 relative per sum, 1e-6 after three steps (measured); 2e-5 as
  # tests/train/test_step.py. (This process compiles at XLA's full
  # optimisation, the subprocesses at level 0: also only float rounding.)
  np.testing.assert_allclose(on_one["losses"], on_two["losses"], rtol=2e-5)
  np.testing.assert_allclose(on_four["losses"], on_two["losses"], rtol=2e-5)
  assert np.ptp(on_two["losses"]) > 0.1  # training moved
