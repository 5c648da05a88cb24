"""PPO: clipped surrogate (with clip-higher and dual-clip), clipped value loss, and GAE.

References: PPO, Schulman et al. 2017 (arXiv 1707.06347); GAE, Schulman et al. 2015
(arXiv 1506.02438); DAPO clip-higher, Yu et al. 2025 (arXiv 2503.14476); dual-clip PPO,
Ye et al. 2020 (arXiv 1912.09729).

All losses are unreduced per-token arrays, zero where ``mask_BxT == 0``; metrics are masked
token means. Reduce the loss with ``score.losses.reduce.reduce``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The importance log-ratio is clipped to this range before `exp` (as verl does), so that
# log-ratios of ±50 give finite ratios. The surrogate's gradient is zero beyond it.
LOG_RATIO_CLIP = 20.0


def _masked_mean(x_BxT, mask_BxT):
  mask_BxT = jnp.asarray(mask_BxT, jnp.float32)
  total = jnp.sum(jnp.where(mask_BxT > 0, x_BxT * mask_BxT, 0.0))
  return total / jnp.maximum(jnp.sum(mask_BxT), 1.0)


def clipped_surrogate(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, eps_low=0.2,
                      eps_high=0.2, dual_clip=None):
  """Per-token PPO-clip loss with asymmetric clipping and an optional dual clip.

  With ``ρ = exp(logp − old_logp)`` and ``A`` the (stop-gradiented) advantage:

      L = max( −A·ρ, −A·clip(ρ, 1 − eps_low, 1 + eps_high) )          (PPO / DAPO)
      L = min( L, −c·A )            where A < 0, if dual_clip = c > 1  (dual-clip)

  i.e. the negative of ``min(ρA, clip(ρ)A)`` (and of ``max(that, cA)`` for negative
  advantages). ``eps_high > eps_low`` is DAPO's clip-higher (0.2 / 0.28).

  Returns:
    ``(loss_BxT, metrics)`` where ``metrics`` holds masked token means: ``clip_frac``
    (tokens where the clipped branch is active), ``dual_clip_frac``, ``ratio``, and
    ``approx_kl`` (k3 estimate of KL(π_old‖πθ) from the samples).
  """
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"ppo.clipped_surrogate: dual_clip must be > 1 (paper: 3), got {dual_clip}.")
  adv_BxT = jax.lax.stop_gradient(advantages_BxT)
  log_ratio_BxT = jnp.clip(logp_BxT - old_logp_BxT, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  unclipped_BxT = -adv_BxT * ratio_BxT
  clipped_BxT = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high)
  loss_BxT = jnp.maximum(unclipped_BxT, clipped_BxT)
  is_clipped_BxT = clipped_BxT > unclipped_BxT
  if dual_clip is not None:
    dual_BxT = -dual_clip * adv_BxT
    is_dual_BxT = (adv_BxT < 0) & (loss_BxT > dual_BxT)
    loss_BxT = jnp.where(is_dual_BxT, dual_BxT, loss_BxT)
  else:
    is_dual_BxT = jnp.zeros_like(is_clipped_BxT)
  loss_BxT = jnp.where(mask_BxT > 0, loss_BxT * mask_BxT, 0.0)
  metrics = jax.lax.stop_gradient({
      "clip_frac": _masked_mean(is_clipped_BxT.astype(jnp.float32), mask_BxT),
      "dual_clip_frac": _masked_mean(is_dual_BxT.astype(jnp.float32), mask_BxT),
      "ratio": _masked_mean(ratio_BxT, mask_BxT),
      "approx_kl": _masked_mean(ratio_BxT - 1.0 - log_ratio_BxT, mask_BxT),
  })
  return loss_BxT, metrics


def clipped_value_loss(values_BxT, old_values_BxT, returns_BxT, mask_BxT, clip=0.2):
  """Per-token clipped value loss (PPO2 baselines; InstructGPT/Tülu PPO):

      v_clip = old_v + clip(v − old_v, −clip, clip)
      L = ½ · max( (v − R)², (v_clip − R)² )

  ``clip=None`` gives the plain ``½ (v − R)²``. Returns ``(loss_BxT, metrics)`` with
  ``metrics["value_clip_frac"]`` (tokens where the clipped error is the larger one).
  """
  returns_BxT = jax.lax.stop_gradient(returns_BxT)
  old_values_BxT = jax.lax.stop_gradient(old_values_BxT)
  err_BxT = jnp.square(values_BxT - returns_BxT)
  if clip is None:
    loss_BxT, is_clipped_BxT = 0.5 * err_BxT, jnp.zeros(err_BxT.shape, bool)
  else:
    v_clip_BxT = old_values_BxT + jnp.clip(values_BxT - old_values_BxT, -clip, clip)
    err_clip_BxT = jnp.square(v_clip_BxT - returns_BxT)
    loss_BxT = 0.5 * jnp.maximum(err_BxT, err_clip_BxT)
    is_clipped_BxT = err_clip_BxT > err_BxT
  loss_BxT = jnp.where(mask_BxT > 0, loss_BxT * mask_BxT, 0.0)
  metrics = {"value_clip_frac": _masked_mean(is_clipped_BxT.astype(jnp.float32), mask_BxT)}
  return loss_BxT, jax.lax.stop_gradient(metrics)


def gae(rewards_BxT, values_BxT, mask_BxT, gamma=1.0, lam=0.95):
  """Generalised advantage estimation over the valid tokens of each sequence.

      δ_t = r_t + γ V(s_next) − V(s_t),     A_t = δ_t + γλ A_next,     R_t = A_t + V(s_t)

  where "next" is the next *valid* token (``mask == 1``) of the same sequence: masked
  positions (left/right padding, or a non-generated gap between turns) are skipped, and the
  value after the last valid token is 0 (the episode ends there). Computed with a reverse
  ``lax.scan`` over time, so ragged lengths need no Python loop.

  Rewards at masked positions are ignored: put a sequence-level reward on its last valid
  token. Returns ``(advantages_BxT, returns_BxT)``, zero where the mask is 0, as constants
  (stop-gradient).
  """
  rewards_BxT, values_BxT = jax.lax.stop_gradient((rewards_BxT, values_BxT))
  dtype = jnp.result_type(rewards_BxT, values_BxT, jnp.float32)
  valid_BxT = jnp.asarray(mask_BxT) > 0

  def step(carry, inputs):
    next_value_B, next_adv_B = carry
    reward_B, value_B, valid_B = inputs
    delta_B = reward_B + gamma * next_value_B - value_B
    adv_B = delta_B + gamma * lam * next_adv_B
    adv_B = jnp.where(valid_B, adv_B, 0.0)
    carry = (jnp.where(valid_B, value_B, next_value_B), jnp.where(valid_B, adv_B, next_adv_B))
    return carry, adv_B

  batch = rewards_BxT.shape[0]
  init = (jnp.zeros((batch,), dtype), jnp.zeros((batch,), dtype))
  xs = (rewards_BxT.astype(dtype).T, values_BxT.astype(dtype).T, valid_BxT.T)
  _, adv_TxB = jax.lax.scan(step, init, xs, reverse=True)
  adv_BxT = adv_TxB.T
  returns_BxT = jnp.where(valid_BxT, adv_BxT + values_BxT.astype(dtype), 0.0)
  return adv_BxT, returns_BxT
