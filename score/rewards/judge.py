r"""LLM-as-a-Judge: the Self-Rewarding additive 5-point prompt, a robust parser, pairwise judging.

Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020), §2.2 and Figure 2: the
model M_t judges each of its N = 4 candidate responses with an *additive* 5-point prompt (one
point per criterion met) that ends with ``Score: <total points>``; each candidate is judged 3
times and the scores are averaged (`average_scores`); the highest- and lowest-scored
candidates form a DPO pair, and prompts whose two ends tie are dropped (`select_pair`).

`JUDGE_PROMPT` reproduces the wording of the paper's Figure 2 (with ASCII apostrophes);
`judge_prompt(instruction, response)` fills it in by plain substitution (braces in a response
are safe).

**Parsing rules** (`parse_score`; every failure is ``JudgeResult(None, reason)``, never an
exception):

1. Candidates are the places where the word ``score`` (any case, so also ``Total score``,
   ``**Score:**``) is followed by a colon (``:`` or ``：``), optionally with Markdown ``*``/``_``
   around either side. A "score of 4" in running prose is *not* a candidate: the paper's
   format is the ``Score:`` line.
2. A candidate is numeric when its value starts with a number (``4``, ``4.``, ``3.5``,
   ``**4**``, ``"4"``, ``[4]``, ``+4``, ``-1``; on the same line or the next). A range
   (``3-4``, ``3 to 4``) is non-numeric. ``4/5`` and ``4 out of 5`` mean 4; any other
   denominator (``8/10``) or a percentage is rejected ("not on the 0-5 scale"), never
   rescaled. Words (``four``), ``N/A`` and an echo of the template (``<total points>``) are
   non-numeric.
3. No candidate → None, "no 'Score:' line". Only non-numeric candidates → None, "non-numeric
   score". Non-numeric candidates are ignored when a numeric one exists.
4. Several numeric candidates that agree → that value. Several *different* values → None,
   "several different scores" (default ``multiple="reject"``; ``multiple="last"`` takes the
   last one instead, like implementations that read the final line).
5. The value must lie in [0, 5] (fractional values such as 3.5 are accepted) → else None,
   "out of range".

The pairwise variant is not in the paper (it evaluates its judge pairwise against human
rankings, and uses GPT-4 head-to-head for win rates); ours asks for ``Better response: A``,
``B`` or ``tie`` with the same criteria and parses it with the same discipline
(`parse_pairwise`); `combine_pairwise` merges the two presentation orders to cancel position
bias.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

__all__ = [
    "JUDGE_PROMPT",
    "PAIRWISE_PROMPT",
    "JudgeResult",
    "PairwiseResult",
    "judge_prompt",
    "parse_score",
    "average_scores",
    "select_pair",
    "judge_responses",
    "pairwise_prompt",
    "parse_pairwise",
    "combine_pairwise",
    "JUDGES",
    "Judge",
]

MAX_SCORE = 5.0

_INSTRUCTION = "<INSTRUCTION_HERE>"
_RESPONSE = "<RESPONSE_HERE>"

_CRITERIA = """\
- Add 1 point if the response is relevant and provides some information related to the user's \
inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but \
does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a \
useful way, regardless of whether it seems to have been written by an AI Assistant or if it has \
elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, \
addressing the user's question directly and comprehensively, and is well-organized and helpful, \
even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an \
AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a \
high-quality, engaging, and insightful answer."""

# Yuan et al. (2024), Figure 2: "LLM-as-a-Judge prompt for our LLM to act as a reward model".
JUDGE_PROMPT = f"""\
Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points are accumulated based on the satisfaction of each criterion:
{_CRITERIA}

User: {_INSTRUCTION}

<response>{_RESPONSE}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as \
necessary. To evaluate the response in alignment with this additive scoring model, we'll \
systematically attribute points based on the outlined criteria."""

_RESPONSE_A = "<RESPONSE_A_HERE>"
_RESPONSE_B = "<RESPONSE_B_HERE>"

# Not from the paper: a pairwise prompt built on the same criteria.
PAIRWISE_PROMPT = f"""\
Review the user's question and the two responses below, A and B. Judge each response with the \
additive 5-point criteria described below, then decide which response is better overall:
{_CRITERIA}

User: {_INSTRUCTION}

<response_a>{_RESPONSE_A}</response_a>

<response_b>{_RESPONSE_B}</response_b>

After examining the user's instruction and both responses:
- Briefly justify your decision, up to 100 words. Do not let the order of the responses or \
their length influence you.
- Conclude with your verdict using the format: "Better response: A", "Better response: B" or \
"Better response: tie\""""


