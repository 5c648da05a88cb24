"""Tests for score.rewards.judge: the Self-Rewarding judge prompt and its parsers."""

import pytest

from score.rewards import judge

# (judge output, expected score or None, a fragment of the reason).
SCORES = [
    # Well-formed.
    ("The response is relevant and complete.\nScore: 4", 4.0, "ok"),
    ("Score: 0", 0.0, "ok"),
    ("Score: 5", 5.0, "ok"),
    ("score: 3", 3.0, "ok"),
    ("SCORE:2", 2.0, "ok"),
    ("Score: 4.", 4.0, "ok"),
    ("Score: 3.5", 3.5, "ok"),
    ("Score: 4 points", 4.0, "ok"),
    ("**Score:** 4", 4.0, "ok"),
    ("**Score: 4**", 4.0, "ok"),
    ("Score: **4**", 4.0, "ok"),
    ('Score: "4"', 4.0, "ok"),
    ("Score: [4]", 4.0, "ok"),
    ("Total score: 4", 4.0, "ok"),
    ("Final Score：3", 3.0, "ok"),  # Full-width colon.
    ("Score:\n4", 4.0, "ok"),
    ("Score: 4/5", 4.0, "ok"),
    ("Score: 4 / 5", 4.0, "ok"),
    ("Score: 4 out of 5", 4.0, "ok"),
    ("Score: 4\n... as said, Score: 4", 4.0, "ok"),  # Repeated but consistent.
    # The template echoed back is ignored when a real score exists.
    ('Conclude with "Score: <total points>"\nScore: 2', 2.0, "ok"),
    # No score at all.
    ("", None, "empty"),
    (None, None, "empty"),
    ("   \n ", None, "empty"),
    ("The response is great, I'd give it a 5.", None, "no 'Score:' line"),
    ("I give it a score of 4.", None, "no 'Score:' line"),  # Prose, not the format.
    ("Scores vary.", None, "no 'Score:' line"),
    # Non-numeric.
    ("Score: four", None, "non-numeric"),
    ("Score: <total points>", None, "non-numeric"),
    ("Score: N/A", None, "non-numeric"),
    ("Score: ", None, "non-numeric"),
    ("Score: 3-4", None, "non-numeric"),  # A range is not a score.
    ("Score: 3 to 4", None, "non-numeric"),
    # Several different scores.
    ("Score: 3\nScore: 4", None, "several different scores"),
    ("Criterion 1 score: 1\nTotal score: 4", None, "several different scores"),
    ("Score: 4/5 ... on reflection Score: 2", None, "several different scores"),
    # Out of range / wrong scale.
    ("Score: 6", None, "out of range"),
    ("Score: 45", None, "out of range"),
    ("Score: -1", None, "out of range"),
    ("Score: 5.5", None, "out of range"),
    ("Score: 99999999999999999999", None, "out of range"),
    ("Score: 8/10", None, "not on the 0-5 scale"),
    ("Score: 4 out of 10", None, "not on the 0-5 scale"),
    ("Score: 80%", None, "not on the 0-5 scale"),
]


@pytest.mark.parametrize("text,score,reason", SCORES)
def test_parse_score_table(text, score, reason):
  result = judge.parse_score(text)
  assert result.score == score
  assert reason in result.reason
  assert result.ok is (score is not None)


def test_parse_score_multiple_last():
  assert judge.parse_score("Score: 3\nScore: 4", multiple="last").score == 4.0
  # Range checks still apply to the chosen value.
  assert judge.parse_score("Score: 3\nScore: 7", multiple="last").score is None
  with pytest.raises(ValueError, match="multiple"):
    judge.parse_score("Score: 3", multiple="first")


def test_parse_score_survives_adversarial_text():
  junk = ["Score:" * 1000, "Score: " + "9" * 5000, "\x00Score: 1\x00", "Score: 1e400",
          "Score: inf", "Score: nan", "(" * 10000 + "Score: 2"]
  for text in junk:
    result = judge.parse_score(text)
    assert result.score is None or 0 <= result.score <= 5
  assert judge.parse_score("\x00Score: 1\x00").score == 1.0
  assert judge.parse_score("(" * 10000 + "Score: 2").score == 2.0


def test_parsers_are_linear_on_huge_outputs():
  import time

  t0 = time.monotonic()
  assert judge.parse_score("Score:" * 100_000).score is None
  assert judge.parse_score("Score: 3 " * 100_000).score == 3.0
  assert "..." in judge.parse_score(" ".join(f"Score: {k % 5}" for k in range(10_000))).reason
  assert judge.parse_pairwise("Winner: " * 100_000).winner is None
  assert time.monotonic() - t0 < 5.0


def test_judge_prompt_is_the_papers():
  p = judge.judge_prompt("What is 2+2?", "It is 4.")
  assert p.startswith("Review the user's question and the corresponding response using the "
                      "additive 5-point scoring system described below.")
  for phrase in ["Add 1 point if the response is relevant",
                 "Add another point if the response addresses a substantial portion",
                 "Award a third point if the response answers the basic elements",
                 "Grant a fourth point if the response is clearly written from an AI Assistant's",
                 "Bestow a fifth point for a response that is impeccably tailored",
                 "Briefly justify your total score, up to 100 words.",
                 'Conclude with the score using the format: "Score: <total points>"']:
    assert phrase in p, phrase
  assert "User: What is 2+2?" in p
  assert "<response>It is 4.</response>" in p
  assert p.count("point") >= 5


