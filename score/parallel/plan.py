r"""Memory planning: per-device bytes of a training step and of sampling on a given mesh.

  python -m score.parallel.plan --preset qwen2.5-0.5b --mesh data=1,fsdp=8,tensor=1 \
      --batch 64 --seq 2048
  python -m score.parallel.plan --preset qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-7b \
      --mesh fsdp=1 --mesh fsdp=8 --mesh fsdp=64 --no-compile
  python -m score.parallel.plan --model-dir /ckpt/Qwen2.5-1.5B-Instruct --mesh fsdp=-1
  python -m score.parallel.plan --config configs/score_math.py --mesh fsdp=8
  python -m score.parallel.plan --preset qwen2.5-7b --mesh data=1,fsdp=1,tensor=1 \
      --trainer score --batch 16 --seq 2048 --dtype bfloat16 --remat block \
      --lora_rank 16 --base_dtype bfloat16 --json

Rows (per device, bytes of the shards the logical-axis rules give that device):
  params       parameter shards (`param_dtype`; `--base_dtype`), from `nnx.eval_shape`;
  grads        gradient shards of what is trained (all params; with `--lora_rank` the
               adapters only);
  optimizer    Adam's `mu` and `nu` in fp32: 2 × trained elements × 4 bytes;
  reference    `--trainer score`: SCoRe's frozen reference policy, a second copy of the
               params (none with LoRA: the reference is the shared base, adapters off);
  activations  an *estimate* of what the backward pass keeps: per layer and token
               (compute dtype `a` bytes) a·(4D + 3NH + 4KH + 4F) for the projections plus
               (4 + a)·N·T for dense attention's scores (fp32) and probabilities, or 4·N
               for the blocked kernel's logsumexp (`model.attention`; 'auto' is blocked
               from 256 keys), with N, K, F divided by `tensor` when it divides them; with
               `--remat block` only each block's input a·D is kept per layer, with `dots`
               also the projections' outputs, plus one layer's full set; plus the
               chunked log-softmax (B × 128 × V fp32, three copies). Batch rows per device
               = ceil(B / (data × fsdp)).
  kv cache     sampling cache for the same B × T: 2 · layers · B · T · K · H · a;
  compiled     `memory_analysis()` of the compiled update (arguments, outputs, temporaries,
               per device) and its compile seconds, when the mesh fits the local devices and
               `--no-compile` is not given: `--trainer sft` a next-token step, `--trainer
               score` SCoRe's Stage II update fed by precomputed reference log-probs, plus
               the reference forward and one decode step (`reference`, `decode` in `--json`).
  peak         params + Adam + reference all the time, plus the larger of (grads +
               activations) and the KV cache.

XLA:CPU computes bf16 dots in fp32 (converting the operands, and hoisting the converts of every
layer's weights out of the layer loop), so compiled bytes of a bf16 step are upper bounds for
accelerators; `--dots accelerator` compiles the accelerators' mixed-precision dots without
that hoisting: a lower bound (see `compiled_memory`). `--num_layers N` overrides the depth;
`--json` prints one line per plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from score.losses import score as score_losses
from score.models import ModelConfig, Transformer, lora, token_logprobs
from score.models import attention as attention_lib
from score.parallel import mesh as mesh_lib
from score.parallel import train as parallel_train

_LOGP_CHUNK = 128  # token_logprobs' default chunk


@dataclasses.dataclass
class MemoryPlan:
  """Per-device bytes; `compiled` holds `memory_analysis()` fields when a compile ran."""
  model: str
  mesh: dict[str, int]
  batch: int
  seq: int
  num_params: int
  params: int
  grads: int
  optimizer: int
  activations: int
  kv_cache: int
  reference: int = 0
  trainer: str = "sft"
  remat: str = "none"
  dtype: str = "float32"
  lora_rank: int = 0
  param_dtype: str = "float32"
  dots: str = "cpu"
  compiled: dict[str, Any] | None = None

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def train_total(self) -> int:
    """What the update holds: params, gradients, Adam, activations and the reference."""
    return self.params + self.grads + self.optimizer + self.activations + self.reference

  @property
  def peak(self) -> int:
    """A run's peak: params, Adam and the reference all the time, plus the larger of the
    update's gradients + activations and the rollout's KV cache (they are not alive together)."""
    return (self.params + self.optimizer + self.reference
            + max(self.grads + self.activations, self.kv_cache))

  def to_json(self) -> dict[str, Any]:
    """One JSON line: the compiled update's `compile_s` and bytes at the top level, the
    estimates under "estimate", the reference forward and decode step under their keys."""
    out: dict[str, Any] = dict(
        model=self.model, trainer=self.trainer, mesh=self.mesh, batch=self.batch, seq=self.seq,
        remat=self.remat, dtype=self.dtype, lora_rank=self.lora_rank,
        param_dtype=self.param_dtype, num_params=self.num_params, dots=self.dots)
    compiled = dict(self.compiled or {})
    for key in ("reference", "decode"):
      if key in compiled:
        out[key] = compiled.pop(key)
    out.update(compiled)
    out["estimate"] = dict(
        params=self.params, grads=self.grads, optimizer=self.optimizer,
        activations=self.activations, reference=self.reference, kv_cache=self.kv_cache,
        train_total=self.train_total, peak=self.peak)
    return out


def abstract_params(config: ModelConfig):
  """`(flat {key: ShapeDtypeStruct}, {key: logical names})` without allocating anything."""
  state = nnx.state(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  axes = mesh_lib.logical_axes(state)
  leaves = jax.tree_util.tree_leaves(state)
  return dict(zip(axes, leaves)), axes


def shard_shape(shape: Sequence[int], spec, sizes: dict[str, int]) -> tuple[int, ...]:
  """The per-device block of an array of `shape` split by `spec` (ceil for uneven splits)."""
  out = []
  for i, dim in enumerate(shape):
    entry = spec[i] if i < len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    out.append(-(-dim // math.prod(sizes[a] for a in axes)))
  return tuple(out)


def _split(n: int, ways: int) -> float:
  return n / ways if ways > 1 and n % ways == 0 else n


def activation_bytes(c: ModelConfig, sizes: dict[str, int], batch: int, seq: int,
                     remat: str) -> int:
  """Estimate of the activations a train step keeps for its backward pass (see module doc)."""
  a = jnp.dtype(c.dtype).itemsize
  t = sizes.get("tensor", 1)
  b = -(-batch // mesh_lib.batch_divisor(sizes))
  d, h, f = c.hidden_size, c.head_dim, c.intermediate_size
  n, k = _split(c.num_heads, t), _split(c.num_kv_heads, t)
  ff = _split(f, t)
  # Dense attention keeps fp32 scores and the probabilities (T² per head); the blocked
  # kernel keeps one fp32 logsumexp per query row and head.
  dense = attention_lib.kernel(c.attention, seq) is attention_lib.dense_attend
  scores = (4 + a) * n * seq if dense else 4 * n
  per_token_layer = a * (4 * d + 3 * n * h + 4 * k * h + 4 * ff) + scores
  full_layer = b * seq * per_token_layer
  if remat == "block":
    layers = c.num_layers * b * seq * d * a + full_layer
  elif remat == "dots":  # the projections' outputs (q, k, v, o, gate, up, down) per layer
    saved = a * (n * h + 2 * k * h + 2 * d + 2 * ff)
    layers = c.num_layers * b * seq * (saved + d * a) + full_layer
  else:
    layers = c.num_layers * full_layer
  logits = 3 * b * min(_LOGP_CHUNK, seq) * _split(c.vocab_size, t) * 4
  hidden = 2 * b * seq * d * a  # embeddings and final hidden states
  return int(layers + logits + hidden)


def kv_cache_bytes(c: ModelConfig, sizes: dict[str, int], batch: int, seq: int) -> int:
  b = -(-batch // mesh_lib.batch_divisor(sizes))
  k = _split(c.num_kv_heads, sizes.get("tensor", 1))
  return int(2 * c.num_layers * b * seq * k * c.head_dim * jnp.dtype(c.dtype).itemsize)


_MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def _compile_stats(fn, *args, compiler_options=None, **jit_kwargs) -> dict[str, float]:
  """Lowers and compiles `jax.jit(fn)` on abstract `args`: `compile_s` (lower + compile
  seconds) and the per-device bytes of `memory_analysis()` (argument, output, alias, temp,
  generated_code)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options)
  out: dict[str, float] = {"compile_s": round(time.perf_counter() - t0, 2)}
  stats = compiled.memory_analysis()
  for f in _MEMORY_FIELDS:
    out[f] = int(getattr(stats, f"{f}_size_in_bytes", 0) or 0) if stats is not None else 0
  return out


