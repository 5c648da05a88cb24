"""`blocked_attend` (the flash-attention algorithm) against the dense kernel: values, gradients,
memory; the kernels by name; a model with each kernel."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from score.models import ModelConfig, Transformer, token_logprobs
from score.models import attention
from score.models.attention import allowed_mask, attend, blocked_attend
from score.models.config import FULL_ATTENTION, SLIDING_ATTENTION
from score.trainers import common
from score.utils import config as config_lib

SCALE = 0.35


def _inputs(*, batch, t, s, n, k, h=8, offset=0, pad=(0, 3), cache_layout=False, seed=0):
  """Random q, k, v; left padding of `pad[b]` slots in row b; queries in slots offset + t."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, t, n, h)).astype(np.float32)
  kv = rng.normal(size=(2, batch, s, k, h)).astype(np.float32)
  if cache_layout:
    kv = kv.swapaxes(2, 3)
  kv_mask = (np.arange(s)[None, :] >= np.asarray(pad[:batch])[:, None]).astype(np.int32)
  slots = np.broadcast_to(offset + np.arange(t, dtype=np.int32), (batch, t))
  return q, kv[0], kv[1], kv_mask, slots


def _dense(q, k, v, kv_mask, slots, _, *, window, **kw):
  """Today's kernel; the window is static (`allowed_mask` branches on it in Python)."""
  return attend(q, k, v, allowed_mask(kv_mask, slots, window), **kw)


@functools.partial(jax.jit, static_argnames=("fn", "kw"))
def _value_and_grads(q, k, v, kv_mask, slots, window, cotangent, *, fn, kw):
  """(output, (dq, dk, dv)) of fn, pulled back with a fixed random cotangent."""
  out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, kv_mask, slots, window, **dict(kw)),
                          q, k, v)
  return out, pullback(cotangent.astype(out.dtype))


def _run(kernel, q, k, v, kv_mask, slots, window, *, dtype=jnp.float32, softcap=None,
         cache_layout=False, **blocks):
  """(output, grads) of the "dense" or "blocked" kernel; the blocked one gets the window traced."""
  common = dict(scale=SCALE, softcap=softcap, dtype=dtype, cache_layout=cache_layout)
  q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
  cotangent = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32)
  if kernel == "dense":
    return _value_and_grads(q, k, v, kv_mask, slots, None, cotangent,
                            fn=functools.partial(_dense, window=window),
                            kw=tuple(common.items()))
  return _value_and_grads(q, k, v, kv_mask, slots, jnp.int32(window or 0), cotangent,
                          fn=blocked_attend, kw=tuple({**common, **blocks}.items()))


def _assert_close(got, want, atol):
  (out_g, grads_g), (out_w, grads_w) = got, want
  for name, g, w in zip(("out", "dq", "dk", "dv"), (out_g, *grads_g), (out_w, *grads_w)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=atol,
                               rtol=0, err_msg=name)


