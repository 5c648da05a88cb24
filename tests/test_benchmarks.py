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
  # Equal hardware by default: torch gets every core, as XLA's CPU backend does.
  assert m.get("torch_threads", m["cpu_count"]) == m["cpu_count"]
  assert result["peak_rss_mb"] > 0 if "peak_rss_mb" in result else True


@pytest.mark.slow  # 40+ s; the fast tier keeps rl_step's smoke, which runs the same helpers
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_smoke(dtype):
  r = _run("train_step.py", "--dtype", dtype)
  assert r["benchmark"] == "train_step" and r["dtype"] == dtype
  assert r["torch_device"] == "cpu" and r["peak_matmul"] == f"256^3 {dtype}"
  (shape,) = r["shapes"]
  for key in ("jax_tokens_per_s", "torch_tokens_per_s", "ratio", "cpu_time_ratio", "jax_mfu",
              "torch_mfu", "jax_mfu_cpu", "peak_rss_mb"):
    assert shape[key] > 0, key
  assert "jax_mfu_spec" not in shape  # no data-sheet peak for a CPU
  # Identical weights and batch: the first losses agree (bf16: JAX's model and torch's
  # autocast round at different places).
  tol = 1e-4 if dtype == "float32" else 2e-2 * abs(shape["first_loss_torch"])
  assert shape["first_loss_jax"] == pytest.approx(shape["first_loss_torch"], abs=tol)
  _machine_ok(r)


def test_presets_have_the_published_parameter_counts():
  """`--preset qwen2.5-0.5b` builds the Qwen2.5-0.5B (= Qwen2-0.5B) shape: 494,032,768
  parameters, tied embeddings (built on torch's meta device: no memory)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from benchmarks import common, train_step  # pylint: disable=g-import-not-at-top
  shape = common.preset_shape("qwen2.5-0.5b")
  with torch.device("meta"):
    model = transformers.Qwen2ForCausalLM(train_step.torch_config(shape, transformers, 256))
  assert sum(p.numel() for p in model.parameters()) == 494_032_768
  assert model.config.tie_word_embeddings and model.config.vocab_size == 151936


def test_data_sheet_peaks_match_device_kinds():
  sys.path.insert(0, ROOT)
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  assert common.data_sheet_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
  assert common.data_sheet_bf16_tflops("NVIDIA H100 PCIe") == 756.0
  assert common.data_sheet_bf16_tflops("NVIDIA H200") == 989.4
  assert common.data_sheet_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert common.data_sheet_bf16_tflops("TPU v5 lite") == 197.0
  assert common.data_sheet_bf16_tflops("cpu") is None


def test_torch_device_resolution():
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  assert common.torch_device("cpu", torch) == "cpu"
  assert common.torch_device("auto", torch) == ("cuda" if torch.cuda.is_available() else "cpu")
  if not torch.cuda.is_available():
    with pytest.raises(SystemExit, match="torch sees no GPU"):
      common.torch_device("cuda", torch)


@pytest.mark.slow  # benchmark smokes are all slow (train_step, sampler too)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rl_step_smoke(dtype):
  r = _run("rl_step.py", "--dtype", dtype)
  assert r["benchmark"] == "rl_step" and r["dtype"] == dtype
  for key in ("jax_mfu", "torch_mfu", "matmul_peak_tflops"):
    assert r[key] > 0, key
  assert 0 < r["model"]["matmul_params"] <= r["model"]["params"]
  for side in ("jax_s", "torch_s"):
    assert {"rollout", "rewards", "ref_logprobs", "update", "total", "total_cpu"} <= set(r[side])
    assert r[side]["total"] > 0
  assert r["ratio"] > 0 and r["episodes"] == r["prompts"] * r["samples_per_prompt"]
  # Identical weights: the torch reference scores the JAX episodes like the JAX reference.
  assert r["ref_logprob_max_abs_diff"] < (1e-3 if dtype == "float32" else 5e-2)
  _machine_ok(r)


@pytest.mark.slow  # 35+ s; see test_train_step_smoke
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sampler_smoke(dtype):
  r = _run("sampler.py", "--dtype", dtype)
  assert r["benchmark"] == "sampler" and r["dtype"] == dtype and r["bandwidth_of"] == "host"
  if dtype == "float32":  # bf16 rounding may part the two greedy paths
    assert r["tokens_identical"] and r["rows_identical"] == 1.0
  _machine_ok(r)
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


@pytest.mark.slow
def test_accelerator_script_plumbing(tmp_path):
  """`SMOKE=1 bash benchmarks/accelerator.sh`: the three GPU runs at smoke size, each JSON line
  and log under $OUT, exit status 0 (the script itself is for machines with a GPU)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", SMOKE="1", OUT=str(tmp_path),
             PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh")],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("train_step", "sampler", "rl_step"):
    with open(tmp_path / f"{name}.json") as f:
      assert json.loads(f.read())["benchmark"] == name
