"""Data for `score`: typed records, benchmark loaders, SCoRe prompts, TFDS builders, grain pipelines.

Importing `score.data` is light (json, re, dataclasses): `tensorflow_datasets`, `grain`,
`orbax` and `transformers` are imported only inside the functions that need them
(`score.data.tfds_builders`, `score.data.pipeline`). Stands alone: no model, no trainer.

    from score import data
    math500 = data.load_math500()                      # 500 Problems
    mbpp = data.load_mbpp("train")                     # 374 Problems (task ids 601-974)
    mine = data.load_jsonl("my.jsonl", {"problem": "question", "answer": "final"})
    x1 = data.prompts.first_turn_prompt(math500[0])    # plain text for base checkpoints
"""

import importlib

from score.data import answers, prompts
from score.data.loaders import (
    LOADERS,
    MBPP_SPLITS,
    data_dir,
    load,
    load_gsm8k,
    load_humaneval,
    load_jsonl,
    load_math,
    load_math500,
    load_mbpp,
)
from score.data.records import DataError, Problem, Problems

_LAZY_MODULES = ("pipeline", "tfds_builders", "synthetic")


def __getattr__(name):
  # `score.data.pipeline` etc. on first use, so `import score.data` stays light.
  if name in _LAZY_MODULES:
    return importlib.import_module(f"score.data.{name}")
  raise AttributeError(f"module 'score.data' has no attribute {name!r}")


__all__ = [
    "DataError",
    "LOADERS",
    "MBPP_SPLITS",
    "Problem",
    "Problems",
    "answers",
    "data_dir",
    "load",
    "load_gsm8k",
    "load_humaneval",
    "load_jsonl",
    "load_math",
    "load_math500",
    "load_mbpp",
    "prompts",
]
