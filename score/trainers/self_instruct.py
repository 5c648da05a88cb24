"""Self-instruction creation (Yuan et al. 2024, §2.2): the parts of one Self-Rewarding iteration.

* `generate_texts` — batched sampling of text completions of token prompts;
* prompt sources by name (`PROMPT_SOURCES`): new instructions written few-shot by a
  generator model (`few_shot_prompts`, the paper's), or drawn from the synthetic task
  (`synthetic_prompts`, the tiny runlocal demo);
* `judge_rows` — LLM-as-a-Judge: each response judged k times with the additive prompt;
* `mine_pairs` — (best, worst) pairs, ties dropped;
* `pairwise_rows` — a fixed judge's pairwise verdicts in both orders (evaluation).

Every function is a pure function of its inputs and seed, so a re-run writes the same files.
"""

from __future__ import annotations

import collections
import math
import random
import zlib
from typing import TYPE_CHECKING, Callable, Sequence

import jax

from score import sampling
from score.data import self_rewarding as data_lib
from score.data.codec import Codec
from score.rewards import judge as judge_lib
from score.trainers import common

if TYPE_CHECKING:
  from score.trainers.self_rewarding import Loop


def stable_seed(*parts) -> int:
  """A 31-bit seed from strings/ints (stable across processes, unlike `hash`)."""
  return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def generate_texts(model, codec: Codec, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   temperature: float, top_p: float | None, seed: int, batch_size: int,
                   max_prompt_tokens: int, stop_strings: Sequence[str] = ()) -> list[dict]:
  """Samples one completion per token prompt, in batches of similar length.

  Returns `{"text", "num_tokens", "finish"}` per prompt (the text without its EOS).
  Prompts longer than `max_prompt_tokens` are not run: `{"text": None, "finish":
  "prompt_too_long"}`. The output is a function of (prompts, seed). A model whose params are
  on a mesh (the trainer's) samples on it, the batch split over data×fsdp.
  """
  mesh = common.model_mesh(model)
  out: list[dict | None] = [None] * len(prompts)
  runnable = [i for i, p in enumerate(prompts) if 0 < len(p) <= max_prompt_tokens]
  for i in set(range(len(prompts))) - set(runnable):
    out[i] = {"text": None, "num_tokens": 0, "finish": "prompt_too_long"}
  runnable.sort(key=lambda i: (len(prompts[i]), i))
  key = jax.random.key(seed)
  for c, start in enumerate(range(0, len(runnable), batch_size)):
    idx = runnable[start:start + batch_size]
    samples = sampling.generate(
        model, [list(prompts[i]) for i in idx], max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p if temperature > 0 else None,
        eos_ids=codec.eos_ids, stop_strings=list(stop_strings) or None,
        decode_fn=codec.decode if stop_strings else None, seed=jax.random.fold_in(key, c),
        pad_id=codec.pad_id, mesh=mesh)
    for j, i in enumerate(idx):
      tokens = samples.tokens[j]
      body = tokens[:-1] if tokens and tokens[-1] in codec.eos_ids else tokens
      out[i] = {"text": codec.decode(body), "num_tokens": len(tokens),
                "finish": samples.finish_reason[j]}
  return out  # type: ignore[return-value]




