r"""Data for Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020).

Stands alone (no model, no trainer): everything here is text in, text out.

* **Ranked human data** (`load_ranked`): one prompt per JSONL line with several responses
  ranked by people, Open Assistant style::

      {"prompt": "...", "responses": [{"text": "...", "rank": 0}, {"text": "...", "rank": 1}]}

  ``rank`` 0 is the best (ties share a rank). A response may also carry ``"score"`` (an
  absolute 0-5 quality) and/or ``"judgment"`` (a judge's text: rationale + ``Score: N``).
  Other field names are mapped with ``fields={"prompt": "instruction", ...}``.
* **Preference pairs** (`load_pairs`): ``{"prompt": "...", "chosen": "...", "rejected":
  "..."}`` per line (the common pairwise format), read as two responses ranked 0 and 1.
* **IFT** (`load_ift`, `ift_from_ranked`): (instruction, response) pairs; the paper's 3,200
  Open Assistant first turns use the highest-ranked response (`ift_from_ranked`).
* **EFT** (`build_eft`): judge prompts (`score.rewards.judge.judge_prompt`, the paper's
  additive 5-point prompt) whose target is a rationale and ``Score: N``. The paper had its
  SFT model write the evaluations of Open Assistant responses and kept those whose score
  ordering agreed with the human ranking (1,630 train / 541 eval). `build_eft` does the same
  with judgments given in the data (``"judgment"``), and otherwise writes a templated
  rationale from the additive criteria for the response's ``"score"`` (or a score derived
  from its rank). Splits are by prompt, so no prompt is in both.
* **Self-instruction** (`few_shot_prompt`, `parse_generated_task`, `filter_prompts`): the
  8-shot prompt that asks a model for a new task, the parser of its output, and the
  dedup/length filter.
* **Synthetic instruction data** (`synthetic_ranked`): tiny ranked data with known answers
  and graded response qualities, for `configs/self_rewarding.py:runlocal` and tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from typing import Any, Iterable, Mapping, Sequence

from score.data.loaders import iter_jsonl
from score.data.records import DataError
from score.rewards import judge as judge_lib

__all__ = [
    "RankedPrompt",
    "IFTExample",
    "EFTExample",
    "load_ranked",
    "load_pairs",
    "load_ift",
    "ift_from_ranked",
    "rank_to_score",
    "templated_judgment",
    "build_eft",
    "FEW_SHOT_TEMPLATE",
    "few_shot_prompt",
    "parse_generated_task",
    "normalize_prompt",
    "filter_prompts",
    "synthetic_ranked",
    "write_jsonl",
    "read_jsonl",
]


@dataclasses.dataclass(frozen=True)
class RankedPrompt:
  """One prompt with human-ranked responses (`ranks[i]` 0 = best; ties share a rank)."""

  prompt: str
  responses: tuple[str, ...]
  ranks: tuple[int, ...]
  scores: tuple[float | None, ...] = ()
  judgments: tuple[str | None, ...] = ()
  id: str = ""

  def best(self) -> str:
    return self.responses[min(range(len(self.ranks)), key=lambda i: (self.ranks[i], i))]


@dataclasses.dataclass(frozen=True)
class IFTExample:
  instruction: str
  response: str


@dataclasses.dataclass(frozen=True)
class EFTExample:
  """A judge training example: `judge_prompt(instruction, response)` → `target`."""

  instruction: str
  response: str
  target: str
  score: float
  rank: int
  prompt_id: str


# ---------------------------------------------------------------------------------------------
# Loading.

_RANKED_FIELDS = {"prompt": "prompt", "responses": "responses", "text": "text", "rank": "rank",
                  "score": "score", "judgment": "judgment", "id": "id"}
_IFT_FIELDS = {"instruction": "instruction", "response": "response"}


def _fields(defaults: Mapping[str, str], fields: Mapping[str, str] | None, what: str):
  out = dict(defaults)
  for k, v in (fields or {}).items():
    if k not in defaults:
      raise ValueError(f"{what}: unknown field {k!r}; mappable fields: {sorted(defaults)}")
    out[k] = v
  return out


def load_ranked(path: str | os.PathLike, *, fields: Mapping[str, str] | None = None,
                min_responses: int = 2) -> list[RankedPrompt]:
  """Ranked human data from a JSONL file (format in the module docstring).

  Raises `DataError` (file:line) for malformed lines: a missing prompt, responses that are
  not a list of objects with text and an integer rank, a score outside [0, 5]. Prompts with
  fewer than `min_responses` responses are skipped (they carry no ranking).
  """
  f = _fields(_RANKED_FIELDS, fields, "load_ranked")
  path = os.fspath(path)
  out = []
  for n, row in iter_jsonl(path):
    if isinstance(row, DataError):
      raise row
    prompt = row.get(f["prompt"])
    if not isinstance(prompt, str) or not prompt.strip():
      raise DataError(f"expected a non-empty string in field {f['prompt']!r}", path=path, line=n)
    responses = row.get(f["responses"])
    if not isinstance(responses, list):
      raise DataError(f"expected a list of responses in field {f['responses']!r}, got "
                      f"{type(responses).__name__}", path=path, line=n)
    texts, ranks, scores, judgments = [], [], [], []
    for i, r in enumerate(responses):
      if not isinstance(r, dict) or not isinstance(r.get(f["text"]), str):
        raise DataError(f"response {i}: expected an object with a string {f['text']!r}",
                        path=path, line=n)
      rank = r.get(f["rank"])
      if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != int(rank) \
          or rank < 0:
        raise DataError(f"response {i}: expected a non-negative integer {f['rank']!r}, got "
                        f"{rank!r}", path=path, line=n)
      score = r.get(f["score"])
      if score is not None and (not isinstance(score, (int, float)) or not 0 <= score <= 5):
        raise DataError(f"response {i}: {f['score']!r} must be a number in [0, 5], got "
                        f"{score!r}", path=path, line=n)
      judgment = r.get(f["judgment"])
      if judgment is not None and not isinstance(judgment, str):
        raise DataError(f"response {i}: {f['judgment']!r} must be a string", path=path, line=n)
      texts.append(r[f["text"]])
      ranks.append(int(rank))
      scores.append(None if score is None else float(score))
      judgments.append(judgment)
    if len(texts) < min_responses:
      continue
    out.append(RankedPrompt(prompt, tuple(texts), tuple(ranks), tuple(scores), tuple(judgments),
                            id=str(row.get(f["id"], f"{os.path.basename(path)}:{n}"))))
  if not out:
    raise DataError(f"no prompt with at least {min_responses} ranked responses", path=path)
  return out


_PAIR_FIELDS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "id": "id"}


def _string_rows(path, f: Mapping[str, str], keys: Sequence[str], what: str):
  """`(line, row, [row[f[k]] for k in keys])` per JSONL line; `DataError` (file:line) for a
  line that is not an object with non-empty strings in those fields, or an empty file."""
  n_rows = 0
  for n, row in iter_jsonl(path):
    if isinstance(row, DataError):
      raise row
    values = []
    for key in keys:
      value = row.get(f[key])
      if not isinstance(value, str) or not value.strip():
        raise DataError(f"expected a non-empty string in field {f[key]!r}, got {value!r}",
                        path=path, line=n)
      values.append(value)
    n_rows += 1
    yield n, row, values
  if not n_rows:
    raise DataError(f"no {what}", path=path)


def load_pairs(path: str | os.PathLike, *, fields: Mapping[str, str] | None = None
               ) -> list[RankedPrompt]:
  """Pairwise preferences from a JSONL file: ``{"prompt", "chosen", "rejected"}`` per line, as
  `RankedPrompt`s with responses ``(chosen, rejected)`` ranked ``(0, 1)``.

  Raises `DataError` (file:line) for a line that is not an object with three non-empty
  strings, and for an empty file.
  """
  f = _fields(_PAIR_FIELDS, fields, "load_pairs")
  path = os.fspath(path)
  return [RankedPrompt(prompt, (chosen, rejected), (0, 1),
                       id=str(row.get(f["id"], f"{os.path.basename(path)}:{n}")))
          for n, row, (prompt, chosen, rejected)
          in _string_rows(path, f, ("prompt", "chosen", "rejected"), "preference pairs")]


def load_ift(path: str | os.PathLike, *, fields: Mapping[str, str] | None = None
             ) -> list[IFTExample]:
  """(instruction, response) pairs from JSONL; `DataError` (file:line) on a bad line."""
  f = _fields(_IFT_FIELDS, fields, "load_ift")
  return [IFTExample(*values) for _, _, values
          in _string_rows(os.fspath(path), f, ("instruction", "response"), "IFT examples")]


def ift_from_ranked(ranked: Sequence[RankedPrompt]) -> list[IFTExample]:
  """The paper's IFT data: each prompt with its highest-ranked human response."""
  return [IFTExample(r.prompt, r.best()) for r in ranked]


