"""Smoke tests of the benchmark scripts: each runs at a tiny size (`--smoke`) and prints one
valid JSON line with its headline fields. They check that the scripts work, not their numbers.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *flags, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # conftest's 8 virtual devices are not what a user runs
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", script), "--smoke", *flags],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout[-3000:]
  return json.loads(lines[0])


def _machine_ok(result):
  m = result["machine"]
  assert m["cpu_count"] >= 1 and "load_avg_1m" in m and m["versions"]["jax"]
  assert result["peak_rss_mb"] > 0 if "peak_rss_mb" in result else True


def test_train_step_smoke():
  r = _run("train_step.py")
  assert r["benchmark"] == "train_step"
  (shape,) = r["shapes"]
  for key in ("jax_tokens_per_s", "torch_tokens_per_s", "ratio", "cpu_time_ratio", "jax_mfu",
              "torch_mfu", "jax_mfu_cpu", "peak_rss_mb"):
    assert shape[key] > 0, key
  # Identical weights and batch: the first losses agree.
  assert shape["first_loss_jax"] == pytest.approx(shape["first_loss_torch"], abs=1e-4)
  _machine_ok(r)


def test_rl_step_smoke():
  r = _run("rl_step.py")
  assert r["benchmark"] == "rl_step"
  for side in ("jax_s", "torch_s"):
    assert {"rollout", "rewards", "ref_logprobs", "update", "total", "total_cpu"} <= set(r[side])
    assert r[side]["total"] > 0
  assert r["ratio"] > 0 and r["episodes"] == r["prompts"] * r["samples_per_prompt"]
  # Identical weights: the torch reference scores the JAX episodes like the JAX reference.
  assert r["ref_logprob_max_abs_diff"] < 1e-3
  _machine_ok(r)


def test_sampler_smoke():
  r = _run("sampler.py")
  assert r["benchmark"] == "sampler" and r["tokens_identical"]
  for key in ("jax_tokens_per_s", "torch_tokens_per_s", "bandwidth_gb_s", "weight_mb",
              "bandwidth_bound_tokens_per_s", "jax_fraction_of_bound", "torch_fraction_of_bound"):
    assert r[key] > 0, key
  assert r["jax_fraction_of_bound"] == pytest.approx(
      r["jax_tokens_per_s"] / r["bandwidth_bound_tokens_per_s"], rel=0.01)


def test_rewards_smoke():
  r = _run("rewards.py")
  assert r["benchmark"] == "rewards"
  assert r["humaneval"]["items"] == 4 and r["humaneval"]["items_per_s"] > 0
  # Canonical solutions pass; gold answers match themselves; perturbed ones mostly do not.
  assert r["humaneval"]["fraction_scored_1"] == 1.0
  assert r["math_same"]["fraction_scored_1"] == 1.0
  assert r["math_perturbed"]["fraction_scored_1"] <= 0.25
  _machine_ok(r)
