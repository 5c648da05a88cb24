"""SCoRe: training LMs to self-correct via multi-turn RL (Kumar et al. 2024, arXiv 2409.12917).

One episode is ``x1 → y1 → (instruction) → y2``; rewards ``r1 = r(y1, y*)`` and
``r2 = r(y2, y*)``. The two attempts live in one token sequence whose ``turn_mask_BxT`` marks
generated tokens with their turn (1 = first attempt, 2 = second attempt, 0 = prompt,
instruction or padding; ``score.sampling.rollouts`` produces it). Samples are grouped by prompt
for the advantage baseline: flat index ``b·G + g`` is sample ``g`` of prompt ``b``.

**Stage I** (initialisation against collapse)::

    max_θ  E[ r(y2, y*) − β2 · KL(πθ(·|x1) ‖ πref(·|x1))
                       − β1 · KL(πθ(·|x2) ‖ πref(·|x2)) ]

Only turn-2 tokens carry the reward; turn-1 tokens see only the (strong) β2 KL.

**Stage II** (multi-turn RL with a shaped reward)::

    max_θ  E[ Σ_{i=1,2} r̂_i − β1 · KL(πθ(·|x_i) ‖ πref(·|x_i)) ],
    r̂_1 = r1,   r̂_2 = r2 + α · (r2 − r1)

Each turn is credited with its own (shaped) reward only -- the α bonus never reaches
turn-1 tokens -- with no discounting across turns.

**Gradient estimator.** REINFORCE with a group baseline (``advantage``, default leave-one-out
``"rloo"``); advantages are stop-gradient constants. The KL term is chosen by
``kl_estimator`` / ``kl_placement`` (see ``score.losses.kl``). The default, ``"k2"`` in the
loss, differentiates to ``l · ∇ log πθ`` per token, the on-policy gradient of
``KL(πθ‖πref)``. ``kl_placement="reward"`` with ``"k1"`` is the score-function alternative
(what the paper's "KL penalty in the reward" means for REINFORCE): each turn's return becomes
``r̂_k − β_k Σ_{t ∈ turn k} sg(l_t)``, before the advantage baseline. Do not use ``"k1"`` in
the loss: its expected gradient is zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from score.losses import kl as kl_lib
from score.losses import pg
from score.losses import reduce as reduce_lib


def shaped_rewards(r1, r2, alpha):
  """SCoRe reward shaping: returns ``(r1, r2 + α · (r2 − r1))``.

  ``α > 1`` (paper: 10) makes flipping wrong→right worth more than being right twice and
  punishes right→wrong. ``α = 0`` leaves the rewards unchanged.
  """
  return r1, r2 + alpha * (r2 - r1)


def _masked_mean(x_BxT, mask_BxT):
  mask_BxT = jnp.asarray(mask_BxT, jnp.float32)
  total = jnp.sum(jnp.where(mask_BxT > 0, x_BxT * mask_BxT, 0.0))
  return total / jnp.maximum(jnp.sum(mask_BxT), 1.0)


def multi_turn_objective(logp_BxT, ref_logp_BxT, turn_mask_BxT, returns_BxK, betas_K, *,
                         group_size, credited_K=None, advantage="rloo", kl_estimator="k2",
                         kl_placement="loss", reduction="sequence", constant=None, eps=1e-6,
                         is_weights_BxT=None):
  """Multi-turn REINFORCE + KL objective with per-turn credit (the core of both stages).

  Per token ``t`` of turn ``k``::

      loss_t = −A_k · log πθ(y_t)  +  β_k · KL_est(l_t)       (kl_placement = "loss")
      loss_t = −A'_k · log πθ(y_t)                             (kl_placement = "reward")

  with ``A_k = advantage(R_k over the G samples of a prompt)`` and
  ``A'_k = advantage(R_k − β_k Σ_{t∈turn k} sg(KL_est(l_t)))``; the result is
  ``reduce(loss_BxT, turn_mask > 0, reduction)``.

  Args:
    logp_BxT: log πθ of each token (differentiable), ``[B, T]``.
    ref_logp_BxT: log πref of each token (treated as a constant), ``[B, T]``.
    turn_mask_BxT: int ``[B, T]``; ``k`` on tokens of turn ``k`` (1-based), 0 elsewhere.
    returns_BxK: per-sample return of each turn, column ``k − 1`` for turn ``k``.
    betas_K: KL coefficient of each turn (length K).
    group_size: G, samples per prompt (B must be a multiple of G).
    credited_K: which turns receive their return (default all). A turn that is not credited
      gets advantage 0 under ``kl_placement="loss"`` -- no reward gradient at all -- and,
      under ``"reward"``, only its KL penalty as return.
    advantage: a name in ``pg.ADVANTAGES``.
    kl_estimator: a name in ``kl.ESTIMATORS``.
    kl_placement: ``"loss"`` or ``"reward"``.
    reduction: a mode of ``reduce.reduce``; ``constant`` is its normaliser.
    eps: GRPO's std epsilon.
    is_weights_BxT: constant per-token weights of the REINFORCE term (not of the KL): the
      truncated importance weights of ``score.losses.importance``; None = 1.

  Returns:
    ``(loss, metrics)``: a scalar and a dict of scalar diagnostics (stop-gradient).
  """
  shapes = {jnp.shape(logp_BxT), jnp.shape(ref_logp_BxT), jnp.shape(turn_mask_BxT)}
  if len(shapes) != 1:
    raise ValueError(
        f"score: logp_BxT {jnp.shape(logp_BxT)}, ref_logp_BxT {jnp.shape(ref_logp_BxT)} and "
        f"turn_mask_BxT {jnp.shape(turn_mask_BxT)} must have the same [B, T] shape.")
  batch = jnp.shape(logp_BxT)[0]
  if jnp.ndim(returns_BxK) != 2 or jnp.shape(returns_BxK)[0] != batch:
    raise ValueError(f"score: returns_BxK must be [B={batch}, K], got {jnp.shape(returns_BxK)}.")
  num_turns = jnp.shape(returns_BxK)[1]
  if len(betas_K) != num_turns:
    raise ValueError(f"score: got {len(betas_K)} KL coefficients for {num_turns} turns.")
  credited_K = (True,) * num_turns if credited_K is None else tuple(credited_K)
  if len(credited_K) != num_turns:
    raise ValueError(f"score: credited_K has {len(credited_K)} entries for {num_turns} turns.")
  if kl_placement not in kl_lib.PLACEMENTS:
    raise ValueError(
        f"score: unknown kl_placement {kl_placement!r}; expected one of "
        f"{sorted(kl_lib.PLACEMENTS)}.")

  turn_BxT = jnp.asarray(turn_mask_BxT, jnp.int32)
  mask_BxT = (turn_BxT > 0).astype(jnp.float32)
  ref_logp_BxT = jax.lax.stop_gradient(ref_logp_BxT)
  returns_BxK = jax.lax.stop_gradient(jnp.asarray(returns_BxK, jnp.float32))
  kl_BxT = kl_lib.estimate(logp_BxT, ref_logp_BxT, kl_estimator)
  betas_BxK = jnp.broadcast_to(jnp.asarray(betas_K, jnp.float32), (batch, num_turns))
  beta_BxT = pg.per_turn_advantages(betas_BxK, turn_BxT)
  turn_masks = [(turn_BxT == k + 1).astype(jnp.float32) for k in range(num_turns)]

  if kl_placement == "loss":
    kl_loss_BxT = jnp.where(mask_BxT > 0, beta_BxT * kl_BxT, 0.0)
    adjusted_BxK = returns_BxK
  else:
    kl_loss_BxT = jnp.zeros_like(kl_BxT)
    kl_const_BxT = jnp.where(mask_BxT > 0, jax.lax.stop_gradient(kl_BxT), 0.0)
    kl_sum_BxK = jnp.stack([jnp.sum(kl_const_BxT * m, axis=1) for m in turn_masks], axis=1)
    credited_BxK = jnp.asarray(credited_K, jnp.float32)[None, :]
    adjusted_BxK = returns_BxK * credited_BxK - betas_BxK * kl_sum_BxK

  adv_columns = []
  for k in range(num_turns):
    if kl_placement == "loss" and not credited_K[k]:
      adv_columns.append(jnp.zeros((batch,), jnp.float32))
    else:
      adv_columns.append(pg.flat_advantages(adjusted_BxK[:, k], group_size, advantage, eps=eps))
  adv_BxK = jnp.stack(adv_columns, axis=1)
  adv_BxT = pg.per_turn_advantages(adv_BxK, turn_BxT)
  pg_loss_BxT = pg.policy_gradient_loss(logp_BxT, adv_BxT, mask_BxT)
  if is_weights_BxT is not None:
    pg_loss_BxT = pg_loss_BxT * jax.lax.stop_gradient(is_weights_BxT)

  def reduced(x_BxT):
    return reduce_lib.reduce(x_BxT, mask_BxT, reduction, constant=constant)

  loss = reduced(pg_loss_BxT + kl_loss_BxT)
  metrics = {"loss": loss, "pg_loss": reduced(pg_loss_BxT), "kl_loss": reduced(kl_loss_BxT)}
  for k, m in enumerate(turn_masks):
    metrics[f"kl/turn{k + 1}"] = _masked_mean(kl_BxT, m)
    metrics[f"tokens/turn{k + 1}"] = jnp.sum(m) / batch
    metrics[f"return/turn{k + 1}"] = jnp.mean(adjusted_BxK[:, k])
    metrics[f"advantage_abs/turn{k + 1}"] = jnp.mean(jnp.abs(adv_BxK[:, k]))
  return loss, jax.lax.stop_gradient(metrics)


def _reward_metrics(r1_B, r2_B):
  r1_B = jnp.asarray(r1_B, jnp.float32)
  r2_B = jnp.asarray(r2_B, jnp.float32)
  return {
      "reward/t1": jnp.mean(r1_B),
      "reward/t2": jnp.mean(r2_B),
      "reward/delta": jnp.mean(r2_B - r1_B),
      "flip/i_to_c": jnp.mean((r2_B > r1_B).astype(jnp.float32)),
      "flip/c_to_i": jnp.mean((r2_B < r1_B).astype(jnp.float32)),
  }


def stage1_objective(logp_BxT, ref_logp_BxT, turn_mask_BxT, r1_B, r2_B, *, group_size,
                     advantage="rloo", beta1=0.01, beta2=0.1, kl_estimator="k2",
                     kl_placement="loss", reduction="sequence", constant=None, eps=1e-6,
                     is_weights_BxT=None):
  """SCoRe Stage I loss: reward on the second attempt only, β2 KL on first-attempt tokens.

  ``loss = reduce( −A(r2)·log π on turn 2  +  β2·KL on turn 1  +  β1·KL on turn 2 )``.
  Turn-1 tokens receive no reward gradient: with ``β2 = 0`` (or ``"reward"`` placement and
  ``β2 = 0``) their gradient is exactly zero. ``r1_B`` is only used for metrics.
  Paper defaults: β1 = 0.01, β2 = 10·β1 (MATH: 0.1; code: 0.25). See
  ``multi_turn_objective`` for the other arguments. Returns ``(loss, metrics)``.
  """
  r2_B = jnp.asarray(r2_B, jnp.float32)
  returns_BxK = jnp.stack([jnp.zeros_like(r2_B), r2_B], axis=1)
  loss, metrics = multi_turn_objective(
      logp_BxT, ref_logp_BxT, turn_mask_BxT, returns_BxK, (beta2, beta1),
      group_size=group_size, credited_K=(False, True), advantage=advantage,
      kl_estimator=kl_estimator, kl_placement=kl_placement, reduction=reduction,
      constant=constant, eps=eps, is_weights_BxT=is_weights_BxT)
  metrics = dict(metrics, **jax.lax.stop_gradient(_reward_metrics(r1_B, r2_B)))
  return loss, metrics


def stage2_objective(logp_BxT, ref_logp_BxT, turn_mask_BxT, r1_B, r2_B, *, group_size,
                     advantage="rloo", alpha=10.0, beta1=0.01, kl_estimator="k2",
                     kl_placement="loss", reduction="sequence", constant=None, eps=1e-6,
                     is_weights_BxT=None):
  """SCoRe Stage II loss: both attempts rewarded, shaped bonus on the second, β1 KL on both.

  ``loss = reduce( −A(r1)·log π on turn 1  −  A(r2 + α(r2 − r1))·log π on turn 2
  + β1·KL on both turns )``, advantages computed per turn over the G samples of a prompt.
  The bonus ``α(r2 − r1)`` enters only the turn-2 advantage: turn-1 gradients do not depend
  on α. Paper defaults: α = 10, β1 = 0.01. Returns ``(loss, metrics)``.
  """
  r1_B, shaped_r2_B = shaped_rewards(
      jnp.asarray(r1_B, jnp.float32), jnp.asarray(r2_B, jnp.float32), alpha)
  returns_BxK = jnp.stack([r1_B, shaped_r2_B], axis=1)
  loss, metrics = multi_turn_objective(
      logp_BxT, ref_logp_BxT, turn_mask_BxT, returns_BxK, (beta1, beta1),
      group_size=group_size, advantage=advantage, kl_estimator=kl_estimator,
      kl_placement=kl_placement, reduction=reduction, constant=constant, eps=eps,
      is_weights_BxT=is_weights_BxT)
  extra = _reward_metrics(r1_B, r2_B)
  extra["reward/t2_shaped"] = jnp.mean(shaped_r2_B)
  metrics = dict(metrics, **jax.lax.stop_gradient(extra))
  return loss, metrics


def turn_mask_from_masks(mask1_BxT, mask2_BxT):
  """Builds ``turn_mask_BxT`` (1 on turn-1 tokens, 2 on turn-2 tokens, 0 elsewhere) from two
  disjoint per-turn loss masks over the same sequence (or over two sequences concatenated
  along time with ``jnp.concatenate([a_BxT1, b_BxT2], axis=1)``)."""
  m1 = jnp.asarray(mask1_BxT) > 0
  m2 = jnp.asarray(mask2_BxT) > 0
  return jnp.where(m2, 2, jnp.where(m1, 1, 0)).astype(jnp.int32)
