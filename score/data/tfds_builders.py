"""TFDS builders for the benchmarks, writing ``array_record`` and readable without TensorFlow.

Every builder stores `Problem`s with the same features (`PROBLEM_FEATURES`), so one decoder
(`to_problem`) turns any of them back into records:

    builder = MathBuilder(data_dir="/tmp/tfds")           # MATH: train (12k) + test (MATH500)
    builder.download_and_prepare()
    source = builder.as_data_source("test")               # random access, no TensorFlow
    problem = to_problem(source[0])
    ds = grain.MapDataset.source(source).map(to_problem)  # or score.data.pipeline

Notes (SPEC §7, checked with tfds 4.9.10 and no TensorFlow installed): ``_info`` builds
``tfds.core.DatasetInfo(builder=self, ...)`` directly, because ``dataset_info_from_configs``
looks for package metadata files a builder defined outside the TFDS catalogue lacks; the
default file format here is ``array_record`` (TFRecord reading needs TensorFlow); examples come
back in TFDS's shuffled order (sort by ``id`` if order matters). Builder names carry a
``score_`` prefix so they never clash with TFDS's own catalogue (which has an ``mbpp``).

This module imports `tensorflow_datasets` at import time; `score.data` imports it lazily.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from score.data import loaders
from score.data.records import Problem

__all__ = [
    "PROBLEM_FEATURES",
    "GSM8KBuilder",
    "HumanEvalBuilder",
    "MathBuilder",
    "Math500Builder",
    "MbppBuilder",
    "ProblemsBuilder",
    "build",
    "to_problem",
]

_HOMEPAGES = {
    "math": "https://github.com/hendrycks/math",
    "math500": "https://github.com/openai/prm800k",
    "mbpp": "https://github.com/google-research/google-research/tree/master/mbpp",
    "humaneval": "https://github.com/openai/human-eval",
    "gsm8k": "https://github.com/openai/grade-school-math",
}


def _features() -> "tfds.features.FeaturesDict":
  text = tfds.features.Text
  return tfds.features.FeaturesDict(
      {
          "id": text(),
          "problem": text(),
          "solution": text(),
          "answer": text(),  # "" when the task has none (code)
          "tests": tfds.features.Sequence(text()),
          "entry_point": text(),  # "" when unknown
          "metadata": text(),  # JSON
      }
  )


PROBLEM_FEATURES = _features()


def to_example(problem: Problem) -> dict[str, Any]:
  """A `Problem` as a TFDS example of `PROBLEM_FEATURES`."""
  return {
      "id": problem.id,
      "problem": problem.problem,
      "solution": problem.solution or "",
      "answer": problem.answer if problem.answer is not None else "",
      "tests": list(problem.tests),
      "entry_point": problem.entry_point or "",
      "metadata": json.dumps(dict(problem.metadata), sort_keys=True),
  }


def _text(x: Any) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray) and x.shape == ():
    return _text(x.item())
  return str(x)


def to_problem(example: Mapping[str, Any]) -> Problem:
  """Decodes an example read back from any builder here (bytes or str leaves) to a `Problem`."""
  answer = _text(example["answer"])
  entry_point = _text(example["entry_point"])
  return Problem(
      id=_text(example["id"]),
      problem=_text(example["problem"]),
      solution=_text(example["solution"]),
      answer=answer or None,
      tests=tuple(_text(t) for t in example["tests"]),
      entry_point=entry_point or None,
      metadata=json.loads(_text(example["metadata"])),
  )


class _ProblemsBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared `_info` and `_generate_examples` for builders of `Problem`s."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Problems with id, problem, solution, answer, tests, entry_point, metadata."}
  DESCRIPTION = "Problems for self-correction training and evaluation (score)."
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    # TFDS's default probes `importlib_resources` (a backport not installed on
    # Python >= 3.9) for builders that live in a package; the file path is all it needs.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> "tfds.core.DatasetInfo":
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=_features(),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        # No `supervised_keys`: `as_supervised` would need TensorFlow.
    )

  def _load_splits(self) -> Mapping[str, Callable[[], Sequence[Problem]]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local: shipped files or records in memory.
    return {name: self._generate_examples(load) for name, load in self._load_splits().items()}

  def _generate_examples(self, load):
    for problem in load():
      yield problem.id, to_example(problem)


class ProblemsBuilder(_ProblemsBase):
  """A builder over records in memory, e.g. user data or synthetic tasks.

  Args:
    splits: split name → sequence of `Problem`s (needed to prepare; not to read back).
    dataset_name: the builder config name; each dataset gets its own folder under
      ``<data_dir>/problems_builder/<dataset_name>/<version>``.
    **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (``data_dir``, ``version``...).
  """

  def __init__(
      self,
      splits: Mapping[str, Sequence[Problem]] | None = None,
      *,
      dataset_name: str = "default",
      **kwargs,
  ):
    self._records = splits
    kwargs.setdefault("config", tfds.core.BuilderConfig(name=dataset_name))
    super().__init__(**kwargs)

  def _load_splits(self):
    if self._records is None:
      raise ValueError(
          f"ProblemsBuilder({self.builder_config.name!r}) has no records to prepare: pass"
          " splits={'train': problems, ...}"
      )
    return {name: (lambda records=records: records) for name, records in self._records.items()}


class MathBuilder(_ProblemsBase):
  """MATH for SCoRe: ``train`` = the 12k split, ``test`` = MATH500 (paths: `loaders`)."""

  name = "score_math"
  HOMEPAGE = _HOMEPAGES["math"]
  DESCRIPTION = "MATH (Hendrycks et al., 2021): 12,000 train (PRM800K) and MATH500 test."

  def __init__(self, *, train_path=None, test_path=None, **kwargs):
    self._paths = (train_path, test_path)
    super().__init__(**kwargs)

  def _load_splits(self):
    train, test = self._paths
    return {
        "train": lambda: loaders.load_math(train),
        "test": lambda: loaders.load_math500(test),
    }


class Math500Builder(_ProblemsBase):
  """MATH500 alone (``test``)."""

  name = "score_math500"
  HOMEPAGE = _HOMEPAGES["math500"]
  DESCRIPTION = "MATH500: the 500-problem PRM800K test split of MATH."

  def __init__(self, *, path=None, **kwargs):
    self._path = path
    super().__init__(**kwargs)

  def _load_splits(self):
    return {"test": lambda: loaders.load_math500(self._path)}


class MbppBuilder(_ProblemsBase):
  """MBPP with the standard splits by task id (`loaders.MBPP_SPLITS`)."""

  name = "score_mbpp"
  HOMEPAGE = _HOMEPAGES["mbpp"]
  DESCRIPTION = "MBPP (Austin et al., 2021): prompt 1-10, test 11-510, validation 511-600, train 601-974."

  def __init__(self, *, path=None, **kwargs):
    self._path = path
    super().__init__(**kwargs)

  def _load_splits(self):
    return {
        split: (lambda split=split: loaders.load_mbpp(split, self._path))
        for split in loaders.MBPP_SPLITS
    }


class HumanEvalBuilder(_ProblemsBase):
  """HumanEval (``test``, 164 problems) from the `human-eval` package."""

  name = "score_humaneval"
  HOMEPAGE = _HOMEPAGES["humaneval"]
  DESCRIPTION = "HumanEval (Chen et al., 2021): 164 hand-written Python problems."

  def __init__(self, *, path=None, **kwargs):
    self._path = path
    super().__init__(**kwargs)

  def _load_splits(self):
    return {"test": lambda: loaders.load_humaneval(self._path)}


class GSM8KBuilder(_ProblemsBase):
  """GSM8K (``train`` 7,473 / ``test`` 1,319)."""

  name = "score_gsm8k"
  HOMEPAGE = _HOMEPAGES["gsm8k"]
  DESCRIPTION = "GSM8K (Cobbe et al., 2021): grade-school math word problems."

  def __init__(self, *, train_path=None, test_path=None, **kwargs):
    self._paths = {"train": train_path, "test": test_path}
    super().__init__(**kwargs)

  def _load_splits(self):
    return {s: (lambda s=s: loaders.load_gsm8k(s, self._paths[s])) for s in ("train", "test")}


BUILDERS: dict[str, type[_ProblemsBase]] = {
    "math": MathBuilder,
    "math500": Math500Builder,
    "mbpp": MbppBuilder,
    "humaneval": HumanEvalBuilder,
    "gsm8k": GSM8KBuilder,
}


def build(name: str, data_dir: str | os.PathLike, **kwargs) -> _ProblemsBase:
  """Prepares (if needed) and returns the builder registered as `name` in `BUILDERS`."""
  try:
    cls = BUILDERS[name]
  except KeyError:
    raise ValueError(f"unknown builder {name!r}; expected one of {sorted(BUILDERS)}") from None
  builder = cls(data_dir=os.fspath(data_dir), **kwargs)
  builder.download_and_prepare()
  return builder
