"""Memory-efficient attention: the flash-attention algorithm in pure JAX.

`blocked_attend` computes the same grouped-query attention as the dense kernel
(`transformer.attend` on `allowed_mask`) without ever holding [B, N, T, S] scores or a
[B, T, S] mask: queries and keys are cut into blocks, each query block runs an online softmax
over its key blocks (running max m, normaliser l, fp32 accumulator), and the custom backward
recomputes each block's probabilities from the saved per-row logsumexp, so the residuals are
the inputs, the output and one fp32 number per (row, head): no T x S term in either pass.

The mask of a block is built from the attention context, never materialised whole:

  key slot s is allowed for query t  iff  kv_mask_BxS[b, s] > 0  and  s <= query_slots_BxT[b, t]
                                          and (window <= 0 or query_slots_BxT[b, t] - s < window)

Each query block visits only the key blocks that can hold an allowed key (from its smallest
and largest query slot), so causal attention does about half the block products and a
sliding window only the blocks inside the window.

A row with no allowed key (a left-padding query: every slot up to its own is padding) gets,
as in the dense kernel (whose finite -1e30 mask makes its softmax uniform), the mean of the
values over all S slots. Such rows are padding, never read by a real token.

Kernels by name (`ModelConfig.attention`, a model config's `attention`), each called as
`kernel(q_BxTxNxH, k, v, kv_mask_BxS, query_slots_BxT, window, scale=, softcap=, dtype=,
cache_layout=)`:

  'dense'    `attend` on the materialised `allowed_mask`: fp32 [B, N, T, S] scores. Fastest
             for short sequences on CPU.
  'blocked'  `blocked_attend` above: every platform, every feature, memory O(T + S).
  'cudnn'    `jax.nn.dot_product_attention(implementation='cudnn')`, cuDNN's fused kernel:
             NVIDIA GPUs and bf16 compute only, no soft-capping (Gemma 2: an error naming
             'blocked'). UNTESTED: no GPU has been lent to this project yet.
  'auto'     'dense' below AUTO_BLOCKED_MIN_SLOTS key slots, 'blocked' from there on.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
_NEG_INF = -1e30  # the dense kernel's mask value; exp(_NEG_INF - m) is 0 for any real m


def default_block(length: int) -> int:
  """Block size for a query or key length: 128 up to 1024, 256 beyond.

  The fastest of 64 / 128 / 256 / 512 for a forward + backward on XLA:CPU (2 cores, B x T =
  4 x 512, 4 x 1024, 1 x 2048, 1 x 4096, N = 8, H = 64) and for a decode step against a
  1024-slot cache.
  """
  return 128 if length <= 1024 else 256


_CPU_UPCAST = [True]


@contextlib.contextmanager
def accelerator_dots():
  """Within this context, programs traced for CPU get the accelerators' mixed-precision dots
  (bf16 operands, fp32 accumulation) instead of the CPU upcast of `_einsum` and
  `transformer._dot`: for compile-only memory estimates (`score.parallel.plan --dots
  accelerator`), which would otherwise count the upcast's fp32 copies of bf16 operands.
  XLA:CPU may be unable to run what is compiled inside it."""
  _CPU_UPCAST[0] = False
  try:
    yield
  finally:
    _CPU_UPCAST[0] = True


def upcast_on_cpu(mixed, upcast, a: Array, b: Array) -> Array:
  """`upcast(a, b)` on CPU (outside `accelerator_dots`), `mixed(a, b)` elsewhere."""
  if not _CPU_UPCAST[0]:
    return mixed(a, b)
  return jax.lax.platform_dependent(a, b, cpu=upcast, default=mixed)


def _einsum(spec: str, a: Array, b: Array) -> Array:
  """`jnp.einsum` accumulating in fp32.

  Mixed precision (bf16 operands, fp32 result) on accelerators; on CPU the operands are upcast
  first, since XLA:CPU's DotThunk lacks some BF16 x BF16 = F32 dots (see `transformer._dot`).
  """
  def mixed(a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)

  if a.dtype == b.dtype == jnp.float32:
    return mixed(a, b)

  def upcast(a, b):
    return jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))

  return upcast_on_cpu(mixed, upcast, a, b)


class _Opts(NamedTuple):
  """The static part of a call (hashable: a `custom_vjp` non-differentiable argument)."""
  scale: float
  softcap: float | None
  dtype: Any
  cache_layout: bool
  block_q: int
  block_k: int
  num_slots: int  # S before padding: the dense kernel's uniform rows average over S slots


def _balanced_block(length: int, block: int) -> int:
  """The block size <= `block` that cuts `length` into as few, equal-as-possible blocks."""
  num_blocks = -(-length // block)
  return -(-length // num_blocks)


def blocked_attend(q_BxTxNxH: Array, k: Array, v: Array, kv_mask_BxS: Array,
                   query_slots_BxT: Array, window, *, scale: float, softcap: float | None,
                   dtype, cache_layout: bool = False, block_q: int | None = None,
                   block_k: int | None = None) -> Array:
  """Grouped-query attention by blocks; same values as the dense kernel, [B, T, N, H] in `dtype`.

  Args:
    q_BxTxNxH: queries (RoPE applied).
    k, v: keys and values [B, S, K, H], or [B, K, S, H] with `cache_layout` (the KV cache's
      layout, read in place). The K kv heads are shared by N / K query heads each.
    kv_mask_BxS: 1 for slots that hold a real token.
    query_slots_BxT: the slot of each query (causal: it sees keys in slots <= its own).
    window: sliding window in slots (an int or a traced int32 scalar); 0 or None: global.
    scale: multiplies the scores q.k.
    softcap: Gemma 2's tanh soft-capping of the scores (None: off).
    dtype: compute dtype of the matmul operands and the output; scores, softmax statistics
      and accumulators are fp32.
    block_q, block_k: largest query / key block (None: `default_block` of T / S). T and S are
      cut into equal blocks of at most this size (padded to a multiple of it; padded keys are
      masked, padded queries dropped).
  """
  b, t, n, h = q_BxTxNxH.shape
  s_axis = 2 if cache_layout else 1
  s = k.shape[s_axis]
  num_kv = k.shape[3 - s_axis]
  bq = _balanced_block(t, block_q or default_block(t))
  bk = _balanced_block(s, block_k or default_block(s))
  pad_t, pad_s = -t % bq, -s % bk
  q = q_BxTxNxH.astype(dtype).reshape(b, t, num_kv, n // num_kv, h)
  q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0), (0, 0)))
  # Padded queries repeat the last slot, so they widen no block's range of keys.
  slots = jnp.pad(jnp.asarray(query_slots_BxT, jnp.int32), ((0, 0), (0, pad_t)), mode="edge")
  kv_mask = jnp.asarray(kv_mask_BxS, jnp.int32)
  k, v = k.astype(dtype), v.astype(dtype)
  if pad_s:
    widths = [(0, 0)] * 4
    widths[s_axis] = (0, pad_s)
    k, v = jnp.pad(k, widths), jnp.pad(v, widths)
    kv_mask = jnp.pad(kv_mask, ((0, 0), (0, pad_s)))
  window = jnp.asarray(0 if window is None else window, jnp.int32)
  opts = _Opts(float(scale), softcap, dtype, cache_layout, bq, bk, s)
  out = _flash(q, k, v, kv_mask, slots, window, opts)
  return out[:, :t].reshape(b, t, n, h)


# -- the kernel: q [B, Tp, K, G, H]; k, v [B, Sp, K, H] (or [B, K, Sp, H]); Tp, Sp multiples
# of the blocks. Inside a block: scores [B, K, G, bq, bk], row statistics [B, K, G, bq].


def _kv_spec(opts: _Opts) -> str:
  return "bksh" if opts.cache_layout else "bskh"


def _kv_block(x: Array, j, opts: _Opts) -> Array:
  return jax.lax.dynamic_slice_in_dim(x, j * opts.block_k, opts.block_k,
                                      axis=2 if opts.cache_layout else 1)


def _q_block(x: Array, i, opts: _Opts) -> Array:
  return jax.lax.dynamic_slice_in_dim(x, i * opts.block_q, opts.block_q, axis=1)


def _mask_block(kv_mask: Array, j, opts: _Opts) -> Array:
  return jax.lax.dynamic_slice_in_dim(kv_mask, j * opts.block_k, opts.block_k, axis=1)


def _key_blocks(slots_Bxbq: Array, window: Array, num_key_blocks: int, opts: _Opts):
  """[lo, hi): the key blocks that can hold an allowed key for these queries."""
  hi = jnp.minimum(num_key_blocks, jnp.max(slots_Bxbq) // opts.block_k + 1)
  first = jnp.where(window > 0, jnp.min(slots_Bxbq) - window + 1, 0)
  lo = jnp.clip(first // opts.block_k, 0, hi)
  return lo, hi


def _block_scores(q_i, k, kv_mask, slots_i, window, j, opts: _Opts):
  """Masked fp32 scores of query block i against key block j, and tanh(scores / softcap)."""
  scores = _einsum(f"btkgh,{_kv_spec(opts)}->bkgts", q_i, _kv_block(k, j, opts)) * opts.scale
  tanh = None
  if opts.softcap:
    tanh = jnp.tanh(scores / opts.softcap)
    scores = tanh * opts.softcap
  key_slots = j * opts.block_k + jnp.arange(opts.block_k, dtype=jnp.int32)
  q_slots = slots_i[:, :, None]
  allowed = (_mask_block(kv_mask, j, opts)[:, None, :] > 0) & (key_slots <= q_slots)
  allowed &= (window <= 0) | (q_slots - key_slots < window)
  return jnp.where(allowed[:, None, None], scores, _NEG_INF), tanh


def _mean_values(v: Array, opts: _Opts) -> Array:
  """[B, K, H] fp32: the output of a row with no allowed key (padded slots hold zeros)."""
  total = jnp.sum(v.astype(jnp.float32), axis=2 if opts.cache_layout else 1)
  return total / opts.num_slots


def _forward(q, k, v, kv_mask, slots, window, opts: _Opts):
  """(out [B, Tp, K, G, H] in dtype, lse [Tp / bq, B, K, G, bq] fp32; +inf: no allowed key)."""
  b, tp, num_kv, g, h = q.shape
  num_key_blocks = kv_mask.shape[1] // opts.block_k
  spec = _kv_spec(opts)
  mean_v = _mean_values(v, opts)[:, :, None, None, :]

  def query_block(i):
    q_i, slots_i = _q_block(q, i, opts), _q_block(slots, i, opts)

    def key_block(j, carry):
      m, l, acc = carry
      scores, _ = _block_scores(q_i, k, kv_mask, slots_i, window, j, opts)
      m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
      p = jnp.exp(scores - m_new[..., None])
      correction = jnp.exp(m - m_new)
      l = l * correction + jnp.sum(p, axis=-1)
      pv = _einsum(f"bkgts,{spec}->bkgth", p.astype(opts.dtype), _kv_block(v, j, opts))
      return m_new, l, acc * correction[..., None] + pv

    stats = (b, num_kv, g, opts.block_q)
    init = (jnp.full(stats, _NEG_INF, jnp.float32), jnp.zeros(stats, jnp.float32),
            jnp.zeros(stats + (h,), jnp.float32))
    lo, hi = _key_blocks(slots_i, window, num_key_blocks, opts)
    m, l, acc = jax.lax.fori_loop(lo, hi, key_block, init)
    no_key = m <= _NEG_INF
    l = jnp.where(no_key, 1.0, l)
    out = jnp.where(no_key[..., None], mean_v, acc / l[..., None])
    lse = jnp.where(no_key, jnp.inf, m + jnp.log(l))
    return out.transpose(0, 3, 1, 2, 4).astype(opts.dtype), lse

  out, lse = jax.lax.map(query_block, jnp.arange(tp // opts.block_q))
  return jnp.moveaxis(out, 0, 1).reshape(b, tp, num_kv, g, h), lse


def _backward(q, k, v, kv_mask, slots, window, out, lse, d_out, opts: _Opts):
  """(dq, dk, dv) in the inputs' dtypes, recomputing each block's probabilities from `lse`.

  Query blocks outer (dq of a block in the inner loop's carry), key blocks inner, dk and dv
  accumulated in fp32 for all slots across the outer loop.
  """
  b, tp, num_kv, g, h = q.shape
  num_key_blocks = kv_mask.shape[1] // opts.block_k
  spec = _kv_spec(opts)
  s_axis = 2 if opts.cache_layout else 1
  d_out = d_out.astype(opts.dtype)
  # delta[b, t, k, g] = sum_h dO * O = sum_s p * dP: the softmax backward's row term.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

  def query_block(dkv, i):
    q_i, slots_i, do_i = _q_block(q, i, opts), _q_block(slots, i, opts), _q_block(d_out, i, opts)
    delta_i = _q_block(delta, i, opts).transpose(0, 2, 3, 1)[..., None]
    lse_i = lse[i][..., None]

    def key_block(j, carry):
      dq_i, dk, dv = carry
      scores, tanh = _block_scores(q_i, k, kv_mask, slots_i, window, j, opts)
      p = jnp.exp(scores - lse_i)  # 0 where masked, and in rows with no allowed key
      dp = _einsum(f"btkgh,{spec}->bkgts", do_i, _kv_block(v, j, opts))
      ds = p * (dp - delta_i)
      if opts.softcap:  # d(c tanh(x / c)) / dx = 1 - tanh^2
        ds = ds * (1.0 - tanh * tanh)
      ds = (ds * opts.scale).astype(opts.dtype)
      dq_i = dq_i + _einsum(f"bkgts,{spec}->btkgh", ds, _kv_block(k, j, opts))
      dk_j = _einsum(f"bkgts,btkgh->{spec}", ds, q_i)
      dv_j = _einsum(f"bkgts,btkgh->{spec}", p.astype(opts.dtype), do_i)
      start = j * opts.block_k
      dk = jax.lax.dynamic_update_slice_in_dim(dk, _kv_block(dk, j, opts) + dk_j, start, s_axis)
      dv = jax.lax.dynamic_update_slice_in_dim(dv, _kv_block(dv, j, opts) + dv_j, start, s_axis)
      return dq_i, dk, dv

    lo, hi = _key_blocks(slots_i, window, num_key_blocks, opts)
    dq_i = jnp.zeros(q_i.shape, jnp.float32)
    dq_i, dk, dv = jax.lax.fori_loop(lo, hi, key_block, (dq_i, *dkv))
    return (dk, dv), dq_i

  zeros = jnp.zeros(k.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(query_block, (zeros, zeros), jnp.arange(tp // opts.block_q))
  dq = jnp.moveaxis(dq, 0, 1).reshape(q.shape)
  # Rows with no allowed key output the mean of v over the S real slots.
  no_key = jnp.isinf(jnp.moveaxis(lse, 0, 3).reshape(b, num_kv, g, tp))  # [B, K, G, Tp]
  d_mean = jnp.einsum("bkgt,btkgh->bkh", no_key.astype(jnp.float32),
                      d_out.astype(jnp.float32)) / opts.num_slots
  dv = dv + jnp.expand_dims(d_mean, s_axis)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(q, k, v, kv_mask, slots, window, opts: _Opts):
  return _forward(q, k, v, kv_mask, slots, window, opts)[0]


def _flash_fwd(q, k, v, kv_mask, slots, window, opts: _Opts):
  out, lse = _forward(q, k, v, kv_mask, slots, window, opts)
  return out, (q, k, v, kv_mask, slots, window, out, lse)


def _flash_bwd(opts: _Opts, residuals, d_out):
  q, k, v, kv_mask, slots, window, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, kv_mask, slots, window, out, lse, d_out, opts)
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# -- the dense kernel and the registry ----------------------------------------------------


def allowed_mask(kv_mask_BxS: Array, query_slots_BxT: Array, window) -> Array:
  """[b, t, s]: slot s is a real token, not after query t's slot, and inside the window.

  `window` is a (traced) int32 scalar, an int or None; 0 or None means no window (full
  attention), so one scanned per-layer array serves sliding and global layers alike.
  """
  s = jnp.arange(kv_mask_BxS.shape[1])[None, None, :]
  q = query_slots_BxT[:, :, None]
  ok = (kv_mask_BxS[:, None, :] > 0) & (s <= q)
  if window is None:
    return ok
  return ok & ((window <= 0) | (q - s < window))


def attend(q_BxTxNxH, k, v, allowed_BxTxS, *, scale, softcap, dtype, cache_layout=False):
  """Grouped-query attention against a materialised mask; scores and softmax in fp32.

  Keys and values are [B, S, K, H] (the projections' layout), or with `cache_layout` [B, K,
  S, H], the KV cache's layout, which a decode step's matmuls read in place (with the cache
  stored [B, S, K, H], XLA copied all of it into this layout at every step).
  """
  b, t, n, h = q_BxTxNxH.shape
  kv = "bksh" if cache_layout else "bskh"
  num_kv = k.shape[1 if cache_layout else 2]
  q = q_BxTxNxH.reshape(b, t, num_kv, n // num_kv, h)
  scores = jnp.einsum(f"btkgh,{kv}->bkgts", q, k.astype(dtype),
                      preferred_element_type=jnp.float32) * scale
  if softcap:
    scores = jnp.tanh(scores / softcap) * softcap
  scores = jnp.where(allowed_BxTxS[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum(f"bkgts,{kv}->btkgh", probs, v.astype(dtype))
  return out.reshape(b, t, n, h)


def dense_attend(q_BxTxNxH, k, v, kv_mask_BxS, query_slots_BxT, window, *, scale, softcap,
                 dtype, cache_layout=False):
  """`attend` on the [B, T, S] `allowed_mask`."""
  return attend(q_BxTxNxH, k, v, allowed_mask(kv_mask_BxS, query_slots_BxT, window),
                scale=scale, softcap=softcap, dtype=dtype, cache_layout=cache_layout)


def cudnn_attend(q_BxTxNxH, k, v, kv_mask_BxS, query_slots_BxT, window, *, scale, softcap,
                 dtype, cache_layout=False):
  """cuDNN's fused attention through `jax.nn.dot_product_attention` (NVIDIA GPUs, bf16).

  UNTESTED: written without a GPU. The mask goes in as `allowed_mask` [B, 1, T, S] (cuDNN
  turns it into a bias: T x S bytes, not the dense kernel's fp32 scores per head). A query
  with no allowed key (left padding) is let see its own slot, so that it stays finite (the
  dense kernel's -1e30 gives such rows a uniform average; their output is padding either way).
  """
  if softcap:
    raise ValueError("attention='cudnn' cannot express logit soft-capping "
                     f"(attn_logit_softcap={softcap}, Gemma 2); use 'blocked' or 'dense'")
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention='cudnn' needs bfloat16 or float16 compute, not "
                     f"{jnp.dtype(dtype).name} (model.dtype); use 'blocked' or 'dense'")
  if jax.default_backend() != "gpu":
    raise ValueError(f"attention='cudnn' needs an NVIDIA GPU; this process runs on "
                     f"{jax.default_backend()!r}: use 'blocked' or 'dense'")
  if cache_layout:
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
  allowed = allowed_mask(kv_mask_BxS, query_slots_BxT, window)
  own_slot = jnp.arange(k.shape[1])[None, None, :] == query_slots_BxT[:, :, None]
  allowed |= own_slot & ~jnp.any(allowed, axis=-1, keepdims=True)
  return jax.nn.dot_product_attention(
      q_BxTxNxH.astype(dtype), k.astype(dtype), v.astype(dtype), mask=allowed[:, None],
      scale=scale, implementation="cudnn")


KERNELS = {"dense": dense_attend, "blocked": blocked_attend, "cudnn": cudnn_attend}
CHOICES = ("auto", *KERNELS)
AUTO_BLOCKED_MIN_SLOTS = 256  # 'auto': 'dense' below this many key slots, 'blocked' from here


def kernel(choice: str, num_slots: int):
  """The kernel that `choice` (one of CHOICES) names for attention over `num_slots` keys."""
  if choice == "auto":
    choice = "blocked" if num_slots >= AUTO_BLOCKED_MIN_SLOTS else "dense"
  if choice not in KERNELS:
    raise ValueError(f"attention={choice!r}; expected one of {CHOICES}")
  return KERNELS[choice]
