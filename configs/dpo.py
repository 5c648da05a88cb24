r"""DPO (Rafailov et al. 2023) of a local checkpoint on your preference data (JSONL).

  python -m experiments.main --config configs/dpo.py:model_dir=/ckpt/qwen2.5-0.5b-instruct,train_path=/data/prefs.jsonl \
      --workdir /tmp/dpo
  python -m experiments.main --config configs/dpo.py:runlocal --workdir /tmp/dpo

Data as `configs/reward_model.py`: `kind` "pairs" (``{"prompt", "chosen", "rejected"}``) or
"ranked" (each prompt's best response against its worst; all-tied prompts are dropped);
held-out pairs from `eval_path` or `eval_fraction` of the prompts. Texts are rendered like the
policy's (`format` "chat" or "plain", `score.trainers.self_rewarding.Codec`); the loss is on
the response and its EOS; pairs longer than `max_len` tokens are dropped (counted in
results.json). The reference is the initial model (its sequence log-probs are computed once);
`log π(y|x)` is a sum over response tokens (not length-normalised). Outputs: held-out DPO
loss / implicit-reward accuracy before and after (results.md), the trained model as a Hugging
Face checkpoint in `<workdir>/model`. `runlocal`: a tiny checkpoint on synthetic ranked data,
which only shows the loop working.
"""

import ml_collections

from configs import score_common
from score.utils import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, model_dir="", train_path="", eval_path="",
                             kind="pairs", format="chat", seed=0, epochs=1.0)
  local = arg.runlocal
  c = ml_collections.ConfigDict()
  c.trainer = "dpo"
  c.seed = arg.seed
  c.model = score_common.model(arg.model_dir)
  c.data = ml_collections.ConfigDict(dict(
      runlocal=local, train_path=arg.train_path, eval_path=arg.eval_path, kind=arg.kind,
      format="plain" if local else arg.format, eval_fraction=0.25 if local else 0.05,
      max_len=96 if local else 1024))
  c.dpo = ml_collections.ConfigDict(dict(
      beta=0.1, label_smoothing=0.0, batch_size=8 if local else 32, steps=0,
      epochs=2.0 if local else arg.epochs, lr=1e-4 if local else 5e-7, schedule="cosine",
      end_lr_factor=0.1, warmup_steps=0 if local else 20, grad_clip=1.0, weight_decay=0.0,
      checkpoint_every=9 if local else 200, log_every=3 if local else 10))
  score_common.scale(c)
  c.lock()
  return c
