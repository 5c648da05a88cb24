"""The rubric task of the Self-Rewarding demo: grammar, oracle, IFT mixture, EFT targets."""

import random

import pytest

from score.data import rubric_task as rt
from score.rewards import judge as judge_lib


@pytest.mark.parametrize("text,parsed", [
    ("up qdhb", ("up", "qdhb")), ("down abc", ("down", "abc")),
    ("up ab", None), ("up abcdefg", None), ("up abca", None), ("sideways abc", None),
    ("up  abc", None), ("upabc", None), ("up aBc", None), ("", None), (None, None)])
def test_parse_instruction(text, parsed):
  assert rt.parse_instruction(text) == parsed


# Hand-worked verdicts (rel, sub, all, ord, cln) for `up dbqh` (perfect: bdhq).
@pytest.mark.parametrize("response,marks", [
    ("bdhq", (1, 1, 1, 1, 1)),
    ("~bdhq", (1, 1, 1, 1, 0)),     # filler: only "nothing extraneous" fails
    ("bdq", (1, 1, 0, 1, 1)),       # one letter missing
    ("b", (1, 0, 0, 1, 1)),         # 1 of 4 < half
    ("bd", (1, 1, 0, 1, 1)),        # 2 of 4 = half
    ("dbhq", (1, 1, 1, 0, 1)),      # a swapped pair
    ("bddhq", (1, 1, 1, 1, 0)),     # a repeat keeps the order (ties allowed)
    ("bdhqz", (1, 1, 1, 1, 0)),     # a foreign letter
    ("xyz", (0, 0, 0, 1, 0)),       # off-topic but ordered
    ("zyx", (0, 0, 0, 0, 0)),
    ("", (0, 0, 0, 0, 1)),          # empty: nothing written, nothing extraneous
])
def test_rubric_hand_worked(response, marks):
  assert rt.rubric("up dbqh", response) == tuple(bool(m) for m in marks)
  assert rt.oracle_score("up dbqh", response) == sum(marks)


def test_down_is_descending():
  assert rt.perfect_response("down dbqh") == "qhdb"
  assert rt.oracle_score("down dbqh", "qhdb") == 5
  assert rt.rubric("down dbqh", "bdhq")[3] is False


def test_judgment_is_parsed_by_the_judge_parser():
  text = rt.judgment("up dbqh", "~dbhq")
  assert text == "miss:- add:~ swap:db rel+ sub+ all+ ord- cln- Score: 3"
  assert rt.judgment("down dbqh", "qhhz") == \
      "miss:db add:hz swap:hz rel+ sub+ all- ord- cln- Score: 2"
  assert judge_lib.parse_score(text).score == 3.0


def test_every_prompt_fits_the_char_vocabulary():
  task = rt.RubricTask()
  tok = task.tokenizer
  rng = random.Random(0)
  pool = task.instructions(50, seed=1)
  for x in pool:
    y = task.ift_response(x, rng)
    for text in (rt.user_prompt(x) + y, rt.user_prompt(rt.judge_prompt(x, y))
                 + rt.judgment(x, y), rt.user_prompt(task.few_shot_example(rng, pool)[0])):
      assert tok.decode(tok.encode(text)) == text.replace("^", "")


def test_ift_mixture_rates():
  """Defect rates follow the configuration: perfect share for 6-letter instructions =
  (1 − offtopic) · Π(1 − p) with the four defect rates (a swap of equal neighbours cannot
  happen: letters are distinct)."""
  task = rt.RubricTask(min_items=6, max_items=6, p_filler=0.5, p_drop=0.2, p_swap=0.1,
                       p_repeat=0.3, p_offtopic=0.0)
  rng = random.Random(0)
  xs = task.instructions(4000, seed=2)
  perfect = sum(rt.oracle_score(x, task.ift_response(x, rng)) == 5 for x in xs) / len(xs)
  assert perfect == pytest.approx(0.5 * 0.8 * 0.9 * 0.7, abs=0.025)
  # Shorter instructions get fewer defects: factor length_slope per missing letter.
  assert task.rate(0.5, "up abc") == pytest.approx(0.5 * 0.8 ** 3)


def test_instructions_distinct_and_excluded():
  task = rt.RubricTask()
  a = task.instructions(100, seed=0)
  b = task.instructions(100, seed=0, exclude=a[:50])
  assert len(set(a)) == 100 and not set(a[:50]) & set(b)
  assert all(rt.parse_instruction(x) for x in a)


def test_ranked_responses_differ_in_score():
  task = rt.RubricTask()
  rng = random.Random(0)
  for x in task.instructions(20, seed=3):
    ys = task.ranked_responses(x, rng)
    assert len(set(ys)) == 4 and len({rt.oracle_score(x, y) for y in ys}) > 1
