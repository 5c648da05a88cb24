"""Pieces every trainer shares: the policy as a flat parameter dict, optimisers, the
checkpointed training loop with NaN guard, metrics and a progress bar.

Params travel through `jax.jit` and orbax as a flat `{path: array}` dict; `Policy` turns
them back into an NNX model inside traced functions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from score.models import ModelConfig, Transformer, token_logprobs
from score.models import config as model_config
from score.models import lora
from score.utils import checkpoint as ckpt_lib
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib
from score.utils import progress
from score.utils import run as run_lib

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Policy:
  """The static half of an NNX model (graph + tree layout); params are passed separately."""
  graphdef: Any
  treedef: Any
  keys: tuple[str, ...]

  @classmethod
  def split(cls, model: nnx.Module) -> tuple["Policy", Params]:
    graphdef, state = nnx.split(model)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
    keys = tuple(jax.tree_util.keystr(p) for p, _ in leaves_with_path)
    params = {k: v for k, (_, v) in zip(keys, leaves_with_path)}
    return cls(graphdef, treedef, keys), params

  def model(self, params: Params) -> Transformer:
    state = jax.tree_util.tree_unflatten(self.treedef, [params[k] for k in self.keys])
    return nnx.merge(self.graphdef, state)

  def __hash__(self):
    return hash((self.graphdef, self.treedef, self.keys))


def build_model(cfg, vocab_size: int | None = None, *, seed: int = 0, lora_on: bool = True,
                mesh_cfg=None) -> Transformer:
  """A model from `cfg.model_dir` (a local Hugging Face checkpoint) or a fresh tiny one.

  Args:
    cfg: the `model` section of a config: `model_dir` ("" for a fresh model), optionally
      `dtype` (the compute dtype, "float32" (default) or "bfloat16"), `base_dtype` (the
      stored params: "float32", or "bfloat16" for a LoRA run's frozen base; adapters and
      optimiser state stay float32), `attention` (the kernel, `ModelConfig.attention`: "auto"
      (default), "dense", "blocked", "cudnn"), `lora` (`rank` (0: off), `alpha`, `targets`; see
      `score.models.lora`) and, for a fresh model, `hidden_size`, `num_layers`, `num_heads`,
      `num_kv_heads`, `head_dim`, `intermediate_size`.
    vocab_size: vocabulary of a fresh model.
    seed: init seed of a fresh model and of the LoRA adapters.
    lora_on: False builds the model without adapters (e.g. for an SFT warm-up that makes the
      base; `add_lora` adds them after it).
    mesh_cfg: the config's `mesh` section: a checkpoint is loaded tensor by tensor straight
      into its shardings on that mesh (`hf.from_pretrained`), in the stored dtype, never as a
      whole on one device; None (or a 1×1×1 mesh): on the default device.
  """
  try:
    dtype = model_config.compute_dtype(cfg.get("dtype", "float32"))
    attention = model_config.attention_choice(cfg.get("attention", "auto"))
  except ValueError as e:
    raise config_lib.ConfigError(f"model.{e}") from None
  storage = storage_fields(cfg, lora_on=lora_on)
  if cfg.get("model_dir"):
    from score.models import hf  # pylint: disable=g-import-not-at-top
    hf.check_checkpoint_dir(cfg.model_dir, what="model.model_dir")
    mesh, sharding = mesh_from_config(mesh_cfg), None
    if mesh is not None:
      from score import parallel  # pylint: disable=g-import-not-at-top
      sharding = functools.partial(parallel.named_sharding, mesh)
    return hf.from_pretrained(cfg.model_dir, dtype=dtype, sharding=sharding, seed=seed,
                              attention=attention, **storage)
  config = ModelConfig.from_section(cfg, vocab_size).replace(
      lora_rank=storage.get("lora_rank", 0))
  return Transformer(config, rngs=nnx.Rngs(seed))


def storage_fields(cfg, *, lora_on: bool = True) -> dict:
  """`ModelConfig` fields of a `model` section's `base_dtype` and `lora`, checked.

  Raises:
    config_lib.ConfigError: a bad dtype, rank or target name, or a bfloat16 base without
      LoRA (full fine-tuning keeps float32 params).
  """
  try:
    fields = model_config.storage_fields(cfg)
    ModelConfig.tiny(**fields)
  except ValueError as e:
    raise config_lib.ConfigError(f"model section: {e}") from None
  if fields.get("param_dtype", np.float32) != np.float32 and not fields.get("lora_rank"):
    raise config_lib.ConfigError(
        f"model.base_dtype={cfg.base_dtype!r} stores the frozen base of a LoRA run; set "
        "model.lora.rank > 0 (full fine-tuning trains float32 params)")
  if not lora_on:
    fields["lora_rank"] = 0
  return fields


def add_lora(policy: Policy, params: Params, cfg, *, seed: int = 0) -> tuple[Policy, Params]:
  """`(policy, params)` with the LoRA adapters of the `model` section `cfg` added to a model
  built without them (`build_model(lora_on=False)`, e.g. after the SFT warm-up that makes a
  synthetic task's base), its weights stored in `cfg.base_dtype`; unchanged when the
  section's rank is 0."""
  fields = storage_fields(cfg)
  if not fields.get("lora_rank"):
    return policy, params
  model = policy.model(params)
  config = model.config.replace(**fields)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed)))
  new_policy, shapes = Policy.split(abstract)
  values = lora.init_adapters(shapes, jax.random.key(seed))
  values.update({k: v if v.dtype == config.param_dtype else v.astype(config.param_dtype)
                 for k, v in params.items()})
  return new_policy, {k: values[k] for k in new_policy.keys}


