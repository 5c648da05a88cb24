"""Sharded checkpoints: every process writes its own shards, and restores straight into the
shardings of the (possibly different) mesh it runs on.

There is one checkpointer for sharded and unsharded state, `score.utils.checkpoint.Checkpointer`
(what `score.trainers.common.train_loop` uses); `ShardedCheckpointer` is that class under the
name this package exports. It hands `jax.Array`s to orbax as they are. Rules for multi-host
runs:

* every process calls `save` and `restore` with the same step (orbax synchronises them; the
  primary process writes the metadata and finalises the step directory atomically);
* `directory` must be storage all processes see (GCS `gs://...` on TPU VMs, a shared
  filesystem on GPU clusters);
* restore takes a template whose leaves carry the target shardings (arrays, or
  `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`), so a run can resume on another mesh.
"""

from __future__ import annotations

import jax

from score.utils.checkpoint import Checkpointer

ShardedCheckpointer = Checkpointer


def abstract_like(tree, shardings=None):
  """`ShapeDtypeStruct`s of `tree` carrying `shardings` (or the arrays' own shardings)."""
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
