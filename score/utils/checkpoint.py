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

Checkpoints written before the decoder blocks were stacked (params keyed per layer,
`...['layers'][3]['attn']['q'].value`; issue 21 stacked them) restore into today's layout
(`...['layers']['attn']['q'].value`, a leading layer axis): `restore` reads the per-layer
arrays (params and everything keyed like them, e.g. Adam's `mu`/`nu`) and stacks them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def abstract_leaf(x) -> jax.ShapeDtypeStruct:
  """What `restore` fills in for a template leaf: a `jax.Array` comes back with the shape,
  dtype and sharding of `x` (a `ShapeDtypeStruct` as it is), anything else as numpy."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)


_PER_LAYER = re.compile(r"^(.*\['layers'\])\[(\d+)\](.*)$")  # the layout before stacking
_STACKED = re.compile(r"^(.*\['layers'\])(?!\[\d)(.*)$")


def is_per_layer_key(key) -> bool:
  """Whether a params key is in the per-layer layout of checkpoints written before the
  decoder blocks were stacked (`...['layers'][3]['attn']['q'].value`)."""
  return isinstance(key, str) and _PER_LAYER.match(key) is not None


def per_layer_keys(key: str, num_layers: int) -> list[str]:
  """The per-layer keys (the old layout) of a stacked params key, layer 0 first."""
  head, tail = _STACKED.match(key).groups()
  return [f"{head}[{i}]{tail}" for i in range(num_layers)]


def _is_stacked_leaf(key, value) -> bool:
  return (isinstance(key, str) and _STACKED.match(key) is not None
          and len(getattr(value, "shape", ())) > 0)


def _map_dicts(tree: Any, fn) -> Any:
  """Rebuilds `tree` (dicts, lists, tuples, named tuples) with `fn(dict)` applied to every
  dict, innermost first."""
  if isinstance(tree, dict):
    return fn({k: _map_dicts(v, fn) for k, v in tree.items()})
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_map_dicts(v, fn) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_map_dicts(v, fn) for v in tree)
  return tree


def stack_per_layer(flat: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """Per-layer arrays (the old layout) -> stacked ones for the stacked keys of `shapes`
  (`{key: stacked shape}`); other keys pass through."""
  out = dict(flat)
  for key, shape in shapes.items():
    if _STACKED.match(key) and len(shape) and key not in flat:
      old = per_layer_keys(key, shape[0])
      if all(k in flat for k in old):
        out[key] = np.stack([np.asarray(out.pop(k)) for k in old])
  return out


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
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

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
    per_layer = self._saved_per_layer(step)
    if per_layer:  # written before the blocks were stacked: read per layer, then stack
      abstract = _map_dicts(abstract, _unstack_abstract)
    ocp = self._ocp
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    state = restored["state"]
    if per_layer:
      state = _stack_like(template, state)
    return step, state, dict(restored["extra"] or {})

  def _saved_per_layer(self, step: int) -> bool:
    """Whether the saved state has params keyed per layer (the layout before stacking)."""
    meta = self._manager.item_metadata(step)["state"]
    paths = jax.tree_util.tree_flatten_with_path(meta)[0]
    return any(is_per_layer_key(getattr(k, "key", None)) for path, _ in paths for k in path)

  def close(self):
    self._manager.close()


def _unstack_abstract(flat: dict) -> dict:
  """An abstract dict of stacked leaves -> the per-layer leaves the old layout saved, each
  sharded as the stacked leaf is, less its (unsplit) layer axis."""
  out = {}
  for key, x in flat.items():
    if _is_stacked_leaf(key, x):
      sharding = getattr(x, "sharding", None)
      if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
      per = jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype, sharding=sharding)
      out.update({k: per for k in per_layer_keys(key, x.shape[0])})
    else:
      out[key] = x
  return out


def _stack_like(template: Any, restored: Any) -> Any:
  """`restored` (per-layer leaves where `template` has stacked ones) in the template's
  layout, each stacked leaf placed with its template leaf's sharding."""
  if isinstance(template, dict):
    out = {}
    for key, t in template.items():
      if _is_stacked_leaf(key, t):
        parts = [restored[k] for k in per_layer_keys(key, t.shape[0])]
        sharding = getattr(t, "sharding", None)
        out[key] = np.stack(parts) if sharding is None else jax.jit(
            lambda *a: jnp.stack(a), out_shardings=sharding)(*parts)
      else:
        out[key] = _stack_like(t, restored[key])
    return out
  if isinstance(template, tuple) and hasattr(template, "_fields"):
    return type(template)(*(_stack_like(t, r) for t, r in zip(template, restored)))
  if isinstance(template, (list, tuple)):
    return type(template)(_stack_like(t, r) for t, r in zip(template, restored))
  return restored
