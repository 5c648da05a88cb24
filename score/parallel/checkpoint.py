"""Sharded checkpoints: every process writes its own shards, and restores straight into the
shardings of the (possibly different) mesh it runs on.

`score.utils.checkpoint.Checkpointer` gathers arrays to the host with `np.asarray`, which
is right for one process but impossible when an array spans several hosts. This one hands
`jax.Array`s to orbax as they are. Rules for multi-host runs:

* every process calls `save` and `restore` with the same step (orbax synchronises them; the
  primary process writes the metadata and finalises the step directory atomically);
* `directory` must be storage all processes see (GCS `gs://...` on TPU VMs, a shared
  filesystem on GPU clusters);
* restore takes a template whose leaves carry the target shardings (arrays, or
  `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`), so a run can resume on another mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax


def abstract_like(tree, shardings=None):
  """`ShapeDtypeStruct`s of `tree` carrying `shardings` (or the arrays' own shardings)."""
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class ShardedCheckpointer:
  """`ocp.CheckpointManager` with items `state` (sharded arrays) and `extra` (JSON)."""

  def __init__(self, directory: str, *, every: int = 1, keep: int = 2):
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.every = max(1, int(every))
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "extra"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, extra: dict | None = None, *, force: bool = False
           ) -> bool:
    """Writes `state` (a pytree of `jax.Array`s, any sharding). Call on every process."""
    if not force and step % self.every:
      return False
    if self._manager.latest_step() == step:
      return False
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})), force=True)
    self._manager.wait_until_finished()
    return True

  def restore(self, template: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """`(step, state, extra)`; each leaf of `state` has the sharding its template leaf has."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None)), template)
    ocp = self._ocp
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    return step, restored["state"], dict(restored["extra"] or {})

  def close(self):
    self._manager.close()
