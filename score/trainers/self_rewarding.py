r"""Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020): the iterative loop.

`config.trainer = "self_rewarding"` (see `configs/self_rewarding.py`). One model is both the
policy and its own judge:

1. **M1** = SFT of M0 on IFT (instruction → response) and EFT (the additive 5-point judge
   prompt → rationale + ``Score: N``) data (`score.data.self_rewarding`).
2. For t = 1, 2, …: **self-instruction creation** with M_t — new prompts by 8-shot prompting
   from the IFT prompts (the generator is configurable: the current model by default, a fixed
   local checkpoint like the paper's), dedup/filter; N = 4 candidates per prompt (T = 0.7,
   top-p 0.9); each candidate judged k = 3 times by M_t and averaged (malformed judgments are
   counted and left out; a candidate with none valid is dropped); pairs = (best, worst), ties
   dropped (`score.rewards.judge`).
3. **DPO** of M_{t+1} from M_t with M_t as the reference (β = 0.1; sequence log-probs are
   sums over response tokens) — `score.trainers.dpo`.
4. **Judge quality** of every model vs held-out human rankings: pairwise accuracy, 5-best %,
   exact match %, Spearman and Kendall τ (`judge_quality`).
5. With a fixed local judge (`eval.pairwise_judge_dir`; the paper used GPT-4):
   **head-to-head** win/tie/lose of every model vs `eval.head_to_head_baseline`, and an
   AlpacaEval-style **win rate** vs reference outputs (`eval.reference_path`), each judged
   pairwise in both presentation orders (`pairwise_rows`, `win_tie_lose`).

Every phase writes its artefacts to the workdir and is skipped on a re-run when they exist
(JSONL files are written to a temporary name and renamed when complete); a killed SFT/DPO
phase resumes from its orbax checkpoint::

  data/{ift,eft_train,eft_eval,judge_eval}.jsonl, data/summary.json
  m0/                                   tiny random model + tokenizer (only without model_dir)
  checkpoints/m1_sft/                   M1
  iter{t}/prompt_generations.jsonl      every generated prompt: raw text, parse, fate
  iter{t}/prompts.jsonl                 the kept prompts
  iter{t}/candidates.jsonl              N responses per prompt from M_t
  iter{t}/judgments.jsonl               k raw judge outputs per candidate, parsed scores, mean
  iter{t}/pairs.jsonl, mining.json      (best, worst) pairs; counts, malformed reasons
  checkpoints/m{t+1}_dpo/, iter{t}/dpo.json
  eval/judge_m{t}.jsonl, eval/judge_m{t}.json   raw judgments of held-out ranked responses
  eval/responses_m{t}.jsonl                    greedy responses (pairwise evaluation only)
  eval/h2h_m{t}_vs_m1.{jsonl,json}, eval/winrate_m{t}_vs_reference.{jsonl,json}
  results.json, results.md

An iteration that yields no pairs stops the loop with a message naming the counts (written to
`iter{t}/mining.json` and `results.md`); judge outputs never crash it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import random
import shutil
import zlib
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from score import sampling
from score.data import self_rewarding as data_lib
from score.rewards import judge as judge_lib
from score.trainers import common
from score.trainers import dpo as dpo_lib
from score.trainers import sft as sft_lib
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib
from score.utils import run as run_lib

# Yuan et al. (2024), Table 4 (SPEC §2): judge pairwise accuracy vs human rankings (%).
PUBLISHED_PAIRWISE_ACCURACY = {"sft_baseline": 65.1, "m1": 78.7, "m2": 80.4, "m3": 81.7}
# AlpacaEval 2.0 win rate vs GPT-4 Turbo (%), for the README.
PUBLISHED_ALPACA_EVAL = {"m1": 9.94, "m2": 15.38, "m3": 20.44}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def stable_seed(*parts) -> int:
  """A 31-bit seed from strings/ints (stable across processes, unlike `hash`)."""
  return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------
# Text <-> tokens.


@dataclasses.dataclass
class Codec:
  """A Hugging Face tokenizer plus the prompt format.

  `prompt_format`: ``"chat"`` renders a user turn with the tokenizer's chat template
  (``add_generation_prompt=True``); ``"plain"`` writes ``"Question: …\\n\\nAnswer: "`` for
  base checkpoints. A response is its text followed by the first EOS id.
  """

  tokenizer: Any
  prompt_format: str = "chat"

  def __post_init__(self):
    if self.prompt_format not in ("chat", "plain"):
      raise ValueError(f"prompt_format must be 'chat' or 'plain', got {self.prompt_format!r}")
    if self.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
      raise ValueError("prompt_format='chat' needs a tokenizer with a chat template; use "
                       "prompt_format='plain' for a base checkpoint")
    eos = self.tokenizer.eos_token_id
    if eos is None:
      raise ValueError("the tokenizer has no eos_token_id; responses could never end")
    self.eos_ids = (int(eos),)
    pad = self.tokenizer.pad_token_id
    self.pad_id = int(pad) if pad is not None else int(eos)

  def user_prompt(self, text: str) -> str:
    if self.prompt_format == "chat":
      return self.tokenizer.apply_chat_template(
          [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return f"Question: {text}\n\nAnswer: "

  def encode(self, text: str, *, raw: bool = False) -> list[int]:
    """Token ids of `text`. Rendered prompts carry their own special tokens; `raw` text (the
    few-shot completion prompt) gets the tokenizer's default ones (e.g. BOS)."""
    return list(self.tokenizer.encode(text, add_special_tokens=raw))

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def example(self, user_text: str, response: str, max_len: int
              ) -> tuple[list[int], list[int]] | None:
    """`(tokens, loss_mask)` of prompt ⊕ response ⊕ EOS (loss on response and EOS), or None
    when longer than `max_len`."""
    prompt = self.encode(self.user_prompt(user_text))
    answer = self.encode(response) + [self.eos_ids[0]]
    if len(prompt) + len(answer) > max_len:
      return None
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


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


