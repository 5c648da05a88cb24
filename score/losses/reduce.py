"""Named reductions of masked per-token values to a scalar.

The trainer picks the reduction by name (configs say ``reduction="token"``), so the choice
between the GRPO, DAPO and Dr. GRPO normalisations is a config override, not a code edit:

* ``"token"``    -- ``sum_bt v·m / sum_bt m``: every valid token of the batch weighs the same
  (DAPO, Yu et al. 2025, arXiv 2503.14476, "token-level policy gradient loss").
* ``"sequence"`` -- ``mean_b [ sum_t v·m / sum_t m ]``: average over each sequence's valid
  tokens, then over sequences (GRPO, Shao et al. 2024, arXiv 2402.03300). Sequences with no
  valid token are left out of the outer mean; if every sequence is empty the result is 0.
* ``"constant"`` -- ``mean_b [ sum_t v·m / C ]`` = ``sum_bt v·m / (B·C)`` with a fixed
  normaliser ``C`` (default: ``T``, the padded length), so the loss does not depend on response
  lengths (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783).

No reduction divides by zero: empty masks give 0, never NaN, and the gradient is finite too.
"""

from __future__ import annotations

import jax.numpy as jnp

MODES = ("token", "sequence", "constant")


def sum_and_count(values_BxT, mask_BxT):
  """Returns ``(sum_bt values·mask, sum_bt mask)`` -- the parts of a ``"token"`` mean.

  Useful for gradient accumulation over micro-batches, where the numerators and
  denominators must be summed before dividing (tunix returns losses this way).
  """
  mask_BxT = jnp.asarray(mask_BxT, jnp.result_type(values_BxT))
  return jnp.sum(values_BxT * mask_BxT), jnp.sum(mask_BxT)


def _check_shapes(values_BxT, mask_BxT):
  if jnp.shape(values_BxT) != jnp.shape(mask_BxT):
    raise ValueError(
        f"reduce: values_BxT has shape {jnp.shape(values_BxT)} but mask_BxT has shape "
        f"{jnp.shape(mask_BxT)}; expected the same [batch, time] shape for both.")
  if jnp.ndim(values_BxT) != 2:
    raise ValueError(
        f"reduce: expected 2-D [batch, time] arrays, got shape {jnp.shape(values_BxT)}.")


def reduce(values_BxT, mask_BxT, mode, *, constant=None):
  """Reduces masked per-token ``values_BxT`` to a scalar with the named ``mode``.

  Args:
    values_BxT: per-token values (e.g. an unreduced loss), float ``[B, T]``.
    mask_BxT: 1 (or True) where a token counts, 0 elsewhere, ``[B, T]``.
    mode: ``"token"``, ``"sequence"`` or ``"constant"`` (see the module docstring).
    constant: the fixed per-sequence normaliser ``C`` of ``"constant"`` mode; defaults to
      ``T``. Ignored by the other modes.

  Returns:
    A scalar. Values under ``mask == 0`` never contribute (even if they are NaN-free but
    huge), and an all-zero mask gives 0.
  """
  _check_shapes(values_BxT, mask_BxT)
  dtype = jnp.result_type(values_BxT, jnp.float32)
  values_BxT = jnp.asarray(values_BxT, dtype)
  mask_BxT = jnp.asarray(mask_BxT, dtype)
  # `where` (not just a product) so that Inf/NaN under the mask cannot leak through 0·Inf.
  masked_BxT = jnp.where(mask_BxT > 0, values_BxT * mask_BxT, 0.0)
  if mode == "token":
    count = jnp.sum(mask_BxT)
    return jnp.sum(masked_BxT) / jnp.maximum(count, 1.0)
  if mode == "sequence":
    count_B = jnp.sum(mask_BxT, axis=1)
    has_tokens_B = (count_B > 0).astype(dtype)
    per_seq_B = jnp.sum(masked_BxT, axis=1) / jnp.maximum(count_B, 1.0)
    return jnp.sum(per_seq_B * has_tokens_B) / jnp.maximum(jnp.sum(has_tokens_B), 1.0)
  if mode == "constant":
    batch, time = values_BxT.shape
    constant = time if constant is None else constant
    return jnp.sum(masked_BxT) / (batch * jnp.asarray(constant, dtype))
  raise ValueError(f"reduce: unknown mode {mode!r}; expected one of {MODES}.")
