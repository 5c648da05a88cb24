"""Scalars to `metrics.jsonl` and TensorBoard event files (tensorboardX) in the workdir."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import numpy as np


def _scalar(value) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """Writes `{step, name: value}` lines to `<workdir>/metrics.jsonl` and TensorBoard.

  Lines are flushed as they are written, so nothing logged is lost if the run crashes.
  A resumed run appends; `read_metrics` keeps the last value written for each step.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    row = {"step": int(step), "time": time.time()}
    for name, value in scalars.items():
      v = _scalar(value)
      row[name] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add_scalar(name, v, int(step))
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def write_texts(self, step: int, texts: Mapping[str, str]):
    if self._tb is not None:
      for name, text in texts.items():
        self._tb.add_text(name, text, int(step))

  def flush(self):
    self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    self.flush()
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """Rows of `metrics.jsonl`, in file order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
