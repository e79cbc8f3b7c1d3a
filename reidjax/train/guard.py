"""Guards of a training run: one run per workdir, a resume that trains the same
function, room for a checkpoint, and no non-finite update ever saved.

No paper equation here; this is the run's bookkeeping (issue 17). What
``train.py`` checks, in order, before its first step:

- ``check_workdir_writable``: the workdir (and its ``checkpoints/``) can be
  written.
- ``WorkdirLock``: one ``train.py`` per workdir. A lock file
  ``<workdir>/train.lock`` names the owner (pid, host, start time) and is held
  with ``fcntl.flock``, which the kernel releases when the owner dies, even by
  SIGKILL; the next run then takes the stale lock over (and logs it).
- ``check_room_for_checkpoint``: the disk holds at least one checkpoint of
  this train state (its bytes, from the abstract state, plus 10 % and 1 MiB).
- ``check_resume_config``: a resumed run's config trains the same function
  as the checkpoint's stored config (model, data, optimizer, schedule, loss,
  seed); evaluation, logging and checkpoint-frequency settings, dataset
  paths and start-up weights (``RESUMABLE_CHANGES``) may change.

During training, ``NonFiniteWatch`` reads the state's record of non-finite
steps (``reidjax.train.state.nonfinite_record``, kept by the jitted step) on
logging steps and before every checkpoint save, when the host synchronises
anyway: ``train.on_nonfinite = "stop"`` stops with the step, the non-finite
terms and the last good checkpoint; ``"skip"`` logs the count and goes on.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from reidjax.train import state as state_lib, step as step_lib

LOCK_FILE = "train.lock"
ON_NONFINITE = ("stop", "skip")

# Config keys (dotted; a trailing "." covers a whole section) whose change
# does not change the function being trained: they may differ between a
# checkpoint and the config that resumes it. Everything else (model, data,
# optimizer, schedule, loss, seed ...) must match unless --allow_config_change.
RESUMABLE_CHANGES = (
    "eval.",
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.eval_every_epochs", "train.on_nonfinite",
    # Where the same dataset lives, and how the test split is batched / clipped.
    "data.root", "data.tfds_data_dir", "data.source", "data.eval_batch_size",
    "data.test_clip_length", "data.test_clip_strategy", "data.test_clip_stride",
    # Start-up weights: a resumed run takes every weight from its checkpoint.
    "model.backbone.pretrained", "model.backbone.from_scratch", "model.pretrained",
)


class RunRefused(SystemExit):
  """``train.py`` cannot start or go on; the message says why and what to do.

  A ``SystemExit``: ``train.py`` prints the message, without a traceback, and
  exits with status 1.
  """


def _mib(num_bytes: float) -> str:
  return f"{num_bytes / 2**20:,.1f} MiB"


# -- The workdir ------------------------------------------------------------


def check_workdir_writable(workdir: str) -> None:
  """Creates ``workdir`` if needed and writes (and removes) a probe file in it
  and in its ``checkpoints/``; ``RunRefused`` naming the path if that fails."""
  workdir = os.path.abspath(workdir)
  for directory in (workdir, os.path.join(workdir, "checkpoints")):
    if directory != workdir and not os.path.isdir(directory):
      continue
    try:
      os.makedirs(directory, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
        pass
    except OSError as error:
      raise RunRefused(
          f"Cannot write to {directory} ({type(error).__name__}: "
          f"{error.strerror or error}), so no checkpoint or metrics could be saved. "
          "Fix its permissions (or free the file system), or pass a --workdir you can "
          "write to.") from error


def state_bytes(abstract_state: Any) -> int:
  """Bytes of every array of a (possibly abstract) train state."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_state))


def check_room_for_checkpoint(directory: str, abstract_state: Any, *,
                              keep_checkpoints: int) -> int:
  """``RunRefused`` when ``directory``'s disk cannot hold one checkpoint of the
  state; a warning when it cannot hold ``keep_checkpoints + 1`` (Orbax writes
  a new checkpoint before deleting the oldest). Returns the bytes needed."""
  needed = int(state_bytes(abstract_state) * 1.1) + 2**20  # + metadata and config
  existing = os.path.abspath(directory)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  if free < needed:
    raise RunRefused(
        f"Not enough disk space for one checkpoint in {directory}: a checkpoint of this "
        f"model takes about {_mib(needed)}, the disk has {_mib(free)} free. Free some "
        "space or pass a --workdir on another disk.")
  if free < needed * (keep_checkpoints + 1):
    logging.warning("The disk of %s has %s free, less than the %d checkpoints of about "
                    "%s each that train.keep_checkpoints = %d needs at a time: a later "
                    "save may fail.", directory, _mib(free), keep_checkpoints + 1,
                    _mib(needed), keep_checkpoints)
  return needed


