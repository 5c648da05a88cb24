"""Transformer forward, KV-cache decode, token_logprobs, dtypes and shapes (no torch needed)."""

import functools
import re

import jax
from jax import test_util as jax_test_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from score.models import ModelConfig, Transformer, token_logprobs
from score.models import attention as attention_lib
from score.models.config import FULL_ATTENTION, SLIDING_ATTENTION
from score.models.transformer import project

VARIANTS = {
    "llama": {},
    "llama3_rope": dict(rope_type="llama3", rope_factor=8.0, rope_original_max_position_embeddings=8),
    "qwen2": dict(qkv_bias=True, tie_embeddings=True),
    "qwen3": dict(qk_norm=True),
    "gemma2": dict(
        norm_plus_one=True, embed_scale=True, activation="gelu_tanh", tie_embeddings=True,
        post_norms=True, query_pre_attn_scalar=24.0, attn_logit_softcap=50.0,
        final_logit_softcap=30.0, sliding_window=3,
        layer_types=(SLIDING_ATTENTION, FULL_ATTENTION)),
}


@nnx.jit
def _fwd(model, tokens, mask=None, positions=None):
  """Jitted forward: much faster than op-by-op dispatch on CPU."""
  return model(tokens, positions_BxL=positions, mask_BxL=mask)


_logprobs = nnx.jit(token_logprobs, static_argnames=("chunk_size",))


def _random_params(model, seed=1, scale=0.2):
  """Perturb every parameter (zero-initialised biases and norms included)."""
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _model(variant="llama", **overrides):
  config = ModelConfig.tiny(vocab_size=128, **{**VARIANTS[variant], **overrides})
  return _random_params(Transformer(config, rngs=nnx.Rngs(0)))


def _left_padded_batch(seed=0, batch=3, length=9, vocab=128):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, size=(batch, length)).astype(np.int32)
  lengths = np.array([length, length - 3, 2])[:batch]
  mask = (np.arange(length)[None, :] >= (length - lengths)[:, None]).astype(np.int32)
  tokens = np.where(mask > 0, tokens, 0)
  return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("x_shape,w_shape,w_axes,spec", [
    ((2, 3, 4), (4, 7), (0,), "btd,df->btf"),  # fewer inputs than outputs
    ((2, 3, 7), (7, 4), (0,), "btf,fd->btd"),  # more inputs than outputs
    ((2, 3, 4), (4, 2, 3), (0,), "btd,dnh->btnh"),
    ((2, 3, 2, 3), (2, 3, 4), (0, 1), "btnh,nhd->btd"),
    ((2, 3, 4), (6, 4), (1,), "btd,vd->btv"),  # tied unembedding
])
def test_project_matches_einsum(x_shape, w_shape, w_axes, spec):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  out = project(x, w, w_axes)
  ref = jnp.einsum(spec, x, w)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  cot = jax.random.normal(kg, ref.shape)
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(project(x, w, w_axes) * cot), (0, 1)))(x, w)
  refs = jax.grad(lambda x, w: jnp.sum(jnp.einsum(spec, x, w) * cot), (0, 1))(x, w)
  for g, r in zip(grads, refs):
    assert g.shape == r.shape
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  jax_test_util.check_grads(lambda x, w: project(x, w, w_axes), (x, w), order=1,
                            modes=("rev",))


def test_project_bf16_gradient_dtypes():
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  w = jnp.ones((4, 5), jnp.bfloat16)
  out = project(x, w, (0,), jnp.float32)
  assert out.dtype == jnp.float32
  gx, gw = jax.grad(lambda x, w: project(x, w, (0,), jnp.float32).sum(), (0, 1))(x, w)
  assert gx.dtype == gw.dtype == jnp.bfloat16
  np.testing.assert_allclose(gw.astype(jnp.float32), 6.0)