# ---------------------------------------------------------------------------------------------
# EFT.

_POINTS = (
    "relevant",
    "addresses a substantial part of the question",
    "answers the basic elements usefully",
    "clear, comprehensive and well organised",
    "expert and impeccably tailored",
)


def rank_to_score(rank: int, num_ranks: int) -> int:
  """Spreads ranks 0 (best) … num_ranks-1 evenly over scores 5 … 1 (rounded)."""
  if num_ranks <= 1:
    return 5
  return int(round(5 - 4 * rank / (num_ranks - 1)))


def templated_judgment(score: float) -> str:
  """A rationale that walks the additive criteria for an integer `score`, then ``Score: N``.

  Used when the data carries no written judgment: the rationale names the criteria met (the
  first `score` of the five) and the first one missed.
  """
  s = int(round(score))
  if not 0 <= s <= 5:
    raise ValueError(f"templated_judgment: score must be in [0, 5], got {score}")
  met = "; ".join(_POINTS[:s]) if s else "none"
  text = f"Criteria met: {met}."
  if s < 5:
    text += f" Not met: {_POINTS[s]}."
  return f"{text}\nScore: {s}"


def _scores_agree_with_ranks(scores: Sequence[float], ranks: Sequence[int]) -> bool:
  """Every pair with different human ranks gets strictly ordered scores the same way."""
  for i in range(len(ranks)):
    for j in range(len(ranks)):
      if ranks[i] < ranks[j] and not scores[i] > scores[j]:
        return False
  return True