def _owner() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds")}


def _describe(owner: Mapping[str, Any]) -> str:
  return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
          f"{owner.get('started', '?')}")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


class WorkdirLock:
  """``<workdir>/train.lock``: one training run per workdir.

  ``acquire`` takes an exclusive ``fcntl.flock`` on the file and writes the
  owner into it; a second run finds the lock held and stops with
  ``RunRefused`` naming the owner. The kernel drops the flock when its
  process dies (SIGKILL included), so a file left by a dead run is taken over
  with a warning. On file systems without flock the owner's pid is checked
  instead (same host: alive or not; another host: refused). ``release``
  (also at exit) removes the file.
  """

  _held: set["WorkdirLock"] = set()

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def _in_use(self, owner: Mapping[str, Any]) -> RunRefused:
    return RunRefused(
        f"The workdir {os.path.dirname(self.path)} is in use by another train.py "
        f"({_describe(owner)}; lock file {self.path}). Wait for that run to finish or "
        "stop it, or pass another --workdir.")

  def acquire(self) -> "WorkdirLock":
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise self._in_use(owner) from None
      except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          os.close(fd)
          raise
        self._check_owner_without_flock(_read_owner(fd))
      # The owner may have released (removed) the file between our open and
      # flock: then our lock is on a dead inode; open the new file instead.
      try:
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    previous = _read_owner(fd)
    if previous:
      logging.warning("Took over the stale lock %s of a train.py that no longer runs "
                      "(%s).", self.path, _describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_owner()).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    WorkdirLock._held.add(self)
    return self

  def _check_owner_without_flock(self, owner: Mapping[str, Any]) -> None:
    if not owner or owner.get("pid") == os.getpid():
      return
    if owner.get("host") != socket.gethostname():
      raise RunRefused(
          f"{self.path} names a train.py on another host ({_describe(owner)}) and this "
          "file system has no locks to tell whether it still runs. If it does not, "
          "delete the lock file and re-run; otherwise pass another --workdir.")
    if _pid_alive(int(owner["pid"])):
      raise self._in_use(owner)

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)  # Still holding the flock: no one else owns this file.
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None
    WorkdirLock._held.discard(self)


def _read_owner(fd: int) -> dict[str, Any]:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, OSError):
    return {}


def release_held_locks() -> None:
  """Releases every workdir lock this process holds (at exit; in-process tests)."""
  for lock in list(WorkdirLock._held):
    lock.release()


def lock_workdir(workdir: str) -> WorkdirLock | None:
  """Process 0 locks ``workdir`` (a multi-host run shares one workdir)."""
  if jax.process_index() != 0:
    return None
  import atexit  # pylint: disable=g-import-not-at-top
  atexit.register(release_held_locks)
  return WorkdirLock(workdir).acquire()


# -- Resuming ---------------------------------------------------------------

_MISSING = "(absent)"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _resumable(key: str) -> bool:
  return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES)


