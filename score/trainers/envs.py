"""Self-correction environments: where prompts come from, what the instruction is, how an
attempt is rewarded. A trainer takes an environment and never knows which task it runs.

`SyntheticEnv` is the embedded default (char-level addition, SPEC §6).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import numpy as np

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

  def rewards(self, problems, responses) -> list[float]:
    return [self.reward(p, r) for p, r in zip(problems, responses)]

  def answer_key(self, problem, response_ids: Sequence[int]) -> str | None:
    """The answer a response gives, for majority voting (None without a final EOS)."""
    del problem
    if not response_ids or response_ids[-1] != self.tokenizer.eos_id:
      return None
    return self.decode(response_ids)

  def shaping_bonus(self, responses) -> list[float]:
    """Training-only reward shaping (none on synthetic tasks)."""
    return [0.0] * len(responses)

  def episode_tokens(self, problem, attempts_ids: Sequence[Sequence[int]]):
    """`(tokens, turn_mask)` of an episode built from attempt token ids (EOS included)."""
    attempts = [self.decode(a) for a in attempts_ids]
    return synthetic.episode_tokens(self.tokenizer, problem.question, attempts)


class TextEnv:
  """Self-correction on MATH or code problems with a Hugging Face tokenizer.

  Prompts are the paper's (`score.data.prompts`), as plain text for base checkpoints or through
  the tokenizer's chat template for instruct ones. Turn 2's context is turn 1's, the sampled
  tokens of y1, then the self-correction instruction's tokens. Rewards: `score.rewards.math`
  (answer equivalence in a worker pool) or the code sandbox (unit tests); never raise.
  """

  def __init__(self, *, tokenizer, train, heldout, task: str, prompt_format: str, seed: int,
               max_new_tokens: int, max_len: int, reward_timeout_s: float = 10.0,
               shaping: str = "", shaping_weight: float = 0.0):
    from score.data import prompts  # pylint: disable=g-import-not-at-top
    if task not in ("math", "code"):
      raise ValueError(f"task must be 'math' or 'code', got {task!r}")
    self.tokenizer, self.train, self.heldout = tokenizer, list(train), list(heldout)
    self.task, self.format, self.seed = task, prompt_format, seed
    self.max_new_tokens, self.max_len = max_new_tokens, max_len
    self.reward_timeout_s = reward_timeout_s
    if shaping and shaping not in SHAPING:
      raise ValueError(f"task.shaping={shaping!r}; expected '' or one of {sorted(SHAPING)}")
    self.shaping, self.shaping_weight = shaping, float(shaping_weight)
    self._prompts = prompts
    eos = tokenizer.eos_token_id
    self.eos_ids = tuple(eos if isinstance(eos, (list, tuple)) else [eos])
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
    self.instruction = self._instruction_fn(prompts.self_correction_instruction(task))
    # Self-Refine: attempt -> feedback -> refined attempt (a 3-turn episode, prompting only).
    feedback = self._instruction_fn(prompts.SELF_REFINE_FEEDBACK)
    refine = self._instruction_fn(prompts.self_refine_instruction(task))
    self.self_refine_instruction = (
        lambda turn, context, response: (feedback if turn == 1 else refine)(
            turn, context, response))

  def _instruction_fn(self, text: str):
    """Tokens of the instruction `text` after a response, for the prompt format."""
    if self.format == "chat":
      from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
      return rollouts.chat_instruction(self.tokenizer, text, eos_ids=self.eos_ids)
    cue = self._prompts.plain_correction_suffix(self.task).rsplit("\n\n", 1)[1]
    ids = self._encode(f"\n\n{text}\n\n{cue}")
    return lambda turn, context, response: list(ids)

  def _encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def prompt_tokens(self, problem) -> list[int]:
    text = self._prompts.first_turn_prompt(problem, self.task, format=self.format,
                                           tokenizer=self.tokenizer)
    ids = self._encode(text)
    bos = self.tokenizer.bos_token_id
    if self.format == "plain" and bos is not None:
      ids = [bos] + ids
    return ids

  def train_problems(self, step: int, n: int, *, stream: str = "rl") -> list:
    rng = np.random.default_rng([self.seed, zlib.crc32(stream.encode()), step])
    return [self.train[i] for i in rng.choice(len(self.train), size=n, replace=n > len(self.train))]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def rewards(self, problems, responses) -> list[float]:
    texts = [self.decode(r) for r in responses]
    if self.task == "math":
      from score.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
      return list(math_reward.rewards(texts, [p.answer for p in problems],
                                      timeout_s=self.reward_timeout_s))
    from score.rewards import code as code_reward  # pylint: disable=g-import-not-at-top
    programs = [code_program(p, code_reward.extract_code(t)) for p, t in zip(problems, texts)]
    return code_reward.rewards(programs, timeout_s=self.reward_timeout_s)

  def reward(self, problem, response_ids) -> float:
    return self.rewards([problem], [response_ids])[0]

  def answer_key(self, problem, response_ids) -> str | None:
    """The normalised final answer (`score.rewards.math`) for majority voting; None for code
    (programs are not voted on) and for a response without an answer."""
    del problem
    if self.task != "math":
      return None
    from score.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
    answer = math_reward.extract_answer(self.decode(response_ids))
    return None if answer is None else math_reward.normalize(answer)

  def shaping_bonus(self, responses) -> list[float]:
    """`shaping_weight × SHAPING[shaping](self, ids)` per response: a training-only term that
    RL adds to the oracle's reward (evaluation never sees it). Off ('') by default."""
    if not self.shaping:
      return [0.0] * len(responses)
    term = SHAPING[self.shaping]
    return [self.shaping_weight * term(self, list(ids)) for ids in responses]

  def episode_tokens(self, problem, attempts_ids):
    tokens = self.prompt_tokens(problem)
    turn_mask = [0] * len(tokens)
    for k, ids in enumerate(attempts_ids, start=1):
      if k > 1:
        p = (self.instruction(k - 1, tokens, list(ids)) if callable(self.instruction)
             else self.instruction)
        tokens, turn_mask = tokens + list(p), turn_mask + [0] * len(p)
      tokens, turn_mask = tokens + list(ids), turn_mask + [k] * len(ids)
    return tokens, turn_mask


