"""Self-Rewarding data (EFT builder, loaders, self-instruction helpers) and the pure parts of
the trainer (judge-quality metrics, pair mining, judging with malformed outputs)."""

import json
import math
import random

import numpy as np
import pytest

from score.data import DataError
from score.data import codec as codec_lib
from score.data import self_rewarding as sr
from score.eval import judge_quality as jq
from score.rewards import judge as judge_lib
from score.trainers import self_instruct as si


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


# ---------------------------------------------------------------------------------------------
# Loaders.


def test_load_ranked_and_field_mapping(tmp_path):
  path = _write(tmp_path / "r.jsonl", [
      {"q": "Say hi", "answers": [{"body": "hi", "r": 0}, {"body": "no", "r": 1}]},
      {"q": "Only one", "answers": [{"body": "x", "r": 0}]},  # no ranking: skipped
  ])
  got = sr.load_ranked(path, fields={"prompt": "q", "responses": "answers", "text": "body",
                                     "rank": "r"})
  assert len(got) == 1
  assert got[0].prompt == "Say hi" and got[0].responses == ("hi", "no")
  assert got[0].ranks == (0, 1) and got[0].best() == "hi"


@pytest.mark.parametrize("row, message", [
    ("{not json", "invalid JSON"),
    ({"prompt": "", "responses": []}, "non-empty string"),
    ({"prompt": "p", "responses": "abc"}, "list of responses"),
    ({"prompt": "p", "responses": [{"text": "a", "rank": -1}, {"text": "b", "rank": 0}]},
     "non-negative integer"),
    ({"prompt": "p", "responses": [{"text": "a", "rank": 0.5}, {"text": "b", "rank": 0}]},
     "non-negative integer"),
    ({"prompt": "p", "responses": [{"text": "a", "rank": 0, "score": 7}, {"text": "b",
                                                                        "rank": 1}]},
     r"in \[0, 5\]"),
    ({"prompt": "p", "responses": [{"rank": 0}]}, "string 'text'"),
])
def test_load_ranked_errors_name_file_and_line(tmp_path, row, message):
  good = {"prompt": "ok", "responses": [{"text": "a", "rank": 0}, {"text": "b", "rank": 1}]}
  path = _write(tmp_path / "bad.jsonl", [good, row])
  with pytest.raises(DataError, match=message) as e:
    sr.load_ranked(path)
  assert e.value.line == 2 and str(path) in str(e.value)


