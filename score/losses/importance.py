"""Sampler/trainer mismatch: its diagnostics and truncated importance sampling (TIS).

The sampler computes the log-probs of the tokens it draws with its own kernels (a KV cache,
and on accelerators often bf16), while the update recomputes them with the trainer's forward
pass. Even at the same weights the two differ, so the samples are slightly off-policy (Yao et
al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"). With

    l_t = log π_old(y_t) − log π_sampler(y_t)

where ``π_old`` is the trainer's recomputation under the sampling weights (what PPO's ratio
divides by) and ``π_sampler`` the sampler's own log-prob of the same token:

* ``mismatch_metrics`` logs the masked mean of ``l``, the max of ``|l|``, and the fraction of
  tokens with ``|l| > threshold``;
* ``truncated_weights`` returns the TIS weights that multiply the per-token policy loss, by
  level (``LEVELS``): ``"token"`` ``w_t = min(exp(l_t), C)`` (verl ``tis_imp_ratio_cap``,
  TRL ``vllm_importance_sampling_correction`` / ``..._cap``); ``"sequence"``
  ``w = min(exp(Σ_t l_t), C)`` on every token of the row (the product of the token ratios);
  ``"none"`` all ones. Weights are constants (stop-gradient) and 0 off the mask.

In fp32 on one device ``l`` is float noise (~1e-6) and the correction is off by default; with
bf16 sampling on an accelerator ``|l|`` reaches 1e-2–1e-1 on some tokens, and a cap C ≈ 2
(Yao et al.) is the usual setting.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# exp() of a log-ratio is taken after clipping it to this range (as `ppo.LOG_RATIO_CLIP`).
_LOG_CLIP = 20.0


def _masked_mean(x_BxT, mask_BxT):
  mask_BxT = jnp.asarray(mask_BxT, jnp.float32)
  return (jnp.sum(jnp.where(mask_BxT > 0, x_BxT * mask_BxT, 0.0))
          / jnp.maximum(jnp.sum(mask_BxT), 1.0))


def _log_ratio(old_logp_BxT, sampler_logp_BxT, mask_BxT):
  diff_BxT = jnp.asarray(old_logp_BxT, jnp.float32) - jnp.asarray(sampler_logp_BxT, jnp.float32)
  return jax.lax.stop_gradient(jnp.where(jnp.asarray(mask_BxT) > 0, diff_BxT, 0.0))


def mismatch_metrics(old_logp_BxT, sampler_logp_BxT, mask_BxT, *, threshold=0.1):
  """``{"mean", "abs_max", "frac"}`` of ``l = log π_old − log π_sampler`` over masked tokens:
  the masked mean of ``l``, the max of ``|l|``, the fraction with ``|l| > threshold``."""
  l_BxT = _log_ratio(old_logp_BxT, sampler_logp_BxT, mask_BxT)
  valid_BxT = jnp.asarray(mask_BxT) > 0
  return {
      "mean": _masked_mean(l_BxT, mask_BxT),
      "abs_max": jnp.max(jnp.where(valid_BxT, jnp.abs(l_BxT), 0.0)),
      "frac": _masked_mean((jnp.abs(l_BxT) > threshold).astype(jnp.float32), mask_BxT),
  }


def _token(l_BxT, cap):
  return jnp.minimum(jnp.exp(jnp.clip(l_BxT, -_LOG_CLIP, _LOG_CLIP)), cap)


def _sequence(l_BxT, cap):
  sum_Bx1 = jnp.sum(l_BxT, axis=1, keepdims=True)  # l is 0 off the mask
  return jnp.broadcast_to(jnp.minimum(jnp.exp(jnp.clip(sum_Bx1, -_LOG_CLIP, _LOG_CLIP)), cap),
                          l_BxT.shape)


def _none(l_BxT, cap):
  del cap
  return jnp.ones_like(l_BxT)


# TIS weights by config name (`rl.tis_level`): `fn(l_BxT, cap) -> w_BxT` (l = 0 off the mask).
LEVELS: dict[str, Callable] = {"none": _none, "token": _token, "sequence": _sequence}


def truncated_weights(old_logp_BxT, sampler_logp_BxT, mask_BxT, *, level, cap=2.0):
  """TIS weights ``min(π_old / π_sampler, cap)`` at ``level`` (``LEVELS``); ``[B, T]``,
  stop-gradient, 0 where ``mask_BxT`` is 0. Multiply the per-token policy loss by them."""
  if level not in LEVELS:
    raise ValueError(f"importance: unknown level {level!r}; expected one of {sorted(LEVELS)}.")
  if level != "none" and not cap > 0:
    raise ValueError(f"importance: the cap C of min(ratio, C) must be > 0, got {cap}.")
  l_BxT = _log_ratio(old_logp_BxT, sampler_logp_BxT, mask_BxT)
  w_BxT = LEVELS[level](l_BxT, cap)
  return jax.lax.stop_gradient(jnp.where(jnp.asarray(mask_BxT) > 0, w_BxT, 0.0))
