"""Multi-turn rollouts: masks, exact splicing of earlier turns, log-prob alignment, limits."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from score.models import ModelConfig, Transformer, token_logprobs
from score.sampling import generate
from score.sampling.rollouts import chat_instruction, chat_prompt, rollout

PROMPTS = [[5, 17, 3, 9], [40, 2]]
INSTRUCTION = [120, 121]
# Sizes keep every turn in one compiled shape: batch 4 (2 prompts × 2), contexts ≤ 16, N ≤ 8.


@pytest.fixture(scope="module")
def model():
  return Transformer(ModelConfig.tiny(vocab_size=128), rngs=nnx.Rngs(2))


def _row_segments(ep, b):
  """The row's real tokens split into (ids, turn) runs of constant turn_mask."""
  real = ep.mask_BxL[b] > 0
  ids, turns = ep.tokens_BxL[b][real].tolist(), ep.turn_mask_BxL[b][real].tolist()
  return ids, turns


def test_masks_and_exact_splicing(model):
  g, k = 2, 3
  ep = rollout(model, PROMPTS, num_turns=k, max_new_tokens=[3, 4, 2], instruction=INSTRUCTION,
               samples_per_prompt=g, temperature=1.0, seed=0)
  b_total = len(PROMPTS) * g
  assert ep.tokens_BxL.shape[0] == b_total and ep.tokens_BxL.shape[1] % 8 == 0
  assert ep.prompt_index_B.tolist() == [0, 0, 1, 1]
  assert ep.lengths_BxK.tolist() == [[3, 4, 2]] * b_total
  assert ep.truncated_BxK.all()
  for b in range(b_total):
    x1 = PROMPTS[ep.prompt_index_B[b]]
    y = ep.responses[b]
    ids, turns = _row_segments(ep, b)
    # The episode is x1 ⊕ y1 ⊕ p ⊕ y2 ⊕ p ⊕ y3, turn marks on y_k only.
    assert ids == x1 + y[0] + INSTRUCTION + y[1] + INSTRUCTION + y[2]
    assert turns == ([0] * len(x1) + [1] * 3 + [0] * 2 + [2] * 4 + [0] * 2 + [3] * 2)
    assert ep.context(b, 2, PROMPTS) == x1 + y[0] + INSTRUCTION
    # Left padding: padding is never marked as a turn and the row ends at the right edge.
    assert ep.turn_mask_BxL[b][ep.mask_BxL[b] == 0].sum() == 0 and ep.mask_BxL[b, -1] == 1
  # No prompt or instruction token is trainable.
  assert not np.any(ep.loss_mask_BxL & (ep.turn_mask_BxL == 0))
  assert ep.loss_mask_BxL.sum() == b_total * 9
  # G samples of one prompt are different draws.
  assert ep.responses[0] != ep.responses[1] and ep.responses[2] != ep.responses[3]
  # The trainer's recomputation on the packed episode gives the sampler's log-probs at every
  # generated position: each turn conditioned on exactly the earlier turns' tokens.
  logp_BxL = np.asarray(
      token_logprobs(model, jnp.asarray(ep.tokens_BxL), jnp.asarray(ep.mask_BxL)))
  gen = ep.turn_mask_BxL > 0
  np.testing.assert_allclose(logp_BxL[gen], ep.logprobs_BxL[gen], atol=1e-4)
  assert np.all(ep.logprobs_BxL[~gen] == 0)


def test_greedy_turn_two_equals_generate_on_spliced_context(model):
  ep = rollout(model, PROMPTS, num_turns=2, max_new_tokens=5, instruction=INSTRUCTION,
               samples_per_prompt=2, temperature=0.0)
  x2 = [PROMPTS[ep.prompt_index_B[b]] + ep.responses[b][0] + INSTRUCTION for b in range(4)]
  direct = generate(model, x2, max_new_tokens=5)
  assert [r[1] for r in ep.responses] == direct.tokens


