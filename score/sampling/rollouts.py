"""Multi-turn episodes for self-correction (SCoRe, Kumar et al. 2024, arXiv 2409.12917).

Turn 1 samples `y1 ~ π(·|x1)`; turn k+1 samples from `x_{k+1} = x_k ⊕ y_k ⊕ p_k`, where
`p_k` are the instruction tokens (the paper's fixed self-correction instruction, wrapped in
the chat template for chat models). The sampled ids `y_k` are spliced into the next context
*as sampled*, never decoded and re-tokenised, so turn k+1 conditions on exactly the tokens
turn k produced (and the trainer recomputes log-probs on exactly that sequence).

An episode row holds `x_K ⊕ y_K = x1 ⊕ y1 ⊕ p1 ⊕ y2 ⊕ … ⊕ y_K`, left-padded:

    tokens_BxL      the ids
    mask_BxL        1 for real tokens (prompt, instructions, responses), 0 for padding
    turn_mask_BxL   k on tokens generated at turn k, 0 on prompt/instruction/padding;
                    `turn_mask_BxL > 0` is the only set of positions a loss may touch
    logprobs_BxL    sampler log-probs (raw model, temperature 1) at generated positions, else 0;
                    same alignment as `token_logprobs`: entry t is log p(token t | tokens < t)

Rows are prompt-major: row `i * G + g` is sample `g` of prompt `i` (reshape to `(P, G)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from score.sampling.sampler import (
    FINISH_LENGTH,
    FINISH_STOP,
    Samples,
    continues_cache,
    generate,
    generate_turns,
)

# instruction(turn k, context x_k, response y_k) -> tokens p_k appended before turn k+1.
InstructionFn = Callable[[int, list[int], list[int]], list[int]]


@dataclasses.dataclass
class Episodes:
  """Rollout output for B = num_prompts · G rows and K turns (see module docstring).

  responses[b][k]: ids generated at turn k+1 (stop token included if hit), for rewards.
  instructions[b][k]: ids inserted after turn k+1 (K − 1 entries; fewer if the episode hit
      `max_len`).
  prompt_index_B: index of the prompt each row came from.
  lengths_BxK: len(responses[b][k]).
  truncated_BxK: True where turn k+1 ended without a stop (length limit / `max_len`).
  finish_reason: "stop" or "length" per row and turn.
  """

  tokens_BxL: np.ndarray
  mask_BxL: np.ndarray
  turn_mask_BxL: np.ndarray
  logprobs_BxL: np.ndarray
  sample_logprobs_BxL: np.ndarray
  prompt_index_B: np.ndarray
  lengths_BxK: np.ndarray
  truncated_BxK: np.ndarray
  responses: list[list[list[int]]]
  instructions: list[list[list[int]]]
  finish_reason: list[list[str]]

  @property
  def loss_mask_BxL(self) -> np.ndarray:
    """1 on model-generated tokens (any turn), 0 elsewhere."""
    return (self.turn_mask_BxL > 0).astype(np.int32)

  def context(self, b: int, turn: int, prompts: Sequence[Sequence[int]]) -> list[int]:
    """`x_turn` (1-based) of row b, rebuilt from the prompt, responses and instructions."""
    x = list(prompts[int(self.prompt_index_B[b])])
    for k in range(turn - 1):
      x += self.responses[b][k] + self.instructions[b][k]
    return x


def _as_instruction_fn(instruction: Sequence[int] | InstructionFn | None) -> InstructionFn:
  if instruction is None:
    return lambda turn, context, response: []
  if callable(instruction):
    return instruction
  tokens = [int(t) for t in instruction]
  return lambda turn, context, response: list(tokens)


def rollout(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    *,
    num_turns: int,
    max_new_tokens: int | Sequence[int],
    instruction: Sequence[int] | InstructionFn | None = None,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: Sequence[int] = (),
    stop_strings: Sequence[str] | None = None,
    decode_fn: Callable[[list[int]], str] | None = None,
    max_len: int | None = None,
    pad_to_multiple: int = 8,
    pad_id: int = 0,
    seed: int | jax.Array = 0,
    first_responses: Sequence[Sequence[int]] | None = None,
    mesh: Any = None,
) -> Episodes:
  """Samples `samples_per_prompt` episodes of `num_turns` turns for every prompt.

  Args:
    model: a `score.models.Transformer`.
    prompts: first-turn contexts `x1` as token-id lists (already templated).
    num_turns: K ≥ 1.
    max_new_tokens: per-turn budget, an int or one per turn.
    instruction: tokens `p` appended after every response, or a callable
      `(turn, x_turn, y_turn) -> p_turn` (e.g. `chat_instruction(tokenizer, text)`), or None.
    samples_per_prompt: G; each prompt is repeated G times with independent draws.
    temperature, top_k, top_p, eos_ids, stop_strings, decode_fn: as in `generate`.
    max_len: optional cap on the whole episode. Each turn's budget is cut to fit; if the
      next context would not leave room for a token, the remaining turns are empty and
      truncated. Also the padded width L of the output (else the longest row, rounded up
      to `pad_to_multiple`).
    seed: int or key; turn k uses `fold_in(key, k)`.
    first_responses: optional fixed turn-1 responses, one per prompt (e.g. MBPP-R's wrong
      first attempts): turn 1 is not sampled but these ids are spliced in (cut to fit
      `max_len`, not to `max_new_tokens`). They are context, not generated: `turn_mask` and
      log-probs are 0 on them; `responses[b][0]` holds them, finish reason "stop" if they
      end in an `eos_ids` token (else "length").
    mesh: optional `jax.sharding.Mesh`; with more than one device every turn is sampled on
      it, the batch split over data×fsdp (see `generate`).

  Turn k+1 continues turn k's KV cache (`generate(continuation=)`): only the instruction
  p_k is prefilled, not x_k ⊕ y_k again. With fixed instruction tokens (no callable), no
  stop strings and no `first_responses`, all turns are dispatched at once
  (`sampler.generate_turns`: limits computed on the device, the sampled ids read back once,
  after the last turn). Models with sliding-window layers, and a turn where some row has an
  empty instruction, prefill the whole context instead.
  """
  if num_turns < 1:
    raise ValueError(f"rollout: num_turns must be ≥ 1, got {num_turns}")
  if samples_per_prompt < 1:
    raise ValueError(f"rollout: samples_per_prompt must be ≥ 1, got {samples_per_prompt}")
  budgets = (
      [int(max_new_tokens)] * num_turns
      if isinstance(max_new_tokens, int)
      else [int(m) for m in max_new_tokens]
  )
  if len(budgets) != num_turns:
    raise ValueError(f"rollout: {len(budgets)} max_new_tokens for {num_turns} turns")
  if first_responses is not None and len(first_responses) != len(prompts):
    raise ValueError(
        f"rollout: {len(first_responses)} first_responses for {len(prompts)} prompts"
    )
  instruction_fn = _as_instruction_fn(instruction)
  key = jax.random.key(int(seed)) if isinstance(seed, (int, np.integer)) else seed

  prompt_index_B = np.repeat(np.arange(len(prompts)), samples_per_prompt)
  batch = len(prompt_index_B)
  contexts = [list(map(int, prompts[i])) for i in prompt_index_B]
  if max_len is not None and any(len(c) >= max_len for c in contexts):
    raise ValueError(f"rollout: a prompt has ≥ max_len={max_len} tokens")
  # Segments per row: (ids, turn or 0, raw log-probs, sampling log-probs).
  segments: list[list[tuple[list[int], int, list[float], list[float]]]] = [
      [(c, 0, [0.0] * len(c), [0.0] * len(c))] for c in contexts
  ]
  responses: list[list[list[int]]] = [[] for _ in range(batch)]
  instructions: list[list[list[int]]] = [[] for _ in range(batch)]
  reasons: list[list[str]] = [[] for _ in range(batch)]
  alive = [True] * batch  # False once an episode ran out of room (max_len).
  reuse = num_turns > 1 and continues_cache(model)
  continuation = None  # The KV cache of the turns so far, when `reuse`.
  dispatched = None  # Every turn's samples, when all turns run without the host.
  fixed = None if instruction is None or callable(instruction) else [int(t) for t in instruction]
  if reuse and fixed and not stop_strings and first_responses is None:
    dispatched = generate_turns(
        model, contexts, max_new_tokens=budgets, instruction=fixed, max_len=max_len,
        temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=eos_ids, seed=key,
        pad_id=pad_id, mesh=mesh)

  for k in range(num_turns):
    limits = []
    for b in range(batch):
      room = budgets[k] if max_len is None else min(budgets[k], max_len - len(contexts[b]))
      limits.append(max(room, 0) if alive[b] else 0)
    # With a cache, each row's prompt is what it lacks: the instruction after turn k
    # (a finished episode, which samples nothing more, gets one filler token).
    pending = None
    if continuation is not None and dispatched is None:
      pending = [
          instructions[b][k - 1] if alive[b] else [pad_id] for b in range(batch)
      ]
      if any(len(p) == 0 for p in pending):
        continuation, pending = None, None
    if dispatched is not None:
      samples = dispatched[k]  # Its limits are the ones above, computed on the device.
    elif k == 0 and first_responses is not None:
      samples = _forced(first_responses, prompt_index_B, contexts, max_len, eos_ids)
    else:
      samples = generate(
          model,
          contexts if pending is None else pending,
          max_new_tokens=limits if max(limits) > 0 else [1] * batch,
          continuation=continuation,
          return_continuation=reuse and k + 1 < num_turns,
          temperature=temperature,
          top_k=top_k,
          top_p=top_p,
          eos_ids=eos_ids,
          stop_strings=stop_strings,
          decode_fn=decode_fn,
          seed=jax.random.fold_in(key, k),
          pad_id=pad_id,
          mesh=mesh,
      )
      if reuse and k + 1 < num_turns:
        samples, continuation = samples
        if max(limits) == 0:  # The one token sampled for shape's sake is not kept.
          continuation = None
    for b in range(batch):
      y = samples.tokens[b] if limits[b] > 0 else []
      reason = samples.finish_reason[b] if limits[b] > 0 else FINISH_LENGTH
      lp = samples.logprobs[b] if limits[b] > 0 else []
      slp = samples.sample_logprobs[b] if limits[b] > 0 else []
      responses[b].append(y)
      reasons[b].append(reason)
      forced = k == 0 and first_responses is not None
      segments[b].append((y, 0 if forced else k + 1, lp, slp))
      contexts[b] = contexts[b] + y
      if k + 1 < num_turns and alive[b]:
        x_k = contexts[b][: len(contexts[b]) - len(y)]
        p = [int(t) for t in instruction_fn(k + 1, x_k, y)]
        if max_len is not None and len(contexts[b]) + len(p) >= max_len:
          alive[b] = False  # No room for another turn: stop the episode here.
          continue
        instructions[b].append(p)
        segments[b].append((p, 0, [0.0] * len(p), [0.0] * len(p)))
        contexts[b] = contexts[b] + p

  return _pack(
      segments, prompt_index_B, responses, instructions, reasons, max_len, pad_to_multiple, pad_id
  )


def _forced(first_responses, prompt_index_B, contexts, max_len, eos_ids):
  """Turn 1 as `Samples` from fixed responses: cut to the room left by `max_len` only."""
  tokens, reasons = [], []
  for b, i in enumerate(prompt_index_B):
    y = [int(t) for t in first_responses[int(i)]]
    if max_len is not None:
      y = y[: max_len - len(contexts[b])]
    tokens.append(y)
    reasons.append(FINISH_STOP if y and y[-1] in set(eos_ids) else FINISH_LENGTH)
  zeros = [[0.0] * len(y) for y in tokens]
  return Samples(tokens, zeros, [list(z) for z in zeros], reasons)


def _pack(segments, prompt_index_B, responses, instructions, reasons, max_len, multiple, pad_id):
  rows = []
  for segs in segments:
    ids, turns, lps, slps = [], [], [], []
    for seg_ids, turn, lp, slp in segs:
      ids += seg_ids
      turns += [turn] * len(seg_ids)
      lps += lp
      slps += slp
    rows.append((ids, turns, lps, slps))
  longest = max(len(r[0]) for r in rows)
  width = max_len if max_len is not None else -(-longest // multiple) * multiple
  batch = len(rows)
  tokens_BxL = np.full((batch, width), pad_id, np.int32)
  mask_BxL = np.zeros((batch, width), np.int32)
  turn_mask_BxL = np.zeros((batch, width), np.int32)
  logprobs_BxL = np.zeros((batch, width), np.float32)
  sample_logprobs_BxL = np.zeros((batch, width), np.float32)
  for b, (ids, turns, lps, slps) in enumerate(rows):
    s = slice(width - len(ids), width)
    tokens_BxL[b, s], mask_BxL[b, s], turn_mask_BxL[b, s] = ids, 1, turns
    logprobs_BxL[b, s], sample_logprobs_BxL[b, s] = lps, slps
  num_turns = len(responses[0])
  return Episodes(
      tokens_BxL=tokens_BxL,
      mask_BxL=mask_BxL,
      turn_mask_BxL=turn_mask_BxL,
      logprobs_BxL=logprobs_BxL,
      sample_logprobs_BxL=sample_logprobs_BxL,
      prompt_index_B=prompt_index_B,
      lengths_BxK=np.array([[len(y) for y in r] for r in responses], np.int32).reshape(
          batch, num_turns
      ),
      truncated_BxK=np.array([[x == FINISH_LENGTH for x in r] for r in reasons], bool).reshape(
          batch, num_turns
      ),
      responses=responses,
      instructions=instructions,
      finish_reason=reasons,
  )


# ---------------------------------------------------------------------------------------------
# Chat templates (tokenizer objects with `apply_chat_template`, e.g. transformers tokenizers).

_SENTINEL = "\u2063SCORE_RESPONSE\u2063"


def chat_prompt(tokenizer: Any, text: str, *, system: str | None = None) -> list[int]:
  """`x1` for a chat model: the user turn plus the assistant generation prompt."""
  messages = ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": text}
  ]
  out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  return list(tokenizer.encode(out, add_special_tokens=False))


def chat_instruction(
    tokenizer: Any, text: str, *, eos_ids: Sequence[int] = ()
) -> InstructionFn:
  """Instruction callable for chat models: the template text between an assistant
  response and the next assistant generation prompt, with `text` as the user turn.

  The template is rendered once with a sentinel as the assistant content; the part after
  the sentinel (end-of-turn marker, user turn with `text`, generation prompt) is tokenised
  on its own. If the response already ends with a stop id that is also the first token of
  that part (e.g. `<|im_end|>`), it is not repeated. Turn k's ids are kept as sampled.
  """
  messages = [
      {"role": "user", "content": "x"},
      {"role": "assistant", "content": _SENTINEL},
      {"role": "user", "content": text},
  ]
  rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  if _SENTINEL not in rendered:
    raise ValueError("chat_instruction: the chat template dropped the assistant content")
  suffix = rendered.split(_SENTINEL, 1)[1]
  full_ids = [int(t) for t in tokenizer.encode(suffix, add_special_tokens=False)]
  stops = {int(e) for e in eos_ids}

  def fn(turn: int, context: list[int], response: list[int]) -> list[int]:
    del turn, context
    if response and full_ids and response[-1] in stops and response[-1] == full_ids[0]:
      return full_ids[1:]
    return list(full_ids)

  return fn
