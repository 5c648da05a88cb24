"""The synthetic addition task: answers, rewards, the warm-up mixture, tokenisation."""

import numpy as np
import pytest

from score.data import synthetic


def test_parse_and_reward_both_formats_and_malformed():
  task = synthetic.AdditionTask(num_digits=3)
  p = synthetic.SyntheticProblem("x", "123+989=", "1112")
  assert task.reward("1112", p) == 1.0
  assert task.reward("r2111", p) == 1.0
  for bad in ("1113", "r1112", "", "r", "01112", "11 12", "1112?", "+1112", "r2111r"):
    assert task.reward(bad, p) == 0.0, bad


def test_problems_are_seeded_distinct_and_respect_exclusion():
  task = synthetic.AdditionTask()
  a = task.problems(200, seed=1)
  assert [p.question for p in a] == [p.question for p in task.problems(200, seed=1)]
  assert len({p.question for p in a}) == 200
  b = task.problems(200, seed=2, exclude=a)
  assert not {p.question for p in a} & {p.question for p in b}
  for p in a:
    x, y = p.question[:-1].split("+")
    assert len(x) == len(y) == 4 and int(x) + int(y) == int(p.answer)


def test_warmup_mixture_matches_its_probabilities():
  task = synthetic.AdditionTask(p_wrong_first=0.2, p_wrong_before_rewrite=0.6, p_copy=0.7,
                                p_reverse=0.25, p_wrong_rewrite=0.05)
  eps = task.warmup_episodes(4000, seed=0)
  wrong1 = np.mean([task.reward(e.y1, e.problem) == 0 for e in eps])
  rewrites = [e for e in eps if e.y2.startswith("r")]
  wrong_before_rewrite = np.mean([task.reward(e.y1, e.problem) == 0 for e in rewrites])
  assert abs(wrong_before_rewrite - 0.6) < 3 * np.sqrt(0.24 / len(rewrites))
  wrong1_expected = 0.7 * 0.2 + 0.3 * 0.6
  copy = np.mean([e.y2 == e.y1 for e in eps])
  rev_ok = np.mean([e.y2.startswith("r") and task.reward(e.y2, e.problem) == 1 for e in eps])
  rev_bad = np.mean([e.y2.startswith("r") and task.reward(e.y2, e.problem) == 0 for e in eps])
  se = lambda p: 3 * np.sqrt(p * (1 - p) / len(eps))
  assert abs(wrong1 - wrong1_expected) < se(wrong1_expected)
  assert abs(copy - 0.7) < se(0.7)
  assert abs(rev_ok - 0.25) < se(0.25)
  assert abs(rev_bad - 0.05) < se(0.05)
  # A wrong first attempt differs from the answer in exactly one digit.
  for e in eps[:500]:
    if e.y1 != e.problem.answer:
      assert sum(a != b for a, b in zip(e.y1, e.problem.answer)) == 1


def test_episode_tokens_mark_only_attempts():
  task = synthetic.AdditionTask()
  tok = task.tokenizer
  tokens, turn = synthetic.episode_tokens(tok, "12+34=", ["46", "r64"])
  assert tok.decode(tokens, stop_at_eos=False) == "12+34=46.?r64."
  assert tokens[0] == tok.bos_id
  text = "^12+34=46.?r64."
  assert "".join(c for c, m in zip(text, turn) if m == 1) == "46."
  assert "".join(c for c, m in zip(text, turn) if m == 2) == "r64."


def test_bad_settings_are_errors():
  with pytest.raises(ValueError, match="must be 1"):
    synthetic.AdditionTask(p_copy=0.5)
  with pytest.raises(ValueError, match="Unknown synthetic task"):
    synthetic.make_task("division")
  with pytest.raises(ValueError, match="not in the vocabulary"):
    synthetic.AdditionTask().tokenizer.encode("12*3")
