"""Training progress: loss, learning rate, images/s and ETA, to the log and to JSON.

Metrics are fetched from the device only on logging steps, so logging does
not synchronise every step. Every logged row is appended to
``<workdir>/train_metrics.jsonl`` (one JSON object per line).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging


def quiet_library_logs(prefixes: tuple[str, ...] = ("/orbax/",)) -> None:
  """Drops INFO records of chatty libraries (Orbax logs every save step by step)."""
  import logging as std_logging  # absl's handler is a standard logging handler.

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        p in record.pathname for p in prefixes)

  logging.get_absl_handler().addFilter(keep)


def append_jsonl(path: str, row: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLogger:
  """Logs averaged train metrics every ``every_steps`` steps."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int,
               global_batch_size: int, every_steps: int):
    self.path = os.path.join(workdir, "train_metrics.jsonl")
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.every_steps = max(1, every_steps)
    self._pending: list[dict[str, Any]] = []
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def update(self, step: int, metrics: dict[str, Any]) -> dict[str, float] | None:
    """Records the metrics of ``step`` (1-based, after the update); logs on schedule."""
    self._pending.append(metrics)
    if step % self.every_steps and step != self.total_steps:
      return None
    fetched = jax.device_get(self._pending)
    self._pending = []
    row = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    now = time.perf_counter()
    steps = step - self._last_step
    seconds_per_step = (now - self._last_time) / max(steps, 1)
    self._last_step, self._last_time = step, now
    row.update(step=step, images_per_s=self.global_batch_size / seconds_per_step,
               eta_s=seconds_per_step * (self.total_steps - step))
    logging.info("step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s", step,
                 self.total_steps, row.get("loss", float("nan")),
                 row.get("lr", float("nan")), row["images_per_s"],
                 _format_seconds(row["eta_s"]))
    append_jsonl(self.path, row)
    return row

  def reset_timer(self, step: int) -> None:
    """Excludes time spent outside training (evaluation, checkpoints) from img/s."""
    self._last_step, self._last_time = step, time.perf_counter()