@dataclasses.dataclass(frozen=True)
class JudgeResult:
  """A parsed judgment: `score` in [0, 5], or None with `reason` saying what was wrong."""

  score: float | None
  reason: str

  @property
  def ok(self) -> bool:
    return self.score is not None


@dataclasses.dataclass(frozen=True)
class PairwiseResult:
  """A parsed pairwise verdict: ``"A"``, ``"B"``, ``"tie"``, or None with a reason."""

  winner: Literal["A", "B", "tie"] | None
  reason: str

  @property
  def ok(self) -> bool:
    return self.winner is not None


def _fill(template: str, **values: str) -> str:
  """Substitutes placeholders in one pass, so a value that contains another placeholder's
  text is not substituted again."""
  pattern = re.compile("|".join(re.escape(k) for k in values))
  return pattern.sub(lambda m: values[m.group(0)], template)


def judge_prompt(instruction: str, response: str) -> str:
  """The Self-Rewarding judge prompt for one (instruction, response) pair."""
  return _fill(JUDGE_PROMPT, **{_INSTRUCTION: str(instruction), _RESPONSE: str(response)})


# "score" + optional markdown + colon + optional markdown/quotes/brackets, then the value.
_SCORE_RE = re.compile(
    r"\bscore\b[ \t]*[*_]*[ \t]*[:：][ \t]*(?:\n[ \t]*)?[*_]*[ \t]*(?=(?P<value>[^\n]{0,200}))",
    re.IGNORECASE)
_NUMBER_RE = re.compile(
    r"[\"'`\[(]*[ \t]*(?P<num>[-+]?(?:\d+(?:\.\d+)?|\.\d+))(?!\d|\.\d)"
    r"(?![ \t]*(?:-|–|to\b)[ \t]*\d)"
    r"(?P<suffix>[ \t]*(?:/[ \t]*(?P<den>[-+]?\d+(?:\.\d+)?)"
    r"|out[ \t]+of[ \t]+(?P<den2>\d+(?:\.\d+)?)|%))?")


def parse_score(text: str | None, *, multiple: Literal["reject", "last"] = "reject"
                ) -> JudgeResult:
  """Parses a judge's output into a score in [0, 5] (rules in the module docstring)."""
  if multiple not in ("reject", "last"):
    raise ValueError(f"parse_score: multiple must be 'reject' or 'last', got {multiple!r}")
  if text is None or not str(text).strip():
    return JudgeResult(None, "empty judge output")
  text = str(text)
  numeric: list[float] = []
  non_numeric: list[str] = []
  bad_scale: list[str] = []
  for m in _SCORE_RE.finditer(text):
    value = m.group("value").strip()
    nm = _NUMBER_RE.match(value)
    if nm is None:
      non_numeric.append(value[:40])
      continue
    suffix = (nm.group("suffix") or "").strip()
    den = nm.group("den") or nm.group("den2")
    if suffix == "%" or (den is not None and float(den) != MAX_SCORE):
      bad_scale.append(nm.group(0).strip())
      continue
    number = float(nm.group("num"))
    if not math.isfinite(number):
      non_numeric.append(value[:40])
      continue
    numeric.append(number)
  if not numeric:
    if bad_scale:
      return JudgeResult(None, f"score not on the 0-5 scale: {bad_scale[0]!r}")
    if non_numeric:
      return JudgeResult(None, f"non-numeric score: {non_numeric[0]!r}")
    return JudgeResult(None, "no 'Score:' line")
  distinct = sorted(set(numeric))
  if len(distinct) > 1 and multiple == "reject":
    shown = ", ".join(f"{x:g}" for x in numeric[:10]) + (", ..." if len(numeric) > 10 else "")
    return JudgeResult(None, f"several different scores: [{shown}]")
  score = numeric[-1]
  if not 0.0 <= score <= MAX_SCORE:
    return JudgeResult(None, f"score {score:g} out of range [0, {MAX_SCORE:g}]")
  return JudgeResult(score, "ok")


def average_scores(judgments: Iterable[JudgeResult | float | None]) -> float | None:
  """Mean of the valid scores (None and failed `JudgeResult`s are skipped); None if none.

  The paper judges each candidate 3 times and averages, which also breaks ties.
  """
  values = []
  for j in judgments:
    s = j.score if isinstance(j, JudgeResult) else j
    if s is not None and math.isfinite(float(s)):
      values.append(float(s))
  return sum(values) / len(values) if values else None


