"""Jitted KV-cache sampler: prefill + `lax.while_loop` decode, left-padded batches.

Two levels:

* `generate_arrays(model, prompt_BxP, prompt_mask_BxP, rng, ...)` — the array core trainers
  call. One jitted function of `(graphdef, state, arrays)`; only the graph definition, the
  shapes, `max_new_tokens`, `top_k` and whether top-p is on are static and key jax's
  compilation cache. Temperature (greedy included), top-p value, stop ids, per-row limits and
  the key are data, so repeated calls with the same shapes never retrace (`compile_count`).
  The KV cache is allocated *inside* the jitted function and lives in the loop carry, so XLA
  updates it in place. The loop exits as soon as every row has stopped. With
  `return_continuation=True` the cache comes back as a `Continuation`, which a next call
  (the next turn of the same rows) extends by its prompt and new slots (one copy per turn)
  instead of prefilling the earlier turns again.
* `generate(model, prompts, ...)` — lists in, lists out. Buckets the batch size and
  `max_new_tokens` to powers of two and the prompt length to quarter octaves (so a handful
  of shapes cover all calls), handles stop strings, passes continuations on. With `mesh=`,
  the batch is split over the mesh's data×fsdp devices
  (`score.parallel.sharded_generate_arrays`).

Log-probabilities. `logprobs` are `log softmax(logits)[token]` of the *raw* model at
temperature 1, without top-k/top-p: exactly what the trainer recomputes with
`token_logprobs(model, prompt ⊕ completion)`, so importance ratios and KL terms see no
sampler/trainer mismatch. `sample_logprobs` are the log-probabilities under the distribution
actually sampled from (tempered, filtered; 0 for greedy), for off-policy corrections that
need the behaviour policy.

Alignment: with the prompt of row b occupying `P_b` real tokens, generated token i sits at
position `P_b + i`; `logprobs_BxN[b, i] = log p(tokens_BxN[b, i] | prompt, tokens_BxN[b, :i])`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from score.sampling import filters

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class SampleArrays(NamedTuple):
  """Output of `generate_arrays` (B rows, N = max_new_tokens slots).

  tokens_BxN: generated ids; `pad_id` after a row finished.
  logprobs_BxN: raw-model (temperature 1, unfiltered) log p of each generated token; 0 on
      invalid slots.
  sample_logprobs_BxN: log p under the sampling distribution; 0 for greedy / invalid slots.
  valid_BxN: 1 for generated tokens (the stop token included), 0 after the row finished.
  lengths_B: number of valid tokens per row.
  stopped_B: True if the row ended on a stop id (else it hit its length limit).
  num_steps: decode iterations run (< N when every row finished early).
  """

  tokens_BxN: jax.Array
  logprobs_BxN: jax.Array
  sample_logprobs_BxN: jax.Array
  valid_BxN: jax.Array
  lengths_B: jax.Array
  stopped_B: jax.Array
  num_steps: jax.Array


@dataclasses.dataclass
class Samples:
  """Output of `generate`: one entry per prompt.

  tokens[i]: generated ids (prompt excluded; the stop token included once if hit; for stop
      strings, up to and including the token that completed the stop string).
  logprobs[i]: raw-model log-probs of `tokens[i]` (see module docstring).
  sample_logprobs[i]: log-probs under the sampling distribution.
  finish_reason[i]: "stop" (stop id or stop string) or "length".
  """

  tokens: list[list[int]]
  logprobs: list[list[float]]
  sample_logprobs: list[list[float]]
  finish_reason: list[str]


# ---------------------------------------------------------------------------------------------
# Compile bookkeeping.

_TRACE_COUNT = 0


def compile_count() -> int:
  """How many times the jitted core has been traced (≈ compiled) in this process."""
  return _TRACE_COUNT


def _next_pow2(n: int, minimum: int = 1) -> int:
  n = max(int(n), minimum)
  return 1 << (n - 1).bit_length()


# ---------------------------------------------------------------------------------------------
# Jitted core.


class Continuation(NamedTuple):
  """The KV cache and masks a finished call hands to the next turn of the same rows.

  `generate_arrays(..., return_continuation=True)` returns one; passing it back as
  `continuation=` appends that call's prompt (e.g. a self-correction instruction) to every
  row's cache and samples on, so earlier turns are never prefilled again.

  cache: the model's KV cache, {'k', 'v'} each [L, B, K, S, H]. Slots are laid out
      call after call (`[prompt | N generated | next prompt | N generated | ...]`); the slots
      a row did not fill are masked out, so a row's real tokens need not be contiguous.
  kv_mask_BxS: 1 on the slots of real tokens (prompt tokens and valid generated ones).
  next_pos_B: the position (RoPE index) of each row's next token: its number of real tokens.
  """

  cache: Any
  kv_mask_BxS: jax.Array
  next_pos_B: jax.Array


def prefill_last_logits(
    model: Any,
    prompt_BxP: jax.Array,
    positions_BxP: jax.Array,
    cache: Any,
    kv_mask_BxS: jax.Array,
    cache_index: int = 0,
) -> tuple[jax.Array, Any]:
  """Writes the prompt into cache slots [cache_index, cache_index + P) and returns the last
  position's fp32 logits.

  With left padding the last slot holds every row's last real token, so `logits_BxV`
  predicts the first new token. Only the last hidden state is unembedded (`decode` would
  make a B×P×V fp32 array: 19 GB at B=64, P=512, V=152k); models without `decode_hidden`
  fall back to `decode`.
  """
  if hasattr(model, "decode_hidden"):
    h_BxPxD, cache = model.decode_hidden(
        prompt_BxP, positions_BxP, cache, cache_index, kv_mask_BxS
    )
    return model.unembed(h_BxPxD[:, -1:])[:, 0].astype(jnp.float32), cache
  logits_BxPxV, cache = model.decode(prompt_BxP, positions_BxP, cache, cache_index, kv_mask_BxS)
  return logits_BxPxV[:, -1].astype(jnp.float32), cache


@jax.jit(
    static_argnames=(
        "graphdef",
        "max_new_tokens",
        "top_k",
        "use_top_p",
        "pad_id",
        "cache_dtype",
    ),
)
def _generate_core(
    state: Any,
    continuation: Continuation | None,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    rng: jax.Array,
    greedy: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    eos_ids_E: jax.Array,
    max_new_B: jax.Array,
    *,
    graphdef: Any,
    max_new_tokens: int,
    top_k: int | None,
    use_top_p: bool,
    pad_id: int,
    cache_dtype: Any,
) -> tuple[SampleArrays, Continuation]:
  global _TRACE_COUNT
  _TRACE_COUNT += 1  # Runs at trace time only.

  model = nnx.merge(graphdef, state)
  batch, prompt_len = prompt_BxP.shape
  n = max_new_tokens
  prompt_mask_BxP = prompt_mask_BxP.astype(jnp.int32)
  prompt_lens_B = prompt_mask_BxP.sum(axis=-1)

  if continuation is None:
    start = 0
    cache = model.init_cache(batch, prompt_len + n, dtype=cache_dtype)
    kv_mask_BxS = jnp.zeros((batch, 0), jnp.int32)
    first_pos_B = jnp.zeros((batch,), jnp.int32)
  else:
    # Room for this call after the earlier turns' slots (one copy of the cache per turn).
    start = continuation.kv_mask_BxS.shape[1]
    cache = jax.tree.map(  # slots are the second-to-last axis
        lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, prompt_len + n), (0, 0)]),
        continuation.cache,
    )
    kv_mask_BxS = continuation.kv_mask_BxS.astype(jnp.int32)
    first_pos_B = continuation.next_pos_B.astype(jnp.int32)
  gen_start = start + prompt_len
  kv_mask_BxS = jnp.concatenate(
      [kv_mask_BxS, prompt_mask_BxP, jnp.ones((batch, n), jnp.int32)], axis=1
  )
  positions_BxP = first_pos_B[:, None] + jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=-1) - 1, 0)
  logits_BxV, cache = prefill_last_logits(
      model, prompt_BxP, positions_BxP, cache, kv_mask_BxS, start
  )
  first_new_pos_B = first_pos_B + prompt_lens_B

  max_new_B = jnp.minimum(max_new_B.astype(jnp.int32), n)
  init = dict(
      i=jnp.zeros((), jnp.int32),
      cache=cache,
      logits_BxV=logits_BxV,
      tokens_BxN=jnp.full((batch, n), pad_id, jnp.int32),
      logprobs_BxN=jnp.zeros((batch, n), jnp.float32),
      sample_logprobs_BxN=jnp.zeros((batch, n), jnp.float32),
      valid_BxN=jnp.zeros((batch, n), jnp.bool_),
      done_B=max_new_B <= 0,
      stopped_B=jnp.zeros((batch,), jnp.bool_),
  )

  def cond(c):
    return (c["i"] < n) & ~jnp.all(c["done_B"])

  def body(c):
    i = c["i"]
    token_B, sample_logp_B = filters.sample_token(
        jax.random.fold_in(rng, i),
        c["logits_BxV"],
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p if use_top_p else None,
    )
    logp_BxV = jax.nn.log_softmax(c["logits_BxV"], axis=-1)
    logp_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
    active_B = ~c["done_B"]
    token_B = jnp.where(active_B, token_B, pad_id)
    hit_stop_B = active_B & jnp.isin(token_B, eos_ids_E)
    done_B = c["done_B"] | hit_stop_B | (i + 1 >= max_new_B)
    out = dict(
        i=i + 1,
        tokens_BxN=c["tokens_BxN"].at[:, i].set(token_B),
        logprobs_BxN=c["logprobs_BxN"].at[:, i].set(jnp.where(active_B, logp_B, 0.0)),
        sample_logprobs_BxN=c["sample_logprobs_BxN"]
        .at[:, i]
        .set(jnp.where(active_B, sample_logp_B, 0.0)),
        valid_BxN=c["valid_BxN"].at[:, i].set(active_B),
        done_B=done_B,
        stopped_B=c["stopped_B"] | hit_stop_B,
    )
    positions_Bx1 = (first_new_pos_B + i)[:, None]
    next_logits_Bx1xV, cache = model.decode(
        token_B[:, None], positions_Bx1, c["cache"], gen_start + i, kv_mask_BxS
    )
    out["cache"] = cache
    out["logits_BxV"] = next_logits_Bx1xV[:, 0].astype(jnp.float32)
    return out

  final = jax.lax.while_loop(cond, body, init)
  lengths_B = final["valid_BxN"].sum(axis=-1).astype(jnp.int32)
  samples = SampleArrays(
      tokens_BxN=final["tokens_BxN"],
      logprobs_BxN=final["logprobs_BxN"],
      sample_logprobs_BxN=final["sample_logprobs_BxN"],
      valid_BxN=final["valid_BxN"],
      lengths_B=lengths_B,
      stopped_B=final["stopped_B"],
      num_steps=final["i"],
  )
  # Slots after a row finished hold pad tokens: masked out for the next turn.
  kv_mask_BxS = kv_mask_BxS.at[:, gen_start:].set(final["valid_BxN"].astype(jnp.int32))
  return samples, Continuation(final["cache"], kv_mask_BxS, first_new_pos_B + lengths_B)


def generate_arrays(
    model: nnx.Module,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: Sequence[int] = (),
    max_new_B: jax.Array | None = None,
    pad_id: int = 0,
    cache_dtype: Any = None,
    continuation: Continuation | None = None,
    return_continuation: bool = False,
) -> SampleArrays | tuple[SampleArrays, Continuation]:
  """Samples up to `max_new_tokens` tokens for each left-padded prompt, in one jitted call.

  Args:
    model: a `score.models.Transformer` (anything with `init_cache` and `decode`).
    prompt_BxP: int prompt ids, left-padded; every row needs ≥ 1 real token.
    prompt_mask_BxP: 1 for real prompt tokens, 0 for padding.
    rng: a `jax.random` key (ignored for greedy decoding).
    max_new_tokens: N, the number of generated slots (static).
    temperature: 0 → greedy (argmax); > 0 → sample from softmax(logits / temperature).
    top_k, top_p: optional filters applied after the temperature (`filters.filter_logits`).
    eos_ids: stop token ids; a row stops after emitting one (it is kept, valid).
    max_new_B: optional per-row limits (≤ N) on the number of new tokens.
    pad_id: written into slots after a row finished.
    cache_dtype: KV-cache dtype (default: the model's choice).
    continuation: the `Continuation` of an earlier call on the same rows: the prompts are
      then appended to what those rows already hold (prompt + earlier turns) instead of
      starting afresh. Needs full attention on every layer (a sliding window counts slots,
      and a continued cache has masked gaps between turns).
    return_continuation: also return this call's `Continuation` (for the next turn).

  Returns:
    `SampleArrays` (and the `Continuation`). Calls with the same shapes and static options
    reuse one compilation. The loop exits as soon as every row has finished.
  """
  if temperature < 0:
    raise ValueError(f"generate_arrays: temperature must be ≥ 0, got {temperature}")
  if max_new_tokens < 1:
    raise ValueError(f"generate_arrays: max_new_tokens must be ≥ 1, got {max_new_tokens}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"generate_arrays: top_p must be in (0, 1], got {top_p}")
  if not isinstance(prompt_mask_BxP, jax.core.Tracer) and np.ndim(prompt_mask_BxP) == 2:
    # Checked before any transfer: a host mask never waits for queued device work.
    last_B = np.asarray(prompt_mask_BxP)[:, -1]
    if not last_B.all():
      raise ValueError(
          "generate_arrays: prompts must be left-padded with a real last token; rows "
          f"{np.flatnonzero(last_B == 0).tolist()} have padding in the last column"
      )
  prompt_BxP = jnp.asarray(prompt_BxP, jnp.int32)
  prompt_mask_BxP = jnp.asarray(prompt_mask_BxP, jnp.int32)
  if prompt_BxP.ndim != 2 or prompt_BxP.shape != prompt_mask_BxP.shape:
    raise ValueError(
        "generate_arrays: prompt_BxP and prompt_mask_BxP must be 2-D and the same shape, "
        f"got {prompt_BxP.shape} and {prompt_mask_BxP.shape}"
    )
  batch = prompt_BxP.shape[0]
  if max_new_B is None:
    max_new_B = jnp.full((batch,), max_new_tokens, jnp.int32)
  graphdef, state = nnx.split(model)
  greedy = temperature == 0.0
  # Stop ids are data (padded with -1 to a power of two ≥ 4), so they never recompile.
  eos_ids = [int(e) for e in eos_ids]
  eos_ids_E = np.full((_next_pow2(len(eos_ids), 4),), -1, np.int32)
  eos_ids_E[: len(eos_ids)] = eos_ids
  if continuation is not None and continuation.kv_mask_BxS.shape[0] != batch:
    raise ValueError(
        f"generate_arrays: {batch} prompts continue a cache of "
        f"{continuation.kv_mask_BxS.shape[0]} rows"
    )
  samples, cont = _generate_core(
      state,
      continuation,
      prompt_BxP,
      prompt_mask_BxP,
      rng,
      jnp.asarray(greedy),
      jnp.asarray(1.0 if greedy else temperature, jnp.float32),
      jnp.asarray(top_p if top_p is not None else 1.0, jnp.float32),
      jnp.asarray(eos_ids_E),
      jnp.asarray(max_new_B, jnp.int32),
      graphdef=graphdef,
      max_new_tokens=int(max_new_tokens),
      top_k=None if top_k is None or greedy else int(top_k),
      use_top_p=top_p is not None and not greedy,
      pad_id=int(pad_id),
      cache_dtype=cache_dtype,
  )
  return (samples, cont) if return_continuation else samples


def continues_cache(model: Any) -> bool:
  """Whether `model` can continue a `Continuation` (full attention on every layer)."""
  config = getattr(model, "config", None)
  if config is None or not hasattr(model, "init_cache"):
    return False
  return all(config.layer_window(i) is None for i in range(config.num_layers))


# ---------------------------------------------------------------------------------------------
# Lists in, lists out.


def left_pad(
    prompts: Sequence[Sequence[int]],
    *,
    length: int | None = None,
    batch_size: int | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into `(tokens_BxP, mask_BxP)` numpy arrays.

  `length` defaults to the longest prompt. Extra rows up to `batch_size` are filler rows
  holding one `pad_id` token with mask 1 (so attention never sees an all-padding row).
  """
  lens = [len(p) for p in prompts]
  if any(n == 0 for n in lens):
    raise ValueError(f"left_pad: empty prompt at index {lens.index(0)}")
  length = max(lens) if length is None else length
  if max(lens) > length:
    raise ValueError(f"left_pad: a prompt has {max(lens)} tokens > length {length}")
  batch_size = len(prompts) if batch_size is None else batch_size
  tokens_BxP = np.full((batch_size, length), pad_id, np.int32)
  mask_BxP = np.zeros((batch_size, length), np.int32)
  for b, p in enumerate(prompts):
    tokens_BxP[b, length - len(p):] = np.asarray(p, np.int32)
    mask_BxP[b, length - len(p):] = 1
  mask_BxP[len(prompts):, -1] = 1
  return tokens_BxP, mask_BxP


def bucket_length(n: int, minimum: int = 16) -> int:
  """The smallest of 2^k · {1, 5/4, 3/2, 7/4} (≥ `minimum`, a power of two ≥ 4) that is ≥ n:
  16, 20, 24, 28, 32, 40, 48, ...: four buckets per doubling, so padding wastes < 25 %
  (powers of two wasted up to half, e.g. a 19-token prompt padded to 32)."""
  n = max(int(n), minimum)
  base = _next_pow2(n) // 2
  if base < minimum:
    return minimum
  return next(base * q // 4 for q in (5, 6, 7, 8) if base * q // 4 >= n)


def bucket_shape(batch: int, prompt_len: int, *, min_len: int = 16) -> tuple[int, int]:
  """A power of two ≥ the batch size and `bucket_length(prompt_len, min_len)`."""
  return _next_pow2(batch), bucket_length(prompt_len, min_len)


def find_stop_string(
    tokens: Sequence[int], stop_strings: Sequence[str], decode_fn: Callable[[list[int]], str]
) -> int | None:
  """Smallest `j` such that `decode_fn(tokens[:j])` contains a stop string, or None.

  Uses bisection on the prefix length (containment is monotone in the prefix as long as
  decoding a longer prefix extends the text, which holds for ordinary detokenisers).
  """
  tokens = list(tokens)
  if not stop_strings or not any(s in decode_fn(tokens) for s in stop_strings):
    return None
  lo, hi = 0, len(tokens)  # decode(tokens[:lo]) has no stop; decode(tokens[:hi]) has one.
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if any(s in decode_fn(tokens[:mid]) for s in stop_strings):
      hi = mid
    else:
      lo = mid
  return hi


def generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int],
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: Sequence[int] = (),
    stop_strings: Sequence[str] | None = None,
    decode_fn: Callable[[list[int]], str] | None = None,
    seed: int | jax.Array = 0,
    pad_id: int = 0,
    bucket: bool = True,
    mesh: Any = None,
    continuation: Continuation | None = None,
    return_continuation: bool = False,
) -> Samples | tuple[Samples, Continuation]:
  """Samples completions for a list of token-id prompts (see `generate_arrays`).

  `max_new_tokens` is an int or one limit per prompt. Stop strings need `decode_fn`
  (token ids → text): they are checked after decoding, and a row is cut right after the
  token that completed the first stop string (finish reason "stop"). With `bucket=True`
  the batch size and `max_new_tokens` are rounded up to powers of two and the prompt length
  to a quarter-octave bucket (`bucket_length`; the true limits are enforced per row) so that
  calls with similar shapes share one compilation.

  With a `jax.sharding.Mesh` of more than one device as `mesh`, the batch is padded with
  filler rows to a multiple of data×fsdp and sampled by
  `score.parallel.sharded_generate_arrays` (params on the mesh, prompts split over
  data×fsdp); otherwise by `generate_arrays`.

  Turns. With `return_continuation=True` the call also returns a `Continuation` (the KV
  cache on the device(s); `kv_mask_BxS` / `next_pos_B` as host arrays, with tokens after a
  stop string masked out). Passing it back as `continuation=` with the same number of
  prompts, each now holding only the tokens to append (e.g. the instruction of the next
  turn, ≥ 1 token per row), continues every row where it stopped: nothing is prefilled
  again (`continues_cache(model)` says whether the model allows it).
  """
  if stop_strings and decode_fn is None:
    raise ValueError("generate: stop_strings need decode_fn (token ids -> text)")
  if not prompts:
    return Samples([], [], [], [])
  if isinstance(max_new_tokens, int):
    limits = [max_new_tokens] * len(prompts)
  else:
    limits = [int(m) for m in max_new_tokens]
    if len(limits) != len(prompts):
      raise ValueError(
          f"generate: {len(limits)} max_new_tokens for {len(prompts)} prompts"
      )
  n = max(max(limits), 1)
  batch, length = len(prompts), max(len(p) for p in prompts)
  if bucket:
    batch, length = bucket_shape(batch, length, min_len=16 if continuation is None else 8)
    # Per-row limits end each row; the loop exits once all rows are done, so a larger
    # slot count costs only cache memory, and nearby budgets share a compilation.
    n = _next_pow2(n, 8)
  if continuation is not None:
    batch = continuation.kv_mask_BxS.shape[0]  # The rows (fillers included) of turn 1.
    if len(prompts) > batch:
      raise ValueError(f"generate: {len(prompts)} prompts continue {batch} rows")
  else:
    batch = _mesh_batch(batch, mesh)
  tokens_BxP, mask_BxP = left_pad(prompts, length=length, batch_size=batch, pad_id=pad_id)
  max_new_B = np.zeros((batch,), np.int32)
  max_new_B[: len(prompts)] = limits
  rng = jax.random.key(int(seed)) if isinstance(seed, (int, np.integer)) else seed
  out, cont, fetch = _call(
      model, tokens_BxP, mask_BxP, max_new_B, rng, mesh=mesh, continuation=continuation,
      max_new_tokens=n, temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=eos_ids,
      pad_id=pad_id,
  )
  fields, masks = fetch(
      (_host_fields(out), (cont.kv_mask_BxS, cont.next_pos_B) if return_continuation else ())
  )
  if return_continuation:
    kv_mask_BxS, next_pos_B = (np.array(a) for a in masks)  # writable copies
    gen_start = kv_mask_BxS.shape[1] - fields[0].shape[1]
  samples = _samples(fields, len(prompts))
  for b, tokens in enumerate(samples.tokens if stop_strings else ()):
    cut = find_stop_string(tokens, stop_strings, decode_fn)
    if cut is not None:
      if return_continuation:  # The next turn must not see the tokens cut off.
        kv_mask_BxS[b, gen_start + cut:] = 0
        next_pos_B[b] -= len(tokens) - cut
      for field in (samples.tokens, samples.logprobs, samples.sample_logprobs):
        field[b] = field[b][:cut]
      samples.finish_reason[b] = FINISH_STOP
  if return_continuation:
    return samples, Continuation(cont.cache, kv_mask_BxS, next_pos_B)
  return samples


