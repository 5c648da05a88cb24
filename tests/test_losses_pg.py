"""score.losses.pg: advantage estimators, per-turn credit and the REINFORCE loss."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.losses import pg


def np_advantages(rewards, kind, eps=1e-6, baseline=None):
  r = np.asarray(rewards, np.float64)
  out = np.zeros_like(r)
  if kind == "reinforce":
    return r - (r.mean() if baseline is None else baseline)
  for b in range(r.shape[0]):
    g = r[b]
    for i in range(len(g)):
      others = np.delete(g, i)
      if kind == "rloo":
        out[b, i] = g[i] - others.mean()
      elif kind == "grpo":
        out[b, i] = 0.0 if g.std() == 0 else (g[i] - g.mean()) / (g.std(ddof=1) + eps)
      elif kind == "dr_grpo":
        out[b, i] = g[i] - g.mean()
  return out


def random_rewards(seed, prompts=4, group=5):
  rng = np.random.default_rng(seed)
  rewards = rng.normal(size=(prompts, group)).astype(np.float32)
  rewards[1] = 0.7  # all-equal group (std 0)
  rewards[2] = rng.integers(0, 2, size=group)  # binary group
  return rewards


@pytest.mark.parametrize("kind", ["reinforce", "rloo", "grpo", "dr_grpo"])
def test_advantages_match_numpy(variant, kind):
  rewards = random_rewards(0)
  got = variant(pg.advantages, kind=kind)(rewards)
  np.testing.assert_allclose(got, np_advantages(rewards, kind), rtol=1e-5, atol=1e-5)
  assert pg.ADVANTAGES[kind] is not None


@pytest.mark.parametrize("kind", ["rloo", "grpo", "dr_grpo"])
def test_equal_group_rewards_give_exact_zero(kind):
  rewards = jnp.full((2, 4), 0.1)
  adv = pg.advantages(rewards, kind)
  assert np.all(np.asarray(adv) == 0.0)


def test_rloo_hand_example():
  # Group [1, 0, 0, 1]: leave-one-out means are 1/3, 2/3, 2/3, 1/3.
  adv = pg.advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), "rloo")
  np.testing.assert_allclose(adv, [[2 / 3, -2 / 3, -2 / 3, 2 / 3]], rtol=1e-6)


# Hand-worked GRPO advantages. G = 2, rewards [1, 0]: mean 1/2, deviations ±1/2; sample std
# sqrt((1/4 + 1/4) / 1) = 1/√2, population std 1/2. G = 4, rewards [1, 0, 0, 0] (one differing
# reward): mean 1/4, deviations 3/4, −1/4 ×3; Σ dev² = 9/16 + 3/16 = 3/4; sample std
# sqrt(3/4 / 3) = 1/2, population sqrt(3/16) = √3/4.
@pytest.mark.parametrize("rewards, std, expected", [
    ([1.0, 0.0], "sample", [0.5 * np.sqrt(2), -0.5 * np.sqrt(2)]),
    ([1.0, 0.0], "population", [1.0, -1.0]),
    ([1.0, 0.0, 0.0, 0.0], "sample", [1.5, -0.5, -0.5, -0.5]),
    ([1.0, 0.0, 0.0, 0.0], "population", [np.sqrt(3), -1 / np.sqrt(3), -1 / np.sqrt(3),
                                          -1 / np.sqrt(3)]),
])
def test_grpo_hand_values(variant, rewards, std, expected):
  got = variant(pg.advantages, kind="grpo", eps=0.0, std=std)(jnp.array([rewards]))
  np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_grpo_default_is_bessel_corrected_sample_std():
  # TRL and verl (torch.std): [1, 0, 0, 0] -> (1 − 1/4) / (1/2 + 1e-6).
  got = pg.advantages(jnp.array([[1.0, 0.0, 0.0, 0.0]]), "grpo")
  np.testing.assert_allclose(got[0, 0], 0.75 / (0.5 + 1e-6), rtol=1e-7)


def test_grpo_batch_and_none_scaling_hand_values():
  # Batch [[1, 0], [4, 2]]. Centred per group: [[.5, −.5], [1, −1]]. Batch sample std of
  # {1, 0, 4, 2}: mean 7/4, Σ dev² = 9/16 + 49/16 + 81/16 + 1/16 = 140/16; / 3 -> sqrt(35/12),
  # / 4 -> sqrt(35/16).
  rewards = jnp.array([[1.0, 0.0], [4.0, 2.0]])
  centred = np.array([[0.5, -0.5], [1.0, -1.0]])
  got = pg.advantages(rewards, "grpo", eps=0.0, scale="batch")
  np.testing.assert_allclose(got, centred / np.sqrt(35 / 12), rtol=1e-6)
  got = pg.advantages(rewards, "grpo", eps=0.0, scale="batch", std="population")
  np.testing.assert_allclose(got, centred / np.sqrt(35 / 16), rtol=1e-6)
  np.testing.assert_allclose(pg.advantages(rewards, "grpo", scale="none"), centred, rtol=1e-7)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("std", ["sample", "population"])
def test_grpo_single_sample_and_equal_groups_are_zero(scale, std):
  for rewards in (jnp.array([[1.0], [0.0], [5.0]]), jnp.full((2, 3), 0.5)):  # G = 1; all equal
    adv = np.asarray(pg.advantages(rewards, "grpo", std=std, scale=scale))
    assert np.all(adv == 0.0), (rewards, adv)


def test_grpo_options_are_checked():
  with pytest.raises(ValueError, match="unknown std"):
    pg.advantages(jnp.ones((1, 2)), "grpo", std="bessel")
  with pytest.raises(ValueError, match="unknown scale"):
    pg.advantages(jnp.ones((1, 2)), "grpo", scale="global")
  with pytest.raises(ValueError, match="for kind='grpo'"):
    pg.advantages(jnp.ones((1, 2)), "rloo", scale="batch")


def test_reinforce_with_explicit_ema_baseline(variant):
  rewards = random_rewards(1)
  state = pg.ema_baseline(None, rewards)
  np.testing.assert_allclose(state, rewards.mean(), rtol=1e-6)
  new_rewards = rewards + 1.0
  new_state = pg.ema_baseline(state, new_rewards, decay=0.9)
  np.testing.assert_allclose(new_state, 0.9 * rewards.mean() + 0.1 * new_rewards.mean(), rtol=1e-5)
  adv = variant(pg.advantages, kind="reinforce")(new_rewards, baseline=state)
  np.testing.assert_allclose(adv, np_advantages(new_rewards, "reinforce", baseline=float(state)),
                             rtol=1e-5, atol=1e-6)


def test_advantages_are_constants():
  grad = jax.grad(lambda r: jnp.sum(pg.advantages(r, "grpo") * r))(jnp.array([[1.0, 2.0, 4.0]]))
  np.testing.assert_allclose(grad, pg.advantages(jnp.array([[1.0, 2.0, 4.0]]), "grpo"))


def test_flat_advantages_groups_contiguous_samples():
  rewards_B = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
  adv = pg.flat_advantages(rewards_B, 3, "dr_grpo")
  np.testing.assert_allclose(adv, [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3], rtol=1e-6)


def test_errors_are_explicit():
  with pytest.raises(ValueError, match="G >= 2"):
    pg.advantages(jnp.ones((3, 1)), "rloo")
  with pytest.raises(ValueError, match="only 'reinforce'"):
    pg.advantages(jnp.ones((3, 2)), "grpo", baseline=0.5)
  with pytest.raises(ValueError, match="unknown kind"):
    pg.advantages(jnp.ones((3, 2)), "ppo")
  with pytest.raises(ValueError, match="groups of 4"):
    pg.group(jnp.ones(6), 4)
  with pytest.raises(ValueError, match="rewards_BxG"):
    pg.advantages(jnp.ones(6), "rloo")


def test_per_turn_advantages_matches_loop(variant):
  rng = np.random.default_rng(2)
  adv_BxK = rng.normal(size=(4, 2)).astype(np.float32)
  turn_mask = np.zeros((4, 9), np.int32)
  turn_mask[0, 1:4], turn_mask[0, 5:8] = 1, 2
  turn_mask[1, 0:2] = 1                        # no second turn
  turn_mask[2, 3:9] = 2                        # empty first turn
  turn_mask[3, 2] = 3                          # turn beyond K -> not credited
  got = np.asarray(variant(pg.per_turn_advantages)(adv_BxK, turn_mask))
  want = np.zeros((4, 9))
  for b in range(4):
    for t in range(9):
      k = turn_mask[b, t]
      if 1 <= k <= 2:
        want[b, t] = adv_BxK[b, k - 1]
  np.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_policy_gradient_loss_values_and_hand_gradient(variant):
  rng = np.random.default_rng(3)
  logp = -np.abs(rng.normal(size=(3, 6))).astype(np.float32)
  adv = rng.normal(size=(3, 6)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0] * 6], np.float32)
  fn = variant(pg.policy_gradient_loss)
  np.testing.assert_allclose(fn(logp, adv, mask), -adv * logp * mask, rtol=1e-6, atol=1e-7)
  g_logp, g_adv = jax.grad(lambda l, a: jnp.sum(fn(l, a, mask)), argnums=(0, 1))(logp, adv)
  np.testing.assert_allclose(g_logp, -adv * mask, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(g_adv) == 0.0)


def test_policy_gradient_is_unbiased_for_a_categorical():
  """E_{y~π}[∇(−A(y)·log π(y))] with A = r − b equals −∇E_π[r] for any constant b (exact sum)."""
  rng = np.random.default_rng(4)
  theta = jnp.asarray(rng.normal(size=6), jnp.float32)
  reward = jnp.asarray(rng.normal(size=6), jnp.float32)
  prob = jax.nn.softmax(theta)
  adv = reward - 0.37  # arbitrary constant baseline
  surrogate = lambda t: jnp.sum(prob * pg.policy_gradient_loss(
      jax.nn.log_softmax(t)[None], adv[None], jnp.ones((1, 6)))[0])
  want = -jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * reward))(theta)
  np.testing.assert_allclose(jax.grad(surrogate)(theta), want, atol=1e-6)
