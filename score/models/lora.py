"""LoRA: low-rank adapters on the projections of a frozen base (Hu et al., 2021, arXiv 2106.09685).

With `ModelConfig.lora_rank` r > 0, each target projection y = x·W of `transformer.py` computes

  y = x·W + (alpha / r)·(x·A)·B,   A [in..., r] ~ N(0, 1/fan_in),  B [r, out...] = 0,

unmerged, so the model equals its base at the start and the gradient of a step is taken with
respect to A and B only (never a full-size dW). A and B are stored in float32 whatever the
base's `param_dtype`.

Params travel as one flat `{key: array}` dict (`score.trainers.common.Policy`). Adapters are the
keys of attributes named `<projection>_lora_a` / `_lora_b`; `split` tells the trainable keys
(adapters, and what is not part of a Transformer carrying adapters, e.g. a reward model's
scalar head) from the frozen ones (the rest of that Transformer: embeddings, norms, the
projections' W). Steps differentiate and optimise only the trainable part
(`score.parallel.TrainStep`), and checkpoints store only it; the frozen arrays are the same
objects in the policy, its reference and every step's output.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np

_A, _B = "_lora_a", "_lora_b"
_EMBED = "['embed'].value"  # every Transformer has it: its key's prefix names the model


def is_adapter(key: str) -> bool:
  """Whether a flat params key (`Policy.split`'s) is an adapter factor's."""
  return f"{_A}']" in key or f"{_B}']" in key


def is_adapter_name(name) -> bool:
  """Whether a module attribute name (a path entry) is an adapter factor's."""
  return str(name).endswith((_A, _B))


def base_key(adapter_key: str) -> str:
  """The key of the projection weight W that an adapter key's factor belongs to."""
  return adapter_key.replace(f"{_A}']", "']").replace(f"{_B}']", "']")


def has_adapters(params) -> bool:
  return isinstance(params, dict) and any(is_adapter(k) for k in params)


def frozen_keys(params) -> frozenset[str]:
  """Keys of `params` that LoRA freezes: every non-adapter key of a Transformer (identified by
  the prefix of its `['embed']` key) that has adapters. Empty without adapters (or when
  `params` is not a flat dict, e.g. a toy step's array)."""
  if not isinstance(params, dict):
    return frozenset()
  adapters = [k for k in params if is_adapter(k)]
  if not adapters:
    return frozenset()
  prefixes = [k[:-len(_EMBED)] for k in params if k.endswith(_EMBED)]
  prefixes = [p for p in prefixes if any(a.startswith(p) for a in adapters)]
  return frozenset(k for k in params
                   if not is_adapter(k) and any(k.startswith(p) for p in prefixes))


def split(params) -> tuple[dict, dict]:
  """`(trainable, frozen)` dicts of a flat params dict (`frozen` is {} without adapters)."""
  frozen = frozen_keys(params)
  if not frozen:
    return params, {}
  return ({k: v for k, v in params.items() if k not in frozen},
          {k: v for k, v in params.items() if k in frozen})


def trainable(params) -> dict:
  return split(params)[0]


def join(frozen: dict, trainable):
  """The whole params again: `{**frozen, **trainable}` (`trainable` itself when `frozen` is
  empty)."""
  return {**frozen, **trainable} if frozen else trainable


def init_a(key, shape, fan_in: int, dtype=jnp.float32):
  """A's init: N(0, 1/fan_in) (so x·A has the scale of x; B = 0 makes the product 0)."""
  return jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)


def _lead(a_shape, b_shape, w_shape) -> int:
  """Leading axes the factors share with W (e.g. a stacked-layers axis)."""
  return len(a_shape) + len(b_shape) - len(w_shape) - 2


def fan_in(a_shape, b_shape, w_shape) -> int:
  return math.prod(a_shape[_lead(a_shape, b_shape, w_shape):-1])


def delta(a, b, w_shape, scale: float):
  """(alpha/r)·A·B in W's shape, in float32: A [lead..., in..., r], B [lead..., r, out...]."""
  lead = _lead(a.shape, b.shape, w_shape)
  r = a.shape[-1]
  a2 = a.astype(jnp.float32).reshape(a.shape[:lead] + (-1, r))
  b2 = b.astype(jnp.float32).reshape(b.shape[:lead] + (r, -1))
  return (scale * jnp.matmul(a2, b2)).reshape(w_shape)


def pairs(params) -> list[tuple[str, str, str]]:
  """`(W key, A key, B key)` of every adapted projection."""
  out = []
  for k in sorted(params):
    if f"{_A}']" in k:
      out.append((base_key(k), k, k.replace(f"{_A}']", f"{_B}']")))
  return out


def merge(params, scale: float) -> dict:
  """`params` with every adapter merged into its W (W + (alpha/r)·A·B, in W's dtype and
  sharding) and B set to zero: the same model, with a new frozen base (e.g. the reference of a
  Self-Rewarding iteration, the model the previous one ended with). Keys without adapters are
  the same arrays."""
  out = dict(params)
  for w_key, a_key, b_key in pairs(params):
    w, a, b = params[w_key], params[a_key], params[b_key]
    out[w_key] = _merged(w, a, b, scale)
    out[b_key] = jnp.zeros_like(b)
  return out


def _merged(w, a, b, scale):
  sharding = getattr(w, "sharding", None)
  fn = jax.jit(lambda w, a, b: (w.astype(jnp.float32) + delta(a, b, w.shape, scale)
                                ).astype(w.dtype),
               out_shardings=sharding if isinstance(sharding, jax.sharding.NamedSharding)
               else None)
  return fn(w, a, b)


def init_adapters(shapes, key) -> dict:
  """Values for the adapter keys of `shapes` (`{key: array or ShapeDtypeStruct}` of a whole
  model, e.g. an `nnx.eval_shape` model's): A ~ N(0, 1/fan_in) from `key` folded with the
  param key's hash, B zeros; both float32."""
  out = {}
  for w_key, a_key, b_key in pairs(shapes):
    a_shape, b_shape = tuple(shapes[a_key].shape), tuple(shapes[b_key].shape)
    n = fan_in(a_shape, b_shape, tuple(shapes[w_key].shape))
    out[a_key] = init_a(jax.random.fold_in(key, zlib.crc32(a_key.encode()) & 0x7FFFFFFF),
                        a_shape, n)
    out[b_key] = jnp.zeros(b_shape, jnp.float32)
  return out


def adapter_norms(params) -> dict[str, float]:
  """`{B key: |B|}` (host floats): which adapters moved (B starts at 0)."""
  return {b: float(np.linalg.norm(np.asarray(jax.device_get(params[b]), np.float64)))
          for _, _, b in pairs(params)}


def merged_model(model):
  """A LoRA `Transformer` as one without adapters (`lora_rank=0`) whose weights hold them
  merged (the model itself when it has none), e.g. to write a Hugging Face checkpoint."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from score.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  config = model.config
  if not config.lora_rank:
    return model
  state = nnx.state(model)
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  values = merge({jax.tree_util.keystr(p): v for p, v in leaves}, config.lora_scale)
  plain = nnx.eval_shape(lambda: Transformer(config.replace(lora_rank=0), rngs=nnx.Rngs(0)))
  plain_state = nnx.state(plain)
  nnx.update(plain, jax.tree_util.tree_map_with_path(
      lambda p, _: values[jax.tree_util.keystr(p)], plain_state))
  return plain
