"""Sharded sampling: `score.sampling.generate_arrays` with params split by the logical-axis
rules and the prompt batch split over `data × fsdp`.

The sampler's jitted core is unchanged: it runs under an outer `jax.jit` whose inputs are
already placed on the mesh, so XLA partitions prefill and decode the same way as the training
step (the KV cache, created inside, inherits the batch split of the prompts and the kv-head
split of the `k`/`v` weights). Outputs come back split over the batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from score.parallel import mesh as mesh_lib
from score.sampling import sampler as sampler_lib


def shard_model_state(model: nnx.Module, mesh: Mesh, rules=mesh_lib.RULES):
  """`(graphdef, state)` of `model` with its arrays placed on `mesh` per the rules."""
  graphdef, state = nnx.split(model)
  return graphdef, mesh_lib.put(state, mesh_lib.state_shardings(state, mesh, rules))


@functools.lru_cache(maxsize=32)
def _sharded_core(graphdef, mesh: Mesh, rules, key_impl, options: tuple):
  out = mesh_lib.batch_sharding(mesh, rules)

  def run(state, continuation, prompt_BxP, prompt_mask_BxP, key_data, max_new_B):
    model = nnx.merge(graphdef, state)
    rng = jax.random.wrap_key_data(key_data, impl=key_impl) if key_impl else key_data
    samples, cont = sampler_lib.generate_arrays(
        model, prompt_BxP, prompt_mask_BxP, rng, max_new_B=max_new_B, continuation=continuation,
        return_continuation=True, **dict(options))
    cont = cont._replace(cache=jax.lax.with_sharding_constraint(
        cont.cache, mesh_lib.kv_cache_shardings(cont.cache, mesh, rules)))
    return samples._replace(num_steps=jax.lax.with_sharding_constraint(
        samples.num_steps, mesh_lib.replicated(mesh))), cont

  shardings = sampler_lib.SampleArrays(*([out] * 6), mesh_lib.replicated(mesh))
  cont = sampler_lib.Continuation(None, out, out)  # None: the cache's constraint above
  return jax.jit(run, out_shardings=(shardings, cont))


def sharded_generate_arrays(model: nnx.Module | tuple[Any, Any], prompt_BxP, prompt_mask_BxP,
                            rng: jax.Array, *, mesh: Mesh, max_new_tokens: int,
                            temperature: float = 0.0, top_k: int | None = None,
                            top_p: float | None = None, eos_ids=(), max_new_B=None,
                            pad_id: int = 0, cache_dtype: Any = None, rules=mesh_lib.RULES,
                            continuation: sampler_lib.Continuation | None = None,
                            return_continuation: bool = False):
  """`generate_arrays` on a mesh (same arguments, plus `mesh` and `rules`).

  Args:
    model: a `Transformer`, or `(graphdef, state)` from `shard_model_state` (re-using
      placed params across calls avoids moving them every time).
    prompt_BxP, prompt_mask_BxP: the global batch (one process) or this process's rows
      (several processes; see `shard_batch`). B must split over data×fsdp.
    rng: a `jax.random` key (replicated).
    mesh: the device mesh; the remaining arguments are `generate_arrays`'.
    continuation: an earlier call's `Continuation` (its cache as that call returned it, on
      the mesh; `kv_mask_BxS` / `next_pos_B` for this process's rows, like the prompts).

  Returns:
    `SampleArrays` (and with `return_continuation` the `Continuation`: cache split as the KV
    cache rules say, masks over data×fsdp) with every `[B, ...]` field split over data×fsdp
    (`jax.device_get` or `process_allgather` to read it). Greedy tokens equal the single-device ones up to
    floating-point ties (sharded matmuls sum in a different order).
  """
  if isinstance(model, tuple):
    graphdef, state = model
  else:
    graphdef, state = shard_model_state(model, mesh, rules)
  prompt_BxP = np.asarray(prompt_BxP, np.int32)
  prompt_mask_BxP = np.asarray(prompt_mask_BxP, np.int32)
  if max_new_B is None:
    max_new_B = np.full((prompt_BxP.shape[0],), max_new_tokens, np.int32)
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)

  def place(x):  # host rows -> the global batch; arrays already on the mesh stay on it
    if isinstance(getattr(x, "sharding", None), NamedSharding):
      return jax.device_put(x, batch_sharding)
    return mesh_lib.shard_batch(np.asarray(x, np.int32), mesh, rules)

  prompt_BxP, prompt_mask_BxP, max_new_B = map(place, (prompt_BxP, prompt_mask_BxP, max_new_B))
  if continuation is not None:
    continuation = continuation._replace(kv_mask_BxS=place(continuation.kv_mask_BxS),
                                         next_pos_B=place(continuation.next_pos_B))
  # Keys travel as their raw uint32 data (host values can be placed on every process).
  key_impl = None
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    key_impl = jax.random.key_impl(rng)
    rng = jax.random.key_data(rng)
  key_data = mesh_lib.put(np.asarray(rng), mesh_lib.replicated(mesh))
  options = (("max_new_tokens", int(max_new_tokens)), ("temperature", float(temperature)),
             ("top_k", top_k), ("top_p", top_p), ("eos_ids", tuple(int(e) for e in eos_ids)),
             ("pad_id", int(pad_id)), ("cache_dtype", cache_dtype))
  fn = _sharded_core(graphdef, mesh, tuple(rules), key_impl, options)
  samples, cont = fn(state, continuation, prompt_BxP, prompt_mask_BxP, key_data, max_new_B)
  return (samples, cont) if return_continuation else samples