def merge_adapters(policy: Policy, params: Params) -> Params:
  """`params` with their LoRA adapters merged into a new frozen base and B set to zero: the
  same model, now the base of a phase that starts from it and takes it as its reference (a
  Self-Rewarding iteration from M_t). Unchanged without adapters."""
  if not lora.has_adapters(params):
    return params
  return lora.merge(params, policy.model(params).config.lora_scale)


def frozen(cfg, exclude=()) -> tuple:
  """A hashable snapshot of a flat config section (to key caches of compiled steps)."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in cfg.to_dict().items() if k not in exclude))


def unfrozen(items: tuple):
  return ml_collections.ConfigDict(dict(items))


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
              static_argnames: tuple[str, ...] = (), micro_batches: int = 1,
              group_size: int = 1) -> Callable:
  """A jitted `(params, opt_state, *batch, **static) -> (params, opt_state, metrics)` step.

  `loss_fn(params, *batch, **static) -> (loss, metrics)`; the returned metrics also hold
  `loss` and the gradients' global norm `grad_norm`. Only the trainable params are
  differentiated and updated: all of them, or with LoRA the adapters (a
  `score.parallel.TrainStep`; the frozen base comes back as the same arrays).

  With `micro_batches` M > 1 (a config's `mesh.micro_batches`) the loss and its gradient are
  accumulated over M micro-batches of B/M rows (`score.parallel.accumulate_gradients`: a
  `lax.scan`, so activations are those of one micro-batch) before the one optimizer update.
  Every leaf of `batch` must have the batch B as its first dimension. The loss, its gradient
  and the metrics are then *means over the micro-batches*: exactly the full batch's for a
  loss that is a mean over rows of equal weight (a sequence- or constant-normalised loss, a
  batch mean), approximately for a token-level mean (micro-batches with more tokens count
  as much as those with fewer); a metric that is a max over the batch becomes the mean of
  the micro-batches' maxima.

  Args:
    loss_fn: the loss.
    optimizer: the optimizer.
    static_argnames: keyword arguments of the step that are compile-time constants (bound
      before the accumulation).
    micro_batches: M (1: one `value_and_grad` over the whole batch).
    group_size: rows come in groups of this many consecutive rows that the loss treats
      together (e.g. SCoRe's G samples of one prompt, whose baseline it computes); each
      micro-batch then holds whole groups (B must be a multiple of M × group_size).
  """
  from score import parallel  # pylint: disable=g-import-not-at-top

  def step(frozen, params, opt_state, *batch, **static):
    def fn(params, *batch):  # differentiated in the trainable params only (LoRA: adapters)
      return loss_fn(lora.join(frozen[0], params), *batch, **static)

    if micro_batches > 1:
      _check_batch_leaves(batch)
    grad_fn = parallel.accumulate_gradients(fn, micro_batches, has_aux=True,
                                            group_size=group_size)
    (loss, metrics), grads = grad_fn(params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))

  return parallel.TrainStep(step, static_argnames=static_argnames)


def _check_batch_leaves(batch):
  """Every leaf of a micro-batched step's batch has the same first (batch) dimension."""
  shapes = [np.shape(x) for x in jax.tree.leaves(batch)]
  if any(not s for s in shapes) or len({s[0] for s in shapes}) > 1:
    raise ValueError(f"micro_batches > 1 splits every batch array on its first dimension, "
                     f"which must be the batch; got shapes {shapes}")


def check_names(cfg, **known):
  """Raises a ValueError naming the field if `cfg.<field>` is not a key of `known[field]`.

  `check_names(rl, advantage=pg.ADVANTAGES, reduction=reduce.MODES)`.
  """
  for field, names in known.items():
    if cfg[field] not in names:
      raise ValueError(f"{field}={cfg[field]!r}; known: {sorted(names)}")


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
  """Adam(W) with an optional linear warm-up, a schedule and global-norm clipping.

  `cfg`: `lr`, `weight_decay`, `b1`, `b2`, `grad_clip` (0 = off), `warmup_steps`,
  `schedule` ("constant" | "cosine" | "linear": decays to `lr · end_lr_factor` over the steps
  after the warm-up; the first step already uses `lr` when there is no warm-up),
  `end_lr_factor`.
  """
  warmup = int(cfg.get("warmup_steps", 0))
  schedule = cfg.get("schedule", "constant")
  end = cfg.lr * cfg.get("end_lr_factor", 0.0)
  decay_steps = max(num_steps - warmup, 1)
  if schedule == "constant":
    lr = optax.constant_schedule(cfg.lr)
  elif schedule == "cosine":
    lr = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=end / cfg.lr if cfg.lr else 0.0)
  elif schedule == "linear":
    lr = optax.linear_schedule(cfg.lr, end, decay_steps)
  else:
    raise ValueError(f"Unknown schedule {schedule!r}; expected 'constant', 'cosine' or 'linear'")
  if warmup:
    lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), lr], [warmup])
  parts = []
  if cfg.get("grad_clip", 0.0):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                           weight_decay=cfg.get("weight_decay", 0.0)))
  return trainable_only(optax.chain(*parts))


