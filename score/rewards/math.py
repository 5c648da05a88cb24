r"""MATH answer checking: extract the final answer, decide equivalence, score a response.

The oracle reward of SCoRe (Kumar et al., 2024, arXiv 2409.12917) on MATH is
``r(y, y*) = 1[answer(y) ≡ y*]``. This module provides

* `extract_answer(text)`: the model's final answer. Two formats are read:

  - SCoRe's prompted form, ``Final Answer: The final answer is $X$. I hope it is correct.``
    (``$...$``, ``$$...$$``, ``\(...\)``, a box, or plain text that ends with "I hope it is
    correct" or is one short phrase; ``X`` may itself be boxed);
  - the MATH convention (Hendrycks et al., 2021): the argument of the last ``\boxed{...}`` or
    ``\fbox{...}``, braces nested arbitrarily, or ``\boxed 2`` without braces (up to the next
    ``$`` or line end). Several adjacent boxes (``\boxed{(2, 2)} \text{ and } \boxed{(6, 2)}``:
    only spaces, ``$``, commas, "and"/"or" between them) are one answer of several parts,
    returned joined by ``", "`` (duplicates dropped); `is_equivalent` compares such answers
    as sets.

  When both occur, the one that starts *later* in the text wins (the last stated answer; so
  in ``the final answer is $4 + 2 = \boxed{6}$`` the box wins).
* `normalize(answer)`: the Hendrycks et al. string normaliser (``strip_string`` of the MATH
  repository's ``is_equiv``) plus a few extra rules (listed in its docstring).
* `is_equivalent(pred, gold)`: normalised strings equal, or math-verify (``parse`` on
  ``$...$``-wrapped strings, then ``verify(gold, pred)``) says so, or -- for answers of
  several parts -- the parts match one to one in any order (``(6, 2), (2, 2)`` ≡
  ``(2, 2), (6, 2)``; not a subset, not a superset).
* `reward(response, gold)` and the batch API `rewards(responses, golds)`: 1.0 or 0.0.

**Never crashes, never hangs.** `rewards` keeps a fast path in the calling process (no answer
→ 0; normalised strings equal → 1) and sends everything else to a `WorkerPool` of processes:
each check runs in the main thread of a worker with its own `setitimer` deadline (math-verify's
own ``signal.alarm`` timeouts are switched off so they cannot cancel ours), and the parent
kills and replaces a worker that still has not answered ``timeout_s + 1`` seconds later (a
check stuck inside C code, where no signal is delivered). Workers have a 2 GiB address-space
limit, so a gigantic integer becomes a MemoryError rather than swap. A check that times out, raises or
kills its worker scores 0 and is logged (``logging``, which absl picks up); nothing is raised
into the caller.

`is_equivalent` itself runs in the calling process: there its deadline works only in the main
thread (elsewhere it runs without one), so use `rewards` for untrusted output.
"""

from __future__ import annotations

import atexit
import contextlib
import fractions
import logging
import re
import signal
import threading
from typing import Iterator, Sequence

from score.rewards import _pool

logger = logging.getLogger(__name__)

