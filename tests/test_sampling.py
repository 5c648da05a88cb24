"""Sampler: greedy parity with `transformers`, log-prob parity with `token_logprobs`,
filters through the whole loop, stop ids/strings, per-row limits, compile counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from score.models import ModelConfig, Transformer, token_logprobs
from score.sampling import sampler
from score.sampling import compile_count, generate, generate_arrays, left_pad

VOCAB = 128
PROMPTS = [[5, 17, 3], [9, 44, 2, 81, 7, 60, 12], [100, 1, 33, 8, 21]]


def _hf_model(family: str, path):
  import torch
  import transformers

  torch.manual_seed(0)
  kw = dict(
      vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
      initializer_range=0.1, tie_word_embeddings=False, pad_token_id=0,
  )
  if family == "qwen2":
    cfg = transformers.Qwen2Config(**kw)
    model = transformers.Qwen2ForCausalLM(cfg)
  else:
    cfg = transformers.LlamaConfig(**kw)
    model = transformers.LlamaForCausalLM(cfg)
  if family == "qwen2":  # Non-zero q/k/v biases so the bias path is exercised.
    with torch.no_grad():
      for layer in model.model.layers:
        attn = layer.self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
          proj.bias.normal_(0, 0.1)
  model.eval()
  model.save_pretrained(path)
  return model


def _hf_greedy(hf_model, prompts, n):
  import torch

  tokens_BxP, mask_BxP = left_pad(prompts)
  with torch.no_grad():
    out = hf_model.generate(
        input_ids=torch.tensor(tokens_BxP, dtype=torch.long),
        attention_mask=torch.tensor(mask_BxP, dtype=torch.long),
        do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
    )
  return out[:, tokens_BxP.shape[1]:].numpy().tolist()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_greedy_matches_transformers(family, tmp_path):
  from score.models import hf

  hf_model = _hf_model(family, tmp_path)
  model = hf.from_pretrained(str(tmp_path))
  n = 32
  ours = generate(model, PROMPTS, max_new_tokens=n)
  theirs = _hf_greedy(hf_model, PROMPTS, n)
  assert ours.tokens == theirs
  assert ours.finish_reason == ["length"] * len(PROMPTS)
  assert len(set(t for row in theirs for t in row)) > 4, "degenerate test: constant output"


@pytest.fixture(scope="module")
def tiny_model():
  return Transformer(ModelConfig.tiny(vocab_size=VOCAB), rngs=nnx.Rngs(1))


def _recomputed_logprobs(model, prompts, completions):
  """token_logprobs on the left-padded full sequences, sliced to the completions."""
  full = [list(p) + list(y) for p, y in zip(prompts, completions)]
  tokens_BxL, mask_BxL = left_pad(full, length=64)
  logp_BxL = np.asarray(token_logprobs(model, jnp.asarray(tokens_BxL), jnp.asarray(mask_BxL)))
  return [logp_BxL[b, 64 - len(y):].tolist() if y else [] for b, y in enumerate(completions)]


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.7, top_k=20, top_p=0.9)])
def test_logprobs_equal_token_logprobs(tiny_model, options):
  options = dict(temperature=1.0) | options
  s = generate(tiny_model, PROMPTS, max_new_tokens=12, seed=3, **options)
  refs = _recomputed_logprobs(tiny_model, PROMPTS, s.tokens)
  for y, lp, ref in zip(s.tokens, s.logprobs, refs):
    assert len(y) == len(lp) == 12
    np.testing.assert_allclose(lp, ref, atol=1e-4)
  # The sampling-distribution log-probs are a different quantity once filters are on.
  if "top_k" in options:
    assert not np.allclose(np.array(s.sample_logprobs), np.array(s.logprobs))
  else:
    np.testing.assert_allclose(np.array(s.sample_logprobs), np.array(s.logprobs), atol=1e-5)


def test_stop_ids_and_per_row_limits(tiny_model):
  free = generate(tiny_model, PROMPTS, max_new_tokens=10, temperature=1.0, seed=5)
  stop = free.tokens[0][3]
  first = free.tokens[0].index(stop)
  s = generate(tiny_model, PROMPTS, max_new_tokens=[10, 4, 0], temperature=1.0, seed=5,
               eos_ids=(stop,))
  # Same key and batch shape → the same draws up to the stop token.
  assert s.tokens[0] == free.tokens[0][: first + 1]
  assert s.finish_reason[0] == "stop"
  expected = free.tokens[1][:4]
  if stop in expected:
    expected = expected[: expected.index(stop) + 1]
  assert s.tokens[1] == expected
  assert len(s.tokens[1]) <= 4 and s.tokens[2] == [] and s.finish_reason[2] == "length"
  for y in s.tokens:
    assert y.count(stop) <= 1 and (stop not in y or y[-1] == stop)


def test_early_exit_when_every_row_stopped(tiny_model):
  tokens_BxP, mask_BxP = left_pad(PROMPTS, length=16, batch_size=4)
  run = lambda eos: generate_arrays(  # noqa: E731
      tiny_model, tokens_BxP, mask_BxP, jax.random.key(0), max_new_tokens=16, eos_ids=eos)
  free = run(())
  assert int(free.num_steps) == 16 and not np.asarray(free.stopped_B).any()
  # Stop ids = every row's third greedy token: the loop ends after ≤ 3 steps.
  third = np.asarray(free.tokens_BxN[:, 2]).tolist()
  out = run(third)
  assert int(out.num_steps) <= 3 and np.asarray(out.stopped_B).all()
  assert np.all(np.asarray(out.lengths_B) <= 3)
  np.testing.assert_array_equal(out.valid_BxN, np.arange(16)[None] < out.lengths_B[:, None])


def test_right_padding_is_rejected(tiny_model):
  with pytest.raises(ValueError, match="left-padded"):
    generate_arrays(tiny_model, np.array([[1, 2, 0]]), np.array([[1, 1, 0]]),
                    jax.random.key(0), max_new_tokens=4)


def test_stop_strings(tiny_model):
  decode_fn = lambda ids: "".join(chr(ord("a") + i % 26) for i in ids)  # noqa: E731
  free = generate(tiny_model, PROMPTS, max_new_tokens=10, temperature=1.0, seed=7)
  target = decode_fn(free.tokens[1][4:6])
  s = generate(tiny_model, PROMPTS, max_new_tokens=10, temperature=1.0, seed=7,
               stop_strings=[target], decode_fn=decode_fn)
  text = decode_fn(s.tokens[1])
  assert text.endswith(target) and target not in text[:-1] and s.finish_reason[1] == "stop"
  assert len(s.logprobs[1]) == len(s.tokens[1]) <= 6


def test_top_k_top_p_frequencies_through_the_loop(tiny_model):
  """First-token frequencies over 2048 draws vs the renormalised model distribution."""
  prompt = [5, 17, 3]
  logits = np.asarray(tiny_model(jnp.asarray([prompt])))[0, -1].astype(np.float64)
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  order = np.argsort(-probs)
  top_k, top_p = 16, 0.5  # Chosen so top-p cuts inside the top-k set (asserted below).
  q = np.zeros_like(probs)
  q[order[:top_k]] = probs[order[:top_k]]
  q /= q.sum()
  before = np.cumsum(q[order[:top_k]]) - q[order[:top_k]]
  keep = order[:top_k][before < top_p]
  assert 1 < len(keep) < top_k
  expected = np.zeros_like(probs)
  expected[keep] = q[keep] / q[keep].sum()
  n = 2048
  out = generate_arrays(
      tiny_model, np.tile(np.asarray([prompt], np.int32), (n, 1)), np.ones((n, 3), np.int32),
      jax.random.key(0), max_new_tokens=1, temperature=1.0, top_k=top_k, top_p=top_p,
  )
  counts = np.bincount(np.asarray(out.tokens_BxN[:, 0]), minlength=VOCAB)
  assert set(np.flatnonzero(counts)) <= set(keep.tolist())
  chi2 = ((counts[keep] - n * expected[keep]) ** 2 / (n * expected[keep])).sum()
  assert chi2 < stats.chi2.ppf(0.999, df=len(keep) - 1), (counts[keep], n * expected[keep])


def test_no_recompile_for_the_same_bucket(tiny_model):
  generate(tiny_model, PROMPTS, max_new_tokens=16, temperature=1.0, seed=0)  # (4, 16, 16)
  before, size = compile_count(), sampler._generate_core._cache_size()
  # Other prompts (batch 3-4, lengths ≤ 16, budgets 9-16), greedy or sampled, other seeds,
  # temperatures and stop ids: all in the same bucket.
  more = [[1, 2], [3, 4, 5, 6, 7, 8, 9, 10], [11], [12, 13]]
  generate(tiny_model, more, max_new_tokens=[16, 9, 12, 10], temperature=0.5, seed=1)
  generate(tiny_model, PROMPTS + [[1] * 16], max_new_tokens=12, temperature=0.0, eos_ids=(3, 4))
  assert compile_count() == before
  assert sampler._generate_core._cache_size() == size
  generate(tiny_model, [[1] * 17] * 4, max_new_tokens=16, temperature=1.0)  # Length bucket 20.
  assert compile_count() == before + 1


def test_bucket_length_quarter_octaves():
  got = [sampler.bucket_length(n) for n in (1, 16, 17, 20, 21, 29, 33, 100, 129, 1000)]
  assert got == [16, 16, 20, 20, 24, 32, 40, 112, 160, 1024]
  assert sampler.bucket_length(3, minimum=4) == 4 and sampler.bucket_length(5, minimum=4) == 5
  for n in range(1, 3000):
    b = sampler.bucket_length(n)
    assert b >= n and (b <= 16 or b < 1.25 * n + 1)


def test_prefill_last_logits_equals_decode(tiny_model):
  tokens_BxP, mask_BxP = (jnp.asarray(x) for x in left_pad(PROMPTS))
  positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, -1) - 1, 0)
  kv_mask_BxS = jnp.concatenate([mask_BxP, jnp.ones((3, 4), jnp.int32)], axis=1)
  fast, fast_cache = sampler.prefill_last_logits(
      tiny_model, tokens_BxP, positions_BxP, tiny_model.init_cache(3, 11), kv_mask_BxS)
  full, full_cache = tiny_model.decode(
      tokens_BxP, positions_BxP, tiny_model.init_cache(3, 11), 0, kv_mask_BxS)
  np.testing.assert_allclose(fast, full[:, -1], atol=1e-6)
  for a, b in zip(jax.tree.leaves(fast_cache), jax.tree.leaves(full_cache)):
    np.testing.assert_allclose(a, b, atol=1e-6)
