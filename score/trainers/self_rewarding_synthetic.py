r"""Self-Rewarding LMs on a designed task with a hidden oracle (`configs/self_rewarding_synthetic.py`).

The paper's loop (Yuan et al., 2024; SPEC §2) on the rubric task of
`score.data.rubric_task`, from scratch on a CPU, with every model scored by the oracle the
models never see:

1. **Data**: IFT (instruction → a response of mixed quality), EFT (judge prompt → the five
   verdicts and ``Score: N``, train and held-out splits by instruction), few-shot
   prompt-generation examples, held-out evaluation instructions.
2. **SFT baseline** = SFT on IFT (+ the few-shot examples); **M1** = SFT on IFT + EFT (+ the
   same). The frozen SFT baseline writes the new instructions of every iteration (the paper's
   fixed generator), kept only when well-formed under the task's grammar and new.
3. Iteration t, for each judge of `config.judges`: M_t samples N candidates per instruction;
   the judge scores them — ``self`` (M_t with its own judge prompt, k samples averaged; the
   paper), ``random`` (a random order: pairs at random, the control that shows the judge is
   what helps), ``oracle`` (the hidden rubric: the ceiling); (best, worst) pairs without
   ties; DPO of M_t+1 from M_t.
4. **Evaluation** of every model: greedy responses to held-out instructions scored by the
   oracle (mean rubric score and % perfect, 95 % bootstrap intervals), head-to-head
   win/tie/loss against the SFT baseline under the oracle (the paper's Figure 3), judge
   quality on the held-out EFT split (the paper's Table 1).

Every sampling phase is cached in the workdir and SFT/DPO resume from orbax checkpoints, so
re-running the command resumes. Artefacts: ``data/*.jsonl``, ``iter{t}/prompts.jsonl``,
``iter{t}/{model}_candidates.jsonl``, ``iter{t}/{model}_{judge}_pairs.jsonl``,
``eval/{model}_responses.jsonl``, ``eval/{model}_judge.jsonl``, ``results.json``/``.md``.
"""

from __future__ import annotations

import collections
import os
import random
from typing import Callable

import numpy as np
from absl import logging

from score.data import codec as codec_lib
from score.data import rubric_task
from score.data import self_rewarding as data_lib
from score.eval import judge_quality as jq
from score.eval import metrics as metrics_lib
from score.eval import results as results_lib
from score.rewards import judge as judge_lib
from score.trainers import common
from score.trainers import dpo as dpo_lib
from score.trainers import self_instruct as si
from score.trainers import sft as sft_lib
from score.utils import metrics as writer_lib
from score.utils import run as run_lib


def _cached_jsonl(path: str, make: Callable[[], list[dict]]) -> list[dict]:
  if not os.path.exists(path):
    data_lib.write_jsonl(path, make())
  return data_lib.read_jsonl(path)


# ---------------------------------------------------------------------------------------------
# Judges: scores of each instruction's candidates, by name (`config.judges`).


def self_judge(run: "Run", params, t: int, name: str, rows: list[dict]) -> list[list]:
  """M_t judges its own candidates: k sampled judgments each, averaged (malformed ones left
  out)."""
  items = [(r["prompt"], c) for r in rows for c in r["candidates"]]
  judged = run.judge(params, items, seed=si.stable_seed(run.config.seed, t, name, "judge"))
  n = run.config.candidates.num
  return [[j["score"] for j in judged[i * n:(i + 1) * n]] for i in range(len(rows))]


def random_judge(run: "Run", params, t: int, name: str, rows: list[dict]) -> list[list]:
  """A random order of the candidates: the pair is two distinct candidates at random."""
  del params
  rng = random.Random(si.stable_seed(run.config.seed, t, name, "random"))
  return [[float(x) for x in rng.sample(range(len(r["candidates"])), len(r["candidates"]))]
          for r in rows]


def oracle_judge(run: "Run", params, t: int, name: str, rows: list[dict]) -> list[list]:
  """The hidden rubric (the ceiling the self-judge chases)."""
  del run, params, t, name
  return [[float(rubric_task.oracle_score(r["prompt"], c)) for c in r["candidates"]]
          for r in rows]


JUDGES = {"self": self_judge, "random": random_judge, "oracle": oracle_judge}


def model_name(judge: str, t: int) -> str:
  """M_t of the loop run with `judge` (the self-judged loop's models are m1, m2, m3)."""
  return f"m{t}" if judge == "self" or t == 1 else f"m{t}_{judge}"


