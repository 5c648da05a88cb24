"""Greedy two-attempt evaluation: the model answers, is asked to correct itself, answers again."""

from __future__ import annotations

import json
import os

from absl import logging

from score.eval import metrics as metrics_lib
from score.sampling import rollouts
from score.utils import progress


def two_attempts(model, env, problems, *, batch_size: int = 256, temperature: float = 0.0,
                 seed: int = 0, self_refine: bool = False, mesh=None) -> dict:
  """Per-problem correctness of both attempts (greedy by default) and the decoded turns.

  With `self_refine`, the episode has three turns — attempt, the model's own feedback,
  refined attempt (Self-Refine) — and the refined attempt is scored as the second attempt.
  With a `mesh` (e.g. the trainer's), the rollouts are sampled on it (`rollouts.rollout`).
  """
  num_turns = 3 if self_refine else 2
  instruction = env.self_refine_instruction if self_refine else env.instruction
  c1, c2, texts = [], [], []
  for start in progress.bar(range(0, len(problems), batch_size), desc="eval"):
    chunk = problems[start:start + batch_size]
    episodes = rollouts.rollout(
        model, [env.prompt_tokens(p) for p in chunk], num_turns=num_turns,
        max_new_tokens=env.max_new_tokens, instruction=instruction, samples_per_prompt=1,
        temperature=temperature, eos_ids=env.eos_ids, max_len=env.max_len, pad_id=env.pad_id,
        seed=seed + start, mesh=mesh)
    turns = [list(r) + [[]] * (num_turns - len(r)) for r in episodes.responses]
    ps = [chunk[int(i)] for i in episodes.prompt_index_B]
    c1 += env.rewards(ps, [t[0] for t in turns])
    c2 += env.rewards(ps, [t[-1] for t in turns])
    texts += [{"id": p.id, **{f"t{k + 1}": env.decode(y) for k, y in enumerate(t)}}
              for p, t in zip(ps, turns)]
  return {"correct_t1": c1, "correct_t2": c2, "attempts": texts}


def evaluate_cached(workdir: str, method: str, model_fn, env, problems, **kwargs) -> dict:
  """`two_attempts` for `method`, stored in `<workdir>/evals/<method>.json` and reused while
  the problems are the same (e.g. not after `--config.eval.num_problems` changed)."""
  path = os.path.join(workdir, "evals", f"{method}.json")
  out = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
    if [a["id"] for a in out["attempts"]] != [p.id for p in problems]:
      logging.warning("%s was evaluated on other problems; re-evaluating", method)
      out = None
  if out is None:
    out = two_attempts(model_fn(), env, problems, **kwargs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(out, f)
    os.replace(path + ".tmp", path)
  out["metrics"] = metrics_lib.self_correction_metrics(out["correct_t1"], out["correct_t2"])
  return out
