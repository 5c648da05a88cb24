"""Logit filters: hand-worked cases and empirical frequencies vs the renormalised distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score.sampling import filters

PROBS = np.array([0.05, 0.4, 0.1, 0.25, 0.2], np.float64)  # Sorted: 1, 3, 4, 2, 0.
LOGITS = np.log(PROBS).astype(np.float32)[None]


def _kept(logits_BxV):
  return set(np.flatnonzero(np.isfinite(np.asarray(logits_BxV)[0])).tolist())


@pytest.mark.parametrize("k, expected", [(1, {1}), (2, {1, 3}), (3, {1, 3, 4}), (5, set(range(5)))])
def test_top_k_keeps_k_largest(k, expected):
  assert _kept(filters.top_k_filter(jnp.asarray(LOGITS), k)) == expected


def test_top_k_keeps_ties():
  logits = jnp.asarray([[1.0, 3.0, 2.0, 2.0, 0.0]])
  assert _kept(filters.top_k_filter(logits, 2)) == {1, 2, 3}


# Mass before each sorted token: 0, .4, .65, .85, .95; token kept iff that mass < p.
@pytest.mark.parametrize(
    "p, expected",
    [
        (0.1, {1}), (0.39, {1}), (0.41, {1, 3}), (0.7, {1, 3, 4}), (0.9, {1, 3, 4, 2}),
        (1.0, set(range(5))),
    ],
)
def test_top_p_smallest_set_reaching_p(p, expected):
  assert _kept(filters.top_p_filter(jnp.asarray(LOGITS), p)) == expected


def test_filter_order_temperature_then_top_k_then_top_p():
  # At temperature 2, probs ∝ sqrt(PROBS); top-k 3 keeps {1, 3, 4}; renormalised masses
  # ∝ sqrt(.4), sqrt(.25), sqrt(.2) = .632, .5, .447 → .40, .32, .28: p = .6 keeps {1, 3}.
  out = filters.filter_logits(jnp.asarray(LOGITS), temperature=2.0, top_k=3, top_p=0.6)
  assert _kept(out) == {1, 3}
  out = filters.filter_logits(jnp.asarray(LOGITS), temperature=2.0, top_k=3, top_p=0.75)
  assert _kept(out) == {1, 3, 4}


def _renormalised(probs, keep, temperature=1.0):
  q = np.where(np.isin(np.arange(len(probs)), list(keep)), probs ** (1 / temperature), 0.0)
  return q / q.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p, keep",
    [(1.0, 3, None, {1, 3, 4}), (1.0, None, 0.7, {1, 3, 4}), (0.7, 4, 0.9, None)],
)
def test_empirical_frequencies_chi_square(temperature, top_k, top_p, keep):
  n = 20_000
  if keep is None:  # Compute the kept set by hand for the combined case.
    q = _renormalised(PROBS, range(5), temperature)
    order = np.argsort(-q)[:top_k]
    q = _renormalised(PROBS, order, temperature)
    before = np.cumsum(q[order]) - q[order]
    keep = set(order[before < top_p].tolist())
  expected = _renormalised(PROBS, keep, temperature)
  logits_BxV = jnp.broadcast_to(jnp.asarray(LOGITS), (n, 5))
  tokens_B, slogp_B = filters.sample_token(
      jax.random.key(0), logits_BxV, greedy=False, temperature=temperature, top_k=top_k,
      top_p=top_p,
  )
  counts = np.bincount(np.asarray(tokens_B), minlength=5)
  assert set(np.flatnonzero(counts).tolist()) == keep
  idx = sorted(keep)
  chi2 = ((counts[idx] - n * expected[idx]) ** 2 / (n * expected[idx])).sum()
  assert chi2 < stats.chi2.ppf(0.999, df=len(idx) - 1), (counts, n * expected)
  # The returned sampling log-probs are those of the renormalised distribution.
  np.testing.assert_allclose(
      np.asarray(slogp_B), np.log(expected[np.asarray(tokens_B)]), rtol=1e-5, atol=1e-5
  )


def test_greedy_is_argmax_with_zero_sample_logprob():
  tokens_B, slogp_B = filters.sample_token(jax.random.key(0), jnp.asarray(LOGITS), greedy=True)
  assert tokens_B.tolist() == [1] and slogp_B.tolist() == [0.0]