def _mesh_batch(batch: int, mesh: Any) -> int:
  """`batch` rounded up so its rows split over the mesh's data×fsdp devices and, with
  several processes, equally over them (unchanged without a mesh)."""
  if mesh is None or mesh.size == 1:
    return batch
  # Imported here: score.parallel imports score.sampling.
  from score import parallel  # pylint: disable=g-import-not-at-top

  div = math.lcm(parallel.batch_divisor(mesh), jax.process_count())
  return -(-batch // div) * div


def _call(model, tokens_BxP, mask_BxP, max_new_B, rng, *, mesh, continuation, **options):
  """One `generate_arrays` call (on `mesh` when it has several devices) that also returns
  its `Continuation`; returns `(SampleArrays, Continuation, fetch)`, `fetch` reading arrays
  back to this host (gathering other processes' rows)."""
  if mesh is None or mesh.size == 1:
    out, cont = generate_arrays(
        model, tokens_BxP, mask_BxP, rng, continuation=continuation, max_new_B=max_new_B,
        return_continuation=True, **options
    )
    return out, cont, jax.device_get
  from score import parallel  # pylint: disable=g-import-not-at-top

  # Every process holds all prompts (SPMD); each feeds its rows of the global batch and gets
  # every row back. Arrays already on the devices (a continuation's masks, limits computed
  # from it) are global and go as they are.
  rows = parallel.process_batch_slice(tokens_BxP.shape[0])
  local = lambda x: x[rows] if isinstance(x, np.ndarray) else x  # noqa: E731
  if continuation is not None:
    continuation = continuation._replace(
        kv_mask_BxS=local(continuation.kv_mask_BxS), next_pos_B=local(continuation.next_pos_B)
    )
  out, cont = parallel.sampling.sharded_generate_arrays(
      model, tokens_BxP[rows], mask_BxP[rows], rng, mesh=mesh, continuation=continuation,
      max_new_B=local(max_new_B), return_continuation=True, **options
  )
  return out, cont, parallel.gather


def _host_fields(out: SampleArrays) -> tuple:
  return out.tokens_BxN, out.logprobs_BxN, out.sample_logprobs_BxN, out.lengths_B, out.stopped_B


def generate_turns(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: Sequence[int],
    instruction: Sequence[int],
    max_len: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: Sequence[int] = (),
    seed: int | jax.Array = 0,
    pad_id: int = 0,
    mesh: Any = None,
) -> list[Samples]:
  """`len(max_new_tokens)` turns for every prompt with the fixed `instruction` ids between
  them: what `generate` with continuations does turn by turn, with nothing read back
  between turns. Each turn continues the last one's KV cache; its per-row limits and which
  rows go on are computed on the device(s) from the cache's positions, so every turn is
  dispatched before the host waits, once, for all of them.

  Turn k samples with the key `fold_in(key(seed), k)`; row b's limit at turn k > 0 is
  `min(max_new_tokens[k], max_len − (its tokens so far + len(instruction)))`, and 0 (the
  episode is over) once that leaves no room, as `rollouts.rollout` sets them. Needs
  `continues_cache(model)`. Returns one `Samples` per turn.
  """
  instruction = [int(t) for t in instruction]
  if not instruction:
    raise ValueError("generate_turns: the instruction needs at least one token")
  key = jax.random.key(int(seed)) if isinstance(seed, (int, np.integer)) else seed
  batch, length = bucket_shape(len(prompts), max(len(p) for p in prompts))
  batch = _mesh_batch(batch, mesh)
  tokens_BxP, mask_BxP = left_pad(prompts, length=length, batch_size=batch, pad_id=pad_id)
  inst_BxI, inst_mask_BxI = left_pad(
      [instruction] * batch, length=bucket_length(len(instruction), 8), pad_id=pad_id
  )
  real_B = np.arange(batch) < len(prompts)
  lens_B = np.array([len(p) for p in prompts] + [1] * (batch - len(prompts)))
  room_B = np.full((batch,), max_new_tokens[0])
  if max_len is not None:
    room_B = np.minimum(room_B, max_len - lens_B)
  max_new_B = np.where(real_B, np.maximum(room_B, 0), 0).astype(np.int32)
  options = dict(
      temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=eos_ids, pad_id=pad_id
  )
  outs, cont, fetch = [], None, jax.device_get
  for k, budget in enumerate(max_new_tokens):
    if k:
      context_B = cont.next_pos_B + len(instruction)
      limit_B = jnp.full_like(context_B, budget)
      if max_len is not None:  # ≤ 0 once there is no room: that episode is over
        limit_B = jnp.minimum(limit_B, max_len - context_B)
      max_new_B = jnp.where(real_B, limit_B, 0).astype(jnp.int32)
    out, cont, fetch = _call(
        model, tokens_BxP if k == 0 else inst_BxI, mask_BxP if k == 0 else inst_mask_BxI,
        max_new_B, jax.random.fold_in(key, k), mesh=mesh, continuation=cont,
        max_new_tokens=_next_pow2(max(int(budget), 1), 8), **options
    )
    outs.append(_host_fields(out))
  return [_samples(fields, len(prompts)) for fields in fetch(outs)]


def _samples(fields, num_rows: int) -> Samples:
  tokens_BxN, logp_BxN, slogp_BxN, lengths_B, stopped_B = fields
  samples = Samples([], [], [], [])
  for b in range(num_rows):
    m = int(lengths_B[b])
    samples.tokens.append(tokens_BxN[b, :m].tolist())
    samples.logprobs.append(logp_BxN[b, :m].tolist())
    samples.sample_logprobs.append(slogp_BxN[b, :m].tolist())
    samples.finish_reason.append(FINISH_STOP if stopped_B[b] else FINISH_LENGTH)
  return samples
