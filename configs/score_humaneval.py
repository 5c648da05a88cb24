r"""SCoRe on code — Table 3 of Kumar et al. (2024), arXiv 2409.12917: train on MBPP, evaluate on
HumanEval, greedy, two attempts; every program runs in `score.rewards.sandbox`.

  python -m experiments.main --config configs/score_humaneval.py:model_dir=/ckpt/model \
      --workdir /tmp/score_code

Hyper-parameters (paper, Gemini 1.0 Pro): Adam lr 1e-5, 1500 steps, batch 128 (32 prompts ×
4 samples), temperature 1, α = 10, β1 = 0.01, β2 = 0.25; our stage split is 500 + 1000.

MBPP-R (the table's first column; `score.eval.repair`): the base model's greedy first attempts
on MBPP test (tasks 11-510) that fail their tests are written to `<workdir>/mbpp_r.jsonl` once;
every method is then given each fixed wrong program with the self-correction instruction, and
its MBPP-R score is the % whose greedy second attempt passes (paper, PaLM-2 programs: base 47.3,
Self-Refine 30.7, Pair-SFT 59.8, SCoRe 60.6). `--config.repair.path=FILE.jsonl` scores a given
set instead (records `{"id": "mbpp/11", "first_attempt": "<program text>"}`);
`--config.repair.task=` turns it off.
"""

import ml_collections

from configs import score_common
from score.utils import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, ablations=False, model_dir="", seed=0,
                             format="chat")
  local = arg.runlocal
  c = score_common.suite_config(
      arg, title="SCoRe on HumanEval after MBPP training (Table 3; greedy, two attempts)",
      published="humaneval")
  c.task = score_common.text_task(
      "code", train="mbpp", eval="humaneval", train_kwargs={"split": "train"},
      prompt_format=arg.format, max_new_tokens=8 if local else 768,
      max_len=1024 if local else 3072, reward_timeout_s=10.0)
  c.model = score_common.model(arg.model_dir)
  c.warmup = score_common.warmup(0)
  c.eval = score_common.eval_config(dict(num_problems=4 if local else 0, seed=0,
                                          batch_size=4 if local else 64))
  c.repair = ml_collections.ConfigDict(dict(task="mbpp", split="test",
                                            num_problems=4 if local else 0, path=""))
  score_common.suite_sections(
      c, arg, lr=1e-5, num_problems=374, max_steps=200, batch_size=32,
      methods=("base", "self_refine", "pair_sft", "score"), ablations=("no_stage1", "no_shaping"))
  c.rl = score_common.rl(
      seed=arg.seed, lr=1e-5, alpha=10.0, beta1=0.01, beta2=0.25,
      stage1_steps=1 if local else 500, stage2_steps=1 if local else 1000,
      prompts_per_step=2 if local else 32, samples_per_prompt=2 if local else 4,
      checkpoint_every=1 if local else 50, log_every=1 if local else 10)
  score_common.scale(c)
  c.lock()
  return c
