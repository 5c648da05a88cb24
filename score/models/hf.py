"""Hugging Face checkpoints: load a local directory into a `Transformer` and write one back.

    from score.models import hf
    model = hf.from_pretrained("/path/to/Qwen2.5-0.5B-Instruct", dtype=jnp.bfloat16)
    tokenizer = hf.load_tokenizer("/path/to/Qwen2.5-0.5B-Instruct")
    hf.save_pretrained(model, "/tmp/out", tokenizer=tokenizer)

Reads `config.json` and `model.safetensors` (or the shards listed in
`model.safetensors.index.json`) with the `safetensors` numpy API; torch is never imported and
`transformers` only by `load_tokenizer`. Written checkpoints load with
`transformers.AutoModelForCausalLM.from_pretrained` (and so with vLLM).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from score.models import lora
from score.models.config import FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig
from score.models.transformer import Transformer

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "gemma", "gemma2")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}

_ACTIVATIONS = {
    "silu": "silu", "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu": "gelu", "gelu_python": "gelu",
}


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be loaded (or a model that cannot be written)."""


# What a usable local checkpoint directory holds; a tokenizer is any one of these sets.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "*.safetensors")
_TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
CHECKPOINT_PARTS = ("config", "weights", "tokenizer")


def check_checkpoint_dir(path: str, parts=CHECKPOINT_PARTS, *, what: str = "model_dir") -> None:
  """Raises `CheckpointError` naming the directory and everything in `parts` it lacks.

  `parts` ⊆ ("config", "weights", "tokenizer"): `config.json`; safetensors weights (one file,
  an index or shards); a tokenizer (`tokenizer.json`, `tokenizer.model` or `vocab.json` +
  `merges.txt`). Called before any work, so a wrong path fails with this message rather than
  inside `huggingface_hub` (which takes a missing directory for a hub repo id) or
  `transformers` (which asks for sentencepiece when an empty directory has no tokenizer).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    kind = "is not a directory" if os.path.exists(path) else "does not exist"
    raise CheckpointError(
        f"{what} {path!r} {kind}: point it at a local Hugging Face checkpoint directory "
        "(config.json, *.safetensors weights, tokenizer files); nothing is downloaded")
  names = set(os.listdir(path))
  missing = []
  if "config" in parts and "config.json" not in names:
    missing.append("config.json")
  if "weights" in parts and not any(n.endswith(".safetensors") for n in names):
    missing.append("weights (" + " or ".join(_WEIGHTS) + ")")
  if "tokenizer" in parts and not any(set(group) <= names for group in _TOKENIZER_FILES):
    missing.append("tokenizer files (" + " or ".join(" + ".join(g) for g in _TOKENIZER_FILES)
                   + ")")
  if missing:
    raise CheckpointError(f"{what} {path!r} has no " + "; no ".join(missing)
                          + f" (it holds: {', '.join(sorted(names)) or 'nothing'})")


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelConfig


def _rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """RoPE settings from either the transformers>=5 `rope_parameters` or legacy keys."""
  params = hf.get("rope_parameters") or {}
  if params and not isinstance(params.get("rope_theta", 0.0), (int, float)):
    raise CheckpointError("per-layer-type rope_parameters are not supported")
  legacy = hf.get("rope_scaling") or {}
  merged = {**legacy, **params}
  theta = merged.get("rope_theta", hf.get("rope_theta", 10_000.0))
  rope_type = merged.get("rope_type", merged.get("type", "default"))
  fields: dict[str, Any] = dict(rope_theta=float(theta))
  if rope_type in ("default", None):
    return fields
  if rope_type == "linear":
    return dict(fields, rope_type="linear", rope_factor=float(merged["factor"]))
  if rope_type == "llama3":
    return dict(
        fields, rope_type="llama3", rope_factor=float(merged["factor"]),
        rope_low_freq_factor=float(merged["low_freq_factor"]),
        rope_high_freq_factor=float(merged["high_freq_factor"]),
        rope_original_max_position_embeddings=int(merged["original_max_position_embeddings"]))
  raise CheckpointError(f"unsupported rope type {rope_type!r}; supported: default, linear, llama3")


def config_from_hf(hf: dict[str, Any], dtype=jnp.float32) -> ModelConfig:
  """`ModelConfig` from a parsed Hugging Face `config.json`."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(
        f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  if "text_config" in hf:
    raise CheckpointError("multimodal configs (text_config) are not supported")
  hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hidden // heads
  num_layers = hf["num_hidden_layers"]
  gemma = model_type in ("gemma", "gemma2")

  act_name = hf.get("hidden_activation") if model_type == "gemma2" else None
  act_name = act_name or hf.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
  if gemma and act_name == "gelu":  # transformers maps Gemma's legacy "gelu" to the tanh form
    act_name = "gelu_pytorch_tanh"
  if act_name not in _ACTIVATIONS:
    raise CheckpointError(f"unsupported activation {act_name!r}; supported: {sorted(_ACTIVATIONS)}")

  sliding_window = hf.get("sliding_window")
  layer_types = hf.get("layer_types")
  if model_type in ("qwen2", "qwen3"):
    if not hf.get("use_sliding_window", False):
      sliding_window = None
    if layer_types is None:
      start = hf.get("max_window_layers", num_layers)
      layer_types = [SLIDING_ATTENTION if sliding_window and i >= start else FULL_ATTENTION
                     for i in range(num_layers)]
  elif model_type == "gemma2" and layer_types is None:
    layer_types = [SLIDING_ATTENTION if (i + 1) % 2 else FULL_ATTENTION for i in range(num_layers)]
  elif model_type in ("llama", "gemma"):
    layer_types, sliding_window = None, None
  if layer_types is not None and SLIDING_ATTENTION not in layer_types:
    layer_types, sliding_window = None, None

  eos = hf.get("eos_token_id")
  eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
  attention_bias = bool(hf.get("attention_bias", False))

  fields: dict[str, Any] = dict(
      model_type=model_type,
      vocab_size=hf["vocab_size"],
      hidden_size=hidden,
      num_layers=num_layers,
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=head_dim,
      intermediate_size=hf["intermediate_size"],
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
      qkv_bias=model_type == "qwen2" or attention_bias,
      o_bias=model_type != "qwen2" and attention_bias,
      mlp_bias=bool(hf.get("mlp_bias", False)),
      qk_norm=model_type == "qwen3",
      norm_plus_one=gemma,
      embed_scale=gemma,
      activation=_ACTIVATIONS[act_name],
      tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
      post_norms=model_type == "gemma2",
      sliding_window=sliding_window,
      layer_types=None if layer_types is None else tuple(layer_types),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=eos,
      pad_token_id=hf.get("pad_token_id"),
      dtype=dtype,
      **_rope_fields(hf),
  )
  if model_type == "gemma2":
    fields.update(
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", head_dim)),
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"))
  return ModelConfig(**fields)


def _int_if_integral(x):
  return int(x) if float(x).is_integer() else float(x)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A `config.json` dict that transformers (>=4.4x and 5.x) reads back as `config`."""
  c, t = config, config.model_type
  if t not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(
        f"cannot save model_type {t!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  gemma = t in ("gemma", "gemma2")
  expected = dict(
      qkv_bias=(t == "qwen2") or (c.o_bias if t != "qwen2" else True),
      o_bias=c.o_bias if t in ("llama", "qwen3", "gemma", "gemma2") else False,
      qk_norm=t == "qwen3", norm_plus_one=gemma, embed_scale=gemma, post_norms=t == "gemma2")
  for name, want in expected.items():
    if getattr(c, name) != want:
      raise CheckpointError(f"{t} checkpoints need {name}={want}, config has {getattr(c, name)}")
  if t == "qwen2" and c.head_dim * c.num_heads != c.hidden_size:
    raise CheckpointError("qwen2 checkpoints need head_dim * num_heads == hidden_size")

  rope: dict[str, Any] = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
  if c.rope_type == "linear":
    rope["factor"] = c.rope_factor
  elif c.rope_type == "llama3":
    rope.update(factor=c.rope_factor, low_freq_factor=c.rope_low_freq_factor,
                high_freq_factor=c.rope_high_freq_factor,
                original_max_position_embeddings=c.rope_original_max_position_embeddings)
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[c.activation]
  eos = list(c.eos_token_ids)
  hf: dict[str, Any] = dict(
      architectures=[_ARCHITECTURES[t]],
      model_type=t,
      vocab_size=c.vocab_size,
      hidden_size=c.hidden_size,
      intermediate_size=c.intermediate_size,
      num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads,
      num_key_value_heads=c.num_kv_heads,
      head_dim=c.head_dim,
      hidden_act=act,
      max_position_embeddings=c.max_position_embeddings,
      rms_norm_eps=c.rms_norm_eps,
      rope_parameters=rope,
      rope_theta=c.rope_theta,  # legacy keys, for readers older than transformers 5
      rope_scaling=None if c.rope_type == "default" else rope,
      tie_word_embeddings=c.tie_embeddings,
      bos_token_id=c.bos_token_id,
      eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
      pad_token_id=c.pad_token_id,
      torch_dtype="float32",
      use_cache=True,
  )
  if t in ("llama", "qwen3", "gemma", "gemma2"):
    hf["attention_bias"] = c.o_bias
  if t == "llama":
    hf["mlp_bias"] = c.mlp_bias
  elif c.mlp_bias:
    raise CheckpointError(f"{t} checkpoints have no MLP biases")
  if c.layer_types is not None:
    hf["layer_types"] = list(c.layer_types)
    hf["sliding_window"] = c.sliding_window
    if t in ("qwen2", "qwen3"):
      hf["use_sliding_window"] = True
      hf["max_window_layers"] = c.layer_types.index(SLIDING_ATTENTION)
  elif t in ("qwen2", "qwen3"):
    hf.update(use_sliding_window=False, sliding_window=None)
  if t in ("llama", "gemma") and c.layer_types is not None:
    raise CheckpointError(f"{t} checkpoints have no sliding-window layers")
  if t == "gemma2":
    hf.update(
        hidden_activation=act,
        query_pre_attn_scalar=_int_if_integral(c.query_pre_attn_scalar or c.head_dim),
        attn_logit_softcapping=c.attn_logit_softcap,
        final_logit_softcapping=c.final_logit_softcap,
        layer_types=list(c.layer_types or [FULL_ATTENTION] * c.num_layers),
        sliding_window=c.sliding_window or c.max_position_embeddings)
  elif c.attn_logit_softcap or c.final_logit_softcap or c.query_pre_attn_scalar:
    raise CheckpointError(f"{t} checkpoints have no soft-capping / query_pre_attn_scalar")
  return hf


# ---------------------------------------------------------------------------------------------
# Parameter names: score path <-> HF tensor name, with the layout change between them.
#
# kinds: "same"; "T" (2-D transpose); "in_heads" ours D x N x H <-> HF (N*H) x D;
# "out_heads" ours N x H x D <-> HF D x (N*H); "heads" ours N x H <-> HF (N*H).


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "same":
    return tuple(shape)
  if kind == "T":
    return tuple(shape[::-1])
  if kind == "in_heads":
    return (shape[1] * shape[2], shape[0])
  if kind == "out_heads":
    return (shape[2], shape[0] * shape[1])
  if kind == "heads":
    return (shape[0] * shape[1],)
  raise ValueError(kind)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "same":
    return x
  if kind == "T":
    return x.T
  if kind == "in_heads":
    return x.reshape(x.shape[0], -1).T
  if kind == "out_heads":
    return x.reshape(-1, x.shape[2]).T
  if kind == "heads":
    return x.reshape(-1)
  raise ValueError(kind)


def _from_hf(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if kind == "same":
    return x
  if kind == "T":
    return x.T
  if kind == "in_heads":
    return x.T.reshape(shape)
  if kind == "out_heads":
    return x.T.reshape(shape)
  if kind == "heads":
    return x.reshape(shape)
  raise ValueError(kind)


_LAYER_NAMES = {
    ("attn_norm", "weight"): ("input_layernorm.weight", "same"),
    ("mlp_norm", "weight"): ("post_attention_layernorm.weight", "same"),
    ("attn", "q"): ("self_attn.q_proj.weight", "in_heads"),
    ("attn", "k"): ("self_attn.k_proj.weight", "in_heads"),
    ("attn", "v"): ("self_attn.v_proj.weight", "in_heads"),
    ("attn", "o"): ("self_attn.o_proj.weight", "out_heads"),
    ("attn", "q_bias"): ("self_attn.q_proj.bias", "heads"),
    ("attn", "k_bias"): ("self_attn.k_proj.bias", "heads"),
    ("attn", "v_bias"): ("self_attn.v_proj.bias", "heads"),
    ("attn", "o_bias"): ("self_attn.o_proj.bias", "same"),
    ("attn", "q_norm", "weight"): ("self_attn.q_norm.weight", "same"),
    ("attn", "k_norm", "weight"): ("self_attn.k_norm.weight", "same"),
    ("mlp", "gate"): ("mlp.gate_proj.weight", "T"),
    ("mlp", "up"): ("mlp.up_proj.weight", "T"),
    ("mlp", "down"): ("mlp.down_proj.weight", "T"),
    ("mlp", "gate_bias"): ("mlp.gate_proj.bias", "same"),
    ("mlp", "up_bias"): ("mlp.up_proj.bias", "same"),
    ("mlp", "down_bias"): ("mlp.down_proj.bias", "same"),
}
_GEMMA2_LAYER_NAMES = {
    ("attn_post_norm", "weight"): ("post_attention_layernorm.weight", "same"),
    ("mlp_norm", "weight"): ("pre_feedforward_layernorm.weight", "same"),
    ("mlp_post_norm", "weight"): ("post_feedforward_layernorm.weight", "same"),
}


def hf_names(config: ModelConfig, path: tuple) -> tuple[list[str], str]:
  """(HF tensor names, layout kind) of the parameter at `path` in `nnx.state(model)`.

  One name, except for the stacked decoder blocks' parameters (`path[0] == "layers"`, a
  leading layer axis L): one name per layer, `model.layers.{i}....` for i < L.
  """
  path = tuple(p.key if hasattr(p, "key") else p for p in path)
  if path == ("embed",):
    return ["model.embed_tokens.weight"], "same"
  if path == ("lm_head",):
    return ["lm_head.weight"], "T"
  if path == ("final_norm", "weight"):
    return ["model.norm.weight"], "same"
  if path[0] == "layers":
    names = dict(_LAYER_NAMES)
    if config.post_norms:
      names.update(_GEMMA2_LAYER_NAMES)
    if path[1:] in names:
      name, kind = names[path[1:]]
      return [f"model.layers.{i}.{name}" for i in range(config.num_layers)], kind
  raise KeyError(f"no Hugging Face name for parameter {'/'.join(map(str, path))}")


def _param_items(model: Transformer) -> Iterator[tuple[tuple, nnx.Variable]]:
  state = nnx.state(model, nnx.Param)
  for path, var in nnx.to_flat_state(state):
    yield path, var


# ---------------------------------------------------------------------------------------------
# safetensors


def _read_bf16(path: str, name: str) -> np.ndarray:
  """Reads one BF16 tensor (numpy has no bfloat16; ml_dtypes, a jax dependency, does)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
    info = header[name]
    start, stop = info["data_offsets"]
    f.seek(8 + header_len + start)
    raw = f.read(stop - start)
  return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(info["shape"])


