"""MBPP-R (SCoRe Table 3): fixed first attempts in rollouts, building / loading the repair set,
scoring repairs against a scripted model whose repairs are known, and the suite's column."""

import importlib.util
import json
import os

import numpy as np
import pytest
from flax import nnx

from score.data import loaders
from score.data.records import DataError, Problem
from score.eval import metrics
from score.eval import repair
from score.eval import tables
from score.models import ModelConfig, Transformer
from score.sampling import generate, rollouts
from score.sampling.sampler import Samples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = 3

# ---------------------------------------------------------------------------------------------
# rollout(first_responses=...) on a real tiny model.

PROMPTS = [[5, 17, 3, 9], [40, 2]]
INSTRUCTION = [120, 121]


@pytest.fixture(scope="module")
def tiny_model():
  return Transformer(ModelConfig.tiny(vocab_size=128), rngs=nnx.Rngs(2))


def test_rollout_splices_fixed_first_responses_and_samples_turn_two(tiny_model):
  forced = [[7, 8, EOS], [10, 11, 12, 13]]
  ep = rollouts.rollout(tiny_model, PROMPTS, num_turns=2, max_new_tokens=4,
                        instruction=INSTRUCTION, temperature=0.0, eos_ids=(EOS,),
                        first_responses=forced)
  contexts = [p + y + INSTRUCTION for p, y in zip(PROMPTS, forced)]
  # Turn 2 is the greedy continuation of exactly x1 ⊕ fixed y1 ⊕ p.
  expected = generate(tiny_model, contexts, max_new_tokens=4, eos_ids=(EOS,)).tokens
  assert [r[0] for r in ep.responses] == forced
  assert [r[1] for r in ep.responses] == expected
  assert [r[0] for r in ep.finish_reason] == ["stop", "length"]  # ended in EOS or not
  for b in range(2):
    real = ep.mask_BxL[b] > 0
    ids, turns = ep.tokens_BxL[b][real].tolist(), ep.turn_mask_BxL[b][real].tolist()
    assert ids == contexts[b] + expected[b]
    # The fixed attempt is context: never trainable, no log-probs; only turn 2 is marked.
    assert turns == [0] * len(contexts[b]) + [2] * len(expected[b])
    assert np.all(ep.logprobs_BxL[b][ep.turn_mask_BxL[b] == 0] == 0)
  # Not bound by max_new_tokens (4 < 6), only cut to max_len.
  ep = rollouts.rollout(tiny_model, [[5, 6]], num_turns=2, max_new_tokens=4,
                        instruction=INSTRUCTION, eos_ids=(EOS,), temperature=0.0,
                        first_responses=[[20, 21, 22, 23, 24, 25]], max_len=16)
  assert ep.responses[0][0] == [20, 21, 22, 23, 24, 25]
  ep = rollouts.rollout(tiny_model, [[5, 6]], num_turns=2, max_new_tokens=4,
                        instruction=INSTRUCTION, eos_ids=(EOS,), temperature=0.0,
                        first_responses=[[20, 21, 22, 23, 24, 25]], max_len=6)
  assert ep.responses[0] == [[20, 21, 22, 23], []] and ep.truncated_BxK[0].all()
  with pytest.raises(ValueError, match="first_responses"):
    rollouts.rollout(tiny_model, PROMPTS, num_turns=2, max_new_tokens=2,
                     first_responses=[[1]])


# ---------------------------------------------------------------------------------------------
# A scripted model on a character-level environment: repairs known in advance.


class CharTokenizer:

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [ord(c) for c in text]


class ScriptedEnv:
  """Prompt `"<id>:"`, instruction `?` (Self-Refine: `!` asks for feedback, then `?`);
  an attempt is right iff it reads `GOOD`."""
  tokenizer = CharTokenizer()
  eos_ids, pad_id, max_new_tokens, max_len = (EOS,), 0, 16, 64
  instruction = [ord("?")]

  @staticmethod
  def self_refine_instruction(turn, context, response):
    del context, response
    return [ord("!" if turn == 1 else "?")]

  def prompt_tokens(self, problem):
    return self.tokenizer.encode(problem.id + ":")

  def decode(self, ids):
    return "".join(chr(i) for i in ids if i != EOS)

  def rewards(self, problems, responses):
    return [float(self.decode(y) == "GOOD") for y in responses]


