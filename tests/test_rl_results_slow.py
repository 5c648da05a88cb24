"""The README's measured CPU rows of GRPO, DAPO, PPO and the reward model, each re-run with its
README command (slow tier: about 3 to 11 minutes each on 2 shared CPU cores).

Each command runs as the README runs it: a subprocess without tests/conftest.py's 8 virtual
devices (which change XLA's float rounding and so the run). The asserted claims are the
README's: the number it prints, within a tolerance for float differences between machines,
and for RL a lift of tens of points clear of the base model's interval. When one fails, the
README row is out of date: re-measure it (the command is in the row) rather than loosen this.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config(config: str, workdir) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  subprocess.run([sys.executable, "-m", "experiments.main", "--config", config,
                  "--workdir", str(workdir)], cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)["results"]


# (config, trained model's name, README: base %, after RL %)
RL_ROWS = {
    "grpo": ("configs/grpo_synthetic.py", "grpo", 29.0, 77.4),
    "dapo": ("configs/dapo_math.py:synthetic", "grpo", 29.0, 81.8),
    "ppo": ("configs/rlvr_math.py:synthetic", "ppo", 29.0, 78.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(RL_ROWS))
def test_rl_lifts_the_weak_base_model_as_the_readme_says(row, tmp_path):
  config, name, base_claim, rl_claim = RL_ROWS[row]
  results = run_config(config, tmp_path)
  base, trained = results["base"], results[name]
  assert base["n"] == trained["n"] == 500
  assert abs(base["accuracy"] - base_claim) <= 5.0, base
  assert abs(trained["accuracy"] - rl_claim) <= 6.0, trained
  # Tens of points, clear of the base model's interval.
  assert trained["accuracy"] - base["accuracy"] >= 30.0
  assert (trained["accuracy"] - trained["accuracy_ci95"]
          > base["accuracy"] + base["accuracy_ci95"])


@pytest.mark.slow
def test_reward_model_pair_accuracy_as_the_readme_says(tmp_path):
  results = run_config("configs/reward_model_synthetic.py", tmp_path)
  assert results["trained"]["pairs"] == 1500
  assert abs(results["trained"]["accuracy"] - 75.5) <= 3.0, results["trained"]
  assert results["init"]["accuracy"] == 0.0  # the zero-initialised head ties every pair