def trainable_only(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` over the trainable params only: `init(params)` of a LoRA model's params holds
  state for its adapters alone (`score.models.lora.split`); `update` takes the trainable
  gradients and params (what a `make_step` step passes). Without adapters, the optimizer."""
  def init(params):
    return optimizer.init(lora.trainable(params))

  def update(updates, state, params=None):
    return optimizer.update(updates, state, None if params is None else lora.trainable(params))

  return optax.GradientTransformation(init, update)


KILL_AFTER_ENV = "SCORE_KILL_AFTER"


def after_checkpoint(name: str, step: int) -> None:
  """Called right after `train_loop` saves phase `name` at `step`. A test hook: with
  `SCORE_KILL_AFTER=<name>:<step>` in the environment the process SIGKILLs itself there, so
  tests crash a run at a known point (tests/test_resume.py); in-process tests replace it."""
  if os.environ.get(KILL_AFTER_ENV) == f"{name}:{step}":
    os.kill(os.getpid(), signal.SIGKILL)


def train_loop(*, workdir: str, name: str, state: dict, update: Callable, num_steps: int,
               checkpoint_every: int, keep: int = 2, log_every: int = 10,
               writer: metrics_lib.MetricWriter | None = None,
               extra_state: Callable[[], dict] | None = None,
               restore_extra: Callable[[dict], None] | None = None,
               loss_key: str = "loss") -> dict:
  """Runs `state, metrics = update(step, state)` for `num_steps`, checkpointed and resumable.

  Args:
    workdir: the run's workdir; checkpoints go to `<workdir>/checkpoints/<name>`.
    name: the phase name (also the metric prefix).
    state: a pytree of arrays (params, optimizer state, RNG key data, ...). On resume, it is
      only the template for the restored one.
    update: `(step, state) -> (state, metrics)`; must be a pure function of them (and of the
      data position restored through `restore_extra`) for resumes to be exact.
    num_steps: total steps of this phase.
    checkpoint_every: save every N steps (and at the end).
    keep: checkpoints kept.
    log_every: metrics written every N steps.
    writer: where metrics go.
    extra_state / restore_extra: JSON-able state saved beside the arrays (e.g. a data
      iterator's position) and how to put it back.
    loss_key: the metric checked for NaN/Inf every step; a non-finite value stops the run
      with `NonFiniteLossError` and leaves the last good checkpoint untouched.

  Returns:
    The final state.
  """
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", name),
                               every=checkpoint_every, keep=keep)
  step = 0
  if ckpt.latest_step() is not None:
    saved, frozen = _without_frozen(state)
    step, saved, extra = ckpt.restore(saved)
    state = _with_frozen(saved, frozen)
    if restore_extra is not None:
      restore_extra(extra)
  bar = progress.bar(total=num_steps, initial=step, desc=name)
  try:
    while step < num_steps:
      state, metrics = update(step, state)
      loss = float(metrics[loss_key])
      if not math.isfinite(loss):
        raise run_lib.NonFiniteLossError(step + 1, ckpt.latest_step(), f"{name} {loss_key}")
      step += 1
      bar.update(1)
      if writer is not None and (step % log_every == 0 or step == num_steps):
        writer.write_scalars(step, {f"{name}/{k}": v for k, v in metrics.items()})
        bar.set_postfix({loss_key: f"{loss:.4f}"})
      if step % checkpoint_every == 0 or step == num_steps:
        ckpt.save(step, _without_frozen(state)[0], extra_state() if extra_state else None,
                  force=True)
        after_checkpoint(name, step)
  finally:
    bar.close()
    ckpt.close()
  return state


def _without_frozen(state):
  """`(state with each params dict's frozen arrays left out, {entry: frozen dict})`: a LoRA
  model's checkpoint holds its adapters (and optimiser state), not its frozen base, which the
  run rebuilds from `model.model_dir` or the seed (and the earlier phases' checkpoints)."""
  if not isinstance(state, dict):
    return state, {}
  saved, frozen = dict(state), {}
  for name, value in state.items():
    if isinstance(value, dict) and lora.has_adapters(value):
      saved[name], frozen[name] = lora.split(value)
  return saved, frozen


def _with_frozen(saved, frozen):
  return {**saved, **{name: lora.join(f, saved[name]) for name, f in frozen.items()}}


def mesh_options(mesh_cfg) -> tuple[str, int]:
  """`(remat, micro_batches)` of a config's `mesh` section, checked.

  No section (None) or a missing field gives the defaults `("none", 1)`.

  Raises:
    config_lib.ConfigError: `remat` is not in `score.parallel.REMAT_MODES` or
      `micro_batches` is not a positive int.
  """
  if mesh_cfg is None:
    return "none", 1
  from score.parallel import train as parallel_train  # pylint: disable=g-import-not-at-top
  remat = mesh_cfg.get("remat", "none")
  micro = mesh_cfg.get("micro_batches", 1)
  if remat not in parallel_train.REMAT_MODES:
    raise config_lib.ConfigError(
        f"mesh.remat={remat!r}; expected one of {parallel_train.REMAT_MODES}")
  if isinstance(micro, bool) or not isinstance(micro, (int, np.integer)) or micro < 1:
    raise config_lib.ConfigError(f"mesh.micro_batches={micro!r}; expected a positive int "
                                 "(1: no gradient accumulation)")
  return remat, int(micro)


def micro_batches(mesh_cfg) -> int:
  """`mesh.micro_batches` of a config's `mesh` section (1 without one), checked."""
  return mesh_options(mesh_cfg)[1]


def apply_mesh_options(model: nnx.Module, mesh_cfg) -> nnx.Module:
  """`model` with the config's `mesh.remat` applied; call it before `Policy.split`.

  `"block"` switches rematerialisation on (`score.parallel.set_remat`: each Transformer
  block is recomputed in the backward pass); `"none"` leaves the model as it was built. A
  model that wraps a Transformer as `backbone` (the reward / value `ScalarModel`) gets it on
  its backbone.
  """
  remat, _ = mesh_options(mesh_cfg)
  if remat != "none":
    from score import parallel  # pylint: disable=g-import-not-at-top
    parallel.set_remat(getattr(model, "backbone", model), remat)
  return model


def check_batch(mesh_cfg, batch_size: int, what: str, *, group_size: int = 1) -> None:
  """Raises a `ConfigError` unless a step's batch of `batch_size` rows splits into
  `mesh.micro_batches` micro-batches (of whole groups of `group_size` rows) that each split
  over the mesh's `data × fsdp` devices.

  Args:
    mesh_cfg: the config's `mesh` section (None: one device, no accumulation).
    batch_size: rows of one step's batch.
    what: how the config sets it, for the message (e.g. "rl.batch_size").
    group_size: rows that must stay in one micro-batch.
  """
  micro = micro_batches(mesh_cfg)
  mesh = mesh_from_config(mesh_cfg)
  devices = 1
  if mesh is not None:
    from score import parallel  # pylint: disable=g-import-not-at-top
    devices = parallel.batch_divisor(mesh)
  rows = batch_size // micro
  if batch_size % micro or rows % group_size or rows % devices:
    groups = f" of whole groups of {group_size} rows" if group_size > 1 else ""
    raise config_lib.ConfigError(
        f"{what} = {batch_size} rows does not split into mesh.micro_batches = {micro} "
        f"micro-batches{groups} that each split over data×fsdp = {devices} devices; make it "
        f"a multiple of {micro * math.lcm(group_size, devices)}")


def mesh_from_config(mesh_cfg):
  """The `jax.sharding.Mesh` of a config's `mesh` section, or None to run unsharded.

  None (no section) and a 1×1×1 mesh give None: the trainers then run their plain jitted code
  on the default device. Fixed sizes use the first devices; a -1 axis fills all of them.
  The section's `remat` and `micro_batches` are checked here (`mesh_options`) and applied by
  the trainers (`apply_mesh_options` on the model, `micro_batches=` of their steps).
  """
  if mesh_cfg is None:
    return None
  mesh_options(mesh_cfg)
  sizes = (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
  if sizes == (1, 1, 1):
    return None
  from score import parallel  # pylint: disable=g-import-not-at-top
  devices = None if -1 in sizes else jax.devices()[:math.prod(sizes)]
  return parallel.mesh_from_config(mesh_cfg, devices=devices)


def shard_models(step_fn, mesh_cfg, *models, static_argnames=()):
  """Puts the train state of one or more models and `step_fn` on the mesh of `mesh_cfg`.

  Args:
    step_fn: `(params_1, opt_state_1, ..., params_n, opt_state_n, *batch, **static) ->
      (params_1, opt_state_1, ..., metrics)`, jitted or not.
    mesh_cfg: a config's `mesh` section (see `mesh_from_config`; None: unsharded).
    *models: `(policy, params, opt_state)` per model, in the order of `step_fn`'s state
      arguments (PPO: the policy, then the value model).
    static_argnames: keyword arguments of `step_fn` that are compile-time constants.

  Returns:
    `([(params, opt_state), ...], step_fn)`: params and optimizer state laid out by
    `score.parallel.RULES`, and the step compiled with those shardings (batch arrays split over
    `data × fsdp`). Unsharded, everything comes back as it was.
  """
  mesh = mesh_from_config(mesh_cfg)
  if mesh is None:
    return [(params, opt_state) for _, params, opt_state in models], step_fn
  from score import parallel  # pylint: disable=g-import-not-at-top
  states, shardings, placed = [], (), {}
  for policy, params, opt_state in models:
    axes = parallel.logical_axes(policy.model(params))
    frozen = {k: params[k] for k in lora.frozen_keys(params)}
    params, opt_state, s = parallel.shard_train_state(params, opt_state, mesh, axes)
    for k, original in frozen.items():  # a LoRA base two models share (PPO's value model
      same = placed.get(id(original))   # from the policy) stays one array on the mesh too
      if same is not None and same.sharding == params[k].sharding:
        params[k] = same
      else:
        placed[id(original)] = params[k]
    states.append((params, opt_state))
    shardings += tuple(s)
  return states, parallel.shard_step(step_fn, shardings, mesh=mesh,
                                     static_argnames=static_argnames)


def shard(policy: Policy, params: Params, opt_state, step_fn, mesh_cfg, *,
          static_argnames=()):
  """`shard_models` for one model: returns `(params, opt_state, step_fn)`."""
  [(params, opt_state)], step_fn = shard_models(step_fn, mesh_cfg, (policy, params, opt_state),
                                                static_argnames=static_argnames)
  return params, opt_state, step_fn


def shard_like(params: Params, like: Params) -> Params:
  """`params` (e.g. a frozen reference model's) on the shardings of `like` (the policy's
  params as `shard` returned them); unchanged when `like` is not on a mesh.

  With LoRA the reference shares the policy's frozen base: its frozen keys are `like`'s
  arrays themselves (no second copy); only its adapters are placed."""
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  shardings = {k: v.sharding for k, v in like.items()
               if isinstance(getattr(v, "sharding", None), NamedSharding)}
  if not shardings:
    return params
  from score import parallel  # pylint: disable=g-import-not-at-top
  shared = lora.frozen_keys(params) & lora.frozen_keys(like)
  rest = {k: v for k, v in params.items() if k not in shared}
  return {**{k: like[k] for k in shared},
          **parallel.put(rest, {k: shardings[k] for k in rest})}


def mesh_of(params):
  """The `jax.sharding.Mesh` that `params` (a pytree of arrays, e.g. `shard`'s output) live
  on, or None when they are not on a mesh (the rollouts then sample on one device)."""
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  sharding = getattr(next(iter(jax.tree.leaves(params)), None), "sharding", None)
  return sharding.mesh if isinstance(sharding, NamedSharding) else None


def model_mesh(model: nnx.Module):
  """`mesh_of` for a model object (e.g. `policy.model(params)`)."""
  return mesh_of(nnx.state(model))


@functools.lru_cache(maxsize=None)
def logprobs_fn(policy: Policy) -> Callable:
  """Jitted `(params, tokens_BxL, mask_BxL) -> logp_BxL` of a `Policy`'s model (the frozen
  reference's log-probs in RL; sharded params give a sharded computation)."""

  @jax.jit
  def fn(params, tokens_BxL, mask_BxL):
    return token_logprobs(policy.model(params), tokens_BxL, mask_BxL)

  return fn


def to_host(tree):
  """Arrays as numpy on this process, gathering those other processes hold a part of (e.g.
  log-probs computed on a multi-host mesh, brought back to build the next batch)."""
  from score import parallel  # pylint: disable=g-import-not-at-top
  return parallel.gather(tree)  # jax.device_get on one process


def pad_batch(rows: list[list[int]], *, pad_id: int = 0, length: int | None = None,
              left: bool = False) -> np.ndarray:
  """Pads int rows to one length (right-padding by default)."""
  length = max(map(len, rows)) if length is None else length
  out = np.full((len(rows), length), pad_id, dtype=np.int32)
  for i, r in enumerate(rows):
    r = r[:length]
    if left:
      out[i, length - len(r):] = r
    else:
      out[i, :len(r)] = r
  return out
