r"""RFT-style graders built from config dicts; every grader scores in [0, 1].

The config schema follows OpenAI's reinforcement fine-tuning graders (SPEC §3)::

    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
     "reference": "{{item.answer}}", "operation": "eq"}

`build_grader(config)` returns a `Grader`: ``grader(sample, item) -> float`` for one example
and ``grader.batch(samples, items) -> list[float]`` for many (model graders then make one
batched `generate_fn` call, python graders run their sandboxes in parallel). A *sample* is the
model's output, ``{"output_text": "...", "output_json": {...}}`` (a plain string is taken as
``output_text``; ``output_json`` is parsed from ``output_text`` on demand); an *item* is the
dataset row. Graders are looked up by ``type`` in `GRADERS` (extend it with `register`).

Types
-----
* ``string_check``: ``operation`` ``eq`` (input == reference), ``ne``, ``like`` (reference is
  a substring of input, case-sensitive), ``ilike`` (the same, case-insensitive) → 1.0 / 0.0.
* ``text_similarity``: ``evaluation_metric`` ∈ `SIMILARITY_METRICS`, optional
  ``pass_threshold`` (then 1.0 if the similarity is ≥ the threshold, else 0.0):

  - ``fuzzy_match``: rapidfuzz ``fuzz.ratio / 100`` = ``1 − indel_distance / (|a| + |b|)``
    on characters.
  - ``bleu``: sacrebleu ``sentence_bleu(input, [reference]).score / 100`` (13a tokenizer,
    ``exp`` smoothing, brevity penalty).
  - ``gleu``: nltk ``sentence_gleu`` (Google-BLEU: min(n-gram precision, recall) over 1-4
    grams) on `tokenize` tokens.
  - ``meteor``: nltk ``meteor_score`` (α = 0.9, β = 3, γ = 0.5, lowercased, Porter stems) on
    `tokenize` tokens, **without WordNet**: no WordNet data can be downloaded here, so a
    stand-in with no synsets is passed and only the exact and stem matching stages run. Scores
    can therefore be *lower* than official METEOR when synonyms would have matched.
  - ``cosine``: cosine similarity of term-frequency vectors of lowercased word tokens
    (bag of words; no embedding model).
  - ``rouge_1`` … ``rouge_5``, ``rouge_l``: F-measure of ``rouge-score``'s ``rougeN`` /
    ``rougeL`` (its own tokenizer: lowercase, alphanumeric tokens; no stemming).

  Both texts empty → 1.0; exactly one empty → 0.0 (for every metric).
* ``python``: ``source`` defines ``grade(sample, item) -> float``; it runs in
  `score.rewards.sandbox` (a fresh ``python -I -S`` with the standard library only, no network,
  time and memory limits), with the sample and item passed as JSON. Anything but a finite
  number → 0.0 (logged); values are clipped to [0, 1].
* ``score_model``: ``input`` (a template string or a list of ``{"role", "content"}``
  messages) is rendered and sent to the injected ``generate_fn(prompts) -> outputs``;
  the reply's score (a ``Score: x`` line, as `score.rewards.judge` parses it, or a reply that
  is just a number) must lie in ``range`` (default [0, 1]) and is mapped linearly to [0, 1];
  optional ``pass_threshold`` (on the raw range scale) → 0/1. The OpenAI keys ``model``
  and ``sampling_params`` are accepted and ignored: `generate_fn` decides both.
* ``label_model``: the same prompt rendering; the reply is matched against ``labels`` (the
  whole reply, else a ``Label:`` line, else the only label mentioned as a whole word); 1.0
  if it is in ``passing_labels``. No or several different labels → 0.0 (logged).
* ``multi``: named sub-graders combined by ``calculate_output``, a formula over their names
  with numbers, ``+ − * / ^`` (``^`` is power, right-associative, binds tighter than unary
  minus), parentheses and ``min max abs floor ceil exp sqrt log``. It is parsed by a
  recursive-descent parser, never ``eval``: anything else raises ValueError naming the
  offending token. A math error at grading time (division by zero, ``log(0)``, overflow)
  scores 0.0 (logged); the result is clipped to [0, 1].

Templates
---------
``{{sample.output_text}}``, ``{{sample.output_json.answer}}``, ``{{item.reference}}``,
``{{item.answers.0}}`` (list index): a dotted path from ``sample`` or ``item``. Strings are
inserted as they are, other values as JSON. A field missing from the *item* or a top-level
sample field that does not exist raises `TemplateError` (a data bug); a field missing from
the model's ``output_json``, or output text that is not JSON, scores 0.0 (a model failure).
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import json
import logging
import math
import re
import secrets
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "Grader",
    "GRADERS",
    "SIMILARITY_METRICS",
    "TemplateError",
    "ModelOutputError",
    "build_grader",
    "register",
    "render",
    "resolve",
    "tokenize",
    "similarity",
    "parse_formula",
]

GenerateFn = Callable[[list], list]

# ----------------------------------------------------------------------------------------------
# Templates.
# ----------------------------------------------------------------------------------------------


class TemplateError(ValueError):
  """A template names a field that the item (or the sample's structure) does not have."""


class ModelOutputError(ValueError):
  """The model's output lacks what a template asks for (bad JSON, missing field)."""


_TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH_RE = re.compile(r"(sample|item)(\.[^.\s{}]+)+")


def _as_sample(sample: Any) -> Mapping[str, Any]:
  if isinstance(sample, str):
    return {"output_text": sample}
  if not isinstance(sample, Mapping):
    raise TypeError(f"graders: a sample must be a dict or a string, got {type(sample).__name__}")
  return sample


def _output_json(sample: Mapping[str, Any]) -> Any:
  if "output_json" in sample:
    return sample["output_json"]
  if "output_text" not in sample:
    raise TemplateError("sample has neither 'output_json' nor 'output_text'")
  try:
    return json.loads(sample["output_text"])
  except (TypeError, ValueError) as e:
    raise ModelOutputError(f"sample.output_text is not valid JSON ({e})") from None


def resolve(path: str, sample: Any, item: Mapping[str, Any] | None) -> Any:
  """The value at a dotted `path` such as ``sample.output_json.answer`` or ``item.a.0``."""
  if not _PATH_RE.fullmatch(path):
    raise TemplateError(f"template path {path!r}: expected 'sample.<field>...' or "
                        f"'item.<field>...'")
  root, *parts = path.split(".")
  if root == "sample":
    sample = _as_sample(sample)
    if parts[0] == "output_json":
      value, seen, model_side = _output_json(sample), "sample.output_json", True
      parts = parts[1:]
    else:
      value, seen, model_side = sample, "sample", False
  else:
    if item is None:
      raise TemplateError(f"template path {path!r}: no item was given")
    value, seen, model_side = item, "item", False
  for part in parts:
    if isinstance(value, Mapping) and part in value:
      value = value[part]
    elif isinstance(value, (list, tuple)) and re.fullmatch(r"-?\d+", part) and (
        -len(value) <= int(part) < len(value)):
      value = value[int(part)]
    else:
      if isinstance(value, Mapping):
        detail = f"it has fields {sorted(map(str, value))[:20]}"
      elif isinstance(value, (list, tuple)):
        detail = f"it is a list of length {len(value)}"
      else:
        detail = f"it is a {type(value).__name__}, not a dict"
      msg = f"template path {path!r}: {seen} has no field {part!r} ({detail})"
      raise (ModelOutputError if model_side else TemplateError)(msg)
    seen += "." + part
  return value


def _json_default(value: Any) -> Any:
  """numpy/JAX scalars and arrays → Python values; anything else → its str."""
  if hasattr(value, "tolist"):
    return value.tolist()
  if hasattr(value, "item"):
    return value.item()
  return str(value)


def _to_text(value: Any) -> str:
  if isinstance(value, str):
    return value
  return json.dumps(value, ensure_ascii=False, default=_json_default)


def render(template: str, sample: Any, item: Mapping[str, Any] | None) -> str:
  """Replaces every ``{{path}}`` in `template` by `resolve`'s value (strings as they are,
  anything else as JSON)."""
  if not isinstance(template, str):
    raise TemplateError(f"a template must be a string, got {type(template).__name__}")
  return _TEMPLATE_RE.sub(lambda m: _to_text(resolve(m.group(1), sample, item)), template)


def _check_template(template: Any, where: str) -> str:
  if not isinstance(template, str):
    raise ValueError(f"{where}: must be a template string, got {type(template).__name__}")
  for m in _TEMPLATE_RE.finditer(template):
    if not _PATH_RE.fullmatch(m.group(1)):
      raise ValueError(f"{where}: bad template path {m.group(1)!r} (expected "
                       f"'sample.<field>...' or 'item.<field>...')")
  return template


# ----------------------------------------------------------------------------------------------
# Grader base and registry.
# ----------------------------------------------------------------------------------------------


class Grader:
  """A built grader: ``grader(sample, item) -> float`` and ``grader.batch(samples, items)``.

  Subclasses implement `_grade_one` (or override `batch`). A `ModelOutputError` while
  grading one example scores 0.0 and is logged; `TemplateError` (a data bug) propagates.
  """

  type_name = "grader"

  def __init__(self, name: str):
    self.name = name

  def __call__(self, sample: Any, item: Mapping[str, Any] | None = None) -> float:
    return self.batch([sample], [item])[0]

  def batch(self, samples: Sequence[Any], items: Sequence[Mapping[str, Any] | None]
            ) -> list[float]:
    _check_lengths(self.name, samples, items)
    return [self._safe_one(s, i) for s, i in zip(samples, items)]

  def _safe_one(self, sample, item) -> float:
    try:
      return _unit(self._grade_one(sample, item), self.name)
    except ModelOutputError as e:
      logger.warning("grader %r: %s; scoring 0", self.name, e)
      return 0.0

  def _grade_one(self, sample, item) -> float:
    raise NotImplementedError

  def __repr__(self):
    return f"{type(self).__name__}(name={self.name!r})"


def _check_lengths(name, samples, items):
  if len(samples) != len(items):
    raise ValueError(f"grader {name!r}: {len(samples)} samples but {len(items)} items")


def _unit(x: float, name: str) -> float:
  """Clips to [0, 1]; NaN → 0 (logged)."""
  x = float(x)
  if math.isnan(x):
    logger.warning("grader %r produced NaN; scoring 0", name)
    return 0.0
  return min(1.0, max(0.0, x))


@dataclasses.dataclass(frozen=True)
class _BuildContext:
  generate_fn: GenerateFn | None
  sandbox_options: Mapping[str, Any]


GRADERS: dict[str, Callable[[Mapping[str, Any], _BuildContext], Grader]] = {}


def register(type_name: str):
  """Decorator: registers ``builder(config, context) -> Grader`` under `type_name`."""

  def deco(builder):
    if type_name in GRADERS:
      raise ValueError(f"grader type {type_name!r} is already registered")
    GRADERS[type_name] = builder
    return builder

  return deco


def _check_keys(config: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
  kind = config.get("type")
  unknown = set(config) - allowed - {"type", "name"}
  if unknown:
    raise ValueError(f"{kind} grader {config.get('name')!r}: unknown keys {sorted(unknown)} "
                     f"(allowed: {sorted(allowed | {'type', 'name'})})")
  missing = required - set(config)
  if missing:
    raise ValueError(f"{kind} grader {config.get('name')!r}: missing keys {sorted(missing)}")


def build_grader(config: Mapping[str, Any], *, generate_fn: GenerateFn | None = None,
                 sandbox_options: Mapping[str, Any] | None = None) -> Grader:
  """Builds a grader from an RFT-style config dict (see the module docstring).

  Args:
    config: the grader's config; ``type`` picks the builder in `GRADERS`.
    generate_fn: ``generate_fn(prompts: list[str]) -> list[str]`` for ``score_model`` and
      ``label_model`` graders (e.g. a closure over `score.sampling.generate`); this module
      imports no model.
    sandbox_options: extra keyword arguments of `score.rewards.sandbox.run` for ``python``
      graders (e.g. ``memory_mb``).

  Raises:
    ValueError: an unknown type, unknown or missing keys, a bad operation/metric/formula.
  """
  if not isinstance(config, Mapping):
    raise ValueError(f"build_grader: config must be a dict, got {type(config).__name__}")
  kind = config.get("type")
  if kind not in GRADERS:
    raise ValueError(f"build_grader: unknown grader type {kind!r}; known: {sorted(GRADERS)}")
  ctx = _BuildContext(generate_fn, dict(sandbox_options or {}))
  return GRADERS[kind](config, ctx)


def _name(config, default):
  name = config.get("name", default)
  if not isinstance(name, str) or not name:
    raise ValueError(f"{config.get('type')} grader: name must be a non-empty string, "
                     f"got {name!r}")
  return name


def _threshold(config) -> float | None:
  t = config.get("pass_threshold")
  if t is None:
    return None
  if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
    raise ValueError(f"{config.get('type')} grader {config.get('name')!r}: pass_threshold "
                     f"must be a number, got {t!r}")
  return float(t)


# ----------------------------------------------------------------------------------------------
# string_check.
# ----------------------------------------------------------------------------------------------

STRING_OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, ref: a == ref,
    "ne": lambda a, ref: a != ref,
    "like": lambda a, ref: ref in a,
    "ilike": lambda a, ref: ref.casefold() in a.casefold(),
}


class StringCheck(Grader):
  type_name = "string_check"

  def __init__(self, name, input_template, reference_template, operation):
    super().__init__(name)
    self.input_template = input_template
    self.reference_template = reference_template
    self.operation = operation

  def _grade_one(self, sample, item):
    a = render(self.input_template, sample, item)
    ref = render(self.reference_template, sample, item)
    return 1.0 if STRING_OPERATIONS[self.operation](a, ref) else 0.0


@register("string_check")
def _build_string_check(config, ctx):
  _check_keys(config, {"input", "reference", "operation"}, {"input", "reference", "operation"})
  name = _name(config, "string_check")
  op = config["operation"]
  if op not in STRING_OPERATIONS:
    raise ValueError(f"string_check grader {name!r}: unknown operation {op!r}; "
                     f"known: {sorted(STRING_OPERATIONS)}")
  return StringCheck(name, _check_template(config["input"], f"{name}.input"),
                     _check_template(config["reference"], f"{name}.reference"), op)


# ----------------------------------------------------------------------------------------------
# text_similarity.
# ----------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
  """Word and punctuation tokens (``\\w+`` or one non-space symbol); needs no nltk data."""
  return _TOKEN_RE.findall(text)


def _fuzzy_match(a: str, ref: str) -> float:
  from rapidfuzz import fuzz  # pylint: disable=g-import-not-at-top

  return fuzz.ratio(a, ref) / 100.0


def _bleu(a: str, ref: str) -> float:
  import sacrebleu  # pylint: disable=g-import-not-at-top

  return sacrebleu.sentence_bleu(a, [ref]).score / 100.0


def _gleu(a: str, ref: str) -> float:
  from nltk.translate.gleu_score import sentence_gleu  # pylint: disable=g-import-not-at-top

  return sentence_gleu([tokenize(ref)], tokenize(a))


class _NoWordNet:
  """Stands in for nltk's WordNet reader (whose data cannot be downloaded here): no synsets,
  so METEOR's synonym stage matches nothing."""

  def synsets(self, *args, **kwargs):
    return []


def _meteor(a: str, ref: str) -> float:
  from nltk.translate.meteor_score import meteor_score  # pylint: disable=g-import-not-at-top

  return meteor_score([tokenize(ref)], tokenize(a), wordnet=_NoWordNet())


def _cosine(a: str, ref: str) -> float:
  va = collections.Counter(re.findall(r"\w+", a.lower()))
  vb = collections.Counter(re.findall(r"\w+", ref.lower()))
  dot = sum(c * vb[t] for t, c in va.items())
  na = math.sqrt(sum(c * c for c in va.values()))
  nb = math.sqrt(sum(c * c for c in vb.values()))
  return dot / (na * nb) if na and nb else 0.0


def _rouge(kind: str) -> Callable[[str, str], float]:
  def metric(a: str, ref: str) -> float:
    from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=False)
    return scorer.score(ref, a)[kind].fmeasure  # score(target, prediction)

  return metric