def test_callable_instruction_and_stop(model):
  first = rollout(model, PROMPTS, num_turns=1, max_new_tokens=4, samples_per_prompt=2,
                  temperature=0.0)
  stop = first.responses[0][0][2]
  calls = []

  def instruction(turn, context, response):
    calls.append((turn, list(context), list(response)))
    return [100 + turn]

  ep = rollout(model, PROMPTS, num_turns=3, max_new_tokens=4, instruction=instruction,
               samples_per_prompt=2, temperature=0.0, eos_ids=(stop,))
  y = ep.responses[0]
  assert y[0] == first.responses[0][0][: first.responses[0][0].index(stop) + 1]
  assert ep.finish_reason[0][0] == "stop" and not ep.truncated_BxK[0, 0]
  assert [c[0] for c in calls] == [1] * 4 + [2] * 4  # Row by row, turn by turn.
  assert calls[0][1] == PROMPTS[0] and calls[0][2] == y[0]
  assert calls[4][1] == PROMPTS[0] + y[0] + [101] and calls[4][2] == y[1]
  assert ep.instructions[0] == [[101], [102]]


def test_max_len_caps_the_episode(model):
  ep = rollout(model, PROMPTS, num_turns=3, max_new_tokens=8, instruction=INSTRUCTION,
               samples_per_prompt=2, temperature=1.0, max_len=16)
  assert ep.tokens_BxL.shape[1] == 16
  assert np.all(ep.mask_BxL.sum(-1) <= 16)
  for b in range(4):
    ids, _ = _row_segments(ep, b)
    assert ids == ep.context(b, len(ep.instructions[b]) + 1, PROMPTS) + ep.responses[b][
        len(ep.instructions[b])
    ] + sum(ep.responses[b][len(ep.instructions[b]) + 1:], [])
  assert ep.truncated_BxK[:, -1].all() and (ep.lengths_BxK[:, -1] == 0).any()


