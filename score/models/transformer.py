"""One decoder-only Transformer in Flax NNX, configured by `ModelConfig` for every family.

Parameters are stored in `config.param_dtype` (float32) and cast to `config.dtype` where they
are used. Every parameter carries logical axis names in its `out_sharding` metadata (with
eager sharding off, so single-device use needs no mesh); `score.parallel` maps them to a mesh:

  'vocab'    vocabulary               'embed'    model width D
  'heads'    query heads N            'kv_heads' key/value heads K
  'kv'       head dim H               'mlp'      MLP width F
  'layers'   the decoder blocks' stacked layer axis L (never split over a mesh axis)

The decoder blocks are one `Block` whose parameters have a leading layer axis L, applied with
`jax.lax.scan` (MaxText's layout): compile time stays flat in depth, and `config.remat` wraps
the scan body in `jax.checkpoint` with a named policy (`REMAT_POLICIES`), which XLA honours
(on layers unrolled in a Python loop it did not: the compiled temp memory was unchanged). The
KV cache is stacked the same way, {'k', 'v'} each [L, B, K, S, H], and goes through the same
scan.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from score.models import attention as attention_lib
from score.models import lora
from score.models.config import REMAT_MODES, ModelConfig

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def project(x: Array, w: Array, w_axes: tuple[int, ...] = (0,), out_dtype=None) -> Array:
  """Contracts the last len(w_axes) axes of `x` with the axes `w_axes` (increasing) of `w`.

  Output axes: x's leading axes, then w's other axes in order; e.g. x [B, T, D] with
  w [D, N, H] and w_axes=(0,) -> [B, T, N, H]; with a tied unembedding w [V, D] and
  w_axes=(1,) -> [B, T, V]. `out_dtype` is the accumulation/result type (None: the inputs').

  Same values as `jnp.einsum`; the custom gradient computes the weight gradient with the
  operand that has fewer features on the left, so XLA transposes the smaller activation
  (autodiff of einsum transposed the larger one, e.g. the MLP's [B·T, F] gradient, which
  cost more CPU time than the matmul itself).
  """
  return _project(x, w, w_axes, out_dtype)


def _dot(a, b, dims, out_dtype=None):
  """`lax.dot_general` accumulating in `out_dtype` (None: the operands' type).

  XLA's CPU runtime cannot run some BF16 × BF16 = F32 dots (UNIMPLEMENTED in its DotThunk,
  depending on the shapes), so on CPU mixed-precision operands are upcast first; every other
  platform (and CPU under `attention.accelerator_dots`) gets the mixed-precision dot (bf16
  inputs, fp32 accumulation).
  """
  def mixed(a, b):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=out_dtype)

  if out_dtype is None or a.dtype == b.dtype == out_dtype:
    return mixed(a, b)

  def upcast(a, b):
    return jax.lax.dot_general(a.astype(out_dtype), b.astype(out_dtype), dims)

  return attention_lib.upcast_on_cpu(mixed, upcast, a, b)


def _project(x, w, w_axes, out_dtype):
  x_axes = tuple(range(x.ndim - len(w_axes), x.ndim))
  return _dot(x, w, ((x_axes, w_axes), ((), ())), out_dtype)


def _project_fwd(x, w, w_axes, out_dtype):
  return _project(x, w, w_axes, out_dtype), (x, w)


def _project_bwd(w_axes, out_dtype, res, g):
  del out_dtype
  x, w = res
  n_in = len(w_axes)
  w_free = tuple(a for a in range(w.ndim) if a not in w_axes)
  n_batch = x.ndim - n_in
  g_out = tuple(range(n_batch, g.ndim))
  # dx [batch..., in...]: g's output axes against w's free axes.
  dx = _dot(g.astype(w.dtype), w, ((g_out, w_free), ((), ())), jnp.float32).astype(x.dtype)
  batch = tuple(range(n_batch))
  g = g.astype(x.dtype)
  in_size, out_size = math.prod(x.shape[n_batch:]), math.prod(g.shape[n_batch:])
  if in_size <= out_size:  # [in..., out...]
    dw = _dot(x, g, ((batch, batch), ((), ())), jnp.float32)
    order = tuple(w_axes) + w_free
  else:  # [out..., in...]
    dw = _dot(g, x, ((batch, batch), ((), ())), jnp.float32)
    order = w_free + tuple(w_axes)
  dw = jnp.transpose(dw, np.argsort(order)).astype(w.dtype)
  return dx, dw


project.defvjp(_project_fwd, _project_bwd)


def _param(rngs: nnx.Rngs | None, shape, names, config: ModelConfig, init: str = "normal"):
  """A float parameter with logical axis names; init: 'normal' (std 0.02), 'zeros', 'ones'."""
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, config.param_dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, config.param_dtype)
  elif init == "ones":
    value = jnp.ones(shape, config.param_dtype)
  else:
    raise ValueError(init)
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def _add_lora(module, config: ModelConfig, name: str, in_shape, in_names, out_shape, out_names):
  """LoRA factors `<name>_lora_a` [in..., r] and `<name>_lora_b` [r, out...] (float32) on
  `module` when projection `name` is a target; `Transformer.__init__` draws A (`lora`)."""
  if not config.lora_target(name):
    return
  r = config.lora_rank
  for suffix, shape, names in (("_lora_a", (*in_shape, r), (*in_names, None)),
                               ("_lora_b", (r, *out_shape), (None, *out_names))):
    setattr(module, name + suffix, nnx.Param(jnp.zeros(shape, jnp.float32),
                                             out_sharding=names, eager_sharding=False))


def _projection(module, name: str, x: Array, w_axes: tuple[int, ...] = (0,)) -> Array:
  """x·W of `module.<name>` in the compute dtype, plus (alpha/r)·(x·A)·B when it has LoRA
  factors (unmerged: the gradient reaches A and B, never a full-size W)."""
  dt = module.config.dtype
  y = project(x, getattr(module, name).value.astype(dt), w_axes)
  a = getattr(module, name + "_lora_a", None)
  if a is not None:
    b = getattr(module, name + "_lora_b").value * module.config.lora_scale
    y = y + project(project(x, a.value.astype(dt), w_axes), b.astype(dt))
  return y


class RMSNorm(nnx.Module):
  """RMSNorm computed in fp32; Gemma scales by (1 + w), the others by w."""

  def __init__(self, dim: int, config: ModelConfig, names=("embed",)):
    self.eps = config.rms_norm_eps
    self.plus_one = config.norm_plus_one
    self.dtype = config.dtype
    self.weight = _param(None, (dim,), names, config, "zeros" if self.plus_one else "ones")

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.weight.value.astype(jnp.float32)
    y = y * (1.0 + w if self.plus_one else w)
    return y.astype(self.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies [H/2] (float32), with linear or llama3 scaling as configured."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  inv_freq = inv_freq.astype(np.float32)
  if config.rope_type == "linear":
    inv_freq = inv_freq / config.rope_factor
  elif config.rope_type == "llama3":
    factor = config.rope_factor
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    old_len = config.rope_original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  return inv_freq.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _cached_inv_freq(config: ModelConfig) -> np.ndarray:
  return rope_inv_freq(config)


def apply_rope(x_BxTxNxH: Array, positions_BxT: Array, inv_freq: np.ndarray) -> Array:
  """Rotate-half RoPE (the Hugging Face layout), computed in fp32."""
  freqs = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # B x T x 1 x H
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x = x_BxTxNxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxTxNxH.dtype)


class LayerCache(NamedTuple):
  """The KV cache as one block sees it inside the scan over layers: every layer's keys and
  values, each [L, B, K, S, H] (the scan's carry, so a decode step updates it in place), and
  this block's layer index."""
  k: Array
  v: Array
  layer: Array

  def write(self, k_BxTxKxH: Array, v_BxTxKxH: Array, cache_index) -> tuple[
      "LayerCache", Array, Array]:
    """Writes T new keys/values to this layer's slots [cache_index, cache_index + T);
    returns (updated cache, this layer's keys, values [B, K, S, H])."""
    zero = jnp.zeros((), jnp.int32)
    start = (self.layer, zero, zero, jnp.asarray(cache_index, jnp.int32), zero)

    def put(cache, new):
      return jax.lax.dynamic_update_slice(cache, new.swapaxes(1, 2).astype(cache.dtype)[None],
                                          start)

    new = self._replace(k=put(self.k, k_BxTxKxH), v=put(self.v, v_BxTxKxH))
    return new, new.k[self.layer], new.v[self.layer]


class Attention(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c = config
    self.config = c
    d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    self.q = _param(rngs, (d, n, h), ("embed", "heads", "kv"), c)
    self.k = _param(rngs, (d, k, h), ("embed", "kv_heads", "kv"), c)
    self.v = _param(rngs, (d, k, h), ("embed", "kv_heads", "kv"), c)
    self.o = _param(rngs, (n, h, d), ("heads", "kv", "embed"), c)
    if c.qkv_bias:
      self.q_bias = _param(None, (n, h), ("heads", "kv"), c, "zeros")
      self.k_bias = _param(None, (k, h), ("kv_heads", "kv"), c, "zeros")
      self.v_bias = _param(None, (k, h), ("kv_heads", "kv"), c, "zeros")
    if c.o_bias:
      self.o_bias = _param(None, (d,), ("embed",), c, "zeros")
    if c.qk_norm:
      self.q_norm = RMSNorm(h, c, names=("kv",))
      self.k_norm = RMSNorm(h, c, names=("kv",))
    for name, kv in (("q", (n, "heads")), ("k", (k, "kv_heads")), ("v", (k, "kv_heads"))):
      _add_lora(self, c, name, (d,), ("embed",), (kv[0], h), (kv[1], "kv"))
    _add_lora(self, c, "o", (n, h), ("heads", "kv"), (d,), ("embed",))

  def __call__(self, x_BxTxD, positions_BxT, kv_mask_BxS, query_slots_BxT, window,
               kv_cache=None, cache_index=None):
    """Self-attention of T queries (in slots `query_slots_BxT`) over the S slots that
    `kv_mask_BxS` marks real; `window` (int32 scalar, 0 = none) limits how far back a query
    sees. With `kv_cache` (a `LayerCache`) the new keys/values are written to slots
    [cache_index, cache_index + T) first. Returns (y_BxTxD, updated cache or None)."""
    c, dt = self.config, self.config.dtype
    x = x_BxTxD.astype(dt)
    q = _projection(self, "q", x)
    k = _projection(self, "k", x)
    v = _projection(self, "v", x)
    if c.qkv_bias:
      q = q + self.q_bias.value.astype(dt)
      k = k + self.k_bias.value.astype(dt)
      v = v + self.v_bias.value.astype(dt)
    q, k, v = (checkpoint_name(a, "proj") for a in (q, k, v))
    if c.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = _cached_inv_freq(c)
    q = apply_rope(q, positions_BxT, inv_freq)
    k = apply_rope(k, positions_BxT, inv_freq)
    if kv_cache is not None:  # k, v: this layer's [B, K, S, H]
      kv_cache, k, v = kv_cache.write(k, v, cache_index)
    cache_layout = kv_cache is not None
    kernel = attention_lib.kernel(c.attention, k.shape[2 if cache_layout else 1])
    out = kernel(q, k, v, kv_mask_BxS, query_slots_BxT, window, scale=c.attn_scale,
                 softcap=c.attn_logit_softcap, dtype=dt, cache_layout=cache_layout)
    y = _projection(self, "o", out, (0, 1))
    if c.o_bias:
      y = y + self.o_bias.value.astype(dt)
    return checkpoint_name(y, "proj"), kv_cache


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU or GeGLU."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c = config
    self.config = c
    d, f = c.hidden_size, c.intermediate_size
    self.gate = _param(rngs, (d, f), ("embed", "mlp"), c)
    self.up = _param(rngs, (d, f), ("embed", "mlp"), c)
    self.down = _param(rngs, (f, d), ("mlp", "embed"), c)
    if c.mlp_bias:
      self.gate_bias = _param(None, (f,), ("mlp",), c, "zeros")
      self.up_bias = _param(None, (f,), ("mlp",), c, "zeros")
      self.down_bias = _param(None, (d,), ("embed",), c, "zeros")
    _add_lora(self, c, "gate", (d,), ("embed",), (f,), ("mlp",))
    _add_lora(self, c, "up", (d,), ("embed",), (f,), ("mlp",))
    _add_lora(self, c, "down", (f,), ("mlp",), (d,), ("embed",))

  def __call__(self, x_BxTxD):
    c, dt = self.config, self.config.dtype
    x = x_BxTxD.astype(dt)
    g = _projection(self, "gate", x)
    u = _projection(self, "up", x)
    if c.mlp_bias:
      g = g + self.gate_bias.value.astype(dt)
      u = u + self.up_bias.value.astype(dt)
    g, u = checkpoint_name(g, "proj"), checkpoint_name(u, "proj")
    if c.activation == "silu":
      a = jax.nn.silu(g)
    else:
      a = jax.nn.gelu(g, approximate=c.activation == "gelu_tanh")
    y = _projection(self, "down", a * u)
    if c.mlp_bias:
      y = y + self.down_bias.value.astype(dt)
    return checkpoint_name(y, "proj")


class Block(nnx.Module):
  """Pre-norm residual block; Gemma 2 adds post-norms on both branches."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c = config
    self.post_norms = c.post_norms
    self.attn_norm = RMSNorm(c.hidden_size, c)
    self.attn = Attention(c, rngs)
    self.mlp_norm = RMSNorm(c.hidden_size, c)
    self.mlp = MLP(c, rngs)
    if c.post_norms:
      self.attn_post_norm = RMSNorm(c.hidden_size, c)
      self.mlp_post_norm = RMSNorm(c.hidden_size, c)

  def __call__(self, x_BxTxD, positions_BxT, kv_mask_BxS, query_slots_BxT, window,
               kv_cache=None, cache_index=None):
    h, kv_cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, kv_mask_BxS,
                            query_slots_BxT, window, kv_cache, cache_index)
    if self.post_norms:
      h = self.attn_post_norm(h)
    x = x_BxTxD + h
    h = self.mlp(self.mlp_norm(x))
    if self.post_norms:
      h = self.mlp_post_norm(h)
    return x + h, kv_cache


REMAT_POLICIES = {
    # Keep every activation of every layer for the backward pass.
    "none": None,
    # Keep only each block's input (the scan's carry, L x B x T x D); the backward pass
    # recomputes the block.
    "block": jax.checkpoint_policies.nothing_saveable,
    # Also keep the outputs of the projections (q, k, v, o, gate, up, down; tagged with
    # `checkpoint_name(..., "proj")`) where the backward pass needs them; norms, RoPE,
    # attention and activations are recomputed: less recompute than "block", more memory.
    "dots": jax.checkpoint_policies.save_only_these_names("proj"),
}
"""`config.remat` -> the `jax.checkpoint` policy of the scanned block (None: no remat)."""
assert tuple(REMAT_POLICIES) == REMAT_MODES


def stack_blocks(blocks: list[Block]) -> Block:
  """One `Block` whose every parameter is the blocks' parameters stacked on a new leading
  axis, with the logical axis name 'layers' in front of the parameter's names."""
  graphdef, _ = nnx.split(blocks[0])

  def stack(*variables):
    names = tuple(variables[0].get_metadata()["out_sharding"])
    return variables[0].replace(value=jnp.stack([v.value for v in variables]),
                                out_sharding=("layers",) + names)

  states = [nnx.state(block) for block in blocks]
  is_var = lambda x: isinstance(x, nnx.Variable)
  return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=is_var))


def unembed_logits(h_BxTxD: Array, weight: Array, *, tied: bool, softcap: float | None,
                   dtype) -> Array:
  """Logits in fp32 from final hidden states; `weight` is V x D when tied, else D x V."""
  h = h_BxTxD.astype(dtype)
  logits = project(h, weight.astype(dtype), (1,) if tied else (0,), jnp.float32)
  if softcap:
    logits = jnp.tanh(logits / softcap) * softcap
  return logits


def default_positions(mask_BxL: Array | None, batch: int, length: int) -> Array:
  if mask_BxL is None:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)