SIMILARITY_METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": _fuzzy_match,
    "bleu": _bleu,
    "gleu": _gleu,
    "meteor": _meteor,
    "cosine": _cosine,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}


def similarity(metric: str, text: str, reference: str) -> float:
  """`SIMILARITY_METRICS[metric](text, reference)` in [0, 1]; both empty → 1, one empty → 0."""
  if metric not in SIMILARITY_METRICS:
    raise ValueError(f"unknown similarity metric {metric!r}; known: {sorted(SIMILARITY_METRICS)}")
  if not text.strip() or not reference.strip():
    return 1.0 if not text.strip() and not reference.strip() else 0.0
  return _unit(SIMILARITY_METRICS[metric](text, reference), metric)


class TextSimilarity(Grader):
  type_name = "text_similarity"

  def __init__(self, name, input_template, reference_template, metric, pass_threshold):
    super().__init__(name)
    self.input_template = input_template
    self.reference_template = reference_template
    self.metric = metric
    self.pass_threshold = pass_threshold

  def _grade_one(self, sample, item):
    a = render(self.input_template, sample, item)
    ref = render(self.reference_template, sample, item)
    try:
      s = similarity(self.metric, a, ref)
    except Exception as e:  # pylint: disable=broad-except  (a library choking on odd text)
      logger.warning("grader %r: %s failed (%s: %s); scoring 0", self.name, self.metric,
                     type(e).__name__, e)
      return 0.0
    if self.pass_threshold is not None:
      return 1.0 if s >= self.pass_threshold else 0.0
    return s


