"""The shared results writer (`score.eval.results`) and the bootstrap mean it reports."""

import json
import os

import numpy as np
import pytest

from score.eval import metrics
from score.eval import results


def test_write_both_files_and_print(tmp_path, capsys):
  md = results.markdown_table(["model", "x"], [["a", results.fmt(1.25)], ["b", results.fmt(None)]],
                              title="T") + "\n" + results.info_lines({"seed": 0})
  out = results.write(str(tmp_path / "w"), {"results": {"a": 1.25}}, md)
  assert out == md == "**T**\n\n| model | x |\n|---|---|\n| a | 1.2 |\n| b | — |\n\n- seed: 0\n"
  assert json.load(open(tmp_path / "w" / "results.json")) == {"results": {"a": 1.25}}
  assert open(tmp_path / "w" / "results.md").read() == md
  assert capsys.readouterr().out == md + "\n"
  assert sorted(os.listdir(tmp_path / "w")) == ["results.json", "results.md"]  # no .tmp left
  results.write(str(tmp_path / "w"), {}, "quiet", echo=False)
  assert capsys.readouterr().out == ""


def test_interval_and_fmt():
  assert results.interval({"value": 4.214, "low": 4.1, "high": 4.3}, "{:.2f}") == \
      "4.21 [4.10, 4.30]"
  assert results.fmt(float("nan")) == "—" and results.fmt(3, "{:d}") == "3"


def test_bootstrap_mean_against_numpy():
  x = np.array([5, 3, 4, 5, 0, 2, 5, 4], float)
  m = metrics.mean(x, num_bootstrap=500, seed=1)
  rng = np.random.default_rng(1)
  boot = x[rng.integers(0, x.size, size=(500, x.size))].mean(-1)
  assert m["value"] == pytest.approx(x.mean())
  assert (m["low"], m["high"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
  assert metrics.accuracy(x == 5, num_bootstrap=500, seed=1)["value"] == pytest.approx(37.5)
