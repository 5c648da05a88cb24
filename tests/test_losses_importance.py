"""score.losses.importance: sampler/trainer mismatch metrics and TIS weights vs numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.losses import importance


def inputs():
  old = np.array([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.1, -4.0, -2.0]], np.float32)
  sampler = old - np.array([[0.05, -0.3, 2.0, -9.0], [0.0, 0.01, -0.2, 0.4]], np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
  return old, sampler, mask


def test_mismatch_metrics_hand_values(variant):
  old, sampler, mask = inputs()
  got = variant(importance.mismatch_metrics, threshold=0.1)(old, sampler, mask)
  # Masked log-ratios: 0.05, −0.3, 2.0 | 0, 0.01, −0.2, 0.4 (the masked-out −9.0 is ignored).
  l = np.array([0.05, -0.3, 2.0, 0.0, 0.01, -0.2, 0.4])
  np.testing.assert_allclose(got["mean"], l.mean(), rtol=1e-5)
  np.testing.assert_allclose(got["abs_max"], 2.0, rtol=1e-6)
  np.testing.assert_allclose(got["frac"], 4 / 7, rtol=1e-6)  # |l| > 0.1: −0.3, 2.0, −0.2, 0.4


def test_token_weights_are_capped_ratios(variant):
  old, sampler, mask = inputs()
  got = variant(importance.truncated_weights, level="token", cap=2.0)(old, sampler, mask)
  want = np.minimum(np.exp(old.astype(np.float64) - sampler), 2.0) * mask
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[0, 2] == 2.0 and got[0, 3] == 0.0  # e^2 capped; masked out


def test_sequence_weights_are_the_capped_product(variant):
  old, sampler, mask = inputs()
  got = variant(importance.truncated_weights, level="sequence", cap=1.5)(old, sampler, mask)
  # Row 0: exp(0.05 − 0.3 + 2.0) = e^1.75 > 1.5 -> 1.5; row 1: exp(0.21) = 1.2337.
  np.testing.assert_allclose(got[0], [1.5, 1.5, 1.5, 0.0], rtol=1e-6)
  np.testing.assert_allclose(got[1], [np.exp(0.21)] * 4, rtol=1e-5)


def test_none_level_and_weights_are_constants():
  old, sampler, mask = inputs()
  np.testing.assert_array_equal(
      importance.truncated_weights(old, sampler, mask, level="none"), mask)
  grad = jax.grad(lambda o: jnp.sum(importance.truncated_weights(o, sampler, mask,
                                                                 level="token")))(old)
  np.testing.assert_array_equal(grad, 0.0)


def test_errors():
  old, sampler, mask = inputs()
  with pytest.raises(ValueError, match="unknown level 'tokens'"):
    importance.truncated_weights(old, sampler, mask, level="tokens")
  with pytest.raises(ValueError, match="must be > 0"):
    importance.truncated_weights(old, sampler, mask, level="token", cap=0.0)