@register("text_similarity")
def _build_text_similarity(config, ctx):
  _check_keys(config, {"input", "reference", "evaluation_metric", "pass_threshold"},
              {"input", "reference", "evaluation_metric"})
  name = _name(config, "text_similarity")
  metric = config["evaluation_metric"]
  if metric not in SIMILARITY_METRICS:
    raise ValueError(f"text_similarity grader {name!r}: unknown evaluation_metric {metric!r}; "
                     f"known: {sorted(SIMILARITY_METRICS)}")
  return TextSimilarity(name, _check_template(config["input"], f"{name}.input"),
                        _check_template(config["reference"], f"{name}.reference"), metric,
                        _threshold(config))


# ----------------------------------------------------------------------------------------------
# python (sandboxed).
# ----------------------------------------------------------------------------------------------

_HARNESS = """

import json as _score_json
_score_sample = _score_json.loads({sample!r})
_score_item = _score_json.loads({item!r})
_score_value = grade(_score_sample, _score_item)
print({marker!r} + _score_json.dumps(float(_score_value)))
"""


class PythonGrader(Grader):
  """Runs the user's ``grade(sample, item)`` in `score.rewards.sandbox`, one run per example.

  The sample and item are embedded as JSON string literals (data, never code); the score
  comes back on stdout behind a random per-run marker, so that text the program prints (the
  model's output, say) cannot be taken for the score. The grader's own source is trusted
  code of the user's: it could read the marker from its program file.
  """

  type_name = "python"

  def __init__(self, name, source, timeout_s, pass_threshold, sandbox_options):
    super().__init__(name)
    self.source = source
    self.timeout_s = timeout_s
    self.pass_threshold = pass_threshold
    self.sandbox_options = dict(sandbox_options)

  def _program(self, sample, item) -> tuple[str, str]:
    sample = dict(_as_sample(sample))
    if "output_json" not in sample:
      try:
        sample["output_json"] = _output_json(sample)
      except (ModelOutputError, TemplateError):
        sample["output_json"] = None
    marker = f"__score_grade_{secrets.token_hex(8)}__="
    harness = _HARNESS.format(sample=json.dumps(sample, default=_json_default),
                              item=json.dumps(item, default=_json_default),
                              marker=marker)
    return self.source + harness, marker

  def _score(self, result, marker) -> float:
    if not result.passed:
      logger.warning("grader %r: the python grader %s (%s); scoring 0. stderr tail: %s",
                     self.name, result.status, result.reason, (result.stderr or "")[-300:])
      return 0.0
    lines = [ln for ln in (result.stdout or "").splitlines() if ln.startswith(marker)]
    if not lines:
      logger.warning("grader %r: the python grader printed no score; scoring 0", self.name)
      return 0.0
    try:
      value = float(json.loads(lines[-1][len(marker):]))
    except (ValueError, TypeError):
      logger.warning("grader %r: unreadable score %r; scoring 0", self.name, lines[-1][:100])
      return 0.0
    if not math.isfinite(value):
      logger.warning("grader %r: grade() returned %r; scoring 0", self.name, value)
      return 0.0
    if self.pass_threshold is not None:
      return 1.0 if value >= self.pass_threshold else 0.0
    return value

  def batch(self, samples, items):
    from score.rewards import sandbox  # pylint: disable=g-import-not-at-top

    _check_lengths(self.name, samples, items)
    programs = [self._program(s, i) for s, i in zip(samples, items)]
    jobs = [{"program": p} for p, _ in programs]
    results = sandbox.run_many(jobs, timeout_s=self.timeout_s, **self.sandbox_options)
    return [_unit(self._score(r, marker), self.name)
            for r, (_, marker) in zip(results, programs)]