# Each case combines features, so that breaking any one of them fails at least one case.
CASES = {
    # T, S not multiples of the blocks; row 1 left-padded: its first 3 queries see no key.
    "causal_padding_gqa2": dict(batch=2, t=13, s=13, n=4, k=2, block_q=4, block_k=5),
    "window_gqa1": dict(batch=2, t=11, s=11, n=2, k=2, window=3, block_q=4, block_k=3),
    "softcap_gqa4": dict(batch=2, t=9, s=9, n=4, k=1, softcap=1.5, block_q=3, block_k=4),
    # Prefill of 5 queries into slots 7..11 of a 17-slot cache ([B, K, S, H]).
    "cache_prefill_window": dict(batch=2, t=5, s=17, n=4, k=2, offset=7, pad=(1, 5),
                                 cache_layout=True, window=3, block_q=2, block_k=4),
    # One decode step in slot 12 of a 17-slot cache, soft-capped.
    "cache_decode": dict(batch=2, t=1, s=17, n=4, k=2, offset=12, pad=(2, 9), cache_layout=True,
                         softcap=2.0, block_k=4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocked_matches_dense_fp32(case):
  kw = dict(CASES[case])
  shape = {name: kw.pop(name) for name in ("batch", "t", "s", "n", "k", "offset", "pad")
           if name in kw}
  q, k, v, kv_mask, slots = _inputs(cache_layout=kw.get("cache_layout", False), **shape)
  window = kw.pop("window", None)
  _assert_close(_run("blocked", q, k, v, kv_mask, slots, window, **kw),
                _run("dense", q, k, v, kv_mask, slots, window, **kw), atol=2e-5)


def test_rows_without_keys_get_the_dense_kernels_uniform_average():
  """A left-padding query sees no key; the dense kernel's finite -1e30 mask makes its softmax
  uniform over all S slots (the dense parity of such rows is in the cases above)."""
  q, k, v, kv_mask, slots = _inputs(batch=1, t=6, s=6, n=2, k=1, pad=(4,))
  out, _ = _run("blocked", q, k, v, kv_mask, slots, None, block_q=2, block_k=2)
  np.testing.assert_allclose(out[0, :4], np.broadcast_to(v[0].mean(0), (4, 2, 8)), atol=1e-6)


def test_blocked_bf16_error_is_the_dense_kernels():
  """bf16 operands: the blocked error against an fp32 reference is within 2x the dense one's."""
  q, k, v, kv_mask, slots = _inputs(batch=2, t=12, s=12, n=4, k=2)
  kw = dict(softcap=3.0, block_q=5, block_k=4)
  reference = _run("dense", q, k, v, kv_mask, slots, 5, softcap=3.0)
  dense = _run("dense", q, k, v, kv_mask, slots, 5, dtype=jnp.bfloat16, softcap=3.0)
  blocked = _run("blocked", q, k, v, kv_mask, slots, 5, dtype=jnp.bfloat16, **kw)
  assert blocked[0].dtype == jnp.bfloat16 and blocked[1][0].dtype == jnp.bfloat16
  for got, want, ref in zip((blocked[0], *blocked[1]), (dense[0], *dense[1]),
                            (reference[0], *reference[1])):
    err_dense = np.max(np.abs(np.asarray(want, np.float32) - np.asarray(ref)))
    err_blocked = np.max(np.abs(np.asarray(got, np.float32) - np.asarray(ref)))
    assert 0 < err_dense < 0.05
    assert err_blocked <= 2 * err_dense, (err_blocked, err_dense)


def _backward_temp_bytes(fn, t):
  """XLA's compiled temp memory of d(sum of attention)/d(q, k, v), B=1, N=2, K=1, H=16."""
  q = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
  kv = jax.ShapeDtypeStruct((1, t, 1, 16), jnp.float32)

  def loss(q, k, v):
    slots = jnp.arange(t, dtype=jnp.int32)[None]
    return jnp.sum(fn(q, k, v, jnp.ones((1, t), jnp.int32), slots, None, scale=0.25,
                      softcap=None, dtype=jnp.float32))

  compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, kv, kv).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_blocked_backward_memory_has_no_t_squared_term():
  """Doubling T: the dense backward's temp grows ~4x (fp32 [B, N, T, S] scores), the blocked
  one's stays about flat (blocks and O(T) buffers only)."""
  small, large = (_backward_temp_bytes(blocked_attend, t) for t in (2048, 4096))
  assert large <= 2.5 * small, (small, large)
  assert large < 2048 * 4096 * 4  # far below even one [T, S] fp32 buffer


def test_kernels_by_name_and_clear_errors():
  boundary = attention.AUTO_BLOCKED_MIN_SLOTS
  assert attention.kernel("auto", boundary - 1) is attention.dense_attend
  assert attention.kernel("auto", boundary) is attention.blocked_attend
  assert attention.kernel("dense", 10 * boundary) is attention.dense_attend
  with pytest.raises(ValueError, match="attention='flash'; expected one of"):
    attention.kernel("flash", 8)
  with pytest.raises(ValueError, match="attention='flash'; expected one of"):
    ModelConfig.tiny(attention="flash")
  section = ml_collections.ConfigDict(dict(model_dir="", attention="flash"))
  with pytest.raises(config_lib.ConfigError, match="model.attention='flash'"):
    common.build_model(section, 16)
  q, k, v, kv_mask, slots = _inputs(batch=1, t=4, s=4, n=2, k=1)
  cudnn = functools.partial(attention.cudnn_attend, q, k, v, kv_mask, slots, None, scale=SCALE)
  with pytest.raises(ValueError, match="soft-capping"):
    cudnn(softcap=50.0, dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="bfloat16 or float16 compute, not float32"):
    cudnn(softcap=None, dtype=jnp.float32)
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
      cudnn(softcap=None, dtype=jnp.bfloat16)


def _tiny_models(**overrides):
  """Gemma 2-style (sliding and global layers, soft-capping, GQA), same weights, each kernel."""
  config = ModelConfig.tiny(vocab_size=64, attn_logit_softcap=5.0, sliding_window=3,
                            layer_types=(SLIDING_ATTENTION, FULL_ATTENTION), **overrides)
  return [Transformer(config.replace(attention=kind), rngs=nnx.Rngs(0))
          for kind in ("dense", "blocked")]


def _left_padded(seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(1, 64, (2, 9)), jnp.int32)
  mask = jnp.asarray([[1] * 9, [0] * 4 + [1] * 5], jnp.int32)
  return tokens, mask, jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def _assert_trees_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=1e-4)


def test_model_with_blocked_attention_matches_dense():
  """Left padding: hidden states of a full sequence, a prefill into the KV cache and a decode
  step (the wiring: traced per-layer windows through the scan, the cache layout)."""
  tokens, mask, positions = _left_padded()
  kv_mask = jnp.zeros((2, 12), jnp.int32).at[:, :9].set(mask)

  @nnx.jit
  def run(model):
    cache = model.init_cache(2, 12)
    prefill, cache = model.decode_hidden(tokens[:, :8], positions[:, :8], cache, 0, kv_mask)
    step, _ = model.decode_hidden(tokens[:, 8:], positions[:, 8:], cache, 8, kv_mask)
    return model.hidden(tokens, mask_BxL=mask), prefill, step

  dense, blocked = (run(m) for m in _tiny_models())
  _assert_trees_close(blocked, dense)


@pytest.mark.slow
def test_model_with_blocked_attention_gradient_matches_dense_under_remat():
  """The blocked kernel's custom gradient inside the scanned, rematerialised blocks."""
  tokens, mask, _ = _left_padded()
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9)), jnp.float32)

  @nnx.jit
  def grads(model):
    loss = lambda m: jnp.sum(weights * token_logprobs(m, tokens, mask))
    return nnx.state(nnx.grad(loss)(model))

  dense, blocked = (grads(m) for m in _tiny_models(remat="block"))
  _assert_trees_close(blocked, dense)