def build_eft(ranked: Sequence[RankedPrompt], *, train_size: int, eval_size: int, seed: int = 0,
              require_agreement: bool = True) -> tuple[list[EFTExample], list[EFTExample],
                                                       list[RankedPrompt], dict[str, int]]:
  """EFT train/eval examples from ranked human data; split by prompt.

  Each response becomes one example. Its target is, by priority: the response's written
  ``judgment`` (kept only when it parses and, with `require_agreement`, when the parsed
  scores of all the prompt's responses order them as the people did — the paper's filter);
  else `templated_judgment` of its ``score``; else of `rank_to_score(rank)`.

  Prompts are shuffled with `seed`; the eval split takes whole prompts until it holds
  `eval_size` examples, then the train split takes prompts until `train_size` (paper:
  1,630 train / 541 eval). Returns `(train, eval, eval_prompts, counts)`, where
  `eval_prompts` are the ranked prompts of the eval split (for judge-quality evaluation)
  and `counts` says how many prompts the filter dropped.
  """
  counts = {"prompts": len(ranked), "dropped_unparsable": 0, "dropped_disagree": 0}
  per_prompt: list[tuple[RankedPrompt, list[EFTExample]]] = []
  for r in ranked:
    num_ranks = len(set(r.ranks))
    ordered_ranks = {rk: i for i, rk in enumerate(sorted(set(r.ranks)))}
    written = [j for j in (r.judgments or [None] * len(r.responses))]
    if any(w is not None for w in written):
      parsed = [judge_lib.parse_score(w) for w in written]
      if not all(p.ok for p in parsed):
        counts["dropped_unparsable"] += 1
        continue
      scores = [p.score for p in parsed]
      if require_agreement and not _scores_agree_with_ranks(scores, r.ranks):
        counts["dropped_disagree"] += 1
        continue
      targets = list(written)
    else:
      given = r.scores or (None,) * len(r.responses)
      scores = [g if g is not None else rank_to_score(ordered_ranks[rk], num_ranks)
                for g, rk in zip(given, r.ranks)]
      targets = [templated_judgment(s) for s in scores]
    per_prompt.append((r, [EFTExample(r.prompt, resp, t, float(s), rk, r.id)
                           for resp, t, s, rk in zip(r.responses, targets, scores, r.ranks)]))
  order = list(range(len(per_prompt)))
  random.Random(seed).shuffle(order)
  train, evals, eval_prompts = [], [], []
  for i in order:
    r, examples = per_prompt[i]
    if len(evals) < eval_size:
      evals.extend(examples)
      eval_prompts.append(r)
    elif len(train) < train_size:
      train.extend(examples)
  counts.update(train=len(train), eval=len(evals), eval_prompts=len(eval_prompts))
  return train[:max(train_size, 0)], evals[:max(eval_size, 0)], eval_prompts, counts


