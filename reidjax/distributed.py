"""Several processes (hosts, or one process per GPU): JAX's multi-process runtime.

No paper equation here: this is the launch side of data-parallel training
(DESIGN.md, "Sharding"). ``initialize`` calls ``jax.distributed.initialize``
when, and only when, this process is one of several:

* explicit: ``coordinator_address`` / ``num_processes`` / ``process_id`` (the
  ``--coordinator_address --num_processes --process_id`` flags of
  ``train.py`` and ``python -m reidjax.evaluate``), e.g. on a plain list of
  hosts; any left out is filled by the environment detection below;
* detected: a SLURM step with several tasks (``srun``: ``SLURM_NTASKS`` > 1),
  Open MPI's ``mpirun`` (``OMPI_COMM_WORLD_SIZE`` > 1) or an indexed
  Kubernetes Job (``JOB_COMPLETION_INDEX``; needs the ``kubernetes``
  package, ``pip install jax[k8s]``). JAX's own cluster detection then
  finds the coordinator, the process count and this process's id.

On one process (none of the above) it does nothing, so a single-host run is
unchanged. After it, every device of every process is in ``jax.devices()``
and ``reidjax.sharding.make_data_mesh`` spans them all; each process loads
its own share of every batch (``reidjax.data.sampler``, ``pipeline``).

Multi-process CPU runs (the tests) need CPU collectives: the gloo
implementation is chosen unless one (e.g. ``"mpi"``) is already set.

Every process must then run the same jitted computations in the same order;
``any_process`` turns a per-process flag (a SIGTERM) into one decision.

Readings: under SLURM, JAX gives each process the GPU of its local task id
(``SLURM_LOCALID``), i.e. one process per GPU. For one process per node,
pass ``local_device_ids`` (``--local_device_ids=0,1,2,3``), or the process
would drive one GPU only. Processes other than 0 log warnings and errors
only (``quiet_other_processes``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from absl import logging

# The variables by which a launcher says "this process is one of several":
# launcher name -> (variable holding the process count, variables JAX's
# detection of that launcher needs).
LAUNCHERS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "slurm": ("SLURM_NTASKS", ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                               "SLURM_LOCALID")),
    "ompi": ("OMPI_COMM_WORLD_SIZE", ("OMPI_MCA_orte_hnp_uri",)),
    # The Job's parallelism is read by JAX from the Kubernetes API.
    "k8s": (None, ("KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX")),
}


def detect_launcher(environ: Mapping[str, str] | None = None) -> str | None:
  """The launcher that started this process as one of several, or None.

  ``"slurm"``, ``"ompi"`` or ``"k8s"`` (see the module doc); None when no
  launcher is present or it started a single process.
  """
  environ = os.environ if environ is None else environ
  for name, (count_variable, needed) in LAUNCHERS.items():
    if count_variable is not None:
      count = environ.get(count_variable, "")
      if not count.isdigit() or int(count) < 2:
        continue
    elif not all(v in environ for v in needed):
      continue
    missing = [v for v in needed if v not in environ]
    if missing:
      raise RuntimeError(
          f"{count_variable}={environ[count_variable]} says this is one of several "
          f"processes ({name}), but {missing} are not set, so JAX cannot find the "
          "coordinator. Launch with `srun` (SLURM) or `mpirun` (Open MPI 4), or pass "
          "--coordinator_address=<host of process 0>:<port> --num_processes=N "
          "--process_id=<this process>.")
    return name
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               local_device_ids: Sequence[int] | None = None,
               environ: Mapping[str, str] | None = None) -> bool:
  """Starts ``jax.distributed`` if this process is one of several; returns whether.

  Call it before anything else touches JAX's devices. Arguments left None
  come from the launcher (``detect_launcher``); with neither arguments nor
  a multi-process launcher, or with ``num_processes=1``, nothing happens.

  Args:
    coordinator_address: ``host:port`` of process 0, reachable by all.
    num_processes: the number of processes.
    process_id: this process, in [0, num_processes).
    local_device_ids: the local devices this process drives (default: JAX's,
      all visible ones; under SLURM the one of ``SLURM_LOCALID``).
    environ: the environment (default ``os.environ``; tests pass their own).
  """
  launcher = detect_launcher(environ)
  explicit = (coordinator_address, num_processes, process_id)
  if num_processes == 1 or (launcher is None and explicit == (None, None, None)):
    return False
  if launcher is None and None in explicit:
    raise ValueError(
        f"Several processes need all of --coordinator_address, --num_processes and "
        f"--process_id (no SLURM / Open MPI / Kubernetes launcher was detected); got "
        f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r}.")
  if launcher == "k8s" and importlib.util.find_spec("kubernetes") is None:
    raise RuntimeError("An indexed Kubernetes Job was detected, but JAX needs the "
                       "`kubernetes` package to find the coordinator: "
                       "pip install 'jax[k8s]', or pass the explicit flags.")
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    # Cross-process collectives of CPU devices (GPUs use NCCL regardless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id,
      local_device_ids=list(local_device_ids) if local_device_ids else None)
  quiet_other_processes()
  logging.info("jax.distributed: process %d of %d (%s), %d local / %d global devices.",
               jax.process_index(), jax.process_count(), launcher or "explicit flags",
               jax.local_device_count(), jax.device_count())
  return True


def quiet_other_processes() -> None:
  """Processes other than 0 log warnings and errors only (one log per run)."""
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)


def parse_device_ids(text: str | None) -> list[int] | None:
  """``"0,1,2,3"`` -> [0, 1, 2, 3]; empty or None -> None (JAX's default)."""
  if not text:
    return None
  try:
    return [int(part) for part in text.split(",") if part.strip()]
  except ValueError as e:
    raise ValueError(f"--local_device_ids must be comma-separated integers such as "
                     f"0,1,2,3, got {text!r}.") from e


def add_arguments(parser) -> None:
  """Adds the launch flags to an ``argparse`` parser (``python -m reidjax.evaluate``)."""
  parser.add_argument("--coordinator_address", default=None,
                      help="several processes: host:port of process 0")
  parser.add_argument("--num_processes", type=int, default=None,
                      help="several processes: how many")
  parser.add_argument("--process_id", type=int, default=None,
                      help="several processes: this one's index")
  parser.add_argument("--local_device_ids", default=None,
                      help="several processes: this one's local devices, e.g. 0,1,2,3")


def initialize_from_arguments(args) -> bool:
  """``initialize`` with the flags of ``add_arguments`` (or train.py's)."""
  return initialize(args.coordinator_address, args.num_processes, args.process_id,
                    local_device_ids=parse_device_ids(args.local_device_ids))


def any_process(flag: bool) -> bool:
  """True on every process when ``flag`` is True on any of them; one process: ``flag``.

  For decisions every process must take together (stop after a SIGTERM that
  reached some processes first, then save): a collective, so every process
  calls it at the same point of the loop; it waits for the steps already
  dispatched, so call it where the loop synchronises anyway (e.g. logging
  steps) when several processes run.
  """
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))