def select_pair(scores: Sequence[float | None]) -> tuple[int, int] | None:
  """(index of the highest-, index of the lowest-scored candidate), or None.

  Candidates whose score is None are left out; None when fewer than two remain or when the
  highest and lowest tie (the paper drops such prompts). Ties among the best (worst) go to
  the first index.
  """
  valid = [(i, s) for i, s in enumerate(scores) if s is not None]
  if len(valid) < 2:
    return None
  best = max(valid, key=lambda t: (t[1], -t[0]))
  worst = min(valid, key=lambda t: (t[1], t[0]))
  if best[1] == worst[1]:
    return None
  return best[0], worst[0]


def judge_responses(generate_fn: Callable[[list[str]], list[str]], instruction: str,
                    responses: Sequence[str], *, num_judgments: int = 3
                    ) -> list[float | None]:
  """Averaged judge score for each response: one batched `generate_fn` call of
  ``len(responses) * num_judgments`` prompts (sample them with temperature > 0, or the
  repeats are identical). Failed parses are skipped in the average; all failed → None."""
  prompts = [judge_prompt(instruction, r) for r in responses for _ in range(num_judgments)]
  outputs = list(generate_fn(prompts))
  if len(outputs) != len(prompts):
    raise ValueError(f"judge_responses: generate_fn returned {len(outputs)} outputs for "
                     f"{len(prompts)} prompts")
  results = [parse_score(o) for o in outputs]
  return [average_scores(results[i * num_judgments:(i + 1) * num_judgments])
          for i in range(len(responses))]


def pairwise_prompt(instruction: str, response_a: str, response_b: str) -> str:
  """The pairwise judge prompt (A is shown first)."""
  return _fill(PAIRWISE_PROMPT, **{_INSTRUCTION: str(instruction), _RESPONSE_A: str(response_a),
                                   _RESPONSE_B: str(response_b)})


_VERDICT_RE = re.compile(
    r"\b(?:better[ \t]+response|winner|verdict)\b[ \t]*[*_]*[ \t]*[:：][ \t*_\"'`\[(]*"
    r"(?:response[ \t]+)?(?P<value>[^\s*_\"'`\])\.,;!]*)", re.IGNORECASE)
_VERDICTS = {"a": "A", "b": "B", "tie": "tie", "both": "tie", "neither": "tie", "equal": "tie"}


def parse_pairwise(text: str | None) -> PairwiseResult:
  """Parses ``Better response: A | B | tie`` (also ``Winner:``/``Verdict:``; ``both``,
  ``neither``, ``equal`` mean tie). Rules as `parse_score`: no verdict line, an unknown
  verdict, or several different verdicts → None with the reason."""
  if text is None or not str(text).strip():
    return PairwiseResult(None, "empty judge output")
  found, unknown = [], []
  for m in _VERDICT_RE.finditer(str(text)):
    v = m.group("value").lower()
    if v in _VERDICTS:
      found.append(_VERDICTS[v])
    else:
      unknown.append(m.group("value")[:40])
  if not found:
    if unknown:
      return PairwiseResult(None, f"unknown verdict: {unknown[0]!r}")
    return PairwiseResult(None, "no 'Better response:' line")
  if len(set(found)) > 1:
    return PairwiseResult(None, f"several different verdicts: {found[:10]}")
  return PairwiseResult(found[0], "ok")  # type: ignore[arg-type]


def combine_pairwise(ab: PairwiseResult, ba: PairwiseResult) -> PairwiseResult:
  """Combines a verdict on (A, B) with one on the swapped order (B shown as "A").

  Both orders prefer the same underlying response → that response; they disagree (position
  bias) or both say tie → ``"tie"``; one order failed to parse → the other one's verdict;
  both failed → None.
  """
  swap = {"A": "B", "B": "A", "tie": "tie"}
  if not ab.ok and not ba.ok:
    return PairwiseResult(None, f"both orders failed: {ab.reason}; {ba.reason}")
  if not ab.ok:
    return PairwiseResult(swap[ba.winner], f"only the swapped order parsed ({ab.reason})")
  if not ba.ok:
    return PairwiseResult(ab.winner, f"only the first order parsed ({ba.reason})")
  second = swap[ba.winner]
  if ab.winner == second:
    return PairwiseResult(ab.winner, "ok")
  return PairwiseResult("tie", f"orders disagree ({ab.winner} vs {second}): counted as a tie")


class Judge(NamedTuple):
  """A judge variant: how to build its prompt and how to parse the reply."""

  prompt: Callable[..., str]
  parse: Callable[[str | None], Any]


# Judge variants by the name configs use.
JUDGES: dict[str, Judge] = {
    "additive_5pt": Judge(judge_prompt, parse_score),  # Yuan et al. (2024), Figure 2.
    "pairwise": Judge(pairwise_prompt, parse_pairwise),
}
