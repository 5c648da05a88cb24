"""The GPU rehearsal's pieces: the training-only shaping term, the per-run resource log, the
GSM8K config's variants; the rehearsal itself runs in the slow tier (about 30 min)."""

import json
import os
import subprocess
import sys

import pytest

from configs import score_gsm8k
from score.data import loaders
from score.trainers import envs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.utils import tiny_checkpoint  # pylint: disable=g-import-not-at-top
  problems = loaders.load("gsm8k", split="test")[:50]
  path = tiny_checkpoint.make_tiny_checkpoint(
      str(tmp_path_factory.mktemp("tiny")), [p.problem + p.solution for p in problems])
  return hf.load_tokenizer(path)


def _env(tokenizer, **shaping):
  problems = loaders.load("gsm8k", split="test")[:2]
  return envs.TextEnv(tokenizer=tokenizer, train=problems, heldout=problems, task="math",
                      prompt_format="chat", seed=0, max_new_tokens=4, max_len=512, **shaping)


def test_known_token_shaping_is_a_training_only_term(tokenizer):
  n = len(tokenizer)
  env = _env(tokenizer, shaping="known_tokens", shaping_weight=0.5)
  known, unknown = [3, 4, 5, 6], [n, n + 7, 151_000, n + 1]
  assert env.shaping_bonus([known, unknown, known[:2] + unknown[:2], known[:3] + [n]]) == [
      0.5, 0.0, 0.25, 0.375]
  assert _env(tokenizer).shaping_bonus([known, unknown]) == [0.0, 0.0]  # off by default
  p = env.heldout[0]
  right = tokenizer.encode(f"Final Answer: The final answer is ${p.answer}$.",
                           add_special_tokens=False)
  assert env.rewards([p], [right]) == [1.0]  # evaluation's reward never includes it
  with pytest.raises(ValueError, match="task.shaping='length'.*known_tokens"):
    _env(tokenizer, shaping="length", shaping_weight=1.0)


def test_resource_log_counts_compiles_and_peak_rss(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from score.utils import run as run_lib  # pylint: disable=g-import-not-at-top
  log = run_lib.ResourceLog(str(tmp_path))
  x, y = jnp.arange(7.0), jnp.arange(5.0)
  before = log.summary()
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(x).block_until_ready()
  jax.jit(lambda x: jnp.cos(x) - 2.0)(y).block_until_ready()
  out = log.write()
  assert out["compiles"] - before["compiles"] == 2
  assert out["compile_s"] > before["compile_s"] and out["peak_rss_mb"] > 50
  assert json.load(open(tmp_path / "resources.json")) == out


def test_gsm8k_config_variants():
  full = score_gsm8k.get_config()
  assert full.task.train == "gsm8k" and dict(full.task.train_kwargs) == {"split": "train"}
  assert dict(full.task.eval_kwargs) == {"split": "test"} and full.task.shaping == ""
  assert full.methods == ("base", "self_refine", "star", "pair_sft", "score")
  assert score_gsm8k.get_config("ablations").ablations == (
      "no_multi_turn", "no_stage1", "no_shaping", "star_stage2")
  orchestrator = score_gsm8k.get_config("rehearsal")
  assert orchestrator.trainer == "rehearsal" and orchestrator.rehearsal.preset == "qwen2.5-0.5b"
  run = score_gsm8k.get_config(f"{orchestrator.rehearsal.run_arg},model_dir=/m")
  assert run.model.model_dir == "/m" and run.methods == ("score",)
  assert (run.rl.stage1_steps, run.rl.stage2_steps, run.rl.prompts_per_step,
          run.rl.samples_per_prompt, run.task.max_new_tokens) == (2, 2, 4, 2, 64)
  assert run.task.shaping == "known_tokens" and run.model.dtype == "bfloat16"
  assert run.model.lora.rank == 8 and run.model.base_dtype == "bfloat16"
  assert full.model.lora.rank == 0  # LoRA is an override for the full runs


@pytest.mark.slow
def test_rehearsal_end_to_end(tmp_path):
  """The README's rehearsal command: kill, resume, compare, export, all checks pass."""
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main", "--config=configs/score_gsm8k.py:rehearsal",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=3600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "rehearsal.json"))
  assert all(summary["checks"].values()), summary["checks"]
  assert summary["run"]["compile_s"] > 0 and summary["run"]["peak_rss_mb"] > 0
  assert set(summary["run"]["phase_s"]) == {"score/r0_stage1", "score/r0_stage2"}
