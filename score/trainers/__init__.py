"""Trainers compose models, sampling, losses, rewards and data; each is `fn(config, workdir)`.

Looked up by the name in `config.trainer`; modules are imported on use, so `import score`
stays light.
"""

import importlib

TRAINERS = {
    "sft": "score.trainers.sft:train",
    "self_correction_suite": "score.trainers.suite:train",
    "grpo": "score.trainers.grpo:train",
    "ppo": "score.trainers.ppo:train",
    "reward_model": "score.trainers.reward_model:train",
    "dpo": "score.trainers.dpo:train",
    "self_rewarding": "score.trainers.self_rewarding:train",
    "rehearsal": "score.trainers.rehearsal:train",
    "self_rewarding_synthetic": "score.trainers.self_rewarding_synthetic:train",
}


def check_inputs(config) -> None:
  """Stops before any work when `config.model.model_dir` is set but is not a usable local
  checkpoint (missing directory, config.json, weights or tokenizer: all named at once)."""
  model_dir = config.get("model", {}).get("model_dir")
  if model_dir:
    from score.models import hf  # pylint: disable=g-import-not-at-top
    hf.check_checkpoint_dir(model_dir, what="model.model_dir")


def get(name: str):
  """The `train(config, workdir)` function registered as `name`."""
  if name not in TRAINERS:
    raise ValueError(f"Unknown trainer {name!r}; known: {sorted(TRAINERS)}")
  module, _, fn = TRAINERS[name].partition(":")
  return getattr(importlib.import_module(module), fn)
