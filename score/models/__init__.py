"""Decoder-only Transformers (Llama, Qwen2/2.5, Qwen3, Gemma, Gemma 2) in Flax NNX.

`hf.py` (imported on use: `from score.models import hf`) loads and writes Hugging Face
checkpoints.
"""

from score.models.config import ModelConfig
from score.models.transformer import Transformer, token_logprobs

__all__ = ["ModelConfig", "Transformer", "token_logprobs"]
