"""Per-token KL estimators and where to put them (in the reward or in the loss).

With samples ``y ~ q = πθ`` and the per-token log-ratio ``l = log πθ(y) − log πref(y)``,
three estimators of ``KL(πθ ‖ πref) = E_q[l]`` (Schulman, "Approximating KL divergence",
2020, http://joschu.net/blog/kl-approx.html):

* ``k1 = l``                    unbiased, high variance, can be negative;
* ``k2 = l² / 2``               biased, low variance, ≥ 0;
* ``k3 = exp(−l) + l − 1``      unbiased (``E_q[exp(−l)] = 1``), low variance, ≥ 0.

**Values are not gradients.** For on-policy samples (the sampling distribution is πθ itself,
so the expectation also depends on θ), the gradient of the KL value is
``∇ KL(πθ‖πref) = E_q[ l · ∇ log πθ(y) ]``. Differentiating each estimator *as a loss*
through ``logp`` gives, per token:

* ``k1`` in the loss: ``∇l = ∇ log πθ``, whose expectation is **zero** -- it only adds noise.
  k1 must instead go *in the reward* (a constant, stop-gradient), where the policy-gradient
  term turns it into the score-function estimate ``E[l · ∇ log πθ]`` -- correct.
* ``k2`` in the loss: ``l · ∇ log πθ`` -- exactly the score-function form above, so the
  gradient of ``KL(πθ‖πref)`` (token by token; Tang & Munos, "On a few pitfalls in KL
  divergence gradient estimation for RL", 2025).
* ``k3`` in the loss (GRPO, Shao et al. 2024, arXiv 2402.03300): ``(1 − exp(−l)) ∇ log πθ``,
  whose expectation is ``−E_πref[∇ log πθ] = ∇ KL(πref‖πθ)``: the gradient of the *reverse*
  direction (mass-covering), not of ``KL(πθ‖πref)``.

Both placements are provided by name (``PLACEMENTS``) so the choice is a config override.

**Numerical safety.** ``k3`` clips ``l`` to ``[−K3_CLIP, K3_CLIP]`` (±20) before the
exponential, so log-ratios of ±50 give finite values (``exp(20) ≈ 4.9e8``) and k3 stays ≥ 0;
beyond the clip range the k3 gradient is zero (verl clips the same way). ``k1`` and ``k2`` are
polynomials in ``l`` and are not clipped.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

K3_CLIP = 20.0


def k1(logp_BxT, ref_logp_BxT):
  """``k1 = l = log πθ − log πref`` (unbiased; can be negative)."""
  return logp_BxT - ref_logp_BxT


def k2(logp_BxT, ref_logp_BxT):
  """``k2 = l² / 2`` (≥ 0; its gradient in the loss is the on-policy ``∇ KL(πθ‖πref)``)."""
  log_ratio = logp_BxT - ref_logp_BxT
  return 0.5 * jnp.square(log_ratio)


def k3(logp_BxT, ref_logp_BxT, *, clip=K3_CLIP):
  """``k3 = exp(−l) + l − 1`` with ``l`` clipped to ``[−clip, clip]`` (unbiased, ≥ 0)."""
  log_ratio = jnp.clip(logp_BxT - ref_logp_BxT, -clip, clip)
  return jnp.exp(-log_ratio) + log_ratio - 1.0


ESTIMATORS: dict[str, Callable] = {"k1": k1, "k2": k2, "k3": k3}


def estimate(logp_BxT, ref_logp_BxT, kind):
  """Per-token KL estimate ``ESTIMATORS[kind](logp, ref_logp)``; same shape as the inputs.

  Gradients flow through both inputs; pass ``ref_logp`` from a frozen reference model (or
  wrap it in ``jax.lax.stop_gradient``). Never compute it on stop-gradiented ``logp``
  unless the KL is meant to be a reward (see ``in_reward``).
  """
  try:
    fn = ESTIMATORS[kind]
  except KeyError:
    raise ValueError(
        f"kl.estimate: unknown estimator {kind!r}; expected one of {sorted(ESTIMATORS)}."
    ) from None
  return fn(logp_BxT, ref_logp_BxT)


def apply_in_reward(rewards_BxT, kl_BxT, beta):
  """Per-token rewards minus the KL penalty: ``r_t − β · stop_gradient(kl_t)``.

  The KL enters as a *reward* (InstructGPT, Ouyang et al. 2022, arXiv 2203.02155; Tülu 3
  RLVR, Lambert et al. 2024, arXiv 2411.15124): it is a constant for the optimiser, and its
  gradient reaches θ through the policy-gradient (score-function) term. Use ``k1`` here.
  """
  return rewards_BxT - beta * jax.lax.stop_gradient(kl_BxT)


def kl_loss(logp_BxT, ref_logp_BxT, mask_BxT, *, beta, kind="k3"):
  """Unreduced per-token KL loss ``β · k(l) · mask`` (GRPO-style placement in the loss).

  Differentiable through ``logp_BxT``. Reduce it with ``score.losses.reduce.reduce``.
  """
  kl_BxT = estimate(logp_BxT, ref_logp_BxT, kind)
  return jnp.where(mask_BxT > 0, beta * kl_BxT * mask_BxT, 0.0)


def in_reward(logp_BxT, ref_logp_BxT, mask_BxT, *, beta, kind="k1"):
  """Placement ``"reward"``: returns ``(reward_delta_BxT, loss_BxT)`` with the penalty
  ``−β · sg(k(l)) · mask`` to add to per-token rewards and a zero loss."""
  kl_BxT = jax.lax.stop_gradient(estimate(logp_BxT, ref_logp_BxT, kind))
  delta_BxT = jnp.where(mask_BxT > 0, -beta * kl_BxT * mask_BxT, 0.0)
  return delta_BxT, jnp.zeros_like(delta_BxT)


def in_loss(logp_BxT, ref_logp_BxT, mask_BxT, *, beta, kind="k3"):
  """Placement ``"loss"``: returns ``(reward_delta_BxT, loss_BxT)`` with a zero reward delta
  and the differentiable per-token loss ``β · k(l) · mask``."""
  loss_BxT = kl_loss(logp_BxT, ref_logp_BxT, mask_BxT, beta=beta, kind=kind)
  return jnp.zeros_like(loss_BxT), loss_BxT


PLACEMENTS: dict[str, Callable] = {"reward": in_reward, "loss": in_loss}


def penalty(logp_BxT, ref_logp_BxT, mask_BxT, *, beta, kind, placement):
  """KL penalty by name: ``PLACEMENTS[placement](...)`` -> ``(reward_delta_BxT, loss_BxT)``.

  Exactly one of the two outputs is non-zero: add ``reward_delta_BxT`` to the per-token
  rewards before computing returns/advantages, and add ``loss_BxT`` to the per-token loss.
  """
  try:
    fn = PLACEMENTS[placement]
  except KeyError:
    raise ValueError(
        f"kl.penalty: unknown placement {placement!r}; expected one of {sorted(PLACEMENTS)}."
    ) from None
  return fn(logp_BxT, ref_logp_BxT, mask_BxT, beta=beta, kind=kind)