class ScriptedModel:
  """First attempt: `first[id]`. After `?`: `GOOD` iff `(id, first attempt in context)` is
  in `fixes`, else `BAD`. After `!`: `hint` (Self-Refine feedback)."""

  def __init__(self, first=None, fixes=()):
    self.first, self.fixes, self.calls = dict(first or {}), set(fixes), 0


@pytest.fixture
def scripted(monkeypatch):
  """Routes `rollout`'s sampler to `ScriptedModel`s."""
  env = ScriptedEnv()

  def fake_generate(model, contexts, *, max_new_tokens, **kwargs):
    del kwargs
    assert isinstance(model, ScriptedModel), "sampled with the wrong model"
    model.calls += 1
    outs = []
    for ctx in contexts:
      text = env.decode(ctx)
      pid, rest = text.split(":", 1)
      if not rest:
        out = model.first[pid]
      elif rest.endswith("!"):
        out = "hint"
      else:
        first = rest.split("?")[0].split("!")[0]
        out = "GOOD" if (pid, first) in model.fixes else "BAD"
      outs.append(env.tokenizer.encode(out) + [EOS])
    limits = ([max_new_tokens] * len(contexts) if isinstance(max_new_tokens, int)
              else list(max_new_tokens))
    outs = [y[:n] for y, n in zip(outs, limits)]
    zeros = [[0.0] * len(y) for y in outs]
    return Samples(outs, zeros, zeros, ["stop"] * len(outs))

  monkeypatch.setattr(rollouts, "generate", fake_generate)
  return env


PROBLEMS = [Problem(id=f"p{i}", problem=f"task {i}") for i in range(4)]
BY_ID = {p.id: p for p in PROBLEMS}


def test_repair_set_keeps_only_failing_first_attempts_and_is_cached(scripted, tmp_path):
  model = ScriptedModel(first={"p0": "GOOD", "p1": "bad1", "p2": "bad2", "p3": "GOOD"})
  path = str(tmp_path / "mbpp_r.jsonl")
  records = repair.build_repair_set(model, scripted, PROBLEMS, path=path, batch_size=3)
  assert [r["id"] for r in records] == ["p1", "p2"]
  assert [r["first_attempt"] for r in records] == ["bad1", "bad2"]
  assert records[0]["first_attempt_ids"] == [ord(c) for c in "bad1"] + [EOS]
  assert [json.loads(l) for l in open(path)] == records
  # Present: read back, nothing sampled (this model would fail every problem).
  other = ScriptedModel(first={p.id: "x" for p in PROBLEMS})
  assert repair.build_repair_set(other, scripted, PROBLEMS, path=path) == records
  assert other.calls == 0
  # A model that fails nothing gives an empty set, and the empty cache is reused.
  empty = str(tmp_path / "empty.jsonl")
  good = ScriptedModel(first={p.id: "GOOD" for p in PROBLEMS})
  assert repair.build_repair_set(good, scripted, PROBLEMS, path=empty) == []
  assert repair.build_repair_set(other, scripted, PROBLEMS, path=empty) == []
  # Built from other problems (repair.num_problems grew): rebuilt, not silently reused.
  assert repair.build_repair_set(other, scripted, PROBLEMS[:2], path=empty) == [
      {"id": p.id, "first_attempt": "x", "first_attempt_ids": [ord("x"), EOS]}
      for p in PROBLEMS[:2]]
  assert other.calls == 1
  assert repair.build_repair_set(good, scripted, PROBLEMS[:2], path=empty) != []
  assert repair.build_repair_set(good, scripted, PROBLEMS, path=empty) == []


def test_first_attempt_ids_of_another_tokenizer_are_not_used(scripted):
  record = {"id": "p1", "first_attempt": "bad1", "first_attempt_ids": [ord(c) for c in "bad1"]}
  assert repair.first_attempt_ids(scripted, record) == [ord(c) for c in "bad1"]
  # Ids some other tokenizer made for the same text: the text is tokenised here instead.
  foreign = dict(record, first_attempt_ids=[7, 3])
  assert repair.first_attempt_ids(scripted, foreign) == [ord(c) for c in "bad1"] + [EOS]