def _chat_tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  words = ["hi", "fix", "it", "user", "assistant", "\n", "x", "a", "b"]
  vocab = {w: i for i, w in enumerate(["<unk>", "<|im_start|>", "<|im_end|>"] + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
  fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
  fast.chat_template = (
      "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
      "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
  )
  return fast


def test_chat_template_helpers():
  tok = _chat_tokenizer()
  ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
  assert chat_prompt(tok, "hi") == ids("<|im_start|> user hi <|im_end|> <|im_start|> assistant ")
  eos = tok.convert_tokens_to_ids("<|im_end|>")
  fn = chat_instruction(tok, "fix it", eos_ids=(eos,))
  tail = ids("<|im_start|> user fix it <|im_end|> <|im_start|> assistant ")
  a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
  # Response without its end-of-turn token: the template's closing token is inserted.
  assert fn(1, [], [a, b]) == [eos] + tail
  # Response that ended on <|im_end|>: not repeated.
  assert fn(1, [], [a, b, eos]) == tail


# -- Later turns continue the KV cache of the earlier ones ------------------------------------


def _without_cache_reuse(monkeypatch):
  from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(rollouts, "continues_cache", lambda model: False)


def _varying_instruction(turn, context, response):
  return [100 + turn] * (1 + len(response) % 3)  # 1-3 tokens, row by row


@pytest.mark.parametrize("options", [
    dict(eos_ids=(7, 11, 19)),
    dict(stop_strings=["ab"], decode_fn=lambda ids: "".join(chr(97 + i % 3) for i in ids)),
    dict(max_len=20),
])
def test_continued_cache_equals_prefilling_every_turn(model, monkeypatch, options):
  # Greedy, three turns, instructions of different lengths per row, rows stopping early (stop
  # ids, stop strings cut on the host) or running out of room: the turns sampled from the
  # continued cache are the ones sampled by prefilling x_k afresh, with the same log-probs.
  kwargs = dict(num_turns=3, max_new_tokens=[5, 6, 4], instruction=_varying_instruction,
                samples_per_prompt=2, temperature=0.0, **options)
  reused = rollout(model, PROMPTS + [[3] * 9], **kwargs)
  _without_cache_reuse(monkeypatch)
  fresh = rollout(model, PROMPTS + [[3] * 9], **kwargs)
  assert reused.responses == fresh.responses
  assert reused.instructions == fresh.instructions
  assert reused.finish_reason == fresh.finish_reason
  np.testing.assert_array_equal(reused.tokens_BxL, fresh.tokens_BxL)
  np.testing.assert_allclose(reused.logprobs_BxL, fresh.logprobs_BxL, atol=1e-5)


def test_later_turns_prefill_only_the_instruction(model, monkeypatch):
  from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
  calls = []
  real = rollouts.generate

  def spy(model_, prompts, **kw):
    calls.append(([list(p) for p in prompts], kw.get("continuation") is not None))
    return real(model_, prompts, **kw)

  monkeypatch.setattr(rollouts, "generate", spy)
  # A callable instruction: the host builds each turn's prompts (see below for fixed ids).
  ep = rollout(model, PROMPTS, num_turns=3, max_new_tokens=4,
               instruction=lambda turn, context, response: INSTRUCTION,
               samples_per_prompt=2, temperature=1.0, seed=3)
  assert [c[1] for c in calls] == [False, True, True]
  assert calls[0][0] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
  assert calls[1][0] == calls[2][0] == [INSTRUCTION] * 4
  # Sampled at temperature 1 from the continued cache, the log-probs are still exactly the
  # trainer's recomputation on the packed episode.
  logp_BxL = np.asarray(
      token_logprobs(model, jnp.asarray(ep.tokens_BxL), jnp.asarray(ep.mask_BxL)))
  gen = ep.turn_mask_BxL > 0
  np.testing.assert_allclose(logp_BxL[gen], ep.logprobs_BxL[gen], atol=1e-4)


def test_sliding_window_models_and_empty_instructions_prefill_again(monkeypatch):
  from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
  calls = []
  real = rollouts.generate

  def spy(model_, prompts, **kw):
    calls.append(kw.get("continuation") is not None)
    return real(model_, prompts, **kw)

  monkeypatch.setattr(rollouts, "generate", spy)
  sliding = Transformer(ModelConfig.tiny(vocab_size=128, layer_types=(
      "sliding_attention", "full_attention"), sliding_window=4), rngs=nnx.Rngs(0))
  rollout(sliding, PROMPTS, num_turns=2, max_new_tokens=3, instruction=INSTRUCTION)
  assert calls == [False, False]
  calls.clear()
  full = Transformer(ModelConfig.tiny(vocab_size=128), rngs=nnx.Rngs(0))
  rollout(full, PROMPTS, num_turns=3, max_new_tokens=3,
          instruction=lambda turn, context, response: [] if turn == 1 else [9])
  assert calls == [False, False, True]


def test_generate_continuation_rejects_another_batch(model):
  from score.sampling import sampler  # pylint: disable=g-import-not-at-top
  _, cont = generate(model, PROMPTS, max_new_tokens=3, return_continuation=True)
  assert cont.kv_mask_BxS.shape[0] == 2
  with pytest.raises(ValueError, match="3 prompts continue 2 rows"):
    generate(model, [[1]] * 3, max_new_tokens=3, continuation=cont)
  assert sampler.continues_cache(model)


@pytest.mark.parametrize("options", [
    dict(temperature=0.0, eos_ids=(7, 11, 19)),
    dict(temperature=1.0, eos_ids=(7, 11, 19), max_len=18),
    dict(temperature=0.0, max_len=17),
])
def test_fixed_instruction_turns_run_without_the_host(model, monkeypatch, options):
  # Fixed instruction ids: every turn is dispatched before anything is read back (the
  # sampled ids come to the host once), and the episodes are those of the turn-by-turn
  # path that builds each turn's prompts on the host (a callable instruction).
  import jax  # pylint: disable=g-import-not-at-top
  from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
  kwargs = dict(num_turns=3, max_new_tokens=[5, 6, 4], samples_per_prompt=2, seed=5, **options)
  prompts = PROMPTS + [[3] * 9]
  reads = []
  real_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or real_get(x))
  monkeypatch.setattr(rollouts, "generate", None)  # not the turn-by-turn path
  fast = rollout(model, prompts, instruction=INSTRUCTION, **kwargs)
  assert len(reads) == 1
  monkeypatch.undo()
  slow = rollout(model, prompts, instruction=lambda turn, x, y: INSTRUCTION, **kwargs)
  assert fast.responses == slow.responses and fast.instructions == slow.instructions
  assert fast.finish_reason == slow.finish_reason
  np.testing.assert_array_equal(fast.tokens_BxL, slow.tokens_BxL)
  np.testing.assert_allclose(fast.logprobs_BxL, slow.logprobs_BxL, atol=1e-5)
  np.testing.assert_allclose(fast.sample_logprobs_BxL, slow.sample_logprobs_BxL, atol=1e-5)
  if "max_len" in options:  # some episodes ran out of room before the last turn
    assert any(len(i) < 2 for i in fast.instructions)
