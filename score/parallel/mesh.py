"""Device meshes and logical-axis rules: which mesh axes each array dimension is split over.

The mesh has three named axes (the order is the device layout: `tensor` varies fastest, so
tensor-parallel groups are neighbouring devices on one host):

  data    pure data parallelism: params replicated, batch split.
  fsdp    ZeRO-3 style: batch split *and* params / optimizer state split (gathered per layer
          by XLA when a matmul needs them).
  tensor  Megatron style: heads, kv heads, MLP width and vocabulary split; activations keep
          the batch split and get their head / MLP dimension split too.

The vocabulary dimension is split over `tensor × fsdp` (then the embedding's D dimension
stays whole), every other D dimension over `fsdp`.

Every parameter of `score.models.Transformer` carries logical axis names in its NNX metadata
(`out_sharding`: 'vocab', 'embed', 'heads', 'kv_heads', 'kv', 'mlp', and 'layers' first on
the stacked decoder blocks' params; 'layers' maps to no mesh axis, as the scan over layers
reads one layer at a time). `RULES` maps each
logical name to mesh axes; `logical_to_spec` turns a tuple of names into a `PartitionSpec`,
dropping a mesh axis (replicating that dimension instead) when the dimension is not divisible
by the axis size or the axis is already used by an earlier dimension, e.g. Qwen2.5's 2 KV
heads on a 4-way tensor axis stay replicated.

Optimizer state follows the params (Adam's `mu`/`nu` are dicts keyed like the params);
batches, activations and the KV cache are split over `data × fsdp` on their batch dimension.
Everything works on one device: a 1×1×1 mesh gives replicated (= unsharded) arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical name, mesh axes) pairs; mesh axes are a name, a tuple of names or None.
RULES: tuple[tuple[str, Any], ...] = (
    # Params (Transformer metadata). The vocabulary also takes `fsdp`, so the (tied)
    # embedding is split along V, not D: with D on `fsdp` (the batch's axis) XLA kept the
    # chunked logits unsplit over the batch (2.2x the temporaries of a compiled step).
    ("vocab", ("tensor", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
    # Activations, batches and the KV cache.
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

# Logical names of the arrays that are not params.
BATCH_NAMES = ("batch",)  # any [B, ...] array: only the first dimension is split
ACTIVATION_NAMES = ("batch", "length", "act_embed")  # x_BxLxD
KV_CACHE_NAMES = ("layers", "batch", "act_kv_heads", "length", "kv")  # k/v [L, B, K, S, H]


# ---------------------------------------------------------------------------------------------
# Meshes.


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """Sizes of the `data`, `fsdp` and `tensor` axes; -1 (at most one) takes what is left."""
  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    """Concrete sizes whose product is `num_devices`."""
    sizes = [self.data, self.fsdp, self.tensor]
    bad = [(n, s) for n, s in zip(AXES, sizes) if s == 0 or s < -1]
    if bad:
      raise ValueError(f"mesh sizes must be positive or -1, got {dict(bad)}")
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
      if num_devices % known:
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not a multiple of "
            f"the fixed axes' product {known}")
      sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(
          f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
          f"but {num_devices} are available")
    return tuple(sizes)


def mesh_config(data: int = 1, fsdp: int = -1, tensor: int = 1, remat: str = "none",
                micro_batches: int = 1):
  """The `mesh` section of an experiment config (an `ml_collections.ConfigDict`).

  Defaults put every device on `fsdp` (ZeRO-3: params, grads and Adam state split over all
  devices, batch too), which is the right start for models up to ~10B on one host or slice.

  Args:
    data, fsdp, tensor: axis sizes; -1 = the remaining devices (at most one axis).
    remat: what the backward pass keeps of each Transformer block (the trainers apply it
      through `score.trainers.common.apply_mesh_options`; the policies are
      `score.models.transformer.REMAT_POLICIES`, applied inside the scan over layers):
      "none": every activation; "block": only the block's input, the block is recomputed
      (least memory: ~L × B×T×D plus one block's activations); "dots": the block's input
      and the outputs of its projections (q, k, v, o, gate, up, down) where the backward
      needs them; norms, RoPE, attention and activations are recomputed.
    micro_batches: micro-batches whose gradients each optimizer step accumulates (the
      trainers' steps: `score.trainers.common.make_step(micro_batches=)`).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, remat=remat,
                                        micro_batches=micro_batches))


def parse_mesh(text: str) -> MeshShape:
  """`"data=1,fsdp=8,tensor=1"` (missing axes keep their defaults) -> `MeshShape`."""
  values = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or key.strip() not in AXES:
      raise ValueError(f"bad mesh item {item!r} in {text!r}; expected e.g. data=1,fsdp=8,tensor=1")
    values[key.strip()] = int(value)
  return MeshShape(**values)