def _abstract_model(config: ModelConfig, mesh):
  """(rebuild(params) -> model, params {key: ShapeDtypeStruct}, {key: sharding})."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  leaves, treedef = jax.tree_util.tree_flatten(state)
  axes = mesh_lib.logical_axes(state)
  keys = list(axes)
  shardings = {k: mesh_lib.named_sharding(mesh, axes[k], x.shape) for k, x in zip(keys, leaves)}
  params = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings[k])
            for k, x in zip(keys, leaves)}

  def rebuild(p):
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, [p[k] for k in keys]))

  return rebuild, params, shardings


def _sft_loss(model, batch):
  return -jnp.mean(token_logprobs(model, batch["tokens"]))


def samples_per_prompt(batch: int) -> int:
  """G of the planned SCoRe batch: 4 samples per prompt when the batch allows it."""
  return next(g for g in (4, 2, 1) if batch % g == 0)


def _score_loss(model, batch):
  """SCoRe's Stage II objective (the paper's defaults: RLOO over G samples, α = 10,
  β1 = 0.01, k2 KL in the loss) on precomputed reference log-probs, as the trainer's update
  (`score.trainers.score.make_rl_step`) computes it."""
  logp = token_logprobs(model, batch["tokens"], batch["mask"])
  loss, _ = score_losses.stage2_objective(
      logp, batch["ref_logp"], batch["turn_mask"], batch["r1"], batch["r2"],
      group_size=samples_per_prompt(batch["r1"].shape[0]))
  return loss


TRAINERS = {"sft": _sft_loss, "score": _score_loss}


def _abstract_batch(trainer: str, batch: int, seq: int, sharding) -> dict:
  def arr(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  out = {"tokens": arr((batch, seq), jnp.int32)}
  if trainer == "score":
    out.update(mask=arr((batch, seq), jnp.int32), turn_mask=arr((batch, seq), jnp.int32),
               ref_logp=arr((batch, seq), jnp.float32), r1=arr((batch,), jnp.float32),
               r2=arr((batch,), jnp.float32))
  return out


DOTS = ("cpu", "accelerator")
# XLA:CPU computes bf16 dots in fp32 whatever the program says: it converts their bf16 operands,
# and loop-invariant code motion then hoists the converts of every layer's weights out of the
# scan over layers (an fp32 copy of all weights; measured: the 7B decode step's temp grows
# 0.93 GB per layer with it, none without). Accelerators have native bf16 dots: nothing to hoist.
_ACCELERATOR_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def compiled_memory(config: ModelConfig, mesh, batch: int, seq: int, *,
                    trainer: str = "sft", dots: str = "cpu") -> dict[str, Any]:
  """Compile seconds and `memory_analysis()` bytes of the compiled update on `mesh`, from
  abstract inputs only (nothing is allocated).

  `trainer`: "sft" (next-token loss) or "score" (SCoRe's Stage II update, fed by
  precomputed reference log-probs). For "score" the reference forward (`token_logprobs`
  without gradients) and one sampling decode step (batch × 1 token against a `seq`-slot KV
  cache) are compiled too, under the keys "reference" and "decode".

  `dots`: "cpu" compiles the bf16 dots as this library runs them on CPU (operands upcast to
  fp32 first): an upper bound for accelerators. "accelerator" lowers them as GPUs/TPUs run them
  (bf16 operands, fp32 accumulation; `attention.accelerator_dots`) and compiles without
  XLA:CPU's while-loop invariant code motion, which would hoist XLA:CPU's own fp32 converts of
  the bf16 weights out of the layer loop: closer to an accelerator, but a lower bound where an
  accelerator's compiler would hoist loop-invariant work of the program's own (e.g. casting
  fp32 weights to a bf16 compute dtype in full fine-tuning). Compile only.
  """
  if trainer not in TRAINERS:
    raise ValueError(f"trainer={trainer!r}; expected one of {sorted(TRAINERS)}")
  if dots not in DOTS:
    raise ValueError(f"dots={dots!r}; expected one of {DOTS}")
  if dots == "cpu":
    return _compiled_memory(config, mesh, batch, seq, trainer, None)
  with attention_lib.accelerator_dots():
    return _compiled_memory(config, mesh, batch, seq, trainer, _ACCELERATOR_OPTIONS)


def _compiled_memory(config: ModelConfig, mesh, batch: int, seq: int, trainer: str,
                     options: dict[str, str] | None):
  import optax  # pylint: disable=g-import-not-at-top
  rebuild, params, param_shardings = _abstract_model(config, mesh)
  optimizer = optax.adam(1e-5)
  loss_fn = TRAINERS[trainer]
  # With LoRA only the adapters are differentiated and optimised; the frozen base is read.
  trainable, frozen = lora.split(params)
  train_shardings = {k: param_shardings[k] for k in trainable}

  def step(trainable, opt_state, frozen, batch):
    loss, grads = jax.value_and_grad(
        lambda t: loss_fn(rebuild({**frozen, **t}), batch))(trainable)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss

  opt_shape = jax.eval_shape(optimizer.init, trainable)
  opt_shardings = mesh_lib.opt_state_shardings(opt_shape, train_shardings, mesh)
  opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           opt_shape, opt_shardings)
  batch_in = _abstract_batch(trainer, batch, seq, mesh_lib.batch_sharding(mesh))
  out = _compile_stats(step, trainable, opt_state, frozen, batch_in,
                       out_shardings=(train_shardings, opt_shardings, mesh_lib.replicated(mesh)),
                       donate_argnums=(0, 1), compiler_options=options)
  if trainer == "score":
    out["reference"] = _compile_stats(
        lambda p, t, m: token_logprobs(rebuild(p), t, m), params, batch_in["tokens"],
        batch_in["mask"], compiler_options=options)
    out["decode"] = _compiled_decode(rebuild, params, config, mesh, batch, seq, options)
  return out


def _compiled_decode(rebuild, params, config: ModelConfig, mesh, batch: int, seq: int,
                     options: dict[str, str] | None):
  """One sampling step: `batch` new tokens against a `seq`-slot KV cache (donated)."""
  cache = jax.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)).init_cache(batch, seq))
  rows = mesh_lib.batch_sharding(mesh)

  def decode(p, cache, tokens_Bx1, positions_Bx1, index, kv_mask_BxS):
    logits, cache = rebuild(p).decode(tokens_Bx1, positions_Bx1, cache, index, kv_mask_BxS)
    return logits, cache

  ints = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows)
  return _compile_stats(decode, params, cache, ints((batch, 1)), ints((batch, 1)),
                        jax.ShapeDtypeStruct((), jnp.int32), ints((batch, seq)),
                        donate_argnums=(1,), compiler_options=options)


def plan(config: ModelConfig, mesh_shape: mesh_lib.MeshShape | str, *, batch: int, seq: int,
         name: str = "", num_devices: int | None = None, remat: str | None = None,
         compile: bool = False, trainer: str = "sft",  # pylint: disable=redefined-builtin
         dots: str = "cpu") -> MemoryPlan:
  """The `MemoryPlan` of `config` on a mesh; `num_devices` (default: all devices) only
  resolves a -1 axis. `remat` is a `score.parallel.REMAT_MODES` name (default: the config's).
  `trainer="score"` adds the frozen reference policy (a full copy of the params; none with
  LoRA, whose reference is the shared base with the adapters off) and compiles SCoRe's Stage
  II update, the reference forward and a decode step. With `config.lora_rank` > 0 gradients
  and Adam's state cover only the adapters. `dots`: see `compiled_memory`."""
  shape = mesh_lib.mesh_shape(mesh_shape)
  fixed = [s for s in (shape.data, shape.fsdp, shape.tensor) if s != -1]
  if len(fixed) == 3:
    num_devices = math.prod(fixed)
  elif num_devices is None:
    num_devices = jax.device_count()
  sizes = dict(zip(mesh_lib.AXES, shape.resolve(num_devices)))
  remat = remat or config.remat
  config = parallel_train.apply_remat(config, remat)
  params, axes = abstract_params(config)
  frozen = lora.frozen_keys(params)
  n_params = param_bytes = train_bytes = train_elems = 0
  for key, x in params.items():
    spec = mesh_lib.logical_to_spec(axes[key], x.shape, sizes)
    elems = math.prod(shard_shape(x.shape, spec, sizes))
    n_params += math.prod(x.shape)
    param_bytes += elems * jnp.dtype(x.dtype).itemsize
    if key not in frozen:
      train_elems += elems
      train_bytes += elems * jnp.dtype(x.dtype).itemsize
  compiled = None
  if compile:
    if math.prod(sizes.values()) <= jax.device_count():
      devices = jax.devices()[:math.prod(sizes.values())]
      mesh = mesh_lib.make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"], devices=devices)
      compiled = compiled_memory(config, mesh, batch, seq, trainer=trainer, dots=dots)
  return MemoryPlan(
      model=name or f"D={config.hidden_size},L={config.num_layers}", mesh=sizes, batch=batch,
      seq=seq, num_params=n_params, params=param_bytes, grads=train_bytes,
      optimizer=2 * train_elems * 4,
      activations=activation_bytes(config, sizes, batch, seq, remat),
      kv_cache=kv_cache_bytes(config, sizes, batch, seq),
      # With LoRA the reference is the same base arrays with the adapters off: no copy.
      reference=param_bytes if trainer == "score" and not frozen else 0, trainer=trainer,
      remat=remat, lora_rank=config.lora_rank, param_dtype=jnp.dtype(config.param_dtype).name,
      dtype=jnp.dtype(config.dtype).name, dots=dots, compiled=compiled)


def format_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1024
  return str(n)


def format_table(plans: Sequence[MemoryPlan]) -> str:
  """A Markdown table, one row per plan."""
  head = ("| model | params | mesh (data,fsdp,tensor) | B×T | params/dev | grads/dev | "
          "Adam/dev | activations/dev (est.) | train total/dev | KV cache/dev | "
          "compiled args+temp/dev |")
  rows = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
  for p in plans:
    comp = "—"
    if p.compiled:
      comp = format_bytes(p.compiled.get("argument", 0) + p.compiled.get("temp", 0))
    rows.append(
        f"| {p.model} | {p.num_params / 1e9:.2f}B | {p.mesh['data']},{p.mesh['fsdp']},"
        f"{p.mesh['tensor']} ({p.devices}) | {p.batch}×{p.seq} | {format_bytes(p.params)} | "
        f"{format_bytes(p.grads)} | {format_bytes(p.optimizer)} | "
        f"{format_bytes(p.activations)} | {format_bytes(p.train_total)} | "
        f"{format_bytes(p.kv_cache)} | {comp} |")
  return "\n".join(rows)


def _config_from_file(spec: str) -> tuple[str, ModelConfig, Any]:
  """(name, ModelConfig, mesh section or None) from `configs/x.py[:arg]`."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_plan_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  cfg = module.get_config(arg or None)
  model = cfg.model
  if model.get("model_dir"):
    from score.models import hf  # pylint: disable=g-import-not-at-top
    config = hf.load_config(model.model_dir)
  elif model.get("preset"):
    config = ModelConfig.preset(model.preset)
  else:
    config = ModelConfig.from_section(model, model.get("vocab_size", 128))
  return path, config, cfg.get("mesh")


def _with_depth(config: ModelConfig, num_layers: int) -> ModelConfig:
  """`config` with `num_layers` layers (per-layer types cycled from the model's own)."""
  if num_layers < 1:
    raise ValueError(f"--num_layers={num_layers}; expected at least 1")
  types = config.layer_types
  if types is not None:
    types = tuple(types[i % len(types)] for i in range(num_layers))
  return config.replace(num_layers=num_layers, layer_types=types)


def main(argv: Sequence[str] | None = None) -> list[MemoryPlan]:
  parser = argparse.ArgumentParser(
      prog="python -m score.parallel.plan", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--preset", help="comma-separated ModelConfig presets, e.g. qwen2.5-1.5b")
  source.add_argument("--model-dir", help="a Hugging Face checkpoint directory (config.json)")
  source.add_argument("--config", help="an experiment config, path.py[:arg]")
  parser.add_argument("--mesh", action="append",
                      help="data=..,fsdp=..,tensor=.. (repeatable; default: the config's or "
                           "fsdp over all local devices)")
  parser.add_argument("--devices", type=int, default=None,
                      help="device count for a mesh with a -1 axis (default: local devices)")
  parser.add_argument("--batch", type=int, default=64, help="global batch (rows)")
  parser.add_argument("--seq", type=int, default=2048, help="sequence length (tokens)")
  parser.add_argument("--remat", choices=parallel_train.REMAT_MODES, default="none")
  parser.add_argument("--trainer", choices=sorted(TRAINERS), default="sft",
                      help="the update to compile: sft (next-token loss) or score (SCoRe's "
                           "Stage II update; also compiles the reference forward and a decode "
                           "step, and counts the reference copy)")
  parser.add_argument("--num_layers", type=int, default=None,
                      help="override the model's depth (e.g. to compare compile times)")
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="LoRA rank on every projection (0: full fine-tuning)")
  parser.add_argument("--lora_alpha", type=float, default=16.0)
  parser.add_argument("--base_dtype", default=None,
                      help="stored (with LoRA: frozen) params' dtype, e.g. bfloat16")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON line per plan instead of the table")
  parser.add_argument("--dtype", default=None,
                      help="compute dtype (activations, KV cache), e.g. bfloat16")
  parser.add_argument("--dots", choices=DOTS, default="cpu",
                      help="compile bf16 dots as CPU runs them here (fp32 copies of bf16 "
                           "weights: an upper bound) or as accelerators do (bf16 operands, "
                           "fp32 accumulation, no XLA:CPU converts hoisted: a lower bound)")
  parser.add_argument("--no-compile", action="store_true",
                      help="skip the compiled step's memory_analysis()")
  args = parser.parse_args(argv)

  models: list[tuple[str, ModelConfig]] = []
  meshes = args.mesh
  if args.preset:
    models = [(n, ModelConfig.preset(n)) for n in args.preset.split(",")]
  elif args.model_dir:
    from score.models import hf  # pylint: disable=g-import-not-at-top
    models = [(args.model_dir, hf.load_config(args.model_dir))]
  else:
    name, config, mesh_cfg = _config_from_file(args.config)
    models = [(name, config)]
    if not meshes and mesh_cfg is not None:
      s = mesh_lib.mesh_shape(mesh_cfg)
      meshes = [f"data={s.data},fsdp={s.fsdp},tensor={s.tensor}"]
      if args.remat == "none" and mesh_cfg.get("remat"):
        args.remat = mesh_cfg.remat
  meshes = meshes or ["data=1,fsdp=-1,tensor=1"]
  plans = []
  for name, config in models:
    if args.dtype:
      config = config.replace(dtype=jnp.dtype(args.dtype))
    if args.base_dtype:
      config = config.replace(param_dtype=jnp.dtype(args.base_dtype))
    if args.lora_rank:
      config = config.replace(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
    if args.num_layers:
      config = _with_depth(config, args.num_layers)
      name = f"{name} ({args.num_layers} layers)"
    for m in meshes:
      plans.append(plan(config, m, batch=args.batch, seq=args.seq, name=name,
                        num_devices=args.devices, remat=args.remat, trainer=args.trainer,
                        compile=not args.no_compile, dots=args.dots))
      if args.json:
        print(json.dumps(plans[-1].to_json()), flush=True)
  if args.json:
    return plans
  print(format_table(plans))
  if not args.no_compile and any(p.compiled is None for p in plans):
    print(f"(compiled column only for meshes of ≤ {jax.device_count()} devices here)")
  return plans


if __name__ == "__main__":
  main(sys.argv[1:])
