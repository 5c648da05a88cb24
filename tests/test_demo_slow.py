"""The README's main command, end to end (slow tier: about ten minutes on 2 CPU cores)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_embedded_default_shows_self_correction(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from score.eval import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "score_synthetic", os.path.join(ROOT, "configs", "score_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  results = suite.train(module.get_config(), str(tmp_path))
  # The base model copies its first attempt: no self-correction.
  assert abs(results["base"]["delta"]["value"]) < 1.0
  # SCoRe improves at turn 2, more than every baseline; its interval is clear of zero and of
  # the base model's and Pair-SFT's (it overlaps STaR's in the measured run: not asserted).
  score = results["score"]
  assert score["delta"]["low"] > 0
  for baseline in ("base", "star", "pair_sft"):
    assert score["delta"]["value"] > results[baseline]["delta"]["value"], baseline
  for baseline in ("base", "pair_sft"):
    assert not metrics_lib.intervals_overlap(score["delta"], results[baseline]["delta"]), baseline
  # ...and its second attempt is the best second attempt.
  for baseline in ("base", "star", "pair_sft"):
    assert score["acc_t2"]["value"] > results[baseline]["acc_t2"]["value"], baseline
