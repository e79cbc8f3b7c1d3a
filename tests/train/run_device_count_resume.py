"""Writes or resumes a checkpoint of tests/train/tiny_model.py on N CPU devices;
prints JSON.

Used by test_reliability.py in subprocesses (the CPU device count must be set
before JAX starts):

  python -m tests.train.run_device_count_resume --devices 2 --workdir W --mode write
      trains steps 1-2, saves the checkpoint of step 2, trains steps 3-5;
  python -m tests.train.run_device_count_resume --devices 4 --workdir W --mode resume
      restores step 2 onto 4 devices and trains steps 3-5.

The batches are ``tiny_model.batch(step)``; the JSON holds the losses of
steps 3-5 and the number of devices the state lives on.
"""

import argparse
import json

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, required=True)
parser.add_argument("--workdir", required=True)
parser.add_argument("--mode", choices=("write", "resume"), required=True)
args = parser.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)

from reidjax import checkpoint, sharding  # noqa: E402
from reidjax.train import state as state_lib, step as step_lib  # noqa: E402
from tests.train import tiny_model as tiny  # noqa: E402

SAVED_STEP, LAST_STEP = 2, 5


def continue_from(state, train_step, mesh) -> list[float]:
  """The losses of steps ``state.step + 1`` .. LAST_STEP."""
  losses = []
  for step in range(int(state.step) + 1, LAST_STEP + 1):
    state, metrics = train_step(state, sharding.to_global_batch(tiny.batch(step), mesh))
    losses.append(float(metrics["loss"]))
  return losses


def main():
  assert jax.device_count() == args.devices, jax.devices()
  model, tx = tiny.model_and_optimizer()
  mesh = sharding.make_data_mesh()
  train_step = step_lib.make_train_step(tiny.ENTRY.objective, tiny.CONFIG.loss, mesh,
                                        model=model)
  ckpt = checkpoint.Checkpointer(args.workdir, save_every_steps=SAVED_STEP)
  if args.mode == "write":
    state = state_lib.create_train_state(model, tx, seed=0, data_config=tiny.CONFIG.data,
                                         mesh=mesh)
    for step in range(1, SAVED_STEP + 1):
      state, _ = train_step(state, sharding.to_global_batch(tiny.batch(step), mesh))
    ckpt.save(SAVED_STEP, state, tiny.CONFIG, force=True)
    ckpt.wait()
  else:
    state = ckpt.restore(state_lib.abstract_train_state(
        model, tx, data_config=tiny.CONFIG.data, mesh=mesh))
  on_devices = len(jax.tree.leaves(state.opt_state)[0].sharding.device_set)
  first_step = int(state.step) + 1
  losses = continue_from(state, train_step, mesh)
  ckpt.close()
  print(json.dumps({"devices": jax.device_count(), "first_step": first_step,
                    "state_on_devices": on_devices, "losses": losses}))


if __name__ == "__main__":
  main()