# ---------------------------------------------------------------------------------------------
# Oracle evaluation (pure functions).


def quality(instructions, responses, *, num_bootstrap: int = 2000, seed: int = 0) -> dict:
  """Oracle quality of responses: mean rubric score and % perfect (95 % bootstrap
  intervals), and the pass rate of each criterion (%)."""
  marks = np.array([rubric_task.rubric(i, r) for i, r in zip(instructions, responses,
                                                                 strict=True)], np.float64)
  scores = marks.sum(-1)
  kw = dict(num_bootstrap=num_bootstrap, seed=seed)
  return {"score": metrics_lib.mean(scores, **kw),
          "perfect": metrics_lib.accuracy(scores == len(rubric_task.CRITERIA), **kw),
          "criteria": {c: 100 * float(m) for c, m in zip(rubric_task.CRITERIA, marks.mean(0))}}


def head_to_head(scores, baseline_scores) -> dict:
  """Win/tie/loss % of per-instruction oracle scores against the baseline's."""
  a, b = np.asarray(scores, float), np.asarray(baseline_scores, float)
  return {"win": 100 * float((a > b).mean()), "tie": 100 * float((a == b).mean()),
          "loss": 100 * float((a < b).mean()), "n": int(a.size)}


def oracle_ranks(scores) -> list[int]:
  """Rank 0 = best; equal oracle scores share a rank."""
  levels = sorted(set(scores), reverse=True)
  return [levels.index(s) for s in scores]


class GroupBatches:
  """SFT batches drawn from one group of examples at a time (a group per data source, chosen
  in proportion to its size), each padded to its group's longest example: short IFT rows
  are not padded to the length of judge prompts. A pure function of (seed, step)."""

  def __init__(self, groups, batch_size: int, *, seed: int, pad_id: int = 0):
    self.groups = [sft_lib.ExampleBatches(g, batch_size, seed=seed + i, pad_id=pad_id)
                   for i, g in enumerate(groups) if g]
    sizes = np.array([len(g.examples) for g in self.groups], np.float64)
    self.p = sizes / sizes.sum()
    self.seed = seed

  def __call__(self, step: int):
    # Group of each step up to `step`, so group g serves its k-th batch at its k-th use.
    rng = np.random.default_rng([self.seed, 7])
    picks = rng.choice(len(self.groups), size=step + 1, p=self.p)
    g = int(picks[-1])
    return self.groups[g](int((picks[:-1] == g).sum()))


# ---------------------------------------------------------------------------------------------
# The run.