__all__ = [
    "extract_answer",
    "normalize",
    "is_equivalent",
    "reward",
    "rewards",
    "shutdown",
    "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 5.0
# Extra seconds the parent grants a worker beyond `timeout_s` before killing it: the worker's
# own timer should fire first; the kill is for checks stuck where signals are not delivered.
_KILL_GRACE_S = 1.0
# Address-space limit of each worker: a check that tries to build a gigantic integer gets a
# MemoryError (scored 0) instead of swapping the machine.
_WORKER_MEMORY_BYTES = 2 << 30
# Longest answer we send to sympy; longer strings are compared as normalised strings only.
_MAX_ANSWER_CHARS = 2000

# ----------------------------------------------------------------------------------------------
# Extraction.
# ----------------------------------------------------------------------------------------------

_FINAL_RE = re.compile(r"final\s+answer\s+is\b", re.IGNORECASE)
_HOPE_RE = re.compile(r"\.?\s*I\s+hope\s+it\s+is\s+correct", re.IGNORECASE)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _match_brace(text: str, open_pos: int) -> int | None:
  r"""Index of the ``}`` closing the ``{`` at `open_pos` (``\{``/``\}`` escapes skipped)."""
  depth = 0
  i = open_pos
  n = len(text)
  while i < n:
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return None


def _brace_pairs(text: str) -> dict[int, int]:
  r"""Position of every ``{`` → position of its matching ``}``, in one linear pass
  (``\{``/``\}`` escapes skipped; unmatched braces are left out)."""
  pairs, stack = {}, []
  i, n = 0, len(text)
  while i < n:
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      stack.append(i)
    elif c == "}" and stack:
      pairs[stack.pop()] = i
    i += 1
  return pairs


def _box_argument(text: str, start: int, pairs: dict[int, int] | None = None) -> str | None:
  r"""Argument of the ``\boxed``/``\fbox`` command whose name ends at `start`."""
  j = start
  while j < len(text) and text[j] in " \t":
    j += 1
  if j < len(text) and text[j] == "{":
    end = pairs.get(j) if pairs is not None else _match_brace(text, j)
    if end is None:
      return None
    return text[j + 1:end]
  if j > start:  # `\boxed 2`: up to the next `$` or line end (MATH's last_boxed_only_string).
    arg = re.split(r"\$|\n", text[j:], maxsplit=1)[0].strip()
    return arg or None
  return None


def _last_boxed(text: str) -> tuple[int, str] | None:
  r"""(position, argument) of the last well-formed ``\boxed``/``\fbox`` in `text`."""
  pairs = _brace_pairs(text)
  for m in reversed(list(_BOX_RE.finditer(text))):
    arg = _box_argument(text, m.end(), pairs)
    if arg is not None:
      return m.start(), arg
  return None


# What may stand between the boxes of one multi-part answer: `\boxed{a} \text{ and } \boxed{b}`,
# `$\boxed{a}$, $\boxed{b}$`, `\boxed{a} or \boxed{b}`, `\boxed{a} \quad \boxed{b}`.
_BOX_GAP_RE = re.compile(
    r"[\s$,;]*(?:(?:\\text\{\s*(?:and|or|,)?\s*\}|\\q?quad|\\[,;:!]|\band\b|\bor\b|&)"
    r"[\s$,;]*)*")


def _last_box_group(text: str) -> tuple[int, list[str]] | None:
  r"""(position, arguments) of the last run of adjacent boxes: ``\boxed{(2, 2)} \text{ and }
  \boxed{(6, 2)}`` is one answer of two parts. Boxes are adjacent when only spaces, ``$``,
  commas, semicolons, "and"/"or" (plain or in ``\text{}``), ``\quad`` or a thin space stand
  between them; a box further back ("x = \boxed{3}, y = \boxed{4}") is not part of it."""
  pairs = _brace_pairs(text)
  boxes = []  # (start, end, argument) of well-formed boxes, in order
  for m in _BOX_RE.finditer(text):
    arg = _box_argument(text, m.end(), pairs)
    if arg is not None:
      j = m.end()
      while text[j] in " \t":
        j += 1
      end = pairs[j] + 1 if text[j] == "{" else j + len(text[j:].split("\n", 1)[0])
      boxes.append((m.start(), end, arg))
  if not boxes:
    return None
  group = [boxes[-1]]
  for prev in reversed(boxes[:-1]):
    if prev[1] <= group[0][0] and _BOX_GAP_RE.fullmatch(text[prev[1]:group[0][0]]):
      group.insert(0, prev)
    else:
      break
  return group[0][0], [arg for _, _, arg in group]


def _find_unescaped(text: str, sub: str, start: int) -> int:
  i = start
  while True:
    i = text.find(sub, i)
    if i < 0 or i == 0 or text[i - 1] != "\\":
      return i
    i += 1


def _math_span(rest: str) -> tuple[str, int] | None:
  r"""(content, length consumed) of a leading ``$$..$$``, ``$..$``, ``\(..\)`` or ``\[..\]``
  span of `rest`."""
  for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if rest.startswith(open_):
      end = _find_unescaped(rest, close, len(open_))
      if end >= 0:
        return rest[len(open_):end], end + len(close)
  return None


_MAX_PLAIN_ANSWER_CHARS = 40


def _after_final(text: str, start: int) -> tuple[str, int] | None:
  """(answer, end position in `text`) after ``final answer is`` (which ends at `start`).

  An answer without ``$``/box delimiters must end with "I hope it is correct" on its line,
  or be short (≤ 40 characters, one sentence): "the final answer is a common mistake ..." in
  prose is not an answer.
  """
  rest = text[start:].lstrip(" \t:")
  offset = len(text) - len(rest)
  found = _math_span(rest)
  if found is None:
    m = _BOX_RE.match(rest)
    if m:
      arg = _box_argument(rest, m.end())
      if arg is not None:
        found = arg, rest.find(arg, m.end()) + len(arg) + 1
  if found is None:
    hope = _HOPE_RE.search(rest)
    line = rest.split("\n", 1)[0]
    if hope and hope.start() <= len(line):
      span = rest[:hope.start()]
    else:
      span = line
      bare = span.strip().rstrip(".")
      if len(bare) > _MAX_PLAIN_ANSWER_CHARS or re.search(r"[.!?;]\s", bare):
        return None
    found = span, len(span)
  return found[0], offset + found[1]


def _clean(answer: str) -> str | None:
  answer = answer.strip()
  # A whole-answer box, e.g. "The final answer is $\boxed{5}$".
  m = _BOX_RE.match(answer)
  if m:
    j = m.end()
    while j < len(answer) and answer[j] in " \t":
      j += 1
    if j < len(answer) and answer[j] == "{" and _match_brace(answer, j) == len(answer) - 1:
      answer = answer[j + 1:-1].strip()
  while answer and answer[-1] in ".,;" and not answer.endswith("\\."):
    answer = answer[:-1].rstrip()
  return answer or None


def extract_answer(text: str | None) -> str | None:
  r"""The final answer in a model response, or None.

  >>> extract_answer("... Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.")
  '\\frac{1}{2}'
  >>> extract_answer("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.")
  '\\frac{\\sqrt{3}}{2}'
  """
  if not text:
    return None
  candidates = []  # (start, end, answer)
  finals = list(_FINAL_RE.finditer(text))
  for m in reversed(finals[-3:]):  # The last few only: each look copies the rest of the text.
    after = _after_final(text, m.end())
    if after is None:
      continue
    span, end = after
    answer = _clean(span)
    if answer is not None:
      candidates.append((m.start(), end, answer))
      break
  boxed = _last_box_group(text)
  if boxed is not None:
    parts = list(dict.fromkeys(a for a in map(_clean, boxed[1]) if a is not None))  # dedup
    if parts:
      candidates.append((boxed[0], boxed[0], ", ".join(parts)))
  if not candidates:
    return None
  return max(candidates, key=lambda c: c[0])[2]


# ----------------------------------------------------------------------------------------------
# Normalisation (Hendrycks et al. 2021, MATH repository `is_equiv`, plus extras).
# ----------------------------------------------------------------------------------------------


def _fix_fracs(s: str) -> str:
  r"""``\frac12`` → ``\frac{1}{2}``, ``\frac1{72}`` → ``\frac{1}{72}`` (MATH's _fix_fracs)."""
  parts = s.split("\\frac")
  out = parts[0]
  for sub in parts[1:]:
    out += "\\frac"
    if not sub or sub[0] == "{":
      out += sub
      continue
    if len(sub) < 2:
      return s
    a, b = sub[0], sub[1]
    if b != "{":
      out += "{" + a + "}{" + b + "}" + sub[2:]
    else:
      out += "{" + a + "}" + b + sub[2:]
  return out


def _fix_a_slash_b(s: str) -> str:
  r"""``3/4`` → ``\frac{3}{4}`` for integer a, b (MATH's _fix_a_slash_b)."""
  m = re.fullmatch(r"(-?\d+)/(\d+)", s)
  if not m:
    return s
  return "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"


def _fix_sqrt(s: str) -> str:
  r"""``\sqrt3`` → ``\sqrt{3}`` (MATH's _fix_sqrt)."""
  parts = s.split("\\sqrt")
  out = parts[0]
  for sub in parts[1:]:
    if sub and sub[0] not in "{[":
      out += "\\sqrt{" + sub[0] + "}" + sub[1:]
    else:
      out += "\\sqrt" + sub
  return out


_TEXT_CMD = r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf|operatorname)"
# A unit written as trailing text after a value, e.g. "10\text{ cm}", "5 \mbox{inches}^2".
_UNIT_RE = re.compile(_TEXT_CMD + r"\{[^{}]*\}(?:\^\{?\d\}?)?$")
_TEXT_RE = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")
_TEXT_CMD_RE = re.compile(_TEXT_CMD + r"(?![A-Za-z])")
# Unit words dropped after a number ("5 cm", "12 square feet"). Single letters (m, g, L) and
# "in" are left alone: "2 m" may be 2·m.
_PLAIN_UNITS = frozenset("""
    cm mm km meter meters metre metres inch inches ft feet foot yd yard yards mile miles
    unit units degree degrees cent cents dollar dollars second seconds sec minute minutes min
    hour hours day days week weeks month months year years pound pounds lb lbs ounce ounces oz
    mph kph gram grams kg liter liters litre litres ml square cubic sq cu
    """.split())