class _TensorReader:
  """Lazy access to the tensors of one checkpoint directory (single file or sharded)."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      self.files = {name: os.path.join(directory, fn) for name, fn in weight_map.items()}
    elif os.path.exists(single):
      self.files = {name: single for name in self._keys(single)}
    else:
      found = sorted(fn for fn in os.listdir(directory) if fn.endswith(".safetensors"))
      if not found:
        raise CheckpointError(
            f"no model.safetensors, model.safetensors.index.json or *.safetensors in {directory}")
      self.files = {}
      for fn in found:
        path = os.path.join(directory, fn)
        self.files.update({name: path for name in self._keys(path)})
    self._handles: dict[str, Any] = {}

  @staticmethod
  def _keys(path: str) -> list[str]:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    with safe_open(path, framework="np") as f:
      return list(f.keys())

  def _handle(self, path: str):
    if path not in self._handles:
      from safetensors import safe_open  # pylint: disable=g-import-not-at-top

      self._handles[path] = safe_open(path, framework="np")
    return self._handles[path]

  def __contains__(self, name: str) -> bool:
    return name in self.files

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(self.files[name]).get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    path = self.files[name]
    handle = self._handle(path)
    if handle.get_slice(name).get_dtype() == "BF16":
      return _read_bf16(path, name)
    return handle.get_tensor(name)


# ---------------------------------------------------------------------------------------------
# Public API


def load_config(path: str, dtype=jnp.float32) -> ModelConfig:
  check_checkpoint_dir(path, ("config",), what="checkpoint")
  with open(os.path.join(path, "config.json")) as f:
    return config_from_hf(json.load(f), dtype=dtype)


def from_pretrained(path: str, dtype=jnp.float32, *, param_dtype=jnp.float32,
                    remat: str = "none", sharding=None, seed: int = 0,
                    **config_overrides) -> Transformer:
  """Loads a local Hugging Face checkpoint directory into a `Transformer`.

  `dtype` is the compute dtype; parameters are stored in `param_dtype` (float32, or e.g.
  bfloat16 for a LoRA run's frozen base). Every parameter must be present in the checkpoint
  with the right shape. Tensors are read and converted one at a time and each is put on its
  device(s) at once: `sharding(logical_names, shape)` gives its `jax.sharding.Sharding` (e.g.
  a mesh's `NamedSharding`; None: the default device), so no full copy of the model is ever
  built on one device. `config_overrides` are `ModelConfig` fields (e.g. `lora_rank`); LoRA
  adapters are drawn from `seed` (`score.models.lora`: A random, B zero).
  """
  path = os.fspath(path)
  check_checkpoint_dir(path, ("config", "weights"), what="checkpoint")
  config = load_config(path, dtype).replace(param_dtype=param_dtype, remat=remat,
                                            **config_overrides)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  reader = _TensorReader(path)
  used = set()
  for p, var in _param_items(abstract):
    if lora.is_adapter_name(p[-1]):  # drawn below, not read
      continue
    names, kind = hf_names(config, p)
    shape, dtype = tuple(var.value.shape), jnp.dtype(param_dtype)
    if p[0] == "layers":  # [L, ...] from one tensor per layer
      value = np.empty(shape, dtype)
      for i, name in enumerate(names):
        value[i] = _read_tensor(reader, name, kind, shape[1:], path)
    else:
      value = _read_tensor(reader, names[0], kind, shape, path).astype(dtype)
    used.update(names)
    if sharding is None:
      var.value = jnp.asarray(value)
    else:
      var.value = jax.device_put(value, sharding(_names(var), shape))
  extra = sorted(n for n in reader.files if n not in used and "rotary_emb" not in n)
  if extra:
    log.warning("ignoring %d checkpoint tensors not used by the model, e.g. %s", len(extra),
                extra[:5])
  if config.lora_rank:
    abstract._init_lora(jax.random.key(seed))  # pylint: disable=protected-access
    for p, var in _param_items(abstract):
      if sharding is not None and lora.is_adapter_name(p[-1]):
        var.value = jax.device_put(var.value, sharding(_names(var), var.value.shape))
  return abstract


def _read_tensor(reader, name: str, kind: str, shape: tuple[int, ...], path: str) -> np.ndarray:
  """Tensor `name` of the checkpoint in our layout `shape` (float32), its shape checked."""
  want = _hf_shape(kind, shape)
  if name not in reader:
    raise CheckpointError(
        f"tensor {name!r} (expected shape {want}) is missing from the checkpoint in {path}")
  got = reader.shape(name)
  if got != want:
    raise CheckpointError(f"tensor {name!r} has shape {got} in the checkpoint, expected {want}")
  return _from_hf(kind, np.asarray(reader.get(name), np.float32), shape)


def _names(var) -> tuple:
  """A parameter's logical axis names (None per dimension without any)."""
  return tuple(var.get_metadata().get("out_sharding") or (None,) * len(var.value.shape))


def save_pretrained(model: Transformer, path: str, *, tokenizer=None, dtype: str = "float32",
                    max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes `config.json` and safetensors weights that transformers can load (a LoRA model's
  adapters merged into its weights).

  `dtype`: "float32" or "bfloat16" for the stored tensors. Weights above `max_shard_bytes`
  are split into `model-0000i-of-0000n.safetensors` files with a
  `model.safetensors.index.json`, as transformers does. `tokenizer`, if given, is saved too.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  if dtype == "float32":
    np_dtype, torch_dtype = np.float32, "float32"
  elif dtype == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    np_dtype, torch_dtype = ml_dtypes.bfloat16, "bfloat16"
  else:
    raise ValueError(f"dtype={dtype!r}; expected 'float32' or 'bfloat16'")
  path = os.fspath(path)
  model = lora.merged_model(model)  # LoRA adapters folded into the weights they adapt
  config = model.config
  hf_config = dict(config_to_hf(config), torch_dtype=torch_dtype)
  tensors = {}
  for p, var in _param_items(model):
    names, kind = hf_names(config, p)
    value = np.asarray(jax.device_get(var.value), dtype=np.float32)
    per_tensor = value if p[0] == "layers" else value[None]  # stacked layers: one per layer
    for name, x in zip(names, per_tensor, strict=True):
      tensors[name] = np.ascontiguousarray(_to_hf(kind, x).astype(np_dtype))
  os.makedirs(path, exist_ok=True)
  for stale in os.listdir(path):
    if stale.endswith(".safetensors") or stale == "model.safetensors.index.json":
      os.remove(os.path.join(path, stale))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  if len(shards) == 1:
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(path, filename), metadata={"format": "pt"})
      weight_map.update({name: filename for name in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": weight_map}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  if tokenizer is not None:
    tokenizer.save_pretrained(path)


def save_peft_adapter(model: Transformer, path: str, *, base_model_name_or_path: str) -> None:
  """Writes a LoRA model's adapters in the `peft` library's format: `adapter_config.json`
  (naming `base_model_name_or_path`, the Hugging Face checkpoint the adapters apply to) and
  `adapter_model.safetensors` with PEFT's names and layouts (`base_model.model.<module>.
  lora_A.weight` [r, in_features], `lora_B.weight` [out_features, r]), so that
  `peft.PeftModel.from_pretrained(base, path)` is this model (y = x·W + (alpha/r)·x·Aᵀ·Bᵀ)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  config = model.config
  if not config.lora_rank:
    raise ValueError("the model has no LoRA adapters (lora_rank = 0)")
  r = config.lora_rank
  tensors, modules = {}, set()
  for p, var in _param_items(model):
    name = str(p[-1])
    if not lora.is_adapter_name(name):
      continue
    weights, _ = hf_names(config, tuple(p[:-1]) + (name[:-len("_lora_a")],))
    value = np.asarray(jax.device_get(var.value), np.float32)
    per_tensor = value if p[0] == "layers" else value[None]  # stacked layers: one per layer
    for weight, x in zip(weights, per_tensor, strict=True):
      module = weight[:-len(".weight")]
      modules.add(module.rsplit(".", 1)[1])
      if name.endswith("_lora_a"):  # [in..., r] -> [r, in_features]
        tensors[f"base_model.model.{module}.lora_A.weight"] = x.reshape(-1, r).T
      else:  # [r, out...] -> [out_features, r]
        tensors[f"base_model.model.{module}.lora_B.weight"] = x.reshape(r, -1).T
  os.makedirs(path, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
  adapter_config = dict(
      peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
      r=r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=sorted(modules),
      bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
      init_lora_weights=True, inference_mode=True, modules_to_save=None)
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump(adapter_config, f, indent=2, sort_keys=True)


def load_tokenizer(path: str):
  """The checkpoint's tokenizer (with its chat template) via `transformers.AutoTokenizer`."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  check_checkpoint_dir(path, ("tokenizer",), what="tokenizer directory")
  return AutoTokenizer.from_pretrained(os.fspath(path))