class Transformer(nnx.Module):
  """Decoder-only language model.

  `model(tokens_BxL, positions_BxL=None, mask_BxL=None) -> logits_BxLxV` (fp32).
  `model.decode(...)` runs the same network against a KV cache made by `init_cache`.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs | None = None):
    rngs = nnx.Rngs(0) if rngs is None else rngs
    c = config
    self.config = c
    self.embed = _param(rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"), c)
    # Built one by one (the same initial values, in the same RNG order, as unstacked layers)
    # and stacked: one Block with a leading layer axis.
    self.layers = stack_blocks([Block(c, rngs) for _ in range(c.num_layers)])
    self.final_norm = RMSNorm(c.hidden_size, c)
    if not c.tie_embeddings:
      self.lm_head = _param(rngs, (c.hidden_size, c.vocab_size), ("embed", "vocab"), c)
    if c.lora_rank:  # A drawn last, so the base is the same with or without adapters
      self._init_lora(rngs.params())

  def _init_lora(self, key):
    state = nnx.state(self)
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    values = lora.init_adapters({jax.tree_util.keystr(p): v for p, v in leaves}, key)
    nnx.update(self, jax.tree_util.tree_map_with_path(
        lambda p, v: values.get(jax.tree_util.keystr(p), v), state))

  # -- pieces -------------------------------------------------------------------------------

  def embed_tokens(self, tokens_BxT: Array) -> Array:
    c = self.config
    x = jnp.take(self.embed.value, tokens_BxT, axis=0).astype(c.dtype)
    if c.embed_scale:
      x = x * jnp.asarray(math.sqrt(c.hidden_size), c.dtype)
    return x

  def unembed_weight(self) -> Array:
    """V x D (tied) or D x V matrix used by `unembed`."""
    return self.embed.value if self.config.tie_embeddings else self.lm_head.value

  def unembed(self, h_BxTxD: Array) -> Array:
    """Final hidden states (after the final norm) -> fp32 logits."""
    c = self.config
    return unembed_logits(h_BxTxD, self.unembed_weight(), tied=c.tie_embeddings,
                          softcap=c.final_logit_softcap, dtype=c.dtype)

  def _blocks(self, x_BxTxD, positions_BxT, kv_mask_BxS, query_slots_BxT, cache, cache_index):
    """The decoder blocks, then the final norm: (h_BxTxD, updated cache or None).

    One `jax.lax.scan` over the stacked layers; its inputs per layer are the layer's params,
    its attention window (int32, 0 = full) and its index. The KV cache ({'k', 'v'} each
    [L, B, K, S, H]) rides in the scan's carry, each layer writing only its new slots (a
    decode step as scan inputs/outputs instead compiled to 2x the temp memory and ran 1.8x
    slower). Remat (`config.remat`) wraps the scan body; a decode step against a KV cache
    (never differentiated) runs without it.
    """
    c = self.config
    graphdef, state = nnx.split(self.layers)
    windows_L = np.asarray([c.layer_window(i) or 0 for i in range(c.num_layers)], np.int32)

    def body(carry, layer):
      x, cache = carry
      state_l, window, i = layer
      kv = None if cache is None else LayerCache(cache["k"], cache["v"], i)
      x, kv = nnx.merge(graphdef, state_l)(x, positions_BxT, kv_mask_BxS, query_slots_BxT,
                                           window, kv, cache_index)
      return (x, None if kv is None else {"k": kv.k, "v": kv.v}), None

    if c.remat != "none" and cache is None:
      body = jax.checkpoint(body, policy=REMAT_POLICIES[c.remat], prevent_cse=False)
    carry = (x_BxTxD, cache)
    if c.scan_layers:
      layers = (state, jnp.asarray(windows_L), jnp.arange(c.num_layers, dtype=jnp.int32))
      carry, _ = jax.lax.scan(body, carry, layers)
    else:
      for i in range(c.num_layers):
        carry, _ = body(carry, (jax.tree.map(lambda a, i=i: a[i], state), int(windows_L[i]),
                                jnp.int32(i)))
    x, cache = carry
    return self.final_norm(x), cache

  # -- full sequence ------------------------------------------------------------------------

  def hidden(self, tokens_BxL: Array, *, positions_BxL: Array | None = None,
             mask_BxL: Array | None = None) -> Array:
    """Final-norm hidden states [B, L, D] in the compute dtype."""
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      positions_BxL = default_positions(mask_BxL, b, l)
    if mask_BxL is None:
      mask_BxL = jnp.ones((b, l), jnp.int32)
    slots = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    h, _ = self._blocks(self.embed_tokens(tokens_BxL), positions_BxL, mask_BxL, slots, None,
                        None)
    return h

  def __call__(self, tokens_BxL: Array, *, positions_BxL: Array | None = None,
               mask_BxL: Array | None = None) -> Array:
    return self.unembed(self.hidden(tokens_BxL, positions_BxL=positions_BxL, mask_BxL=mask_BxL))

  # -- KV cache -----------------------------------------------------------------------------

  def init_cache(self, batch_size: int, max_len: int, dtype=None) -> dict[str, Array]:
    """Zeroed cache {'k', 'v'}, each [L, B, K, S, H] (layer, batch, kv head, slot, head dim)."""
    c = self.config
    shape = (c.num_layers, batch_size, c.num_kv_heads, max_len, c.head_dim)
    dtype = c.dtype if dtype is None else dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

  def decode_hidden(self, tokens_BxT: Array, positions_BxT: Array,
                    cache: dict[str, Array], cache_index: Array,
                    kv_mask_BxS: Array) -> tuple[Array, dict[str, Array]]:
    """`decode` without the unembedding: (final-norm hidden states h_BxTxD, updated cache).

    Prefill can unembed only the last position: `model.unembed(h_BxTxD[:, -1:])`.
    """
    t = tokens_BxT.shape[1]
    cache_index = jnp.asarray(cache_index, jnp.int32)
    slots = cache_index + jnp.arange(t, dtype=jnp.int32)
    slots = jnp.broadcast_to(slots, tokens_BxT.shape)
    return self._blocks(self.embed_tokens(tokens_BxT), positions_BxT, kv_mask_BxS, slots, cache,
                        cache_index)

  def decode(self, tokens_BxT: Array, positions_BxT: Array, cache: dict[str, Array],
             cache_index: Array, kv_mask_BxS: Array) -> tuple[Array, dict[str, Array]]:
    """Runs T new tokens against the cache; returns (logits_BxTxV fp32, updated cache).

    The new keys/values go to slots [cache_index, cache_index + T). Query t (in slot
    cache_index + t) attends to slots s with kv_mask_BxS[b, s] = 1 and s <= cache_index + t
    (and, on sliding layers, cache_index + t - s < window). The caller marks the new slots of
    real tokens in kv_mask_BxS. Prefill is decode with T = prompt length and cache_index 0.
    Positions (for RoPE) are the caller's: usually cumsum(kv_mask) - 1 at the new slots.
    """
    h, cache = self.decode_hidden(tokens_BxT, positions_BxT, cache, cache_index, kv_mask_BxS)
    return self.unembed(h), cache


def token_logprobs(model: Transformer, tokens_BxL: Array, mask_BxL: Array | None = None, *,
                   positions_BxL: Array | None = None, chunk_size: int | None = None,
                   max_chunk_bytes: int = 2**28) -> Array:
  """logp_BxL[b, t] = log p(tokens[b, t] | tokens[b, :t]) in fp32; position 0 holds 0.

  `mask_BxL` is the padding mask (1 real token, 0 padding). Entries whose token or previous
  token is padding hold 0. The unembedding and log-softmax run over chunks of `chunk_size`
  positions (default: as many as fit B x chunk_size x V fp32 logits in `max_chunk_bytes`,
  256 MiB), rematerialised in the backward pass when there is more than one chunk, so the
  full B x L x V logits never exist at once. Differentiable.
  """
  c = model.config
  b, l = tokens_BxL.shape
  if l < 2:
    return jnp.zeros((b, l), jnp.float32)
  h = model.hidden(tokens_BxL, positions_BxL=positions_BxL, mask_BxL=mask_BxL)
  n = l - 1
  if chunk_size is None:
    chunk_size = max_chunk_bytes // (4 * b * c.vocab_size)
  size = max(1, min(chunk_size, n))
  num_chunks = -(-n // size)
  pad = num_chunks * size - n
  h_prev = jnp.pad(h[:, :-1], ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, pad)))
  h_chunks = h_prev.reshape(b, num_chunks, size, -1).swapaxes(0, 1)
  t_chunks = targets.reshape(b, num_chunks, size).swapaxes(0, 1)
  weight = model.unembed_weight()

  def chunk_logp(args):
    h_c, t_c = args
    logits = unembed_logits(h_c, weight, tied=c.tie_embeddings, softcap=c.final_logit_softcap,
                            dtype=c.dtype)
    picked = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  if num_chunks == 1:  # nothing to save by rematerialising: the one chunk is all the logits
    logp = chunk_logp((h_chunks[0], t_chunks[0]))[None]
  else:
    logp = jax.lax.map(jax.checkpoint(chunk_logp), (h_chunks, t_chunks))  # C x B x size
  logp = logp.swapaxes(0, 1).reshape(b, num_chunks * size)[:, :n]
  if mask_BxL is not None:
    valid = (mask_BxL[:, 1:] > 0) & (mask_BxL[:, :-1] > 0)
    logp = jnp.where(valid, logp, 0.0)
  return jnp.concatenate([jnp.zeros((b, 1), jnp.float32), logp], axis=1)
