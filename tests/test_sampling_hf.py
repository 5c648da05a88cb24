"""The sampler's tokens and log-probs against `transformers` (PyTorch, fp32) on the same
weights: greedy decoding must pick torch's greedy tokens, and for greedy and tempered /
top-k sampling `logprobs` must be torch's raw log-softmax of each generated token and
`sample_logprobs` torch's log-prob under the tempered, filtered distribution. Two families
(llama; gemma2 with soft-capping and a sliding window), left-padded prompts of unequal length.
"""

import numpy as np
import pytest

from score.models import hf
from score.sampling import sampler

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_models_hf import VOCAB, _hf_model  # pylint: disable=g-import-not-at-top,wrong-import-position

PROMPTS = [[5, 17, 99, 3, 64], [8, 2, 41], [77, 13, 120, 9, 31, 56, 4]]
NEW = 6


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def models(request, tmp_path_factory):
  theirs = _hf_model(request.param, seed=2)
  path = tmp_path_factory.mktemp(request.param)
  theirs.save_pretrained(path)
  return theirs, hf.from_pretrained(path)


def _torch_logits(model, prompt, completion):
  """Torch's logits (fp64) predicting each token of `completion` after `prompt`, unpadded."""
  ids = torch.as_tensor([list(prompt) + list(completion)])
  with torch.no_grad():
    logits = model(input_ids=ids).logits[0].double().numpy()
  return logits[len(prompt) - 1:-1]


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_greedy_tokens_and_logprobs_match_torch(models):
  theirs, ours = models
  out = sampler.generate(ours, PROMPTS, max_new_tokens=NEW, temperature=0.0)
  for b, prompt in enumerate(PROMPTS):
    with torch.no_grad():
      ref = theirs.generate(torch.as_tensor([prompt]), max_new_tokens=NEW, do_sample=False,
                            min_new_tokens=NEW, pad_token_id=0)[0, len(prompt):].tolist()
    assert out.tokens[b] == ref, b
    logp = _log_softmax(_torch_logits(theirs, prompt, ref))
    np.testing.assert_allclose(out.logprobs[b], logp[np.arange(NEW), ref], atol=2e-4,
                               err_msg=str(b))
    assert out.sample_logprobs[b] == [0.0] * NEW  # greedy: no sampling distribution


@pytest.mark.parametrize("temperature,top_k", [(0.7, None), (1.3, 5)])
def test_sampled_logprobs_match_torch(models, temperature, top_k):
  theirs, ours = models
  out = sampler.generate(ours, PROMPTS, max_new_tokens=NEW, temperature=temperature,
                         top_k=top_k, seed=4)
  for b, prompt in enumerate(PROMPTS):
    tokens = out.tokens[b]
    assert len(tokens) == NEW and all(0 <= t < VOCAB for t in tokens)
    logits = _torch_logits(theirs, prompt, tokens)
    raw = _log_softmax(logits)[np.arange(NEW), tokens]
    np.testing.assert_allclose(out.logprobs[b], raw, atol=2e-4, err_msg=str(b))
    tempered = logits / temperature
    if top_k is not None:
      kth = np.sort(tempered, -1)[:, -top_k][:, None]
      assert (tempered[np.arange(NEW), tokens] >= kth[:, 0] - 1e-4).all()  # inside the top k
      tempered = np.where(tempered >= kth, tempered, -np.inf)
    sampled = _log_softmax(tempered)[np.arange(NEW), tokens]
    np.testing.assert_allclose(out.sample_logprobs[b], sampled, atol=2e-4, err_msg=str(b))
  # Different seeds sample different tokens (the test above is not about greedy decoding).
  again = sampler.generate(ours, PROMPTS, max_new_tokens=NEW, temperature=temperature,
                           top_k=top_k, seed=5)
  assert again.tokens != out.tokens
