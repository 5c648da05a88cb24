"""The one writer of a run's results: `results.json`, `results.md` and the table printed.

Every trainer builds its own JSON layout and Markdown (its tables differ), then hands both
here, so the files are written the same way everywhere: atomically (a temporary file renamed
when complete, so a killed run never leaves half a table), UTF-8, JSON indented.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

__all__ = ["markdown_table", "fmt", "interval", "info_lines", "write", "write_json", "read_json"]


def fmt(x, spec: str = "{:.1f}") -> str:
  """`spec.format(x)`, or "—" for a missing value (None or NaN)."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "—"
  return spec.format(x)


def interval(m: dict, spec: str = "{:.1f}") -> str:
  """``value [low, high]`` of a `{"value", "low", "high"}` metric."""
  return f"{spec.format(m['value'])} [{spec.format(m['low'])}, {spec.format(m['high'])}]"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   title: str | None = None) -> str:
  """A Markdown table (cells as given, `str` applied), optionally under a bold title."""
  lines = [f"**{title}**", ""] if title else []
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def info_lines(info: dict) -> str:
  """``- key: value`` lines (commit, machine, seed, …) for the end of results.md."""
  return "\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n"


def _write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(f"{path}.tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(f"{path}.tmp", path)


def write_json(path: str, obj) -> None:
  """`obj` as indented JSON at `path`, atomically (parent folders created)."""
  _write_atomic(path, json.dumps(obj, indent=2))


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write(workdir: str, data: dict, markdown: str, *, echo: bool = True) -> str:
  """Writes `data` to `<workdir>/results.json` and `markdown` to `<workdir>/results.md`,
  prints the Markdown when `echo`; returns it."""
  write_json(os.path.join(workdir, "results.json"), data)
  _write_atomic(os.path.join(workdir, "results.md"), markdown)
  if echo:
    print(markdown)
  return markdown
