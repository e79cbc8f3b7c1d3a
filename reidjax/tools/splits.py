"""Train and evaluate once per split (iLIDS-VID, PRID-2011) and report mean and spread.

iLIDS-VID and PRID-2011 are evaluated over 10 random 50/50 person splits
(Wang et al. 2014; FGRA's "Evaluation Protocols": "repeated 10 times to
calculate the average accuracy"). One command runs them all::

  python -m reidjax.tools.splits --config configs/fgra.py:ilidsvid --workdir W \
      [--splits 0-9] [--dry_run] [--aggregate_only] [train.py flags ...]

For every split K it runs ``python train.py --config <config> --workdir
W/split_K --config.data.options.split_index=K [train.py flags]`` (a split
whose ``results.json`` already exists is not run again, so an interrupted
sweep resumes; a half-finished split resumes from its own checkpoint), then
reads every ``W/split_K/results.json`` and writes ``W/summary.json`` and
``W/summary.md``: per split rank-1/5/10/20, mAP and mINP, and their mean
and standard deviation over the splits (sample std, ddof = 1; 0 for a
single split). ``--aggregate_only`` skips training and summarises what is
there; ``--dry_run`` prints the commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from typing import Callable, Sequence

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RANKS = (1, 5, 10, 20)
METRICS = tuple(f"rank{k}" for k in RANKS) + ("mAP", "mINP")
SPLIT_FLAG = "--config.data.options.split_index"


def parse_splits(text: str) -> list[int]:
  """``"0-9"``, ``"0,3,5"``, ``"2"`` or a mix (``"0-2,7"``) -> sorted split indices."""
  splits: set[int] = set()
  try:
    for part in text.split(","):
      part = part.strip()
      if "-" in part:
        first, last = (int(x) for x in part.split("-", 1))
        if first > last:
          raise ValueError
        splits.update(range(first, last + 1))
      else:
        splits.add(int(part))
  except ValueError:
    raise ValueError(f"--splits {text!r}: give split indices as '0-9', '0,3,5' or '2'.") from None
  if not splits or min(splits) < 0:
    raise ValueError(f"--splits {text!r}: split indices are >= 0.")
  return sorted(splits)


def load_config(config_arg: str):
  """``path/to/config.py[:arg]`` -> the ConfigDict its ``get_config`` returns."""
  path, _, arg = config_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {config_arg!r}: no config file {path!r}.")
  spec = importlib.util.spec_from_file_location("_splits_config", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  return module.get_config(arg) if arg else module.get_config()


def check_split_dataset(config, config_arg: str) -> None:
  options = config.data.get("options", {})
  if "split_index" not in options:
    raise ValueError(f"--config {config_arg!r}: dataset {config.data.name!r} has no "
                     "data.options.split_index (only iLIDS-VID and PRID-2011 have splits); "
                     "run train.py directly.")


def split_workdir(workdir: str, split: int) -> str:
  return os.path.join(workdir, f"split_{split}")


def train_command(config_arg: str, workdir: str, split: int,
                  train_flags: Sequence[str] = ()) -> list[str]:
  for flag in train_flags:
    if flag.split("=", 1)[0] in (SPLIT_FLAG, "--workdir", "--config"):
      raise ValueError(f"{flag!r}: the split sweep sets --config, --workdir and "
                       f"{SPLIT_FLAG} itself; use --config, --workdir and --splits.")
  return [sys.executable, os.path.join(_ROOT, "train.py"), "--config", config_arg,
          "--workdir", split_workdir(workdir, split), f"{SPLIT_FLAG}={split}", *train_flags]


def split_metrics(results: dict) -> dict[str, float]:
  """One run's ``results.json`` -> {metric: value} (rank-k from the CMC curve)."""
  cmc = results["cmc"]
  out = {f"rank{k}": float(cmc[k - 1]) for k in RANKS if k <= len(cmc)}
  out.update(mAP=float(results["mAP"]), mINP=float(results["mINP"]))
  return out