@register("python")
def _build_python(config, ctx):
  _check_keys(config, {"source", "image_tag", "timeout_s", "pass_threshold"}, {"source"})
  name = _name(config, "python")
  source = config["source"]
  if not isinstance(source, str):
    raise ValueError(f"python grader {name!r}: source must be a string")
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
    raise ValueError(f"python grader {name!r}: source does not parse: {e}") from None
  if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "grade"
             for n in tree.body):
    raise ValueError(f"python grader {name!r}: source must define a top-level "
                     f"'def grade(sample, item)'")
  timeout_s = float(config.get("timeout_s", 10.0))
  if not timeout_s > 0:
    raise ValueError(f"python grader {name!r}: timeout_s must be > 0")
  return PythonGrader(name, source, timeout_s, _threshold(config), ctx.sandbox_options)


# ----------------------------------------------------------------------------------------------
# score_model / label_model.
# ----------------------------------------------------------------------------------------------


def _check_input_messages(value, where):
  if isinstance(value, str):
    return _check_template(value, where)
  if not isinstance(value, list) or not value:
    raise ValueError(f"{where}: must be a template string or a non-empty list of "
                     f"{{'role', 'content'}} messages")
  for i, msg in enumerate(value):
    if not isinstance(msg, Mapping) or "content" not in msg:
      raise ValueError(f"{where}[{i}]: a message needs a 'content' template")
    _check_template(msg["content"], f"{where}[{i}].content")
  return value