def mesh_shape(cfg: Any = None) -> MeshShape:
  """A `MeshShape` from None (all devices on fsdp), a string, a mapping or a ConfigDict."""
  if cfg is None:
    return MeshShape()
  if isinstance(cfg, MeshShape):
    return cfg
  if isinstance(cfg, str):
    return parse_mesh(cfg)
  get = cfg.get if hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
  return MeshShape(data=int(get("data", 1)), fsdp=int(get("fsdp", -1)),
                   tensor=int(get("tensor", 1)))


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, *,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A `(data, fsdp, tensor)` mesh over `devices` (default: all devices of all processes).

  Axes are `AxisType.Auto`: XLA's sharding propagation (GSPMD) places the collectives, so the
  model code needs no sharding annotations.
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = MeshShape(data, fsdp, tensor).resolve(len(devices))
  return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_from_config(cfg: Any = None, *, devices: Sequence[Any] | None = None) -> Mesh:
  """The mesh a config asks for: `cfg` is a `mesh` section (`data`, `fsdp`, `tensor`), a
  string `"data=2,fsdp=-1"`, or None (every device on `fsdp`)."""
  s = mesh_shape(cfg)
  return make_mesh(s.data, s.fsdp, s.tensor, devices=devices)


# ---------------------------------------------------------------------------------------------
# Logical names -> PartitionSpec / NamedSharding.


def _mesh_sizes(mesh) -> dict[str, int]:
  """Axis sizes of a `Mesh`, an `AbstractMesh` or a plain `{name: size}` mapping."""
  if isinstance(mesh, Mapping):
    return dict(mesh)
  return dict(mesh.shape)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None, mesh,
                    rules: Sequence[tuple[str, Any]] = RULES) -> P:
  """The `PartitionSpec` for an array whose dimensions carry logical `names`.

  A dimension gets the mesh axes its name maps to, minus axes of size 1, axes already used by
  an earlier dimension and, when `shape` is given, axes that do not divide the dimension
  (the dimension is then split over the largest leading part of its axes that does divide it,
  or replicated). Unknown names raise (a typo would otherwise silently replicate).
  """
  table = dict(rules)
  sizes = _mesh_sizes(mesh)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    axes = table[name]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a in sizes and sizes[a] > 1 and a not in used)
    if shape is not None:
      while axes and shape[i] % math.prod(sizes[a] for a in axes):
        axes = axes[:-1]
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int] | None = None,
                   rules: Sequence[tuple[str, Any]] = RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _variables_with_arrays(model_or_state):
  """[(keystr, Variable)] in the order (and with the keys) of `Policy.split`'s flat params."""
  state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  variables = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  if len(variables) != len(leaves):
    raise ValueError(f"{len(variables)} variables for {len(leaves)} array leaves")
  return [(jax.tree_util.keystr(p), v) for (p, _), v in zip(leaves, variables)]


def logical_axes(model_or_state) -> dict[str, tuple[str | None, ...]]:
  """`{key: logical names}` of every parameter, keyed like `Policy.split(model)[1]`.

  Names come from the NNX metadata (`out_sharding`, or `sharding_names`); a parameter without
  metadata gets `None` per dimension (replicated).
  """
  out = {}
  for key, var in _variables_with_arrays(model_or_state):
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    names = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
    out[key] = tuple(names) if names is not None else (None,) * len(var.value.shape)
  return out


def param_shardings(params: Mapping[str, Any], axes: Mapping[str, Sequence[str | None]],
                    mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES
                    ) -> dict[str, NamedSharding]:
  """`{key: NamedSharding}` for flat params (arrays or `ShapeDtypeStruct`s) from their names."""
  missing = sorted(set(params) - set(axes))
  if missing:
    raise KeyError(f"no logical axes for params {missing[:5]}{'...' if len(missing) > 5 else ''}")
  return {k: named_sharding(mesh, axes[k], np.shape(v), rules) for k, v in params.items()}


def state_shardings(state, mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES):
  """Shardings with the tree structure of an `nnx.State` (what `nnx.split` returns)."""
  leaves, treedef = jax.tree_util.tree_flatten(state)
  axes = logical_axes(state)
  shardings = [named_sharding(mesh, names, leaf.shape, rules)
               for names, leaf in zip(axes.values(), leaves)]
  return jax.tree_util.tree_unflatten(treedef, shardings)


