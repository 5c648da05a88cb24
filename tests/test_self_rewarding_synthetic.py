"""Self-Rewarding demo on the rubric task (`configs/self_rewarding_synthetic.py`): the fast
`:runlocal` smoke and the oracle-side pieces against hand-worked values."""

import json
import os

import pytest

from configs import self_rewarding_synthetic as config_mod
from score.data import rubric_task as rt
from score.trainers import self_rewarding_synthetic as demo


@pytest.fixture(scope="module")
def runlocal(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("srlm_demo"))
  config = config_mod.get_config("runlocal")
  return workdir, config, demo.train(config, workdir)


def test_runlocal_writes_the_table(runlocal):
  workdir, _, results = runlocal
  models = ["sft_baseline", "m1", "m2", "m3", "m2_random", "m3_random"]
  assert list(results["models"]) == models
  md = open(os.path.join(workdir, "results.md")).read()
  assert "| model | oracle quality |" in md
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  for name in models:
    q = on_disk["models"][name]["quality"]["score"]
    assert q["low"] <= q["value"] <= q["high"] and q["n"] == 16
    assert f"| {name} | {q['value']:.2f} [{q['low']:.2f}, {q['high']:.2f}] |" in md
  # The baseline against itself is all ties; judge quality only for the judging models.
  assert on_disk["models"]["sft_baseline"]["head_to_head"]["tie"] == 100.0
  assert "judge" in on_disk["models"]["m1"] and "judge" not in on_disk["models"]["m2_random"]
  # Random pairs of distinct candidates always exist: both iterations trained with DPO.
  for t in (1, 2):
    it = on_disk["iterations"][f"random/{t}"]
    assert it["prompts"] == 16 and it["pairs"] > 0 and it["dpo"]["steps"] > 0


def test_quality_head_to_head_and_ranks_hand_worked():
  q = demo.quality(["up dbqh", "up dbqh", "down abc"], ["bdhq", "~bdhq", "cb"],
                   num_bootstrap=50)
  assert q["score"]["value"] == pytest.approx((5 + 4 + 4) / 3)
  assert q["perfect"]["value"] == pytest.approx(100 / 3)
  assert q["criteria"] == pytest.approx({"rel": 100, "sub": 100, "all": 200 / 3, "ord": 100,
                                         "cln": 200 / 3})
  assert demo.head_to_head([5, 3, 4, 0], [4, 3, 5, 1]) == {
      "win": 25.0, "tie": 25.0, "loss": 50.0, "n": 4}
  assert demo.oracle_ranks([3, 5, 3, 1]) == [1, 0, 1, 2]


def test_judges_by_name():
  rows = [{"prompt": "up dbqh", "candidates": ["bdhq", "~bdhq", "b", "zyx"]}]
  assert demo.oracle_judge(None, None, 1, "m1", rows) == [[5.0, 4.0, 3.0, 0.0]]

  class _Run:
    config = config_mod.get_config("runlocal")

  scores = demo.random_judge(_Run(), None, 1, "m1", rows)
  assert sorted(scores[0]) == [0.0, 1.0, 2.0, 3.0]  # a random order, no ties
  assert demo.random_judge(_Run(), None, 1, "m1", rows) == scores  # seeded
  assert set(demo.JUDGES) == {"self", "random", "oracle"}
  assert [demo.model_name(j, t) for j, t in (("self", 2), ("random", 1), ("random", 3))] == [
      "m2", "m1", "m3_random"]
  assert rt.oracle_score("up dbqh", "bdhq") == 5
