r"""Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020): the iterative loop.

`config.trainer = "self_rewarding"` (see `configs/self_rewarding.py`). One model is both the
policy and its own judge:

1. **M1** = SFT of M0 on IFT (instruction → response) and EFT (the additive 5-point judge
   prompt → rationale + ``Score: N``) data (`score.data.self_rewarding`).
2. For t = 1, 2, …: **self-instruction creation** with M_t — new prompts by 8-shot prompting
   from the IFT prompts (the generator is configurable: the current model by default, a fixed
   local checkpoint like the paper's), dedup/filter; N = 4 candidates per prompt (T = 0.7,
   top-p 0.9); each candidate judged k = 3 times by M_t and averaged (malformed judgments are
   counted and left out; a candidate with none valid is dropped); pairs = (best, worst), ties
   dropped (`score.trainers.self_instruct`, `score.rewards.judge`).
3. **DPO** of M_{t+1} from M_t with M_t as the reference (β = 0.1; sequence log-probs are
   sums over response tokens) — `score.trainers.dpo`.
4. **Judge quality** of every model vs held-out human rankings: pairwise accuracy, 5-best %,
   exact match %, Spearman and Kendall τ (`score.eval.judge_quality`).
5. With a fixed local judge (`eval.pairwise_judge_dir`; the paper used GPT-4):
   **head-to-head** win/tie/lose of every model vs `eval.head_to_head_baseline`, and an
   AlpacaEval-style **win rate** vs reference outputs (`eval.reference_path`), each judged
   pairwise in both presentation orders (`self_instruct.pairwise_rows`,
   `judge_quality.win_tie_lose`).

Every phase writes its artefacts to the workdir and is skipped on a re-run when they exist
(JSONL files are written to a temporary name and renamed when complete); a killed SFT/DPO
phase resumes from its orbax checkpoint::

  data/{ift,eft_train,eft_eval,judge_eval}.jsonl, data/summary.json
  m0/                                   tiny random model + tokenizer (only without model_dir)
  checkpoints/m1_sft/                   M1
  iter{t}/prompt_generations.jsonl      every generated prompt: raw text, parse, fate
  iter{t}/prompts.jsonl                 the kept prompts
  iter{t}/candidates.jsonl              N responses per prompt from M_t
  iter{t}/judgments.jsonl               k raw judge outputs per candidate, parsed scores, mean
  iter{t}/pairs.jsonl, mining.json      (best, worst) pairs; counts, malformed reasons
  checkpoints/m{t+1}_dpo/, iter{t}/dpo.json
  eval/judge_m{t}.jsonl, eval/judge_m{t}.json   raw judgments of held-out ranked responses
  eval/responses_m{t}.jsonl                    greedy responses (pairwise evaluation only)
  eval/h2h_m{t}_vs_m1.{jsonl,json}, eval/winrate_m{t}_vs_reference.{jsonl,json}
  results.json, results.md

An iteration that yields no pairs stops the loop with a message naming the counts (written to
`iter{t}/mining.json` and `results.md`); judge outputs never crash it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
from typing import Sequence

import numpy as np
from absl import logging

from score.data import self_rewarding as data_lib
from score.data.codec import Codec
from score.eval import judge_quality as jq
from score.eval import results as results_lib
from score.rewards import judge as judge_lib
from score.trainers import common
from score.trainers import dpo as dpo_lib
from score.trainers import self_instruct as si
from score.trainers import sft as sft_lib
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib
from score.utils import run as run_lib
from score.utils import tiny_checkpoint

# Yuan et al. (2024), Table 4 (SPEC §2): judge pairwise accuracy vs human rankings (%).
PUBLISHED_PAIRWISE_ACCURACY = {"sft_baseline": 65.1, "m1": 78.7, "m2": 80.4, "m3": 81.7}
# AlpacaEval 2.0 win rate vs GPT-4 Turbo (%), for the README.
PUBLISHED_ALPACA_EVAL = {"m1": 9.94, "m2": 15.38, "m3": 20.44}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


# ---------------------------------------------------------------------------------------------
# A tiny local checkpoint (runlocal, tests): BPE tokenizer trained on the data + random model.


def make_tiny_checkpoint(path: str, corpus: Sequence[str], model_cfg, *, vocab_size: int,
                         seed: int = 0) -> str:
  """Writes a random tiny model and a byte-level BPE tokenizer trained on `corpus` (with a
  chat template and `<|end|>` as EOS) to `path` as a Hugging Face checkpoint. No downloads."""
  from score.models import hf  # pylint: disable=g-import-not-at-top

  # No word splitting: merges may span spaces, so the fixed judge and few-shot texts become
  # a few dozen tokens (short sequences keep the CPU demo fast).
  fast = tiny_checkpoint.train_tokenizer(
      corpus, vocab_size=vocab_size, specials=("<pad>", "<s>", "<|end|>"), bos_token="<s>",
      eos_token="<|end|>", pad_token="<pad>", chat_template=CHAT_TEMPLATE, split_words=False,
      show_progress=False)
  model = common.build_model(model_cfg, len(fast), seed=seed, lora_on=False)
  tmp = f"{path}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  hf.save_pretrained(model, tmp, tokenizer=fast)
  os.replace(tmp, path)
  return path


# ---------------------------------------------------------------------------------------------
# The loop.




class Loop:
  """State shared by the phases of one run: config, workdir, codec, model layout, data."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.writer = metrics_lib.MetricWriter(workdir)
    self._generator = None
    self._pairwise_judge = None

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  @property
  def max_prompt_tokens(self) -> int:
    return self.config.max_len

  # -- data ------------------------------------------------------------------------------------

  def build_data(self):
    """Phase `data`: IFT, EFT train/eval and the judge-eval ranked prompts."""
    c = self.config.data
    if not os.path.exists(self.path("data", "summary.json")):
      if c.eft_path:
        ranked = data_lib.load_ranked(c.eft_path)
      elif c.synthetic_prompts <= 0:
        raise config_lib.ConfigError(
            "data.eft_path is empty: point it (config arg eft_path=) at ranked human data in "
            "JSONL (see score/data/self_rewarding.py), or use the synthetic demo "
            "(configs/self_rewarding.py:runlocal)")
      else:
        source = self.path("data", "synthetic_ranked.jsonl")
        data_lib.write_jsonl(source, map(data_lib.ranked_to_row, data_lib.synthetic_ranked(
            c.synthetic_prompts, seed=self.config.seed)))
        ranked = data_lib.load_ranked(source)  # the same reader as user data
      eft_train, eft_eval, eval_prompts, counts = data_lib.build_eft(
          ranked, train_size=c.eft_train_size, eval_size=c.eft_eval_size, seed=self.config.seed,
          require_agreement=c.eft_require_agreement)
      if c.ift_path:
        ift = data_lib.load_ift(c.ift_path)
      else:
        held = {r.id for r in eval_prompts}
        ift = data_lib.ift_from_ranked([r for r in ranked if r.id not in held])
      ift = ift[:c.ift_size]
      data_lib.write_jsonl(self.path("data", "ift.jsonl"), map(dataclasses.asdict, ift))
      data_lib.write_jsonl(self.path("data", "eft_train.jsonl"),
                           map(dataclasses.asdict, eft_train))
      data_lib.write_jsonl(self.path("data", "eft_eval.jsonl"), map(dataclasses.asdict, eft_eval))
      data_lib.write_jsonl(self.path("data", "judge_eval.jsonl"),
                           map(data_lib.ranked_to_row, eval_prompts))
      results_lib.write_json(self.path("data", "summary.json"),
                  dict(counts, ift=len(ift), eft_train=len(eft_train), eft_eval=len(eft_eval)))
    self.ift = [data_lib.IFTExample(**r)
                for r in data_lib.read_jsonl(self.path("data", "ift.jsonl"))]
    self.eft_train = [data_lib.EFTExample(**r)
                      for r in data_lib.read_jsonl(self.path("data", "eft_train.jsonl"))]
    judge_eval = self.path("data", "judge_eval.jsonl")
    self.judge_eval_prompts = (data_lib.load_ranked(judge_eval) if os.path.getsize(judge_eval)
                               else [])
    if not self.ift:
      raise ValueError("no IFT examples: set data.ift_path or give ranked data")

  # -- models ----------------------------------------------------------------------------------

  def load_m0(self):
    from score.models import hf  # pylint: disable=g-import-not-at-top
    model_dir = self.config.model.model_dir
    if not model_dir:
      model_dir = self.path("m0")
      if not os.path.exists(os.path.join(model_dir, "config.json")):
        corpus = ([data_lib.FEW_SHOT_TEMPLATE, CHAT_TEMPLATE]
                  + [x.instruction + "\n" + x.response for x in self.ift]
                  + [judge_lib.judge_prompt(x.instruction, x.response) + "\n" + x.target
                     for x in self.eft_train])
        make_tiny_checkpoint(model_dir, corpus, self.config.model,
                             vocab_size=self.config.model.vocab_size, seed=self.config.seed)
    elif not os.path.isdir(model_dir):
      raise FileNotFoundError(f"model.model_dir {model_dir!r} is not a directory; point it at a "
                              "local Hugging Face checkpoint (config.json + *.safetensors)")
    self.model_dir = model_dir
    self.codec = Codec(hf.load_tokenizer(model_dir), self.config.prompt_format)
    model = common.apply_mesh_options(
        hf.from_pretrained(model_dir, seed=self.config.seed,
                           **common.storage_fields(self.config.model)),
        self.config.get("mesh"))
    self.policy, params = common.Policy.split(model)
    return params

  def generator(self):
    """(model, codec) that writes new prompts: `self_instruct.generator_dir` or M_t."""
    gen_dir = self.config.self_instruct.generator_dir
    if not gen_dir:
      return self.policy.model(self.current), self.codec
    if self._generator is None:
      from score.models import hf  # pylint: disable=g-import-not-at-top
      self._generator = (hf.from_pretrained(gen_dir),
                         Codec(hf.load_tokenizer(gen_dir), self.config.prompt_format))
    return self._generator

  def save_hf(self, name: str, params):
    if not self.config.save_models:
      return
    out = self.path("models", name)
    if os.path.exists(os.path.join(out, "config.json")):
      return
    from score.models import hf  # pylint: disable=g-import-not-at-top
    hf.save_pretrained(self.policy.model(params), out, tokenizer=self.codec.tokenizer)

  def sft(self, params, name: str, *, with_eft: bool):
    """M1 (IFT + EFT) or the IFT-only SFT baseline."""
    max_len = self.config.max_len
    items = [(x.instruction, x.response) for x in self.ift]
    if with_eft:
      items += [(judge_lib.judge_prompt(x.instruction, x.response), x.target)
                for x in self.eft_train]
    examples = [self.codec.example(u, r, max_len) for u, r in items]
    kept = [e for e in examples if e is not None]
    if len(kept) < len(examples):
      logging.warning("%s: %d of %d SFT examples are longer than max_len=%d and were left out",
                      name, len(examples) - len(kept), len(examples), max_len)
    batches = sft_lib.ExampleBatches(kept, self.config.sft.batch_size, seed=self.config.seed,
                                     pad_id=self.codec.pad_id)
    return sft_lib.train_sft(self.policy, params, batches, self.config.sft,
                             workdir=self.workdir, name=name, writer=self.writer,
                             mesh_cfg=self.config.get("mesh"))

  # -- one iteration ---------------------------------------------------------------------------

  def prompts_phase(self, t: int) -> list[dict]:
    path = self.path(f"iter{t}", "prompts.jsonl")
    if not os.path.exists(path):
      seen = [x.instruction for x in self.ift] + [r.prompt for r in self.judge_eval_prompts]
      for s in range(1, t):
        seen += [r["prompt"] for r in data_lib.read_jsonl(self.path(f"iter{s}", "prompts.jsonl"))]
      source = self.config.self_instruct.source
      if source not in si.PROMPT_SOURCES:
        raise ValueError(f"self_instruct.source {source!r}; known: {sorted(si.PROMPT_SOURCES)}")
      rows = si.PROMPT_SOURCES[source](self, t, seen)
      data_lib.write_jsonl(self.path(f"iter{t}", "prompt_generations.jsonl"), rows)
      prompts = [{"id": f"it{t}-{i}", "prompt": r["parsed"]}
                 for i, r in enumerate(r for r in rows if r["fate"] == "kept")]
      data_lib.write_jsonl(path, prompts)
    return data_lib.read_jsonl(path)

  def candidates_phase(self, t: int, prompts: list[dict]) -> list[dict]:
    path = self.path(f"iter{t}", "candidates.jsonl")
    if not os.path.exists(path):
      c = self.config.candidates
      tokens = [self.codec.encode(self.codec.user_prompt(p["prompt"]))
                for p in prompts for _ in range(c.num)]
      outs = si.generate_texts(self.policy.model(self.current), self.codec, tokens,
                            max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                            top_p=c.top_p, seed=si.stable_seed(self.config.seed, t, "candidates"),
                            batch_size=self.config.sample_batch_size,
                            max_prompt_tokens=self.max_prompt_tokens)
      rows = [{"prompt_id": p["id"], "prompt": p["prompt"],
               "candidates": outs[i * c.num:(i + 1) * c.num]} for i, p in enumerate(prompts)]
      data_lib.write_jsonl(path, rows)
    return data_lib.read_jsonl(path)

  def judgments_phase(self, t: int, candidates: list[dict]) -> list[dict]:
    path = self.path(f"iter{t}", "judgments.jsonl")
    if not os.path.exists(path):
      items, where = [], []
      for row in candidates:
        for i, cand in enumerate(row["candidates"]):
          if cand["text"] is not None:
            items.append((row["prompt"], cand["text"]))
            where.append((row["prompt_id"], i))
      judged = si.judge_rows(self.policy.model(self.current), self.codec, items, self.config.judge,
                          seed=si.stable_seed(self.config.seed, t, "judge"),
                          batch_size=self.config.sample_batch_size,
                          max_prompt_tokens=self.max_prompt_tokens)
      data_lib.write_jsonl(path, [dict(prompt_id=pid, candidate=i, **j)
                                  for (pid, i), j in zip(where, judged)])
    return data_lib.read_jsonl(path)

  def pairs_phase(self, t: int, candidates: list[dict], judgments: list[dict]):
    path = self.path(f"iter{t}", "pairs.jsonl")
    summary_path = self.path(f"iter{t}", "mining.json")
    if not (os.path.exists(path) and os.path.exists(summary_path)):
      by_key = {(j["prompt_id"], j["candidate"]): j for j in judgments}
      prompts, texts, scores = [], [], []
      for row in candidates:
        prompts.append({"id": row["prompt_id"], "prompt": row["prompt"]})
        texts.append([c["text"] for c in row["candidates"]])
        scores.append([by_key.get((row["prompt_id"], i), {}).get("score")
                       for i in range(len(row["candidates"]))])
      pairs, counts = si.mine_pairs(prompts, texts, scores)
      reasons = collections.Counter(x["reason"] for j in judgments for x in j["judgments"])
      num = sum(reasons.values())
      summary = dict(
          counts, candidates=sum(len(t_) for t_ in texts), judgments=num,
          malformed=num - reasons.get("ok", 0),
          malformed_pct=100.0 * (num - reasons.get("ok", 0)) / num if num else float("nan"),
          malformed_reasons=dict(reasons.most_common()),
          dropped_candidates=sum(j["score"] is None for j in judgments),
          chosen_score=float(np.mean([p["chosen_score"] for p in pairs])) if pairs else None,
          rejected_score=float(np.mean([p["rejected_score"] for p in pairs])) if pairs else None,
          prompt_sources=collections.Counter(
              r["fate"] for r in data_lib.read_jsonl(
                  self.path(f"iter{t}", "prompt_generations.jsonl"))))
      data_lib.write_jsonl(path, pairs)
      results_lib.write_json(summary_path, summary)
    return data_lib.read_jsonl(path), results_lib.read_json(summary_path)

  def dpo_phase(self, t: int, pairs: list[dict]):
    max_len = self.config.max_len
    tokens = []
    for p in pairs:
      c = self.codec.example(p["prompt"], p["chosen"], max_len)
      r = self.codec.example(p["prompt"], p["rejected"], max_len)
      if c is not None and r is not None:
        tokens.append((c[0], c[1], r[0], r[1]))
    if not tokens:
      return None, None
    # The reference is M_t; with LoRA its adapters are merged into the frozen base first.
    start = common.merge_adapters(self.policy, self.current)
    params, summary = dpo_lib.train_dpo(
        self.policy, start, start, tokens, self.config.dpo, workdir=self.workdir,
        name=f"m{t + 1}_dpo", seed=si.stable_seed(self.config.seed, t, "dpo"),
        pad_id=self.codec.pad_id, writer=self.writer, mesh_cfg=self.config.get("mesh"))
    results_lib.write_json(self.path(f"iter{t}", "dpo.json"), summary)
    return params, summary

  # -- evaluation ------------------------------------------------------------------------------

  def judge_eval(self, name: str, params) -> dict:
    path = self.path("eval", f"judge_{name}.json")
    if not os.path.exists(path):
      items, where = [], []
      for r in self.judge_eval_prompts:
        for i, resp in enumerate(r.responses):
          items.append((r.prompt, resp))
          where.append((r.id, i, r.ranks[i]))
      judged = si.judge_rows(self.policy.model(params), self.codec, items, self.config.eval,
                          seed=si.stable_seed(self.config.seed, name, "judge_eval"),
                          batch_size=self.config.sample_batch_size,
                          max_prompt_tokens=self.max_prompt_tokens)
      data_lib.write_jsonl(self.path("eval", f"judge_{name}.jsonl"),
                           [dict(prompt_id=pid, response=i, rank=rk, **j)
                            for (pid, i, rk), j in zip(where, judged)])
      by_prompt = collections.defaultdict(dict)
      for (pid, i, _), j in zip(where, judged):
        by_prompt[pid][i] = j["score"]
      scores = [[by_prompt[r.id][i] for i in range(len(r.responses))]
                for r in self.judge_eval_prompts]
      metrics = jq.judge_quality(scores, [list(r.ranks) for r in self.judge_eval_prompts])
      reasons = collections.Counter(x["reason"] for j in judged for x in j["judgments"])
      num = sum(reasons.values())
      metrics["malformed_pct"] = 100.0 * (num - reasons.get("ok", 0)) / num if num else 0.0
      metrics["malformed_reasons"] = dict(reasons.most_common())
      results_lib.write_json(path, metrics)
    return results_lib.read_json(path)

  def pairwise_judge(self):
    """(model, codec) of `eval.pairwise_judge_dir`, a fixed local judge (paper: GPT-4)."""
    if self._pairwise_judge is None:
      from score.models import hf  # pylint: disable=g-import-not-at-top
      d = self.config.eval.pairwise_judge_dir
      self._pairwise_judge = (hf.from_pretrained(d),
                              Codec(hf.load_tokenizer(d), self.config.prompt_format))
    return self._pairwise_judge

  def eval_instructions(self) -> list[tuple[str, str | None]]:
    """(instruction, reference output or None): `eval.reference_path` rows when given, else
    the held-out judge-eval prompts (no reference)."""
    if self.config.eval.reference_path:
      return [(x.instruction, x.response) for x in data_lib.load_ift(
          self.config.eval.reference_path, fields={"response": "output"})]
    return [(r.prompt, None) for r in self.judge_eval_prompts]

  def responses(self, name: str, params) -> list[str]:
    """Greedy responses of model `name` to the eval instructions (cached in the workdir)."""
    path = self.path("eval", f"responses_{name}.jsonl")
    if not os.path.exists(path):
      instructions = [i for i, _ in self.eval_instructions()]
      tokens = [self.codec.encode(self.codec.user_prompt(i)) for i in instructions]
      outs = si.generate_texts(self.policy.model(params), self.codec, tokens,
                            max_new_tokens=self.config.candidates.max_new_tokens,
                            temperature=0.0, top_p=None, seed=0,
                            batch_size=self.config.sample_batch_size,
                            max_prompt_tokens=self.max_prompt_tokens)
      data_lib.write_jsonl(path, [{"instruction": i, **o} for i, o in zip(instructions, outs)])
    return [r["text"] or "" for r in data_lib.read_jsonl(path)]

  def pairwise_eval(self, name: str, params) -> dict:
    """Head-to-head vs `eval.head_to_head_baseline` and win rate vs the reference outputs,
    judged by `eval.pairwise_judge_dir`; {} when no judge is configured."""
    c = self.config.eval
    if not c.pairwise_judge_dir:
      return {}
    mine = self.responses(name, params)
    instructions = self.eval_instructions()
    out = {}
    jobs = []
    if name != c.head_to_head_baseline:
      if os.path.exists(self.path("eval", f"responses_{c.head_to_head_baseline}.jsonl")):
        theirs = self.responses(c.head_to_head_baseline, None)
        jobs.append((f"h2h_{name}_vs_{c.head_to_head_baseline}", theirs))
      else:
        logging.warning("no head-to-head for %s: eval.head_to_head_baseline %r has no responses "
                        "yet (it must be sft_baseline, m1 or an earlier model)", name,
                        c.head_to_head_baseline)
    if c.reference_path:
      jobs.append((f"winrate_{name}_vs_reference", [r or "" for _, r in instructions]))
    for key, theirs in jobs:
      path = self.path("eval", f"{key}.json")
      if not os.path.exists(path):
        model, codec = self.pairwise_judge()
        rows = si.pairwise_rows(model, codec, [(i, a, b) for (i, _), a, b in
                                            zip(instructions, mine, theirs)], c,
                             seed=si.stable_seed(self.config.seed, key), max_prompt_tokens=(
                                 self.max_prompt_tokens),
                             batch_size=self.config.sample_batch_size)
        data_lib.write_jsonl(self.path("eval", f"{key}.jsonl"), rows)
        results_lib.write_json(path, jq.win_tie_lose([r["winner"] for r in rows]))
      out[key] = results_lib.read_json(path)
    return out

  def evaluate(self, name: str, params, results: dict):
    results["judge"][name] = self.judge_eval(name, params)
    results["pairwise"].update(self.pairwise_eval(name, params))

  # -- driver ----------------------------------------------------------------------------------

  def run(self) -> dict:
    try:
      return self._run()
    finally:
      self.writer.close()

  def _run(self) -> dict:
    self.build_data()
    m0 = self.load_m0()
    self.current = self.sft(m0, "m1_sft", with_eft=True)
    self.save_hf("m1", self.current)
    results = {"judge": {}, "pairwise": {}, "iterations": {}, "stopped": None}
    if self.config.eval.sft_baseline:
      baseline = self.sft(m0, "sft_baseline", with_eft=False)
      self.evaluate("sft_baseline", baseline, results)
      del baseline
    self.evaluate("m1", self.current, results)
    for t in range(1, self.config.iterations + 1):
      prompts = self.prompts_phase(t)
      candidates = self.candidates_phase(t, prompts)
      judgments = self.judgments_phase(t, candidates)
      pairs, mining = self.pairs_phase(t, candidates, judgments)
      logging.warning("iteration %d: %d prompts, %d pairs (%d ties, %d unscored), "
                      "%.1f%% malformed judgments", t, len(prompts), mining["pairs"],
                      mining["tie"], mining["unscored"], mining["malformed_pct"])
      self.writer.write_scalars(t, {f"iter/{k}": v for k, v in mining.items()
                                    if isinstance(v, (int, float)) and v is not None})
      params, dpo_summary = (self.dpo_phase(t, pairs) if pairs else (None, None))
      results["iterations"][t] = {"prompts": len(prompts), "mining": mining, "dpo": dpo_summary}
      if params is None:
        results["stopped"] = (
            f"iteration {t} yielded no preference pairs to train M{t + 1} ({mining['prompts']} "
            f"prompts: {mining['tie']} best/worst ties, {mining['unscored']} with fewer than two "
            f"scored candidates, {mining['identical']} identical; {mining['malformed']} of "
            f"{mining['judgments']} judgments malformed). Stopping after M{t}.")
        logging.error("%s", results["stopped"])
        break
      self.current = params
      self.save_hf(f"m{t + 1}", params)
      self.evaluate(f"m{t + 1}", params, results)
    return results