def opt_state_shardings(opt_state, param_shardings_: Mapping[str, NamedSharding], mesh: Mesh):
  """Optimizer-state shardings that follow the params.

  Any leaf reached through a dict key that names a param (Adam's `mu`/`nu`, `MultiSteps`'
  accumulated gradients, ...) and whose rank covers that param's spec gets the param's
  sharding; the rest (step counts, scalars) is replicated.
  """
  def pick(path, leaf):
    shape = np.shape(leaf)
    for entry in reversed(path):
      key = getattr(entry, "key", None)
      if isinstance(key, str) and key in param_shardings_:
        sharding = param_shardings_[key]
        if len(shape) >= len(sharding.spec):
          return sharding
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, opt_state)


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES) -> NamedSharding:
  """First (batch) dimension over `data × fsdp`, the rest replicated (any rank)."""
  return named_sharding(mesh, BATCH_NAMES, None, rules)


def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES) -> NamedSharding:
  """For `x_BxLxD`: batch over `data × fsdp` (a `jax.lax.with_sharding_constraint` target)."""
  return named_sharding(mesh, ACTIVATION_NAMES, None, rules)


def kv_cache_shardings(cache, mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES):
  """Shardings for a `Transformer.init_cache` cache ({'k','v'} each [L, B, K, S, H])."""
  return jax.tree.map(lambda x: named_sharding(mesh, KV_CACHE_NAMES, x.shape, rules), cache)


def batch_divisor(mesh) -> int:
  """How many ways the batch dimension is split (`data × fsdp`)."""
  sizes = _mesh_sizes(mesh)
  return sizes.get("data", 1) * sizes.get("fsdp", 1)


# ---------------------------------------------------------------------------------------------
# Putting arrays on the mesh.


class TrainShardings(tuple):
  """`(params, opt_state)` shardings plus the mesh they live on."""

  def __new__(cls, params, opt_state, mesh):
    self = super().__new__(cls, (params, opt_state))
    self.mesh = mesh
    return self

  @property
  def params(self):
    return self[0]

  @property
  def opt_state(self):
    return self[1]


def put(tree, shardings):
  """`jax.device_put(tree, shardings)` that also works with several processes.

  With one process it is `jax.device_put`. With several, a value every process holds in full
  (numpy, or a `jax.Array` on this process's devices; it must be equal on all processes, which
  JAX checks) is sent from host memory to the process's own shards of the global array;
  arrays that already span processes are resharded by `jax.device_put`.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def host(x):
    if isinstance(x, jax.Array) and x.is_fully_addressable:
      return np.asarray(x)
    return x
  return jax.device_put(jax.tree.map(host, tree), shardings)


def shard_params(params: Mapping[str, Any], mesh: Mesh,
                 axes: Mapping[str, Sequence[str | None]],
                 rules: Sequence[tuple[str, Any]] = RULES) -> dict[str, jax.Array]:
  """`jax.device_put` of flat params with their rule-given shardings."""
  shardings = param_shardings(params, axes, mesh, rules)
  return put(dict(params), shardings)


def shard_train_state(params: Mapping[str, Any], opt_state, mesh: Mesh,
                      axes: Mapping[str, Sequence[str | None]],
                      rules: Sequence[tuple[str, Any]] = RULES):
  """Puts params and optimizer state on the mesh.

  Returns `(params, opt_state, shardings)` with `shardings` a `TrainShardings` to pass to
  `score.parallel.shard_step`.
  """
  ps = param_shardings(params, axes, mesh, rules)
  os_ = opt_state_shardings(opt_state, ps, mesh)
  params = put(dict(params), ps)
  opt_state = put(opt_state, os_)
  return params, opt_state, TrainShardings(ps, os_, mesh)


def shard_batch(arrays, mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES):
  """Puts a pytree of `[B, ...]` arrays on the mesh, batch over `data × fsdp` (0-d leaves,
  e.g. a scalar coefficient, replicated).

  Single process: the arrays are the global batch. Several processes: each passes its own
  slice of the global batch (rows `process_batch_slice(B)`), and the global array is
  assembled with `jax.make_array_from_process_local_data`.
  """
  sharding = batch_sharding(mesh, rules)
  div = batch_divisor(mesh)

  def place(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim == 0:
      return put(x, replicated(mesh))
    if jax.process_count() == 1:
      if x.shape[0] % div:
        raise ValueError(
            f"batch of {x.shape[0]} rows does not split over data×fsdp = {div} devices")
      return jax.device_put(x, sharding)
    global_rows = x.shape[0] * jax.process_count()
    if global_rows % div:
      raise ValueError(f"global batch of {global_rows} rows does not split over {div} devices")
    return jax.make_array_from_process_local_data(sharding, np.asarray(x),
                                                  (global_rows,) + tuple(x.shape[1:]))
  return jax.tree.map(place, arrays)
