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


# ---------------------------------------------------------------------------------------------
# GSPO (Zheng et al. 2025): sequence-level ratio and clipping.


def np_gspo(logp, old, adv, mask, lo, hi):
  """Loop reference: per row, s = exp(mean over its tokens of logp − old), A = mean advantage."""
  loss = np.zeros_like(logp, np.float64)
  clipped = np.zeros_like(logp, np.float64)
  for b in range(logp.shape[0]):
    idx = np.flatnonzero(mask[b] > 0)
    if not len(idx):
      continue
    s = np.exp(np.mean(logp[b, idx].astype(np.float64) - old[b, idx]))
    a = np.mean(adv[b, idx].astype(np.float64))
    clip = min(max(s, 1 - lo), 1 + hi)
    loss[b, idx] = -min(s * a, clip * a)
    clipped[b, idx] = float(clip * a < s * a)
  return loss, clipped.sum() / max(mask.sum(), 1)


def gspo_inputs(seed, batch=5, time=7, spread=0.05):
  rng = np.random.default_rng(seed)
  old = -np.abs(rng.normal(size=(batch, time))).astype(np.float32)
  logp = (old + spread * rng.normal(size=(batch, time))).astype(np.float32)
  adv_B = rng.normal(size=(batch, 1)).astype(np.float32)
  mask = ragged_mask(rng, batch, time)
  mask[0] = 0.0  # a row without tokens
  mask[1, :3] = 1.0
  return logp, old, np.broadcast_to(adv_B, (batch, time)).copy(), mask


@pytest.mark.parametrize("kind", ["gspo", "gspo_token"])
def test_gspo_matches_loop_reference(variant, kind):
  logp, old, adv, mask = gspo_inputs(0)
  fn = variant(ppo.SURROGATES[kind], eps_low=0.01, eps_high=0.015)
  loss, metrics = fn(logp, old, adv, mask)
  ref, frac = np_gspo(logp, old, adv, mask, 0.01, 0.015)
  np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-7)
  assert 0.0 < frac < 1.0  # both branches are exercised
  np.testing.assert_allclose(metrics["clip_frac"], frac, rtol=1e-6)


@pytest.mark.parametrize("r, adv", [(1.3, 1.0), (0.7, 1.0), (1.3, -1.0), (0.7, -1.0),
                                    (1.05, 2.0)])
@pytest.mark.parametrize("kind", ["gspo", "gspo_token"])
def test_gspo_with_constant_token_ratio_equals_ppo_clip(kind, r, adv):
  # Every token of the sequence has ratio r, so s = r: GSPO's loss is PPO-clip's at r.
  old = jnp.array([[-1.0, -2.0, -0.5, -3.0]])
  logp = old + jnp.log(r)
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  advs = jnp.full((1, 4), adv)
  got, _ = ppo.surrogate(kind, logp, old, advs, mask, eps_low=0.2, eps_high=0.2)
  want, _ = ppo.clipped_surrogate(logp, old, advs, mask, 0.2, 0.2)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  hand = -min(r * adv, min(max(r, 0.8), 1.2) * adv)  # worked by hand
  np.testing.assert_allclose(got[0, :3], [hand] * 3, rtol=1e-5)


def test_gspo_token_equals_gspo_in_value_and_sequence_gradient():
  from score.losses import reduce as reduce_lib
  logp, old, adv, mask = gspo_inputs(1)

  def objective(kind):
    return lambda l: reduce_lib.reduce(
        ppo.surrogate(kind, l, old, adv, mask, eps_low=0.01, eps_high=0.015)[0], mask,
        "sequence")

  np.testing.assert_allclose(objective("gspo_token")(logp), objective("gspo")(logp), rtol=1e-5)
  g_seq = jax.grad(objective("gspo"))(jnp.asarray(logp))
  g_tok = jax.grad(objective("gspo_token"))(jnp.asarray(logp))
  np.testing.assert_allclose(g_tok, g_seq, rtol=1e-5, atol=1e-8)
  assert np.abs(np.asarray(g_seq)).max() > 0  # not trivially zero


def test_gspo_gradient_hand_and_check_grads():
  # One unclipped row of length n: L = −A·s, s = exp(mean(logp − old)); dL/dlogp_t = −A·s/n.
  old = jnp.array([[-1.0, -2.0, -0.5]])
  logp = old + jnp.array([[0.01, -0.02, 0.004]])
  mask = jnp.ones((1, 3))
  adv = jnp.full((1, 3), 0.8)
  s = float(np.exp(np.mean([0.01, -0.02, 0.004])))
  for kind in ("gspo", "gspo_token"):
    fn = lambda l, kind=kind: jnp.sum(ppo.surrogate(kind, l, old, adv, mask, eps_low=0.2,
                                                      eps_high=0.2)[0])
    grad = jax.grad(fn)(logp)
    # The summed loss counts the row's L on each of its 3 tokens: 3 · (−A·s/3) = −A·s.
    np.testing.assert_allclose(grad, np.full((1, 3), -0.8 * s), rtol=1e-5)
  logp2, old2, adv2, mask2 = gspo_inputs(2, spread=0.001)  # all sequences inside the clip range
  for kind in ("gspo", "gspo_token"):
    check_grads(lambda l, kind=kind: jnp.sum(ppo.surrogate(
        kind, l, old2, adv2, mask2, eps_low=0.2, eps_high=0.2)[0]), (jnp.asarray(logp2),),
        order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)


def test_gspo_clipped_sequence_has_no_gradient():
  old = jnp.array([[-1.0, -2.0]])
  logp = old + 0.5  # s = e^0.5 > 1 + eps_high, positive advantage: clipped
  grad = jax.grad(lambda l: jnp.sum(ppo.gspo(l, old, jnp.ones((1, 2)), jnp.ones((1, 2)),
                                             eps_low=0.2, eps_high=0.2)[0]))(logp)
  np.testing.assert_array_equal(grad, 0.0)


def test_surrogate_unknown_name():
  with pytest.raises(ValueError, match="unknown kind 'gpo'"):
    ppo.surrogate("gpo", jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1, 1)),
                  jnp.ones((1, 1)), eps_low=0.2, eps_high=0.2)
