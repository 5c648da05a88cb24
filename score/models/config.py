"""`ModelConfig`: one frozen dataclass that describes every supported decoder family.

The families differ only in a handful of switches (see the field comments); `hf.py` maps a
Hugging Face `config.json` onto these fields and back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from score.models import attention as attention_lib

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the projections LoRA can adapt
REMAT_MODES = ("none", "block", "dots")  # `config.remat`; see transformer.REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only Transformer (Llama, Qwen2/2.5, Qwen3, Gemma, Gemma 2)."""

  # Sizes.
  vocab_size: int
  hidden_size: int  # D
  num_layers: int
  num_heads: int  # N query heads
  num_kv_heads: int  # K key/value heads (GQA when K < N)
  head_dim: int  # H
  intermediate_size: int  # F (MLP width)

  model_type: str = "llama"  # the Hugging Face `model_type` this config round-trips to
  rms_norm_eps: float = 1e-6
  max_position_embeddings: int = 4096

  # RoPE. rope_type: "default", "linear" or "llama3" (the llama3 fields are used only then).
  rope_theta: float = 10_000.0
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192

  # Switches that tell the families apart.
  qkv_bias: bool = False  # Qwen2/2.5: biases on q, k, v
  o_bias: bool = False  # Llama `attention_bias=True` also puts one on o_proj
  mlp_bias: bool = False  # Llama `mlp_bias`
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k (before RoPE)
  norm_plus_one: bool = False  # Gemma: RMSNorm scales by (1 + w)
  embed_scale: bool = False  # Gemma: embeddings multiplied by sqrt(D)
  activation: str = "silu"  # "silu" (SwiGLU), "gelu_tanh" (GeGLU), "gelu"
  tie_embeddings: bool = False  # unembedding = embedding matrix transposed
  post_norms: bool = False  # Gemma 2: extra RMSNorm after attention and after the MLP
  query_pre_attn_scalar: float | None = None  # Gemma 2: scores scaled by this**-0.5
  attn_logit_softcap: float | None = None  # Gemma 2: tanh soft-capping of attention scores
  final_logit_softcap: float | None = None  # Gemma 2: tanh soft-capping of the logits
  sliding_window: int | None = None  # window (in slots) of the sliding-attention layers
  # Per-layer "full_attention" / "sliding_attention"; None means all full.
  layer_types: tuple[str, ...] | None = None

  # Special tokens (informational; the sampler reads eos from here when asked).
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None

  # Numerics.
  dtype: Any = jnp.float32  # compute dtype (activations, matmul inputs, KV cache)
  param_dtype: Any = jnp.float32  # stored parameters
  # What the backward pass keeps of each decoder block (`transformer.REMAT_POLICIES`):
  # "none" (everything), "block" (only the block's input; the block is recomputed) or
  # "dots" (also the projections' outputs).
  remat: str = "none"
  scan_layers: bool = True  # apply the stacked blocks with lax.scan (False: a Python loop)
  # Attention kernel by name (`attention.KERNELS`): "dense" (fp32 [B, N, T, S] scores),
  # "blocked" (flash-attention algorithm, memory O(T + S)), "cudnn" (NVIDIA GPUs, untested)
  # or "auto" ("dense" below `attention.AUTO_BLOCKED_MIN_SLOTS` key slots, else "blocked").
  attention: str = "auto"

  # LoRA (`score.models.lora`): rank 0 = off; else adapters (alpha / rank)·(x·A)·B on the
  # `lora_targets` projections (q, k, v, o, gate, up, down), stored in float32.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.activation not in ("silu", "gelu_tanh", "gelu"):
      raise ValueError(f"activation={self.activation!r}; expected silu, gelu_tanh or gelu")
    if self.remat not in REMAT_MODES:
      raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_MODES}")
    attention_choice(self.attention)
    if self.rope_type not in ("default", "linear", "llama3"):
      raise ValueError(f"rope_type={self.rope_type!r}; expected default, linear or llama3")
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
            f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
      bad = set(self.layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION}
      if bad:
        raise ValueError(f"unknown layer types {sorted(bad)}")
      if SLIDING_ATTENTION in self.layer_types and not self.sliding_window:
        raise ValueError("sliding_attention layers need sliding_window")
    if self.lora_rank < 0:
      raise ValueError(f"lora rank={self.lora_rank}; expected 0 (off) or a positive int")
    bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if bad:
      raise ValueError(f"lora targets {bad} are not projections; known: {list(LORA_TARGETS)}")

  def lora_target(self, name: str) -> bool:
    """Whether projection `name` ("q", ..., "down") carries LoRA adapters."""
    return self.lora_rank > 0 and name in self.lora_targets

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank

  def layer_window(self, i: int) -> int | None:
    """Sliding window of layer `i` (None for full attention)."""
    if self.layer_types is not None and self.layer_types[i] == SLIDING_ATTENTION:
      return self.sliding_window
    return None

  @property
  def attn_scale(self) -> float:
    scalar = self.query_pre_attn_scalar or self.head_dim
    return float(scalar) ** -0.5

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def tiny(cls, vocab_size: int = 128, **overrides) -> "ModelConfig":
    """A small Llama-style config for tests: D=64, 2 layers, 4 heads, 2 kv heads."""
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    fields.update(overrides)
    return cls(**fields)

  @classmethod
  def from_section(cls, section, vocab_size: int | None = None) -> "ModelConfig":
    """A fresh model's config from an experiment config's `model` section: `tiny` with every
    key that is a field here (other keys, e.g. `model_dir`, are ignored); `dtype` by name
    ("float32" / "bfloat16"); `base_dtype` (the stored params) by name; the `lora`
    subsection (`lora_fields`); `vocab_size` (when given) wins over the section's."""
    overrides = {k: v for k, v in section.items() if k in _FIELDS}
    if "dtype" in overrides:
      overrides["dtype"] = compute_dtype(overrides["dtype"])
    overrides.update(storage_fields(section))
    if vocab_size is not None:
      overrides["vocab_size"] = vocab_size
    return cls.tiny(**overrides)

  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    """Published architectures by name (no weights), e.g. `ModelConfig.preset("qwen2.5-1.5b")`."""
    if name not in PRESETS:
      raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    fields = dict(PRESETS[name])
    fields.update(overrides)
    return cls(**fields)


