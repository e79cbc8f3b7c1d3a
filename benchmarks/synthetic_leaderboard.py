r"""Trains every paper config on its synthetic set and tabulates the results.

  python benchmarks/synthetic_leaderboard.py                       # every config
  python benchmarks/synthetic_leaderboard.py --configs baseline,duatm --out_dir /tmp/lb
  python benchmarks/synthetic_leaderboard.py --config.schedule.epochs=1   # a smoke run

Each config runs as the users' command, ``python train.py --config
configs/<paper>.py`` (its default argument: the paper's synthetic set, image
or video), into ``<workdir_root>/<paper>_<dataset>``; ``--config.*``
overrides are passed to every run. A run whose workdir already holds
``results.json`` is not trained again (delete the workdir to re-measure).

Writes ``<out_dir>/leaderboard.md`` (a Markdown table: mAP, rank-1, mINP,
wall time of the train.py command, parameters) and ``<out_dir>/cmc.png``
(every run's CMC curve), and prints the rows as one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def paper_configs() -> list[str]:
  """Every configs/<paper>.py (not common.py / __init__.py), sorted."""
  names = [os.path.splitext(os.path.basename(p))[0]
           for p in glob.glob(os.path.join(_ROOT, "configs", "*.py"))]
  return sorted(n for n in names if n not in ("common", "__init__"))


def parameter_count(workdir: str) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from reidjax import inference  # pylint: disable=g-import-not-at-top
  embedder = inference.restore(workdir)
  return int(sum(np.size(x) for x in jax.tree.leaves(embedder.variables["params"])))


def run_one(paper: str, workdir_root: str, overrides: list[str]) -> dict:
  import importlib  # pylint: disable=g-import-not-at-top
  dataset = importlib.import_module(f"configs.{paper}").get_config().data.name
  workdir = os.path.join(workdir_root, f"{paper}_{dataset}")
  results_path = os.path.join(workdir, "results.json")
  wall = None
  if not os.path.exists(results_path):
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(_ROOT, "train.py"), "--config",
                    os.path.join(_ROOT, "configs", f"{paper}.py"), "--workdir", workdir]
                   + overrides, check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, "wall_seconds.json"), "w") as f:
      json.dump({"wall_s": wall, "load": os.getloadavg()}, f)
  elif os.path.exists(os.path.join(workdir, "wall_seconds.json")):
    wall = json.load(open(os.path.join(workdir, "wall_seconds.json")))["wall_s"]
  results = json.load(open(results_path))
  return dict(paper=paper, dataset=dataset, workdir=workdir, mAP=results["mAP"],
              rank1=results["rank1"], mINP=results["mINP"], cmc=results["cmc"],
              wall_s=wall, parameters=parameter_count(workdir))


def _minutes(seconds):
  if seconds is None:
    return "n/a"
  return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def write_table(rows: list[dict], path: str) -> str:
  lines = ["| config | synthetic set | mAP | rank-1 | mINP | wall time | parameters |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| `configs/{r['paper']}.py` | `{r['dataset']}` | {r['mAP']:.3f} | "
                 f"{r['rank1']:.3f} | {r['mINP']:.3f} | {_minutes(r['wall_s'])} | "
                 f"{r['parameters'] / 1e6:.2f} M |")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default=",".join(paper_configs()),
                      help="comma-separated config names")
  parser.add_argument("--workdir_root", default=os.path.join("workdirs", "leaderboard"))
  parser.add_argument("--out_dir", default=os.path.join("workdirs", "leaderboard"))
  args, overrides = parser.parse_known_args(argv)
  bad = [a for a in overrides if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments {bad}")
  rows = [run_one(p, args.workdir_root, overrides) for p in args.configs.split(",") if p]
  from reidjax.viz import report  # pylint: disable=g-import-not-at-top
  report.plot_cmc({f"{r['paper']} ({r['dataset']})": np.asarray(r["cmc"]) for r in rows},
                  os.path.join(args.out_dir, "cmc.png"), max_rank=20,
                  title="CMC on the synthetic sets", size=(6.0, 4.5))
  table = write_table(rows, os.path.join(args.out_dir, "leaderboard.md"))
  out = {"table": table, "rows": [{k: v for k, v in r.items() if k != "cmc"} for r in rows],
         "load": os.getloadavg()}
  print(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
