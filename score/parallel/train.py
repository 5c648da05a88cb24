"""Sharded train steps, gradient accumulation over micro-batches, and remat from config.

A trainer's step is a pure function `step(params, opt_state, *batch) -> (params, opt_state,
metrics)` (e.g. `score.trainers.sft.make_sft_step`). `shard_step` compiles it with
`jax.jit(in_shardings=..., out_shardings=...)`: params and optimizer state stay where the
rules put them, batch arrays arrive split over `data × fsdp`, and XLA's partitioner inserts
the collectives (all-gathers of fsdp-split weights, reduce-scatters of their gradients,
all-reduces over `data`). The same code runs on one device with a 1×1×1 mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from score.models import lora
from score.models.config import REMAT_MODES
from score.parallel import mesh as mesh_lib


class TrainStep:
  """A jitted train step over models whose params may hold frozen arrays (a LoRA base).

  Called like any step, `step(params_1, opt_state_1, ..., params_n, opt_state_n, *batch,
  **static) -> (params_1, opt_state_1, ..., metrics)` with whole params dicts. It splits each
  params dict into its trainable and frozen parts (`score.models.lora.split`) and runs

    `body(frozen, trainable_1, opt_state_1, ..., *batch, **static) -> (trainable_1,
    opt_state_1, ..., metrics)`

  jitted, with `frozen` the tuple of the models' frozen dicts (read, never returned), then
  puts the frozen arrays back beside the new trainable ones: the same array objects, neither
  copied nor differentiated (a jitted function's outputs are always new buffers). Without
  adapters the frozen dicts are empty and the body sees whole params. The body builds a model
  from `{**frozen[i], **params_i}` and differentiates only `params_i`.
  """

  def __init__(self, body: Callable, *, num_models: int = 1,
               static_argnames: Sequence[str] = ()):
    self.body = body
    self.num_models = num_models
    self.static_argnames = tuple(static_argnames)
    self._jitted = jax.jit(body, static_argnames=self.static_argnames)

  def split(self, args):
    """`(frozen, args with each params dict replaced by its trainable part)`."""
    args, frozen = list(args), []
    for i in range(0, 2 * self.num_models, 2):
      args[i], f = lora.split(args[i])
      frozen.append(f)
    return tuple(frozen), args

  def join(self, frozen, out):
    out = list(out)
    for i, f in zip(range(0, 2 * self.num_models, 2), frozen):
      out[i] = lora.join(f, out[i])
    return tuple(out)

  def __call__(self, *args, **static):
    return self.run(self._jitted, args, static)

  def run(self, jitted, args, static):
    frozen, args = self.split(args)
    return self.join(frozen, jitted(frozen, *args, **static))


def shard_step(step_fn: Callable, state_shardings, *, mesh: Mesh | None = None,
               static_argnames: Sequence[str] = (), donate: bool = False,
               rules=mesh_lib.RULES) -> Callable:
  """`jax.jit(step_fn)` with the train state per `state_shardings`, batches over data×fsdp.

  `step_fn(*state, *batch, **static) -> (*state, metrics)`: the leading `len(state_shardings)`
  positional arguments are train state (params, optimizer state, maybe a value model's params
  and optimizer state) and come back updated with the same shardings; every later positional
  argument is batch data (arrays or pytrees of arrays, e.g. a dict of `[B, ...]` arrays) split
  over `data × fsdp` on its first dimension (0-d leaves replicated); metrics come back
  replicated. This covers `sft.make_sft_step` (`state = params, opt_state`; three batch
  arrays), GRPO's `update(params, opt_state, batch)`, SCoRe's `step(params, opt_state, batch,
  stage=...)` (`static_argnames=("stage",)`) and PPO's `update(params, opt_state,
  value_params, value_opt_state, batch)` (four state shardings).

  A `TrainStep` is compiled the same way, its frozen arrays (a LoRA base) laid out like the
  params they belong to and never returned.

  Args:
    step_fn: the step; may already be jitted (its `__wrapped__` function is used, so pass its
      static argument names again as `static_argnames`), or a `TrainStep`.
    state_shardings: a `TrainShardings` from `shard_train_state`, or a tuple of sharding
      trees (one per state argument; concatenate `TrainShardings` for two models).
    mesh: the mesh (default: `state_shardings.mesh`).
    static_argnames: keyword arguments that are compile-time constants.
    donate: donate the state buffers (lower peak memory; the caller must not reuse them).
    rules: logical-axis rules (for the batch sharding).

  Returns:
    `step(*state, *batch, **static)`; one compilation per batch structure and static values.
  """
  mesh = getattr(state_shardings, "mesh", None) if mesh is None else mesh
  if mesh is None:
    raise ValueError("shard_step: pass mesh= when state_shardings is not a TrainShardings")
  state = tuple(state_shardings)
  n = len(state)
  train_step = step_fn if isinstance(step_fn, TrainStep) else None
  fn = train_step.body if train_step else getattr(step_fn, "__wrapped__", step_fn)
  batch = mesh_lib.batch_sharding(mesh, rules)
  div = mesh_lib.batch_divisor(mesh)
  rep = mesh_lib.replicated(mesh)
  static_names = frozenset(static_argnames)
  compiled: dict[Any, Callable] = {}

  def call(*args, **kwargs):
    if len(args) < n:
      raise TypeError(f"shard_step: expected {n} state arguments, got {len(args)}")
    unknown = set(kwargs) - static_names
    if unknown:
      raise TypeError(f"shard_step: keyword arguments {sorted(unknown)} are not static_argnames")
    leaves, treedef = jax.tree.flatten(args[n:])
    for x in leaves:
      if np.ndim(x) and np.shape(x)[0] % div:
        raise ValueError(
            f"shard_step: a batch array of shape {np.shape(x)} does not split over data×fsdp "
            f"= {div} devices; make the batch (e.g. prompts_per_step × samples_per_prompt, "
            "batch_size, or a minibatch) a multiple of it")
    key = (treedef, tuple(np.ndim(x) for x in leaves), tuple(sorted(kwargs.items())))
    batch_shardings = jax.tree.unflatten(treedef, [batch if np.ndim(x) else rep for x in leaves])
    # Batch arrays already on the mesh (e.g. log-probs a jitted function just computed from
    # the sharded params) move to the batch layout device to device, never through the host.
    batch_args = jax.tree.map(
        lambda x, s: jax.device_put(x, s) if isinstance(
            getattr(x, "sharding", None), NamedSharding) else x, args[n:], batch_shardings)
    if train_step is None:
      jitted = compiled.get(key)
      if jitted is None:
        jitted = compiled[key] = jax.jit(
            functools.partial(fn, **kwargs) if kwargs else fn,
            in_shardings=state + tuple(batch_shardings), out_shardings=state + (rep,),
            donate_argnums=tuple(range(n)) if donate else ())
      return jitted(*args[:n], *batch_args)
    frozen, _ = train_step.split(args[:n])
    key += (tuple(tuple(sorted(f)) for f in frozen),)
    jitted = compiled.get(key)
    if jitted is None:
      # Trainable params and frozen arrays keep the shardings of the params they come from.
      subset = lambda tree, keys: {k: tree[k] for k in keys}  # noqa: E731
      train_state = list(state)
      for i, f in zip(range(0, n, 2), frozen):
        train_state[i] = subset(state[i], [k for k in state[i] if k not in f])
      frozen_shardings = tuple(subset(state[i], f) for i, f in zip(range(0, n, 2), frozen))
      train_state = tuple(train_state)
      jitted = compiled[key] = jax.jit(
          functools.partial(fn, **kwargs) if kwargs else fn,
          in_shardings=(frozen_shardings,) + train_state + tuple(batch_shardings),
          out_shardings=train_state + (rep,),
          donate_argnums=tuple(range(1, n + 1)) if donate else ())
    return train_step.run(jitted, (*args[:n], *batch_args), {})

  return call


def split_micro_batches(x_BxR: jax.Array, num_micro_batches: int, *,
                        group_size: int = 1) -> jax.Array:
  """`[B, ...] -> [M, B/M, ...]`, micro-batch m = rows m, m+M, m+2M, ...

  Strided (not contiguous) rows, so with the batch split over devices in contiguous blocks
  every micro-batch stays spread over all devices: no data moves.

  With `group_size` G > 1 the batch is read as B/G groups of G consecutive rows (e.g. the G
  samples of one prompt, whose group baseline the loss computes) and the stride is over
  groups: micro-batch m = groups m, m+M, m+2M, ..., each whole and in order.
  """
  b = x_BxR.shape[0]
  if b % (num_micro_batches * group_size):
    whole = f" of whole groups of {group_size} rows" if group_size > 1 else ""
    raise ValueError(f"batch of {b} rows does not split into {num_micro_batches} "
                     f"micro-batches{whole}")
  rest = x_BxR.shape[1:]
  x = x_BxR.reshape((b // (num_micro_batches * group_size), num_micro_batches, group_size)
                    + rest)
  return jnp.swapaxes(x, 0, 1).reshape((num_micro_batches, b // num_micro_batches) + rest)


def accumulate_gradients(loss_fn: Callable, num_micro_batches: int, *, has_aux: bool = False,
                         mesh: Mesh | None = None, rules=mesh_lib.RULES,
                         group_size: int = 1) -> Callable:
  """`jax.value_and_grad(loss_fn)` over micro-batches, accumulated with `lax.scan`.

  `loss_fn(params, *batch)` with `[B, ...]` batch arrays (every leaf of `batch`: its first
  dimension is the batch). Returns a function with the same arguments giving
  `(loss, grads)` (or `((loss, aux), grads)`), where loss, grads and aux are the *means* over
  the M micro-batches. That equals the full-batch value when the loss is a mean over rows of
  equal weight (sequence- or constant-normalised losses); a token-level mean over
  micro-batches of unequal token counts weights tokens slightly differently, and an aux
  value that is not a mean (a max, a count) becomes the mean of the micro-batches' values.
  Peak activation memory is that of one micro-batch of B/M rows.

  Args:
    loss_fn: the per-batch loss (differentiated in its first argument, which may be a tuple
      of parameter trees).
    num_micro_batches: M; 1 is plain `value_and_grad`.
    has_aux: `loss_fn` returns `(loss, aux)`.
    mesh: if given, each micro-batch is constrained to the batch sharding.
    rules: logical-axis rules (with `mesh`).
    group_size: keep groups of this many consecutive rows in one micro-batch (see
      `split_micro_batches`): for losses with a per-group statistic such as a group
      baseline; B must then be a multiple of M × group_size.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)
  if num_micro_batches == 1:
    return grad_fn

  def accumulated(params, *batch):
    micro = jax.tree.map(
        lambda x: split_micro_batches(x, num_micro_batches, group_size=group_size), batch)

    def body(carry, mb):
      if mesh is not None:
        mb = jax.lax.with_sharding_constraint(mb, mesh_lib.batch_sharding(mesh, rules))
      out, grads = grad_fn(params, *mb)
      carry = jax.tree.map(jnp.add, carry, (out, grads))
      return carry, None

    zeros = jax.tree.map(jnp.zeros_like,
                         jax.eval_shape(grad_fn, params, *jax.tree.map(lambda x: x[0], micro)))
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda t: t / num_micro_batches, total)

  return accumulated


def with_accumulation(optimizer: optax.GradientTransformation,
                      num_micro_batches: int) -> optax.GradientTransformation:
  """`optax.MultiSteps`: the alternative to `accumulate_gradients` when each micro-batch is
  its own call of the step (params change only every M calls). Identity for M = 1."""
  if num_micro_batches == 1:
    return optimizer
  return optax.MultiSteps(optimizer, every_k_schedule=num_micro_batches)


def apply_remat(model_config, remat: str):
  """`ModelConfig` with rematerialisation set from the config's `mesh.remat` (one of
  `REMAT_MODES`; see `score.parallel.mesh.mesh_config`)."""
  if remat not in REMAT_MODES:
    raise ValueError(f"remat={remat!r}; expected one of {REMAT_MODES}")
  return model_config.replace(remat=remat)


def set_remat(model: nnx.Module, remat: str) -> nnx.Module:
  """Switches remat on an existing `Transformer` (before `Policy.split`, which freezes it)."""
  model.config = apply_remat(model.config, remat)
  return model