def test_evaluate_repair_scores_the_second_attempt_on_the_fixed_first(scripted):
  repair_set = [
      {"id": "p1", "first_attempt": "bad1"},
      {"id": "p2", "first_attempt": "bad2"},
      {"id": "p3", "first_attempt": "other", "first_attempt_ids": [ord(c) for c in "other"]},
  ]
  # The model's own first attempts would differ ("own"): only the fixed ones are repaired.
  model = ScriptedModel(first={p.id: "own" for p in PROBLEMS},
                        fixes={("p1", "bad1"), ("p3", "other"), ("p2", "own")})
  out = repair.evaluate_repair(model, scripted, BY_ID, repair_set, batch_size=2)
  assert out["ids"] == ["p1", "p2", "p3"]
  assert out["repaired"] == [True, False, True]
  assert out["first_correct"] == [False, False, False]
  assert [a["t1"] for a in out["attempts"]] == ["bad1", "bad2", "other"]
  assert [a["t2"] for a in out["attempts"]] == ["GOOD", "BAD", "GOOD"]
  m = out["metrics"]
  assert m["n"] == 3 and m["value"] == pytest.approx(200 / 3)
  assert 0 <= m["low"] <= m["value"] <= m["high"] <= 100
  # Self-Refine: attempt, own feedback, refined attempt; the refined one is scored.
  out = repair.evaluate_repair(model, scripted, BY_ID, repair_set, self_refine=True)
  assert [a["t2"] for a in out["attempts"]] == ["hint"] * 3
  assert out["repaired"] == [True, False, True]
  # A fixed first attempt that already passes is reported as such.
  out = repair.evaluate_repair(model, scripted, BY_ID, [{"id": "p0", "first_attempt": "GOOD"}])
  assert out["first_correct"] == [True] and out["repaired"] == [False]
  with pytest.raises(ValueError, match="unknown problems"):
    repair.evaluate_repair(model, scripted, BY_ID, [{"id": "zz", "first_attempt": "x"}])


def test_evaluate_repair_cached_reuses_until_the_set_changes(scripted, tmp_path):
  made = []

  def model_fn():
    made.append(1)
    return ScriptedModel(fixes={("p1", "bad1")})

  rs = [{"id": "p1", "first_attempt": "bad1"}, {"id": "p2", "first_attempt": "bad2"}]
  first = repair.evaluate_repair_cached(str(tmp_path), "score", model_fn, scripted, BY_ID, rs)
  assert first["repaired"] == [True, False] and first["metrics"]["value"] == 50.0
  assert os.path.exists(tmp_path / "evals" / "mbpp_r" / "score.json")
  again = repair.evaluate_repair_cached(str(tmp_path), "score", model_fn, scripted, BY_ID, rs)
  assert again == first and len(made) == 1
  changed = repair.evaluate_repair_cached(str(tmp_path), "score", model_fn, scripted, BY_ID,
                                          rs[:1])
  assert changed["repaired"] == [True] and len(made) == 2


def test_accuracy_interval_by_hand():
  m = metrics.accuracy([1, 0, 1, 1])
  assert (m["value"], m["n"]) == (75.0, 4)
  assert 0 <= m["low"] <= 75.0 <= m["high"] <= 100
  assert metrics.accuracy([1, 1, 1]) == {"value": 100.0, "low": 100.0, "high": 100.0, "n": 3}
  with pytest.raises(ValueError):
    metrics.accuracy([])


# ---------------------------------------------------------------------------------------------
# User files.


def _write(tmp_path, lines, name="user.jsonl"):
  path = tmp_path / name
  path.write_text("".join(l + "\n" for l in lines))
  return str(path)


GOOD_LINE = json.dumps({"id": "p1", "first_attempt": "bad1", "note": "kept"})


