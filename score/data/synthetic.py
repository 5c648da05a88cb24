"""Synthetic verifiable tasks for tiny models trained from scratch on a CPU.

The embedded default (`configs/score_synthetic.py`) runs SCoRe on `AdditionTask`, following
the design in SPEC §6:

* Turn 1 answers a sum most-significant digit first (`1234+5678=6912.`). A small causal model
  must carry "backwards" for that, so it is right only part of the time.
* The self-correction instruction is the single token `?`. At turn 2 the model may copy its
  first answer, or rewrite the sum least-significant digit first behind the marker `r`
  (`r2196.`), a procedure in which carries flow forward and which a small model learns well.
* The warm-up (SFT) data makes the base model's turn-2 behaviour a *designed* mixture — mostly
  copying, sometimes the careful reversed derivation, sometimes a wrong rewrite — so that RL has
  a latent behaviour to amplify. This is a designed starting point, not an emergent one: the
  README says so.

Everything here is plain Python + numpy (no JAX), seeded, and reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PAD, BOS, EOS = "_", "^", "."
INSTRUCTION = "?"      # the self-correction instruction p
REVERSED = "r"         # marker of an answer written least-significant digit first


class CharTokenizer:
  """A character-level tokenizer with pad (id 0), BOS and EOS tokens."""

  def __init__(self, chars: str):
    specials = PAD + BOS + EOS
    alphabet = specials + "".join(c for c in dict.fromkeys(chars) if c not in specials)
    self.chars = alphabet
    self._ids = {c: i for i, c in enumerate(alphabet)}
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[c] for c in text]
    except KeyError as e:
      raise ValueError(f"Character {e.args[0]!r} is not in the vocabulary {self.chars!r}") from e

  def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id and stop_at_eos:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(self.chars[i])
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class SyntheticProblem:
  id: str
  question: str   # the turn-1 prompt text, e.g. "1234+5678="
  answer: str     # the gold answer, e.g. "6912"


@dataclasses.dataclass(frozen=True)
class Episode:
  """A warm-up two-attempt episode: x1, y1, then the instruction and y2."""
  problem: SyntheticProblem
  y1: str
  y2: str


@dataclasses.dataclass(frozen=True)
class AdditionTask:
  """`a+b=` with `num_digits`-digit operands; answers MSD-first, or LSD-first behind `r`.

  Attributes:
    num_digits: operand length (the difficulty knob; leading digit non-zero).
    p_copy / p_reverse / p_wrong_rewrite: warm-up mixture of turn-2 behaviours (copy y1;
      the reversed correct answer; a reversed answer with one wrong digit).
    p_wrong_first: warm-up probability that y1 is wrong (one digit changed) in episodes whose
      turn 2 copies.
    p_wrong_before_rewrite: the same in episodes whose turn 2 rewrites. Above p_wrong_first,
      rewriting is a reaction to a wrong first attempt, as for a person who sometimes checks;
      and the reversed answer cannot be learnt as "y1 backwards" — it has to be computed from
      the question. (At 0.5 a rewrite still mostly echoed y1; 1.0 is the default.)
  """
  num_digits: int = 4
  p_wrong_first: float = 0.2
  p_wrong_before_rewrite: float = 1.0
  p_copy: float = 0.7
  p_reverse: float = 0.25
  p_wrong_rewrite: float = 0.05

  def __post_init__(self):
    if self.num_digits < 1:
      raise ValueError(f"num_digits must be >= 1, got {self.num_digits}")
    total = self.p_copy + self.p_reverse + self.p_wrong_rewrite
    if not np.isclose(total, 1.0):
      raise ValueError(f"p_copy + p_reverse + p_wrong_rewrite must be 1, got {total}")

  @property
  def tokenizer(self) -> CharTokenizer:
    return CharTokenizer("0123456789+=" + INSTRUCTION + REVERSED)

  @property
  def max_answer_len(self) -> int:
    """Longest attempt in characters, EOS included (`r` + num_digits+1 digits + EOS)."""
    return self.num_digits + 3

  @property
  def prompt_len(self) -> int:
    return 2 * self.num_digits + 2

  def _operands(self, rng: np.random.Generator, n: int) -> np.ndarray:
    lo, hi = 10 ** (self.num_digits - 1), 10 ** self.num_digits
    return rng.integers(lo, hi, size=(n, 2))

  def problems(self, n: int, *, seed: int, exclude: Sequence[SyntheticProblem] = ()):
    """`n` distinct problems drawn with `seed`, none of which is in `exclude`."""
    rng = np.random.default_rng(seed)
    seen = {p.question for p in exclude}
    out = []
    while len(out) < n:
      for a, b in self._operands(rng, 2 * (n - len(out)) + 8):
        q = f"{a}+{b}="
        if q not in seen:
          seen.add(q)
          out.append(SyntheticProblem(id=f"add{self.num_digits}-{a}-{b}", question=q,
                                      answer=str(a + b)))
          if len(out) == n:
            break
    return out

  @staticmethod
  def parse(attempt: str) -> int | None:
    """The number an attempt states (`"6912"` or `"r2196"`), or None if malformed."""
    text = attempt.strip()
    if text.startswith(REVERSED):
      text = text[1:][::-1]
    if not text or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
      return None
    return int(text)

  def reward(self, attempt: str, problem: SyntheticProblem) -> float:
    """1.0 if the attempt states the right sum in either format, else 0.0."""
    return float(self.parse(attempt) == int(problem.answer))

  def _corrupt(self, digits: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(digits)))
    choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0")]
    if not choices:  # a single-digit "0" has no non-zero alternative at position 0
      choices = [d for d in "123456789" if d != digits[i]]
    return digits[:i] + choices[int(rng.integers(len(choices)))] + digits[i + 1:]

  def warmup_episodes(self, n: int, *, seed: int, exclude=()) -> list[Episode]:
    """SFT warm-up episodes with the designed turn-2 mixture (see the module docstring)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for p in self.problems(n, seed=seed, exclude=exclude):
      u = rng.random()
      p_wrong = self.p_wrong_first if u < self.p_copy else self.p_wrong_before_rewrite
      y1 = p.answer if rng.random() >= p_wrong else self._corrupt(p.answer, rng)
      if u < self.p_copy:
        y2 = y1
      elif u < self.p_copy + self.p_reverse:
        y2 = REVERSED + p.answer[::-1]
      else:
        y2 = REVERSED + self._corrupt(p.answer, rng)[::-1]
      out.append(Episode(p, y1, y2))
    return out


TASKS = {"addition": AdditionTask}


def make_task(name: str, **kwargs):
  """A synthetic task by its config name (`"addition"`)."""
  if name not in TASKS:
    raise ValueError(f"Unknown synthetic task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name](**kwargs)


def episode_tokens(tokenizer: CharTokenizer, question: str, attempts: Sequence[str]):
  """Token ids and turn mask of `^ x1 y1 . ? y2 . ? y3 . ...`.

  `turn_mask[t] = k` marks the tokens of attempt k (its EOS included), 0 elsewhere (BOS,
  question, instructions): only those tokens are trained on.
  """
  tokens = [tokenizer.bos_id] + tokenizer.encode(question)
  turn_mask = [0] * len(tokens)
  for k, attempt in enumerate(attempts, start=1):
    if k > 1:
      tokens += tokenizer.encode(INSTRUCTION)
      turn_mask += [0]
    ids = tokenizer.encode(attempt) + [tokenizer.eos_id]
    tokens += ids
    turn_mask += [k] * len(ids)
  return tokens, turn_mask