@pytest.mark.parametrize("row, message", [
    ("[1, 2]", "JSON object"),
    ({"prompt": "p", "chosen": "a"}, "'rejected'"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "'chosen'"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt'"),
])
def test_load_pairs(tmp_path, row, message):
  good = {"prompt": "Say hi", "chosen": "hi", "rejected": "go away", "id": "g1"}
  got = sr.load_pairs(_write(tmp_path / "good.jsonl", [good]))
  assert got == [sr.RankedPrompt("Say hi", ("hi", "go away"), (0, 1), id="g1")]
  mapped = sr.load_pairs(_write(tmp_path / "m.jsonl", [{"q": "x", "a": "y", "b": "z"}]),
                         fields={"prompt": "q", "chosen": "a", "rejected": "b"})
  assert mapped[0].responses == ("y", "z") and mapped[0].id == "m.jsonl:1"
  path = _write(tmp_path / "bad.jsonl", [good, row])
  with pytest.raises(DataError, match=message) as e:
    sr.load_pairs(path)
  assert e.value.line == 2 and str(path) in str(e.value)


def test_load_ift(tmp_path):
  path = _write(tmp_path / "ift.jsonl", [{"instruction": "a", "response": "b"},
                                         {"prompt": "c", "output": "d"}])
  with pytest.raises(DataError, match="'instruction'") as e:
    sr.load_ift(path)
  assert e.value.line == 2
  path = _write(tmp_path / "ift2.jsonl", [{"prompt": "c", "output": "d"}])
  assert sr.load_ift(path, fields={"instruction": "prompt", "response": "output"}) == [
      sr.IFTExample("c", "d")]


# ---------------------------------------------------------------------------------------------
# EFT.


@pytest.mark.parametrize("score", range(6))
def test_templated_judgment_parses_back_to_its_score(score):
  text = sr.templated_judgment(score)
  assert judge_lib.parse_score(text) == judge_lib.JudgeResult(float(score), "ok")
  assert text.count("Score:") == 1


def test_rank_to_score():
  assert [sr.rank_to_score(r, 4) for r in range(4)] == [5, 4, 2, 1]  # 5 - 4r/3, rounded
  assert sr.rank_to_score(0, 1) == 5


def _ranked(i, judgments=None, scores=None):
  return sr.RankedPrompt(f"prompt {i}", ("best", "mid", "worst"), (0, 1, 2),
                         scores or (), judgments or (), id=f"p{i}")


def test_build_eft_targets_filter_and_split_by_prompt():
  agree = ("Good.\nScore: 5", "Fine.\nScore: 3", "Bad.\nScore: 1")
  disagree = ("Score: 1", "Score: 3", "Score: 5")  # reversed order vs the people
  unparsable = ("Score: 5", "no score", "Score: 1")
  ranked = ([_ranked(i, judgments=agree) for i in range(4)]
            + [_ranked(10, judgments=disagree), _ranked(11, judgments=unparsable)]
            + [_ranked(20 + i, scores=(4.0, 2.0, 0.0)) for i in range(2)]
            + [_ranked(30 + i) for i in range(2)])
  train, evals, eval_prompts, counts = sr.build_eft(ranked, train_size=100, eval_size=6, seed=3)
  assert counts["dropped_disagree"] == 1 and counts["dropped_unparsable"] == 1
  assert len(evals) == 6 and len(eval_prompts) == 2  # whole prompts, 3 responses each
  assert len(train) == 3 * 8 - 6
  assert not {e.prompt_id for e in train} & {e.prompt_id for e in evals}
  by_id = {e.prompt_id: [] for e in train + evals}
  for e in train + evals:
    by_id[e.prompt_id].append(e)
    assert judge_lib.parse_score(e.target).score == e.score
  assert [e.target for e in by_id["p0"]] == list(agree)  # written judgments kept verbatim
  assert [e.score for e in by_id["p20"]] == [4.0, 2.0, 0.0]  # given scores
  assert [e.score for e in by_id["p30"]] == [5.0, 3.0, 1.0]  # from ranks 0, 1, 2
  # Without the agreement filter the disagreeing prompt is kept.
  *_, counts = sr.build_eft(ranked, train_size=100, eval_size=0, require_agreement=False)
  assert counts["dropped_disagree"] == 0 and counts["train"] == 3 * 9


def test_ift_from_ranked_takes_the_best():
  r = sr.RankedPrompt("p", ("b", "a", "c"), (1, 0, 2))
  assert sr.ift_from_ranked([r]) == [sr.IFTExample("p", "a")]


def test_synthetic_ranked_is_deterministic_and_ranked_by_quality():
  a, b = sr.synthetic_ranked(20, seed=1), sr.synthetic_ranked(20, seed=1)
  assert a == b and len({r.prompt for r in a}) == 20
  for r in a:
    order = sorted(range(4), key=lambda i: -r.scores[i])
    assert [r.ranks[i] for i in order] == sorted(r.ranks)
  rows = [sr.ranked_to_row(r) for r in a]
  assert all(len(x["responses"]) == 4 for x in rows)


# ---------------------------------------------------------------------------------------------
# Self-instruction helpers.


def test_few_shot_prompt_and_parse():
  text = sr.few_shot_prompt(["What is 2+2?", " Name a colour. "])
  assert text.startswith(sr.FEW_SHOT_TEMPLATE)
  assert text.endswith("<task>What is 2+2?</task>\n<task>Name a colour.</task>\n<task>")
  shots = sr.sample_shots([str(i) for i in range(20)], 8, random.Random(0))
  assert len(set(shots)) == 8


@pytest.mark.parametrize("raw, want", [
    ("Write a poem about cats.</task>", "Write a poem about cats."),
    ("  Explain DNS. </task>\n<task>more", "Explain DNS."),
    ("no closing tag", "no closing tag"),
    ("</task>", None),
    ("   ", None),
    ("<task>nested", None),
    ("Question one?\n<task>Question two?</task>", "Question one?"),
])
def test_parse_generated_task(raw, want):
  assert sr.parse_generated_task(raw) == want


def test_filter_prompts_reasons():
  fates = sr.filter_prompts(
      ["What is DNS?", None, "hi", "x" * 50, "what is dns", "Tell me a joke.", "An IFT one!"],
      seen=["an ift one"], min_chars=5, max_chars=40)
  assert fates == ["kept", "unparsable", "too_short", "too_long", "duplicate", "kept",
                   "duplicate"]


def test_write_jsonl_is_atomic(tmp_path):
  path = tmp_path / "a" / "rows.jsonl"
  assert sr.write_jsonl(path, [{"x": 1}, {"x": "é"}]) == 2
  assert sr.read_jsonl(path) == [{"x": 1}, {"x": "é"}]
  assert not (tmp_path / "a" / "rows.jsonl.tmp").exists()

  def boom():
    yield {"x": 2}
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    sr.write_jsonl(tmp_path / "b.jsonl", boom())
  assert not (tmp_path / "b.jsonl").exists()  # an interrupted phase leaves no artefact


# ---------------------------------------------------------------------------------------------
# Judge quality (hand-computed), pair mining, judging with malformed outputs.


def test_judge_quality_hand_computed():
  ranks = [[0, 1, 2], [0, 1, 1], [1, 0]]
  scores = [[5.0, 3.0, 4.0],   # pairs (0,1) ok, (0,2) ok, (1,2) wrong → 2/3
            [4.0, 4.0, None],  # (0,1) tie → wrong, (0,2) missing → wrong; (1,2) same rank
            [2.0, 1.0]]        # (1 is better) but scored lower → wrong
  m = jq.judge_quality(scores, ranks)
  assert m["pairs"] == 3 + 2 + 1
  assert m["pairwise_accuracy"] == pytest.approx(100 * 2 / 6)
  assert m["five_best"] == pytest.approx(100 / 3)  # prompt 0's best got 5
  assert m["exact_match"] == 0.0
  assert m["missing"] == pytest.approx(100 / 8)
  # Spearman/Kendall of prompt 0: scores (5,3,4) vs −ranks (0,−1,−2): ρ = 0.5, τ = 1/3.
  # Prompt 1 has a constant score side; prompt 2: ρ = τ = −1.
  assert m["correlation_prompts"] == 2
  assert m["spearman"] == pytest.approx((0.5 - 1) / 2)
  assert m["kendall_tau"] == pytest.approx((1 / 3 - 1) / 2)
  perfect = jq.judge_quality([[5.0, 3.0, 3.0]], [[0, 1, 1]])
  assert perfect["exact_match"] == 100.0 and perfect["pairwise_accuracy"] == 100.0


def test_spearman_kendall_match_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for _ in range(20):
    x = rng.integers(0, 4, size=6).astype(float)
    y = rng.integers(0, 3, size=6).astype(float)
    rho, tau = jq.spearman(x, y), jq.kendall_tau(x, y)
    if rho is None:
      assert np.std(x) == 0 or np.std(y) == 0
      continue
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic)  # τ-b


