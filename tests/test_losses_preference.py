"""score.losses.preference: DPO/cDPO/IPO/SimPO and Bradley–Terry vs numpy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from score.losses import preference


def np_log_sigmoid(x):
  x = np.asarray(x, np.float64)
  return -np.logaddexp(0.0, -x)


def sequence_logps(seed, n=6):
  rng = np.random.default_rng(seed)
  return [(-rng.uniform(5, 40, size=n)).astype(np.float32) for _ in range(4)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_dpo_matches_numpy(variant, smoothing):
  pc, pr, rc, rr = sequence_logps(0)
  got = variant(preference.dpo, beta=0.1, label_smoothing=smoothing)(pc, pr, rc, rr)
  h = (pc.astype(np.float64) - rc) - (pr.astype(np.float64) - rr)
  want = -(1 - smoothing) * np_log_sigmoid(0.1 * h) - smoothing * np_log_sigmoid(-0.1 * h)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dpo_hand_gradient():
  pc, pr, rc, rr = (jnp.asarray(x) for x in sequence_logps(1))
  beta, eps = 0.5, 0.2
  fn = lambda c, r: jnp.sum(preference.dpo(c, r, rc, rr, beta, label_smoothing=eps))
  g_c, g_r = jax.grad(fn, argnums=(0, 1))(pc, pr)
  z = beta * ((np.asarray(pc, np.float64) - rc) - (np.asarray(pr, np.float64) - rr))
  sig = lambda x: 1 / (1 + np.exp(-x))
  want = -beta * ((1 - eps) * sig(-z) - eps * sig(z))
  np.testing.assert_allclose(g_c, want, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(g_r, -want, rtol=1e-4, atol=1e-7)
  g_ref = jax.grad(lambda a: jnp.sum(preference.dpo(pc, pr, a, rr, beta)))(rc)
  assert np.all(np.asarray(g_ref) == 0.0)  # the reference model is frozen


def test_dpo_check_grads_and_extremes():
  pc, pr, rc, rr = (jnp.asarray(x) for x in sequence_logps(2))
  check_grads(lambda c, r: preference.dpo(c, r, rc, rr, 0.1), (pc, pr), order=2,
              modes=("rev",), atol=1e-2, rtol=1e-2)
  # Margins of ±5000 nats: finite losses and gradients (log_sigmoid, not log(sigmoid)).
  big = jnp.array([5000.0, -5000.0])
  z = jnp.zeros(2)
  loss = preference.dpo(big, z, z, z, 1.0)
  grad = jax.grad(lambda c: jnp.sum(preference.dpo(c, z, z, z, 1.0)))(big)
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(loss, [0.0, 5000.0], rtol=1e-6)


def test_ipo_matches_numpy(variant):
  pc, pr, rc, rr = sequence_logps(3)
  got = variant(preference.ipo, beta=0.1)(pc, pr, rc, rr)
  h = (pc.astype(np.float64) - rc) - (pr.astype(np.float64) - rr)
  np.testing.assert_allclose(got, (h - 1 / (2 * 0.1)) ** 2, rtol=1e-5)


def test_simpo_matches_numpy(variant):
  pc, pr, _, _ = sequence_logps(4)
  lc = np.array([3, 10, 1, 7, 20, 5])
  lr = np.array([8, 2, 4, 0, 20, 5])  # one zero length: treated as 1
  got = variant(preference.simpo, beta=2.0, gamma=0.5)(pc, pr, lc, lr)
  want = -np_log_sigmoid(2.0 * pc / np.maximum(lc, 1) - 2.0 * pr / np.maximum(lr, 1) - 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert np.all(np.isfinite(got))


def test_registry_dispatch():
  pc, pr, rc, rr = sequence_logps(5)
  for kind in ("dpo", "ipo"):
    got = preference.preference_loss(kind, policy_chosen_logps=pc, policy_rejected_logps=pr,
                                     ref_chosen_logps=rc, ref_rejected_logps=rr, beta=0.1)
    np.testing.assert_allclose(got, preference.PREFERENCE_LOSSES[kind](pc, pr, rc, rr, 0.1))
  lens = np.full(6, 4)
  got = preference.preference_loss("simpo", policy_chosen_logps=pc, policy_rejected_logps=pr,
                                   chosen_len=lens, rejected_len=lens, beta=2.0, gamma=1.0)
  np.testing.assert_allclose(got, preference.simpo(pc, pr, lens, lens, 2.0, 1.0))
  with pytest.raises(ValueError, match="unknown kind"):
    preference.preference_loss("kto", policy_chosen_logps=pc, policy_rejected_logps=pr, beta=0.1)
  with pytest.raises(ValueError, match="needs ref"):
    preference.preference_loss("dpo", policy_chosen_logps=pc, policy_rejected_logps=pr, beta=0.1)


def test_bradley_terry(variant):
  rng = np.random.default_rng(6)
  rc, rr = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
  got = variant(preference.bradley_terry)(rc, rr)
  np.testing.assert_allclose(got, -np_log_sigmoid(rc.astype(np.float64) - rr), rtol=1e-5)
  g = jax.grad(lambda a: jnp.sum(preference.bradley_terry(a, jnp.asarray(rr))))(jnp.asarray(rc))
  np.testing.assert_allclose(g, -1 / (1 + np.exp(rc.astype(np.float64) - rr)), rtol=1e-5)


def test_k_choose_2_matches_loop(variant):
  rng = np.random.default_rng(7)
  rewards = rng.normal(size=(3, 4)).astype(np.float32)
  ranks = np.array([[0, 1, 2, 3], [2, 0, 1, 1], [1, 1, 1, 1]])  # ties in rows 1 and 2
  got = variant(preference.bradley_terry_k_choose_2)(rewards, ranks)
  want = []
  for b in range(3):
    losses = []
    for i, j in itertools.combinations(range(4), 2):
      if ranks[b, i] == ranks[b, j]:
        continue
      w, l = (i, j) if ranks[b, i] < ranks[b, j] else (j, i)
      losses.append(-np_log_sigmoid(rewards[b, w] - rewards[b, l]))
    want.append(np.mean(losses) if losses else 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Padding slots: row 0 with its last response missing = the loop over its first 3.
  valid = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
  masked = variant(preference.bradley_terry_k_choose_2)(rewards, ranks, valid)
  want0 = np.mean([-np_log_sigmoid(rewards[0, i] - rewards[0, j])
                   for i, j in itertools.combinations(range(3), 2)])
  np.testing.assert_allclose(masked, [want0, want[1], want[2]], rtol=1e-5)
  sorted_default = preference.bradley_terry_k_choose_2(rewards)
  np.testing.assert_allclose(sorted_default[0], want[0], rtol=1e-5)
  i_p, j_p = preference.ranked_pairs(4)
  assert len(i_p) == 6 and np.all(np.asarray(i_p) < np.asarray(j_p))


def test_chosen_nll_hand_worked():
  # RPO's term −πc/|yc|: a 3-token response with log-prob −6 costs 2 nats a token; an empty
  # loss mask counts as one token.
  np.testing.assert_allclose(preference.chosen_nll(jnp.array([-6.0, -1.5]), jnp.array([3, 0])),
                             [2.0, 1.5])
