"""A tiny random Hugging Face checkpoint with an offline-trained tokenizer, for `runlocal`
configs and tests: no hub, no torch. Real runs point `model_dir` at a real checkpoint.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int,
                    specials: Sequence[str] = tuple(SPECIALS),
                    bos_token: str = "<|endoftext|>", eos_token: str = "<|im_end|>",
                    pad_token: str = "<|endoftext|>", chat_template: str = CHAT_TEMPLATE,
                    split_words: bool = True, show_progress: bool = True):
  """A byte-level BPE `transformers.PreTrainedTokenizerFast` of `vocab_size` trained on `texts`.

  `specials` come first in the vocabulary (ids 0, 1, …); `bos_token`, `eos_token` and
  `pad_token` name three of them. `split_words=False` lets merges span spaces (no regex
  pre-split), so fixed prompt texts become a few long tokens.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                          use_regex=split_words)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(specials), show_progress=show_progress,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(texts), trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token)
  fast.chat_template = chat_template
  return fast


def make_tiny_checkpoint(path: str, texts: Iterable[str], *, vocab_size: int = 512,
                         model_type: str = "qwen2", hidden_size: int = 64, num_layers: int = 2,
                         seed: int = 0, preset: str | None = None,
                         save_dtype: str = "float32") -> str:
  """Writes a random `model_type` model and a byte-level BPE tokenizer trained on `texts`.

  The tokenizer has Qwen-style specials (`<|endoftext|>` pad/BOS, `<|im_end|>` EOS) and a
  ChatML chat template. With `preset` (a `ModelConfig` preset, e.g. "qwen2.5-0.5b") the model
  has that published shape instead — random weights at full size, its embedding rows beyond
  the tokenizer's `vocab_size` unused, as in a real checkpoint's padded vocabulary — stored in
  `save_dtype`. Returns `path`. Idempotent: an existing checkpoint is kept.
  """
  if os.path.exists(os.path.join(path, "config.json")):
    return path
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from score.models import ModelConfig, Transformer, hf  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  fast = train_tokenizer(texts, vocab_size=vocab_size)
  fast.save_pretrained(path)
  specials = dict(bos_token_id=fast.bos_token_id, eos_token_ids=(fast.eos_token_id,),
                  pad_token_id=fast.pad_token_id)
  if preset:
    config = ModelConfig.preset(preset, **specials)
    if config.vocab_size < len(fast):
      raise ValueError(f"preset {preset!r} has {config.vocab_size} embeddings for a "
                       f"{len(fast)}-token tokenizer")
  else:
    config = ModelConfig.tiny(
        vocab_size=len(fast), model_type=model_type, hidden_size=hidden_size,
        num_layers=num_layers, qkv_bias=model_type == "qwen2", head_dim=hidden_size // 4,
        intermediate_size=2 * hidden_size, **specials)
  hf.save_pretrained(Transformer(config, rngs=nnx.Rngs(seed)), path, dtype=save_dtype)
  return path
