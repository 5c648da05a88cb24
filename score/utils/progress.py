"""Progress bars with rate and ETA that stay quiet in CI and when output is not a terminal."""

from __future__ import annotations

import os
import sys

import tqdm


def enabled() -> bool:
  if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    return False
  return sys.stderr.isatty()


def bar(iterable=None, *, total=None, desc=None, initial=0, **kwargs):
  """A `tqdm` bar (rate + ETA), disabled under `CI=true` or without a TTY."""
  return tqdm.tqdm(iterable, total=total, desc=desc, initial=initial,
                   disable=not enabled(), dynamic_ncols=True, **kwargs)
