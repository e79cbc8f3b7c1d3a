"""Orbax checkpoints of the train state, with the config stored beside it.

Layout: ``<workdir>/checkpoints/<step>/{state,config}``. ``config`` is the
run's ``ConfigDict`` as JSON, so a checkpoint alone is enough to rebuild the
model for evaluation (``reidjax.inference``). Saves are periodic
(``save_every_steps``), forced at the end and on interruption; the newest
``max_to_keep`` are kept. Restoring takes an abstract target whose shardings
belong to the *current* mesh, so a checkpoint written on 8 GPUs restores on
one CPU.
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


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager``."""

  def __init__(self, workdir: str, *, save_every_steps: int, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps, max_to_keep=max_to_keep,
            create=True),
        item_names=("state", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           *, force: bool = False) -> bool:
    """Saves when ``step`` is on the interval (or ``force``); returns whether it did.

    A forced save of a step that is already saved does nothing (the forced
    save at the end or on interruption often lands on a periodic one).
    """
    if force and step in self._manager.all_steps():
      return False
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                config=ocp.args.JsonSave(config_to_json(config))),
        force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the state at ``step`` (default: latest) onto ``abstract_state``'s shardings."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
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
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