@pytest.mark.parametrize("x_shape,w_shape", [((2, 8, 32), (32, 16)), ((2, 8, 128), (128, 32))])
def test_project_bf16_gradient_runs_where_xla_cpu_lacks_the_mixed_dot(x_shape, w_shape):
  """More inputs than outputs: XLA's CPU runtime has no BF16 × BF16 = F32 dot for these weight
  gradients (UNIMPLEMENTED before `_dot` upcast on CPU); values equal the fp32 gradient of the
  bf16-rounded operands."""
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, x_shape).astype(jnp.bfloat16)
  w = jax.random.normal(kw, w_shape).astype(jnp.bfloat16)
  loss = lambda x, w: (project(x, w, (0,), jnp.float32) ** 2).sum()  # noqa: E731
  gx, gw = jax.jit(jax.grad(loss, (0, 1)))(x, w)
  rx, rw = jax.grad(loss, (0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
  np.testing.assert_allclose(gw.astype(jnp.float32), rw, rtol=2e-2, atol=2e-2 * float(abs(rw).max()))
  np.testing.assert_allclose(gx.astype(jnp.float32), rx, rtol=2e-2, atol=2e-2 * float(abs(rx).max()))


def _dot_operand_types(fn, *args) -> list[str]:
  """The operand element types of every dot in `fn`'s lowered (CPU) program."""
  text = jax.jit(fn).lower(*args).as_text()
  return re.findall(r"dot_general.*?: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)", text)


def test_accelerator_dots_keep_bf16_operands_in_compile_only_programs():
  """CPU programs upcast bf16 dot operands (XLA:CPU lacks some mixed dots); under
  `accelerator_dots` (the planner's `--dots accelerator`) the projection and the attention
  einsums lower as accelerators run them: bf16 operands, fp32 accumulation."""
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  w = jnp.ones((4, 5), jnp.bfloat16)
  q = jnp.ones((1, 3, 1, 2, 4), jnp.bfloat16)  # [B, T, K, G, H]
  k = jnp.ones((1, 3, 1, 4), jnp.bfloat16)  # [B, S, K, H]
  einsum = attention_lib._einsum  # pylint: disable=protected-access
  fns = [lambda: lambda x, w: project(x, w, (0,), jnp.float32),  # a new function per lowering
         lambda: lambda q, k: einsum("btkgh,bskh->bkgts", q, k)]
  for fn, args in zip(fns, [(x, w), (q, k)]):
    assert _dot_operand_types(fn(), *args) == [("f32", "f32")]
    with attention_lib.accelerator_dots():
      assert _dot_operand_types(fn(), *args) == [("bf16", "bf16")]
      assert jax.eval_shape(fn(), *args).dtype == jnp.float32
    assert _dot_operand_types(fn(), *args) == [("f32", "f32")]  # the context is left


def test_forward_shape_and_dtype():
  model = _model()
  logits = _fwd(model, jnp.zeros((2, 7), jnp.int32))
  assert logits.shape == (2, 7, 128)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_left_padding_matches_unpadded(variant):
  model = _model(variant)
  tokens, mask = _left_padded_batch()
  logits = _fwd(model, tokens, mask)
  assert not jnp.isnan(logits).any()  # fully padded query rows included
  for b in range(tokens.shape[0]):
    real = np.asarray(mask[b]) > 0
    alone = _fwd(model, tokens[b:b + 1, real])
    np.testing.assert_allclose(logits[b, real], alone[0], atol=1e-5, rtol=1e-5)


def test_explicit_positions_match_default():
  model = _model()
  tokens, mask = _left_padded_batch()
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  np.testing.assert_allclose(
      _fwd(model, tokens, mask), _fwd(model, tokens, mask, positions),
      atol=1e-6)


def _jitted_decode(model):
  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, donate_argnums=(3,))
  def decode(state, tokens, positions, cache, cache_index, kv_mask):
    return nnx.merge(graphdef, state).decode(tokens, positions, cache, cache_index, kv_mask)

  return functools.partial(decode, state)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefill_then_decode_matches_forward(variant):
  model = _model(variant)
  prompt, prompt_mask = _left_padded_batch(length=6)
  b, p = prompt.shape
  new = jax.random.randint(jax.random.key(3), (b, 5), 1, 128, jnp.int32)
  tokens = jnp.concatenate([prompt, new], axis=1)
  mask = jnp.concatenate([prompt_mask, jnp.ones_like(new)], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  full = _fwd(model, tokens, mask)

  max_len = tokens.shape[1] + 3  # spare slots stay masked out
  kv_mask = jnp.zeros((b, max_len), jnp.int32).at[:, :p].set(prompt_mask)
  decode = _jitted_decode(model)
  cache = model.init_cache(b, max_len)
  logits, cache = decode(prompt, positions[:, :p], cache, jnp.int32(0), kv_mask)
  real = np.asarray(prompt_mask) > 0
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full[:, :p])[real], atol=1e-5,
                             rtol=1e-5)
  for i in range(new.shape[1]):
    slot = p + i
    kv_mask = kv_mask.at[:, slot].set(1)
    logits, cache = decode(tokens[:, slot:slot + 1], positions[:, slot:slot + 1], cache,
                           jnp.int32(slot), kv_mask)
    np.testing.assert_allclose(logits[:, 0], full[:, slot], atol=1e-5, rtol=1e-5)


