"""Tests for score.rewards.math: extraction, normalisation, equivalence, the hang-safe pool."""

import json
import os
import pathlib
import time

import pytest

from score.rewards import _pool
from score.rewards import math as rmath

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"  # shipped with the repository
MATH500 = DATA / "math500_test.jsonl"
MATH12K = DATA / "math_train_12k.jsonl"

# (prediction, gold, expected). Golds are written the way MATH writes them.
EQUIVALENT = [
    # Fractions.
    ("\\frac{1}{2}", "\\frac12", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac{3}{4}", "\\frac34", True),
    ("1/2", "\\frac{1}{2}", True),
    ("2/4", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
    ("\\frac{14}{3}", "4\\frac{2}{3}", True),  # A mixed number, as MATH writes them.
    ("\\frac{8}{3}", "4\\frac{2}{3}", False),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("\\frac{3}{2}", "\\frac{2}{3}", False),
    # Decimals vs fractions.
    ("0.5", "\\frac{1}{2}", True),
    ("0.25", "\\frac{1}{4}", True),
    (".75", "\\frac{3}{4}", True),
    ("0.333", "\\frac{1}{3}", False),  # Not within math-verify's 6-decimal rounding.
    ("3.0", "3", True),
    ("2.001", "2", False),
    # Integers, signs, thousands separators.
    ("-7", "-7", True),
    ("7", "-7", False),
    ("10000", "10,\\!000", True),
    ("1,000,000", "1000000", True),
    ("1001", "1000", False),
    ("+5", "5", True),
    # Units and \text.
    ("10", "10\\text{ cm}", True),
    ("10\\text{ cm}", "10", True),
    ("10 \\text{ inches}", "10", True),
    ("5\\text{ cm}^2", "5", True),
    ("11", "10\\text{ cm}", False),
    ("5 cm", "5", True),
    ("12 square feet", "12\\text{ square feet}", True),
    ("6 cm", "5", False),
    ("\\text{(C)}", "\\text{(C)}", True),
    ("(C)", "\\text{(C)}", True),
    ("\\text{(B)}", "\\text{(C)}", False),
    ("\\text{Monday}", "\\text{Monday}", True),
    ("\\text{Tuesday}", "\\text{Monday}", False),
    ("\\text{neve}", "\\text{even}", False),  # Not an anagram-equal product of symbols.
    ("neve", "\\text{even}", False),
    # Degrees, percentages, money.
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30^\\circ", True),
    ("31^\\circ", "30^\\circ", False),
    ("50\\%", "50", True),
    ("25\\%", "50\\%", False),
    ("\\$18.90", "18.90", True),
    ("18.9", "\\$18.90", True),
    ("\\$19.90", "\\$18.90", False),
    # sqrt, pi, expressions.
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\pi", "3.14159", False),
    ("6\\pi", "36\\pi", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+2x", "(x+1)^2", False),
    ("2^{10}", "1024", True),
    # Equations vs values.
    ("x=3", "3", True),
    ("k = 5", "5", True),
    ("x=4", "3", False),
    ("y = 2x + 3", "y=2x+3", True),
    ("y = 2x - 3", "y=2x+3", False),
    # Intervals, tuples, sets.
    ("[1,2)", "[1, 2)", True),
    ("(1,2]", "[1, 2)", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1,2,3\\}", "\\{2,1\\}", False),
    ("1, 2, 3", "3, 2, 1", True),  # MATH "enter all solutions, separated by commas".
    ("1, 2", "1, 2, 3", False),
    ("(-\\infty,1)\\cup(2,\\infty)", "(2,\\infty)\\cup(-\\infty,1)", True),
    ("(-\\infty,1)\\cup(3,\\infty)", "(-\\infty,1)\\cup(2,\\infty)", False),
    ("3, -3", "\\pm 3", True),
    ("[2,5]", "2 \\le x \\le 5", True),
    # Logs, roots, complex numbers.
    ("\\log_2 8", "3", True),
    ("\\sqrt[3]{2}", "2^{1/3}", True),
    ("1+i", "i+1", True),
    ("2i", "2", False),
    # Matrices and vectors.
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
     "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", True),
    # Wrapping and junk.
    ("$\\frac{1}{2}$", "\\frac{1}{2}", True),
    ("\\boxed{5}", "5", True),
    ("5.", "5", True),
    ("", "5", False),
    (None, "5", False),
    ("five", "5", False),
]


@pytest.mark.parametrize("pred,gold,expected", EQUIVALENT)
def test_is_equivalent_table(pred, gold, expected):
  assert rmath.is_equivalent(pred, gold, timeout_s=5.0) is expected


def test_table_is_large_and_balanced():
  assert len(EQUIVALENT) >= 60
  assert sum(e for *_, e in EQUIVALENT) >= 25
  assert sum(not e for *_, e in EQUIVALENT) >= 25


EXTRACT = [
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("Final Answer: The final answer is 3.5. I hope it is correct.", "3.5"),
    ("Final Answer: The final answer is $3.5$. I hope it is correct.", "3.5"),
    ("The final answer is: $$x = 7$$\nI hope it is correct.", "x = 7"),
    ("The final answer is \\(12\\).", "12"),
    ("The final answer is $\\boxed{\\frac{\\sqrt{3}}{2}}$. I hope it is correct.",
     "\\frac{\\sqrt{3}}{2}"),
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", "\\$18.90"),
    ("final answer is 42", "42"),
    ("The final answer is (1, 2). I hope it is correct.", "(1, 2)"),
    # The last of several answers wins.
    ("First I thought the final answer is $3$. Wait, so \\boxed{4}.", "4"),
    ("So $\\boxed{4}$.\nFinal Answer: The final answer is $5$. I hope it is correct.", "5"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("so the final answer is $4 + 2 = \\boxed{6}$.", "6"),  # The box inside wins.
    # Nested braces and escaped braces.
    ("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
    ("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ("\\fbox{7}", "7"),
    ("The answer is $\\boxed 2$.", "2"),
    ("\\boxed{3} and a broken \\boxed{4", "3"),
    # "final answer is" in prose after the box is not an answer (MATH train solutions).
    ("gives $\\boxed{80}$.\n\nNote: rounding before arriving at the final answer is a "
     "common one. It is called intermediate rounding.", "80"),
    ("so $\\boxed{\\frac{130}{231}}$. The final answer is positive, because two of the "
     "three numbers are negative.", "\\frac{130}{231}"),
    ("The final answer is twelve apples and a pear, I think, maybe more", None),
    # Nothing to extract.
    ("I don't know.", None),
    ("", None),
    (None, None),
    ("\\boxed{", None),
    ("\\boxed{}", None),
    ("The final answer is $$. I hope it is correct.", None),
    ("\\boxedx{3}", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
  assert rmath.extract_answer(text) == expected


def test_extraction_and_normalisation_are_fast_on_degenerate_text():
  t0 = time.monotonic()
  assert rmath.extract_answer("\\boxed{" * 200_000) is None
  assert rmath.extract_answer("{" * 1_000_000 + "\\boxed{7}") == "7"
  assert rmath.extract_answer("x" * 1_000_000 + "\\boxed{2}") == "2"
  assert isinstance(rmath.normalize("\\text{" + "1" * 100_000 + " cm}"), str)
  assert isinstance(rmath.normalize("1" * 50_000 + "\\text{ cm}"), str)
  assert time.monotonic() - t0 < 10.0


@pytest.mark.parametrize("raw,expected", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("3/4", "\\frac{3}{4}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\frac1{72}", "\\frac{1}{72}"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("10\\text{ cm}", "10"),
    ("5 cm^2", "5"),
    ("2 m", "2m"),  # A single letter may be a variable: kept.
    ("\\text{(C)}", "(C)"),
    ("30^\\circ", "30"),
    ("50\\%", "50"),
    ("\\$18.90", "18.90"),
    ("10,\\!000", "10000"),
    ("x = 3", "3"),
    ("$5$.", "5"),
    (".5", "\\frac{1}{2}"),  # " .5" -> "0.5" -> "\frac{1}{2}", as in Hendrycks' strip_string.
    (".25", "0.25"),
    ("", ""),
    (None, ""),
    ("\\frac", "\\frac"),  # Malformed input passes through, never raises.
    ("\\sqrt", "\\sqrt"),
])
def test_normalize(raw, expected):
  assert rmath.normalize(raw) == expected


def test_normalize_never_raises_on_garbage():
  for s in ["\\frac{", "}{", "\\left", "$$$", "=", "a=b=c", "\\text{", "^\\circ", "\\\\", "/"]:
    assert isinstance(rmath.normalize(s), str)


@pytest.fixture(scope="module")
def pool():
  with _pool.WorkerPool(2, preload=("score.rewards.math:_warm_up",),
                        memory_limit_bytes=4 << 30) as p:
    yield p


def test_rewards_batch(pool):
  responses = [
      "Final Answer: The final answer is $0.5$. I hope it is correct.",  # Needs math-verify.
      "... so the answer is $\\boxed{\\dfrac{1}{2}}$.",  # Fast path (normalised strings).
      "Final Answer: The final answer is $\\frac{1}{3}$. I hope it is correct.",
      "no answer here",
      None,
      "\\boxed{2\\sqrt{2}}",
  ]
  golds = ["\\frac{1}{2}", "\\frac12", "\\frac{1}{2}", "1", "1", "\\sqrt{8}"]
  assert rmath.rewards(responses, golds, pool=pool) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_rewards_length_mismatch():
  with pytest.raises(ValueError, match="2 responses but 1 golds"):
    rmath.rewards(["a", "b"], ["a"])


def test_rewards_empty_gold_scores_zero(pool):
  assert rmath.rewards(["\\boxed{1}", "\\boxed{1}"], ["", None], pool=pool) == [0.0, 0.0]


def test_pathological_expression_times_out_and_pool_keeps_working(pool, caplog):
  tower = "\\boxed{9^{9^{9^{9^{9^{9}}}}}}"
  t0 = time.monotonic()
  out = rmath.rewards([tower, "\\boxed{0.5}", tower, "\\boxed{\\sqrt{8}}"],
                      ["5", "\\frac{1}{2}", "7", "2\\sqrt{2}"], timeout_s=1.0, pool=pool)
  elapsed = time.monotonic() - t0
  assert out == [0.0, 1.0, 0.0, 1.0]
  timeouts = [r for r in caplog.records if "exceeded 1s" in r.getMessage()]
  assert len(timeouts) == 2, [r.getMessage() for r in caplog.records]
  # Two workers, two hanging items: each gets 1 s (+1 s kill grace at worst), in parallel.
  assert elapsed < 6.0, elapsed
  # And the pool still answers afterwards.
  assert rmath.rewards(["\\boxed{0.25}"], ["\\frac14"], pool=pool) == [1.0]


def test_pool_replaces_crashed_and_hung_workers(pool):
  pids_before = set(pool.pids) if pool.pids else set()
  tasks = [
      (rmath._check_in_worker, ("0.5", "\\frac{1}{2}", 5.0)),
      (os._exit, (3,)),  # The worker process dies.
      (time.sleep, (60,)),  # No deadline inside: the parent must kill it.
      (rmath._check_in_worker, ("\\sqrt{8}", "2\\sqrt{2}", 5.0)),
      (int, ("not a number",)),  # An exception inside the task.
      (bytearray, (8 << 30,)),  # Beyond the workers' 4 GiB address-space limit.
  ]
  t0 = time.monotonic()
  outs = pool.run(tasks, timeout_s=2.0)
  assert time.monotonic() - t0 < 10.0
  assert outs[0].ok and outs[0].value == (True, None)
  assert not outs[1].ok and "worker died (exit code 3)" in outs[1].error
  assert not outs[2].ok and outs[2].error.startswith("timeout")
  assert outs[3].ok and outs[3].value == (True, None)
  assert not outs[4].ok and outs[4].error.startswith("ValueError")
  assert not outs[5].ok and outs[5].error.startswith("MemoryError")
  assert len(pool.pids) == 2 and set(pool.pids) != pids_before
  # The math reward maps any failed check to 0 (here: the task kills its worker).
  assert pool.run([(os._exit, (1,))], timeout_s=2.0)[0].ok is False
  assert rmath.rewards(["\\boxed{0.5}"], ["\\frac12"], pool=pool) == [1.0]


def test_worker_killed_from_outside_scores_zero(pool):
  """A worker killed mid-check (e.g. by the OOM killer) gives 0 for its item, no exception."""
  import signal
  import threading

  pool.run([(int, ("1",))] * 2, timeout_s=5.0)  # Make sure both workers are up.
  victims = list(pool.pids)

  def _kill():
    time.sleep(0.5)
    for pid in victims:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass

  killer = threading.Thread(target=_kill)
  killer.start()
  hang = "\\boxed{9^{9^{9^{9^{9^{9}}}}}}"
  out = rmath.rewards([hang, hang], ["1", "2"], timeout_s=4.0, pool=pool)
  killer.join()
  assert out == [0.0, 0.0]
  assert not set(pool.pids) & set(victims)
  assert rmath.rewards(["\\boxed{0.5}"], ["\\frac12"], pool=pool) == [1.0]


def test_reward_single_uses_shared_pool():
  assert rmath.reward("Final Answer: The final answer is $0.5$. I hope it is correct.",
                      "\\frac12") == 1.0
  assert rmath.reward("\\boxed{3}", "4") == 0.0
  rmath.shutdown()


@pytest.mark.skipif(not MATH500.exists(), reason=f"{MATH500} not found")
def test_every_math500_gold_is_equivalent_to_itself(pool):
  """~10 s on 2 busy cores, so it stays in the fast tier."""
  golds = [json.loads(line)["answer"] for line in MATH500.read_text().splitlines() if line]
  assert len(golds) == 500
  # Through math-verify alone, not the normalised-string shortcut.
  outs = pool.map(rmath._check_in_worker, [(g, g, 10.0, False) for g in golds],
                  timeout_s=12.0)
  bad = [(g, o) for g, o in zip(golds, outs) if not (o.ok and o.value[0])]
  assert not bad, bad[:10]
  # And through the full reward, with the SCoRe answer format around it.
  responses = [f"Final Answer: The final answer is ${g}$. I hope it is correct." for g in golds]
  assert rmath.rewards(responses, golds, pool=pool) == [1.0] * 500


@pytest.mark.skipif(not MATH12K.exists(), reason=f"{MATH12K} not found")
def test_extraction_recovers_every_math_train_answer():
  """The reference solutions box their answers (sometimes with "final answer is" in prose
  nearby): extraction + normalisation must give back the `answer` field of all 12,000."""
  rows = [json.loads(line) for line in MATH12K.read_text().splitlines() if line]
  bad, several = [], []
  for r in rows:
    if r["answer"] in ("", "None"):  # Rows of the data file without a usable gold answer.
      continue
    got = rmath.extract_answer(r["solution"])
    if got is not None and rmath.normalize(got) != rmath.normalize(r["answer"]):
      # Adjacent boxes ("\boxed{30^\circ}, \boxed{150^\circ}") are one answer of several
      # parts; the data file's `answer` field kept only the last box.
      got, last = rmath._parts(got), rmath._parts(got)[-1]  # pylint: disable=protected-access
      if len(got) > 1 and rmath.normalize(last) == rmath.normalize(r["answer"]):
        several.append(r["unique_id"])
        continue
    if got is None or rmath.normalize(got) != rmath.normalize(r["answer"]):
      bad.append((r["unique_id"], got, r["answer"]))
  assert len(rows) == 12_000
  assert not bad, bad[:10]
  assert len(several) == 16, several  # MATH solutions that box several answers side by side


@pytest.mark.parametrize("pred,gold,expected", [
    (".0000672", ".0000673", False),   # math-verify alone rounds both to 6 decimals
    ("0.0000672", ".0000672", True),
    ("2.50", "2.5", True),
    ("52_8", "52_9", False),            # math-verify alone drops the base subscript
    ("52_{8}", "52_8", True),
    ("1011_2", "1011_2", True),
])
def test_literals_compare_exactly(pred, gold, expected):
  assert rmath.is_equivalent(pred, gold) is expected


# ----------------------------------------------------------------------------------------------
# Answers in several boxes: one answer of several parts, compared as a set.

@pytest.mark.parametrize("response, answer", [
    (r"The solutions are $\boxed{(2, 2)} \text{ and } \boxed{(6, 2)}$.", "(2, 2), (6, 2)"),
    (r"so $\boxed{1}$ and $\boxed{\frac{1}{2}}$.", r"1, \frac{1}{2}"),
    (r"\boxed{-3}, \boxed{4}", "-3, 4"),
    (r"\boxed{\frac{\sqrt{3}}{2}} \quad \boxed{\sqrt{\frac{1}{2}}}",  # nested braces
     r"\frac{\sqrt{3}}{2}, \sqrt{\frac{1}{2}}"),
    (r"\boxed{5} \boxed{5}", "5"),                    # a repeated box is one answer
    (r"x = \boxed{3}, y = \boxed{4}", "4"),           # not adjacent: the last box only
    (r"First \boxed{2}. Then more work, finally \boxed{7}", "7"),
])
def test_extract_answer_several_boxes(response, answer):
  assert rmath.extract_answer(response) == answer


@pytest.mark.parametrize("response, gold, expected", [
    (r"$\boxed{(2, 2)} \text{ and } \boxed{(6, 2)}$", "(2, 2), (6, 2)", True),
    (r"$\boxed{(6, 2)} \text{ and } \boxed{(2, 2)}$", "(2, 2), (6, 2)", True),   # order-free
    (r"$\boxed{(2, 2)}$", "(2, 2), (6, 2)", False),                               # a subset
    (r"\boxed{(2, 2)}, \boxed{(6, 2)}, \boxed{(1, 1)}", "(2, 2), (6, 2)", False),  # a superset
    (r"\boxed{2} and \boxed{2}", "2, 3", False),        # duplicates do not cover another part
    (r"\boxed{2} and \boxed{2}", "2", True),            # ... and collapse to one answer
    (r"\boxed{\sqrt{3}} or \boxed{\frac{1}{2}}", r"0.5, \sqrt{3}", True),  # parts checked
    (r"\boxed{(2, 6)} \text{ and } \boxed{(2, 2)}", "(2, 2), (6, 2)", False),  # tuples ordered
    (r"\boxed{000}, \boxed{1}", "1,000", False),        # a thousands comma is not a separator
    (r"\boxed{x+11}, or \boxed{11+x}", "11+x", True),    # one answer in two forms
    (r"\boxed{\frac{1}{2}} and \boxed{7}", r"0.5, \frac{1}{2}", False),  # one part per part
    (r"\boxed{30^\circ}, \boxed{150^\circ}", "150^\circ", False),  # two answers for one
])
def test_several_boxes_compare_as_a_set(response, gold, expected):
  assert rmath.reward(response, gold) == float(expected)
