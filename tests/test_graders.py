"""Tests for score.rewards.graders against hand-computed values."""

import math

import pytest

from score.rewards import graders as g

HYP = "the cat sat on the mat"
REF = "the cat sat on a mat"


def _sim(metric, a=HYP, b=REF, **extra):
  grader = g.build_grader({"type": "text_similarity", "name": metric,
                           "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
                           "evaluation_metric": metric, **extra})
  return grader({"output_text": a}, {"ref": b})


# ---------------------------------------------------------------------------------------------
# Templates.
# ---------------------------------------------------------------------------------------------


def test_render_paths():
  sample = {"output_text": '{"answer": "42", "steps": [1, 2]}'}
  item = {"ref": {"answer": "42", "alts": ["x", "y"]}, "n": 3}
  assert g.render("{{sample.output_json.answer}}", sample, item) == "42"
  assert g.render("{{ sample.output_json.steps }}", sample, item) == "[1, 2]"
  assert g.render("{{item.ref.alts.1}}/{{item.n}}", sample, item) == "y/3"
  assert g.render("A={{item.ref.answer}}, {not a template}", sample, item) == "A=42, {not a template}"
  assert g.render("{{sample.output_json.answer}}", {"output_json": {"answer": 7}}, {}) == "7"
  assert g.render("{{sample.output_text}}", "plain string sample", None) == "plain string sample"


@pytest.mark.parametrize("template,err,match", [
    ("{{item.missing}}", g.TemplateError, "item has no field 'missing'"),
    ("{{item.ref.nope}}", g.TemplateError, "item.ref has no field 'nope'"),
    ("{{item.ref.alts.5}}", g.TemplateError, "list of length 2"),
    ("{{item.n.x}}", g.TemplateError, "it is a int"),
    ("{{sample.nope}}", g.TemplateError, "sample has no field 'nope'"),
    ("{{other.x}}", g.TemplateError, "expected 'sample"),
    ("{{item}}", g.TemplateError, "expected 'sample"),
    ("{{sample.output_json.missing}}", g.ModelOutputError, "output_json has no field"),
])
def test_render_errors_are_clear(template, err, match):
  sample = {"output_text": '{"answer": "42"}'}
  item = {"ref": {"alts": ["x", "y"]}, "n": 3}
  with pytest.raises(err, match=match):
    g.render(template, sample, item)


def test_render_non_json_values():
  class Scalar:  # Like a numpy scalar.
    def item(self):
      return 2.5
  assert g.render("{{item.x}}", "s", {"x": Scalar()}) == "2.5"
  assert g.render("{{item.x}}", "s", {"x": {"a": None, "b": True}}) == '{"a": null, "b": true}'


def test_model_output_problems_score_zero_but_item_problems_raise():
  grader = g.build_grader({"type": "string_check", "name": "s",
                           "input": "{{sample.output_json.answer}}",
                           "reference": "{{item.answer}}", "operation": "eq"})
  assert grader({"output_text": '{"answer": "4"}'}, {"answer": "4"}) == 1.0
  assert grader({"output_text": "not json"}, {"answer": "4"}) == 0.0
  assert grader({"output_text": '{"other": 1}'}, {"answer": "4"}) == 0.0
  assert grader({"output_text": "[1, 2]"}, {"answer": "4"}) == 0.0
  with pytest.raises(g.TemplateError, match="item has no field 'answer'"):
    grader({"output_text": '{"answer": "4"}'}, {"gold": "4"})


