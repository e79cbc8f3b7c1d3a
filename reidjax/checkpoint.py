"""Orbax checkpoints of the train state, with the config stored beside it.

Layout: ``<workdir>/checkpoints/<step>/{state,config}``. ``config`` is the
run's ``ConfigDict`` as JSON, so a checkpoint alone is enough to rebuild the
model for evaluation (``reidjax.inference``). Saves are periodic
(``save_every_steps``), forced at the end and on interruption; the newest
``max_to_keep`` are kept. Restoring takes an abstract target whose shardings
belong to the *current* mesh, so a checkpoint written on 8 GPUs restores on
one CPU.

Crash safety (what tests/train/test_reliability.py pins): a save is written
asynchronously into ``<step>.orbax-checkpoint-tmp`` and renamed to ``<step>``
only once complete (Orbax's atomic rename on a local or network file
system), so a process killed mid-save leaves a temporary directory that is
never listed, restored or counted; the training run
(``remove_unfinished=True``) deletes such leftovers when it starts. Only
*after* the new checkpoint is renamed are the oldest beyond ``max_to_keep``
deleted. A save that fails (disk full, permissions) raises
``CheckpointWriteError`` naming the path; the earlier checkpoints stay.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-ready dict of a config (tuples become lists)."""
  return json.loads(config.to_json())


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; the message names the path and the cause."""


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager``.

  ``remove_unfinished``: delete the temporary directories of saves that never
  finished (a killed run) on start. Only the training run, which holds the
  workdir's lock, sets it: a reader (evaluation, inference) could otherwise
  delete a save that a running trainer is writing.
  """

  def __init__(self, workdir: str, *, save_every_steps: int, max_to_keep: int = 3,
               remove_unfinished: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._saving_step: int | None = None
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps, max_to_keep=max_to_keep,
            create=True, cleanup_tmp_directories=remove_unfinished),
        item_names=("state", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The finished checkpoints' steps, oldest first."""
    return sorted(self._manager.all_steps())

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def should_save(self, step: int) -> bool:
    """Whether ``save(step, ...)`` (not forced) will write a checkpoint."""
    return self._manager.should_save(step)

  def _write_error(self, step: int | None, error: BaseException) -> CheckpointWriteError:
    where = self.path(step) if step is not None else self.directory
    kept = [s for s in self.all_steps() if s != step]
    earlier = (f"The earlier checkpoints are intact (steps {kept} in {self.directory}); "
               f"re-running the same command resumes from step {kept[-1]}" if kept else
               "No earlier checkpoint exists; re-running the same command starts afresh")
    return CheckpointWriteError(
        f"Writing the checkpoint of step {step} to {where} failed: "
        f"{type(error).__name__}: {error}. {earlier} once the cause is fixed (free disk "
        "space, quota, permissions of the workdir).")

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           *, force: bool = False) -> bool:
    """Saves when ``step`` is on the interval (or ``force``); returns whether it did.

    A forced save of a step that is already saved does nothing (the forced
    save at the end or on interruption often lands on a periodic one). The
    write finishes in the background; its failure surfaces here at a later
    save or in ``wait`` as ``CheckpointWriteError`` naming its step.
    """
    if force and step in self._manager.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    # Orbax waits for the previous save's background write before starting a
    # new one; waiting here attributes its failure to its own step.
    self.wait()
    self._saving_step = step
    try:
      return self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(config_to_json(config))),
          force=force)
    except Exception as error:  # pylint: disable=broad-except
      raise self._write_error(step, error) from error

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the state at ``step`` (default: latest) onto ``abstract_state``'s shardings."""
    step = self.latest_step() if step is None else step
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError, TypeError) as error:
      raise ValueError(
          f"The checkpoint {self.path(step)} does not fit the train state this config "
          f"builds (a different model, width or optimizer?): {type(error).__name__}: "
          f"{str(error).splitlines()[0] if str(error) else ''} Resume it with the config "
          "stored beside it, or train in another --workdir.") from error
    return restored.state

  def restore_variables(self, abstract_variables: dict[str, Any],
                        step: int | None = None) -> dict[str, Any]:
    """Restores only ``params`` and ``batch_stats`` (no optimizer state).

    For inference: the optimizer that wrote the checkpoint need not be rebuilt.
    ``abstract_variables`` holds ``ShapeDtypeStruct``s with target shardings.
    """
    step = self.latest_step() if step is None else step
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_variables)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(abstract_variables, restore_args=restore_args,
                                     partial_restore=True)))
    return restored.state

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk; ``CheckpointWriteError`` if one failed."""
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as error:  # pylint: disable=broad-except
      raise self._write_error(self._saving_step, error) from error

  def close(self) -> None:
    self._manager.close()
