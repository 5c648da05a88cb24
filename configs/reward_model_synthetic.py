r"""Bradley–Terry reward model on synthetic addition: the right sum vs sums with one digit off.

  python -m experiments.main --config configs/reward_model_synthetic.py --workdir /tmp/rm
  python -m experiments.main --config configs/reward_model_synthetic.py:runlocal --workdir /tmp/rm

K = 4 responses per prompt (1 right, 3 wrong, tied), all K-choose-2 pairs in one batch element
(InstructGPT). Reports held-out pair accuracy before and after training (`results.md`) and
exports the params to `<workdir>/reward_model_params`, from which `configs/rlvr_math.py`
(`value.init="reward_model"`) initialises PPO's value model.

Measured (seed 0, commit 9a80e8d, 2-digit addition, d_model 64 × 2 layers, 400 steps of 64
prompts, 2 CPU cores shared with other jobs, 2 min 35 s): held-out pair accuracy 75.5 % on 1,500
pairs (loss 0.693 → 0.436); the zero-initialised head ties every pair at the start (ties count
as wrong: 0.0 %). tests/test_rl_results_slow.py re-runs it.
"""

import ml_collections

from configs import score_common
from configs import sft_synthetic
from score.utils import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, seed=0, steps=400, num_digits=2)
  c = ml_collections.ConfigDict()
  c.trainer = "reward_model"
  c.seed = arg.seed
  c.task = sft_synthetic.task_config(num_digits=arg.num_digits)
  c.model = sft_synthetic.tiny_model_config(hidden_size=32 if arg.runlocal else 64)
  c.rm = ml_collections.ConfigDict(dict(
      steps=4 if arg.runlocal else arg.steps, batch_size=8 if arg.runlocal else 64,
      num_responses=4, lr=1e-3, warmup_steps=0, schedule="constant", end_lr_factor=0.0,
      grad_clip=1.0, weight_decay=0.0, checkpoint_every=2 if arg.runlocal else 100,
      log_every=1 if arg.runlocal else 20))
  c.eval = ml_collections.ConfigDict(dict(
      num_problems=16 if arg.runlocal else 500, seed=12345, batch_size=256))
  score_common.scale(c)
  c.lock()
  return c