def judge_rows(model, codec: Codec, items: Sequence[tuple[str, str]], cfg, *, seed: int,
               batch_size: int, max_prompt_tokens: int) -> list[dict]:
  """Judges each (instruction, response) `cfg.num_judgments` times with `model`.

  Returns per item `{"judgments": [{"raw", "score", "reason"}], "score": mean | None}`;
  malformed outputs have `score` None and the parser's reason (never an exception).
  """
  k = cfg.num_judgments
  prompts = [codec.encode(codec.user_prompt(judge_lib.judge_prompt(ins, resp)))
             for ins, resp in items for _ in range(k)]
  outs = generate_texts(model, codec, prompts, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                        batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
  rows = []
  for i in range(len(items)):
    judgments = []
    for o in outs[i * k:(i + 1) * k]:
      if o["text"] is None:
        parsed = judge_lib.JudgeResult(None, o["finish"])
      else:
        parsed = judge_lib.parse_score(o["text"], multiple=cfg.multiple)
      judgments.append({"raw": o["text"], "score": parsed.score, "reason": parsed.reason})
    rows.append({"judgments": judgments,
                 "score": judge_lib.average_scores(j["score"] for j in judgments)})
  return rows


def mine_pairs(prompts: Sequence[dict], candidates: Sequence[Sequence[str]],
               scores: Sequence[Sequence[float | None]]) -> tuple[list[dict], dict]:
  """The paper's pairs: per prompt, the highest- vs the lowest-scored candidate.

  A prompt gives no pair when fewer than two candidates have a score (``unscored``), when
  the best and worst scores tie (``tie``), or when the two texts are identical
  (``identical``, no DPO signal). Returns `(pairs, counts)`.
  """
  pairs, counts = [], collections.Counter()
  for p, texts, s in zip(prompts, candidates, scores, strict=True):
    counts["prompts"] += 1
    if sum(x is not None for x in s) < 2:
      counts["unscored"] += 1
      continue
    pick = judge_lib.select_pair(s)
    if pick is None:
      counts["tie"] += 1
      continue
    best, worst = pick
    if texts[best] == texts[worst]:
      counts["identical"] += 1
      continue
    counts["pairs"] += 1
    pairs.append({"prompt_id": p["id"], "prompt": p["prompt"], "chosen": texts[best],
                  "rejected": texts[worst], "chosen_score": s[best], "rejected_score": s[worst],
                  "chosen_index": best, "rejected_index": worst, "scores": list(s)})
  for k in ("prompts", "unscored", "tie", "identical", "pairs"):
    counts.setdefault(k, 0)
  return pairs, dict(counts)


def pairwise_rows(model, codec: Codec, items: Sequence[tuple[str, str, str]], cfg, *,
                  seed: int, batch_size: int, max_prompt_tokens: int) -> list[dict]:
  """Pairwise verdicts on `(instruction, response_a, response_b)` in both presentation
  orders (`judge.combine_pairwise` cancels position bias). Returns per item the raw texts,
  both parsed verdicts and the combined winner (``"A"``, ``"B"``, ``"tie"`` or None)."""
  prompts = []
  for ins, a, b in items:
    prompts.append(codec.encode(codec.user_prompt(judge_lib.pairwise_prompt(ins, a, b))))
    prompts.append(codec.encode(codec.user_prompt(judge_lib.pairwise_prompt(ins, b, a))))
  outs = generate_texts(model, codec, prompts, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                        batch_size=batch_size, max_prompt_tokens=max_prompt_tokens)
  rows = []
  for i in range(len(items)):
    ab, ba = outs[2 * i], outs[2 * i + 1]
    pab = judge_lib.parse_pairwise(ab["text"])
    pba = judge_lib.parse_pairwise(ba["text"])
    both = judge_lib.combine_pairwise(pab, pba)
    rows.append({"raw_ab": ab["text"], "raw_ba": ba["text"], "ab": pab.winner,
                 "ba": pba.winner, "winner": both.winner, "reason": both.reason})
  return rows




def few_shot_prompts(ctx: "Loop", t: int, seen: Sequence[str]) -> list[dict]:
  """Paper: new prompts by 8-shot prompting from the IFT prompts, in rounds until
  `num_prompts` are kept (or `max_rounds`). Every generation is recorded with its fate."""
  cfg = ctx.config.self_instruct
  model, codec = ctx.generator()
  rng = random.Random(stable_seed(ctx.config.seed, t, "few_shot"))
  pool = [x.instruction for x in ctx.ift]
  seen = list(seen)
  rows = []
  kept = 0
  for rnd in range(cfg.max_rounds):
    need = cfg.num_prompts - kept
    if need <= 0:
      break
    n = max(1, math.ceil(need * cfg.oversample))
    texts = [data_lib.few_shot_prompt(data_lib.sample_shots(pool, cfg.num_shots, rng))
             for _ in range(n)]
    outs = generate_texts(
        model, codec, [codec.encode(x, raw=True) for x in texts],
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        seed=stable_seed(ctx.config.seed, t, "few_shot", rnd),
        batch_size=ctx.config.sample_batch_size, max_prompt_tokens=ctx.max_prompt_tokens,
        stop_strings=(data_lib.TASK_CLOSE,))
    parsed = [None if o["text"] is None else data_lib.parse_generated_task(o["text"])
              for o in outs]
    fates = data_lib.filter_prompts(parsed, seen=seen, min_chars=cfg.min_chars,
                                    max_chars=cfg.max_chars)
    for o, p, fate in zip(outs, parsed, fates):
      if fate == "kept":
        if kept >= cfg.num_prompts:
          fate = "surplus"
        else:
          kept += 1
          seen.append(p)
      rows.append({"round": rnd, "raw": o["text"], "finish": o["finish"], "parsed": p,
                   "fate": fate})
  return rows


def synthetic_prompts(ctx: "Loop", t: int, seen: Sequence[str]) -> list[dict]:
  """Fresh prompts of the synthetic task (`score.data.self_rewarding.synthetic_ranked`): a
  stand-in for a capable prompt generator in the tiny runlocal demo, where a random model
  cannot write tasks. Filtered like generated ones."""
  cfg = ctx.config.self_instruct
  ranked = data_lib.synthetic_ranked(cfg.num_prompts * 8 + 8,
                                     seed=stable_seed(ctx.config.seed, t, "synthetic"))
  texts = [r.prompt for r in ranked]
  fates = data_lib.filter_prompts(texts, seen=seen, min_chars=cfg.min_chars,
                                  max_chars=cfg.max_chars)
  rows, kept = [], 0
  for text, fate in zip(texts, fates):
    if fate == "kept":
      if kept >= cfg.num_prompts:
        fate = "surplus"
      else:
        kept += 1
    rows.append({"round": 0, "raw": text, "finish": "synthetic", "parsed": text, "fate": fate})
  return rows


PROMPT_SOURCES: dict[str, Callable] = {"few_shot": few_shot_prompts,
                                        "synthetic": synthetic_prompts}