def test_mine_pairs_best_vs_worst_ties_dropped():
  prompts = [{"id": str(i), "prompt": f"p{i}"} for i in range(5)]
  texts = [["a", "b", "c", "d"]] * 4 + [["same", "x", "same", "y"]]
  scores = [[3.0, 4.5, None, 1.0],     # best 1, worst 3
            [2.0, 2.0, 2.0, 2.0],      # tie → dropped
            [None, None, 4.0, None],   # one scored candidate → dropped
            [5.0, 1.0, 5.0, 1.0],      # ties within best/worst → first index of each
            [4.0, 3.0, 1.0, 3.0]]      # best 0 / worst 2 have the same text → dropped
  pairs, counts = si.mine_pairs(prompts, texts, scores)
  assert counts == {"prompts": 5, "pairs": 2, "tie": 1, "unscored": 1, "identical": 1}
  assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "d"), ("a", "b")]
  assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (4.5, 1.0)
  assert (pairs[1]["chosen_index"], pairs[1]["rejected_index"]) == (0, 1)


class _Tok:
  chat_template = "x"
  eos_token_id = 1
  pad_token_id = 0

  def apply_chat_template(self, messages, **_):
    return messages[0]["content"]

  def encode(self, text, add_special_tokens=False):
    return [2] * 3


def test_judge_rows_survives_malformed_outputs(monkeypatch):
  """k = 3 judgments per item; malformed ones are recorded with the reason and skipped in
  the average; all malformed → score None."""
  canned = iter(["Good.\nScore: 4", "Score: 2", "I think it is fine.",
                 "Score: 9", "Score: 3/10", None,
                 "**Score:** 5", "Score: 4\nScore: 4", "Score: 3.5"])

  def fake_generate(model, codec, prompts, **kw):
    out = []
    for _ in prompts:
      text = next(canned)
      out.append({"text": text, "num_tokens": 1,
                  "finish": "prompt_too_long" if text is None else "stop"})
    return out

  monkeypatch.setattr(si, "generate_texts", fake_generate)
  cfg = type("C", (), dict(num_judgments=3, max_new_tokens=8, temperature=0.7, top_p=0.9,
                           multiple="reject"))
  rows = si.judge_rows(None, codec_lib.Codec(_Tok()), [("q", "a"), ("q", "b"), ("q", "c")],
                            cfg, seed=0, batch_size=4, max_prompt_tokens=10)
  assert rows[0]["score"] == 3.0
  assert [j["reason"] for j in rows[0]["judgments"]][2] == "no 'Score:' line"
  assert rows[1]["score"] is None
  assert [j["score"] for j in rows[1]["judgments"]] == [None, None, None]
  assert rows[1]["judgments"][2] == {"raw": None, "score": None, "reason": "prompt_too_long"}
  assert rows[2]["score"] == pytest.approx((5 + 4 + 3.5) / 3)
  assert rows[0]["judgments"][0]["raw"] == "Good.\nScore: 4"  # raw judge text is kept
  assert not math.isnan(rows[2]["score"])