def test_multi_token_decode_chunks_match_forward():
  model = _model("gemma2")
  tokens, mask = _left_padded_batch(length=10)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  full = _fwd(model, tokens, mask)
  cache = model.init_cache(tokens.shape[0], 10)
  decode = _jitted_decode(model)
  outs = []
  for start in (0, 4, 7):
    stop = {0: 4, 4: 7, 7: 10}[start]
    kv_mask = jnp.where(jnp.arange(10)[None] < stop, mask, 0)
    logits, cache = decode(tokens[:, start:stop], positions[:, start:stop], cache,
                           jnp.int32(start), kv_mask)
    outs.append(logits)
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1))[real], np.asarray(full)[real],
                             atol=1e-5, rtol=1e-5)


def test_decode_hidden_then_unembed_equals_decode():
  model = _model("qwen3")
  tokens, mask = _left_padded_batch(length=6)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  h, cache_h = model.decode_hidden(tokens, positions, model.init_cache(3, 8), 0,
                                   jnp.pad(mask, ((0, 0), (0, 2))))
  logits, cache = model.decode(tokens, positions, model.init_cache(3, 8), 0,
                               jnp.pad(mask, ((0, 0), (0, 2))))
  np.testing.assert_allclose(model.unembed(h[:, -1:])[:, 0], logits[:, -1], atol=1e-6)
  for a, b in zip(jax.tree.leaves(cache_h), jax.tree.leaves(cache)):
    np.testing.assert_array_equal(a, b)


def test_cache_layout():
  model = _model()
  cache = model.init_cache(3, 10)
  assert set(cache) == {"k", "v"}
  c = model.config
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape == (c.num_layers, 3, c.num_kv_heads, 10, c.head_dim)  # [L, B, K, S, H]
    assert leaf.dtype == jnp.float32
  assert jax.tree.leaves(model.init_cache(2, 16, dtype=jnp.bfloat16))[0].dtype == jnp.bfloat16


def _naive_logprobs(model, tokens, mask):
  logits = model(tokens, mask_BxL=mask)  # traced under jit/grad by the callers
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  picked = jnp.where((mask[:, 1:] > 0) & (mask[:, :-1] > 0), picked, 0.0)
  return jnp.concatenate([jnp.zeros((tokens.shape[0], 1)), picked], axis=1)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 128, None])
@pytest.mark.parametrize("variant", ["llama", "gemma2"])
def test_token_logprobs_matches_naive(variant, chunk_size):
  model = _model(variant)
  tokens, mask = _left_padded_batch()
  got = _logprobs(model, tokens, mask, chunk_size=chunk_size)
  assert got.shape == tokens.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, nnx.jit(_naive_logprobs)(model, tokens, mask), atol=1e-5)
  assert (got[:, 0] == 0).all()


def test_token_logprobs_chunks_from_byte_budget():
  model = _model("qwen2")
  tokens, mask = _left_padded_batch()  # B = 3, V = 128: 2 positions per 3 KiB chunk
  fn = nnx.jit(functools.partial(token_logprobs, max_chunk_bytes=4 * 3 * 128 * 2))
  naive = nnx.jit(_naive_logprobs)(model, tokens, mask)
  np.testing.assert_allclose(fn(model, tokens, mask), naive, atol=1e-5)
  jaxpr = str(jax.make_jaxpr(lambda m: fn(m, tokens, mask))(model))
  assert jaxpr.count("scan[") == 2  # the layers, then a (rematerialised) loop over chunks
  default = str(jax.make_jaxpr(lambda m: token_logprobs(m, tokens, mask))(model))
  assert default.count("scan[") == 1  # 3 x 8 x 128 fp32 logits fit the default budget


