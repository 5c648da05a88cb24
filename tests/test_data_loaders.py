"""Loaders of `score.data`: counts and known records of the shipped files, bad data, layouts."""

import json
import os
import subprocess
import sys

import pytest

from score import data
from score.data import answers, loaders
from score.data.records import DataError, Problem


# --- shipped files --------------------------------------------------------------------------


def test_math500_counts_and_known_record():
  m = data.load_math500()
  assert len(m) == 500
  assert len({p.id for p in m}) == 500
  p = m.by_id()["test/precalculus/807.json"]
  assert p.problem.startswith("Convert the point $(0,3)$ in rectangular coordinates to polar")
  assert p.answer == r"\left( 3, \frac{\pi}{2} \right)"
  assert p.metadata == {"subject": "Precalculus", "level": 2}
  assert all(p.answer and not p.tests for p in m)


def test_every_math500_answer_is_extractable_from_its_solution():
  m = data.load_math500()
  mismatched = [(p.id, p.answer) for p in m if answers.last_boxed(p.solution) != p.answer]
  assert mismatched == []


def test_math_train_12k_counts_and_answer_fixes():
  m = data.load_math()
  assert len(m) == 12000
  ids = {p.id for p in m}
  assert len(ids) == 12000
  assert not ids & {p.id for p in data.load_math500()}  # disjoint from the eval set
  by_id = m.by_id()
  # The two "None" answers of the source, recovered from `\boxed 2` / `\boxed 9`.
  assert by_id["train/algebra/24014.json"].answer == "2"
  assert by_id["train/algebra/25040.json"].answer == "9"
  assert by_id["train/algebra/24014.json"].metadata["answer_source"] == "solution"
  # The two empty `\boxed{}` rows, fixed by id.
  for pid in loaders.KNOWN_ANSWER_FIXES:
    assert by_id[pid].answer == "0"
    assert by_id[pid].metadata["answer_source"] == "fix"
  assert all(p.answer for p in m)
  # Everything else agrees with the extractor (after the source's whitespace stripping).
  others = [p for p in m if "answer_source" not in p.metadata]
  assert len(others) == 11996
  assert all(answers.last_boxed(p.solution) == p.answer for p in others)
  assert by_id["train/geometry/377.json"].metadata["level"] is None  # "Level ?" in the source


@pytest.mark.parametrize(
    "split,count,first,last",
    [("prompt", 10, 1, 10), ("test", 500, 11, 510), ("validation", 90, 511, 600),
     ("train", 374, 601, 974), (None, 974, 1, 974)],
)
def test_mbpp_splits_by_task_id(split, count, first, last):
  m = data.load_mbpp(split)
  task_ids = [p.metadata["task_id"] for p in m]
  assert len(m) == count
  assert (min(task_ids), max(task_ids)) == (first, last)
  assert len(set(task_ids)) == count


def test_mbpp_known_record_and_tests_name_the_entry_point():
  m = data.load_mbpp("test")
  p = m[0]
  assert p.id == "mbpp/11"
  assert p.problem == ("Write a python function to remove first and last occurrence of a given"
                       " character from the string.")
  assert p.tests[0] == 'assert remove_Occ("hello","l") == "heo"'
  assert p.entry_point == "remove_Occ"
  assert p.answer is None and p.is_code
  everything = data.load_mbpp(None)
  assert all(p.entry_point and all(p.entry_point in t for t in p.tests) for p in everything)


def test_mbpp_reference_solution_passes_its_tests():
  # Sanity of the record layout described in `Problem`'s docstring (reference code is data we
  # ship, not model output, so running it in-process is fine).
  p = data.load_mbpp("test")[0]
  scope = {}
  exec(p.solution + "\n" + p.metadata["test_setup_code"] + "\n" + "\n".join(p.tests), scope)  # noqa: S102


def test_humaneval_counts_and_known_record():
  h = data.load_humaneval()
  assert len(h) == 164
  assert len({p.id for p in h}) == 164
  p = h[0]
  assert p.id == "HumanEval/0" and p.entry_point == "has_close_elements"
  assert p.problem.startswith("from typing import List")
  assert len(p.tests) == 1 and p.tests[0].rstrip().endswith("check(has_close_elements)")
  scope = {}
  exec(p.problem + p.solution + "\n" + p.tests[0], scope)  # canonical solution passes  # noqa: S102


