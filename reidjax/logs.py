"""What every command writes: JSON-lines metrics files and a quiet log.

Shared by training (``reidjax.train.progress``) and evaluation
(``reidjax.evaluate``), which do not import each other. Only process 0 of a
multi-process run writes.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from absl import logging


def quiet_library_logs(prefixes: tuple[str, ...] = ("/orbax/",)) -> None:
  """Drops INFO records of chatty libraries (Orbax logs every save step by step)."""
  import logging as std_logging  # absl's handler is a standard logging handler.

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        p in record.pathname for p in prefixes)

  logging.get_absl_handler().addFilter(keep)


def append_jsonl(path: str, row: dict[str, Any]) -> None:
  """Appends ``row`` as one JSON line to ``path`` (process 0 only)."""
  if jax.process_index() == 0:
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
