r"""GRPO on MATH (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300, §4.2 / §5.2).

  python -m experiments.main --config configs/grpo_math.py:model_dir=/ckpt/qwen2.5-1.5b-instruct \
      --workdir /tmp/grpo_math
  python -m experiments.main --config configs/grpo_math.py:runlocal --workdir /tmp/grpo_math_local

The paper's GRPO hyper-parameters: lr 1e-6, KL coefficient β = 0.04 (k3, in the loss),
64 samples per question, batch 1024 (16 questions × 64), max length 1024, one policy update
per exploration stage; advantages (r − mean)/(std + 1e-6) over the group with the
Bessel-corrected std (`adv_std="sample"`, `adv_scale="group"`: TRL's and verl's default; the
paper does not say which std), the loss averaged over each sequence then over the batch.
Trains on the 12k MATH split, evaluates greedily on MATH500 (`results.md`: base vs GRPO).
Reward: the MATH answer checker (`score.rewards.math`), 1/0.
`:runlocal` is a seconds-long smoke run of the same trainer on synthetic addition (tests);
`:math_local` runs this config's MATH path (data, prompts, answer checker) for one tiny step
on a tiny random checkpoint with a tokenizer trained on the problems (a smoke run, not a result).
"""

import ml_collections

from configs import grpo_synthetic
from configs import score_common
from score.utils import config as config_lib


def math_task(arg, *, max_new_tokens=1024, max_len=2048):
  return score_common.text_task("math", train="math", eval="math500", prompt_format=arg.format,
                                max_new_tokens=max_new_tokens, max_len=max_len)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, math_local=False, model_dir="", seed=0,
                             format="chat")
  if arg.runlocal:
    c = grpo_synthetic.get_config(f"runlocal,seed={arg.seed}")
    with c.unlocked():
      c.title = "GRPO (runlocal smoke run on synthetic addition)"
    return c
  c = ml_collections.ConfigDict()
  c.trainer = "grpo"
  c.title = "GRPO on MATH500 (greedy)"
  c.seed = arg.seed
  local = arg.math_local
  c.runlocal_model = local and not arg.model_dir
  c.task = math_task(arg, max_new_tokens=8) if local else math_task(arg)
  c.model = score_common.model(arg.model_dir)
  c.warmup = score_common.warmup(0)
  c.eval = score_common.eval_config(dict(num_problems=4 if local else 0, seed=0,
                                          batch_size=4 if local else 64))
  c.reward = grpo_synthetic.reward_config(verifiable=1.0)
  c.rl = grpo_synthetic.rl_config(
      seed=arg.seed, steps=1000, prompts_per_step=16, samples_per_prompt=64, temperature=1.0,
      advantage="grpo", adv_std="sample", adv_scale="group", adv_eps=1e-6, eps_low=0.2,
      eps_high=0.2, beta=0.04, kl_estimator="k3",
      kl_placement="loss", reduction="sequence", num_epochs=1, num_minibatches=1, lr=1e-6,
      checkpoint_every=50, log_every=1)
  if local:
    c.rl.update(dict(steps=1, prompts_per_step=2, samples_per_prompt=2, checkpoint_every=1))
  score_common.scale(c)
  c.lock()
  return c
