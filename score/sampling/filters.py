"""Logit filters for sampling: temperature, top-k, nucleus (top-p).

Every filter maps `logits_BxV -> logits_BxV`, replacing removed entries with `-inf`, so the
sampling distribution is `softmax(filtered logits)`, i.e. the model distribution
renormalised over the kept tokens:

    p_filtered(v) = p(v) · 1[v ∈ keep] / Σ_{u ∈ keep} p(u).

Order (as in `transformers`' `generate`): temperature first, then top-k, then top-p, so the
nucleus is computed on the tempered, top-k-truncated distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_temperature(logits_BxV: jax.Array, temperature: float | jax.Array) -> jax.Array:
  """`logits / temperature` (temperature > 0; greedy decoding does not call this)."""
  return logits_BxV / jnp.asarray(temperature, logits_BxV.dtype)


def top_k_filter(logits_BxV: jax.Array, k: int) -> jax.Array:
  """Keeps the `k` largest logits per row (and any tied with the k-th), sets the rest to -inf.

  `k` is a static Python int (it fixes the shape of `lax.top_k`); `k >= V` is a no-op.
  """
  vocab = logits_BxV.shape[-1]
  if k <= 0:
    raise ValueError(f"top_k_filter: k must be a positive int, got {k}")
  if k >= vocab:
    return logits_BxV
  kth_B1 = jax.lax.top_k(logits_BxV, k)[0][..., -1:]
  return jnp.where(logits_BxV < kth_B1, NEG_INF, logits_BxV)


def top_p_filter(logits_BxV: jax.Array, p: float | jax.Array) -> jax.Array:
  """Nucleus filter (Holtzman et al., 2020): keeps the smallest set of most likely tokens
  whose probability mass reaches `p`.

  With tokens sorted by decreasing probability p_(1) ≥ p_(2) ≥ …, token (j) is kept iff
  Σ_{i<j} p_(i) < p, so the most likely token is always kept and the kept mass is ≥ p.
  Ties at the boundary are kept together (the threshold is a probability value). `p >= 1`
  keeps everything. `p` may be a traced scalar.

  No sort: the threshold is the smallest probability t with (mass of the tokens above t) < p,
  found by bisection on the bit patterns of the fp32 probabilities (which order like the
  values for non-negative floats): 31 masked sums over V, exact — each step halves an integer
  interval of at most 2^30 — and 11–19× faster than sorting the vocabulary at every decode
  step (measured on the 2-core CPU VM, batch 8: 4.6 vs 87 ms at V = 32,000, 42 vs 477 ms at
  V = 151,936). It differs from the sorted cumulative sum only through the rounding of
  the sums, i.e. for a mass within float rounding of `p`.
  """
  probs_BxV = jax.nn.softmax(logits_BxV.astype(jnp.float32), axis=-1)
  bits_BxV = jax.lax.bitcast_convert_type(probs_BxV, jnp.int32)
  one = jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32)
  # Invariant: the answer τ (smallest with mass_above(τ) < p) lies in [lo, hi].
  lo_Bx1 = jnp.zeros(probs_BxV.shape[:-1] + (1,), jnp.int32)
  hi_Bx1 = jnp.full_like(lo_Bx1, one)  # nothing lies above 1.0

  def halve(_, bounds):
    lo_Bx1, hi_Bx1 = bounds
    mid_Bx1 = lo_Bx1 + (hi_Bx1 - lo_Bx1) // 2
    above_Bx1 = jnp.sum(jnp.where(bits_BxV > mid_Bx1, probs_BxV, 0.0), axis=-1, keepdims=True)
    ok_Bx1 = above_Bx1 < p
    return jnp.where(ok_Bx1, lo_Bx1, mid_Bx1 + 1), jnp.where(ok_Bx1, mid_Bx1, hi_Bx1)

  _, tau_Bx1 = jax.lax.fori_loop(0, 31, halve, (lo_Bx1, hi_Bx1))
  # Smallest probability at or above τ = the smallest kept one; everything at or above stays.
  threshold_Bx1 = jnp.min(jnp.where(bits_BxV >= tau_Bx1, probs_BxV, jnp.inf), axis=-1,
                          keepdims=True)
  keep_BxV = (probs_BxV >= threshold_Bx1) | (jnp.asarray(p) >= 1.0)
  return jnp.where(keep_BxV, logits_BxV, NEG_INF)


def filter_logits(
    logits_BxV: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
) -> jax.Array:
  """Temperature, then top-k, then top-p. `None` disables a filter."""
  logits_BxV = apply_temperature(logits_BxV.astype(jnp.float32), temperature)
  if top_k is not None:
    logits_BxV = top_k_filter(logits_BxV, top_k)
  if top_p is not None:
    logits_BxV = top_p_filter(logits_BxV, top_p)
  return logits_BxV


def sample_token(
    rng: jax.Array,
    logits_BxV: jax.Array,
    *,
    greedy: bool | jax.Array,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row.

  Returns `(token_B, sample_logp_B)`, where `sample_logp_B` is the log-probability of the
  drawn token under the *sampling* distribution (tempered and filtered); it is 0 for greedy
  decoding (a point mass). Ties in greedy decoding go to the lowest id, like `torch.argmax`.

  `greedy` may be a Python bool (the other branch is not traced) or a traced boolean
  scalar (both branches are compiled, `lax.cond` runs one, so greedy and sampled calls
  share one compilation; `temperature` must then be > 0 even when greedy, e.g. 1).
  """
  logits_BxV = logits_BxV.astype(jnp.float32)

  def greedy_fn(logits_BxV):
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return token_B, jnp.zeros(token_B.shape, jnp.float32)

  def sample_fn(logits_BxV):
    filtered_BxV = filter_logits(
        logits_BxV, temperature=temperature, top_k=top_k, top_p=top_p
    )
    token_B = jax.random.categorical(rng, filtered_BxV, axis=-1).astype(jnp.int32)
    logp_BxV = jax.nn.log_softmax(filtered_BxV, axis=-1)
    return token_B, jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]

  if isinstance(greedy, bool):
    return greedy_fn(logits_BxV) if greedy else sample_fn(logits_BxV)
  # Traced flag: `lax.cond` runs only the selected branch.
  return jax.lax.cond(jnp.asarray(greedy), greedy_fn, sample_fn, logits_BxV)