def test_token_logprobs_gradient_matches_naive():
  model = _model("qwen2")
  tokens, mask = _left_padded_batch()

  def loss(fn, m):
    return fn(m, tokens, mask).sum()

  chunked = lambda m, t, k: token_logprobs(m, t, k, chunk_size=3)
  g_chunked = nnx.jit(nnx.grad(functools.partial(loss, chunked)))(model)
  g_naive = nnx.jit(nnx.grad(functools.partial(loss, _naive_logprobs)))(model)
  for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_naive)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_token_logprobs_jits_with_nnx():
  model = _model()
  tokens, mask = _left_padded_batch()
  fn = nnx.jit(functools.partial(token_logprobs, chunk_size=4))
  np.testing.assert_allclose(fn(model, tokens, mask), _logprobs(model, tokens, mask),
                             atol=1e-5)


def _per_layer_reference(model, tokens, mask):
  """Logits from each layer's `Block` called in a Python loop on its slice of the stacked
  params, with the window `config.layer_window(i)` (no scan, no scanned window array)."""
  c = model.config
  graphdef, state = nnx.split(model.layers)
  b, l = tokens.shape
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  slots = jnp.broadcast_to(jnp.arange(l), (b, l))
  x = model.embed_tokens(tokens)
  for i in range(c.num_layers):
    block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
    x, _ = block(x, positions, mask, slots, c.layer_window(i))
  return model.unembed(model.final_norm(x))


def _with_config(model, **changes):
  """`model`'s params in a model built with `config.replace(**changes)`."""
  graphdef, _ = nnx.split(Transformer(model.config.replace(**changes)))
  return nnx.merge(graphdef, nnx.state(model))


@pytest.mark.parametrize("variant,windows", [
    ("llama", None),
    pytest.param("gemma2", (SLIDING_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION,
                            FULL_ATTENTION), marks=pytest.mark.slow),  # fast: the odd order
    ("gemma2", (FULL_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION))])
