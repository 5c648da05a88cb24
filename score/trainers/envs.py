"""Self-correction environments: where prompts come from, what the instruction is, how an
attempt is rewarded. A trainer takes an environment and never knows which task it runs.

`SyntheticEnv` is the embedded default (char-level addition, SPEC §6).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from score.data import synthetic


@dataclasses.dataclass
class SyntheticEnv:
  """Two-attempt self-correction on a synthetic task; the instruction is the token `?`."""
  task: Any
  seed: int
  num_eval: int
  eval_seed: int

  def __post_init__(self):
    self.tokenizer = self.task.tokenizer
    self.heldout = self.task.problems(self.num_eval, seed=self.eval_seed)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return (self.tokenizer.eos_id,)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  @property
  def max_new_tokens(self) -> int:
    return self.task.max_answer_len

  @property
  def max_len(self) -> int:
    """Whole two-attempt episode: BOS + question + 2 answers + instruction (+ slack)."""
    return 1 + self.task.prompt_len + 2 * self.task.max_answer_len + 1

  @property
  def instruction(self) -> list[int]:
    return self.tokenizer.encode(synthetic.INSTRUCTION)

  def prompt_tokens(self, problem) -> list[int]:
    return [self.tokenizer.bos_id] + self.tokenizer.encode(problem.question)

  def train_problems(self, step: int, n: int, *, stream: str = "rl") -> list:
    """`n` fresh training problems for `step` (a pure function of seed, stream and step)."""
    offset = {"rl": 1, "star": 2, "pair_sft": 3}.get(stream, 4)
    return self.task.problems(n, seed=(self.seed * 7919 + offset) * 1_000_003 + step,
                              exclude=self.heldout)

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(ids)

  def reward(self, problem, response_ids: Sequence[int]) -> float:
    """1.0 for a correct attempt that ends with EOS, else 0.0."""
    if not response_ids or response_ids[-1] != self.tokenizer.eos_id:
      return 0.0
    return self.task.reward(self.decode(response_ids), problem)

  def episode_tokens(self, problem, attempts_ids: Sequence[Sequence[int]]):
    """`(tokens, turn_mask)` of an episode built from attempt token ids (EOS included)."""
    attempts = [self.decode(a) for a in attempts_ids]
    return synthetic.episode_tokens(self.tokenizer, problem.question, attempts)


def make_env(config) -> SyntheticEnv:
  """The environment of `config.task` (`name` = a synthetic task)."""
  kwargs = {k: v for k, v in config.task.items() if k != "name"}
  task = synthetic.make_task(config.task.name, **kwargs)
  return SyntheticEnv(task, seed=config.seed, num_eval=config.eval.num_problems,
                      eval_seed=config.eval.seed)


EnvFactory = Callable[[Any], Any]
