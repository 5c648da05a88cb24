"""Typed records shared by every loader, builder and pipeline in `score.data`.

A `Problem` is one task with what an oracle needs to grade an attempt:

* math (MATH, MATH500, GSM8K, user files): `answer` is the gold final answer (a LaTeX string
  such as ``\\frac{1}{2}``); the reward compares an attempt's final answer with it.
* code (MBPP, HumanEval): `tests` are Python snippets. A program `y` is correct when, for
  every `t` in `tests`, ``y + "\\n" + metadata.get("test_setup_code", "") + "\\n" + t`` runs
  without raising (MBPP: one ``assert`` per snippet; HumanEval: a single snippet that
  defines ``check(candidate)`` and calls it on `entry_point`).

A record with neither a gold answer nor tests cannot be graded: loaders raise `DataError`
instead of letting the reward silently return 0.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Mapping

__all__ = ["DataError", "Problem", "Problems"]


class DataError(ValueError):
  """A data file or record is malformed. The message names the file, line and expectation."""

  def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
    where = ""
    if path is not None:
      where = f"{path}:{line}: " if line is not None else f"{path}: "
    super().__init__(where + message)
    self.path = path
    self.line = line
    self.reason = message


@dataclasses.dataclass(frozen=True)
class Problem:
  """One task.

  Attributes:
    id: unique, stable identifier (MATH: ``test/precalculus/807.json``; MBPP: ``mbpp/11``;
      HumanEval: ``HumanEval/0``).
    problem: the statement shown to the model (for HumanEval: the function signature and
      docstring to complete).
    solution: a reference solution (worked LaTeX solution or reference program); may be "".
    answer: the gold final answer for math tasks; None for code tasks.
    tests: code tasks' test snippets (see the module docstring); () for math tasks.
    entry_point: the function a code task must define, when known; None otherwise.
    metadata: everything else from the source (subject, level, task_id, ...). JSON-able.
  """

  id: str
  problem: str
  solution: str = ""
  answer: str | None = None
  tests: tuple[str, ...] = ()
  entry_point: str | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not isinstance(self.tests, tuple):
      object.__setattr__(self, "tests", tuple(self.tests))

  def __hash__(self) -> int:  # `metadata` is a dict: hash the graded content only
    return hash((self.id, self.problem, self.answer, self.tests))

  @property
  def is_code(self) -> bool:
    """True when the task is graded by running `tests`."""
    return bool(self.tests)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able dict (inverse of `Problem.from_dict`)."""
    d = dataclasses.asdict(self)
    d["tests"] = list(self.tests)
    d["metadata"] = dict(self.metadata)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Problem":
    return cls(
        id=str(d["id"]),
        problem=d["problem"],
        solution=d.get("solution") or "",
        answer=d.get("answer"),
        tests=tuple(d.get("tests") or ()),
        entry_point=d.get("entry_point"),
        metadata=dict(d.get("metadata") or {}),
    )


class Problems(tuple):
  """An immutable sequence of `Problem`s that also reports what loading skipped.

  Attributes:
    source: where the records came from (a path or a package name).
    skipped: how many malformed records were skipped (only with ``on_error="skip"``).
    errors: the `DataError`s of the skipped records, in file order.
  """

  source: str
  skipped: int
  errors: tuple[DataError, ...]

  def __new__(
      cls, items: Iterable[Problem] = (), *, source: str = "", errors: Iterable[DataError] = ()
  ):
    self = super().__new__(cls, items)
    self.source = source
    self.errors = tuple(errors)
    self.skipped = len(self.errors)
    return self

  def __getitem__(self, index):
    out = super().__getitem__(index)
    if isinstance(index, slice):
      return Problems(out, source=self.source)
    return out

  def __repr__(self) -> str:
    return f"Problems(n={len(self)}, source={self.source!r}, skipped={self.skipped})"

  def by_id(self) -> dict[str, Problem]:
    return {p.id: p for p in self}


def log_skipped(problems: Problems, logger: logging.Logger | None = None) -> None:
  """Logs the skip count and the first few reasons (for the run's log)."""
  if not problems.skipped:
    return
  logger = logger or logging.getLogger("score.data")
  first = "; ".join(str(e) for e in problems.errors[:3])
  logger.warning(
      "skipped %d malformed record(s) in %s (first: %s)", problems.skipped, problems.source, first
  )
