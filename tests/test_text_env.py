"""MATH / code environments over a tiny offline checkpoint: prompts, instructions, rewards."""

import dataclasses

import pytest

from score.data import loaders
from score.data import prompts
from score.eval import self_correction
from score.trainers import envs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  from score.utils import tiny_checkpoint  # pylint: disable=g-import-not-at-top
  problems = loaders.load("math500")[:100]
  return tiny_checkpoint.make_tiny_checkpoint(
      str(tmp_path_factory.mktemp("tiny")), [p.problem + p.solution for p in problems])


def _env(checkpoint, task, fmt, train, heldout):
  from score.models import hf  # pylint: disable=g-import-not-at-top
  return envs.TextEnv(tokenizer=hf.load_tokenizer(checkpoint), train=train, heldout=heldout,
                      task=task, prompt_format=fmt, seed=0, max_new_tokens=4, max_len=2048)


@pytest.mark.parametrize("fmt", ["plain", "chat"])
def test_math_env_prompts_and_rewards(checkpoint, fmt):
  problems = loaders.load("math500")[:3]
  env = _env(checkpoint, "math", fmt, problems, problems)
  p = problems[0]
  text = env.decode(env.prompt_tokens(p))
  assert p.problem.strip() in text and prompts.MATH_FIRST_TURN in text
  good = env.tokenizer.encode(
      f"Final Answer: The final answer is ${p.answer}$. I hope it is correct.",
      add_special_tokens=False)
  bad = env.tokenizer.encode("Final Answer: The final answer is $-12345$. I hope it is correct.",
                             add_special_tokens=False)
  assert env.rewards([p, p], [good, bad]) == [1.0, 0.0]
  # maj@k votes on the normalised final answer; a response without one does not vote.
  two = env.tokenizer.encode("so the answer is $\\boxed{\\frac12}$", add_special_tokens=False)
  assert env.answer_key(p, two) == "\\frac{1}{2}" and env.answer_key(p, bad) == "-12345"
  assert env.answer_key(p, env.tokenizer.encode("no idea", add_special_tokens=False)) is None
  tokens, turn = env.episode_tokens(p, [bad, good])
  assert tokens[:len(env.prompt_tokens(p))] == env.prompt_tokens(p)
  assert [t for t, m in zip(tokens, turn) if m == 2] == good
  assert prompts.MATH_SELF_CORRECTION in env.decode(tokens)
  # Exactly the attempts' tokens are trainable.
  assert sum(1 for m in turn if m) == len(good) + len(bad)


def test_code_env_runs_tests_in_the_sandbox(checkpoint):
  mbpp = loaders.load("mbpp", split="train")[:2]
  env = _env(checkpoint, "code", "plain", mbpp, mbpp)
  p = mbpp[0]
  right = env.tokenizer.encode(f"```python\n{p.solution}\n```", add_special_tokens=False)
  wrong = env.tokenizer.encode("```python\nimport os\nos._exit(0)\n```", add_special_tokens=False)
  assert env.rewards([p, p], [right, wrong]) == [1.0, 0.0]
  assert env.answer_key(p, right) is None  # programs are not voted on: pass@k only


def test_self_refine_scores_the_third_turn(checkpoint, monkeypatch):
  """Self-Refine: three turns (attempt, feedback, refined attempt) with the self-refine
  instruction; the refined attempt -- not the feedback -- is scored as the second attempt.
  The rollout is scripted so that scoring the wrong turn gives other numbers."""
  import types  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  problems = loaders.load("math500")[:2]
  env = _env(checkpoint, "math", "chat", problems, problems)

  def answer(value):
    return env.tokenizer.encode(f"Final Answer: The final answer is ${value}$. I hope it is "
                                "correct.", add_special_tokens=False)
  # Rows come back in the order (problem 1, problem 0), as a rollout may reorder them.
  scripted = {1: [answer(problems[1].answer), answer(problems[1].answer), answer(-2)],
              0: [answer(-3), answer(-4), answer(problems[0].answer)]}
  calls = []

  def rollout(model, prompt_tokens, *, num_turns, instruction, **kwargs):
    calls.append((num_turns, instruction, prompt_tokens))
    return types.SimpleNamespace(prompt_index_B=np.array([1, 0]),
                                 responses=[scripted[1][:num_turns], scripted[0][:num_turns]])
  monkeypatch.setattr(self_correction.rollouts, "rollout", rollout)
  out = self_correction.two_attempts(None, env, problems, self_refine=True, batch_size=2)
  assert calls[0][:2] == (3, env.self_refine_instruction)
  assert calls[0][2] == [env.prompt_tokens(p) for p in problems]
  # Problem 1: right, right (feedback), wrong; problem 0: wrong, wrong (feedback), right.
  assert out["correct_t1"] == [1.0, 0.0] and out["correct_t2"] == [0.0, 1.0]
  assert [a["id"] for a in out["attempts"]] == [problems[1].id, problems[0].id]
  assert out["attempts"][0]["t3"] == env.decode(scripted[1][2])
  # Without Self-Refine: two turns, the plain instruction, the second turn scored.
  out = self_correction.two_attempts(None, env, problems, batch_size=2)
  assert calls[1][:2] == (2, env.instruction)
  assert out["correct_t2"] == [1.0, 0.0] and "t3" not in out["attempts"][0]


def test_train_problems_are_deterministic(checkpoint):
  problems = loaders.load("math500")[:50]
  env = _env(checkpoint, "math", "plain", problems, problems[:2])
  a = [p.id for p in env.train_problems(3, 5)]
  assert a == [p.id for p in env.train_problems(3, 5)]
  assert a != [p.id for p in env.train_problems(4, 5)]
  assert all(dataclasses.is_dataclass(p) for p in env.train_problems(0, 2))