def _drop_plain_units(s: str) -> str:
  words = s.split(" ")
  kept = list(words)
  while len(kept) > 1 and kept[-1].lower().rstrip("0123456789^{}.") in _PLAIN_UNITS:
    kept.pop()
  while kept and not kept[-1]:
    kept.pop()
  if len(kept) < len(words) and kept and re.search(r"\d", kept[-1]) and not kept[-1][-1].isalpha():
    return " ".join(kept)
  return s


_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize(answer: str | None) -> str:
  r"""Hendrycks-style canonical string for an answer (never raises; None → "").

  Rules of the MATH repository's ``strip_string``: drop line breaks, ``\!``, ``\left``,
  ``\right``, ``^\circ``/``^{\circ}``, ``\$``, ``\%``; ``\\`` → ``\``; ``tfrac``/``dfrac`` →
  ``frac``; a trailing unit ``\text{ ...}`` is dropped; ``" ."``/``"{."``/leading ``"."`` get a
  ``0``; ``k = 5`` (left side ≤ 2 characters) → ``5``; ``\sqrt3`` → ``\sqrt{3}``; spaces
  removed; ``\frac12`` → ``\frac{1}{2}``; ``0.5`` → ``\frac{1}{2}``; ``a/b`` (integers) →
  ``\frac{a}{b}``.

  Extra rules here: surrounding ``$``/``\(\)`` and a whole-answer ``\boxed{}`` are removed;
  ``%``, ``$``, ``\circ`` and ``°`` are dropped; spacing macros (``\,``, ``\;``, ``\:``,
  ``\ ``, ``~``, ``\quad``, ``\displaystyle``) are removed; any trailing unit in
  ``\text``/``\mbox``/``\mathrm`` after a value is dropped (not only ``\text{ ...}``), and
  so are plain unit words after a number (``5 cm``, ``12 square feet``; not single letters,
  which may be variables); a
  remaining ``\text{X}`` is unwrapped to ``X`` (so ``\text{(C)}`` → ``(C)``); trailing ``.``
  is dropped; a thousands separator in a plain number is removed (``10,000`` → ``10000``).
  Letters keep their case.
  """
  if answer is None:
    return ""
  s = str(answer).strip()
  s = s.replace("\n", " ").replace("\r", " ")
  for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if len(s) >= len(open_) + len(close) and s.startswith(open_) and s.endswith(close):
      s = s[len(open_):len(s) - len(close)].strip()
      break
  cleaned = _clean(s)
  s = cleaned if cleaned is not None else ""
  s = s.replace("\\!", "")
  s = s.replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])", "", s)
  s = s.replace("\\displaystyle", "")
  for sp in ("\\,", "\\;", "\\:", "\\quad", "\\qquad", "~"):
    s = s.replace(sp, " ")
  s = s.replace("\\ ", " ")
  s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
  s = s.replace("\\$", "").replace("$", "")
  s = s.replace("\\%", "").replace("%", "")
  s = s.strip()
  m = _UNIT_RE.search(s) if "\\" in s else None
  if m:
    value = s[:m.start()].strip()
    if value and re.search(r"\d", value) and "\\text" not in value:
      s = value
  s = _TEXT_RE.sub(lambda mt: mt.group(1), s)
  s = _drop_plain_units(s.strip())
  while s.endswith(".") and not s.endswith("\\."):
    s = s[:-1].rstrip()
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if not s:
    return s
  if s[0] == ".":
    s = "0" + s
  if s.count("=") == 1:
    lhs, rhs = s.split("=")
    if len(lhs.strip()) <= 2 and rhs.strip():
      s = rhs
  s = _fix_sqrt(s)
  s = s.replace(" ", "")
  s = _fix_fracs(s)
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  if s == "0.5":
    s = "\\frac{1}{2}"
  s = _fix_a_slash_b(s)
  return s