@pytest.mark.parametrize("bad_line,line,match", [
    ("{not json", 3, "invalid JSON"),
    ("[1, 2]", 3, "JSON object"),
    (json.dumps({"id": "p2"}), 3, "'first_attempt'"),
    (json.dumps({"first_attempt": "x"}), 3, "'id'"),
    (json.dumps({"id": 2, "first_attempt": "x"}), 3, "'id'.*got a int"),
    (json.dumps({"id": "p2", "first_attempt": "x", "first_attempt_ids": ["a"]}), 3,
     "first_attempt_ids"),
    (json.dumps({"id": "p1", "first_attempt": "x"}), 3, "duplicate id 'p1' .first on line 1"),
    (json.dumps({"id": "nope", "first_attempt": "x"}), 3, "'nope' names no problem"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad_line, line, match):
  path = _write(tmp_path, [GOOD_LINE, "", bad_line])  # a blank line 2 is skipped
  with pytest.raises(DataError, match=match) as e:
    repair.load_repair_set(path, problems_by_id=BY_ID)
  assert str(e.value).startswith(f"{path}:{line}: ")
  assert (e.value.path, e.value.line) == (path, line)


def test_load_user_file(tmp_path):
  path = _write(tmp_path, [GOOD_LINE, json.dumps({"id": "nope", "first_attempt": "x"})])
  records = repair.load_repair_set(path)  # without problems, ids are not checked
  assert records[0] == {"id": "p1", "first_attempt": "bad1", "note": "kept"}
  # Text without ids is tokenised and ended with EOS, as a response that stopped.
  assert repair.first_attempt_ids(ScriptedEnv(), records[0]) == [98, 97, 100, 49, EOS]
  with pytest.raises(DataError, match="none"):
    repair.load_repair_set(_write(tmp_path, ["", ""], "empty.jsonl"))
  with pytest.raises(FileNotFoundError):
    repair.load_repair_set(str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------------------------
# Tables.


def _res(v):
  m = {"value": v, "low": v - 1, "high": v + 1}
  return {"n": 4, **{k: m for k in metrics.METRICS}}


def test_table_has_mbpp_r_column_only_when_measured():
  results = {"base": {**_res(10.0), "mbpp_r": {"value": 12.5, "low": 0.0, "high": 37.5, "n": 8}},
             "score": _res(20.0)}
  md = tables.markdown_table(results, published=tables.PUBLISHED["humaneval"],
                             published_extra=tables.PUBLISHED_EXTRA["humaneval"])
  header, _, base, score = md.splitlines()
  assert header.split(" | ")[2:3] == ["MBPP-R (ours)"]
  assert header.split(" | ")[8:10] == ["MBPP-R (published)", "Acc@t1 (published)"]
  assert base.split(" | ")[2] == "12.5 [0.0, 37.5]" and base.split(" | ")[8] == "47.3"
  assert score.split(" | ")[2] == "—" and score.split(" | ")[8] == "60.6"
  plain = tables.markdown_table({"base": _res(10.0)}, published=tables.PUBLISHED["humaneval"],
                                published_extra=tables.PUBLISHED_EXTRA["humaneval"])
  assert "MBPP-R" not in plain


# ---------------------------------------------------------------------------------------------
# The real code environment: MBPP problems, sandboxed tests, a scripted repairer.


def _humaneval_config(arg="runlocal", **overrides):
  spec = importlib.util.spec_from_file_location(
      "score_humaneval", os.path.join(ROOT, "configs", "score_humaneval.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.apply_overrides(c, overrides)
  return c


def test_code_env_repairs_are_graded_in_the_sandbox(monkeypatch, tmp_path):
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from score.utils import tiny_checkpoint  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  mbpp = loaders.load("mbpp", split="test")[:2]
  ckpt = tiny_checkpoint.make_tiny_checkpoint(
      str(tmp_path / "tiny"), [p.problem + "\n" + p.solution for p in mbpp])
  env = envs.TextEnv(tokenizer=hf.load_tokenizer(ckpt), train=mbpp, heldout=mbpp, task="code",
                     prompt_format="chat", seed=0, max_new_tokens=512, max_len=2048)
  wrong = "```python\ndef nothing():\n  return None\n```"

  def fake_generate(model, contexts, *, max_new_tokens, **kwargs):
    del model, max_new_tokens, kwargs
    outs = []
    for ctx in contexts:
      text = env.decode(ctx)
      p = next(p for p in mbpp if p.problem in text)
      # Repairs mbpp's first problem only, and only from the fixed wrong program.
      fixed = wrong in text and p is mbpp[0]
      out = f"```python\n{p.solution}\n```" if fixed else "pass"
      outs.append(env.tokenizer.encode(out, add_special_tokens=False) + [env.eos_ids[0]])
    zeros = [[0.0] * len(y) for y in outs]
    return Samples(outs, zeros, zeros, ["stop"] * len(outs))

  monkeypatch.setattr(rollouts, "generate", fake_generate)
  rs = [{"id": p.id, "first_attempt": wrong} for p in mbpp]
  out = repair.evaluate_repair(None, env, {p.id: p for p in mbpp}, rs)
  assert out["repaired"] == [True, False] and out["first_correct"] == [False, False]
  assert out["metrics"]["value"] == 50.0
  # Building the set from this "model": its first attempts ("pass") fail every problem.
  built = repair.build_repair_set(None, env, mbpp)
  assert [r["id"] for r in built] == [p.id for p in mbpp]


# ---------------------------------------------------------------------------------------------
# The suite: configs/score_humaneval.py:runlocal writes the MBPP-R column.


@pytest.mark.slow  # fast: the SCoRe suite smoke in test_score_trainer
def test_suite_mbpp_r_column_and_user_file(tmp_path):
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  c = _humaneval_config(methods=("base",))
  assert c.repair.task == "mbpp" and c.repair.split == "test" and c.repair.num_problems == 4
  workdir = str(tmp_path / "built")
  results = suite.train(c, workdir)
  assert results["base"]["mbpp_r"]["n"] == 4  # a random model fails all 4 first attempts
  ids = [json.loads(l)["id"] for l in open(os.path.join(workdir, "mbpp_r.jsonl"))]
  assert ids == ["mbpp/11", "mbpp/12", "mbpp/13", "mbpp/14"]
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["results"]["base"]["mbpp_r"] == results["base"]["mbpp_r"]
  md = open(os.path.join(workdir, "results.md")).read()
  assert "MBPP-R (ours)" in md and "MBPP-R (published)" in md and "| 47.3 | 53.7 |" in md
  assert "- MBPP-R: 4 wrong greedy first attempts" in md
  # Re-running reuses the set and the evaluations.
  mtime = os.path.getmtime(os.path.join(workdir, "mbpp_r.jsonl"))
  assert suite.train(c, workdir) == results
  assert os.path.getmtime(os.path.join(workdir, "mbpp_r.jsonl")) == mtime
  # A user file replaces the built set; with repair off there is no column.
  user = _write(tmp_path, [json.dumps({"id": "mbpp/20", "first_attempt": "def f(): pass"})])
  local = {"methods": ("base",), "runlocal_model": False,
           "model.model_dir": os.path.join(workdir, "tiny_model")}
  c = _humaneval_config(**local, **{"repair.path": user})
  results = suite.train(c, str(tmp_path / "user"))
  assert results["base"]["mbpp_r"]["n"] == 1
  assert not os.path.exists(tmp_path / "user" / "mbpp_r.jsonl")
  c = _humaneval_config(**local, **{"repair.task": ""})
  results = suite.train(c, str(tmp_path / "off"))
  assert "mbpp_r" not in results["base"]
  assert "MBPP-R" not in open(tmp_path / "off" / "results.md").read()


@pytest.mark.slow
def test_score_humaneval_runlocal_table_has_mbpp_r_for_every_method(tmp_path):
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  c = _humaneval_config()
  results = suite.train(c, str(tmp_path))
  assert tuple(results) == ("base", "self_refine", "pair_sft", "score")
  saved = json.load(open(tmp_path / "results.json"))["results"]
  md = open(tmp_path / "results.md").read()
  for method, published in tables.PUBLISHED_MBPP_R.items():
    assert saved[method]["mbpp_r"]["n"] == 4
    row = next(l for l in md.splitlines() if l.startswith(f"| {method} |"))
    assert row.split(" | ")[8] == f"{published:.1f}"
  assert sorted(os.listdir(tmp_path / "evals" / "mbpp_r")) == [
      "base.json", "pair_sft.json", "score.json", "self_refine.json"]
