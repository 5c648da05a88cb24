r"""SCoRe on GSM8K at the 1–2B scale, where a public re-implementation first saw reward signal.

  python -m experiments.main --config configs/score_gsm8k.py:model_dir=/ckpt/qwen2.5-1.5b-instruct \
      --workdir /tmp/score_gsm8k

Kumar et al. (2024, arXiv 2409.12917) train SCoRe on MATH with Gemini models; the public
re-implementation that got signal on real GPUs (shared/SPEC.md §8) found that MATH on a 4B
model gave almost no reward and moved to GSM8K with Qwen2.5-1.5B-Instruct. This config is that
setting: train on GSM8K train (7,473 problems, `data/gsm8k_train.jsonl`), evaluate greedy, two
attempts, on GSM8K test (1,319). The reward is 1 when the final answer the prompt asks for
("Final Answer: The final answer is $answer$") equals the number after `####` in the gold
rationale (numerically: `18`, `18.0` and `\$18` all match `18`; `score.rewards.math`). Methods:
base / Self-Refine / STaR / Pair-SFT / SCoRe; `:ablations` adds Table 4's ablations. There is no
published GSM8K table for SCoRe: compare the methods with each other.

Defaults are sized for one 80 GB GPU and a 1.5B model: Adam lr 5e-6 (SCoRe's MATH setting),
64 prompts × 4 samples = 256 sequences per step (SPEC §6: ≥ 256 sequences, leave-one-out over
4 samples), 300 Stage I + 600 Stage II steps, 512 new tokens per attempt (GSM8K solutions are
short), α = 10, β1 = 0.01, β2 = 0.1, bf16 compute with fp32 params.
`:runlocal` runs every phase for a step or two on a tiny random checkpoint with a tokenizer
trained on the problems (a smoke test, not a result).

`:rehearsal` is the run to do before renting a GPU (`score.trainers.rehearsal`): it writes a
random-weight Qwen2.5-0.5B-shaped checkpoint with a tokenizer, then runs SCoRe Stage I and
Stage II for two steps each on GSM8K prompts (4 prompts × 2 samples, 64 new tokens per turn,
bf16 compute, LoRA) through `experiments.main`, kills it after the first step, resumes it,
compares it with an uninterrupted run, exports it, and prints compile seconds, per-phase
seconds and peak RSS:

  python -m experiments.main --config configs/score_gsm8k.py:rehearsal --workdir /tmp/rehearsal

A random model earns no GSM8K reward, so the rehearsal's runs add a shaping term it can earn
(`task.shaping="known_tokens"`: the fraction of sampled tokens its tokenizer can write) so that
advantages, and the adapters, are non-zero.
"""

import ml_collections

from configs import score_common
from score.utils import config as config_lib


def rehearsal_config(seed: int):
  """`:rehearsal` without `model_dir`: the orchestrator (`score.trainers.rehearsal`)."""
  c = ml_collections.ConfigDict()
  c.trainer = "rehearsal"
  c.seed = seed
  c.rehearsal = ml_collections.ConfigDict(dict(
      preset="qwen2.5-0.5b", tokenizer_vocab=4096, config_module="configs.score_gsm8k",
      run_arg=f"rehearsal,seed={seed}"))
  c.lock()
  return c


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, ablations=False, rehearsal=False,
                             model_dir="", seed=0, format="chat")
  if arg.rehearsal and not arg.model_dir:
    return rehearsal_config(arg.seed)
  rehearsal = arg.rehearsal  # the rehearsal's runs: real shape, a few short steps
  local = arg.runlocal
  c = score_common.suite_config(arg, title="SCoRe on GSM8K test (greedy, two attempts)",
                                published="")
  c.task = score_common.text_task(
      "math", train="gsm8k", eval="gsm8k", train_kwargs=dict(split="train"),
      eval_kwargs=dict(split="test"), prompt_format=arg.format,
      max_new_tokens=8 if local else 64 if rehearsal else 512,
      max_len=1024 if local or rehearsal else 2048,
      shaping="known_tokens" if rehearsal else "", shaping_weight=1.0 if rehearsal else 0.0)
  c.model = score_common.model(arg.model_dir, dtype="float32" if local else "bfloat16")
  if rehearsal:  # LoRA on a bf16 base, as a 7B run on one GPU would be
    c.model.base_dtype = "bfloat16"
    c.model.lora = score_common.lora(rank=8)
  c.warmup = score_common.warmup(0)
  c.eval = score_common.eval_config(dict(
      num_problems=8 if local else 1 if rehearsal else 0, seed=0, batch_size=8 if local else 64))
  score_common.suite_sections(
      c, arg, lr=5e-6, num_problems=2048, max_steps=300, batch_size=64,
      methods=("score",) if rehearsal else score_common.SUITE_METHODS)
  short = local or rehearsal
  c.rl = score_common.rl(
      seed=arg.seed, lr=5e-6, alpha=10.0, beta1=0.01, beta2=0.1,
      stage1_steps=1 if local else 2 if rehearsal else 300,
      stage2_steps=1 if local else 2 if rehearsal else 600,
      prompts_per_step=2 if local else 4 if rehearsal else 64,
      samples_per_prompt=2 if short else 4,
      checkpoint_every=1 if short else 25, log_every=1 if short else 10)
  score_common.scale(c)
  if rehearsal:
    c.mesh.remat = "block"
  c.lock()
  return c
