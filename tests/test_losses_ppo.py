"""score.losses.ppo: clipped surrogate, clipped value loss and GAE vs numpy references."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from score.losses import ppo


def ragged_mask(rng, batch, time):
  mask = np.zeros((batch, time), np.float32)
  for b in range(batch):
    length = rng.integers(0, time + 1)
    start = rng.integers(0, time - length + 1)
    mask[b, start:start + length] = 1.0
  return mask


def np_surrogate(logp, old, adv, mask, lo, hi, dual=None):
  loss = np.zeros_like(logp, np.float64)
  clipped = np.zeros_like(logp, bool)
  for idx in np.ndindex(logp.shape):
    ratio = np.exp(float(logp[idx]) - float(old[idx]))
    a = float(adv[idx])
    obj = min(ratio * a, min(max(ratio, 1 - lo), 1 + hi) * a)
    clipped[idx] = min(max(ratio, 1 - lo), 1 + hi) * a < ratio * a
    if dual is not None and a < 0:
      obj = max(obj, dual * a)
    loss[idx] = -obj * mask[idx]
  frac = (clipped * mask).sum() / max(mask.sum(), 1)
  return loss, frac


def random_inputs(seed, batch=4, time=8):
  rng = np.random.default_rng(seed)
  old = -np.abs(rng.normal(size=(batch, time))).astype(np.float32)
  logp = (old + 0.4 * rng.normal(size=(batch, time))).astype(np.float32)
  adv = rng.normal(size=(batch, time)).astype(np.float32)
  return logp, old, adv, ragged_mask(rng, batch, time)


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_clipped_surrogate_matches_numpy(variant, dual_clip):
  logp, old, adv, mask = random_inputs(0)
  fn = variant(ppo.clipped_surrogate, eps_low=0.2, eps_high=0.28, dual_clip=dual_clip)
  loss, metrics = fn(logp, old, adv, mask)
  want, frac = np_surrogate(logp, old, adv, mask, 0.2, 0.28, dual_clip)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac"], frac, rtol=1e-6)
  assert 0.0 < float(metrics["clip_frac"]) < 1.0  # the inputs exercise both branches


def test_clip_higher_and_dual_clip_by_hand():
  # ratio e^0.25 ≈ 1.284: clipped at 1.2 with symmetric eps, unclipped with eps_high = 0.28.
  logp, old = jnp.array([[0.25]]), jnp.zeros((1, 1))
  pos, one = jnp.ones((1, 1)), jnp.ones((1, 1))
  sym, _ = ppo.clipped_surrogate(logp, old, pos, one, 0.2, 0.2)
  hi, _ = ppo.clipped_surrogate(logp, old, pos, one, 0.2, 0.3)
  np.testing.assert_allclose(sym, [[-1.2]], rtol=1e-6)
  np.testing.assert_allclose(hi, [[-np.exp(0.25)]], rtol=1e-6)
  # Negative advantage and ratio e^2: the plain loss is e^2 ≈ 7.39, dual clip caps it at 3.
  big = jnp.array([[2.0]])
  plain, _ = ppo.clipped_surrogate(big, old, -pos, one, 0.2, 0.2)
  capped, metrics = ppo.clipped_surrogate(big, old, -pos, one, 0.2, 0.2, dual_clip=3.0)
  np.testing.assert_allclose(plain, [[np.exp(2.0)]], rtol=1e-6)
  np.testing.assert_allclose(capped, [[3.0]], rtol=1e-6)
  assert float(metrics["dual_clip_frac"]) == 1.0


def test_surrogate_hand_gradient():
  # d loss / d logp = −A·ρ where the unclipped branch is active, 0 where clipping is.
  logp, old, adv, mask = random_inputs(1)
  fn = lambda l: jnp.sum(ppo.clipped_surrogate(l, old, adv, mask, 0.2, 0.2)[0])
  grad = np.asarray(jax.grad(fn)(logp))
  ratio = np.exp(logp.astype(np.float64) - old)
  clipped_active = np.clip(ratio, 0.8, 1.2) * adv < ratio * adv  # objective = the clipped one
  assert clipped_active[mask > 0].any() and (~clipped_active[mask > 0]).any()
  want = np.where(clipped_active, 0.0, -adv * ratio) * mask
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_surrogate_extreme_log_ratios_are_finite():
  logp = jnp.array([[50.0, -50.0, 0.0]])
  old = jnp.zeros((1, 3))
  for adv in (1.0, -1.0):
    loss, metrics = ppo.clipped_surrogate(logp, old, jnp.full((1, 3), adv), jnp.ones((1, 3)))
    surrogate = lambda l: ppo.clipped_surrogate(l, old, jnp.full((1, 3), adv), jnp.ones((1, 3)))
    grad = jax.grad(lambda l: jnp.sum(surrogate(l)[0]))(logp)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("clip", [None, 0.2])
def test_clipped_value_loss_matches_numpy(variant, clip):
  rng = np.random.default_rng(2)
  old = rng.normal(size=(3, 7)).astype(np.float32)
  values = (old + 0.5 * rng.normal(size=(3, 7))).astype(np.float32)
  returns = rng.normal(size=(3, 7)).astype(np.float32)
  mask = ragged_mask(rng, 3, 7)
  loss, _ = variant(ppo.clipped_value_loss, clip=clip)(values, old, returns, mask)
  v, o, r = (x.astype(np.float64) for x in (values, old, returns))
  want = 0.5 * (v - r) ** 2
  if clip is not None:
    want = np.maximum(want, 0.5 * (o + np.clip(v - o, -clip, clip) - r) ** 2)
  np.testing.assert_allclose(loss, want * mask, rtol=1e-5, atol=1e-6)
  check_grads(lambda x: ppo.clipped_value_loss(x, old, returns, mask, clip)[0], (values,),
              order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def np_gae(rewards, values, mask, gamma, lam):
  """Loop over each sequence's valid positions only (gaps skipped, V after the end = 0)."""
  adv = np.zeros_like(rewards, np.float64)
  for b in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[b] > 0)
    running, next_value = 0.0, 0.0
    for t in idx[::-1]:
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      running = delta + gamma * lam * running
      adv[b, t] = running
      next_value = values[b, t]
  return adv, np.where(mask > 0, adv + values, 0.0)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (1.0, 1.0)])
def test_gae_matches_numpy_with_ragged_and_gapped_masks(variant, gamma, lam):
  rng = np.random.default_rng(3)
  rewards = rng.normal(size=(5, 9)).astype(np.float32)
  values = rng.normal(size=(5, 9)).astype(np.float32)
  mask = ragged_mask(rng, 5, 9)
  mask[0] = [0, 1, 1, 0, 0, 1, 1, 1, 0]   # two turns with a gap between them
  mask[1] = 0                              # empty sequence
  adv, ret = variant(ppo.gae, gamma=gamma, lam=lam)(rewards, values, mask)
  want_adv, want_ret = np_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[1] == 0.0)


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
  # γ = λ = 1, reward 1 on the last valid token: A_t = 1 − V_t, R_t = 1 on valid tokens.
  values = jnp.array([[0.3, 0.1, 0.2, 9.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  rewards = jnp.array([[0.0, 0.0, 1.0, 5.0]])  # the masked 5.0 must be ignored
  adv, ret = ppo.gae(rewards, values, mask, 1.0, 1.0)
  np.testing.assert_allclose(adv, [[0.7, 0.9, 0.8, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0, 0.0]], rtol=1e-6)