def test_judge_prompt_substitution_is_literal():
  # Braces and placeholder look-alikes in user text must not break or re-substitute.
  p = judge.judge_prompt("Use {x} and <RESPONSE_HERE>", "{0} {response} \\1 \\g<0>")
  assert "User: Use {x} and <RESPONSE_HERE>" in p
  assert "<response>{0} {response} \\1 \\g<0></response>" in p


def test_average_scores():
  results = [judge.parse_score(t) for t in ["Score: 4", "garbage", "Score: 3"]]
  assert judge.average_scores(results) == pytest.approx(3.5)
  assert judge.average_scores([5, None, 4.0]) == pytest.approx(4.5)
  assert judge.average_scores([None, judge.JudgeResult(None, "x")]) is None
  assert judge.average_scores([]) is None


def test_select_pair():
  assert judge.select_pair([3.0, 4.5, 1.0, 2.0]) == (1, 2)
  assert judge.select_pair([3.0, 3.0, 3.0]) is None  # Tie: the paper drops the prompt.
  assert judge.select_pair([None, 2.0, None, 4.0]) == (3, 1)
  assert judge.select_pair([None, 2.0]) is None
  assert judge.select_pair([5.0, 5.0, 1.0, 1.0]) == (0, 2)


def test_judge_responses_batches_and_averages():
  calls = []
  outputs = iter(["Score: 4", "Score: 5", "nonsense",  # response 0 -> 4.5
                  "Score: 9", "Score: none", "",        # response 1 -> None
                  "Score: 1", "Score: 1", "Score: 2"])  # response 2 -> 4/3

  def generate_fn(prompts):
    calls.append(prompts)
    return [next(outputs) for _ in prompts]

  scores = judge.judge_responses(generate_fn, "Q?", ["r0", "r1", "r2"], num_judgments=3)
  assert len(calls) == 1 and len(calls[0]) == 9
  assert "<response>r1</response>" in calls[0][3]
  assert scores[0] == pytest.approx(4.5)
  assert scores[1] is None
  assert scores[2] == pytest.approx(4 / 3)
  with pytest.raises(ValueError, match="returned 1 outputs for 2 prompts"):
    judge.judge_responses(lambda p: ["Score: 1"], "Q", ["a", "b"], num_judgments=1)


PAIRWISE = [
    ("A is more complete.\nBetter response: A", "A", "ok"),
    ("Better response: B", "B", "ok"),
    ("Better response: tie", "tie", "ok"),
    ("better response: Tie.", "tie", "ok"),
    ("**Better response:** **B**", "B", "ok"),
    ("Better response: Response A", "A", "ok"),
    ("Better response: [[A]]", "A", "ok"),
    ("Winner: B", "B", "ok"),
    ("Verdict: both", "tie", "ok"),
    ("Better response: A\nTo repeat, Better response: A", "A", "ok"),
    ("", None, "empty"),
    ("Both are fine, I prefer A.", None, "no 'Better response:' line"),
    ("Better response: C", None, "unknown verdict"),
    ("Better response: Assistant", None, "unknown verdict"),
    ("Better response: A\nBetter response: B", None, "several different verdicts"),
]


@pytest.mark.parametrize("text,winner,reason", PAIRWISE)
def test_parse_pairwise_table(text, winner, reason):
  result = judge.parse_pairwise(text)
  assert result.winner == winner
  assert reason in result.reason


def test_pairwise_prompt_and_combination():
  p = judge.pairwise_prompt("Q?", "first {a}", "second")
  assert "<response_a>first {a}</response_a>" in p and "<response_b>second</response_b>" in p
  assert '"Better response: A"' in p
  R = judge.PairwiseResult
  # (A, B) says A; (B, A) says B (= the original A): consistent.
  assert judge.combine_pairwise(R("A", "ok"), R("B", "ok")).winner == "A"
  assert judge.combine_pairwise(R("B", "ok"), R("A", "ok")).winner == "B"
  # Both orders pick whichever is shown first: position bias -> tie.
  assert judge.combine_pairwise(R("A", "ok"), R("A", "ok")).winner == "tie"
  assert judge.combine_pairwise(R("tie", "ok"), R("tie", "ok")).winner == "tie"
  assert judge.combine_pairwise(R(None, "x"), R("A", "ok")).winner == "B"
  assert judge.combine_pairwise(R("B", "ok"), R(None, "x")).winner == "B"
  assert judge.combine_pairwise(R(None, "x"), R(None, "y")).winner is None


def test_registry_by_name():
  j = judge.JUDGES["additive_5pt"]
  assert j.parse("Score: 3").score == 3.0
  assert "<response>r</response>" in j.prompt("q", "r")
  assert judge.JUDGES["pairwise"].parse("Better response: B").winner == "B"
