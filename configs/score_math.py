r"""SCoRe on MATH — Table 2 of Kumar et al. (2024), "Training Language Models to Self-Correct
via Reinforcement Learning", arXiv 2409.12917.

  python -m experiments.main --config configs/score_math.py:model_dir=/ckpt/qwen2.5-1.5b-instruct \
      --workdir /tmp/score_math

Trains on the 12k MATH split (`data/math_train_12k.jsonl`) and evaluates on MATH500, greedy,
two attempts; prints base / STaR / Pair-SFT / SCoRe beside the paper's numbers (Gemini 1.5
Flash; ours are whatever your checkpoint gives). Hyper-parameters: Adam lr 5e-6, 3000 steps,
batch 512 (128 prompts × 4 samples), temperature 1, α = 10, β1 = 0.01, β2 = 0.1. The paper
does not state how the 3000 steps split between the stages: we use 1000 + 2000.
`:ablations` adds Table 4's ablations. `:runlocal` runs every phase for a few steps on a
tiny random checkpoint with a tokenizer trained on the problems (a smoke test, not a result).
"""

from configs import score_common
from score.utils import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, ablations=False, model_dir="", seed=0,
                             format="chat")
  local = arg.runlocal
  c = score_common.suite_config(arg, title="SCoRe on MATH500 (Table 2; greedy, two attempts)",
                                published="math")
  c.task = score_common.text_task(
      "math", train="math", eval="math500", prompt_format=arg.format,
      max_new_tokens=8 if local else 1024, max_len=1024 if local else 4096)
  c.model = score_common.model(arg.model_dir)
  c.warmup = score_common.warmup(0)
  c.eval = score_common.eval_config(dict(num_problems=8 if local else 0, seed=0,
                                          batch_size=8 if local else 64))
  score_common.suite_sections(c, arg, lr=5e-6, num_problems=4096, max_steps=500, batch_size=64)
  c.rl = score_common.rl(
      seed=arg.seed, lr=5e-6, alpha=10.0, beta1=0.01, beta2=0.1,
      stage1_steps=1 if local else 1000, stage2_steps=1 if local else 2000,
      prompts_per_step=2 if local else 128, samples_per_prompt=2 if local else 4,
      checkpoint_every=1 if local else 50, log_every=1 if local else 10)
  score_common.scale(c)
  c.lock()
  return c
