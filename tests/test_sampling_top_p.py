"""`top_p_filter` (bisection on probability bits, no sort) against a sorted numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.sampling.filters import NEG_INF, top_p_filter


def _reference_keep(logits_BxV, p):
  """The definition, in float64: sort by probability, keep token (j) iff the mass before it
  is < p; ties with the smallest kept probability stay too. Also returns the tokens whose
  mass above lies within 1e-5 of p, where fp32 sums may decide either way."""
  z = logits_BxV.astype(np.float64)
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  keep = np.zeros(probs.shape, bool)
  near = np.zeros(probs.shape, bool)
  for b, row in enumerate(probs):
    order = np.argsort(-row, kind="stable")
    before = np.cumsum(row[order]) - row[order]
    kept = row[order][before < p]
    keep[b] = row >= kept.min() if len(kept) else np.zeros_like(row, bool)
    above = np.array([row[row > q].sum() for q in row]) if len(row) < 2000 else None
    if above is None:  # the same, by sorting: mass strictly above each value
      srt = np.sort(row)[::-1]
      csum = np.concatenate([[0.0], np.cumsum(srt)])
      above = csum[np.searchsorted(-srt, -row, side="left")]
    near[b] = np.abs(above - p) < 1e-5
  return keep, near


@pytest.mark.parametrize("vocab", [7, 1000, 32000])
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_what_the_sorted_definition_keeps(vocab, p):
  logits = np.array(3 * jax.random.normal(jax.random.key(vocab), (4, vocab)), np.float32)
  logits[1, :5] = logits[1].max() + 1.0  # a tie group at the top
  logits[2] = np.round(logits[2])  # many ties everywhere
  got = np.asarray(jax.jit(top_p_filter)(jnp.asarray(logits), p)) > NEG_INF / 2
  want, near = _reference_keep(logits, p)
  np.testing.assert_array_equal(got[~near], want[~near])
  assert near.mean() < 0.01  # the rounding band is a thin slice of the vocabulary
  assert got.any(axis=-1).all()  # the most likely token always stays


def test_top_p_edges():
  logits = jnp.asarray([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
  assert bool(jnp.all(top_p_filter(logits, 1.0) == logits))  # p >= 1 keeps everything
  one_hot = jnp.asarray([[0.0, 100.0, 0.0]])  # one token holds all the mass
  np.testing.assert_array_equal(np.asarray(top_p_filter(one_hot, 0.9))[0, 1], 100.0)
  assert int(jnp.sum(top_p_filter(one_hot, 0.9) > NEG_INF / 2)) == 1
  # A traced p (the sampler passes it as an array).
  kept = jax.jit(lambda x, p: top_p_filter(x, p))(logits, jnp.float32(0.5))
  assert int(jnp.sum(kept[0] > NEG_INF / 2)) == 1 and int(jnp.sum(kept[1] > NEG_INF / 2)) == 3
