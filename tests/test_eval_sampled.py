"""score.eval.sampled: pass@k (unbiased estimator) and maj@k against hand-worked values."""

import math
from fractions import Fraction

import numpy as np
import pytest

from score.eval import sampled


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 2, 1 - 3 / 10),      # 1 − C(3,2)/C(5,2)
    (5, 2, 1, 2 / 5),           # pass@1 = c / n
    (4, 0, 3, 0.0),
    (3, 3, 3, 1.0),
    (4, 2, 3, 1.0),             # n − c < k: every draw of 3 holds a correct sample
    (2, 1, 2, 1.0),             # two attempts, one right
    (10, 3, 4, 1 - 35 / 210),   # 1 − C(7,4)/C(10,4)
])
def test_pass_at_k_hand_values(n, c, k, expected):
  np.testing.assert_allclose(sampled.pass_at_k([n], [c], k), [expected], rtol=1e-12)


def test_pass_at_k_is_stable_for_large_n():
  # C(1000, 100) overflows floats; the product form does not. Exact value from fractions.
  n, c, k = 1000, 7, 100
  exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
  np.testing.assert_allclose(sampled.pass_at_k(n, c, k), [float(exact)], rtol=1e-12)


def test_pass_at_k_errors():
  with pytest.raises(ValueError, match="at least k samples"):
    sampled.pass_at_k([2], [1], 3)
  with pytest.raises(ValueError, match="num_correct"):
    sampled.pass_at_k([2], [3], 1)


def test_majority_vote_hand_cases():
  assert sampled.majority_vote(["3", "4", "3", None], [0, 1, 0, 0]) == 0.0  # "3" wins, wrong
  assert sampled.majority_vote(["4", "3", "3", "4"], [1, 0, 0, 1]) == 1.0  # tie: first seen
  assert sampled.majority_vote(["3", "4", "4", "3"], [0, 1, 1, 0]) == 0.0  # tie: first seen
  assert sampled.majority_vote([None, None, "7"], [0, 0, 1]) == 1.0  # no-answer does not vote
  assert sampled.majority_vote([None, None], [0, 0]) == 0.0


def test_sampled_metrics_table():
  # Two problems × 4 samples: c = 1 and 4. pass@1 = mean(1/4, 1) = 62.5 %; pass@2 = mean(
  # 1 − C(3,2)/C(4,2) = 1/2, 1) = 75 %; pass@4 = 100 %. maj@4: problem 0's answers
  # a, b, a, c with b right -> a wins, wrong; problem 1 all right -> 50 %. maj@1: first
  # samples a (wrong), x (right) -> 50 %; maj@2: a, b tie -> a (wrong) -> 50 %.
  correct = [[0, 1, 0, 0], [1, 1, 1, 1]]
  keys = [["a", "b", "a", "c"], ["x", "x", "x", "x"]]
  got = sampled.sampled_metrics(correct, keys)
  assert sorted(got) == ["maj@1", "maj@2", "maj@4", "pass@1", "pass@2", "pass@4"]
  for name, value in [("pass@1", 62.5), ("pass@2", 75.0), ("pass@4", 100.0), ("maj@1", 50.0),
                      ("maj@2", 50.0), ("maj@4", 50.0)]:
    assert got[name]["value"] == pytest.approx(value), name
    assert got[name]["low"] <= value <= got[name]["high"] and got[name]["n"] == 2
  no_keys = sampled.sampled_metrics(correct, [[None] * 4] * 2, ks=[3])
  assert sorted(no_keys) == ["pass@3"]  # code: pass@k only
  assert no_keys["pass@3"]["value"] == pytest.approx(100 * (0.75 + 1) / 2)  # 1 − C(3,3)/C(4,3)


def test_default_ks():
  assert sampled.default_ks(1) == [1]
  assert sampled.default_ks(6) == [1, 2, 4, 6]
  assert sampled.default_ks(8) == [1, 2, 4, 8]


class _ParityEnv:
  """Prompts `[1, i]`; an attempt is right iff its problem is even (whatever it says), and its
  answer key is the problem's id: rows of `sample_answers` must follow the problems."""
  eos_ids, pad_id, max_new_tokens, max_len = (2,), 0, 2, 6

  def prompt_tokens(self, i):
    return [1, 3 + i]

  def rewards(self, problems, responses):
    return [float(i % 2 == 0) for i in problems]

  def answer_key(self, i, response):
    return str(i)


def test_sample_answers_groups_samples_by_problem():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from score.models import ModelConfig, Transformer  # pylint: disable=g-import-not-at-top
  config = ModelConfig.tiny(vocab_size=10, hidden_size=16, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, intermediate_size=32,
                            max_position_embeddings=16)
  model = Transformer(config, rngs=nnx.Rngs(0))
  problems = [0, 1, 2, 3, 4]
  correct, keys = sampled.sample_answers(model, _ParityEnv(), problems, samples=3,
                                         temperature=1.0, batch_size=6)  # 2 problems a batch
  np.testing.assert_array_equal(correct, [[1] * 3, [0] * 3, [1] * 3, [0] * 3, [1] * 3])
  assert keys == [[str(i)] * 3 for i in problems]


def test_synthetic_env_answer_key():
  from score.data import synthetic  # pylint: disable=g-import-not-at-top
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  env = envs.SyntheticEnv(task=synthetic.AdditionTask(num_digits=2), seed=0, num_eval=1,
                          eval_seed=0)
  ids = env.tokenizer.encode("57") + [env.tokenizer.eos_id]
  assert env.answer_key(env.heldout[0], ids) == "57"
  assert env.answer_key(env.heldout[0], ids[:-1]) is None  # no EOS: no answer
