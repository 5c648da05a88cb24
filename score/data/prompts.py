"""SCoRe prompts: the first attempt ``x1`` and the self-correction turn ``x2 = x1 ⊕ y1 ⊕ p``.

Kumar et al., 2024, "Training Language Models to Self-Correct via Reinforcement Learning"
(arXiv 2409.12917), Appendix C. The two MATH instructions below are quoted from the paper.
For code the spec quotes only the ending of the self-correction instruction ("Only output the
final correct Python program!"); the rest of `CODE_SELF_CORRECTION` mirrors the MATH wording
and is ours. The MBPP first-turn task format is the one of the MBPP paper (Austin et al.,
2021); HumanEval's first turn is its own prompt (a signature and docstring to complete).

Two renderings of the same conversation:

* **chat** (instruct checkpoints): messages ``[user: x1]`` for turn 1 and
  ``[user: x1, assistant: y1, user: p]`` for turn 2, rendered with
  ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``;
* **plain** (base checkpoints): ``x1`` as text ending in ``"Solution:"`` and
  ``x2 = x1 + y1 + "\\n\\n" + p + "\\n\\nSolution:"``, so the turn-2 prompt extends the turn-1
  prompt and attempt token for token (`plain_correction_suffix` is the appended text).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from score.data.records import Problem

__all__ = [
    "MATH_FIRST_TURN",
    "MATH_SELF_CORRECTION",
    "CODE_SELF_CORRECTION",
    "CODE_FIRST_TURN",
    "Task",
    "task_of",
    "first_turn_text",
    "first_turn_messages",
    "second_turn_messages",
    "first_turn_prompt",
    "second_turn_prompt",
    "plain_correction_suffix",
    "self_correction_instruction",
    "SELF_REFINE_FEEDBACK",
    "self_refine_instruction",
]

Task = Literal["math", "code"]

# --- Quoted from the paper (SCoRe, Appendix C). -------------------------------------------
MATH_FIRST_TURN = (
    "You are a math expert. When you respond, respond only with the Solution of the final "
    "Problem, thinking step by step. At the end of the Solution, when you give your final "
    'answer, write it in the form "Final Answer: The final answer is $answer$. I hope it is '
    'correct."'
)
MATH_SELF_CORRECTION = (
    "There might be an error in the solution above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final solution! At the end of the Solution, when you give your final answer, write it in "
    'the form "Final Answer: The final answer is $answer$. I hope it is correct."'
)
# --- Code: the ending is the paper's; the first sentences mirror the MATH instruction. ------
CODE_SELF_CORRECTION = (
    "There might be an error in the code above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final correct Python program!"
)
# MBPP task format (Austin et al., 2021).
CODE_FIRST_TURN = "You are an expert Python programmer, and here is your task: {text} " \
    "Your code should pass these tests:\n\n{tests}"


# --- Self-Refine (Madaan et al., 2023) as the SCoRe paper's prompting baseline: the model first
# critiques its attempt, then rewrites it. The wording is ours, in the style of Self-Refine.
SELF_REFINE_FEEDBACK = (
    "Review your previous answer and find problems with it. Do not rewrite the answer yet: "
    "only list the problems, if any."
)


def self_refine_instruction(task: Task) -> str:
  """The refine turn of Self-Refine: rewrite the attempt given the model's own feedback."""
  return ("Based on the problems you found, improve your answer. "
          + self_correction_instruction(task).split(". ", 1)[1])


def task_of(problem: Problem) -> Task:
  """``"code"`` for problems graded by tests, else ``"math"``."""
  return "code" if problem.is_code else "math"


def self_correction_instruction(task: Task) -> str:
  if task == "math":
    return MATH_SELF_CORRECTION
  if task == "code":
    return CODE_SELF_CORRECTION
  raise ValueError(f"unknown task {task!r}; expected 'math' or 'code'")


def _code_problem_text(problem: Problem) -> str:
  if problem.id.startswith("HumanEval/") or "test" in problem.metadata:
    # HumanEval: complete the given function.
    return (
        "Complete the following Python function. Only output the final correct Python "
        f"program!\n\n```python\n{problem.problem.rstrip()}\n```"
    )
  return CODE_FIRST_TURN.format(text=problem.problem.strip(), tests="\n".join(problem.tests))


def first_turn_text(problem: Problem, task: Task | None = None) -> str:
  """The user turn ``x1`` as text: instruction, then the problem."""
  task = task or task_of(problem)
  if task == "math":
    return f"{MATH_FIRST_TURN}\n\nProblem:\n{problem.problem.strip()}"
  if task == "code":
    return _code_problem_text(problem)
  raise ValueError(f"unknown task {task!r}; expected 'math' or 'code'")


def first_turn_messages(problem: Problem, task: Task | None = None) -> list[dict[str, str]]:
  """``[user: x1]``."""
  return [{"role": "user", "content": first_turn_text(problem, task)}]


def second_turn_messages(
    problem: Problem, first_attempt: str, task: Task | None = None
) -> list[dict[str, str]]:
  """``[user: x1, assistant: y1, user: p]`` (the paper's turn-2 conversation)."""
  task = task or task_of(problem)
  return [
      {"role": "user", "content": first_turn_text(problem, task)},
      {"role": "assistant", "content": first_attempt},
      {"role": "user", "content": self_correction_instruction(task)},
  ]


def _answer_cue(task: Task) -> str:
  return "Solution:" if task == "math" else "```python\n"


def plain_correction_suffix(task: Task) -> str:
  """Text appended after the first attempt in the plain format: ``"\\n\\n" + p + cue``."""
  cue = _answer_cue(task)
  return f"\n\n{self_correction_instruction(task)}\n\n{cue}"


def _render(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
  if getattr(tokenizer, "chat_template", None) is None:
    raise ValueError(
        "format='chat' needs a tokenizer with a chat template (tokenizer.chat_template is "
        "None); use format='plain' for base checkpoints"
    )
  return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def first_turn_prompt(
    problem: Problem,
    task: Task | None = None,
    *,
    format: Literal["plain", "chat"] = "plain",  # pylint: disable=redefined-builtin
    tokenizer: Any = None,
) -> str:
  """The turn-1 prompt ``x1`` as a string.

  ``format="plain"``: ``first_turn_text + "\\n\\nSolution:"`` (code: a ```` ```python ````
  cue). ``format="chat"``: the tokenizer's chat template applied to `first_turn_messages`
  with ``add_generation_prompt=True``.
  """
  task = task or task_of(problem)
  if format == "chat":
    return _render(tokenizer, first_turn_messages(problem, task))
  if format == "plain":
    return f"{first_turn_text(problem, task)}\n\n{_answer_cue(task)}"
  raise ValueError(f"unknown prompt format {format!r}; expected 'plain' or 'chat'")


def second_turn_prompt(
    problem: Problem,
    first_attempt: str,
    task: Task | None = None,
    *,
    format: Literal["plain", "chat"] = "plain",  # pylint: disable=redefined-builtin
    tokenizer: Any = None,
) -> str:
  """The turn-2 prompt ``x2 = x1 ⊕ y1 ⊕ p`` as a string.

  ``format="plain"``: ``first_turn_prompt(...) + first_attempt + plain_correction_suffix``.
  ``format="chat"``: the chat template applied to `second_turn_messages`.
  """
  task = task or task_of(problem)
  if format == "chat":
    return _render(tokenizer, second_turn_messages(problem, first_attempt, task))
  if format == "plain":
    return first_turn_prompt(problem, task) + first_attempt + plain_correction_suffix(task)
  raise ValueError(f"unknown prompt format {format!r}; expected 'plain' or 'chat'")
