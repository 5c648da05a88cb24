"""Text <-> tokens for instruction-following trainers: a prompt format plus a tokenizer.

A codec renders a user prompt, encodes and decodes text, and builds an SFT/DPO example
(prompt ⊕ response ⊕ EOS with the loss on the response). `Codec` wraps a Hugging Face
tokenizer (chat template or a plain "Question/Answer" format); `CharCodec` a character-level
`score.data.synthetic.CharTokenizer` for the designed CPU tasks. The Self-Rewarding loop,
DPO and the reward model all render text through one of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from score.data import synthetic

__all__ = ["Codec", "CharCodec"]


@dataclasses.dataclass
class Codec:
  """A Hugging Face tokenizer plus the prompt format.

  `prompt_format`: ``"chat"`` renders a user turn with the tokenizer's chat template
  (``add_generation_prompt=True``); ``"plain"`` writes ``"Question: …\\n\\nAnswer: "`` for
  base checkpoints. A response is its text followed by the first EOS id.
  """

  tokenizer: Any
  prompt_format: str = "chat"

  def __post_init__(self):
    if self.prompt_format not in ("chat", "plain"):
      raise ValueError(f"prompt_format must be 'chat' or 'plain', got {self.prompt_format!r}")
    if self.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
      raise ValueError("prompt_format='chat' needs a tokenizer with a chat template; use "
                       "prompt_format='plain' for a base checkpoint")
    eos = self.tokenizer.eos_token_id
    if eos is None:
      raise ValueError("the tokenizer has no eos_token_id; responses could never end")
    self.eos_ids = (int(eos),)
    pad = self.tokenizer.pad_token_id
    self.pad_id = int(pad) if pad is not None else int(eos)

  def user_prompt(self, text: str) -> str:
    if self.prompt_format == "chat":
      return self.tokenizer.apply_chat_template(
          [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return f"Question: {text}\n\nAnswer: "

  def encode(self, text: str, *, raw: bool = False) -> list[int]:
    """Token ids of `text`. Rendered prompts carry their own special tokens; `raw` text (the
    few-shot completion prompt) gets the tokenizer's default ones (e.g. BOS)."""
    return list(self.tokenizer.encode(text, add_special_tokens=raw))

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def example(self, user_text: str, response: str, max_len: int
              ) -> tuple[list[int], list[int]] | None:
    """`(tokens, loss_mask)` of prompt ⊕ response ⊕ EOS (loss on response and EOS), or None
    when longer than `max_len`."""
    prompt = self.encode(self.user_prompt(user_text))
    answer = self.encode(response) + [self.eos_ids[0]]
    if len(prompt) + len(answer) > max_len:
      return None
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


@dataclasses.dataclass
class CharCodec:
  """A `CharTokenizer` plus a prompt renderer (`user_prompt`, e.g. `rubric_task.user_prompt`:
  BOS + text + a separator). Same interface as `Codec`."""

  tokenizer: synthetic.CharTokenizer
  user_prompt: Callable[[str], str]

  def __post_init__(self):
    self.eos_ids = (self.tokenizer.eos_id,)
    self.pad_id = self.tokenizer.pad_id

  def encode(self, text: str, *, raw: bool = False) -> list[int]:
    del raw  # a rendered prompt carries its BOS
    return self.tokenizer.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(ids)

  example = Codec.example