# ---------------------------------------------------------------------------------------------
# Judge quality vs human rankings (pure functions).


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(len(x), dtype=np.float64)
  for v in np.unique(x):
    tie = x == v
    ranks[tie] = ranks[tie].mean()
  return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman's ρ (Pearson correlation of average ranks); None if either side is constant."""
  rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
  if rx.std() == 0 or ry.std() == 0:
    return None
  return float(np.corrcoef(rx, ry)[0, 1])


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Kendall's τ-b (tie-corrected); None if either side is constant."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  n = len(x)
  concordant = discordant = ties_x = ties_y = 0
  for i in range(n):
    for j in range(i + 1, n):
      dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
      if dx == 0 and dy == 0:
        continue
      if dx == 0:
        ties_x += 1
      elif dy == 0:
        ties_y += 1
      elif dx == dy:
        concordant += 1
      else:
        discordant += 1
  denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
  return None if denom == 0 else (concordant - discordant) / denom


def judge_quality(scores: Sequence[Sequence[float | None]], ranks: Sequence[Sequence[int]]
                  ) -> dict[str, float]:
  """Agreement of judge scores with human rankings, over prompts (rank 0 = best).

  * ``pairwise_accuracy`` (%): over response pairs of a prompt with different human ranks,
    how often the judge scores the better one strictly higher. A tie or a missing (None)
    score counts as a disagreement.
  * ``five_best`` (%): how often the human-best response gets score 5 (average ≥ 4.5).
  * ``exact_match`` (%): prompts whose judge ordering equals the human one exactly (same
    ties, no missing score).
  * ``spearman``, ``kendall_tau``: per-prompt correlation between judge scores and −rank,
    averaged over prompts where it is defined (≥ 2 scored responses, neither side constant);
    ``correlation_prompts`` says how many.
  * ``missing`` (%): responses without a valid score.
  """
  pairs = agree = best_five = exact = missing = total = 0
  rhos, taus = [], []
  for s_row, r_row in zip(scores, ranks, strict=True):
    if len(s_row) != len(r_row):
      raise ValueError(f"judge_quality: {len(s_row)} scores for {len(r_row)} ranks")
    n = len(r_row)
    total += n
    missing += sum(s is None for s in s_row)
    for i in range(n):
      for j in range(i + 1, n):
        if r_row[i] == r_row[j]:
          continue
        pairs += 1
        better, worse = (i, j) if r_row[i] < r_row[j] else (j, i)
        if s_row[better] is not None and s_row[worse] is not None and \
            s_row[better] > s_row[worse]:
          agree += 1
    best = min(range(n), key=lambda k: (r_row[k], k))
    best_five += int(s_row[best] is not None and s_row[best] >= 4.5)
    if all(s is not None for s in s_row):
      exact += int(all(np.sign(s_row[j] - s_row[i]) == np.sign(r_row[i] - r_row[j])
                       for i in range(n) for j in range(i + 1, n)))
    valid = [k for k in range(n) if s_row[k] is not None]
    if len(valid) >= 2:
      xs = [s_row[k] for k in valid]
      ys = [-r_row[k] for k in valid]
      rho, tau = spearman(xs, ys), kendall_tau(xs, ys)
      if rho is not None and tau is not None:
        rhos.append(rho)
        taus.append(tau)
  num_prompts = len(ranks)
  pct = lambda a, b: 100.0 * a / b if b else float("nan")
  return {"pairwise_accuracy": pct(agree, pairs), "five_best": pct(best_five, num_prompts),
          "exact_match": pct(exact, num_prompts),
          "spearman": float(np.mean(rhos)) if rhos else float("nan"),
          "kendall_tau": float(np.mean(taus)) if taus else float("nan"),
          "correlation_prompts": len(rhos), "prompts": num_prompts, "pairs": pairs,
          "missing": pct(missing, total)}


