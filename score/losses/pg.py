"""Advantage estimators and the policy-gradient loss (REINFORCE family).

Policy gradient (Williams 1992): ``∇J = E[ ∇ log π(y|x) · (R − b) ]`` with a baseline ``b``
that does not depend on ``y``. Estimators, picked by name from ``ADVANTAGES``, act on
``rewards_BxG`` -- B prompts × G samples per prompt -- and return ``advantages_BxG``:

* ``"reinforce"``: ``A = r − b`` with ``b`` the mean reward of the whole batch (all B·G), or
  a baseline passed in (e.g. an EMA kept by the trainer, see ``ema_baseline``).
* ``"rloo"``: leave-one-out, ``A_i = r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean_j r_j)``
  (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
  2024, arXiv 2402.14740). Needs G ≥ 2.
* ``"grpo"``: ``A_i = (r_i − mean r) / (σ + eps)`` with the group mean (DeepSeekMath, Shao
  et al. 2024, arXiv 2402.03300). ``σ`` is chosen by name: ``scale`` in ``SCALES`` --
  ``"group"`` (the std of the group's rewards), ``"batch"`` (the std of all B·G rewards, TRL's
  ``scale_rewards="batch"``), ``"none"`` (σ = 1, no ``eps``: Dr. GRPO's advantage); ``std``
  in ``STDS`` -- ``"sample"`` (Bessel-corrected, ``ddof=1``: TRL's GRPO trainer and verl's
  ``compute_grpo_outcome_advantage``, both ``torch.std``) or ``"population"`` (``ddof=0``,
  ``jnp.std``: this library before issue #24). They differ by ``√(G/(G−1))`` (1.15 at G = 4).
  ``eps`` is added to σ; TRL adds 1e-4, verl 1e-6 (the default here).
* ``"dr_grpo"``: ``A_i = r_i − mean r`` (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783).

Groups whose rewards are all equal get advantage exactly 0 (never NaN). Every estimator
returns ``stop_gradient``-ed values: advantages are constants for the optimiser.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _check_2d(name, rewards_BxG):
  if jnp.ndim(rewards_BxG) != 2:
    raise ValueError(
        f"pg.{name}: expected rewards_BxG of shape [prompts, samples per prompt], got shape "
        f"{jnp.shape(rewards_BxG)}; reshape flat rewards with pg.group(rewards_B, G).")


def _float(x):
  return jnp.asarray(x, jnp.result_type(x, jnp.float32))


def _all_equal_G(rewards_BxG):
  """[B, 1] bool: True where every reward of the group is the same."""
  return jnp.max(rewards_BxG, axis=1, keepdims=True) == jnp.min(rewards_BxG, axis=1, keepdims=True)


def reinforce(rewards_BxG, *, baseline=None, eps=1e-6):
  """``A = r − b``; ``b`` = batch-mean reward (all B·G samples) unless ``baseline`` is given.

  ``baseline`` is any array broadcastable to ``rewards_BxG`` (a scalar EMA, or per-prompt
  ``[B, 1]`` values). ``eps`` is unused (kept for a uniform signature).
  """
  del eps
  _check_2d("reinforce", rewards_BxG)
  rewards_BxG = _float(rewards_BxG)
  b = jnp.mean(rewards_BxG) if baseline is None else jnp.asarray(baseline, rewards_BxG.dtype)
  return jax.lax.stop_gradient(rewards_BxG - b)


def rloo(rewards_BxG, *, eps=1e-6):
  """Leave-one-out: ``A_i = r_i − (Σ_j r_j − r_i) / (G − 1)``."""
  del eps
  _check_2d("rloo", rewards_BxG)
  group = rewards_BxG.shape[1]
  if group < 2:
    raise ValueError(f"pg.rloo: leave-one-out needs G >= 2 samples per prompt, got G={group}.")
  rewards_BxG = _float(rewards_BxG)
  loo_mean_BxG = (jnp.sum(rewards_BxG, axis=1, keepdims=True) - rewards_BxG) / (group - 1)
  adv_BxG = jnp.where(_all_equal_G(rewards_BxG), 0.0, rewards_BxG - loo_mean_BxG)
  return jax.lax.stop_gradient(adv_BxG)


# Degrees of freedom of the standard deviation, by name.
STDS: dict[str, int] = {"sample": 1, "population": 0}


def _std(x, axis, ddof):
  """``sqrt(Σ (x − mean)² / max(n − ddof, 1))``: 0 (not NaN) for a single value."""
  n = x.size if axis is None else x.shape[axis]
  dev = x - jnp.mean(x, axis=axis, keepdims=True)
  return jnp.sqrt(jnp.sum(jnp.square(dev), axis=axis, keepdims=True) / max(n - ddof, 1))


def _scale_group(rewards_BxG, ddof, eps):
  return _std(rewards_BxG, 1, ddof) + eps


def _scale_batch(rewards_BxG, ddof, eps):
  return _std(rewards_BxG, None, ddof) + eps


def _scale_none(rewards_BxG, ddof, eps):
  del rewards_BxG, ddof, eps
  return 1.0


# What GRPO divides the centred rewards by, by name: `fn(rewards_BxG, ddof, eps) -> σ + eps`.
SCALES: dict[str, Callable] = {"group": _scale_group, "batch": _scale_batch, "none": _scale_none}


def grpo(rewards_BxG, *, eps=1e-6, std="sample", scale="group"):
  """Group-normalised: ``A_i = (r_i − mean r) / (σ + eps)``; 0 for all-equal groups.

  ``std``: a name in ``STDS`` (``"sample"``, Bessel-corrected, as TRL and verl; or
  ``"population"``). ``scale``: a name in ``SCALES`` (``"group"``, ``"batch"``, ``"none"``).
  A group of one sample (G = 1) or of equal rewards gets advantage exactly 0.
  """
  _check_2d("grpo", rewards_BxG)
  if std not in STDS:
    raise ValueError(f"pg.grpo: unknown std {std!r}; expected one of {sorted(STDS)}.")
  if scale not in SCALES:
    raise ValueError(f"pg.grpo: unknown scale {scale!r}; expected one of {sorted(SCALES)}.")
  rewards_BxG = _float(rewards_BxG)
  mean_Bx1 = jnp.mean(rewards_BxG, axis=1, keepdims=True)
  sigma = SCALES[scale](rewards_BxG, STDS[std], eps)
  adv_BxG = jnp.where(_all_equal_G(rewards_BxG), 0.0, (rewards_BxG - mean_Bx1) / sigma)
  return jax.lax.stop_gradient(adv_BxG)


def dr_grpo(rewards_BxG, *, eps=1e-6):
  """Group-centred without std normalisation: ``A_i = r_i − mean r``."""
  del eps
  _check_2d("dr_grpo", rewards_BxG)
  rewards_BxG = _float(rewards_BxG)
  mean_Bx1 = jnp.mean(rewards_BxG, axis=1, keepdims=True)
  adv_BxG = jnp.where(_all_equal_G(rewards_BxG), 0.0, rewards_BxG - mean_Bx1)
  return jax.lax.stop_gradient(adv_BxG)


ADVANTAGES: dict[str, Callable] = {
    "reinforce": reinforce,
    "rloo": rloo,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
}


def advantages(rewards_BxG, kind, *, eps=1e-6, baseline=None, **options):
  """Advantages by name: ``ADVANTAGES[kind](rewards_BxG)`` -> ``advantages_BxG`` (constants).

  ``baseline`` is only meaningful for ``"reinforce"`` (an explicit baseline such as an EMA
  state, see ``ema_baseline``); passing it with another kind is an error. ``options`` go to
  the estimator (``"grpo"``: ``std``, ``scale``); an option it does not take is an error.
  """
  try:
    fn = ADVANTAGES[kind]
  except KeyError:
    raise ValueError(
        f"pg.advantages: unknown kind {kind!r}; expected one of {sorted(ADVANTAGES)}.") from None
  if baseline is not None:
    if kind != "reinforce":
      raise ValueError(
          f"pg.advantages: a baseline was passed with kind={kind!r}; only 'reinforce' takes "
          "an explicit baseline (the group estimators compute their own).")
    return fn(rewards_BxG, baseline=baseline, eps=eps, **options)
  if options and kind != "grpo":
    raise ValueError(f"pg.advantages: options {sorted(options)} are for kind='grpo', "
                     f"got kind={kind!r}.")
  return fn(rewards_BxG, eps=eps, **options)


def ema_baseline(baseline, rewards, *, decay=0.9):
  """EMA baseline update, state in / state out: returns ``decay·b + (1 − decay)·mean(r)``.

  ``baseline=None`` starts the average at the current mean reward. Use the *old* state as
  the ``baseline`` of ``advantages(..., "reinforce", baseline=...)`` so that the baseline
  does not depend on the sample it is subtracted from, then carry the new state forward.
  """
  mean = jnp.mean(_float(rewards))
  if baseline is None:
    return jax.lax.stop_gradient(mean)
  return jax.lax.stop_gradient(decay * jnp.asarray(baseline, mean.dtype) + (1.0 - decay) * mean)


def group(rewards_B, group_size):
  """Reshapes flat per-sample rewards ``[B·G]`` -> ``[B, G]``.

  Samples of one prompt must be contiguous: flat index ``b·G + g`` is sample ``g`` of prompt
  ``b`` (the layout of ``jnp.repeat(prompts, G, axis=0)``).
  """
  n = jnp.shape(rewards_B)[0]
  if group_size < 1 or n % group_size:
    raise ValueError(
        f"pg.group: {n} samples cannot be split into groups of {group_size}; the batch must "
        "hold a whole number of groups of G samples per prompt.")
  return jnp.reshape(rewards_B, (n // group_size, group_size))


def flat_advantages(rewards_B, group_size, kind, *, eps=1e-6, baseline=None, **options):
  """``advantages`` on flat per-sample rewards grouped by ``group``; returns ``[B·G]``."""
  adv_BxG = advantages(group(rewards_B, group_size), kind, eps=eps, baseline=baseline,
                       **options)
  return jnp.reshape(adv_BxG, (-1,))


def per_turn_advantages(adv_BxK, turn_mask_BxT):
  """Broadcasts per-turn advantages (or returns) to the tokens of their own turn.

  Args:
    adv_BxK: one value per sample and turn, turn ``k`` (1-based) in column ``k − 1``.
    turn_mask_BxT: int ``[B, T]``; 0 = not trainable (prompt, instruction, padding),
      ``k`` = a token generated in turn ``k``.

  Returns:
    ``adv_BxT`` with ``adv_BxT[b, t] = adv_BxK[b, turn_mask[b, t] − 1]`` on turn tokens and 0
    elsewhere (also 0 for turn numbers above K). A token is credited with its own turn's
    value only -- no credit flows across turns (SCoRe, Kumar et al. 2024, arXiv 2409.12917).
  """
  if jnp.ndim(adv_BxK) != 2 or jnp.ndim(turn_mask_BxT) != 2:
    raise ValueError(
        f"pg.per_turn_advantages: expected adv_BxK [B, K] and turn_mask_BxT [B, T], got shapes "
        f"{jnp.shape(adv_BxK)} and {jnp.shape(turn_mask_BxT)}.")
  if jnp.shape(adv_BxK)[0] != jnp.shape(turn_mask_BxT)[0]:
    raise ValueError(
        f"pg.per_turn_advantages: batch sizes differ: adv_BxK {jnp.shape(adv_BxK)} vs "
        f"turn_mask_BxT {jnp.shape(turn_mask_BxT)}.")
  num_turns = adv_BxK.shape[1]
  turn_BxT = jnp.asarray(turn_mask_BxT, jnp.int32)
  index_BxT = jnp.clip(turn_BxT - 1, 0, num_turns - 1)
  gathered_BxT = jnp.take_along_axis(adv_BxK, index_BxT, axis=1)
  valid_BxT = (turn_BxT >= 1) & (turn_BxT <= num_turns)
  return jnp.where(valid_BxT, gathered_BxT, jnp.zeros((), gathered_BxT.dtype))


def policy_gradient_loss(logp_BxT, advantages_BxT, mask_BxT):
  """Unreduced REINFORCE loss per token: ``−sg(A_t) · log π(y_t | ·) · mask_t``.

  Its gradient is ``−A_t ∇ log π`` on valid tokens and exactly 0 elsewhere; advantages are
  stop-gradiented here too, so a caller cannot leak a gradient through them by mistake.
  Reduce with ``score.losses.reduce.reduce``.
  """
  adv_BxT = jax.lax.stop_gradient(advantages_BxT)
  return jnp.where(mask_BxT > 0, -adv_BxT * logp_BxT * mask_BxT, 0.0)
