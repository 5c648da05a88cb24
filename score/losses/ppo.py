"""PPO: clipped surrogate (with clip-higher and dual-clip), GSPO's sequence-level ratio,
clipped value loss, and GAE.

References: PPO, Schulman et al. 2017 (arXiv 1707.06347); GAE, Schulman et al. 2015
(arXiv 1506.02438); DAPO clip-higher, Yu et al. 2025 (arXiv 2503.14476); dual-clip PPO,
Ye et al. 2020 (arXiv 1912.09729); GSPO, Zheng et al. 2025 (arXiv 2507.18071).

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


def _clip_objective(ratio_BxT, adv_BxT, eps_low, eps_high, dual_clip):
  """``max(−A·ρ, −A·clip(ρ, 1 − eps_low, 1 + eps_high))``, then the dual clip where A < 0.

  Returns ``(loss_BxT, is_clipped_BxT, is_dual_BxT)`` (unmasked).
  """
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"ppo: dual_clip must be > 1 (paper: 3), got {dual_clip}.")
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
  return loss_BxT, is_clipped_BxT, is_dual_BxT


def _surrogate_out(loss_BxT, is_clipped_BxT, is_dual_BxT, ratio_BxT, log_ratio_BxT, mask_BxT):
  """Masks the loss; the metrics of every surrogate (masked token means)."""
  loss_BxT = jnp.where(mask_BxT > 0, loss_BxT * mask_BxT, 0.0)
  metrics = jax.lax.stop_gradient({
      "clip_frac": _masked_mean(is_clipped_BxT.astype(jnp.float32), mask_BxT),
      "dual_clip_frac": _masked_mean(is_dual_BxT.astype(jnp.float32), mask_BxT),
      "ratio": _masked_mean(ratio_BxT, mask_BxT),
      "approx_kl": _masked_mean(jnp.exp(log_ratio_BxT) - 1.0 - log_ratio_BxT, mask_BxT),
  })
  return loss_BxT, metrics


def _token_log_ratio(logp_BxT, old_logp_BxT):
  return jnp.clip(logp_BxT - old_logp_BxT, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)


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
  adv_BxT = jax.lax.stop_gradient(advantages_BxT)
  log_ratio_BxT = _token_log_ratio(logp_BxT, old_logp_BxT)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  loss_BxT, is_clipped_BxT, is_dual_BxT = _clip_objective(ratio_BxT, adv_BxT, eps_low, eps_high,
                                                          dual_clip)
  return _surrogate_out(loss_BxT, is_clipped_BxT, is_dual_BxT, ratio_BxT, log_ratio_BxT,
                        mask_BxT)


def sequence_log_ratio(logp_BxT, old_logp_BxT, mask_BxT):
  """GSPO's length-normalised log-ratio ``(1/|y|) Σ_t (log πθ − log π_old)`` per row, ``[B, 1]``
  (0 for a row without tokens)."""
  m_BxT = jnp.asarray(mask_BxT, jnp.float32)
  log_ratio_BxT = jnp.where(m_BxT > 0, (logp_BxT - old_logp_BxT) * m_BxT, 0.0)
  length_Bx1 = jnp.maximum(jnp.sum(m_BxT, axis=1, keepdims=True), 1.0)
  return jnp.clip(jnp.sum(log_ratio_BxT, axis=1, keepdims=True) / length_Bx1,
                  -LOG_RATIO_CLIP, LOG_RATIO_CLIP)


def gspo(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, eps_low=3e-4, eps_high=4e-4,
         dual_clip=None):
  """GSPO (Zheng et al. 2025, arXiv 2507.18071): one importance ratio per sequence.

      s_i = exp( (1/|y_i|) Σ_t (log πθ(y_t) − log π_old(y_t)) )      (length-normalised)
      L_i = max( −A_i·s_i, −A_i·clip(s_i, 1 − eps_low, 1 + eps_high) )

  clipped per sequence: the whole response is in or out. ``A_i`` is the masked mean of the row's
  ``advantages_BxT`` (GRPO's group advantage, the same on every token). ``L_i`` is returned on
  each of the row's tokens, so the ``"sequence"`` reduction gives the paper's
  ``mean_i L_i`` (TRL's ``importance_sampling_level="sequence"`` does the same and leaves the
  reduction to ``loss_type``). The paper clips at 3e-4 / 4e-4: sequence ratios stay far closer
  to 1 than token ratios. A sequence whose tokens all have ratio ``r`` gets PPO-clip's loss
  at ``r``. Returns ``(loss_BxT, metrics)`` like ``clipped_surrogate`` (``ratio`` and
  ``clip_frac`` of the sequence ratios, as token means).
  """
  mask_f_BxT = jnp.asarray(mask_BxT, jnp.float32)
  adv_Bx1 = jax.lax.stop_gradient(jnp.sum(jnp.where(mask_f_BxT > 0, advantages_BxT, 0.0), axis=1,
                                          keepdims=True)
                                  / jnp.maximum(jnp.sum(mask_f_BxT, axis=1, keepdims=True), 1.0))
  seq_log_ratio_Bx1 = sequence_log_ratio(logp_BxT, old_logp_BxT, mask_BxT)
  ratio_Bx1 = jnp.exp(seq_log_ratio_Bx1)
  loss_Bx1, is_clipped_Bx1, is_dual_Bx1 = _clip_objective(ratio_Bx1, adv_Bx1, eps_low, eps_high,
                                                          dual_clip)
  shape = jnp.shape(logp_BxT)
  return _surrogate_out(*(jnp.broadcast_to(x, shape) for x in (
      loss_Bx1, is_clipped_Bx1, is_dual_Bx1, ratio_Bx1)),
      _token_log_ratio(logp_BxT, old_logp_BxT), mask_BxT)


def gspo_token(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, eps_low=3e-4, eps_high=4e-4,
               dual_clip=None):
  """GSPO-token (Zheng et al. 2025, §4.3): the sequence ratio with a per-token gradient path,

      s_{i,t} = sg(s_i) · πθ(y_t) / sg(πθ(y_t)),
      L_{i,t} = max( −A_{i,t}·s_{i,t}, −A_{i,t}·clip(s_{i,t}, 1 − eps_low, 1 + eps_high) ).

  ``s_{i,t}`` has the value of ``s_i``, so clipping decisions are per sequence; with the same
  ``A`` on every token of a row its loss value and (under the ``"sequence"`` reduction) its
  gradient equal ``gspo``'s, while per-token advantages remain possible. Returns
  ``(loss_BxT, metrics)``.
  """
  adv_BxT = jax.lax.stop_gradient(advantages_BxT)
  seq_log_ratio_Bx1 = jax.lax.stop_gradient(sequence_log_ratio(logp_BxT, old_logp_BxT, mask_BxT))
  log_ratio_BxT = seq_log_ratio_Bx1 + logp_BxT - jax.lax.stop_gradient(logp_BxT)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  loss_BxT, is_clipped_BxT, is_dual_BxT = _clip_objective(ratio_BxT, adv_BxT, eps_low, eps_high,
                                                          dual_clip)
  return _surrogate_out(loss_BxT, is_clipped_BxT, is_dual_BxT, ratio_BxT,
                        _token_log_ratio(logp_BxT, old_logp_BxT), mask_BxT)


# The policy losses by config name (`rl.policy_loss`): same signature and outputs.
SURROGATES = {"ppo_clip": clipped_surrogate, "gspo": gspo, "gspo_token": gspo_token}


def surrogate(kind, logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, *, eps_low, eps_high,
              dual_clip=None):
  """``SURROGATES[kind](...)``: ``(loss_BxT, metrics)``."""
  try:
    fn = SURROGATES[kind]
  except KeyError:
    raise ValueError(
        f"ppo.surrogate: unknown kind {kind!r}; expected one of {sorted(SURROGATES)}.") from None
  return fn(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, eps_low=eps_low,
            eps_high=eps_high, dual_clip=dual_clip)


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
