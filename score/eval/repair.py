"""MBPP-R: offline repair of fixed wrong first attempts (SCoRe, Kumar et al. 2024, Table 3).

MBPP-R is a fixed set of (MBPP-test problem, an *incorrect* first-attempt program of the base
model). A method's MBPP-R score is the % of those programs it repairs: its greedy second
attempt — after the environment's self-correction instruction, with the fixed first attempt
in context instead of one of its own — passes the problem's tests (run in the sandbox). The
paper's programs come from PaLM 2, which we do not have, so `build_repair_set` makes the set
from the configured base model's greedy first attempts; `load_repair_set` reads a user's.

Repair-set file (JSONL, one record per line):
  id                 the problem id as the loader names it (MBPP: ``"mbpp/<task_id>"``)
  first_attempt      the wrong first attempt as text: the model's turn-1 response, decoded
  first_attempt_ids  optional: its token ids under the configured tokenizer, so the model
                     conditions on exactly the tokens it sampled (`build_repair_set` writes
                     them); without them the text is tokenised and the first EOS id appended,
                     as a response that stopped
Other fields are kept and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from absl import logging

from score.data import loaders
from score.data.records import DataError
from score.eval import metrics as metrics_lib
from score.sampling import rollouts
from score.utils import progress

REQUIRED = {"id": "a problem id, e.g. 'mbpp/11'",
            "first_attempt": "the wrong first attempt, as text"}


def _write_json(path: str, obj: Any, *, lines: bool = False):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    if lines:
      f.writelines(json.dumps(r) + "\n" for r in obj)
    else:
      json.dump(obj, f)
  os.replace(path + ".tmp", path)


def build_repair_set(model, env, problems: Sequence[Any], *, path: str | None = None,
                     batch_size: int = 64, seed: int = 0, mesh=None) -> list[dict]:
  """Records of the problems whose greedy first attempt by `model` fails the tests.

  Written to `path` (JSONL, the module docstring's format) when given, with the ids of the
  attempted problems beside it (`<path>.problems.json`). An existing `path` made from the same
  problems is read instead (`load_repair_set`) and nothing is sampled; made from other problems
  (e.g. after `repair.num_problems` changed) or without that list, it is rebuilt.

  Args:
    model: the base model (`score.models.Transformer`).
    env: a code `score.trainers.envs.TextEnv` (prompts, tokenizer, sandboxed rewards).
    problems: the problems to attempt (e.g. MBPP test).
    path: where the set is cached.
    batch_size: prompts per rollout call.
    seed: rollout seed (greedy decoding does not use it).
    mesh: optional `jax.sharding.Mesh` to sample on (`rollouts.rollout`).
  """
  ids = [p.id for p in problems]
  if path and os.path.exists(path):
    if _read_json(path + ".problems.json") == ids:
      records = [] if os.path.getsize(path) == 0 else load_repair_set(
          path, problems_by_id={p.id: p for p in problems})
      logging.warning("MBPP-R: reusing %d first attempts from %s", len(records), path)
      return records
    logging.warning("MBPP-R: %s was built from other problems; rebuilding it", path)
  records = []
  for start in progress.bar(range(0, len(problems), batch_size), desc="repair set"):
    chunk = list(problems[start:start + batch_size])
    episodes = rollouts.rollout(
        model, [env.prompt_tokens(p) for p in chunk], num_turns=1,
        max_new_tokens=env.max_new_tokens, samples_per_prompt=1, temperature=0.0,
        eos_ids=env.eos_ids, max_len=env.max_len, pad_id=env.pad_id, seed=seed + start,
        mesh=mesh)
    ys = [[int(t) for t in r[0]] for r in episodes.responses]
    ps = [chunk[int(i)] for i in episodes.prompt_index_B]
    for p, y, r in zip(ps, ys, env.rewards(ps, ys)):
      if r <= 0:
        records.append({"id": p.id, "first_attempt": env.decode(y), "first_attempt_ids": y})
  logging.warning("MBPP-R: %d of %d greedy first attempts fail their tests", len(records),
                  len(problems))
  if path:
    _write_json(path, records, lines=True)
    _write_json(path + ".problems.json", ids)
  return records


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_repair_set(path: str, *, problems_by_id: Mapping[str, Any] | None = None
                    ) -> list[dict]:
  """Reads a repair-set JSONL (module docstring). Raises `DataError` naming `path:line` for a
  line that is not a JSON object, a missing or mistyped field, a duplicate id, or (with
  `problems_by_id`) an id that names no problem; and for a file without records."""
  path = str(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"repair set not found: {path}")
  records, seen = [], {}
  for n, row in loaders.iter_jsonl(path):
    if isinstance(row, DataError):
      raise row
    for key, what in REQUIRED.items():
      if not isinstance(row.get(key), str):
        got = "missing" if row.get(key) is None else f"a {type(row[key]).__name__}"
        raise DataError(f"expected field {key!r} ({what}) as a string, got {got}; record has "
                        f"fields {sorted(row)}", path=path, line=n)
    ids = row.get("first_attempt_ids")
    if ids is not None and not (isinstance(ids, list) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)):
      raise DataError("expected 'first_attempt_ids' to be a list of token ids (non-negative "
                      "integers) or absent", path=path, line=n)
    if row["id"] in seen:
      raise DataError(f"duplicate id {row['id']!r} (first on line {seen[row['id']]})",
                      path=path, line=n)
    if problems_by_id is not None and row["id"] not in problems_by_id:
      some = sorted(problems_by_id)[:3]
      raise DataError(f"id {row['id']!r} names no problem of the repair task (ids look like "
                      f"{some})", path=path, line=n)
    seen[row["id"]] = n
    records.append(dict(row))
  if not records:
    raise DataError("expected at least one repair record, the file has none", path=path)
  return records


def first_attempt_ids(env, record: Mapping[str, Any]) -> list[int]:
  """The token ids of a record's fixed first attempt (see the module docstring).

  Stored ids that do not decode to the record's text under `env` (another tokenizer made
  them) are ignored: the text is tokenised instead.
  """
  ids = record.get("first_attempt_ids")
  if ids is not None:
    ids = [int(t) for t in ids]
    vocab = getattr(env.tokenizer, "vocab_size", None)
    if (vocab is None or max(ids, default=0) < vocab) and env.decode(ids) == record[
        "first_attempt"]:
      return ids
    logging.log_first_n(logging.WARNING, "MBPP-R: record %s's first_attempt_ids are not this "
                        "tokenizer's (they do not decode to its text); tokenising the text", 1,
                        record["id"])
  ids = env.tokenizer.encode(record["first_attempt"], add_special_tokens=False)
  return [int(t) for t in ids] + [int(env.eos_ids[0])]


def evaluate_repair(model, env, problems_by_id: Mapping[str, Any], repair_set: Sequence[dict],
                    *, batch_size: int = 64, self_refine: bool = False, seed: int = 0,
                    num_bootstrap: int = 2000, mesh=None) -> dict:
  """Greedy repair of every fixed first attempt of `repair_set` by `model`.

  Each episode is the problem's prompt, the record's first attempt (not sampled: spliced in
  as context, `rollouts.rollout(first_responses=...)`), the environment's self-correction
  instruction and the model's greedy second attempt; with `self_refine`, the model's own
  feedback and a refined attempt (Self-Refine), which is the one scored. With a `mesh`, the
  rollouts are sampled on it.

  Returns `{"ids", "repaired", "first_correct", "attempts", "metrics"}`: per record whether
  the last attempt passes the tests, whether the fixed first attempt already did (it should
  not: such records are counted and logged), the decoded attempts, and the MBPP-R accuracy
  `metrics_lib.accuracy(repaired)` (% with a 95 % bootstrap interval).
  """
  if not repair_set:
    raise ValueError("evaluate_repair: the repair set is empty")
  missing = [r["id"] for r in repair_set if r["id"] not in problems_by_id]
  if missing:
    raise ValueError(f"evaluate_repair: {len(missing)} repair records name unknown problems, "
                     f"e.g. {missing[:3]}")
  num_turns = 3 if self_refine else 2
  instruction = env.self_refine_instruction if self_refine else env.instruction
  ids, repaired, first_correct, attempts, cut = [], [], [], [], 0
  for start in progress.bar(range(0, len(repair_set), batch_size), desc="repair"):
    chunk = list(repair_set[start:start + batch_size])
    ps = [problems_by_id[r["id"]] for r in chunk]
    firsts = [first_attempt_ids(env, r) for r in chunk]
    episodes = rollouts.rollout(
        model, [env.prompt_tokens(p) for p in ps], num_turns=num_turns,
        max_new_tokens=env.max_new_tokens, instruction=instruction, samples_per_prompt=1,
        temperature=0.0, eos_ids=env.eos_ids, max_len=env.max_len, pad_id=env.pad_id,
        seed=seed + start, first_responses=firsts, mesh=mesh)
    turns = [list(r) + [[]] * (num_turns - len(r)) for r in episodes.responses]
    cut += sum(len(t[0]) < len(y) for t, y in zip(turns, firsts))
    ids += [r["id"] for r in chunk]
    repaired += [bool(x > 0) for x in env.rewards(ps, [t[-1] for t in turns])]
    first_correct += [bool(x > 0) for x in env.rewards(ps, [t[0] for t in turns])]
    attempts += [{"id": r["id"], **{f"t{k + 1}": env.decode(y) for k, y in enumerate(t)}}
                 for r, t in zip(chunk, turns)]
  if cut:
    logging.warning("MBPP-R: %d first attempts cut to fit max_len=%d", cut, env.max_len)
  if any(first_correct):
    logging.warning("MBPP-R: %d of %d fixed first attempts already pass their tests",
                    sum(first_correct), len(first_correct))
  return {"ids": ids, "repaired": repaired, "first_correct": first_correct,
          "attempts": attempts,
          "metrics": metrics_lib.accuracy(repaired, num_bootstrap=num_bootstrap, seed=seed)}


def fingerprint(repair_set: Sequence[dict]) -> str:
  """A hash of the records' ids and first attempts: cached evaluations of another set are
  recomputed."""
  key = [(r["id"], r["first_attempt"], r.get("first_attempt_ids")) for r in repair_set]
  return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def evaluate_repair_cached(workdir: str, method: str, model_fn, env, problems_by_id,
                           repair_set, **kwargs) -> dict:
  """`evaluate_repair` of `method`, stored in `<workdir>/evals/mbpp_r/<method>.json` and
  reused while the repair set is the same (`fingerprint`)."""
  path = os.path.join(workdir, "evals", "mbpp_r", f"{method}.json")
  key = fingerprint(repair_set)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
    if out.get("fingerprint") == key:
      return out
    logging.warning("MBPP-R: %s was evaluated on another repair set; re-evaluating", method)
  out = {**evaluate_repair(model_fn(), env, problems_by_id, repair_set, **kwargs),
         "fingerprint": key}
  _write_json(path, out)
  return out
