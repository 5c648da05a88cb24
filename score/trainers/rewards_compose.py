r"""Sequence rewards as a weighted sum of named components, from config.

    reward_i = Σ_c  weight_c · component_c(i)

A config section maps a component's name to its settings (`type` defaults to the name, so
two graders can live side by side as `exact: {type: "grader", ...}` and `fuzzy: {...}`)::

    c.reward = ml_collections.ConfigDict(dict(
        verifiable=dict(weight=10.0),                      # Tülu 3 RLVR: α = 10
        no_eos=dict(weight=1.0, penalty=-10.0),            # Tülu 3: −10 without EOS
        kimi_length=dict(weight=0.0),                      # Kimi k1.5 group length reward
        dapo_overlong=dict(weight=0.0, max_len=20480, cache_len=4096),
        format=dict(weight=0.0, pattern=r"Final Answer: .*"),
    ))

Components (`COMPONENTS`), each returning one float per response (`[N]`):

* ``verifiable``: the environment's oracle `env.reward(problem, response_ids)` (MATH answer
  check, synthetic sum check), in [0, 1].
* ``grader``: any RFT grader of `score.rewards.graders` (`grader` = its config dict); the
  sample is ``{"output_text": decoded response}``, the item the problem's fields.
* ``format``: 1 if the decoded response matches the regular expression ``pattern``
  (``re.search``; ``fullmatch=True`` for ``re.fullmatch``), else 0 (R1-Zero format reward).
* ``kimi_length``: `score.losses.shaping.kimi_length_penalty` within each group of G samples,
  with "correct" = verifiable reward > 0 (Kimi k1.5, arXiv 2501.12599).
* ``dapo_overlong``: `score.losses.shaping.dapo_overlong_penalty` of the response length with
  ``max_len`` (L_max; default: the environment's `max_new_tokens`) and ``cache_len``
  (DAPO, arXiv 2503.14476).
* ``no_eos``: `score.losses.shaping.no_eos_penalty`: ``penalty`` (default −10) for a
  response that did not end with an EOS id, else 0 (Tülu 3, arXiv 2411.15124).

The environment reward is always computed (as ``correct``) because accuracy is reported and
the Kimi term needs it; a component with weight 0 is not evaluated.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from score.losses import shaping


@dataclasses.dataclass
class RewardInputs:
  """What a component may look at, one entry per response (N = prompts × G).

  problems: the problem of each response. responses: generated ids (EOS included if hit).
  correct_N: the environment's oracle reward. finished_N: ended with an EOS id.
  lengths_N: number of generated tokens. group_size: G (rows `i·G … i·G+G−1` share a prompt).
  env: the environment (for `decode`, `max_new_tokens`).
  """
  problems: Sequence[Any]
  responses: Sequence[Sequence[int]]
  correct_N: np.ndarray
  finished_N: np.ndarray
  lengths_N: np.ndarray
  group_size: int
  env: Any
  _texts: list[str] | None = None

  @property
  def texts(self) -> list[str]:
    if self._texts is None:
      self._texts = [self.env.decode(r) for r in self.responses]
    return self._texts


def _verifiable(inputs: RewardInputs, cfg) -> np.ndarray:
  del cfg
  return inputs.correct_N


def _item(problem) -> dict:
  if dataclasses.is_dataclass(problem):
    return {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}
  if isinstance(problem, Mapping):
    return dict(problem)
  raise TypeError(f"grader reward: cannot turn a {type(problem).__name__} into a grader item")


def _grader(inputs: RewardInputs, cfg) -> np.ndarray:
  from score.rewards import graders  # pylint: disable=g-import-not-at-top
  config = cfg.grader.to_dict() if hasattr(cfg.grader, "to_dict") else dict(cfg.grader)
  grader = graders.build_grader(config)
  samples = [{"output_text": t} for t in inputs.texts]
  return np.asarray(grader.batch(samples, [_item(p) for p in inputs.problems]), np.float32)


def _format(inputs: RewardInputs, cfg) -> np.ndarray:
  pattern = re.compile(cfg.pattern, re.DOTALL)
  match = pattern.fullmatch if cfg.get("fullmatch", False) else pattern.search
  return np.asarray([float(match(t) is not None) for t in inputs.texts], np.float32)


def _kimi_length(inputs: RewardInputs, cfg) -> np.ndarray:
  del cfg
  g = inputs.group_size
  lengths = inputs.lengths_N.reshape(-1, g)
  correct = (inputs.correct_N > 0).reshape(-1, g)
  return np.asarray(shaping.kimi_length_penalty(lengths, correct)).reshape(-1)


def _dapo_overlong(inputs: RewardInputs, cfg) -> np.ndarray:
  max_len = cfg.get("max_len", 0) or inputs.env.max_new_tokens
  return np.asarray(shaping.dapo_overlong_penalty(inputs.lengths_N, max_len, cfg.cache_len))


def _no_eos(inputs: RewardInputs, cfg) -> np.ndarray:
  return np.asarray(shaping.no_eos_penalty(inputs.finished_N, cfg.get("penalty", -10.0)))


COMPONENTS: dict[str, Callable[[RewardInputs, Any], np.ndarray]] = {
    "verifiable": _verifiable,
    "grader": _grader,
    "format": _format,
    "kimi_length": _kimi_length,
    "dapo_overlong": _dapo_overlong,
    "no_eos": _no_eos,
}


def compose(inputs: RewardInputs, reward_cfg) -> tuple[np.ndarray, dict[str, float]]:
  """Total rewards ``[N]`` and metrics (each component's mean, weighted, as `reward/<name>`).

  Raises:
    ValueError: an unknown component type (names the known ones).
  """
  total = np.zeros(len(inputs.responses), np.float32)
  metrics = {}
  for name, cfg in reward_cfg.items():
    kind = cfg.get("type", name)
    if kind not in COMPONENTS:
      raise ValueError(f"reward component {name!r}: unknown type {kind!r}; known: "
                       f"{sorted(COMPONENTS)}")
    weight = float(cfg.get("weight", 1.0))
    if weight == 0.0:
      continue
    values = np.asarray(COMPONENTS[kind](inputs, cfg), np.float32).reshape(-1)
    if values.shape != total.shape:
      raise ValueError(f"reward component {name!r} returned shape {values.shape}, expected "
                       f"{total.shape}")
    total += weight * values
    metrics[f"reward/{name}"] = float(np.mean(weight * values))
  return total, metrics


def score_responses(env, problems, responses, *, group_size, reward_cfg, finished=None):
  """Runs the oracle and composes the configured reward.

  Args:
    env: the environment (`reward`, `eos_ids`, `decode`, `max_new_tokens`).
    problems: one problem per response.
    responses: generated ids per response.
    group_size: G.
    reward_cfg: the config's `reward` section.
    finished: optional bool per response (ended with a stop id); defaults to "its last id
      is one of `env.eos_ids`".

  Returns:
    `(rewards_N, correct_N, metrics)`.
  """
  correct = np.asarray([env.reward(p, r) for p, r in zip(problems, responses)], np.float32)
  if finished is None:
    eos = set(env.eos_ids)
    finished = [bool(r) and int(r[-1]) in eos for r in responses]
  inputs = RewardInputs(problems=problems, responses=responses, correct_N=correct,
                        finished_N=np.asarray(finished, bool),
                        lengths_N=np.asarray([len(r) for r in responses], np.int32),
                        group_size=group_size, env=env)
  rewards, metrics = compose(inputs, reward_cfg)
  metrics["reward/correct"] = float(correct.mean()) if len(correct) else 0.0
  metrics["reward/total"] = float(rewards.mean()) if len(rewards) else 0.0
  metrics["response/length"] = float(inputs.lengths_N.mean()) if len(correct) else 0.0
  metrics["response/finished"] = float(np.mean(inputs.finished_N)) if len(correct) else 0.0
  return rewards, correct, metrics
