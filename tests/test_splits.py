"""reidjax.tools.splits: one train.py command per split, and the mean / spread over splits.

train.py is replaced by a fake runner that writes a known results.json per
split, so the sweep's commands and its aggregation (checked against NumPy)
are tested without training.
"""

import json
import os
import sys

import numpy as np
import pytest

from reidjax.tools import splits

_CMC = 25  # curve length in the fake results


def _results(seed):
  rng = np.random.default_rng(seed)
  cmc = np.sort(rng.uniform(0.3, 1.0, _CMC))  # non-decreasing like a CMC curve
  return {"cmc": cmc.tolist(), "rank1": float(cmc[0]), "mAP": float(rng.uniform(0.2, 0.9)),
          "mINP": float(rng.uniform(0.1, 0.5)), "num_valid_queries": 150}


def _write(workdir, split, results):
  os.makedirs(splits.split_workdir(str(workdir), split), exist_ok=True)
  with open(os.path.join(splits.split_workdir(str(workdir), split), "results.json"), "w") as f:
    json.dump(results, f)


def test_parse_splits():
  assert splits.parse_splits("0-9") == list(range(10))
  assert splits.parse_splits("0-2,7,2") == [0, 1, 2, 7]
  assert splits.parse_splits("4") == [4]
  for bad in ("", "a", "3-1", "-1", "1-x"):
    with pytest.raises(ValueError, match="--splits"):
      splits.parse_splits(bad)


def test_sweep_runs_train_py_per_split_and_aggregates(tmp_path):
  expected = {s: _results(s) for s in (0, 2, 5)}
  calls = []

  def fake_train(command):  # what train.py leaves behind: W/split_K/results.json
    calls.append(command)
    workdir = command[command.index("--workdir") + 1]
    flag = [a for a in command if a.startswith(splits.SPLIT_FLAG + "=")]
    assert len(flag) == 1
    split = int(flag[0].split("=")[1])
    assert workdir == str(tmp_path / f"split_{split}")
    _write(tmp_path, split, expected[split])

  summary = splits.run_splits("configs/fgra.py:ilidsvid", str(tmp_path), [0, 2, 5],
                              ["--config.data.root=/data/ilids"], runner=fake_train)
  assert len(calls) == 3
  assert calls[0][:2] == [sys.executable, os.path.join(splits._ROOT, "train.py")]
  assert calls[1][2:] == ["--config", "configs/fgra.py:ilidsvid", "--workdir",
                          str(tmp_path / "split_2"), "--config.data.options.split_index=2",
                          "--config.data.root=/data/ilids"]
  # NumPy: rank-k = cmc[k - 1]; mean and sample std over the three splits.
  for name, pick in [("rank1", lambda r: r["cmc"][0]), ("rank5", lambda r: r["cmc"][4]),
                     ("rank10", lambda r: r["cmc"][9]), ("rank20", lambda r: r["cmc"][19]),
                     ("mAP", lambda r: r["mAP"]), ("mINP", lambda r: r["mINP"])]:
    values = np.array([pick(expected[s]) for s in (0, 2, 5)])
    np.testing.assert_allclose(summary["mean"][name], values.mean(), rtol=1e-12)
    np.testing.assert_allclose(summary["std"][name], values.std(ddof=1), rtol=1e-12)
  assert summary["num_splits"] == 3 and summary["missing_splits"] == []
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["mean"] == summary["mean"]
  table = (tmp_path / "summary.md").read_text()
  assert f"{100 * summary['mean']['mAP']:.1f} +- {100 * summary['std']['mAP']:.1f}" in table
  assert table.count("\n| ") == 1 + 3 + 1  # header, three splits, mean row

  # Done splits are not trained again; a new one is.
  calls.clear()
  expected[7] = _results(7)
  splits.run_splits("configs/fgra.py:ilidsvid", str(tmp_path), [0, 2, 5, 7], runner=fake_train)
  assert [c[-1] for c in calls] == ["--config.data.options.split_index=7"]


def test_cli_aggregate_only_dry_run_and_bad_arguments(tmp_path, capsys):
  for split in (1, 3):
    _write(tmp_path, split, _results(split))
  assert splits.main(["--config", "configs/fgra.py:prid2011", "--workdir", str(tmp_path),
                      "--splits", "1-3", "--aggregate_only"]) == 0
  with open(tmp_path / "summary.json") as f:
    summary = json.load(f)
  assert summary["num_splits"] == 2 and summary["missing_splits"] == [2]
  np.testing.assert_allclose(summary["std"]["mAP"], np.std(
      [_results(1)["mAP"], _results(3)["mAP"]], ddof=1))
  assert "mean +- std" in capsys.readouterr().out

  splits.main(["--config", "configs/fgra.py:ilidsvid", "--workdir", "W", "--splits", "0,1",
               "--dry_run", "--config.schedule.epochs=3"])
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 2 and printed[1].endswith(
      "--workdir W/split_1 --config.data.options.split_index=1 --config.schedule.epochs=3")

  for argv, message in [
      (["--config", "configs/fgra.py:mars", "--workdir", "W"], "no data.options.split_index"),
      (["--config", "configs/fgra.py:ilidsvid", "--workdir", "W",
        "--config.data.options.split_index=3"], "sets --config, --workdir"),
      (["--config", "configs/nope.py:ilidsvid", "--workdir", "W"], "no config file"),
      (["--config", "configs/fgra.py:ilidsvid", "--workdir", "W", "--splits", "x"], "--splits")]:
    with pytest.raises(SystemExit):
      splits.main(argv)
    assert message in capsys.readouterr().err