def _render_prompt(input_, sample, item) -> str:
  """A template string, or messages joined as ``Role: content`` blocks (one message: just
  its content). Chat formatting is left to `generate_fn`."""
  if isinstance(input_, str):
    return render(input_, sample, item)
  parts = [(str(m.get("role", "user")), render(m["content"], sample, item)) for m in input_]
  if len(parts) == 1:
    return parts[0][1]
  return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in parts)


class _ModelGrader(Grader):

  def __init__(self, name, input_, generate_fn):
    super().__init__(name)
    self.input = input_
    self.generate_fn = generate_fn

  def _parse(self, reply: str) -> float:
    raise NotImplementedError

  def batch(self, samples, items):
    _check_lengths(self.name, samples, items)
    out = [0.0] * len(samples)
    prompts, where = [], []
    for k, (s, i) in enumerate(zip(samples, items)):
      try:
        prompts.append(_render_prompt(self.input, s, i))
        where.append(k)
      except ModelOutputError as e:
        logger.warning("grader %r: %s; scoring 0", self.name, e)
    if not prompts:
      return out
    replies = list(self.generate_fn(prompts))
    if len(replies) != len(prompts):
      raise ValueError(f"grader {self.name!r}: generate_fn returned {len(replies)} outputs "
                       f"for {len(prompts)} prompts")
    for k, reply in zip(where, replies):
      out[k] = _unit(self._parse("" if reply is None else str(reply)), self.name)
    return out


