"""Reward shaping terms for reasoning RL: length penalties and the no-EOS penalty.

Each function returns a per-sample reward term to *add* to the task reward (except
``replace_unfinished``, which overrides it). All are pure, jit-able and NaN-free.
"""

from __future__ import annotations

import jax.numpy as jnp


def kimi_length_penalty(lengths_BxG, correct_BxG):
  """Kimi k1.5 group length reward (Kimi Team 2025, arXiv 2501.12599).

  Within each group of G responses to one prompt::

      λ_i = 0.5 − (len_i − min_len) / (max_len − min_len)
      term_i = λ_i if correct_i else min(0, λ_i)

  so short correct answers gain up to +0.5, long ones lose up to −0.5, and wrong answers are
  only ever penalised. A group whose lengths are all equal gets 0 (not NaN).
  """
  lengths_BxG = jnp.asarray(lengths_BxG, jnp.float32)
  min_Bx1 = jnp.min(lengths_BxG, axis=1, keepdims=True)
  max_Bx1 = jnp.max(lengths_BxG, axis=1, keepdims=True)
  span_Bx1 = max_Bx1 - min_Bx1
  lam_BxG = 0.5 - (lengths_BxG - min_Bx1) / jnp.where(span_Bx1 > 0, span_Bx1, 1.0)
  lam_BxG = jnp.where(span_Bx1 > 0, lam_BxG, 0.0)
  return jnp.where(jnp.asarray(correct_BxG) > 0, lam_BxG, jnp.minimum(0.0, lam_BxG))


def dapo_overlong_penalty(lengths, max_len, cache_len):
  """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476)::

      0                                   if |y| ≤ L_max − L_cache
      ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
      −1                                  if |y| > L_max

  The middle piece falls linearly from 0 to −1 over the last ``cache_len`` tokens.
  """
  if cache_len <= 0:
    raise ValueError(f"dapo_overlong_penalty: cache_len must be > 0, got {cache_len}.")
  if cache_len > max_len:
    raise ValueError(
        f"dapo_overlong_penalty: cache_len ({cache_len}) must not exceed max_len ({max_len}).")
  lengths = jnp.asarray(lengths, jnp.float32)
  expected = max_len - cache_len
  soft = (expected - lengths) / cache_len
  return jnp.where(lengths <= expected, 0.0, jnp.where(lengths <= max_len, soft, -1.0))


def no_eos_penalty(finished, penalty=-10.0):
  """Additive penalty for responses that did not end with EOS: ``0`` if finished else
  ``penalty`` (Tülu 3 RLVR, Lambert et al. 2024, arXiv 2411.15124: −10)."""
  return jnp.where(jnp.asarray(finished) > 0, 0.0, jnp.asarray(penalty, jnp.float32))


def replace_unfinished(rewards, finished, value=-10.0):
  """Replaces the reward of unfinished responses by ``value`` (open-instruct's
  ``non_stop_penalty``, which overrides rather than adds)."""
  rewards = jnp.asarray(rewards, jnp.float32)
  return jnp.where(jnp.asarray(finished) > 0, rewards, jnp.asarray(value, rewards.dtype))
