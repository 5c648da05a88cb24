"""Checkpoints with orbax: train state (params, optimizer state, step) plus JSON extras
(data-iterator position, stage bookkeeping). Trainers derive every step's RNG key from
(seed, phase, step), so a restored step samples exactly what the lost one would have.

Writes are atomic (orbax finalises a temporary directory by renaming it), so a run killed
at any moment leaves only complete checkpoints; re-running the same command resumes from the
latest one. A non-finite loss never reaches `save`: the trainer stops first and the last good
checkpoint stays as it was.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with two items: `state` and `extra`."""

  def __init__(self, directory: str, *, every: int, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.every = max(1, int(every))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "extra"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state: Any, extra: dict | None = None, *, force: bool = False):
    """Saves `state` (a pytree of arrays) and `extra` (JSON) at `step`."""
    if not force and not self.should_save(step):
      return False
    if self._manager.latest_step() == step:
      return False
    state = jax.tree.map(np.asarray, state)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        extra=ocp.args.JsonSave(extra or {})), force=True)
    self._manager.wait_until_finished()
    return True

  def restore(self, template: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """Restores `(step, state, extra)`; `template` fixes the tree structure and dtypes."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), template)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    return step, restored["state"], dict(restored["extra"] or {})

  def close(self):
    self._manager.close()
