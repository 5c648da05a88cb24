"""score.losses.reduce against numpy references written out by hand."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.losses import reduce as reduce_lib


def ragged_mask(rng, batch, time, *, allow_empty=True):
  """Mask with a random start and random length per row (some rows empty)."""
  mask = np.zeros((batch, time), np.float32)
  for b in range(batch):
    length = rng.integers(0 if allow_empty else 1, time + 1)
    start = rng.integers(0, time - length + 1)
    mask[b, start:start + length] = 1.0
  return mask


def np_reduce(values, mask, mode, constant=None):
  values = np.asarray(values, np.float64)
  mask = np.asarray(mask, np.float64)
  if mode == "token":
    return (values * mask).sum() / max(mask.sum(), 1.0)
  if mode == "sequence":
    per_seq = [(values[b] * mask[b]).sum() / mask[b].sum() for b in range(len(values))
               if mask[b].sum() > 0]
    return float(np.mean(per_seq)) if per_seq else 0.0
  if mode == "constant":
    c = values.shape[1] if constant is None else constant
    return float(np.mean([(values[b] * mask[b]).sum() / c for b in range(len(values))]))
  raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["token", "sequence", "constant"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy(variant, mode, seed):
  rng = np.random.default_rng(seed)
  values = rng.normal(size=(5, 7)).astype(np.float32)
  mask = ragged_mask(rng, 5, 7)
  mask[0] = 0.0  # at least one empty row
  got = variant(reduce_lib.reduce, mode=mode)(values, mask)
  np.testing.assert_allclose(got, np_reduce(values, mask, mode), rtol=1e-5, atol=1e-6)


def test_constant_uses_given_normaliser(variant):
  rng = np.random.default_rng(3)
  values = rng.normal(size=(4, 6)).astype(np.float32)
  mask = ragged_mask(rng, 4, 6)
  got = variant(reduce_lib.reduce, mode="constant", constant=10.0)(values, mask)
  np.testing.assert_allclose(got, np_reduce(values, mask, "constant", 10.0), rtol=1e-5, atol=1e-6)


def test_modes_differ_on_ragged_input():
  # Hand-worked: row 0 has tokens [1, 3] (mean 2), row 1 has [6] (mean 6).
  values = jnp.array([[1.0, 3.0, 0.0], [6.0, 100.0, 100.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  assert float(reduce_lib.reduce(values, mask, "token")) == pytest.approx(10.0 / 3.0)
  assert float(reduce_lib.reduce(values, mask, "sequence")) == pytest.approx(4.0)
  assert float(reduce_lib.reduce(values, mask, "constant")) == pytest.approx(10.0 / 6.0)


@pytest.mark.parametrize("mode", ["token", "sequence", "constant"])
def test_empty_masks_give_zero_and_finite_grads(mode):
  values = jnp.array([[1.0, jnp.inf], [2.0, 3.0]])
  empty = jnp.zeros((2, 2))
  assert float(reduce_lib.reduce(values, empty, mode)) == 0.0
  grad = jax.grad(lambda v: reduce_lib.reduce(v, empty, mode))(values)
  assert np.all(np.isfinite(grad)) and np.all(grad == 0.0)


def test_masked_inf_does_not_leak():
  values = jnp.array([[1.0, jnp.inf, jnp.nan]])
  mask = jnp.array([[1, 0, 0]])
  for mode in ("token", "sequence", "constant"):
    assert np.isfinite(float(reduce_lib.reduce(values, mask, mode)))


def test_sequence_mode_gradient_weights():
  # d/dv of the sequence mean is mask / (len_b · number of non-empty rows).
  mask = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
  grad = jax.grad(lambda v: reduce_lib.reduce(v, mask, "sequence"))(jnp.ones((3, 4)))
  expected = np.array([[0.25, 0.25, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_sum_and_count():
  values = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  mask = jnp.array([[1, 0], [1, 1]])
  total, count = reduce_lib.sum_and_count(values, mask)
  assert float(total) == 8.0 and float(count) == 3.0


def test_errors_are_explicit():
  with pytest.raises(ValueError, match="unknown mode"):
    reduce_lib.reduce(jnp.ones((2, 2)), jnp.ones((2, 2)), "tokens")
  with pytest.raises(ValueError, match="same"):
    reduce_lib.reduce(jnp.ones((2, 2)), jnp.ones((2, 3)), "token")