_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))

def lora_fields(lora) -> dict[str, Any]:
  """`ModelConfig` fields of a config's `model.lora` section (`rank`, `alpha`, `targets`: a
  comma-separated string or a sequence of projection names); {} without one."""
  if lora is None:
    return {}
  targets = lora.get("targets", LORA_TARGETS)
  if isinstance(targets, str):
    targets = [t.strip() for t in targets.split(",") if t.strip()]
  return dict(lora_rank=int(lora.get("rank", 0)), lora_alpha=float(lora.get("alpha", 16.0)),
              lora_targets=tuple(targets))


def storage_fields(section) -> dict[str, Any]:
  """The fields of a `model` section that say how params are stored and trained: `base_dtype`
  (the stored, for LoRA frozen, params: "float32" or "bfloat16") and the `lora` section."""
  out = lora_fields(section.get("lora"))
  if "base_dtype" in section:
    out["param_dtype"] = compute_dtype(section["base_dtype"])
  return out

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name) -> Any:
  """A compute dtype by name ("float32", "bfloat16"); a jnp dtype passes through."""
  if not isinstance(name, str):
    return name
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"dtype={name!r}; expected one of {sorted(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def attention_choice(name: str) -> str:
  """`name` if it names an attention kernel (`attention.CHOICES`), else a ValueError."""
  if name not in attention_lib.CHOICES:
    raise ValueError(f"attention={name!r}; expected one of {list(attention_lib.CHOICES)}")
  return name


_QWEN25 = dict(
    model_type="qwen2", qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    max_position_embeddings=32768, head_dim=128, eos_token_ids=(151645, 151643),
    bos_token_id=151643)

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        _QWEN25, vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, intermediate_size=4864, tie_embeddings=True),
    "qwen2.5-1.5b": dict(
        _QWEN25, vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
        num_kv_heads=2, intermediate_size=8960, tie_embeddings=True),
    "qwen2.5-7b": dict(
        _QWEN25, vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
        num_kv_heads=4, intermediate_size=18944, tie_embeddings=False),
}
