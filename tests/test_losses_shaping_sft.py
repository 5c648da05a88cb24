"""score.losses.shaping and score.losses.sft vs numpy references and hand-worked values."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.losses import sft
from score.losses import shaping


def test_kimi_length_penalty_matches_loop(variant):
  rng = np.random.default_rng(0)
  lengths = rng.integers(10, 100, size=(4, 5))
  lengths[2] = 42  # all-equal lengths
  correct = rng.integers(0, 2, size=(4, 5))
  got = variant(shaping.kimi_length_penalty)(lengths, correct)
  want = np.zeros((4, 5))
  for b in range(4):
    lo, hi = lengths[b].min(), lengths[b].max()
    for g in range(5):
      lam = 0.0 if hi == lo else 0.5 - (lengths[b, g] - lo) / (hi - lo)
      want[b, g] = lam if correct[b, g] else min(0.0, lam)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(got)[2] == 0.0)


def test_kimi_hand_example():
  # Lengths 10, 20, 30: λ = 0.5, 0, −0.5. Wrong answers keep only the penalty.
  got = shaping.kimi_length_penalty(jnp.array([[10, 20, 30]]), jnp.array([[1, 1, 1]]))
  np.testing.assert_allclose(got, [[0.5, 0.0, -0.5]])
  got = shaping.kimi_length_penalty(jnp.array([[10, 20, 30]]), jnp.array([[0, 0, 0]]))
  np.testing.assert_allclose(got, [[0.0, 0.0, -0.5]])


def test_dapo_overlong_penalty(variant):
  lengths = np.array([0, 50, 60, 61, 80, 100, 101, 500])
  got = variant(shaping.dapo_overlong_penalty, max_len=100, cache_len=40)(lengths)
  want = [0.0 if n <= 60 else ((60 - n) / 40 if n <= 100 else -1.0) for n in lengths]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got[5], -1.0)  # continuous at L_max
  with pytest.raises(ValueError, match="cache_len"):
    shaping.dapo_overlong_penalty(lengths, 100, 0)


def test_no_eos_penalty():
  finished = jnp.array([True, False, True])
  np.testing.assert_array_equal(shaping.no_eos_penalty(finished), [0.0, -10.0, 0.0])
  np.testing.assert_array_equal(shaping.no_eos_penalty(finished, -2.0), [0.0, -2.0, 0.0])
  np.testing.assert_array_equal(
      shaping.replace_unfinished(jnp.array([10.0, 10.0, 0.0]), finished), [10.0, -10.0, 0.0])


def test_token_cross_entropy(variant):
  rng = np.random.default_rng(1)
  logp = -np.abs(rng.normal(size=(3, 5))).astype(np.float32)
  mask = np.array([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  got = variant(sft.token_cross_entropy)(logp, mask)
  np.testing.assert_allclose(got, -logp * mask, rtol=1e-6)
  g = jax.grad(lambda l: jnp.sum(sft.token_cross_entropy(l, mask)))(jnp.asarray(logp))
  np.testing.assert_allclose(g, -mask)


def test_cross_entropy_from_logits_alignment(variant):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(2, 5))
  mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], np.float32)
  got = np.asarray(variant(sft.token_cross_entropy_from_logits)(logits, tokens, mask))
  want = np.zeros((2, 5))
  for b in range(2):
    for t in range(1, 5):
      row = logits[b, t - 1].astype(np.float64)
      log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
      want[b, t] = -(row[tokens[b, t]] - log_z) * mask[b, t]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  logp = sft.token_logprobs_from_logits(logits, tokens)
  assert np.all(np.asarray(logp)[:, 0] == 0.0)
  with pytest.raises(ValueError, match="does not match"):
    sft.token_logprobs_from_logits(logits, tokens[:, :-1])