class Run:
  """One run's state: config, workdir, task, codec, model layout, data."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.task = rubric_task.RubricTask(**config.task)
    self.codec = codec_lib.CharCodec(self.task.tokenizer, rubric_task.user_prompt)
    self.writer = writer_lib.MetricWriter(workdir)
    model = common.build_model(config.model, self.task.tokenizer.vocab_size, seed=config.seed)
    model = common.apply_mesh_options(model, config.get("mesh"))
    self.policy, self.m0 = common.Policy.split(model)
    self.build_data()

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  # -- data ------------------------------------------------------------------------------------

  def build_data(self):
    """IFT, EFT train/eval, few-shot examples and evaluation instructions (disjoint)."""
    c, task, seed = self.config.data, self.task, self.config.seed

    def make():
      rng = random.Random(seed)
      ift_ins = task.instructions(c.ift + c.eft_train + c.eft_eval + c.eval, seed=seed)
      ift, rest = ift_ins[:c.ift], ift_ins[c.ift:]
      eft_train_ins, rest = rest[:c.eft_train], rest[c.eft_train:]
      eft_eval_ins, eval_ins = rest[:c.eft_eval], rest[c.eft_eval:]
      rows = [{"split": "ift", "instruction": x, "response": task.ift_response(x, rng)}
              for x in ift]
      for x in eft_train_ins:
        y = task.ift_response(x, rng)
        rows.append({"split": "eft_train", "instruction": x, "response": y,
                     "target": rubric_task.judgment(x, y)})
      for x in eft_eval_ins:
        ys = task.ranked_responses(x, rng)
        rows.append({"split": "eft_eval", "instruction": x, "responses": ys,
                     "scores": [rubric_task.oracle_score(x, y) for y in ys]})
      for _ in range(c.few_shot):
        p, y = task.few_shot_example(rng, ift)
        rows.append({"split": "few_shot", "instruction": p, "response": y})
      rows += [{"split": "eval", "instruction": x} for x in eval_ins]
      return rows

    rows = _cached_jsonl(self.path("data", "data.jsonl"), make)
    self.data = collections.defaultdict(list)
    for r in rows:
      self.data[r.pop("split")].append(r)

  def sft_examples(self, with_eft: bool) -> list[list]:
    """The SFT examples, one group per source (IFT, few-shot, EFT)."""
    d = self.data
    groups = [[(r["instruction"], r["response"]) for r in d["ift"]],
              [(r["instruction"], r["response"]) for r in d["few_shot"]]]
    if with_eft:
      groups.append([(rubric_task.judge_prompt(r["instruction"], r["response"]), r["target"])
                     for r in d["eft_train"]])
    out = []
    for items in groups:
      examples = [self.codec.example(u, r, self.config.max_len) for u, r in items]
      if any(e is None for e in examples):
        raise ValueError(f"an SFT example is longer than max_len={self.config.max_len}")
      out.append(examples)
    return out

  def sft(self, name: str, with_eft: bool):
    batches = GroupBatches(self.sft_examples(with_eft), self.config.sft.batch_size,
                           seed=self.config.seed, pad_id=self.codec.pad_id)
    return sft_lib.train_sft(self.policy, self.m0, batches, self.config.sft,
                             workdir=self.workdir, name=name, writer=self.writer,
                             mesh_cfg=self.config.get("mesh"))

  def generate(self, params, prompts: list[str], *, seed: int, temperature: float,
               top_p: float | None, max_new_tokens: int) -> list[str]:
    tokens = [self.codec.encode(self.codec.user_prompt(p)) for p in prompts]
    outs = si.generate_texts(self.policy.model(params), self.codec, tokens,
                             max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, seed=seed, batch_size=self.config.sample_batch_size,
                             max_prompt_tokens=self.config.max_len)
    return [o["text"] or "" for o in outs]

  def judge(self, params, items: list[tuple[str, str]], *, seed: int) -> list[dict]:
    """`{"raw", "scores", "score"}` per (instruction, response): k sampled judgments."""
    c = self.config.judge
    prompts = [rubric_task.judge_prompt(i, r) for i, r in items for _ in range(c.num)]
    raw = self.generate(params, prompts, seed=seed, temperature=c.temperature, top_p=c.top_p,
                        max_new_tokens=c.max_new_tokens)
    out = []
    for n in range(len(items)):
      texts = raw[n * c.num:(n + 1) * c.num]
      parsed = [judge_lib.parse_score(x) for x in texts]
      out.append({"raw": texts, "scores": [p.score for p in parsed],
                  "score": judge_lib.average_scores(parsed)})
    return out

  def instructions(self, t: int, generator) -> list[str]:
    """Iteration t's new instructions, written few-shot by the frozen `generator` and kept
    when well-formed and new (`iter{t}/prompts.jsonl` records every generation's fate).
    `self_instruct.source="task"` draws them from the task's grammar instead (`:runlocal`,
    whose untrained generator writes none)."""
    c = self.config.self_instruct
    if c.source not in ("few_shot", "task"):
      raise ValueError(f"self_instruct.source {c.source!r}; known: few_shot, task")

    def make():
      rng = random.Random(si.stable_seed(self.config.seed, t, "few_shot"))
      pool = [r["instruction"] for r in self.data["ift"]]
      seen = set(pool) | {r["instruction"] for d in ("eft_train", "eft_eval", "eval")
                          for r in self.data[d]}
      for s in range(1, t):
        seen |= {r["text"] for r in data_lib.read_jsonl(self.path(f"iter{s}", "prompts.jsonl"))
                 if r["fate"] == "kept"}
      rows, kept = [], 0
      for rnd in range(c.max_rounds):
        if kept >= c.num_prompts:
          break
        n = int((c.num_prompts - kept) * c.oversample) + 1
        if c.source == "task":  # a stand-in for a capable generator (runlocal smoke)
          texts = [self.task.instruction(rng) for _ in range(n)]
        else:
          shots = [rubric_task.few_shot_prompt(rng.sample(pool, self.task.num_shots))
                   for _ in range(n)]
          texts = self.generate(generator, shots, seed=si.stable_seed(self.config.seed, t, rnd),
                                temperature=c.temperature, top_p=c.top_p,
                                max_new_tokens=c.max_new_tokens)
        for text in texts:
          if rubric_task.parse_instruction(text) is None:
            fate = "malformed"
          elif text in seen:
            fate = "duplicate"
          elif kept >= c.num_prompts:
            fate = "surplus"
          else:
            fate, kept = "kept", kept + 1
            seen.add(text)
          rows.append({"round": rnd, "text": text, "fate": fate})
      return rows

    rows = _cached_jsonl(self.path(f"iter{t}", "prompts.jsonl"), make)
    return [r["text"] for r in rows if r["fate"] == "kept"]

  def candidates(self, t: int, name: str, params, prompts: list[str]) -> list[dict]:
    c = self.config.candidates

    def make():
      flat = self.generate(params, [p for p in prompts for _ in range(c.num)],
                           seed=si.stable_seed(self.config.seed, t, name, "candidates"),
                           temperature=c.temperature, top_p=c.top_p,
                           max_new_tokens=c.max_new_tokens)
      return [{"prompt": p, "candidates": flat[i * c.num:(i + 1) * c.num]}
              for i, p in enumerate(prompts)]

    return _cached_jsonl(self.path(f"iter{t}", f"{name}_candidates.jsonl"), make)

  def iteration(self, t: int, judge: str, params, prompts: list[str]):
    """M_t → M_t+1 with `judge`; returns the new params and the iteration's summary."""
    name, new = model_name(judge, t), model_name(judge, t + 1)
    rows = self.candidates(t, name, params, prompts)
    pairs_path = self.path(f"iter{t}", f"{name}_{judge}_pairs.jsonl")
    if not os.path.exists(pairs_path):
      scores = JUDGES[judge](self, params, t, name, rows)
      pairs, counts = si.mine_pairs([{"id": str(i), "prompt": r["prompt"]}
                                     for i, r in enumerate(rows)],
                                    [r["candidates"] for r in rows], scores)
      data_lib.write_jsonl(pairs_path, pairs)
      results_lib.write_json(self.path(f"iter{t}", f"{name}_{judge}_mining.json"), counts)
    pairs = data_lib.read_jsonl(pairs_path)
    counts = results_lib.read_json(self.path(f"iter{t}", f"{name}_{judge}_mining.json"))
    tokens = []
    for p in pairs:
      ch = self.codec.example(p["prompt"], p["chosen"], self.config.max_len)
      rj = self.codec.example(p["prompt"], p["rejected"], self.config.max_len)
      if ch is not None and rj is not None:
        tokens.append((ch[0], ch[1], rj[0], rj[1]))
    oracle_gap = [rubric_task.oracle_score(p["prompt"], p["chosen"])
                  - rubric_task.oracle_score(p["prompt"], p["rejected"]) for p in pairs]
    summary = dict(counts, prompts=len(prompts),
                   pair_oracle_agreement=(100 * float(np.mean(np.sign(oracle_gap) > 0))
                                          if pairs else None),
                   pair_oracle_gap=float(np.mean(oracle_gap)) if pairs else None)
    if not tokens:
      logging.error("iteration %d (%s judge): no preference pairs; %s stays %s", t, judge, new,
                    name)
      return params, summary
    params, dpo = dpo_lib.train_dpo(
        self.policy, params, params, tokens, self.config.dpo, workdir=self.workdir,
        name=f"{new}_dpo", seed=si.stable_seed(self.config.seed, t, judge, "dpo"),
        pad_id=self.codec.pad_id, writer=self.writer, mesh_cfg=self.config.get("mesh"))
    summary["dpo"] = dpo
    return params, summary

  def evaluate(self, name: str, params, *, judge_quality: bool) -> dict:
    path = self.path("eval", f"{name}.json")
    if os.path.exists(path):
      return results_lib.read_json(path)
    c = self.config.eval
    instructions = [r["instruction"] for r in self.data["eval"]]
    responses = [r["response"] for r in _cached_jsonl(
        self.path("eval", f"{name}_responses.jsonl"),
        lambda: [{"instruction": i, "response": r} for i, r in zip(
            instructions, self.generate(params, instructions, seed=0, temperature=0.0,
                                        top_p=None,
                                        max_new_tokens=self.config.candidates.max_new_tokens))])]
    out = {"quality": quality(instructions, responses, num_bootstrap=c.num_bootstrap),
           "oracle_scores": [rubric_task.oracle_score(i, r)
                             for i, r in zip(instructions, responses)]}
    if judge_quality:
      eft = self.data["eft_eval"]
      items = [(r["instruction"], y) for r in eft for y in r["responses"]]
      judged = self.judge(params, items, seed=si.stable_seed(self.config.seed, name, "eval"))
      data_lib.write_jsonl(self.path("eval", f"{name}_judge.jsonl"),
                           [dict(instruction=i, response=y, **j)
                            for (i, y), j in zip(items, judged)])
      scores, k = [], 0
      for r in eft:
        scores.append([judged[k + n]["score"] for n in range(len(r["responses"]))])
        k += len(r["responses"])
      out["judge"] = jq.judge_quality(scores, [oracle_ranks(r["scores"]) for r in eft])
      flat = [s for row in scores for s in row]
      truth = [s for r in eft for s in r["scores"]]
      out["judge"]["score_exact"] = 100 * float(np.mean(
          [s is not None and round(s) == g for s, g in zip(flat, truth)]))
    results_lib.write_json(path, out)
    return out

  # -- driver ----------------------------------------------------------------------------------

  def run(self) -> dict:
    c = self.config
    models = {"sft_baseline": self.sft("sft_baseline", with_eft=False),
              "m1": self.sft("m1_sft", with_eft=True)}
    prompts = {t: self.instructions(t, models["sft_baseline"])
               for t in range(1, c.iterations + 1)}
    iterations = {}
    for judge in c.judges:
      if judge not in JUDGES:
        raise ValueError(f"judges: unknown judge {judge!r}; known: {sorted(JUDGES)}")
      params = models["m1"]
      for t in range(1, c.iterations + 1):
        params, summary = self.iteration(t, judge, params, prompts[t])
        models[model_name(judge, t + 1)] = params
        iterations[f"{judge}/{t}"] = summary
    evals = {name: self.evaluate(name, p, judge_quality=name in c.eval.judge_models)
             for name, p in models.items()}
    base = evals["sft_baseline"]["oracle_scores"]
    for e in evals.values():
      e["head_to_head"] = head_to_head(e.pop("oracle_scores"), base)
    return {"models": evals, "iterations": iterations,
            "prompts": {t: len(p) for t, p in prompts.items()}}




