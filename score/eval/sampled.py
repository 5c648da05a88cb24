"""Sampled evaluation: pass@k (unbiased estimator) and maj@k (majority vote) at temperature T.

For a problem with n ≥ k samples of which c are correct, pass@k is the probability that at
least one of k samples drawn without replacement from the n is correct (Chen et al. 2021,
"Evaluating large language models trained on code", arXiv 2107.03374, eq. 1):

    pass@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{i = n−c+1}^{n} (1 − k / i)

(the product form never forms the binomials). maj@k takes the most frequent extracted answer
among a problem's first k samples (ties: the tied answer seen first; samples without an answer
do not vote) and scores it; it is 0 when no sample has an answer. Answers are what the
environment's `answer_key(problem, response_ids)` returns: the normalised final answer for
MATH500 / GSM8K and the synthetic task, None for code (HumanEval / MBPP get pass@k through
the sandbox's unit tests, not maj@k). Each metric is a mean over problems in percent with a
percentile-bootstrap interval (`metrics.accuracy`).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from score.eval import metrics as metrics_lib
from score.sampling import rollouts


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
  """Per-problem unbiased pass@k from `num_samples` n (≥ k) and `num_correct` c (arrays)."""
  n_P = np.atleast_1d(np.asarray(num_samples, np.int64))
  c_P = np.atleast_1d(np.asarray(num_correct, np.int64))
  if k < 1 or np.any(n_P < k):
    raise ValueError(f"pass@{k} needs k >= 1 and at least k samples per problem, got n = "
                     f"{n_P.min() if n_P.size else None}")
  if np.any((c_P < 0) | (c_P > n_P)):
    raise ValueError("num_correct must lie in [0, num_samples]")
  out = np.ones(n_P.shape, np.float64)
  for i, (n, c) in enumerate(zip(n_P, c_P)):
    if n - c >= k:
      out[i] = 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64))
  return out


def majority_vote(keys: Sequence, correct: Sequence) -> float:
  """1.0 if the most frequent non-None key's first sample is correct (ties: first seen)."""
  votes = Counter(k for k in keys if k is not None)
  if not votes:
    return 0.0
  top = max(votes.values())
  winner = next(k for k in keys if k is not None and votes[k] == top)
  return float(correct[list(keys).index(winner)])


def default_ks(n: int) -> list[int]:
  """k = 1, 2, 4, … up to n, and n."""
  return sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})


def sampled_metrics(correct_PxN, keys_PxN=None, *, ks: Sequence[int] | None = None) -> dict:
  """`{"pass@k": {...}, "maj@k": {...}}` (each `metrics.accuracy`) for k in `ks` (default
  `default_ks(n)`); maj@k only with answer keys (some not None)."""
  correct_PxN = np.asarray(correct_PxN, np.float64)
  if correct_PxN.ndim != 2 or correct_PxN.size == 0:
    raise ValueError(f"need per-problem samples [P, N], got shape {correct_PxN.shape}")
  n = correct_PxN.shape[1]
  out = {}
  num_correct_P = (correct_PxN > 0).sum(axis=1)
  has_keys = keys_PxN is not None and any(k is not None for row in keys_PxN for k in row)
  for k in ks or default_ks(n):
    out[f"pass@{k}"] = metrics_lib.accuracy(pass_at_k(np.full_like(num_correct_P, n),
                                                      num_correct_P, k))
    if has_keys:
      out[f"maj@{k}"] = metrics_lib.accuracy(
          [majority_vote(keys[:k], c[:k]) for keys, c in zip(keys_PxN, correct_PxN)])
  return out


def sample_answers(model, env, problems, *, samples: int, temperature: float, seed: int = 0,
                   batch_size: int = 256, mesh=None) -> tuple[np.ndarray, list[list]]:
  """`samples` independent first attempts per problem at `temperature`: correctness `[P, N]`
  (the environment's reward: answer checking or the sandbox) and answer keys."""
  if samples < 1 or temperature <= 0:
    raise ValueError(f"sampled evaluation needs samples >= 1 and temperature > 0, got "
                     f"samples={samples}, temperature={temperature}")
  correct, keys = [], []
  per_batch = max(1, batch_size // samples)
  for start in range(0, len(problems), per_batch):
    chunk = problems[start:start + per_batch]
    episodes = rollouts.rollout(
        model, [env.prompt_tokens(p) for p in chunk], num_turns=1,
        max_new_tokens=env.max_new_tokens, samples_per_prompt=samples, temperature=temperature,
        eos_ids=env.eos_ids, max_len=env.max_len, pad_id=env.pad_id, seed=seed + start,
        mesh=mesh)
    order = np.argsort(np.asarray(episodes.prompt_index_B), kind="stable")  # prompt-major
    rows = [chunk[int(episodes.prompt_index_B[b])] for b in order]
    responses = [(episodes.responses[b] or [[]])[0] for b in order]
    correct += env.rewards(rows, responses)
    keys += [env.answer_key(p, r) for p, r in zip(rows, responses)]
  return (np.asarray(correct, np.float64).reshape(len(problems), samples),
          [keys[i:i + samples] for i in range(0, len(keys), samples)])


def evaluate(model, env, problems, *, samples: int, temperature: float, seed: int = 0,
             batch_size: int = 256, ks: Sequence[int] | None = None, mesh=None) -> dict:
  """`sample_answers` then `sampled_metrics`; `{"pass@k": ..., "maj@k": ...}`."""
  correct_PxN, keys_PxN = sample_answers(model, env, problems, samples=samples,
                                         temperature=temperature, seed=seed,
                                         batch_size=batch_size, mesh=mesh)
  return sampled_metrics(correct_PxN, keys_PxN, ks=ks)
