r"""A designed instruction-following task with a hidden 5-point rubric (the Self-Rewarding demo).

Self-Rewarding LMs (Yuan et al., 2024) judge responses with an additive 5-point prompt. Here
the instructions are small enough that an *oracle* scores every response exactly with five
additive criteria of the same shape, so a run can measure whether the responses get better
while the model judges them itself. The model never sees the oracle: only its EFT data is
derived from it, as the paper's EFT comes from human rankings.

* **Instruction** ``up qdhb`` / ``down qdhb``: 3–6 distinct letters to write in ascending
  (``up``) or descending (``down``) order. The grammar (`parse_instruction`) decides which
  generated instructions are kept.
* **Perfect response** ``bdhq`` (``qhdb`` for ``down``).
* **The rubric** (`rubric`, one point each, like the paper's additive prompt):

  1. ``rel``  relevant — the response contains at least one requested letter;
  2. ``sub``  substantial — it contains at least half of them;
  3. ``all``  complete — it contains all of them;
  4. ``ord``  organised — the letters it writes follow the requested order (ties allowed);
  5. ``cln``  nothing extraneous — only requested letters, none twice, no filler.

  Each is a local, checkable property of (instruction, response): membership, a count, an
  order of neighbours, a foreign or repeated token. That is why a tiny model can learn to
  judge: the EFT target lists the evidence, walks the five checks and then gives the total
  (`judgment`: ``miss:- add:- swap:db rel+ sub+ all+ ord- cln+ Score: 4``), so each verdict
  follows from evidence already written and the score is a count of ``+``.
* **IFT responses** (`ift_response`) are a mixture of quality, as Open Assistant's are: the
  perfect response with defects drawn independently — a filler mark ``~`` in front, a
  letter dropped, two neighbours swapped, a repeated letter, an off-topic answer. Defects are
  likelier for longer instructions, as for a tired annotator; the configured rates make the
  *greedy* SFT model imperfect, so there is something for self-rewarding to improve.
* **Sequences** (`user_prompt`): ``^up qdhb>`` → ``bdhq.``; the judge prompt ``^judge up
  qdhb=bdhq>`` → the judgment; the few-shot prompt ``^new up abc;down xyz;…;>`` → a new
  instruction (``^`` is BOS, ``.`` EOS).

Plain Python, seeded, no JAX.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from score.data import synthetic

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIRECTIONS = ("up", "down")
FILLER = "~"
CRITERIA = ("rel", "sub", "all", "ord", "cln")
PROMPT_END = ">"
JUDGE_VERB, NEW_VERB, SHOT_SEP = "judge", "new", ";"


def parse_instruction(text: str) -> tuple[str, str] | None:
  """`(direction, letters)` of a well-formed instruction, else None: ``up``/``down``, one
  space, 3–6 distinct lowercase letters."""
  if not isinstance(text, str):
    return None
  direction, sep, letters = text.partition(" ")
  if (direction not in DIRECTIONS or not sep or not 3 <= len(letters) <= 6
      or any(c not in LETTERS for c in letters) or len(set(letters)) != len(letters)):
    return None
  return direction, letters


def _parsed(instruction: str) -> tuple[str, str]:
  p = parse_instruction(instruction)
  if p is None:
    raise ValueError(f"not an instruction of the rubric task: {instruction!r}")
  return p


def perfect_response(instruction: str) -> str:
  direction, letters = _parsed(instruction)
  return "".join(sorted(letters, reverse=direction == "down"))


def rubric(instruction: str, response: str) -> tuple[bool, ...]:
  """The five criteria (`CRITERIA`) of `response` to `instruction`; the oracle score is
  their sum."""
  direction, letters = _parsed(instruction)
  wanted = set(letters)
  written = [c for c in response if c in LETTERS]
  hits = wanted & set(written)
  if direction == "up":
    ordered = all(a <= b for a, b in zip(written, written[1:]))
  else:
    ordered = all(a >= b for a, b in zip(written, written[1:]))
  clean = (len(written) == len(response) and all(c in wanted for c in written)
           and len(set(written)) == len(written))
  return (len(hits) >= 1, 2 * len(hits) >= len(wanted), hits == wanted,
          bool(written) and ordered, clean)


def oracle_score(instruction: str, response: str) -> int:
  return sum(rubric(instruction, response))


def evidence(instruction: str, response: str) -> tuple[str, str, str]:
  """What the justification lists before the verdicts: the requested letters missing from
  the response (instruction order), the response's extraneous characters (filler, foreign
  letters, repeats; response order) and its first neighbour pair out of the requested order
  (``""`` when none)."""
  direction, letters = _parsed(instruction)
  miss = "".join(c for c in letters if c not in response)
  extra, seen = [], set()
  for c in response:
    if c not in letters or c in seen:
      extra.append(c)
    seen.add(c)
  written = [c for c in response if c in LETTERS]
  swap = next((a + b for a, b in zip(written, written[1:])
               if (a > b if direction == "up" else a < b)), "")
  return miss, "".join(extra), swap


def judgment(instruction: str, response: str) -> str:
  """The EFT target: a short justification — the evidence (`evidence`), then each
  criterion's verdict — and the total in the paper's format, ``Score: N`` (read by
  `score.rewards.judge.parse_score`)::

      miss:q add:~ swap:- rel+ sub+ all- ord+ cln- Score: 3

  Each item is a local check a small model can make one token at a time (is this letter in
  the response? is this character allowed? are these neighbours in order?), and each verdict
  follows from the evidence before it.
  """
  marks = rubric(instruction, response)
  miss, extra, swap = evidence(instruction, response)
  return (f"miss:{miss or '-'} add:{extra or '-'} swap:{swap or '-'} "
          + " ".join(f"{c}{'+' if m else '-'}" for c, m in zip(CRITERIA, marks))
          + f" Score: {sum(marks)}")


def user_prompt(text: str) -> str:
  return synthetic.BOS + text + PROMPT_END


def judge_prompt(instruction: str, response: str) -> str:
  """The judge's prompt text (before `user_prompt`): instruction and response to score."""
  return f"{JUDGE_VERB} {instruction}={response}"