def summarise(per_split: dict[int, dict[str, float]]) -> dict:
  """{split: metrics} -> {"splits": ..., "mean": ..., "std": ..., "num_splits": n}."""
  if not per_split:
    raise ValueError("No split has a results.json to summarise.")
  names = [m for m in METRICS if all(m in v for v in per_split.values())]
  values = {m: np.array([per_split[s][m] for s in sorted(per_split)]) for m in names}
  ddof = 1 if len(per_split) > 1 else 0
  return {"num_splits": len(per_split),
          "splits": {str(s): per_split[s] for s in sorted(per_split)},
          "mean": {m: float(v.mean()) for m, v in values.items()},
          "std": {m: float(v.std(ddof=ddof)) for m, v in values.items()}}


def markdown(summary: dict, title: str) -> str:
  names = list(summary["mean"])
  lines = [f"# {title}", "", "| split | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names)]
  for split, metrics in summary["splits"].items():
    lines.append(f"| {split} | " + " | ".join(f"{100 * metrics[m]:.1f}" for m in names) + " |")
  lines.append("| mean +- std | " + " | ".join(
      f"{100 * summary['mean'][m]:.1f} +- {100 * summary['std'][m]:.1f}" for m in names) + " |")
  lines += ["", f"{summary['num_splits']} splits; percentages; std over splits (ddof 1)."]
  return "\n".join(lines) + "\n"


def run_splits(config_arg: str, workdir: str, splits: Sequence[int],
               train_flags: Sequence[str] = (), *, aggregate_only: bool = False,
               dry_run: bool = False,
               runner: Callable[[list[str]], None] | None = None) -> dict | None:
  """Runs train.py per split (unless done), then writes and returns the summary.

  ``runner(command)`` runs one train.py command (default: ``subprocess.run``
  with ``check=True``); tests pass a fake one.
  """
  commands = {s: train_command(config_arg, workdir, s, train_flags) for s in splits}
  if dry_run:
    for command in commands.values():
      print(" ".join(command))
    return None
  runner = runner or (lambda command: subprocess.run(command, check=True, cwd=_ROOT))
  per_split = {}
  for split in splits:
    results_path = os.path.join(split_workdir(workdir, split), "results.json")
    if not aggregate_only and not os.path.exists(results_path):
      print(f"split {split}: {' '.join(commands[split])}", flush=True)
      runner(commands[split])
    if os.path.exists(results_path):
      with open(results_path, encoding="utf-8") as f:
        per_split[split] = split_metrics(json.load(f))
    elif not aggregate_only:
      raise FileNotFoundError(f"split {split}: train.py finished without {results_path}.")
  missing = sorted(set(splits) - set(per_split))
  summary = summarise(per_split)
  summary.update(config=config_arg, missing_splits=missing)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  title = f"{config_arg}: {summary['num_splits']} splits" + (
      f" (missing {missing})" if missing else "")
  with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(markdown(summary, title))
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="Other flags (e.g. --config.data.root=...) are passed to every train.py run.")
  parser.add_argument("--config", required=True, help="config file[:arg], as train.py takes")
  parser.add_argument("--workdir", required=True, help="split K goes to WORKDIR/split_K")
  parser.add_argument("--splits", default="0-9", help="split indices: 0-9 (default), 0,3,5")
  parser.add_argument("--aggregate_only", action="store_true",
                      help="only summarise the splits that have a results.json")
  parser.add_argument("--dry_run", action="store_true", help="print the train.py commands")
  args, train_flags = parser.parse_known_args(argv)
  try:
    splits = parse_splits(args.splits)
    check_split_dataset(load_config(args.config), args.config)
    summary = run_splits(args.config, args.workdir, splits, train_flags,
                         aggregate_only=args.aggregate_only, dry_run=args.dry_run)
  except (ValueError, FileNotFoundError) as error:
    parser.error(str(error))
  if summary is not None:
    print(markdown(summary, args.config), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