# ---------------------------------------------------------------------------------------------
# Results.


def markdown(results: dict) -> str:
  lines = ["**Judge quality vs held-out human rankings**", "",
           "| model | pairwise acc. % | 5-best % | exact match % | Spearman | Kendall τ | "
           "malformed % | pairwise acc. % (published) |", "|---|---|---|---|---|---|---|---|"]
  for name, m in results["judge"].items():
    lines.append(
        f"| {name} | {results_lib.fmt(m['pairwise_accuracy'])} | {results_lib.fmt(m['five_best'])} | "
        f"{results_lib.fmt(m['exact_match'])} | {results_lib.fmt(m['spearman'], '{:.3f}')} | "
        f"{results_lib.fmt(m['kendall_tau'], '{:.3f}')} | {results_lib.fmt(m['malformed_pct'])} | "
        f"{results_lib.fmt(PUBLISHED_PAIRWISE_ACCURACY.get(name))} |")
  lines += ["", "**Self-instruction creation (iteration t uses M_t, trains M_t+1)**", "",
            "| t | prompts | candidates | malformed judgments % | dropped candidates | ties | "
            "pairs | chosen score | rejected score | DPO steps | DPO final loss | "
            "DPO reward acc. % |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for t, it in results["iterations"].items():
    m, d = it["mining"], it["dpo"] or {}
    lines.append(
        f"| {t} | {it['prompts']} | {m['candidates']} | {results_lib.fmt(m['malformed_pct'])} | "
        f"{m['dropped_candidates']} | {m['tie']} | {m['pairs']} | "
        f"{results_lib.fmt(m['chosen_score'], '{:.2f}')} | {results_lib.fmt(m['rejected_score'], '{:.2f}')} | "
        f"{d.get('steps', '—')} | {results_lib.fmt(d.get('final_loss'), '{:.4f}')} | "
        f"{results_lib.fmt(None if not d else 100 * d['reward_accuracy'])} |")
  if results.get("pairwise"):
    lines += ["", "**Pairwise evaluation (fixed judge, both orders)**", "",
              "| comparison | win % | tie % | lose % | win rate % | judged | failed |",
              "|---|---|---|---|---|---|---|"]
    for key, m in results["pairwise"].items():
      lines.append(f"| {key} | {results_lib.fmt(m['win'])} | {results_lib.fmt(m['tie'])} | {results_lib.fmt(m['lose'])} | "
                   f"{results_lib.fmt(m['win_rate'])} | {m['judged']} | {m['failed']} |")
  if results.get("stopped"):
    lines += ["", f"Stopped: {results['stopped']}"]
  return "\n".join(lines) + "\n"


def train(config, workdir: str):
  """`config.trainer = "self_rewarding"`: M1 → M2 → … with judge-quality evaluation."""
  loop = Loop(config, workdir)
  results = loop.run()
  info = run_lib.write_run_info(workdir, config)
  table = markdown(results)
  results["info"] = {"commit": info["commit"], "machine": info["machine"], "seed": config.seed}
  results_lib.write(workdir, results, table + "\n" + results_lib.info_lines(results["info"]))
  return results
