"""Checkpoints with orbax: train state (params, optimizer state, step) plus JSON extras
(data-iterator position, stage bookkeeping). Trainers derive every step's RNG key from
(seed, phase, step), so a restored step samples exactly what the lost one would have.

Writes are atomic (orbax finalises a temporary directory by renaming it), so a run killed
at any moment leaves only complete checkpoints; re-running the same command resumes from the
latest one. A non-finite loss never reaches `save`: the trainer stops first and the last good
checkpoint stays as it was.

Sharded state is saved as it is: each process writes the shards of its own devices (orbax; no
array is gathered to one host), and `restore` puts every array back with the sharding of its
template leaf, so a run on a mesh resumes on that mesh (or on another one: pass a template
with the new shardings). Multi-host runs call `save`/`restore` on every process, on storage
all processes see.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np


def abstract_leaf(x) -> jax.ShapeDtypeStruct:
  """What `restore` fills in for a template leaf: a `jax.Array` comes back with the shape,
  dtype and sharding of `x` (a `ShapeDtypeStruct` as it is), anything else as numpy."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with two items: `state` and `extra`."""

  def __init__(self, directory: str, *, every: int = 1, keep: int = 2):
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.every = max(1, int(every))
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy; on use)
    self._ocp = ocp
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "extra"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state: Any, extra: dict | None = None, *, force: bool = False):
    """Saves `state` (a pytree of arrays, `jax.Array`s of any sharding) and `extra` (JSON).

    With several processes, every process calls it with the same step.
    """
    if not force and not self.should_save(step):
      return False
    if self._manager.latest_step() == step:
      return False
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        extra=ocp.args.JsonSave(extra or {})), force=True)
    self._manager.wait_until_finished()
    return True

  def restore(self, template: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """Restores `(step, state, extra)`.

    `template` fixes the tree structure, dtypes and placement: each `jax.Array` leaf (or
    `jax.ShapeDtypeStruct` with a `sharding`) comes back as a `jax.Array` with that leaf's
    sharding, other leaves as numpy arrays.
    """
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    abstract = jax.tree.map(abstract_leaf, template)
    ocp = self._ocp
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    return step, restored["state"], dict(restored["extra"] or {})

  def close(self):
    self._manager.close()
