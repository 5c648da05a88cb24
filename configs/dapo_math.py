r"""DAPO on MATH (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at
Scale", arXiv 2503.14476).

  python -m experiments.main --config configs/dapo_math.py:model_dir=/ckpt/qwen2.5-7b \
      --workdir /tmp/dapo_math
  python -m experiments.main --config configs/dapo_math.py:runlocal --workdir /tmp/dapo_local

DAPO = GRPO (group advantages (r − mean)/(std + 1e-6), Bessel-corrected std as in verl, which
DAPO's code builds on: `adv_std="sample"`, `adv_scale="group"`) with: clip-higher (ε_low 0.2,
ε_high 0.28); dynamic sampling (groups whose rewards are all equal are dropped and refilled);
token-level loss (sum over every token of the batch / number of tokens); overlong reward
shaping (0 up to L_max − L_cache, then linearly to −1 at L_max; paper: L_max 20480, L_cache
4096); no KL term (β = 0). Paper settings: AdamW lr
1e-6 with 20 warm-up rollout steps, 512 prompts × 16 responses per rollout step, mini-batches
of 32 prompts (16 gradient updates per rollout step). Reward: ±1 in the paper (correct +1,
wrong −1); here 1/0 from the MATH answer checker (a constant shift, which group advantages
remove). The paper trains on DAPO-Math-17K; this config uses the 12k MATH split and MATH500.
`:runlocal` runs the same options for a few steps on synthetic addition (tests);
`:synthetic` is a minutes-long CPU run on the GRPO demo's task, base model and batch
(configs/grpo_synthetic.py) with DAPO's options (seed 0, commit 9a80e8d, 2 shared CPU
cores, 6 min 15 s: greedy accuracy on 500 held-out problems 29.0 ± 4.0 → 81.8 ± 3.4 % after 200
steps; tests/test_rl_results_slow.py);
`:math_local` one tiny step of the MATH path on a tiny random checkpoint (smoke run).
"""

import ml_collections

from configs import grpo_math
from configs import grpo_synthetic
from configs import score_common
from score.utils import config as config_lib

DAPO_RL = dict(advantage="grpo", adv_std="sample", adv_scale="group", adv_eps=1e-6,
               eps_low=0.2, eps_high=0.28, beta=0.0, reduction="token", dynamic_sampling=True)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, math_local=False, synthetic=False,
                             model_dir="", seed=0, format="chat", steps=200,
                             max_new_tokens=20480, cache_len=4096)
  if arg.runlocal:
    c = grpo_synthetic.get_config(f"runlocal,seed={arg.seed}")
    with c.unlocked():
      c.title = "DAPO (runlocal smoke run on synthetic addition)"
      c.reward = grpo_synthetic.reward_config(verifiable=1.0, dapo_overlong=1.0, max_len=0,
                                              cache_len=2)
      c.rl.update(DAPO_RL)
      c.rl.max_sampling_rounds = 3
    return c
  if arg.synthetic:
    # The GRPO demo's task, model, SFT warm-up and batch (configs/grpo_synthetic.py), with
    # DAPO's options; no overlong shaping (answers are 2–4 tokens of a 5-token budget).
    c = grpo_synthetic.get_config(f"seed={arg.seed},steps={arg.steps}")
    with c.unlocked():
      c.title = "DAPO on synthetic addition (greedy, held-out problems)"
      c.rl.update(DAPO_RL)
    return c
  c = ml_collections.ConfigDict()
  c.trainer = "grpo"
  c.title = "DAPO on MATH500 (greedy)"
  c.seed = arg.seed
  local = arg.math_local
  c.runlocal_model = local and not arg.model_dir
  max_new, cache = (8, 4) if local else (arg.max_new_tokens, arg.cache_len)
  c.task = grpo_math.math_task(arg, max_new_tokens=max_new, max_len=max_new + 1024)
  c.model = score_common.model(arg.model_dir)
  c.warmup = score_common.warmup(0)
  c.eval = score_common.eval_config(dict(num_problems=4 if local else 0, seed=0,
                                          batch_size=4 if local else 64))
  c.reward = grpo_synthetic.reward_config(verifiable=1.0, dapo_overlong=1.0, max_len=max_new,
                                          cache_len=cache)
  c.rl = grpo_synthetic.rl_config(
      seed=arg.seed, steps=500, prompts_per_step=512, samples_per_prompt=16, temperature=1.0,
      num_epochs=1, num_minibatches=16, max_sampling_rounds=8, lr=1e-6, warmup_steps=20 * 16,
      weight_decay=0.1, checkpoint_every=20, log_every=1, **DAPO_RL)
  if local:
    c.rl.update(dict(steps=1, prompts_per_step=2, samples_per_prompt=2, num_minibatches=2,
                     max_sampling_rounds=2, warmup_steps=0, checkpoint_every=1))
  score_common.scale(c)
  c.lock()
  return c