# ---------------------------------------------------------------------------------------------
# Judging and pair mining.


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


def win_tie_lose(winners: Sequence[str | None]) -> dict[str, float]:
  """Win/tie/lose % of response A over the judged items (None = both orders failed, counted
  in ``failed`` and left out); ``win_rate`` = win + tie / 2 (AlpacaEval-style)."""
  judged = [w for w in winners if w is not None]
  n = len(judged)
  pct = lambda k: 100.0 * sum(w == k for w in judged) / n if n else float("nan")
  out = {"win": pct("A"), "tie": pct("tie"), "lose": pct("B"), "judged": n,
         "failed": len(winners) - n}
  out["win_rate"] = out["win"] + out["tie"] / 2 if n else float("nan")
  return out


# ---------------------------------------------------------------------------------------------
# Prompt sources (by name, for configs).


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


# ---------------------------------------------------------------------------------------------
# A tiny local checkpoint (runlocal, tests): BPE tokenizer trained on the data + random model.


def make_tiny_checkpoint(path: str, corpus: Sequence[str], model_cfg, *, vocab_size: int,
                         seed: int = 0) -> str:
  """Writes a random tiny model and a byte-level BPE tokenizer trained on `corpus` (with a
  chat template and `<|end|>` as EOS) to `path` as a Hugging Face checkpoint. No downloads."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from score.models import hf  # pylint: disable=g-import-not-at-top

  tok = Tokenizer(models.BPE())
  # No word splitting: merges may span spaces, so the fixed judge and few-shot texts become
  # a few dozen tokens (short sequences keep the CPU demo fast).
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "<|end|>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(corpus), trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|end|>")
  fast.chat_template = CHAT_TEMPLATE
  model = common.build_model(model_cfg, tok.get_vocab_size(), seed=seed)
  tmp = f"{path}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  hf.save_pretrained(model, tmp, tokenizer=fast)
  os.replace(tmp, path)
  return path


# ---------------------------------------------------------------------------------------------
# The loop.


def _write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(f"{path}.tmp", "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
  os.replace(f"{path}.tmp", path)


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class Loop:
  """State shared by the phases of one run: config, workdir, codec, model layout, data."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.writer = metrics_lib.MetricWriter(workdir)
    self._generator = None
    self._pairwise_judge = None

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  @property
  def max_prompt_tokens(self) -> int:
    return self.config.max_len

  # -- data ------------------------------------------------------------------------------------

  def build_data(self):
    """Phase `data`: IFT, EFT train/eval and the judge-eval ranked prompts."""
    c = self.config.data
    if not os.path.exists(self.path("data", "summary.json")):
      if c.eft_path:
        ranked = data_lib.load_ranked(c.eft_path)
      elif c.synthetic_prompts <= 0:
        raise config_lib.ConfigError(
            "data.eft_path is empty: point it (config arg eft_path=) at ranked human data in "
            "JSONL (see score/data/self_rewarding.py), or use the synthetic demo "
            "(configs/self_rewarding.py:runlocal)")
      else:
        source = self.path("data", "synthetic_ranked.jsonl")
        data_lib.write_jsonl(source, map(data_lib.ranked_to_row, data_lib.synthetic_ranked(
            c.synthetic_prompts, seed=self.config.seed)))
        ranked = data_lib.load_ranked(source)  # the same reader as user data
      eft_train, eft_eval, eval_prompts, counts = data_lib.build_eft(
          ranked, train_size=c.eft_train_size, eval_size=c.eft_eval_size, seed=self.config.seed,
          require_agreement=c.eft_require_agreement)
      if c.ift_path:
        ift = data_lib.load_ift(c.ift_path)
      else:
        held = {r.id for r in eval_prompts}
        ift = data_lib.ift_from_ranked([r for r in ranked if r.id not in held])
      ift = ift[:c.ift_size]
      data_lib.write_jsonl(self.path("data", "ift.jsonl"), map(dataclasses.asdict, ift))
      data_lib.write_jsonl(self.path("data", "eft_train.jsonl"),
                           map(dataclasses.asdict, eft_train))
      data_lib.write_jsonl(self.path("data", "eft_eval.jsonl"), map(dataclasses.asdict, eft_eval))
      data_lib.write_jsonl(self.path("data", "judge_eval.jsonl"),
                           map(data_lib.ranked_to_row, eval_prompts))
      _write_json(self.path("data", "summary.json"),
                  dict(counts, ift=len(ift), eft_train=len(eft_train), eft_eval=len(eft_eval)))
    self.ift = [data_lib.IFTExample(**r)
                for r in data_lib.read_jsonl(self.path("data", "ift.jsonl"))]
    self.eft_train = [data_lib.EFTExample(**r)
                      for r in data_lib.read_jsonl(self.path("data", "eft_train.jsonl"))]
    judge_eval = self.path("data", "judge_eval.jsonl")
    self.judge_eval_prompts = (data_lib.load_ranked(judge_eval) if os.path.getsize(judge_eval)
                               else [])
    if not self.ift:
      raise ValueError("no IFT examples: set data.ift_path or give ranked data")

  # -- models ----------------------------------------------------------------------------------

  def load_m0(self):
    from score.models import hf  # pylint: disable=g-import-not-at-top
    model_dir = self.config.model.model_dir
    if not model_dir:
      model_dir = self.path("m0")
      if not os.path.exists(os.path.join(model_dir, "config.json")):
        corpus = ([data_lib.FEW_SHOT_TEMPLATE, CHAT_TEMPLATE]
                  + [x.instruction + "\n" + x.response for x in self.ift]
                  + [judge_lib.judge_prompt(x.instruction, x.response) + "\n" + x.target
                     for x in self.eft_train])
        make_tiny_checkpoint(model_dir, corpus, self.config.model,
                             vocab_size=self.config.model.vocab_size, seed=self.config.seed)
    elif not os.path.isdir(model_dir):
      raise FileNotFoundError(f"model.model_dir {model_dir!r} is not a directory; point it at a "
                              "local Hugging Face checkpoint (config.json + *.safetensors)")
    self.model_dir = model_dir
    self.codec = Codec(hf.load_tokenizer(model_dir), self.config.prompt_format)
    model = common.apply_mesh_options(hf.from_pretrained(model_dir), self.config.get("mesh"))
    self.policy, params = common.Policy.split(model)
    return params

  def generator(self):
    """(model, codec) that writes new prompts: `self_instruct.generator_dir` or M_t."""
    gen_dir = self.config.self_instruct.generator_dir
    if not gen_dir:
      return self.policy.model(self.current), self.codec
    if self._generator is None:
      from score.models import hf  # pylint: disable=g-import-not-at-top
      self._generator = (hf.from_pretrained(gen_dir),
                         Codec(hf.load_tokenizer(gen_dir), self.config.prompt_format))
    return self._generator

  def save_hf(self, name: str, params):
    if not self.config.save_models:
      return
    out = self.path("models", name)
    if os.path.exists(os.path.join(out, "config.json")):
      return
    from score.models import hf  # pylint: disable=g-import-not-at-top
    hf.save_pretrained(self.policy.model(params), out, tokenizer=self.codec.tokenizer)

  def sft(self, params, name: str, *, with_eft: bool):
    """M1 (IFT + EFT) or the IFT-only SFT baseline."""
    max_len = self.config.max_len
    items = [(x.instruction, x.response) for x in self.ift]
    if with_eft:
      items += [(judge_lib.judge_prompt(x.instruction, x.response), x.target)
                for x in self.eft_train]
    examples = [self.codec.example(u, r, max_len) for u, r in items]
    kept = [e for e in examples if e is not None]
    if len(kept) < len(examples):
      logging.warning("%s: %d of %d SFT examples are longer than max_len=%d and were left out",
                      name, len(examples) - len(kept), len(examples), max_len)
    batches = sft_lib.ExampleBatches(kept, self.config.sft.batch_size, seed=self.config.seed,
                                     pad_id=self.codec.pad_id)
    return sft_lib.train_sft(self.policy, params, batches, self.config.sft,
                             workdir=self.workdir, name=name, writer=self.writer,
                             mesh_cfg=self.config.get("mesh"))

  # -- one iteration ---------------------------------------------------------------------------

  def prompts_phase(self, t: int) -> list[dict]:
    path = self.path(f"iter{t}", "prompts.jsonl")
    if not os.path.exists(path):
      seen = [x.instruction for x in self.ift] + [r.prompt for r in self.judge_eval_prompts]
      for s in range(1, t):
        seen += [r["prompt"] for r in data_lib.read_jsonl(self.path(f"iter{s}", "prompts.jsonl"))]
      source = self.config.self_instruct.source
      if source not in PROMPT_SOURCES:
        raise ValueError(f"self_instruct.source {source!r}; known: {sorted(PROMPT_SOURCES)}")
      rows = PROMPT_SOURCES[source](self, t, seen)
      data_lib.write_jsonl(self.path(f"iter{t}", "prompt_generations.jsonl"), rows)
      prompts = [{"id": f"it{t}-{i}", "prompt": r["parsed"]}
                 for i, r in enumerate(r for r in rows if r["fate"] == "kept")]
      data_lib.write_jsonl(path, prompts)
    return data_lib.read_jsonl(path)

  def candidates_phase(self, t: int, prompts: list[dict]) -> list[dict]:
    path = self.path(f"iter{t}", "candidates.jsonl")
    if not os.path.exists(path):
      c = self.config.candidates
      tokens = [self.codec.encode(self.codec.user_prompt(p["prompt"]))
                for p in prompts for _ in range(c.num)]
      outs = generate_texts(self.policy.model(self.current), self.codec, tokens,
                            max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                            top_p=c.top_p, seed=stable_seed(self.config.seed, t, "candidates"),
                            batch_size=self.config.sample_batch_size,
                            max_prompt_tokens=self.max_prompt_tokens)
      rows = [{"prompt_id": p["id"], "prompt": p["prompt"],
               "candidates": outs[i * c.num:(i + 1) * c.num]} for i, p in enumerate(prompts)]
      data_lib.write_jsonl(path, rows)
    return data_lib.read_jsonl(path)

  def judgments_phase(self, t: int, candidates: list[dict]) -> list[dict]:
    path = self.path(f"iter{t}", "judgments.jsonl")
    if not os.path.exists(path):
      items, where = [], []
      for row in candidates:
        for i, cand in enumerate(row["candidates"]):
          if cand["text"] is not None:
            items.append((row["prompt"], cand["text"]))
            where.append((row["prompt_id"], i))
      judged = judge_rows(self.policy.model(self.current), self.codec, items, self.config.judge,
                          seed=stable_seed(self.config.seed, t, "judge"),
                          batch_size=self.config.sample_batch_size,
                          max_prompt_tokens=self.max_prompt_tokens)
      data_lib.write_jsonl(path, [dict(prompt_id=pid, candidate=i, **j)
                                  for (pid, i), j in zip(where, judged)])
    return data_lib.read_jsonl(path)

  def pairs_phase(self, t: int, candidates: list[dict], judgments: list[dict]):
    path = self.path(f"iter{t}", "pairs.jsonl")
    summary_path = self.path(f"iter{t}", "mining.json")
    if not (os.path.exists(path) and os.path.exists(summary_path)):
      by_key = {(j["prompt_id"], j["candidate"]): j for j in judgments}
      prompts, texts, scores = [], [], []
      for row in candidates:
        prompts.append({"id": row["prompt_id"], "prompt": row["prompt"]})
        texts.append([c["text"] for c in row["candidates"]])
        scores.append([by_key.get((row["prompt_id"], i), {}).get("score")
                       for i in range(len(row["candidates"]))])
      pairs, counts = mine_pairs(prompts, texts, scores)
      reasons = collections.Counter(x["reason"] for j in judgments for x in j["judgments"])
      num = sum(reasons.values())
      summary = dict(
          counts, candidates=sum(len(t_) for t_ in texts), judgments=num,
          malformed=num - reasons.get("ok", 0),
          malformed_pct=100.0 * (num - reasons.get("ok", 0)) / num if num else float("nan"),
          malformed_reasons=dict(reasons.most_common()),
          dropped_candidates=sum(j["score"] is None for j in judgments),
          chosen_score=float(np.mean([p["chosen_score"] for p in pairs])) if pairs else None,
          rejected_score=float(np.mean([p["rejected_score"] for p in pairs])) if pairs else None,
          prompt_sources=collections.Counter(
              r["fate"] for r in data_lib.read_jsonl(
                  self.path(f"iter{t}", "prompt_generations.jsonl"))))
      data_lib.write_jsonl(path, pairs)
      _write_json(summary_path, summary)
    return data_lib.read_jsonl(path), _read_json(summary_path)

  def dpo_phase(self, t: int, pairs: list[dict]):
    max_len = self.config.max_len
    tokens = []
    for p in pairs:
      c = self.codec.example(p["prompt"], p["chosen"], max_len)
      r = self.codec.example(p["prompt"], p["rejected"], max_len)
      if c is not None and r is not None:
        tokens.append((c[0], c[1], r[0], r[1]))
    if not tokens:
      return None, None
    params, summary = dpo_lib.train_dpo(
        self.policy, self.current, self.current, tokens, self.config.dpo, workdir=self.workdir,
        name=f"m{t + 1}_dpo", seed=stable_seed(self.config.seed, t, "dpo"),
        pad_id=self.codec.pad_id, writer=self.writer, mesh_cfg=self.config.get("mesh"))
    _write_json(self.path(f"iter{t}", "dpo.json"), summary)
    return params, summary

  # -- evaluation ------------------------------------------------------------------------------

  def judge_eval(self, name: str, params) -> dict:
    path = self.path("eval", f"judge_{name}.json")
    if not os.path.exists(path):
      items, where = [], []
      for r in self.judge_eval_prompts:
        for i, resp in enumerate(r.responses):
          items.append((r.prompt, resp))
          where.append((r.id, i, r.ranks[i]))
      judged = judge_rows(self.policy.model(params), self.codec, items, self.config.eval,
                          seed=stable_seed(self.config.seed, name, "judge_eval"),
                          batch_size=self.config.sample_batch_size,
                          max_prompt_tokens=self.max_prompt_tokens)
      data_lib.write_jsonl(self.path("eval", f"judge_{name}.jsonl"),
                           [dict(prompt_id=pid, response=i, rank=rk, **j)
                            for (pid, i, rk), j in zip(where, judged)])
      by_prompt = collections.defaultdict(dict)
      for (pid, i, _), j in zip(where, judged):
        by_prompt[pid][i] = j["score"]
      scores = [[by_prompt[r.id][i] for i in range(len(r.responses))]
                for r in self.judge_eval_prompts]
      metrics = judge_quality(scores, [list(r.ranks) for r in self.judge_eval_prompts])
      reasons = collections.Counter(x["reason"] for j in judged for x in j["judgments"])
      num = sum(reasons.values())
      metrics["malformed_pct"] = 100.0 * (num - reasons.get("ok", 0)) / num if num else 0.0
      metrics["malformed_reasons"] = dict(reasons.most_common())
      _write_json(path, metrics)
    return _read_json(path)

  def pairwise_judge(self):
    """(model, codec) of `eval.pairwise_judge_dir`, a fixed local judge (paper: GPT-4)."""
    if self._pairwise_judge is None:
      from score.models import hf  # pylint: disable=g-import-not-at-top
      d = self.config.eval.pairwise_judge_dir
      self._pairwise_judge = (hf.from_pretrained(d),
                              Codec(hf.load_tokenizer(d), self.config.prompt_format))
    return self._pairwise_judge

  def eval_instructions(self) -> list[tuple[str, str | None]]:
    """(instruction, reference output or None): `eval.reference_path` rows when given, else
    the held-out judge-eval prompts (no reference)."""
    if self.config.eval.reference_path:
      return [(x.instruction, x.response) for x in data_lib.load_ift(
          self.config.eval.reference_path, fields={"response": "output"})]
    return [(r.prompt, None) for r in self.judge_eval_prompts]

  def responses(self, name: str, params) -> list[str]:
    """Greedy responses of model `name` to the eval instructions (cached in the workdir)."""
    path = self.path("eval", f"responses_{name}.jsonl")
    if not os.path.exists(path):
      instructions = [i for i, _ in self.eval_instructions()]
      tokens = [self.codec.encode(self.codec.user_prompt(i)) for i in instructions]
      outs = generate_texts(self.policy.model(params), self.codec, tokens,
                            max_new_tokens=self.config.candidates.max_new_tokens,
                            temperature=0.0, top_p=None, seed=0,
                            batch_size=self.config.sample_batch_size,
                            max_prompt_tokens=self.max_prompt_tokens)
      data_lib.write_jsonl(path, [{"instruction": i, **o} for i, o in zip(instructions, outs)])
    return [r["text"] or "" for r in data_lib.read_jsonl(path)]

  def pairwise_eval(self, name: str, params) -> dict:
    """Head-to-head vs `eval.head_to_head_baseline` and win rate vs the reference outputs,
    judged by `eval.pairwise_judge_dir`; {} when no judge is configured."""
    c = self.config.eval
    if not c.pairwise_judge_dir:
      return {}
    mine = self.responses(name, params)
    instructions = self.eval_instructions()
    out = {}
    jobs = []
    if name != c.head_to_head_baseline:
      if os.path.exists(self.path("eval", f"responses_{c.head_to_head_baseline}.jsonl")):
        theirs = self.responses(c.head_to_head_baseline, None)
        jobs.append((f"h2h_{name}_vs_{c.head_to_head_baseline}", theirs))
      else:
        logging.warning("no head-to-head for %s: eval.head_to_head_baseline %r has no responses "
                        "yet (it must be sft_baseline, m1 or an earlier model)", name,
                        c.head_to_head_baseline)
    if c.reference_path:
      jobs.append((f"winrate_{name}_vs_reference", [r or "" for _, r in instructions]))
    for key, theirs in jobs:
      path = self.path("eval", f"{key}.json")
      if not os.path.exists(path):
        model, codec = self.pairwise_judge()
        rows = pairwise_rows(model, codec, [(i, a, b) for (i, _), a, b in
                                            zip(instructions, mine, theirs)], c,
                             seed=stable_seed(self.config.seed, key), max_prompt_tokens=(
                                 self.max_prompt_tokens),
                             batch_size=self.config.sample_batch_size)
        data_lib.write_jsonl(self.path("eval", f"{key}.jsonl"), rows)
        _write_json(path, win_tie_lose([r["winner"] for r in rows]))
      out[key] = _read_json(path)
    return out

  def evaluate(self, name: str, params, results: dict):
    results["judge"][name] = self.judge_eval(name, params)
    results["pairwise"].update(self.pairwise_eval(name, params))

  # -- driver ----------------------------------------------------------------------------------

  def run(self) -> dict:
    try:
      return self._run()
    finally:
      self.writer.close()

  def _run(self) -> dict:
    self.build_data()
    m0 = self.load_m0()
    self.current = self.sft(m0, "m1_sft", with_eft=True)
    self.save_hf("m1", self.current)
    results = {"judge": {}, "pairwise": {}, "iterations": {}, "stopped": None}
    if self.config.eval.sft_baseline:
      baseline = self.sft(m0, "sft_baseline", with_eft=False)
      self.evaluate("sft_baseline", baseline, results)
      del baseline
    self.evaluate("m1", self.current, results)
    for t in range(1, self.config.iterations + 1):
      prompts = self.prompts_phase(t)
      candidates = self.candidates_phase(t, prompts)
      judgments = self.judgments_phase(t, candidates)
      pairs, mining = self.pairs_phase(t, candidates, judgments)
      logging.warning("iteration %d: %d prompts, %d pairs (%d ties, %d unscored), "
                      "%.1f%% malformed judgments", t, len(prompts), mining["pairs"],
                      mining["tie"], mining["unscored"], mining["malformed_pct"])
      self.writer.write_scalars(t, {f"iter/{k}": v for k, v in mining.items()
                                    if isinstance(v, (int, float)) and v is not None})
      params, dpo_summary = (self.dpo_phase(t, pairs) if pairs else (None, None))
      results["iterations"][t] = {"prompts": len(prompts), "mining": mining, "dpo": dpo_summary}
      if params is None:
        results["stopped"] = (
            f"iteration {t} yielded no preference pairs to train M{t + 1} ({mining['prompts']} "
            f"prompts: {mining['tie']} best/worst ties, {mining['unscored']} with fewer than two "
            f"scored candidates, {mining['identical']} identical; {mining['malformed']} of "
            f"{mining['judgments']} judgments malformed). Stopping after M{t}.")
        logging.error("%s", results["stopped"])
        break
      self.current = params
      self.save_hf(f"m{t + 1}", params)
      self.evaluate(f"m{t + 1}", params, results)
    return results


