"""The README's experiment commands, end to end (slow tier: minutes each on 2 CPU cores)."""

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
  score = results["score"]
  # The claims that held in both measured runs (README: the command line, and this test under
  # tests/conftest.py's 8 virtual devices, which changes XLA's float rounding and so the run).
  # The base model does not self-correct: no wrong->right flips, no gain at turn 2.
  assert results["base"]["delta_i2c"]["value"] < 0.5
  assert results["base"]["delta"]["value"] < 0.5
  # Pair-SFT breaks correct first attempts at turn 2.
  assert results["pair_sft"]["delta"]["high"] < 0
  # SCoRe improves at turn 2, clear of zero, of the base model and of Pair-SFT ...
  assert score["delta"]["low"] > 0
  for baseline in ("base", "pair_sft"):
    assert not metrics_lib.intervals_overlap(score["delta"], results[baseline]["delta"]), baseline
  # ... and has the best first and second attempts, clear of every baseline's, with almost
  # no right->wrong flips.
  for baseline in ("base", "star", "pair_sft"):
    for attempt in ("acc_t1", "acc_t2"):
      assert score[attempt]["low"] > results[baseline][attempt]["high"], (baseline, attempt)
  assert score["delta_c2i"]["value"] < 0.5
  # Not asserted: SCoRe's Δ against STaR's (below it in both measured runs: SCoRe's first
  # attempt improves so much that less is left to correct).


@pytest.mark.slow
def test_self_rewarding_demo(tmp_path):
  """README's Self-Rewarding command (configs/self_rewarding_synthetic.py), end to end."""
  from configs import self_rewarding_synthetic  # pylint: disable=g-import-not-at-top
  from score.trainers import self_rewarding_synthetic as demo  # pylint: disable=g-import-not-at-top
  results = demo.train(self_rewarding_synthetic.get_config(), str(tmp_path))
  models, iterations = results["models"], results["iterations"]
  q = {name: m["quality"]["score"] for name, m in models.items()}
  # Held in both measured runs of the default (README, commit 7dba615 = 67dbab2: the command
  # line, and 8 virtual devices as tests/conftest.py sets them, which changes XLA's float
  # rounding).
  # The paper's ordering under the oracle: M1 < M2 < M3, M3's interval clear of M1's ...
  assert q["m1"]["value"] < q["m2"]["value"] < q["m3"]["value"]
  assert q["m3"]["low"] > q["m1"]["high"]
  # ... M3 beats the SFT baseline head-to-head, and the self-judged M3 the random judge's.
  h2h = models["m3"]["head_to_head"]
  assert h2h["win"] > h2h["loss"]
  assert q["m3"]["value"] > q["m3_random"]["value"]
  # The self-judge's pairs agree with the oracle far more than random pairs; the filler
  # (criterion "nothing extraneous") is gone by M3 without dropping letters ("complete":
  # two DPO epochs over-optimised towards short answers, 98.8 -> 67.9 % at 512 instructions
  # per iteration).
  assert iterations["self/1"]["pair_oracle_agreement"] > 80
  assert iterations["self/1"]["pair_oracle_agreement"] > \
      iterations["random/1"]["pair_oracle_agreement"] + 25
  criteria = {name: models[name]["quality"]["criteria"] for name in ("m1", "m3")}
  assert criteria["m3"]["cln"] > criteria["m1"]["cln"] + 30
  assert criteria["m3"]["all"] > 93
  # Not asserted: M3's interval clear of M2's (overlapped in the plain run); judge pairwise
  # accuracy on the held-out EFT split (flat at ~52-55 %, unlike the paper's rise).