def test_gsm8k_counts_and_known_record():
  test = data.load_gsm8k("test")
  assert len(test) == 1319 and len(data.load_gsm8k("train")) == 7473
  assert test[0].answer == "18"
  assert "<<" not in test[0].solution and "####" not in test[0].solution
  assert test[0].problem.startswith("Janet")


def test_registry_names_loaders():
  assert len(data.load("mbpp", split="prompt")) == 10
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load("nope")


def test_score_data_dir_env_override(tmp_path, monkeypatch):
  (tmp_path / "math500_test.jsonl").write_text(
      json.dumps({"problem": "1+1?", "solution": "$\\boxed{2}$", "answer": "2",
                  "unique_id": "x/1.json", "subject": "A", "level": 1}) + "\n"
  )
  monkeypatch.setenv("SCORE_DATA_DIR", str(tmp_path))
  assert data.data_dir() == tmp_path
  m = data.load_math500()
  assert [p.id for p in m] == ["x/1.json"]
  monkeypatch.setenv("SCORE_DATA_DIR", str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="SCORE_DATA_DIR"):
    data.load_math500()


# --- Hendrycks per-problem layout -----------------------------------------------------------


def _write_math_tree(root):
  files = {
      "train/algebra/1.json": {"problem": "P1", "level": "Level 2", "type": "Algebra",
                               "solution": "So $x = \\boxed{\\frac{1}{2}}$."},
      "train/algebra/10.json": {"problem": "P10", "level": "Level ?", "type": "Algebra",
                                "solution": "our answer is $\\boxed 2$."},
      "train/algebra/2.json": {"problem": "P2", "level": "Level 5", "type": "Algebra",
                               "solution": "first \\boxed{1}, then \\boxed{\\{a, b\\}}"},
      "test/geometry/7.json": {"problem": "G7", "level": "Level 1", "type": "Geometry",
                               "solution": "\\fbox{3}"},
  }
  for rel, obj in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_hendrycks_directory_layout(tmp_path):
  root = tmp_path / "MATH"
  _write_math_tree(root)
  train = data.load_math(root, split="train")
  assert [p.id for p in train] == ["train/algebra/1.json", "train/algebra/2.json",
                                   "train/algebra/10.json"]  # numeric order
  assert [p.answer for p in train] == ["\\frac{1}{2}", "\\{a, b\\}", "2"]
  assert [p.metadata["level"] for p in train] == [2, 5, None]
  assert train[0].metadata["subject"] == "Algebra"
  everything = data.load_math(root)
  assert len(everything) == 4 and everything.by_id()["test/geometry/7.json"].answer == "3"


def test_hendrycks_directory_bad_file_is_named(tmp_path):
  root = tmp_path / "MATH"
  _write_math_tree(root)
  bad = root / "train" / "algebra" / "3.json"
  bad.write_text("{not json")
  with pytest.raises(DataError, match=r"train/algebra/3\.json"):
    data.load_math(root, split="train")
  skipped = data.load_math(root, split="train", on_error="skip")
  assert len(skipped) == 3 and skipped.skipped == 1


# --- bad data -------------------------------------------------------------------------------


def _math_line(i, **override):
  row = {"problem": f"p{i}", "solution": f"$\\boxed{{{i}}}$", "answer": str(i),
         "unique_id": f"t/{i}.json", "subject": "A", "level": 1}
  row.update(override)
  return json.dumps(row)


def test_malformed_line_error_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join([_math_line(0), _math_line(1), '{"problem": "p2", oops', _math_line(3)]) + "\n")
  with pytest.raises(DataError) as e:
    data.load_math(path)
  msg = str(e.value)
  assert f"{path}:3:" in msg and "JSON" in msg
  assert e.value.line == 3 and e.value.path == str(path)


