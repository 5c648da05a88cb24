"""A tiny final-answer extractor for *gold* data (MATH solutions, GSM8K rationales).

This is deliberately local: `score.data` stands alone (no dependency on `score.rewards`). It
reads the reference solutions shipped with the benchmarks, which follow two conventions:

* MATH (Hendrycks et al., 2021): the answer is the argument of the *last* ``\\boxed{...}``
  (or ``\\fbox{...}``) in the solution, braces nested arbitrarily (``\\boxed{\\frac{1}{2}}``).
  Two training solutions write ``\\boxed 2`` without braces; then the answer runs to the
  next ``$`` (as in the MATH repository's ``last_boxed_only_string``).
* GSM8K (Cobbe et al., 2021): the answer follows ``#### `` on the last line.
"""

from __future__ import annotations

import re

__all__ = ["last_boxed", "gsm8k_answer", "strip_calculator_annotations"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _last_command(text: str) -> tuple[int, str] | None:
  best = None
  for cmd in _BOX_COMMANDS:
    start = len(text)
    while True:
      i = text.rfind(cmd, 0, start)
      if i < 0:
        break
      after = text[i + len(cmd) : i + len(cmd) + 1]
      # `\boxed{`, `\boxed 2` — but not `\boxedx` (another macro name).
      if after in ("{", " "):
        if best is None or i > best[0]:
          best = (i, cmd)
        break
      start = i
  return best


def last_boxed(text: str) -> str | None:
  """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in `text`.

  Returns None when there is none, or when its braces are unbalanced. The content is returned
  with surrounding whitespace stripped.

  >>> last_boxed(r"so $x=\\boxed{\\frac{1}{2}}$.")
  '\\\\frac{1}{2}'
  >>> last_boxed(r"our answer is $\\boxed 2$.")
  '2'
  """
  found = _last_command(text)
  if found is None:
    return None
  i, cmd = found
  j = i + len(cmd)
  if text[j] == " ":
    content = text[j + 1 :].split("$", 1)[0]
    content = content.strip()
    return content or None
  depth = 0
  for k in range(j, len(text)):
    c = text[k]
    if c == "\\" and k + 1 < len(text) and text[k + 1] in "{}":
      continue  # `\{` / `\}` are literal braces; the escaped char is skipped below
    if c in "{}" and k > 0 and text[k - 1] == "\\" and not _escaped_backslash(text, k - 1):
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return text[j + 1 : k].strip()
  return None


def _escaped_backslash(text: str, k: int) -> bool:
  """Whether the backslash at `k` is itself escaped (``\\\\``)."""
  n = 0
  while k - 1 - n >= 0 and text[k - 1 - n] == "\\":
    n += 1
  return n % 2 == 1


_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_answer(rationale: str) -> str | None:
  """The number after ``####`` in a GSM8K rationale, with thousands separators removed."""
  m = _GSM8K.search(rationale)
  if m is None:
    return None
  return m.group(1).strip().replace(",", "") or None


_CALC = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
  """Removes GSM8K calculator annotations: ``48+24 = <<48+24=72>>72`` → ``48+24 = 72``."""
  return _CALC.sub("", text)
