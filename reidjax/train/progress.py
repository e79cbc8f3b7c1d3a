"""Training progress: loss, learning rate, images/s and ETA, to the log, JSON and TensorBoard.

Metrics are fetched from the device only on logging steps, so logging does
not synchronise every step. Every logged row is appended to
``<workdir>/train_metrics.jsonl`` (one JSON object per line).

On an interactive terminal (stderr is a TTY) a tqdm progress bar shows the
step, steps/s, ETA and, on logging steps, loss, lr and img/s; otherwise (a
log file, CI) each logging step is one log line, as before.

``TensorBoardWriter`` writes the same rows, the evaluations and images as
TensorBoard event files in the workdir (``tensorboard --logdir workdirs``)
with ``clu.metric_writers.SummaryWriter``. That writer runs on TensorFlow's
``tf.summary``: TensorFlow is imported through ``reidjax.data.tensorflow_cpu``
first, so it stays off the GPU, and only when a writer is created, so this
module imports without TensorFlow.
"""

from __future__ import annotations

import numbers
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from reidjax.logs import append_jsonl


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def scalar_items(row: Mapping[str, Any]) -> dict[str, float]:
  """The real-number entries of a metrics row (no step, lists or strings)."""
  return {k: float(v) for k, v in row.items()
          if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)}


class TensorBoardWriter:
  """Scalars and images as TensorBoard event files under ``logdir``.

  Only process 0 writes; elsewhere every method does nothing. Tags are
  ``<prefix>/<name>`` (``train/loss``, ``eval/mAP``, ``eval/ranked_list``).
  """

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer = None
    if jax.process_index() == 0:
      # pylint: disable=g-import-not-at-top,unused-import
      from reidjax.data import tensorflow_cpu  # noqa: F401  TF off the GPU first.
      from clu import metric_writers
      # pylint: enable=g-import-not-at-top,unused-import
      self._writer = metric_writers.SummaryWriter(logdir)

  def scalars(self, step: int, prefix: str, row: Mapping[str, Any]) -> None:
    if self._writer is not None:
      self._writer.write_scalars(int(step), {f"{prefix}/{k}": v
                                             for k, v in scalar_items(row).items()})

  def images(self, step: int, prefix: str, images: Mapping[str, Any]) -> None:
    """``images``: {name: (H, W, 3) uint8 array or PIL image}."""
    if self._writer is not None and images:
      self._writer.write_images(int(step), {
          f"{prefix}/{k}": np.asarray(v, np.uint8)[None] for k, v in images.items()})
    self.flush()

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def interactive() -> bool:
  """True on an interactive terminal (where a progress bar can redraw)."""
  return jax.process_index() == 0 and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class ProgressLogger:
  """Logs averaged train metrics every ``every_steps`` steps.

  ``bar``: a tqdm progress bar instead of log lines (default: on an
  interactive terminal). ``writer``: a ``TensorBoardWriter`` for the rows.
  """

  def __init__(self, workdir: str, *, total_steps: int, start_step: int,
               global_batch_size: int, every_steps: int,
               writer: TensorBoardWriter | None = None, bar: bool | None = None):
    self.path = os.path.join(workdir, "train_metrics.jsonl")
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.every_steps = max(1, every_steps)
    self.writer = writer
    self._pending: list[dict[str, Any]] = []
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._bar = None
    if interactive() if bar is None else bar:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                       dynamic_ncols=True, smoothing=0.05, file=sys.stderr)

  def update(self, step: int, metrics: dict[str, Any]) -> dict[str, float] | None:
    """Records the metrics of ``step`` (1-based, after the update); logs on schedule."""
    self._pending.append(metrics)
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
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
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                            lr=f"{row.get('lr', float('nan')):.3g}",
                            img_s=f"{row['images_per_s']:.1f}", refresh=False)
    else:
      logging.info("step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s", step,
                   self.total_steps, row.get("loss", float("nan")),
                   row.get("lr", float("nan")), row["images_per_s"],
                   _format_seconds(row["eta_s"]))
    append_jsonl(self.path, row)
    if self.writer is not None:
      self.writer.scalars(step, "train", row)
    return row

  def close(self) -> None:
    """Closes the progress bar (the writer is the caller's)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def reset_timer(self, step: int) -> None:
    """Excludes time spent outside training (evaluation, checkpoints) from img/s."""
    self._last_step, self._last_time = step, time.perf_counter()