def config_changes(stored: Mapping[str, Any],
                   current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """``(key, stored value, current value)`` of every setting that changes the
  trained function, for two JSON configs (``checkpoint.config_to_json``)."""
  old, new = _flatten(stored), _flatten(current)
  return [(key, old.get(key, _MISSING), new.get(key, _MISSING))
          for key in sorted(set(old) | set(new))
          if not _resumable(key) and old.get(key, _MISSING) != new.get(key, _MISSING)]


def check_resume_config(stored: Mapping[str, Any], current: Mapping[str, Any], *,
                        checkpoint_path: str, allow_change: bool) -> None:
  """Refuses to resume ``checkpoint_path`` (whose config is ``stored``) with a
  config that trains another function; run before any Orbax restore.

  Another model (``model.name``) is refused even with ``allow_change``: its
  state cannot be restored. Other changes are listed and refused unless
  ``allow_change`` (``--allow_config_change``), which logs them instead.
  """
  old_model = stored.get("model", {}).get("name", _MISSING)
  new_model = current.get("model", {}).get("name", _MISSING)
  if old_model != new_model:
    raise RunRefused(
        f"The checkpoint {checkpoint_path} is of model {old_model!r}; this config trains "
        f"model {new_model!r}. A checkpoint resumes only as the model that wrote it: pass "
        "another --workdir for this run.")
  changes = config_changes(stored, current)
  if not changes:
    return
  listing = "\n".join(f"  {key}: {json.dumps(old) if old is not _MISSING else old} in the "
                      f"checkpoint, {json.dumps(new) if new is not _MISSING else new} now"
                      for key, old, new in changes)
  if allow_change:
    logging.warning("Resuming %s with %d changed setting(s) (--allow_config_change):\n%s",
                    checkpoint_path, len(changes), listing)
    return
  raise RunRefused(
      f"Refusing to resume {checkpoint_path}: this config changes what is trained "
      f"({len(changes)} setting(s)):\n{listing}\nResume with the checkpoint's values (drop "
      "those overrides), pass another --workdir for a new run, or pass "
      "--allow_config_change to go on with the new values.")


def drop_rows_after(path: str, step: int) -> int:
  """Removes the rows of steps after ``step`` (and a torn last line) from a
  JSON-lines metrics file; returns how many. A run killed after its last
  checkpoint logged steps that the resumed run logs again."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if isinstance(row, dict) and row.get("step", 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(temporary, path)
  return dropped


# -- Non-finite steps -------------------------------------------------------


def _fetch(tree: Any) -> Any:
  """Host values of replicated arrays (each process reads its own copy)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


class NonFiniteWatch:
  """The host side of the step's non-finite record.

  ``start`` (once, on the fresh or restored state) opens this session's
  record; ``check`` (on logging steps and before every save, where the host
  synchronises anyway) compares the count with the last one seen: in
  ``"stop"`` mode a new non-finite step raises ``RunRefused`` naming the
  step, its non-finite terms and the last good checkpoint (which stays: no
  state is saved after a non-finite step); in ``"skip"`` mode the dropped
  updates are logged as a warning and training goes on.
  """

  def __init__(self, mode: str, checkpointer):
    if mode not in ON_NONFINITE:
      raise ValueError(f"train.on_nonfinite must be one of {ON_NONFINITE}, got {mode!r}.")
    self.mode = mode
    self._checkpointer = checkpointer
    self._seen = 0

  def start(self, state: state_lib.TrainState, mesh) -> state_lib.TrainState:
    """``state`` with this session's record cleared (the run's count kept)."""
    from reidjax import sharding  # pylint: disable=g-import-not-at-top
    reset = jax.jit(lambda record: state_lib.nonfinite_record(record["count"]),
                    out_shardings=sharding.replicated(mesh))
    state = state.replace(nonfinite=reset(state.nonfinite))
    self._seen = int(_fetch(state.nonfinite["count"]))
    return state

  def check(self, state: state_lib.TrainState, step: int,
            metrics: Mapping[str, Any]) -> None:
    """``metrics``: any step's metrics dict (its keys name the record's bits)."""
    record = {k: int(v) for k, v in _fetch(state.nonfinite).items()}
    new = record["count"] - self._seen
    if new <= 0:
      return
    first = record["session_first_step"]
    first_terms = ", ".join(step_lib.nonfinite_terms(record["session_first_terms"], metrics))
    if self.mode == "stop":
      self._checkpointer.wait()  # A save in flight holds an earlier, good state.
      latest = self._checkpointer.latest_step()
      last_good = (f"The last good checkpoint is {self._checkpointer.path(latest)} (step "
                   f"{latest}), intact: re-running the same command resumes from it"
                   if latest is not None else
                   "No checkpoint was written before it: re-running starts afresh")
      raise RunRefused(
          f"Training stopped at step {step}: the loss or gradient was not finite at step "
          f"{first} (non-finite: {first_terms}); {new} step(s) so far had their update "
          f"dropped, and nothing after step {first - 1} was saved. {last_good}, and will "
          "reach the same step again unless the cause changes (a learning rate too high, "
          "a corrupt batch, an overflow in a low precision). Or set "
          "--config.train.on_nonfinite=skip to drop such updates and go on.")
    latest_terms = ", ".join(step_lib.nonfinite_terms(record["last_terms"], metrics))
    logging.warning(
        "Dropped %d update(s) with a non-finite loss or gradient by step %d (%d in this "
        "run so far; train.on_nonfinite = 'skip'): the first this session at step %d "
        "(non-finite: %s), the latest at step %d (non-finite: %s).", new, step,
        record["count"], first, first_terms, record["last_step"], latest_terms)
    self._seen = record["count"]
