"""Masked token cross-entropy for supervised fine-tuning (STaR, Pair-SFT, warm-up).

Token alignment follows ``docs/DESIGN.md``: ``logp_BxL[b, t] = log p(tokens[b, t] |
tokens[b, :t])`` with position 0 holding 0, and ``mask_BxL[b, t] = 1`` on the tokens the loss
may touch (responses; prompt tokens and padding are 0). Losses are unreduced per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logp_BxT, mask_BxT):
  """Per-token negative log-likelihood ``−log p(y_t) · mask_t`` (0 where ``mask == 0``)."""
  return jnp.where(jnp.asarray(mask_BxT) > 0, -logp_BxT * mask_BxT, 0.0)


def token_logprobs_from_logits(logits_BxLxV, tokens_BxL):
  """``logp_BxL[b, t] = log softmax(logits[b, t − 1])[tokens[b, t]]``; ``logp[:, 0] = 0``.

  ``logits_BxLxV[b, t]`` predicts token ``t + 1`` (causal LM). Computed in float32. This
  materialises the ``[B, L, V]`` log-softmax: fine for small vocabularies and tests; use
  ``score.models.token_logprobs`` (chunked) for large models.
  """
  if jnp.ndim(logits_BxLxV) != 3 or jnp.shape(logits_BxLxV)[:2] != jnp.shape(tokens_BxL):
    raise ValueError(
        f"token_logprobs_from_logits: logits_BxLxV {jnp.shape(logits_BxLxV)} does not match "
        f"tokens_BxL {jnp.shape(tokens_BxL)} (expected [B, L, V] and [B, L]).")
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32), axis=-1)
  targets_Bx1L = tokens_BxL[:, 1:, None]
  logp_BxL1 = jnp.take_along_axis(logp_BxLxV, targets_Bx1L, axis=-1)[..., 0]
  return jnp.pad(logp_BxL1, ((0, 0), (1, 0)))


def token_cross_entropy_from_logits(logits_BxLxV, tokens_BxL, mask_BxL):
  """Per-token NLL from next-token logits: ``−log softmax(logits[t − 1])[tokens[t]] · mask[t]``.

  Aligned with ``tokens_BxL`` (position 0 is always 0, since nothing predicts it).
  """
  return token_cross_entropy(token_logprobs_from_logits(logits_BxLxV, tokens_BxL), mask_BxL)