# ---------------------------------------------------------------------------------------------
# string_check.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,a,ref,expected", [
    ("eq", "Paris", "Paris", 1.0),
    ("eq", "Paris", "paris", 0.0),
    ("eq", "Paris ", "Paris", 0.0),
    ("ne", "Paris", "London", 1.0),
    ("ne", "Paris", "Paris", 0.0),
    ("like", "The capital is Paris.", "Paris", 1.0),
    ("like", "The capital is paris.", "Paris", 0.0),
    ("like", "", "", 1.0),
    ("ilike", "THE CAPITAL IS PARIS", "paris", 1.0),
    ("ilike", "Straße", "STRASSE", 1.0),  # casefold, not lower.
    ("ilike", "Lyon", "paris", 0.0),
])
def test_string_check(op, a, ref, expected):
  grader = g.build_grader({"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                           "reference": "{{item.ref}}", "operation": op})
  assert grader({"output_text": a}, {"ref": ref}) == expected


# ---------------------------------------------------------------------------------------------
# text_similarity, each metric against a value worked out by hand.
# ---------------------------------------------------------------------------------------------


def test_fuzzy_match():
  # Indel: LCS("kitten", "sitting") = 4 ("ittn"), so 1 - (6 + 7 - 2*4) / 13 = 8/13.
  assert _sim("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13)
  assert _sim("fuzzy_match", "abc", "abc") == 1.0


def test_bleu():
  # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty.
  expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
  assert _sim("bleu") == pytest.approx(expected, abs=1e-6)
  assert _sim("bleu", REF, REF) == pytest.approx(1.0)


def test_gleu():
  # Matching 1..4-grams: 5 + 3 + 2 + 1 = 11 of 18 in both hypothesis and reference.
  assert _sim("gleu") == pytest.approx(11 / 18)


def test_meteor_without_wordnet():
  # Identical 6 tokens, one chunk: Fmean = 1, penalty = 0.5 * (1/6)^3.
  assert _sim("meteor", REF, REF) == pytest.approx(1 - 0.5 / 216)
  # Stem stage: running ~ runs. P = 3/4, R = 1, Fmean = PR / (0.9 P + 0.1 R) = 0.75/0.775;
  # chunks {he}, {running fast} -> penalty 0.5 * (2/3)^3.
  expected = (0.75 / 0.775) * (1 - 0.5 * (2 / 3) ** 3)
  assert _sim("meteor", "he is running fast", "he runs fast") == pytest.approx(expected)
  # Synonyms do not match without WordNet (official METEOR would match them).
  assert _sim("meteor", "big", "large") == 0.0


def test_cosine():
  # tf vectors {a: 1, b: 2} and {b: 1, c: 1}: 2 / (sqrt 5 * sqrt 2).
  assert _sim("cosine", "a b b", "B c") == pytest.approx(2 / math.sqrt(10))
  assert _sim("cosine", "x y", "z") == 0.0


@pytest.mark.parametrize("metric,expected", [
    ("rouge_1", 5 / 6),  # Unigram overlap 5 of 6 both ways.
    ("rouge_2", 3 / 5),  # Bigrams: the-cat, cat-sat, sat-on shared of 5.
    ("rouge_3", 2 / 4),
    ("rouge_4", 1 / 3),
    ("rouge_5", 0.0),    # The only 5-grams differ.
    ("rouge_l", 5 / 6),  # LCS "the cat sat on mat" = 5.
])
def test_rouge(metric, expected):
  assert _sim(metric) == pytest.approx(expected)


def test_pass_threshold_and_empty_texts():
  assert _sim("rouge_1", pass_threshold=0.8) == 1.0
  assert _sim("rouge_1", pass_threshold=0.85) == 0.0
  for metric in g.SIMILARITY_METRICS:
    assert _sim(metric, "", "") == 1.0, metric
    assert _sim(metric, "", "x y") == 0.0, metric
    assert _sim(metric, "x y", "  ") == 0.0, metric
    assert 0.0 <= _sim(metric, "!!! ???", "...") <= 1.0, metric


# ---------------------------------------------------------------------------------------------
# Config validation.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config,match", [
    ({"type": "nope"}, "unknown grader type 'nope'"),
    ({"type": "string_check", "input": "x", "reference": "y", "operation": "regex"},
     "unknown operation 'regex'"),
    ({"type": "string_check", "input": "x", "reference": "y"}, "missing keys"),
    ({"type": "string_check", "input": "x", "reference": "y", "operation": "eq", "opration": 1},
     "unknown keys"),
    ({"type": "string_check", "input": "{{samples.x}}", "reference": "y", "operation": "eq"},
     "bad template path"),
    ({"type": "text_similarity", "input": "x", "reference": "y", "evaluation_metric": "bertscore"},
     "unknown evaluation_metric"),
    ({"type": "text_similarity", "input": "x", "reference": "y", "evaluation_metric": "bleu",
      "pass_threshold": "high"}, "pass_threshold must be a number"),
    ({"type": "python", "source": "def grade(sample, item) return 1"}, "does not parse"),
    ({"type": "python", "source": "def score(sample, item): return 1"}, "def grade"),
    ({"type": "score_model", "input": "rate {{sample.output_text}}"}, "needs a model"),
    ({"type": "label_model", "input": "x", "labels": ["a"], "passing_labels": ["b"]},
     "subset of labels"),
    ({"type": "multi", "graders": {}, "calculate_output": "1"}, "non-empty dict"),
    ({"type": "multi", "graders": {"max": {"type": "string_check", "input": "a",
                                           "reference": "a", "operation": "eq"}},
      "calculate_output": "max"}, "is a function name"),
    ("not a dict", "config must be a dict"),
])
def test_bad_configs(config, match):
  with pytest.raises(ValueError, match=match):
    g.build_grader(config)


def test_registry():
  assert set(g.GRADERS) >= {"string_check", "text_similarity", "python", "score_model",
                            "label_model", "multi"}
  with pytest.raises(ValueError, match="already registered"):
    g.register("string_check")(lambda config, ctx: None)


# ---------------------------------------------------------------------------------------------
# score_model / label_model with an injected generate_fn.
# ---------------------------------------------------------------------------------------------


class FakeModel:

  def __init__(self, replies):
    self.replies = list(replies)
    self.prompts = []

  def __call__(self, prompts):
    self.prompts.append(list(prompts))
    out, self.replies = self.replies[:len(prompts)], self.replies[len(prompts):]
    return out


def test_score_model():
  model = FakeModel(["7", "Reasoning...\nScore: 2.5", "Score: 11", "no idea",
                     "Score: 3\nScore: 9", "Score: 8/10", "  10. "])
  grader = g.build_grader(
      {"type": "score_model", "name": "sm", "range": [0, 10],
       "input": [{"role": "system", "content": "You grade answers."},
                 {"role": "user", "content": "Q: {{item.q}}\nA: {{sample.output_text}}"}]},
      generate_fn=model)
  samples = [f"a{k}" for k in range(7)]
  items = [{"q": "2+2?"}] * 7
  assert grader.batch(samples, items) == pytest.approx([0.7, 0.25, 0.0, 0.0, 0.0, 0.8, 1.0])
  assert len(model.prompts) == 1 and len(model.prompts[0]) == 7  # One batched call.
  assert model.prompts[0][0] == "System: You grade answers.\n\nUser: Q: 2+2?\nA: a0"


def test_score_model_pass_threshold_and_bad_generate_fn():
  grader = g.build_grader({"type": "score_model", "name": "sm", "input": "{{sample.output_text}}",
                           "range": [1, 5], "pass_threshold": 4},
                          generate_fn=FakeModel(["4", "3.9"]))
  assert grader.batch(["x", "y"], [{}, {}]) == [1.0, 0.0]
  broken = g.build_grader({"type": "score_model", "name": "sm", "input": "x"},
                          generate_fn=lambda prompts: [])
  with pytest.raises(ValueError, match="returned 0 outputs for 1 prompts"):
    broken("x", {})


@pytest.mark.parametrize("reply,expected", [
    ("correct", 1.0),
    ("Correct.", 1.0),
    ("**incorrect**", 0.0),
    ("The answer matches the reference, so: correct", 1.0),
    ("Label: correct", 1.0),
    ("Reasoning: it is not correct.\nLabel: incorrect", 0.0),
    ("The answer is incorrect.", 0.0),  # "incorrect" does not contain the word "correct".
    ("It could be correct or incorrect.", 0.0),  # Ambiguous -> 0.
    ("partially_correct", 0.5),
    ("", 0.0),
    ("I cannot tell.", 0.0),
])
def test_label_model(reply, expected):
  grader = g.build_grader(
      {"type": "label_model", "name": "lm", "input": "Is {{sample.output_text}} right?",
       "labels": ["correct", "incorrect", "partially_correct"],
       "passing_labels": ["correct"]},
      generate_fn=FakeModel([reply]))
  if expected == 0.5:  # A label that exists but does not pass.
    assert grader.label_of(reply) == "partially_correct"
    expected = 0.0
  assert grader("x", {}) == expected


# ---------------------------------------------------------------------------------------------
# multi: the formula parser.
# ---------------------------------------------------------------------------------------------

SUB = {
    "exact": {"type": "string_check", "input": "{{sample.output_text}}",
              "reference": "{{item.ref}}", "operation": "eq"},
    "fuzzy": {"type": "text_similarity", "input": "{{sample.output_text}}",
              "reference": "{{item.ref}}", "evaluation_metric": "fuzzy_match"},
}


def _multi(formula):
  return g.build_grader({"type": "multi", "name": "m", "graders": SUB,
                         "calculate_output": formula})


@pytest.mark.parametrize("formula,exact,fuzzy,expected", [
    ("0.5 * exact + 0.5 * fuzzy", 0.0, 8 / 13, 4 / 13),
    ("(exact + fuzzy) / 2", 1.0, 1.0, 1.0),
    ("max(exact, fuzzy ^ 2)", 0.0, 8 / 13, (8 / 13) ** 2),
    ("min(1, 2 * fuzzy)", 0.0, 8 / 13, 1.0),
    ("-fuzzy^2 + 1", 0.0, 8 / 13, 1 - (8 / 13) ** 2),  # -a^2 = -(a^2).
    ("2^3^0 / 4", 0.0, 8 / 13, 0.5),  # Right-associative: 2^(3^0) = 2.
    ("abs(exact - fuzzy)", 0.0, 8 / 13, 8 / 13),
    ("floor(fuzzy * 10) / 10", 0.0, 8 / 13, 0.6),
    ("ceil(fuzzy)", 0.0, 8 / 13, 1.0),
    ("sqrt(fuzzy) * exp(0) + log(1)", 0.0, 8 / 13, math.sqrt(8 / 13)),
    ("log(8, 2) / 4", 0.0, 8 / 13, 0.75),
    ("fuzzy − 0.5", 0.0, 8 / 13, 8 / 13 - 0.5),  # Unicode minus.
    ("1e-1 + .1", 0.0, 8 / 13, 0.2),
    ("fuzzy - 1", 0.0, 8 / 13, 0.0),  # Clipped to [0, 1].
    ("fuzzy + 5", 0.0, 8 / 13, 1.0),
    ("fuzzy / exact", 0.0, 8 / 13, 0.0),  # Division by zero -> 0.
    ("log(exact)", 0.0, 8 / 13, 0.0),  # Math domain error -> 0.
    ("10 ^ 400", 0.0, 8 / 13, 0.0),  # Overflow -> 0.
    ("(-1) ^ 0.5", 0.0, 8 / 13, 0.0),  # Complex -> 0.
])
def test_multi_formula_values(formula, exact, fuzzy, expected):
  sample, item = ("kitten", {"ref": "sitting"}) if exact == 0.0 else ("a", {"ref": "a"})
  assert _multi(formula)(sample, item) == pytest.approx(expected)


@pytest.mark.parametrize("formula,match", [
    ("__import__('os')", "unexpected character \"'\""),
    ("__import__(exact)", "unknown function '__import__'"),
    ("exact.__class__", "unexpected character '.'"),
    ("exact[0]", "unexpected character '\\['"),
    ("os", "unknown name 'os'"),
    ("exact + secret", "unknown name 'secret'"),
    ("lambda: 1", "unexpected character ':'"),
    ("lambda", "unknown name 'lambda'"),
    ("exact fuzzy", "unexpected token 'fuzzy'"),
    ("2 3", "unexpected token '3'"),
    ("exact ** 2", "token '\\*'"),
    ("exact if fuzzy else 1", "unexpected token 'if'"),
    ("exact; fuzzy", "unexpected character ';'"),
    ("exact, fuzzy", "unexpected token ','"),
    ("(exact + fuzzy", "expected '\\)'"),
    ("exact +", "the end of the formula"),
    ("", "empty formula"),
    ("   ", "empty formula"),
    ("sqrt(exact, fuzzy)", "sqrt\\(\\) takes 1 argument"),
    ("max()", "expected a number"),
    ("exec('1')", "unexpected character"),
    ("exact @ fuzzy", "unexpected character '@'"),
    ("1 = 1", "unexpected character '='"),
    ("(" * 200 + "1" + ")" * 200, "nesting deeper"),
    ("-" * 100 + "1", "nesting deeper"),
    ("1" * 20000, "longer than"),
    ("+".join(["exact"] * 400), "more than 500"),
])
def test_multi_formula_rejects(formula, match):
  with pytest.raises(ValueError, match=match):
    _multi(formula)


def test_multi_long_flat_formula_evaluates():
  formula = "+".join(["exact"] * 200) + " - 199 * exact"  # 403 tokens, left-deep AST.
  assert _multi(formula)("a", {"ref": "a"}) == 1.0


def test_multi_batch_and_nesting():
  inner = {"type": "multi", "graders": SUB, "calculate_output": "(exact + fuzzy) / 2"}
  outer = g.build_grader({"type": "multi", "name": "outer",
                          "graders": {"inner": inner, "exact": SUB["exact"]},
                          "calculate_output": "inner * 0.5 + exact * 0.5"})
  scores = outer.batch(["a", "kitten"], [{"ref": "a"}, {"ref": "sitting"}])
  assert scores == pytest.approx([1.0, 0.5 * (4 / 13)])


# ---------------------------------------------------------------------------------------------
# python (sandboxed).
# ---------------------------------------------------------------------------------------------


def _sandbox_ok():
  try:
    from score.rewards import sandbox
  except ImportError as e:
    return False, f"score.rewards.sandbox not importable: {e}"
  info = sandbox.isolation()
  if info.get("error"):
    return False, f"sandbox cannot run here: {info['error']}"
  return True, ""


_OK, _WHY = _sandbox_ok()


@pytest.mark.skipif(not _OK, reason=_WHY)
def test_python_grader():
  source = '''
import re

def grade(sample, item):
    print("debug output is fine")
    parsed = sample["output_json"]
    got = parsed["answer"] if isinstance(parsed, dict) else sample["output_text"]
    return 1.0 if str(got).strip() == item["answer"] else 0.25
'''
  grader = g.build_grader({"type": "python", "name": "py", "source": source, "timeout_s": 10})
  samples = ['{"answer": "42"}', "41", "42"]
  items = [{"answer": "42"}] * 3
  assert grader.batch(samples, items) == [1.0, 0.25, 1.0]


@pytest.mark.skipif(not _OK, reason=_WHY)
def test_python_grader_failures_score_zero():
  bad = {
      "raises": "def grade(sample, item):\n    raise RuntimeError('boom')\n",
      "hangs": "def grade(sample, item):\n    while True:\n        pass\n",
      "nan": "def grade(sample, item):\n    return float('nan')\n",
      "not_a_number": "def grade(sample, item):\n    return 'high'\n",
      "exits": "import os\ndef grade(sample, item):\n    os._exit(0)\n",
      # Tries to forge the score line; the marker is random per run.
      "forges": ("def grade(sample, item):\n"
                 "    print('__score_grade_0000000000000000__=1.0')\n    return 0.0\n"),
      "clipped_high": "def grade(sample, item):\n    return 7\n",
  }
  expected = {"clipped_high": 1.0}
  for name, source in bad.items():
    grader = g.build_grader({"type": "python", "name": name, "source": source,
                             "timeout_s": 1.0})
    assert grader("x", {}) == expected.get(name, 0.0), name


@pytest.mark.skipif(not _OK, reason=_WHY)
def test_python_grader_cannot_read_parent_secrets(monkeypatch):
  monkeypatch.setenv("SCORE_TEST_SECRET", "hunter2")
  # 1.0 only from a grader that ran and saw no secret: a crashed grader also scores 0.0.
  source = ("import os\ndef grade(sample, item):\n"
            "    return 0.0 if os.environ.get('SCORE_TEST_SECRET') else 1.0\n")
  grader = g.build_grader({"type": "python", "name": "env", "source": source})
  assert grader("x", {}) == 1.0