def test_scanned_layers_match_unrolled_and_a_per_layer_reference(variant, windows):
  """Logits, token log-probs and gradients of the scanned blocks equal the Python loop's
  (`scan_layers=False`) and a per-layer reference; with Gemma 2's alternating windows in both
  orders, neither a palindrome (window 3 over 9 tokens: a window on the wrong layer changes
  the logits)."""
  overrides = {} if windows is None else dict(num_layers=len(windows), layer_types=windows)
  model = _model(variant, **overrides)
  assert model.config.scan_layers
  unrolled = _with_config(model, scan_layers=False)
  tokens, mask = _left_padded_batch()
  ref = nnx.jit(_per_layer_reference)(model, tokens, mask)
  np.testing.assert_allclose(_fwd(model, tokens, mask), ref, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(_fwd(unrolled, tokens, mask), ref, atol=2e-5, rtol=1e-5)
  if windows is not None:  # the windows on the other layers give other logits
    swapped = _with_config(model, layer_types=tuple(
        FULL_ATTENTION if w == SLIDING_ATTENTION else SLIDING_ATTENTION for w in windows))
    assert np.abs(np.asarray(_fwd(swapped, tokens, mask) - ref)).max() > 1e-2
  np.testing.assert_allclose(_logprobs(model, tokens, mask), _logprobs(unrolled, tokens, mask),
                             atol=1e-5)
  grad = nnx.jit(nnx.grad(lambda m: token_logprobs(m, tokens, mask).sum()))
  ref_grad = nnx.jit(nnx.grad(lambda m: jnp.sum(jnp.where(
      mask[:, 1:] * mask[:, :-1] > 0, jnp.take_along_axis(jax.nn.log_softmax(
          _per_layer_reference(m, tokens, mask)[:, :-1]), tokens[:, 1:, None], -1)[..., 0],
      0.0))))
  for a, b, r in zip(jax.tree.leaves(grad(model)), jax.tree.leaves(grad(unrolled)),
                     jax.tree.leaves(ref_grad(model))):
    np.testing.assert_allclose(a, r, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(b, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_matches(remat):
  model = _model("gemma2")
  remat_model = _with_config(model, remat=remat)
  tokens, mask = _left_padded_batch()
  np.testing.assert_allclose(_fwd(remat_model, tokens, mask), _fwd(model, tokens, mask),
                             atol=1e-6)
  grad = nnx.jit(nnx.grad(lambda m: token_logprobs(m, tokens, mask).sum()))
  for a, b in zip(jax.tree.leaves(grad(remat_model)), jax.tree.leaves(grad(model))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_remat_policies_cut_compiled_temp_memory():
  """XLA honours the remat policy inside the scan: the compiled train step's temporaries
  shrink from "none" to "dots" to "block" (unlike `jax.checkpoint` on unrolled layers)."""
  config = ModelConfig.tiny(num_layers=6, hidden_size=128, intermediate_size=512, head_dim=32)
  tokens = jax.ShapeDtypeStruct((4, 128), jnp.int32)
  temp = {}
  for remat in ("none", "dots", "block"):
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: Transformer(config.replace(remat=remat), rngs=nnx.Rngs(0))))
    grad = jax.grad(lambda s, t: token_logprobs(nnx.merge(graphdef, s), t).sum())
    compiled = jax.jit(grad).lower(state, tokens).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temp["block"] < 0.5 * temp["none"], temp
  assert temp["block"] < temp["dots"] < temp["none"], temp


def test_remat_config_names_the_choices():
  with pytest.raises(ValueError, match=r"remat=True.*'none', 'block', 'dots'"):
    ModelConfig.tiny(remat=True)


# Max |bf16 − fp32| logit error measured on these models (jax 0.10, CPU, commit 9b5bc52):
# llama 0.093, gemma2 0.062 (logit scale 6.2 / 10.4). The bound is 2× the measured error; an
# error under 1e-3 would mean the forward did not compute in bf16 at all.
BF16_LOGIT_ERR = {"llama": 0.093, "gemma2": 0.062}


@pytest.mark.parametrize("variant", ["llama", "gemma2"])
def test_bf16_compute(variant):
  model = _model(variant)
  bf16 = nnx.merge(nnx.split(Transformer(model.config.replace(dtype=jnp.bfloat16)))[0],
                   nnx.state(model))
  tokens, mask = _left_padded_batch()
  logits = _fwd(bf16, tokens, mask)
  assert logits.dtype == jnp.float32
  assert jax.tree.leaves(nnx.state(bf16))[0].dtype == jnp.float32  # params stay fp32
  ref = _fwd(model, tokens, mask)
  real = np.asarray(mask) > 0
  err = np.abs(np.asarray(logits - ref))[real].max()
  assert 1e-3 < err < 2 * BF16_LOGIT_ERR[variant], err
  logp = _logprobs(bf16, tokens, mask)
  assert np.isfinite(np.asarray(logp)).all()


def test_params_carry_logical_axes():
  model = Transformer(ModelConfig.tiny(qkv_bias=True, qk_norm=True))
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  names = {tuple(s.value) for s in jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, nnx.Variable))}
  assert ("vocab", "embed") in names
  assert ("layers", "embed", "heads", "kv") in names  # the stacked blocks' params
  assert ("layers", "embed", "kv_heads", "kv") in names
  assert ("layers", "embed", "mlp") in names and ("layers", "mlp", "embed") in names
  assert ("layers", "kv") in names  # q_norm / k_norm
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param),
                              is_leaf=lambda x: isinstance(x, nnx.Variable)):
    assert len(leaf.get_metadata()["out_sharding"]) == leaf.value.ndim


@pytest.mark.parametrize("name,billions", [
    ("qwen2.5-0.5b", 0.49), ("qwen2.5-1.5b", 1.54), ("qwen2.5-7b", 7.6)])
def test_eval_shape_presets(name, billions):
  config = ModelConfig.preset(name)
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert abs(n / 1e9 - billions) / billions < 0.03
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, t: nnx.merge(graphdef, s)(t), state,
                       jax.ShapeDtypeStruct((2, 16), jnp.int32))
  assert out.shape == (2, 16, config.vocab_size) and out.dtype == jnp.float32
  cache = jax.eval_shape(lambda: model.init_cache(2, 32))
  assert cache["k"].shape == (config.num_layers, 2, config.num_kv_heads, 32, config.head_dim)


def test_config_validation():
  with pytest.raises(ValueError, match="multiple"):
    ModelConfig.tiny(num_heads=3, num_kv_heads=2)
  with pytest.raises(ValueError, match="sliding_window"):
    ModelConfig.tiny(layer_types=(SLIDING_ATTENTION, FULL_ATTENTION))
  with pytest.raises(ValueError, match="preset"):
    ModelConfig.preset("gpt-5")
