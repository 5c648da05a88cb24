"""score.losses.score: SCoRe Stage I / Stage II objectives vs a numpy reference, and the
gradient properties that make SCoRe what it is (per-turn credit, no bonus on turn 1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.losses import score

G = 4        # samples per prompt
B = 2 * G    # two prompts
T = 12


def episode_batch(seed):
  """Random per-token log-probs and a turn mask with ragged turns (prompt, turn 1,
  instruction, turn 2, padding); sample 3 has an empty first turn, sample 5 no tokens."""
  rng = np.random.default_rng(seed)
  logp = -np.abs(rng.normal(size=(B, T))).astype(np.float32)
  ref = (logp + 0.3 * rng.normal(size=(B, T))).astype(np.float32)
  turn = np.zeros((B, T), np.int32)
  for b in range(B):
    len1, len2 = rng.integers(1, 4), rng.integers(1, 5)
    turn[b, 1:1 + len1] = 1
    turn[b, 2 + len1:2 + len1 + len2] = 2
  turn[3][turn[3] == 1] = 0
  turn[5] = 0
  r1 = rng.integers(0, 2, size=B).astype(np.float32)
  r2 = rng.integers(0, 2, size=B).astype(np.float32)
  r1[G:] = 1.0  # second prompt: all first attempts right (equal group)
  return logp, ref, turn, r1, r2


def np_adv(r, kind):
  out = np.zeros_like(r, np.float64)
  for start in range(0, len(r), G):
    g = np.asarray(r[start:start + G], np.float64)
    for i in range(G):
      if kind == "rloo":
        out[start + i] = g[i] - np.delete(g, i).mean()
      elif kind == "grpo":
        out[start + i] = 0.0 if g.std() == 0 else (g[i] - g.mean()) / (g.std(ddof=1) + 1e-6)
      elif kind == "reinforce":
        out[start + i] = g[i] - np.mean(r)
  return out


NP_EST = {"k1": lambda l: l, "k2": lambda l: 0.5 * l * l, "k3": lambda l: np.exp(-l) + l - 1}


def np_objective(logp, ref, turn, returns, betas, credited, kind, est, placement, reduction):
  logp, ref = logp.astype(np.float64), ref.astype(np.float64)
  kl = NP_EST[est](logp - ref)
  returns = np.array(returns, np.float64)
  adv = np.zeros_like(returns)
  for k in range(returns.shape[1]):
    if placement == "reward":
      kl_sum = np.array([kl[b][turn[b] == k + 1].sum() for b in range(B)])
      adv[:, k] = np_adv(returns[:, k] * credited[k] - betas[k] * kl_sum, kind)
    elif credited[k]:
      adv[:, k] = np_adv(returns[:, k], kind)
  per_token = np.zeros_like(logp)
  for b in range(B):
    for t in range(T):
      k = turn[b, t]
      if k:
        per_token[b, t] = -adv[b, k - 1] * logp[b, t]
        if placement == "loss":
          per_token[b, t] += betas[k - 1] * kl[b, t]
  mask = turn > 0
  if reduction == "token":
    return per_token[mask].sum() / mask.sum()
  rows = [per_token[b][mask[b]].mean() for b in range(B) if mask[b].any()]
  return float(np.mean(rows))


@pytest.mark.parametrize("kind,est,placement,reduction", [
    ("rloo", "k2", "loss", "sequence"),
    ("rloo", "k3", "loss", "token"),
    ("rloo", "k1", "reward", "sequence"),
    ("grpo", "k2", "loss", "token"),
    ("grpo", "k1", "reward", "token"),
    ("reinforce", "k3", "loss", "sequence"),
])
def test_stage1_matches_numpy(kind, est, placement, reduction):
  logp, ref, turn, r1, r2 = episode_batch(0)
  fn = functools.partial(score.stage1_objective, group_size=G, advantage=kind, beta1=0.01,
                         beta2=0.1, kl_estimator=est, kl_placement=placement,
                         reduction=reduction)
  loss, metrics = fn(logp, ref, turn, r1, r2)
  want = np_objective(logp, ref, turn, np.stack([0 * r2, r2], 1), (0.1, 0.01), (0, 1), kind,
                      est, placement, reduction)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], loss)


def test_stage1_jit_agrees_with_eager():
  logp, ref, turn, r1, r2 = episode_batch(8)
  fn = functools.partial(score.stage1_objective, group_size=G, kl_estimator="k3")
  loss, metrics = fn(logp, ref, turn, r1, r2)
  jloss, jmetrics = jax.jit(fn)(logp, ref, turn, r1, r2)
  np.testing.assert_allclose(jloss, loss, rtol=1e-6)
  for name, value in metrics.items():
    np.testing.assert_allclose(jmetrics[name], value, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("alpha", [0.0, 10.0])
@pytest.mark.parametrize("est,placement", [("k2", "loss"), ("k1", "reward")])
def test_stage2_matches_numpy(variant, alpha, est, placement):
  logp, ref, turn, r1, r2 = episode_batch(1)
  fn = variant(score.stage2_objective, group_size=G, advantage="rloo", alpha=alpha, beta1=0.01,
               kl_estimator=est, kl_placement=placement, reduction="sequence")
  loss, metrics = fn(logp, ref, turn, r1, r2)
  shaped = r2 + alpha * (r2 - r1)
  want = np_objective(logp, ref, turn, np.stack([r1, shaped], 1), (0.01, 0.01), (1, 1), "rloo",
                      est, placement, "sequence")
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["reward/t2_shaped"], shaped.mean(), rtol=1e-6)


def test_shaped_rewards_by_hand():
  r1 = jnp.array([0.0, 0.0, 1.0, 1.0])
  r2 = jnp.array([0.0, 1.0, 0.0, 1.0])
  out1, out2 = score.shaped_rewards(r1, r2, 10.0)
  np.testing.assert_array_equal(out1, r1)
  np.testing.assert_array_equal(out2, [0.0, 11.0, -10.0, 1.0])
  np.testing.assert_array_equal(score.shaped_rewards(r1, r2, 0.0)[1], r2)


def test_alpha_zero_equals_unshaped_objective():
  """α = 0: Stage II is plain two-turn REINFORCE on (r1, r2) -- the numpy objective on the
  unshaped returns -- and α = 10 is that objective on (r1, r2 + 10 (r2 − r1))."""
  logp, ref, turn, r1, r2 = episode_batch(2)
  kwargs = dict(group_size=G, beta1=0.05)
  shaped0, _ = score.stage2_objective(logp, ref, turn, r1, r2, alpha=0.0, **kwargs)
  want0 = np_objective(logp, ref, turn, np.stack([r1, r2], 1), (0.05, 0.05), (1, 1), "rloo",
                       "k2", "loss", "sequence")
  np.testing.assert_allclose(shaped0, want0, rtol=1e-5, atol=1e-6)
  shaped10, _ = score.stage2_objective(logp, ref, turn, r1, r2, alpha=10.0, **kwargs)
  want10 = np_objective(logp, ref, turn, np.stack([r1, 11 * r2 - 10 * r1], 1), (0.05, 0.05),
                        (1, 1), "rloo", "k2", "loss", "sequence")
  np.testing.assert_allclose(shaped10, want10, rtol=1e-5, atol=1e-6)
  assert abs(want10 - want0) > 1e-3  # α matters when r2 ≠ r1 somewhere


def grad_logp(fn, logp, *args, **kwargs):
  return np.asarray(jax.grad(lambda l: fn(l, *args, **kwargs)[0])(logp))


@pytest.mark.parametrize("placement,est", [("loss", "k2"), ("loss", "k3"), ("reward", "k1")])
def test_stage1_no_reward_gradient_on_first_attempt(placement, est):
  logp, ref, turn, r1, r2 = episode_batch(3)
  g = grad_logp(score.stage1_objective, logp, ref, turn, r1, r2, group_size=G, beta1=0.01,
                beta2=0.0, kl_estimator=est, kl_placement=placement)
  assert np.all(g[turn == 1] == 0.0)
  assert np.all(g[turn == 0] == 0.0)
  assert np.any(g[turn == 2] != 0.0)  # the second attempt does learn


def test_stage1_first_attempt_gradient_is_only_the_beta2_kl():
  # Token reduction, k2 in the loss: d loss / d logp_t = β2 · l_t / N on turn-1 tokens.
  logp, ref, turn, r1, r2 = episode_batch(4)
  g = grad_logp(score.stage1_objective, logp, ref, turn, r1, r2, group_size=G, beta1=0.01,
                beta2=0.1, kl_estimator="k2", reduction="token")
  n = (turn > 0).sum()
  want = 0.1 * (logp.astype(np.float64) - ref) / n
  np.testing.assert_allclose(g[turn == 1], want[turn == 1], rtol=1e-5, atol=1e-8)


def test_stage2_first_attempt_gradient_has_no_turn2_bonus():
  logp, ref, turn, r1, r2 = episode_batch(5)
  grads = {a: grad_logp(score.stage2_objective, logp, ref, turn, r1, r2, group_size=G,
                        alpha=a, beta1=0.01, reduction="token") for a in (0.0, 10.0)}
  np.testing.assert_array_equal(grads[0.0][turn == 1], grads[10.0][turn == 1])
  assert np.abs(grads[0.0][turn == 2] - grads[10.0][turn == 2]).max() > 1e-3
  # Hand-derived: turn-1 token gradient = (−A_rloo(r1)_b + β1 · l_t) / N.
  n = (turn > 0).sum()
  adv1 = np_adv(r1, "rloo")
  l = logp.astype(np.float64) - ref
  want = (-adv1[:, None] + 0.01 * l) / n
  np.testing.assert_allclose(grads[10.0][turn == 1], want[turn == 1], rtol=1e-5, atol=1e-8)
  # Turn-2 tokens: (−A_rloo(r2 + 10(r2 − r1))_b + β1 · l_t) / N.
  adv2 = np_adv(r2 + 10.0 * (r2 - r1), "rloo")
  want2 = (-adv2[:, None] + 0.01 * l) / n
  np.testing.assert_allclose(grads[10.0][turn == 2], want2[turn == 2], rtol=1e-5, atol=1e-7)


def test_kl_gradient_flows_and_ref_is_constant():
  logp, ref, turn, r1, r2 = episode_batch(6)
  zeros = np.zeros(B, np.float32)  # no rewards: only the KL term moves
  fn = lambda l, r: score.stage2_objective(l, r, turn, zeros, zeros, group_size=G, beta1=1.0)[0]
  g_logp, g_ref = jax.grad(fn, argnums=(0, 1))(logp, ref)
  assert np.any(np.asarray(g_logp)[turn > 0] != 0.0)
  assert np.all(np.asarray(g_ref) == 0.0)


def test_degenerate_inputs_are_finite():
  # All-equal rewards, empty sequences, log-ratios of ±50.
  logp = np.zeros((B, T), np.float32)
  ref = np.zeros((B, T), np.float32)
  logp[:, 1] = 50.0
  ref[:, 2] = 50.0
  turn = np.zeros((B, T), np.int32)
  turn[: B // 2, 1:3] = 1
  turn[: B // 2, 4:6] = 2
  ones = np.ones(B, np.float32)
  for est in ("k1", "k2", "k3"):
    placement = "reward" if est == "k1" else "loss"
    for fn in (score.stage1_objective, score.stage2_objective):
      for tm in (turn, np.zeros_like(turn)):
        loss, metrics = fn(logp, ref, tm, ones, ones, group_size=G, kl_estimator=est,
                           kl_placement=placement)
        g = jax.grad(lambda l: fn(l, ref, tm, ones, ones, group_size=G, kl_estimator=est,
                                  kl_placement=placement)[0])(jnp.asarray(logp))
        assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
        assert all(np.isfinite(float(v)) for v in metrics.values())


def test_metrics_report_flips():
  logp, ref, turn, _, _ = episode_batch(7)
  r1 = np.array([0, 0, 1, 1, 0, 1, 0, 1], np.float32)
  r2 = np.array([1, 0, 0, 1, 1, 1, 0, 1], np.float32)
  _, metrics = score.stage2_objective(logp, ref, turn, r1, r2, group_size=G)
  assert float(metrics["flip/i_to_c"]) == pytest.approx(2 / 8)
  assert float(metrics["flip/c_to_i"]) == pytest.approx(1 / 8)
  assert float(metrics["tokens/turn1"]) == pytest.approx((turn == 1).sum() / B)


def test_turn_mask_from_masks():
  m1 = jnp.array([[1, 1, 0, 0, 0]])
  m2 = jnp.array([[0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(score.turn_mask_from_masks(m1, m2), [[1, 1, 0, 2, 2]])


def test_errors_are_explicit():
  logp, ref, turn, r1, r2 = episode_batch(0)
  with pytest.raises(ValueError, match="groups of 3"):
    score.stage1_objective(logp, ref, turn, r1, r2, group_size=3)
  with pytest.raises(ValueError, match="same"):
    score.stage1_objective(logp[:, :-1], ref, turn, r1, r2, group_size=G)
  with pytest.raises(ValueError, match="kl_placement"):
    score.stage2_objective(logp, ref, turn, r1, r2, group_size=G, kl_placement="advantage")