def known_token_fraction(env: TextEnv, ids: Sequence[int]) -> float:
  """Fraction of a response's tokens that the tokenizer can write (ids below its size): a
  format term a random-weight model with a padded vocabulary earns unevenly, so that its
  advantages are non-zero (the rehearsal's signal; a trained model scores 1)."""
  return sum(i < len(env.tokenizer) for i in ids) / max(len(ids), 1)


# Reward shaping by name (`task.shaping`).
SHAPING = {"known_tokens": known_token_fraction}


def code_program(problem, code: str) -> str:
  """The test program of a code `Problem` (`score.data.records`) for a candidate solution."""
  setup = problem.metadata.get("test_setup_code", "") or ""
  return "\n".join([code, setup, *problem.tests]) + "\n"


def _text_env(config):
  from score.data import loaders  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  t = config.task
  train = loaders.load(t.train, **dict(t.get("train_kwargs", {})))
  heldout = loaders.load(t.eval, **dict(t.get("eval_kwargs", {})))
  if config.eval.num_problems:
    heldout = heldout[:config.eval.num_problems]
  return TextEnv(tokenizer=hf.load_tokenizer(config.model.model_dir), train=train,
                 heldout=heldout, task=t.name, prompt_format=t.prompt_format, seed=config.seed,
                 max_new_tokens=t.max_new_tokens, max_len=t.max_len,
                 reward_timeout_s=t.reward_timeout_s, shaping=t.get("shaping", ""),
                 shaping_weight=t.get("shaping_weight", 0.0))


def make_env(config):
  """The environment of `config.task`: a synthetic task name, or `math` / `code`."""
  if config.task.name in ("math", "code"):
    return _text_env(config)
  kwargs = {k: v for k, v in config.task.items() if k != "name"}
  task = synthetic.make_task(config.task.name, **kwargs)
  return SyntheticEnv(task, seed=config.seed, num_eval=config.eval.num_problems,
                      eval_seed=config.eval.seed)


def make_runlocal_model(config, workdir: str):
  """A tiny random checkpoint with a tokenizer trained on the task's problems (a smoke run of
  the text-environment path, not a result); sets `config.model.model_dir` to it."""
  import os  # pylint: disable=g-import-not-at-top
  from score.data import loaders  # pylint: disable=g-import-not-at-top
  from score.utils import tiny_checkpoint  # pylint: disable=g-import-not-at-top
  problems = loaders.load(config.task.train, **dict(config.task.get("train_kwargs", {})))
  texts = [p.problem + "\n" + (p.solution or "") for p in problems[:300]]
  path = os.path.join(workdir, "tiny_model")
  tiny_checkpoint.make_tiny_checkpoint(path, texts, seed=config.seed)
  with config.unlocked():
    config.model.model_dir = path