_BARE_NUMBER_RE = re.compile(r"\s*[-+]?(?:\d+(?:\.\d+)?|\.\d+)\s*\.?\s*")


class ScoreModel(_ModelGrader):
  type_name = "score_model"

  def __init__(self, name, input_, generate_fn, lo, hi, pass_threshold):
    super().__init__(name, input_, generate_fn)
    self.lo, self.hi, self.pass_threshold = lo, hi, pass_threshold

  def _parse(self, reply):
    from score.rewards import judge  # pylint: disable=g-import-not-at-top

    if _BARE_NUMBER_RE.fullmatch(reply):
      value = float(reply.strip().rstrip("."))
    else:
      # "Score: x" lines, read with the judge's patterns (x, x/high, "x out of high").
      nums = []
      for line in judge._SCORE_RE.finditer(reply):  # pylint: disable=protected-access
        m = judge._NUMBER_RE.match(line.group("value").strip())  # pylint: disable=protected-access
        if m is None:
          continue
        den = m.group("den") or m.group("den2")
        if (m.group("suffix") or "").strip() == "%" or (den is not None and
                                                        float(den) != self.hi):
          continue
        nums.append(float(m.group("num")))
      if len(set(nums)) != 1:
        logger.warning("grader %r: %s in the model's reply %.100r; scoring 0", self.name,
                       "several different scores" if nums else "no score", reply)
        return 0.0
      value = nums[0]
    if not self.lo <= value <= self.hi:
      logger.warning("grader %r: score %g outside range [%g, %g]; scoring 0", self.name,
                     value, self.lo, self.hi)
      return 0.0
    if self.pass_threshold is not None:
      return 1.0 if value >= self.pass_threshold else 0.0
    return (value - self.lo) / (self.hi - self.lo)


def _need_generate_fn(ctx, kind, name):
  if ctx.generate_fn is None:
    raise ValueError(f"{kind} grader {name!r} needs a model: pass "
                     f"build_grader(config, generate_fn=...)")
  return ctx.generate_fn


@register("score_model")
def _build_score_model(config, ctx):
  _check_keys(config, {"input", "model", "range", "sampling_params", "pass_threshold"},
              {"input"})
  name = _name(config, "score_model")
  rng = config.get("range", [0, 1])
  if (not isinstance(rng, (list, tuple)) or len(rng) != 2
      or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng)
      or not rng[0] < rng[1]):
    raise ValueError(f"score_model grader {name!r}: range must be [low, high] with low < high, "
                     f"got {rng!r}")
  return ScoreModel(name, _check_input_messages(config["input"], f"{name}.input"),
                    _need_generate_fn(ctx, "score_model", name), float(rng[0]), float(rng[1]),
                    _threshold(config))


class LabelModel(_ModelGrader):
  type_name = "label_model"

  def __init__(self, name, input_, generate_fn, labels, passing):
    super().__init__(name, input_, generate_fn)
    self.labels = list(labels)
    self.passing = set(passing)

  def label_of(self, reply: str) -> str | None:
    """The label a reply names, or None (rules in the module docstring)."""
    by_key = {lab.casefold(): lab for lab in self.labels}
    strip = " \t\n\"'`*_.!:;()[]"
    whole = reply.strip(strip).casefold()
    if whole in by_key:
      return by_key[whole]
    lines = re.findall(r"\blabel\b[ \t]*[*_]*[:：][ \t*_\"'`]*([^\n]*)", reply, re.IGNORECASE)
    found = {by_key[v.strip(strip).casefold()] for v in lines if v.strip(strip).casefold()
             in by_key}
    if len(found) == 1:
      return found.pop()
    if len(found) > 1:
      return None
    mentioned = {lab for lab in self.labels
                 if re.search(r"(?<!\w)" + re.escape(lab) + r"(?!\w)", reply, re.IGNORECASE)}
    return mentioned.pop() if len(mentioned) == 1 else None

  def _parse(self, reply):
    label = self.label_of(reply)
    if label is None:
      logger.warning("grader %r: no single label of %s in the model's reply %.100r; scoring 0",
                     self.name, self.labels, reply)
      return 0.0
    return 1.0 if label in self.passing else 0.0


