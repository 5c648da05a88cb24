r"""RLVR on MATH: PPO with a value model (Tülu 3, Lambert et al. 2024, arXiv 2411.15124, §6).

  python -m experiments.main --config configs/rlvr_math.py:model_dir=/ckpt/tulu-8b-dpo \
      --workdir /tmp/rlvr_math
  python -m experiments.main --config configs/rlvr_math.py:runlocal --workdir /tmp/rlvr_local

Reward = α·[answer verified] with α = 10, −10 for a response without EOS, minus a per-token
k1 KL to the reference in the reward (β = 0.05 at 8B). PPO: clip 0.2, GAE γ = 1, λ = 0.95,
4 PPO epochs per rollout batch, value-loss coefficient 0.1, gradient-norm clip 1.0, lr 3e-7
(the report decays it linearly; `common.make_optimizer` offers constant or cosine, so constant
here), temperature 1. The value model is initialised from a reward model
(`rm_dir=` a workdir of the `reward_model` trainer with the same architecture); without one it
starts from the policy's body with a zero head. Batch sizes and response length here are ours
(64 prompts × 1 sample, 1024 new tokens), not the report's. `:runlocal` runs the same
trainer for a few steps on synthetic addition (tests); `:synthetic` is a minutes-long CPU
run on the GRPO demo's task and base model (configs/grpo_synthetic.py) with PPO instead;
`:math_local` one tiny step of the MATH path on a tiny random checkpoint (a smoke run).

Measured with `:synthetic` (seed 0, commit 9a80e8d, 2 CPU cores shared with other jobs,
10 min 54 s wall: the GRPO demo's 300-step warm-up, 100 PPO steps, both evaluations): greedy
accuracy on 500 held-out problems 29.0 ± 4.0 → 78.0 ± 3.6 % (tests/test_rl_results_slow.py).
"""

import ml_collections

from configs import grpo_math
from configs import grpo_synthetic
from configs import score_common
from configs import sft_synthetic
from score.utils import config as config_lib


def ppo_rl(**overrides):
  """The `rl` section of the PPO trainer with the Tülu 3 RLVR defaults (`policy_loss`,
  `tis_level`, `tis_cap`, `mismatch_threshold`: see `grpo_synthetic.rl_config`)."""
  rl = dict(
      seed=0, steps=1000, prompts_per_step=64, samples_per_prompt=1, temperature=1.0,
      policy_loss="ppo_clip", eps_low=0.2, eps_high=0.2, dual_clip=0.0,
      tis_level="none", tis_cap=2.0, mismatch_threshold=0.1, gamma=1.0, lam=0.95,
      whiten_advantages=True,
      beta=0.05, kl_estimator="k1", kl_placement="reward", reduction="token",
      vf_coef=0.1, value_clip=0.2, num_epochs=4, num_minibatches=1,
      lr=3e-7, value_lr=3e-7, warmup_steps=0, schedule="constant", end_lr_factor=0.0,
      grad_clip=1.0, weight_decay=0.0, b1=0.9, b2=0.999, checkpoint_every=50, log_every=1)
  rl.update(overrides)
  return ml_collections.ConfigDict(rl)


def value_config(rm_dir=""):
  return ml_collections.ConfigDict(dict(
      init="reward_model" if rm_dir else "policy", reward_model_dir=rm_dir))


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, math_local=False, synthetic=False,
                             model_dir="", rm_dir="", seed=0, format="chat", steps=100)
  c = ml_collections.ConfigDict()
  c.trainer = "ppo"
  c.seed = arg.seed
  c.value = value_config(arg.rm_dir)
  c.reward = grpo_synthetic.reward_config(verifiable=10.0, no_eos=1.0)
  if arg.runlocal:
    c.title = "PPO / RLVR (runlocal smoke run on synthetic addition)"
    c.task = sft_synthetic.task_config(num_digits=4)
    c.model = sft_synthetic.tiny_model_config(hidden_size=32)
    c.warmup = score_common.warmup(10, batch_size=16, checkpoint_every=5)
    c.eval = score_common.eval_config(dict(num_problems=16, seed=12345, batch_size=256))
    c.rl = ppo_rl(seed=arg.seed, steps=2, prompts_per_step=8, num_epochs=2, num_minibatches=2,
                  lr=3e-4, value_lr=1e-3, schedule="constant", checkpoint_every=1)
  elif arg.synthetic:
    # The GRPO demo's task, model and SFT warm-up (configs/grpo_synthetic.py), with PPO.
    demo = grpo_synthetic.get_config(f"seed={arg.seed}")
    c.title = "PPO / RLVR on synthetic addition (greedy, held-out problems)"
    c.task, c.model, c.warmup, c.eval = demo.task, demo.model, demo.warmup, demo.eval
    c.rl = ppo_rl(seed=arg.seed, steps=arg.steps, prompts_per_step=128, num_epochs=4,
                  num_minibatches=2, lr=3e-4, value_lr=1e-3, checkpoint_every=50, log_every=5)
  else:
    local = arg.math_local
    c.title = "PPO / RLVR on MATH500 (greedy)"
    c.runlocal_model = local and not arg.model_dir
    c.task = grpo_math.math_task(arg, max_new_tokens=8) if local else grpo_math.math_task(arg)
    c.model = score_common.model(arg.model_dir)
    c.warmup = score_common.warmup(0)
    c.eval = score_common.eval_config(dict(num_problems=4 if local else 0, seed=0,
                                            batch_size=4 if local else 64))
    c.rl = ppo_rl(seed=arg.seed)
    if local:
      c.rl.update(dict(steps=1, prompts_per_step=2, num_epochs=1, checkpoint_every=1))
  score_common.scale(c)
  c.lock()
  return c
