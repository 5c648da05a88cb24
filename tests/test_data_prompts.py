"""SCoRe prompts: the paper's wording, plain text for base checkpoints, chat templates."""

import pytest

from score import data
from score.data import prompts

# A minimal chat template in the usual Jinja form (ChatML-like).
_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  model = tokenizers.models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]")
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
  fast.chat_template = _TEMPLATE
  return fast


def test_paper_wording():
  assert prompts.MATH_FIRST_TURN.startswith("You are a math expert. When you respond, respond only")
  assert prompts.MATH_FIRST_TURN.endswith(
      '"Final Answer: The final answer is $answer$. I hope it is correct."')
  assert prompts.MATH_SELF_CORRECTION.startswith(
      "There might be an error in the solution above because of lack of understanding of the"
      " question. Please correct the error, if any, and rewrite the solution. Only output the"
      " final solution!")
  assert prompts.CODE_SELF_CORRECTION.endswith("Only output the final correct Python program!")


def test_plain_turn_two_extends_turn_one():
  p = data.load_math500()[0]
  x1 = prompts.first_turn_prompt(p)
  assert x1.startswith(prompts.MATH_FIRST_TURN) and p.problem in x1 and x1.endswith("Solution:")
  y1 = " The answer is 3."
  x2 = prompts.second_turn_prompt(p, y1)
  assert x2 == x1 + y1 + prompts.plain_correction_suffix("math")
  assert x2.endswith(prompts.MATH_SELF_CORRECTION + "\n\nSolution:")


def test_code_prompts_show_tests_and_use_code_instruction():
  p = data.load_mbpp("test")[0]
  assert prompts.task_of(p) == "code"
  x1 = prompts.first_turn_prompt(p)
  assert p.problem in x1 and all(t in x1 for t in p.tests)
  x2 = prompts.second_turn_prompt(p, "def remove_Occ(s, ch): return s")
  assert prompts.CODE_SELF_CORRECTION in x2 and prompts.MATH_SELF_CORRECTION not in x2
  h = data.load_humaneval()[0]
  assert h.problem.rstrip() in prompts.first_turn_prompt(h)


def test_second_turn_messages_are_the_papers_conversation():
  p = data.load_math500()[1]
  msgs = prompts.second_turn_messages(p, "y1")
  assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
  assert msgs[0]["content"] == prompts.first_turn_text(p)
  assert msgs[1]["content"] == "y1"
  assert msgs[2]["content"] == prompts.MATH_SELF_CORRECTION


def test_chat_format_uses_the_tokenizer_template(tokenizer):
  p = data.load_math500()[2]
  x1 = prompts.first_turn_prompt(p, format="chat", tokenizer=tokenizer)
  assert x1 == f"<|user|>\n{prompts.first_turn_text(p)}<|end|>\n<|assistant|>\n"
  x2 = prompts.second_turn_prompt(p, "my attempt", format="chat", tokenizer=tokenizer)
  assert x2 == (
      f"<|user|>\n{prompts.first_turn_text(p)}<|end|>\n<|assistant|>\nmy attempt<|end|>\n"
      f"<|user|>\n{prompts.MATH_SELF_CORRECTION}<|end|>\n<|assistant|>\n"
  )


def test_chat_format_without_template_is_a_clear_error(tokenizer):
  p = data.load_math500()[0]
  tokenizer = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
  tokenizer.chat_template = None
  with pytest.raises(ValueError, match="chat template"):
    prompts.first_turn_prompt(p, format="chat", tokenizer=tokenizer)
  with pytest.raises(ValueError, match="unknown prompt format"):
    prompts.first_turn_prompt(p, format="markdown")