@register("label_model")
def _build_label_model(config, ctx):
  _check_keys(config, {"input", "model", "labels", "passing_labels", "sampling_params"},
              {"input", "labels", "passing_labels"})
  name = _name(config, "label_model")
  labels, passing = config["labels"], config["passing_labels"]
  if (not isinstance(labels, (list, tuple)) or not labels
      or not all(isinstance(x, str) and x.strip() for x in labels)):
    raise ValueError(f"label_model grader {name!r}: labels must be a non-empty list of strings")
  if len({x.casefold() for x in labels}) != len(labels):
    raise ValueError(f"label_model grader {name!r}: labels must differ (case-insensitively)")
  if not isinstance(passing, (list, tuple)) or not set(passing) <= set(labels):
    raise ValueError(f"label_model grader {name!r}: passing_labels {passing!r} must be a "
                     f"subset of labels {labels!r}")
  return LabelModel(name, _check_input_messages(config["input"], f"{name}.input"),
                    _need_generate_fn(ctx, "label_model", name), labels, passing)


# ----------------------------------------------------------------------------------------------
# multi: a safe formula over named graders.
# ----------------------------------------------------------------------------------------------

FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    # name: (function, min arity, max arity or None)
    "min": (min, 1, None),
    "max": (max, 1, None),
    "abs": (abs, 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1),
    "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),  # log(x) natural; log(x, base).
}

_MAX_FORMULA_CHARS = 10_000
_MAX_DEPTH = 64
_MAX_TOKENS = 500  # Keeps the AST (left-deep for a + b + c ...) far from the recursion limit.
_FORMULA_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[-+*/^(),\u2212]))")


def _tokenize_formula(formula: str) -> list[tuple[str, str, int]]:
  tokens, pos = [], 0
  while pos < len(formula):
    m = _FORMULA_TOKEN_RE.match(formula, pos)
    if m is None or m.end() == pos:
      rest = formula[pos:]
      if not rest.strip():
        break
      j = pos + len(rest) - len(rest.lstrip())
      raise ValueError(f"multi formula {formula!r}: unexpected character {formula[j]!r} at "
                       f"position {j}")
    kind = m.lastgroup
    text = m.group(kind)
    if text == "\u2212":
      text = "-"
    tokens.append((kind, text, m.start(kind)))
    pos = m.end()
  return tokens


class _FormulaParser:
  """Recursive descent over the grammar::

      expr  := term (("+" | "-") term)*
      term  := unary (("*" | "/") unary)*
      unary := ("-" | "+") unary | power
      power := atom ("^" unary)?            (right-associative; -a^2 = -(a^2))
      atom  := NUMBER | NAME | FUNC "(" expr ("," expr)* ")" | "(" expr ")"

  producing nested tuples: ("num", x), ("var", name), ("neg", e), ("bin", op, l, r),
  ("call", fname, [args]).
  """

  def __init__(self, formula: str, names: set[str]):
    self.formula = formula
    self.names = names
    self.tokens = _tokenize_formula(formula)
    if len(self.tokens) > _MAX_TOKENS:
      raise ValueError(f"multi formula has {len(self.tokens)} tokens, more than {_MAX_TOKENS}")
    self.i = 0
    self.depth = 0

  def _peek(self):
    return self.tokens[self.i] if self.i < len(self.tokens) else None

  def _error(self, what: str):
    tok = self._peek()
    where = f"token {tok[1]!r} at position {tok[2]}" if tok else "the end of the formula"
    raise ValueError(f"multi formula {self.formula!r}: {what} (at {where})")

  def _take(self, text=None):
    tok = self._peek()
    if tok is None or (text is not None and tok[1] != text):
      self._error(f"expected {text!r}" if text else "unexpected end of the formula")
    self.i += 1
    return tok

  def parse(self):
    if not self.tokens:
      raise ValueError(f"multi formula {self.formula!r}: empty formula")
    node = self._expr()
    if self._peek() is not None:
      self._error(f"unexpected token {self._peek()[1]!r}")
    return node

  def _enter(self):
    self.depth += 1
    if self.depth > _MAX_DEPTH:
      self._error(f"nesting deeper than {_MAX_DEPTH}")

  def _expr(self):
    self._enter()
    node = self._term()
    while (tok := self._peek()) and tok[0] == "op" and tok[1] in "+-":
      self.i += 1
      node = ("bin", tok[1], node, self._term())
    self.depth -= 1
    return node

  def _term(self):
    node = self._unary()
    while (tok := self._peek()) and tok[0] == "op" and tok[1] in "*/":
      self.i += 1
      node = ("bin", tok[1], node, self._unary())
    return node

  def _unary(self):
    tok = self._peek()
    if tok and tok[0] == "op" and tok[1] in "+-":
      self.i += 1
      self._enter()
      node = self._unary()
      self.depth -= 1
      return ("neg", node) if tok[1] == "-" else node
    return self._power()

  def _power(self):
    base = self._atom()
    tok = self._peek()
    if tok and tok[1] == "^":
      self.i += 1
      self._enter()
      exponent = self._unary()
      self.depth -= 1
      return ("bin", "^", base, exponent)
    return base

  def _atom(self):
    tok = self._peek()
    if tok is None:
      self._error("expected a number, a grader name or '('")
    kind, text, _ = tok
    if kind == "num":
      self.i += 1
      return ("num", float(text))
    if kind == "name":
      nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
      if nxt is not None and nxt[1] == "(":
        if text not in FUNCTIONS:
          self._error(f"unknown function {text!r} (allowed: {sorted(FUNCTIONS)})")
        self.i += 2
        args = [self._expr()]
        while self._peek() is not None and self._peek()[1] == ",":
          self.i += 1
          args.append(self._expr())
        self._take(")")
        _, lo, hi = FUNCTIONS[text]
        if len(args) < lo or (hi is not None and len(args) > hi):
          arity = str(lo) if hi == lo else (f"{lo} to {hi}" if hi else f"at least {lo}")
          raise ValueError(f"multi formula {self.formula!r}: {text}() takes {arity} "
                           f"argument(s), got {len(args)}")
        return ("call", text, args)
      if text not in self.names:
        self._error(f"unknown name {text!r} (graders: {sorted(self.names)})")
      self.i += 1
      return ("var", text)
    if text == "(":
      self.i += 1
      node = self._expr()
      self._take(")")
      return node
    self._error("expected a number, a grader name or '('")


