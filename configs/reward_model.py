r"""Bradley–Terry reward model on your preference data (JSONL) and checkpoint.

  python -m experiments.main --config configs/reward_model.py:model_dir=/ckpt/qwen2.5-0.5b-instruct,train_path=/data/prefs.jsonl \
      --workdir /tmp/rm
  python -m experiments.main --config configs/reward_model.py:runlocal --workdir /tmp/rm

Data (`data.kind`): "pairs" — ``{"prompt", "chosen", "rejected"}`` per line — or "ranked" —
``{"prompt", "responses": [{"text", "rank"}, ...]}`` (rank 0 best, ties share a rank; all
K-choose-2 pairs of a prompt in one batch element, InstructGPT). Prompts with fewer responses
than the most of any prompt are padded (the padding takes part in no pair). Malformed lines
stop the run with file:line. Held-out prompts: `eval_path`, or `eval_fraction` of the training
file (split by prompt). The reward model reads what the policy sees and writes: the prompt in
`format` "chat" (the checkpoint's chat template) or "plain" ("Question: …\n\nAnswer: ", as
`configs/self_rewarding.py`), the response and EOS, at most `max_len` tokens (longer texts keep
their end, where the reward is read).

The body is `model_dir`'s decoder with a zero-initialised scalar head; the trained params are
exported to `<workdir>/reward_model_params`, from which `configs/rlvr_math.py`
(`rm_dir=<workdir>`) initialises PPO's value model. `runlocal` trains a tiny checkpoint (+ BPE
tokenizer) on synthetic ranked data it writes to the workdir.
"""

import ml_collections

from configs import score_common
from score.utils import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, model_dir="", train_path="", eval_path="",
                             kind="pairs", format="chat", seed=0, steps=1000)
  c = ml_collections.ConfigDict()
  c.trainer = "reward_model"
  c.seed = arg.seed
  c.model = score_common.model(arg.model_dir)
  c.data = ml_collections.ConfigDict(dict(
      runlocal=arg.runlocal, train_path=arg.train_path, eval_path=arg.eval_path,
      kind=arg.kind, format="plain" if arg.runlocal else arg.format,
      eval_fraction=0.25 if arg.runlocal else 0.05, max_len=64 if arg.runlocal else 1024))
  c.rm = ml_collections.ConfigDict(dict(
      steps=6 if arg.runlocal else arg.steps, batch_size=8 if arg.runlocal else 64,
      num_responses=0,  # 0: the most responses of any prompt (pairs: 2)
      lr=1e-3 if arg.runlocal else 9e-6, warmup_steps=0 if arg.runlocal else 30,
      schedule="constant" if arg.runlocal else "cosine", end_lr_factor=0.0, grad_clip=1.0,
      weight_decay=0.0, checkpoint_every=3 if arg.runlocal else 200,
      log_every=1 if arg.runlocal else 20))
  c.eval = ml_collections.ConfigDict(dict(batch_size=16 if arg.runlocal else 64))
  score_common.scale(c)
  c.lock()
  return c