# ---------------------------------------------------------------------------------------------
# Results.


def _f(x, fmt="{:.1f}"):
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def markdown(results: dict) -> str:
  lines = ["**Judge quality vs held-out human rankings**", "",
           "| model | pairwise acc. % | 5-best % | exact match % | Spearman | Kendall τ | "
           "malformed % | pairwise acc. % (published) |", "|---|---|---|---|---|---|---|---|"]
  for name, m in results["judge"].items():
    lines.append(
        f"| {name} | {_f(m['pairwise_accuracy'])} | {_f(m['five_best'])} | "
        f"{_f(m['exact_match'])} | {_f(m['spearman'], '{:.3f}')} | "
        f"{_f(m['kendall_tau'], '{:.3f}')} | {_f(m['malformed_pct'])} | "
        f"{_f(PUBLISHED_PAIRWISE_ACCURACY.get(name))} |")
  lines += ["", "**Self-instruction creation (iteration t uses M_t, trains M_t+1)**", "",
            "| t | prompts | candidates | malformed judgments % | dropped candidates | ties | "
            "pairs | chosen score | rejected score | DPO steps | DPO final loss | "
            "DPO reward acc. % |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for t, it in results["iterations"].items():
    m, d = it["mining"], it["dpo"] or {}
    lines.append(
        f"| {t} | {it['prompts']} | {m['candidates']} | {_f(m['malformed_pct'])} | "
        f"{m['dropped_candidates']} | {m['tie']} | {m['pairs']} | "
        f"{_f(m['chosen_score'], '{:.2f}')} | {_f(m['rejected_score'], '{:.2f}')} | "
        f"{d.get('steps', '—')} | {_f(d.get('final_loss'), '{:.4f}')} | "
        f"{_f(None if not d else 100 * d['reward_accuracy'])} |")
  if results.get("pairwise"):
    lines += ["", "**Pairwise evaluation (fixed judge, both orders)**", "",
              "| comparison | win % | tie % | lose % | win rate % | judged | failed |",
              "|---|---|---|---|---|---|---|"]
    for key, m in results["pairwise"].items():
      lines.append(f"| {key} | {_f(m['win'])} | {_f(m['tie'])} | {_f(m['lose'])} | "
                   f"{_f(m['win_rate'])} | {m['judged']} | {m['failed']} |")
  if results.get("stopped"):
    lines += ["", f"Stopped: {results['stopped']}"]
  return "\n".join(lines) + "\n"


def train(config, workdir: str):
  """`config.trainer = "self_rewarding"`: M1 → M2 → … with judge-quality evaluation."""
  loop = Loop(config, workdir)
  results = loop.run()
  info = run_lib.write_run_info(workdir, config)
  table = markdown(results)
  results["info"] = {"commit": info["commit"], "machine": info["machine"], "seed": config.seed}
  _write_json(os.path.join(workdir, "results.json"), results)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n" + "\n".join(f"- {k}: {v}" for k, v in results["info"].items()) + "\n")
  print(table)
  return results