def parse_formula(formula: str, names: set[str] | Sequence[str]) -> tuple:
  """Parses a ``multi`` formula into a small AST (see `_FormulaParser`); ValueError naming
  the offending token for anything outside the grammar or a name not in `names`."""
  if not isinstance(formula, str):
    raise ValueError(f"multi formula must be a string, got {type(formula).__name__}")
  if len(formula) > _MAX_FORMULA_CHARS:
    raise ValueError(f"multi formula longer than {_MAX_FORMULA_CHARS} characters")
  return _FormulaParser(formula, set(names)).parse()


def evaluate_formula(node: tuple, values: Mapping[str, float]) -> float:
  """Evaluates a `parse_formula` AST; math errors raise (ZeroDivisionError, ValueError,
  OverflowError)."""
  kind = node[0]
  if kind == "num":
    return node[1]
  if kind == "var":
    return float(values[node[1]])
  if kind == "neg":
    return -evaluate_formula(node[1], values)
  if kind == "call":
    fn = FUNCTIONS[node[1]][0]
    return float(fn(*[evaluate_formula(a, values) for a in node[2]]))
  _, op, left, right = node
  a, b = evaluate_formula(left, values), evaluate_formula(right, values)
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  if op == "/":
    return a / b
  result = a ** b  # "^"
  if isinstance(result, complex):
    raise ValueError(f"{a}^{b} is not real")
  return float(result)


def _names_in(node: tuple) -> set[str]:
  if node[0] == "var":
    return {node[1]}
  if node[0] == "num":
    return set()
  if node[0] == "neg":
    return _names_in(node[1])
  if node[0] == "call":
    return set().union(*(_names_in(a) for a in node[2]))
  return _names_in(node[2]) | _names_in(node[3])


class Multi(Grader):
  type_name = "multi"

  def __init__(self, name, graders: dict[str, Grader], formula: str, ast_: tuple):
    super().__init__(name)
    self.graders = graders
    self.formula = formula
    self.ast = ast_
    self.used = sorted(_names_in(ast_))

  def batch(self, samples, items):
    _check_lengths(self.name, samples, items)
    scores = {n: self.graders[n].batch(samples, items) for n in self.used}
    out = []
    for k in range(len(samples)):
      values = {n: scores[n][k] for n in self.used}
      try:
        out.append(_unit(evaluate_formula(self.ast, values), self.name))
      except (ArithmeticError, ValueError) as e:
        logger.warning("grader %r: formula %r failed on %s (%s: %s); scoring 0", self.name,
                       self.formula, values, type(e).__name__, e)
        out.append(0.0)
    return out


_GRADER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@register("multi")
def _build_multi(config, ctx):
  _check_keys(config, {"graders", "calculate_output"}, {"graders", "calculate_output"})
  name = _name(config, "multi")
  graders_cfg = config["graders"]
  if not isinstance(graders_cfg, Mapping) or not graders_cfg:
    raise ValueError(f"multi grader {name!r}: graders must be a non-empty dict name -> config")
  graders = {}
  for gname, gcfg in graders_cfg.items():
    if not isinstance(gname, str) or not _GRADER_NAME_RE.fullmatch(gname):
      raise ValueError(f"multi grader {name!r}: grader name {gname!r} must be an identifier")
    if gname in FUNCTIONS:
      raise ValueError(f"multi grader {name!r}: grader name {gname!r} is a function name")
    if not isinstance(gcfg, Mapping):
      raise ValueError(f"multi grader {name!r}: graders[{gname!r}] must be a config dict")
    graders[gname] = build_grader({**gcfg, "name": gname}, generate_fn=ctx.generate_fn,
                                  sandbox_options=ctx.sandbox_options)
  formula = config["calculate_output"]
  return Multi(name, graders, formula, parse_formula(formula, set(graders)))