# ---------------------------------------------------------------------------------------------
# Self-instruction.

# After the paper's Figure 6 (prompt used to generate new prompts, 8-shot).
FEW_SHOT_TEMPLATE = (
    "Come up with a series of tasks and questions. Only the task/question, no further "
    "text/explanation, no additional information. The task or question should be something a "
    "person would ask a chatbot.\n")
TASK_OPEN, TASK_CLOSE = "<task>", "</task>"


def few_shot_prompt(examples: Sequence[str]) -> str:
  """The prompt-generation prompt: the instruction, one ``<task>…</task>`` line per example,
  then an open ``<task>`` for the model to fill. Generate with stop string ``</task>``."""
  lines = [f"{TASK_OPEN}{e.strip()}{TASK_CLOSE}\n" for e in examples]
  return FEW_SHOT_TEMPLATE + "".join(lines) + TASK_OPEN


def sample_shots(prompts: Sequence[str], k: int, rng: random.Random) -> list[str]:
  """`k` distinct prompts drawn from `prompts` (all of them, shuffled, if fewer)."""
  return rng.sample(list(prompts), min(k, len(prompts)))


def parse_generated_task(text: str) -> str | None:
  """The task a model wrote after the open ``<task>``: the text before ``</task>`` (or all of
  it when the model stopped without closing), stripped; None when empty or when it opened
  another ``<task>`` instead of finishing this one."""
  text = text.split(TASK_CLOSE, 1)[0]
  if TASK_OPEN in text:
    text = text.split(TASK_OPEN, 1)[0]
    if not text.strip():
      return None
  text = text.strip()
  return text or None


def normalize_prompt(text: str) -> str:
  """Lower-case, punctuation-free, single-spaced: the key for deduplication."""
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def filter_prompts(candidates: Iterable[str | None], *, seen: Iterable[str] = (),
                   min_chars: int = 8, max_chars: int = 2000) -> list[str]:
  """The fate of each generated prompt: ``"kept"`` or why it was dropped.

  A prompt is kept when it parsed (not None), has `min_chars`…`max_chars` characters and is
  no duplicate (after `normalize_prompt`) of `seen` (e.g. the IFT prompts) or of an earlier
  candidate. Reasons: ``"unparsable"``, ``"too_short"``, ``"too_long"``, ``"duplicate"``.
  """
  keys = {normalize_prompt(s) for s in seen}
  out = []
  for c in candidates:
    if c is None:
      out.append("unparsable")
    elif len(c) < min_chars:
      out.append("too_short")
    elif len(c) > max_chars:
      out.append("too_long")
    elif not normalize_prompt(c) or normalize_prompt(c) in keys:
      out.append("duplicate")
    else:
      keys.add(normalize_prompt(c))
      out.append("kept")
  return out


# ---------------------------------------------------------------------------------------------
# Tiny synthetic instruction data (runlocal, tests).