# ----------------------------------------------------------------------------------------------
# Equivalence.
# ----------------------------------------------------------------------------------------------


class CheckTimeout(BaseException):
  """Raised by our timer inside a check. A BaseException so that the `except Exception`
  handlers of sympy/math-verify cannot swallow it."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
  """Raises `CheckTimeout` after `seconds` (main thread only; elsewhere no deadline)."""
  if (not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread()
      or not hasattr(signal, "setitimer")):
    yield
    return

  def _handler(signum, frame):
    raise CheckTimeout(f"equivalence check exceeded {seconds:g}s")

  old_handler = signal.signal(signal.SIGALRM, _handler)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old_handler)


def _unwrap_dollars(s: str) -> str:
  s = s.strip()
  while len(s) >= 2 and s[0] == "$" and s[-1] == "$" and not s.endswith("\\$"):
    s = s[1:-1].strip()
  return s


_MV_READY = False


def _math_verify():
  """Imports math-verify lazily, with its signal-based timeouts switched off for good."""
  global _MV_READY
  import math_verify  # pylint: disable=g-import-not-at-top
  from math_verify import grader as mv_grader  # pylint: disable=g-import-not-at-top
  from math_verify import parser as mv_parser  # pylint: disable=g-import-not-at-top

  if not _MV_READY:
    # We pass timeouts of None and keep our own deadline; silence its "timeout disabled"
    # warning, which it would print once per process.
    mv_grader.TIMEOUT_WARNING_SHOWN = True
    mv_parser.TIMEOUT_WARNING_SHOWN = True
    _MV_READY = True
  return math_verify


def _math_verify_equal(pred: str, gold: str) -> bool:
  mv = _math_verify()
  gold_parsed = mv.parse(f"${gold}$", parsing_timeout=None)
  pred_parsed = mv.parse(f"${pred}$", parsing_timeout=None)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))


_DECIMAL_RE = re.compile(r"-?(\d+\.?\d*|\.\d+)")
_BASE_RE = re.compile(r"(\w+)_\{?(\d+)\}?")


def _literal_verdict(pred_n: str, gold_n: str) -> bool | None:
  """Exact answers for literals that math-verify compares too loosely, else None.

  Two decimal numbers compare exactly (math-verify rounds to 6 decimals, so .0000672 ==
  .0000673 there); two numbers in a base (`52_8`) compare digits and base (it drops the
  subscript).
  """
  if _DECIMAL_RE.fullmatch(pred_n) and _DECIMAL_RE.fullmatch(gold_n):
    return fractions.Fraction(pred_n) == fractions.Fraction(gold_n)
  base_p, base_g = _BASE_RE.fullmatch(pred_n), _BASE_RE.fullmatch(gold_n)
  if base_p and base_g:
    return (base_p.group(1).upper(), int(base_p.group(2))) == (
        base_g.group(1).upper(), int(base_g.group(2)))
  return None


# Top-level separators of an answer's parts: ", " (not "1,000"), ";", "and" / "or" in words.
_PART_SEP_RE = re.compile(r",\s+|\s*;\s*|\s*\\text\{\s*(?:and|or)\s*\}\s*|\s+(?:and|or)\s+")


def _parts(answer: str) -> list[str]:
  """`answer` split at top-level separators (outside (), [], {}); one part if none."""
  parts, depth, start, i = [], 0, 0, 0
  while i < len(answer):
    c = answer[i]
    if c in "([{":
      depth += 1
    elif c in ")]}" and depth:
      depth -= 1
    elif depth == 0:
      m = _PART_SEP_RE.match(answer, i)
      if m and m.end() > i:
        parts.append(answer[start:i])
        start = i = m.end()
        continue
    i += 1
  parts.append(answer[start:])
  return [p.strip() for p in parts if p.strip()]


def _same_part(pred: str, gold: str, string_match: bool) -> bool:
  pred_n, gold_n = normalize(pred), normalize(gold)
  return ((string_match and pred_n == gold_n) or bool(_literal_verdict(pred_n, gold_n))
          or _math_verify_equal(pred, gold))


def _same_parts(pred_s: str, gold_s: str, string_match: bool) -> bool:
  """Answers of several parts: equal as sets (each gold part matched by one distinct pred part,
  none left over), or every part of `pred` equal to a one-part `gold` (the same answer in
  several forms). False otherwise, and when `pred` has a single part (the plain comparison)."""
  pred_parts, gold_parts = _parts(pred_s), _parts(gold_s)
  if len(pred_parts) > 1 and len(gold_parts) == 1:  # one answer in several forms: x+11, 11+x
    return all(_same_part(p, gold_s, string_match) for p in pred_parts)
  if len(gold_parts) < 2 or len(pred_parts) != len(gold_parts):
    return False
  unused = list(pred_parts)
  for g in gold_parts:
    match = next((p for p in unused if _same_part(p, g, string_match)), None)
    if match is None:
      return False
    unused.remove(match)
  return True


def _equivalent(pred, gold, timeout_s, string_match) -> tuple[bool, str | None]:
  """(equivalent?, why the check failed or None). Never raises."""
  if pred is None or gold is None:
    return False, None
  try:
    pred_s, gold_s = _unwrap_dollars(str(pred)), _unwrap_dollars(str(gold))
    if not pred_s or not gold_s:
      return False, None
    pred_n, gold_n = normalize(pred_s), normalize(gold_s)
    if string_match and pred_n and pred_n == gold_n:
      return True, None
    verdict = _literal_verdict(pred_n, gold_n)
    if verdict is not None:
      return verdict, None
    if len(pred_s) > _MAX_ANSWER_CHARS or len(gold_s) > _MAX_ANSWER_CHARS:
      return False, f"answer longer than {_MAX_ANSWER_CHARS} characters"
    with _deadline(timeout_s):
      if _math_verify_equal(pred_s, gold_s):
        return True, None
      # Retry on the normalised strings, except when normalisation unwrapped \text{...}:
      # sympy reads a bare word as a product of symbols, so anagrams would compare equal.
      if (string_match and pred_n and gold_n and (pred_n, gold_n) != (pred_s, gold_s)
          and not _TEXT_CMD_RE.search(pred_s + gold_s)
          and _math_verify_equal(pred_n, gold_n)):
        return True, None
      return _same_parts(pred_s, gold_s, string_match), None
  except CheckTimeout as e:
    return False, str(e)
  except Exception as e:  # pylint: disable=broad-except
    return False, f"{type(e).__name__}: {e}"[:500]


def is_equivalent(pred: str | None, gold: str | None, *,
                  timeout_s: float | None = DEFAULT_TIMEOUT_S, string_match: bool = True) -> bool:
  r"""Whether answer `pred` is mathematically the same as `gold` (both bare answers).

  True when the `normalize`d strings are equal and non-empty, or when math-verify finds them
  equal: ``verify(parse("$gold$"), parse("$pred$"))`` (numbers to 6 decimals, symbolic
  simplification, sets, intervals, tuples, matrices, equations ``x = 3`` vs ``3``), and if
  that fails, the same on the normalised strings (not when either contains ``\text``-like
  macros: sympy reads a bare word as a product of letters, so ``neve`` would equal ``even``).
  A check that raises or runs past `timeout_s` (main thread only) is False and logged.
  Never raises.

  Bare words *outside* ``\text{}`` are still compared by math-verify as products of
  symbols (``ab`` ≡ ``ba``), as they are in algebra.

  `string_match=False` skips the normalised-string shortcut and the normalised retry, so
  that only math-verify decides (for testing the checker itself).
  """
  ok, error = _equivalent(pred, gold, timeout_s, string_match)
  if error is not None:
    logger.warning("math.is_equivalent: %s (pred=%.200r, gold=%.200r); scoring False",
                   error, pred, gold)
  return ok


# ----------------------------------------------------------------------------------------------
# Rewards.
# ----------------------------------------------------------------------------------------------

_POOLS: dict[int | None, _pool.WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def _default_pool(num_workers: int | None) -> _pool.WorkerPool:
  with _POOLS_LOCK:
    pool = _POOLS.get(num_workers)
    if pool is None:
      pool = _pool.WorkerPool(num_workers, preload=("score.rewards.math:_warm_up",),
                              memory_limit_bytes=_WORKER_MEMORY_BYTES)
      _POOLS[num_workers] = pool
    return pool


@atexit.register
def shutdown() -> None:
  """Stops the worker pools `rewards` started (also run at interpreter exit)."""
  with _POOLS_LOCK:
    for pool in _POOLS.values():
      pool.close()
    _POOLS.clear()


def _warm_up() -> None:
  """Run once in each new worker: imports sympy/math-verify and builds its LaTeX parser."""
  _math_verify_equal("\\frac{1}{2}", "0.5")


def _check_in_worker(pred: str, gold: str, timeout_s: float, string_match: bool = True
                     ) -> tuple[bool, str | None]:
  """Runs in a worker process (its main thread): the full check, with our deadline.
  Returns (equivalent?, error); the parent does the logging."""
  return _equivalent(pred, gold, timeout_s, string_match)


def _fast(response: str | None, gold: str | None) -> tuple[float | None, str | None]:
  """(score, None) when decided without math-verify, else (None, extracted answer)."""
  if gold is None or not str(gold).strip():
    logger.warning("math.rewards: empty gold answer; scoring 0")
    return 0.0, None
  try:
    pred = extract_answer(response)
  except Exception as e:  # pylint: disable=broad-except
    logger.warning("math.rewards: extraction failed (%s: %s); scoring 0", type(e).__name__, e)
    return 0.0, None
  if pred is None:
    return 0.0, None
  try:
    pn = normalize(_unwrap_dollars(pred))
    if pn and pn == normalize(_unwrap_dollars(str(gold))):
      return 1.0, None
  except Exception:  # pylint: disable=broad-except
    pass
  return None, pred


def rewards(responses: Sequence[str | None], golds: Sequence[str | None], *,
            timeout_s: float = DEFAULT_TIMEOUT_S, num_workers: int | None = None,
            pool: _pool.WorkerPool | None = None) -> list[float]:
  """Batch reward ``1[extract_answer(response) ≡ gold]`` ∈ {0.0, 1.0}, one per response.

  Args:
    responses: model outputs (None or unparsable → 0).
    golds: gold answers (bare, e.g. MATH's ``answer`` field ``\\frac{14}{3}``).
    timeout_s: per-item limit for the math-verify check; a worker that is still busy
      ``timeout_s + 1`` s after receiving an item is killed and replaced.
    num_workers: size of the module's shared pool (created on first use, reused, closed at
      exit or by `shutdown()`); default ``min(4, cpu_count)``.
    pool: use this `WorkerPool` instead of the shared one.

  Never raises for bad inputs or failing checks (those score 0 and are logged); raises
  ValueError only if the two sequences differ in length.
  """
  if len(responses) != len(golds):
    raise ValueError(f"math.rewards: {len(responses)} responses but {len(golds)} golds")
  out: list[float] = [0.0] * len(responses)
  slow: list[int] = []
  preds: list[str | None] = [None] * len(responses)
  for i, (resp, gold) in enumerate(zip(responses, golds)):
    score, pred = _fast(resp, gold)
    if score is not None:
      out[i] = score
    else:
      slow.append(i)
      preds[i] = pred
  if not slow:
    return out
  if pool is None:
    pool = _default_pool(num_workers)
  outcomes = pool.map(_check_in_worker,
                      [(preds[i], str(golds[i]), float(timeout_s)) for i in slow],
                      timeout_s=float(timeout_s) + _KILL_GRACE_S)
  for i, oc in zip(slow, outcomes):
    if oc.ok:
      equal, error = oc.value
      out[i] = 1.0 if equal else 0.0
      if error is not None:
        logger.warning("math.rewards: item %d scored 0: %s (pred=%.200r, gold=%.200r)", i,
                       error, preds[i], golds[i])
    else:
      logger.warning("math.rewards: item %d scored 0 because its check failed: %s "
                     "(pred=%.200r, gold=%.200r)", i, oc.error, preds[i], golds[i])
  return out


def reward(response: str | None, gold: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S
           ) -> float:
  """`rewards` for one response (the check runs in the shared worker pool)."""
  return rewards([response], [gold], timeout_s=timeout_s)[0]