def test_malformed_lines_skipped_and_counted(tmp_path, caplog):
  path = tmp_path / "bad.jsonl"
  lines = [_math_line(0), "[1, 2]", '{"problem": ', _math_line(3),
           _math_line(4, problem=None), _math_line(5)]
  path.write_text("\n".join(lines) + "\n")
  with caplog.at_level("WARNING", logger="score.data"):
    m = data.load_math(path, on_error="skip")
  assert [p.id for p in m] == ["t/0.json", "t/3.json", "t/5.json"]
  assert m.skipped == 3
  assert [e.line for e in m.errors] == [2, 3, 5]
  assert "expected field 'problem'" in str(m.errors[2])
  assert "skipped 3 malformed record(s)" in caplog.text


def test_record_without_gold_answer_is_an_error(tmp_path):
  path = tmp_path / "noanswer.jsonl"
  path.write_text(_math_line(0) + "\n" + _math_line(1, answer=None, solution="no box here") + "\n")
  with pytest.raises(DataError, match=r"noanswer\.jsonl:2: record has no gold answer"):
    data.load_math(path)


def test_duplicate_ids_are_an_error(tmp_path):
  path = tmp_path / "dup.jsonl"
  path.write_text(_math_line(0) + "\n" + _math_line(0) + "\n")
  with pytest.raises(DataError, match=r"dup\.jsonl:2: duplicate id 't/0.json' \(first on line 1\)"):
    data.load_math(path)


def test_on_error_must_be_known(tmp_path):
  with pytest.raises(ValueError, match="on_error"):
    data.load_math500(on_error="ignore")


# --- generic JSONL --------------------------------------------------------------------------


def test_generic_jsonl_with_field_mapping(tmp_path):
  path = tmp_path / "mine.jsonl"
  rows = [{"question": "What is 2+3?", "final": 5, "src": "x"},
          {"question": "Box?", "worked": "so \\boxed{7}", "src": "y"}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a blank line is fine
  m = data.load_jsonl(path, {"problem": "question", "answer": "final", "solution": "worked"})
  assert [p.id for p in m] == ["mine/1", "mine/2"]
  assert [p.answer for p in m] == ["5", "7"]
  assert m[0].metadata == {"src": "x"}
  assert m[1].metadata == {"src": "y", "answer_source": "solution"}
  assert isinstance(m[0], Problem)


def test_generic_jsonl_code_task_requires_tests(tmp_path):
  path = tmp_path / "code.jsonl"
  path.write_text(json.dumps({"id": "a", "problem": "f", "tests": ["assert f() == 1"]}) + "\n"
                  + json.dumps({"id": "b", "problem": "g", "tests": []}) + "\n")
  with pytest.raises(DataError, match=r"code\.jsonl:2: expected 'tests' to be a non-empty list"):
    data.load_jsonl(path, task="code")
  m = data.load_jsonl(path, task="code", on_error="skip", id_prefix="u")
  assert [p.id for p in m] == ["u/a"] and m.skipped == 1
  with pytest.raises(ValueError, match="unknown Problem fields"):
    data.load_jsonl(path, {"question": "problem"})


def test_problem_dict_round_trip():
  p = data.load_mbpp("prompt")[0]
  assert Problem.from_dict(json.loads(json.dumps(p.to_dict()))) == p


# --- light import ---------------------------------------------------------------------------


def test_import_score_data_is_light():
  code = (
      "import sys, score.data as d; d.load_mbpp('prompt'); d.prompts.first_turn_prompt("
      "d.load_math500()[0]); heavy = [m for m in ('tensorflow_datasets', 'transformers', "
      "'tensorflow', 'grain', 'torch', 'jax') if m in sys.modules]; print(heavy); "
      "sys.exit(1 if heavy else 0)"
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr


def test_every_math500_answer_is_rewarded_by_the_math_reward():
  # Issue #8: each gold answer is extractable and equivalent to itself through the reward.
  rm = pytest.importorskip("score.rewards.math")
  m = data.load_math500()
  golds = [p.answer for p in m]
  assert rm.rewards([p.solution for p in m], golds) == [1.0] * 500
  final = [f"Final Answer: The final answer is ${a}$. I hope it is correct." for a in golds]
  assert rm.rewards(final, golds) == [1.0] * 500


def test_problems_are_hashable_and_slices_keep_type():
  m = data.load_mbpp("prompt")
  assert len(set(m)) == 10 and hash(m[0]) == hash(Problem.from_dict(m[0].to_dict()))
  assert isinstance(m[2:5], data.Problems) and len(m[2:5]) == 3