def few_shot_prompt(shots: Sequence[str]) -> str:
  """The prompt-generation prompt (before `user_prompt`): the example instructions; the
  answer is one new instruction."""
  return NEW_VERB + " " + "".join(s + SHOT_SEP for s in shots)


@dataclasses.dataclass(frozen=True)
class RubricTask:
  """Instructions, the IFT mixture and EFT data of the rubric task.

  Attributes:
    min_items, max_items: letters per instruction.
    p_filler, p_drop, p_swap, p_repeat: IFT defect rates for an instruction of
      `max_items` letters (each scaled by `length_slope` per missing letter: shorter
      instructions get fewer defects); drawn independently.
    length_slope: the factor per letter below `max_items`.
    p_offtopic: an IFT response that answers another instruction (any length).
    num_shots: examples in the few-shot prompt-generation prompt (paper: 8).
  """
  min_items: int = 3
  max_items: int = 6
  p_filler: float = 0.6
  p_drop: float = 0.3
  p_swap: float = 0.3
  p_repeat: float = 0.3
  length_slope: float = 0.8
  p_offtopic: float = 0.05
  num_shots: int = 4

  @property
  def tokenizer(self) -> synthetic.CharTokenizer:
    return synthetic.CharTokenizer(LETTERS + " " + FILLER + PROMPT_END + SHOT_SEP + "=+-:"
                                   + "Scoreudwnjg0123456789")

  def instruction(self, rng: random.Random) -> str:
    k = rng.randint(self.min_items, self.max_items)
    return f"{rng.choice(DIRECTIONS)} {''.join(rng.sample(LETTERS, k))}"

  def instructions(self, n: int, *, seed: int, exclude: Sequence[str] = ()) -> list[str]:
    """`n` distinct instructions, none in `exclude`."""
    rng = random.Random(seed)
    seen, out = set(exclude), []
    while len(out) < n:
      x = self.instruction(rng)
      if x not in seen:
        seen.add(x)
        out.append(x)
    return out

  def rate(self, p: float, instruction: str) -> float:
    return p * self.length_slope ** (self.max_items - len(_parsed(instruction)[1]))

  def ift_response(self, instruction: str, rng: random.Random) -> str:
    """A response of mixed quality (see the module docstring)."""
    if rng.random() < self.p_offtopic:
      return perfect_response(self.instruction(rng))
    letters = list(perfect_response(instruction))
    if rng.random() < self.rate(self.p_drop, instruction):
      del letters[rng.randrange(len(letters))]
    if rng.random() < self.rate(self.p_swap, instruction):
      i = rng.randrange(len(letters) - 1)
      letters[i], letters[i + 1] = letters[i + 1], letters[i]
    if rng.random() < self.rate(self.p_repeat, instruction):
      i = rng.randrange(len(letters))
      letters.insert(i, letters[i])
    text = "".join(letters)
    if rng.random() < self.rate(self.p_filler, instruction):
      text = FILLER + text
    return text

  def few_shot_example(self, rng: random.Random, pool: Sequence[str]) -> tuple[str, str]:
    """(few-shot prompt text, the next instruction): the prompt-generation data."""
    shots = rng.sample(list(pool), self.num_shots + 1)
    return few_shot_prompt(shots[:-1]), shots[-1]

  def ranked_responses(self, instruction: str, rng: random.Random, n: int = 4
                       ) -> list[str]:
    """`n` distinct IFT-style responses with at least two different oracle scores (the
    held-out EFT split's prompts, ranked by the oracle)."""
    while True:
      out = list(dict.fromkeys(self.ift_response(instruction, rng) for _ in range(4 * n)))[:n]
      if len(out) == n and len({oracle_score(instruction, r) for r in out}) > 1:
        return out