_WORDS = ("cat", "dog", "sun", "tree", "book", "fish", "lamp", "rain", "star", "milk", "bird",
          "rock", "door", "leaf", "ship", "moon")
_COLORS = {"grass": "green", "snow": "white", "the sky": "blue", "coal": "black",
           "a banana": "yellow", "a tomato": "red", "an orange": "orange", "a plum": "purple"}
_OFF_TOPIC = ("I like turtles.", "The weather is nice today.", "Please ask me later.",
              "Bananas are a fruit.")


def _synthetic_task(rng: random.Random) -> tuple[str, str, str, str]:
  """(instruction, subject, correct answer, wrong answer)."""
  kind = rng.randrange(4)
  if kind == 0:
    a, b = rng.randrange(20), rng.randrange(20)
    wrong = str(a + b + rng.choice((-2, -1, 1, 2)))
    return f"What is {a} plus {b}?", f"{a} plus {b}", str(a + b), wrong
  if kind == 1:
    w = rng.choice(_WORDS)
    return f"Reverse the word {w}.", f"{w} reversed", w[::-1], w
  if kind == 2:
    obj = rng.choice(sorted(_COLORS))
    wrong = rng.choice(sorted(set(_COLORS.values()) - {_COLORS[obj]}))
    return f"What color is {obj}?", f"The color of {obj}", _COLORS[obj], wrong
  w = rng.choice(_WORDS)
  return f"Write the word {w} in capital letters.", f"{w} in capital letters", w.upper(), w


def synthetic_ranked(n: int, seed: int = 0, *, responses_per_prompt: int = 4
                     ) -> list[RankedPrompt]:
  """`n` distinct synthetic prompts, each with responses of distinct known quality (0-5).

  The quality ladder (score → response): 5 a full, correct sentence; 4 the bare correct
  answer; 3 a correct answer with extraneous text; 2 a relevant sentence with a wrong
  answer; 1 the bare wrong answer; 0 off-topic. Each prompt gets `responses_per_prompt`
  distinct levels; ranks follow the scores.
  """
  rng = random.Random(seed)
  out, seen = [], set()
  attempts = 0
  while len(out) < n:
    attempts += 1
    if attempts > 100 * n + 1000:
      raise ValueError(f"synthetic_ranked: could not draw {n} distinct prompts")
    instruction, subject, right, wrong = _synthetic_task(rng)
    if instruction in seen:
      continue
    seen.add(instruction)
    ladder = {
        5: f"{subject} is {right}.",
        4: right,
        3: f"{right}. {rng.choice(_OFF_TOPIC)}",
        2: f"{subject} is {wrong}.",
        1: wrong,
        0: rng.choice(_OFF_TOPIC),
    }
    levels = sorted(rng.sample(sorted(ladder), responses_per_prompt), reverse=True)
    order = list(range(len(levels)))
    rng.shuffle(order)
    levels = [levels[i] for i in order]
    distinct = sorted(set(levels), reverse=True)
    out.append(RankedPrompt(instruction, tuple(ladder[s] for s in levels),
                            tuple(distinct.index(s) for s in levels),
                            tuple(float(s) for s in levels), (), id=f"synthetic-{seed}-{len(out)}"))
  return out


def ranked_to_row(r: RankedPrompt) -> dict[str, Any]:
  """The JSONL row `load_ranked` reads back."""
  responses = []
  for i, text in enumerate(r.responses):
    row: dict[str, Any] = {"text": text, "rank": r.ranks[i]}
    if r.scores and r.scores[i] is not None:
      row["score"] = r.scores[i]
    if r.judgments and r.judgments[i] is not None:
      row["judgment"] = r.judgments[i]
    responses.append(row)
  return {"id": r.id, "prompt": r.prompt, "responses": responses}


# ---------------------------------------------------------------------------------------------
# JSONL artefacts.


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
  """Writes rows atomically (temporary file + rename): the file exists only when complete."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Rows of a JSONL artefact; `DataError` (file:line) on a bad line."""
  out = []
  for _, row in iter_jsonl(path):
    if isinstance(row, DataError):
      raise row
    out.append(row)
  return out
