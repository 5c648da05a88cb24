"""Shared test set-up: 8 virtual CPU devices so sharding tests run on one machine."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import functools  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(params=["eager", "jit"])
def variant(request):
  """Runs a function as it is and under `jax.jit` (static keyword arguments bound first)."""
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS is set above)

  def wrap(fn, **static):
    fn = functools.partial(fn, **static)
    return jax.jit(fn) if request.param == "jit" else fn
  return wrap


def per_layer_layout(flat):
  """Flat params (`Policy.split`'s keys) in the layout checkpoints had before the decoder
  blocks were stacked: each `...['layers']...` array [L, ...] as L arrays `...['layers'][i]...`."""
  out = {}
  for key, value in flat.items():
    head, sep, tail = key.partition("['layers']")
    if sep:
      out.update({f"{head}{sep}[{i}]{tail}": value[i] for i in range(value.shape[0])})
    else:
      out[key] = value
  return out