def markdown(results: dict) -> str:
  lines = ["| model | oracle quality | perfect % | vs SFT baseline win / tie / loss % | "
           + " | ".join(f"{c} %" for c in rubric_task.CRITERIA)
           + " | judge pairwise acc. % | exact match % | Spearman | Kendall τ |",
           "|" + "---|" * (8 + len(rubric_task.CRITERIA))]
  for name, e in results["models"].items():
    q, h, j = e["quality"], e["head_to_head"], e.get("judge")
    judge_cols = (["—"] * 4 if j is None else
                  [results_lib.fmt(j["pairwise_accuracy"]), results_lib.fmt(j["exact_match"]),
                   results_lib.fmt(j["spearman"], "{:.3f}"), results_lib.fmt(j["kendall_tau"], "{:.3f}")])
    lines.append(" | ".join(
        [f"| {name}", results_lib.interval(q["score"], "{:.2f}"), results_lib.interval(q["perfect"]),
         f"{h['win']:.1f} / {h['tie']:.1f} / {h['loss']:.1f}"]
        + [f"{q['criteria'][c]:.1f}" for c in rubric_task.CRITERIA] + judge_cols) + " |")
  lines += ["", "| judge / t | prompts | pairs | ties | pairs the oracle agrees with % | "
            "DPO steps | DPO final loss |", "|---|---|---|---|---|---|---|"]
  for key, s in results["iterations"].items():
    d = s.get("dpo") or {}
    lines.append(f"| {key} | {s['prompts']} | {s['pairs']} | {s['tie']} | "
                 f"{results_lib.fmt(s['pair_oracle_agreement'])} | {d.get('steps', '—')} | "
                 f"{results_lib.fmt(d.get('final_loss'), '{:.4f}')} |")
  return "\n".join(lines) + "\n"


def train(config, workdir: str):
  """`config.trainer = "self_rewarding_synthetic"`."""
  run = Run(config, workdir)
  try:
    results = run.run()
  finally:
    run.writer.close()
  info = run_lib.write_run_info(workdir, config)
  results["info"] = {"commit": info["commit"], "machine": info["machine"], "seed": config.seed}
  results_lib.write(workdir, results,
                    markdown(results) + "\n" + results_lib.info_lines(results["info"]))
  return results
