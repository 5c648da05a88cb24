"""score.losses.kl: estimator values, Monte-Carlo unbiasedness, gradients, placements."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from score.losses import kl


NP_ESTIMATORS = {
    "k1": lambda l: l,
    "k2": lambda l: 0.5 * l * l,
    "k3": lambda l: np.exp(-l) + l - 1.0,
}


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_values_match_numpy(variant, kind):
  rng = np.random.default_rng(0)
  logp = rng.normal(size=(3, 5)).astype(np.float32) - 2.0
  ref = rng.normal(size=(3, 5)).astype(np.float32) - 2.0
  got = variant(kl.estimate, kind=kind)(logp, ref)
  want = NP_ESTIMATORS[kind](logp.astype(np.float64) - ref)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert kl.ESTIMATORS[kind] is not None


def categorical_pair(seed, vocab=6):
  rng = np.random.default_rng(seed)
  q = rng.dirichlet(np.ones(vocab))
  p = rng.dirichlet(np.ones(vocab))
  return q, p


@pytest.mark.parametrize("kind", ["k1", "k3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_monte_carlo_mean_matches_analytic_kl(kind, seed):
  q, p = categorical_pair(seed)
  analytic = float(np.sum(q * (np.log(q) - np.log(p))))
  n = 20000
  samples = jax.random.categorical(jax.random.key(seed), jnp.log(jnp.asarray(q)), shape=(n,))
  logq = jnp.log(jnp.asarray(q, jnp.float32))[samples]
  logp = jnp.log(jnp.asarray(p, jnp.float32))[samples]
  values = np.asarray(kl.estimate(logq[None], logp[None], kind), np.float64)[0]
  stderr = values.std(ddof=1) / np.sqrt(n)
  assert abs(values.mean() - analytic) < 3 * stderr + 1e-6, (values.mean(), analytic, stderr)


def test_k2_expectation_is_not_the_kl():
  # k2 is biased: for far-apart distributions its exact expectation differs from the KL.
  q, p = np.array([0.9, 0.1]), np.array([0.1, 0.9])
  analytic = float(np.sum(q * np.log(q / p)))
  exact_k2_mean = float(np.sum(q * 0.5 * np.log(q / p) ** 2))
  assert abs(exact_k2_mean - analytic) > 0.1
  got = kl.estimate(jnp.log(jnp.asarray(q)), jnp.log(jnp.asarray(p)), "k2")
  np.testing.assert_allclose(np.sum(q * np.asarray(got)), exact_k2_mean, rtol=1e-5)


def test_k3_nonnegative_everywhere_and_finite_at_extremes():
  log_ratio = jnp.concatenate([jnp.linspace(-60.0, 60.0, 2001), jnp.array([-50.0, 50.0, 0.0])])
  zeros = jnp.zeros_like(log_ratio)
  for kind in ("k1", "k2", "k3"):
    values = kl.estimate(log_ratio, zeros, kind)
    assert np.all(np.isfinite(values)), kind
    grads = jax.grad(lambda x: jnp.sum(kl.estimate(x, zeros, kind)))(log_ratio)
    assert np.all(np.isfinite(grads)), kind
  k3 = kl.estimate(log_ratio, zeros, "k3")
  assert np.all(np.asarray(k3) >= 0.0)
  # Clip at ±20: the value at ±50 equals the value at ±20.
  np.testing.assert_allclose(
      kl.estimate(jnp.array([50.0, -50.0]), jnp.zeros(2), "k3"),
      np.exp(-np.array([20.0, -20.0])) + np.array([20.0, -20.0]) - 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_check_grads(kind):
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  check_grads(lambda a: kl.estimate(a, ref, kind), (logp,), order=2, modes=("rev",),
              atol=1e-2, rtol=1e-2)


def test_gradients_flow_through_logp_by_hand():
  l = jnp.array([0.3, -0.7, 1.5])
  ref = jnp.zeros(3)
  g = {k: jax.grad(lambda x: jnp.sum(kl.estimate(x, ref, k)))(l) for k in ("k1", "k2", "k3")}
  np.testing.assert_allclose(g["k1"], np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(g["k2"], np.asarray(l), rtol=1e-6)
  np.testing.assert_allclose(g["k3"], 1.0 - np.exp(-np.asarray(l)), rtol=1e-6)


def test_expected_gradients_match_the_theory():
  """Exact expectations over q = softmax(θ): k1-in-loss gives 0, k2-in-loss gives ∇KL(q‖p),
  k1 in the reward (score function) gives ∇KL(q‖p), k3-in-loss gives ∇KL(p‖q)."""
  rng = np.random.default_rng(2)
  theta = jnp.asarray(rng.normal(size=5), jnp.float32)
  logp_ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=5), jnp.float32))

  def expected_grad(surrogate):
    # E_{y~q}[∇_θ surrogate(log q_θ(y))], with q held fixed as the sampling distribution.
    q = jax.lax.stop_gradient(jax.nn.softmax(theta))
    return jax.grad(lambda t: jnp.sum(q * surrogate(jax.nn.log_softmax(t))))(theta)

  rev_kl = lambda t: jnp.sum(jax.nn.softmax(t) * (jax.nn.log_softmax(t) - logp_ref))
  fwd_kl = lambda t: jnp.sum(jnp.exp(logp_ref) * (logp_ref - jax.nn.log_softmax(t)))
  grad_rev_kl, grad_fwd_kl = jax.grad(rev_kl)(theta), jax.grad(fwd_kl)(theta)
  k1_loss = expected_grad(lambda lq: kl.estimate(lq, logp_ref, "k1"))
  k2_loss = expected_grad(lambda lq: kl.estimate(lq, logp_ref, "k2"))
  k3_loss = expected_grad(lambda lq: kl.estimate(lq, logp_ref, "k3"))
  # k1 in the reward: −A·logp with A = −β·sg(k1) and β = 1 -> sg(k1)·logp.
  k1_reward = expected_grad(
      lambda lq: -kl.apply_in_reward(jnp.zeros_like(lq), kl.estimate(lq, logp_ref, "k1"), 1.0) * lq)
  np.testing.assert_allclose(k1_loss, 0.0, atol=1e-6)
  np.testing.assert_allclose(k2_loss, grad_rev_kl, atol=1e-5)
  np.testing.assert_allclose(k1_reward, grad_rev_kl, atol=1e-5)
  np.testing.assert_allclose(k3_loss, grad_fwd_kl, atol=1e-5)


def test_placements(variant):
  rng = np.random.default_rng(4)
  logp = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  mask = jnp.asarray([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], jnp.float32)
  l = np.asarray(logp - ref, np.float64)
  k3 = np.exp(-l) + l - 1.0
  delta, loss = variant(kl.penalty, beta=0.1, kind="k3", placement="loss")(logp, ref, mask)
  np.testing.assert_allclose(loss, 0.1 * k3 * np.asarray(mask), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(delta) == 0.0)
  delta, loss = variant(kl.penalty, beta=0.1, kind="k1", placement="reward")(logp, ref, mask)
  np.testing.assert_allclose(delta, -0.1 * l * np.asarray(mask), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(loss) == 0.0)
  assert set(kl.PLACEMENTS) == {"reward", "loss"}


def test_reward_placement_is_a_constant_and_loss_placement_is_not():
  logp = jnp.array([[0.5, -0.2]])
  ref = jnp.zeros((1, 2))
  mask = jnp.ones((1, 2))
  pen = lambda x, kind, placement: kl.penalty(x, ref, mask, beta=1.0, kind=kind,
                                              placement=placement)
  g_reward = jax.grad(lambda x: jnp.sum(pen(x, "k1", "reward")[0]))(logp)
  g_loss = jax.grad(lambda x: jnp.sum(pen(x, "k2", "loss")[1]))(logp)
  assert np.all(np.asarray(g_reward) == 0.0)
  np.testing.assert_allclose(g_loss, logp, rtol=1e-6)
  g_apply = jax.grad(lambda x: jnp.sum(kl.apply_in_reward(jnp.ones((1, 2)), x, 0.5)))(logp)
  assert np.all(np.asarray(g_apply) == 0.0)


def test_errors_are_explicit():
  with pytest.raises(ValueError, match="unknown estimator"):
    kl.estimate(jnp.zeros(2), jnp.zeros(2), "k4")
  with pytest.raises(ValueError, match="unknown placement"):
    kl.penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)), beta=1.0, kind="k1",
               placement="advantage")
