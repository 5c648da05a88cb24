"""The self-correction suite: one base model, every method on it, one table.

`config.trainer = "self_correction_suite"` (the README's main command runs it on the embedded
synthetic task):

1. SFT warm-up of a fresh tiny model -> the base model (`warmup` phase).
2. Each method of `config.methods` starts from the same base model:
   `base` (no training), `self_refine` (prompting only: attempt, own feedback, refined
   attempt; natural-language tasks), `star` (SFT on the base model's successful revisions, D+),
   `pair_sft` (SFT on pairs of a wrong first attempt and a correct attempt, both sampled from
   the base model), `score` (Stage I + Stage II RL), and every ablation of
   `config.ablations` (a SCoRe run with config overrides, see `ABLATIONS`).
3. Greedy two-attempt evaluation on held-out problems; `results.json` / `results.md`.
   With `config.repair` (code tasks; `score.eval.repair`), also MBPP-R: the base model's
   wrong greedy first attempts on `repair.task`/`repair.split` (or the JSONL at
   `repair.path`) are fixed, and each method's repair rate is the `mbpp_r` column.
   With `eval.samples` n ≥ 2, also pass@2 of independent first attempts sampled at
   `eval.temperature` (`score.eval.sampled`, unbiased over n): the accuracy that two tries
   without feedback reach, the line a second attempt has to beat; shown beside the greedy Δ,
   not compared with it.

Every phase is checkpointed and every evaluation cached, so re-running resumes.
"""

from __future__ import annotations

import copy
import functools
import json
import os

import numpy as np
from absl import logging

from score.eval import repair as repair_lib
from score.eval import sampled as sampled_eval
from score.eval import self_correction
from score.eval import tables
from score.trainers import common
from score.trainers import envs
from score.trainers import score as score_lib
from score.trainers import sft as sft_lib
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib
from score.utils import run as run_lib

# SCoRe Table 4 ablations as overrides of the `rl` section.
ABLATIONS = {
    "no_stage1": lambda rl: {"rl.stage1_steps": 0,
                             "rl.stage2_steps": rl.stage1_steps + rl.stage2_steps},
    "no_shaping": lambda rl: {"rl.alpha": 0.0},
    "no_stage1_no_shaping": lambda rl: {"rl.stage1_steps": 0, "rl.alpha": 0.0,
                                        "rl.stage2_steps": rl.stage1_steps + rl.stage2_steps},
    "no_multi_turn": lambda rl: {"rl.multi_turn": False, "rl.stage1_steps": 0,
                                 "rl.stage2_steps": rl.stage1_steps + rl.stage2_steps},
    "star_stage2": lambda rl: {"rl.stage2_method": "star"},
}


def _sft_examples_star(env, episodes, rewards, problems):
  """STaR D+: episodes whose first attempt is wrong and second right; loss on attempt 2."""
  out = []
  for b in np.flatnonzero((rewards[:, 0] == 0) & (rewards[:, 1] > 0)):
    p = problems[int(episodes.prompt_index_B[b])]
    tokens, turn = env.episode_tokens(p, episodes.responses[b][:2])
    out.append((tokens, [int(m == 2) for m in turn]))
  return out


def _sft_examples_pair(env, episodes, rewards, problems, *, seed):
  """Pair-SFT: a wrong attempt paired with a correct attempt of the same problem."""
  rng = np.random.default_rng(seed)
  by_problem = {}
  for b, responses in enumerate(episodes.responses):
    i = int(episodes.prompt_index_B[b])
    for k, ids in enumerate(responses):
      by_problem.setdefault(i, ([], []))[int(rewards[b, k] > 0)].append(ids)
  out = []
  for i, (wrong, right) in sorted(by_problem.items()):
    if not wrong or not right:
      continue
    y1 = wrong[int(rng.integers(len(wrong)))]
    y2 = right[int(rng.integers(len(right)))]
    tokens, turn = env.episode_tokens(problems[i], (y1, y2))
    out.append((tokens, [int(m == 2) for m in turn]))
  return out


def _sampled_sft(method, policy, base, env, cfg, *, workdir, writer, seed, mesh_cfg=None):
  """STaR or Pair-SFT: sample from the base model, build the SFT set, fine-tune."""
  problems = env.train_problems(0, cfg.num_problems, stream=method)
  episodes, rewards = score_lib.sample_episodes(
      policy, base, env, problems, samples_per_prompt=cfg.samples_per_prompt,
      temperature=cfg.temperature, seed=seed)
  if method == "star":
    examples = _sft_examples_star(env, episodes, rewards, problems)
  else:
    examples = _sft_examples_pair(env, episodes, rewards, problems, seed=seed)
  logging.warning("%s: %d SFT examples from %d sampled episodes", method, len(examples),
                  len(episodes.responses))
  if writer is not None:
    writer.write_scalars(0, {f"{method}/num_examples": len(examples)})
  if not examples:
    return base
  # `epochs` passes over the (often small) set, at most `max_steps` steps.
  sft_cfg = common.unfrozen(common.frozen(cfg))
  sft_cfg.steps = max(1, min(cfg.max_steps, -(-cfg.epochs * len(examples) // cfg.batch_size)))
  batches = sft_lib.ExampleBatches(examples, cfg.batch_size, seed=seed, pad_id=env.pad_id)
  return sft_lib.train_sft(policy, base, batches, sft_cfg, workdir=workdir, name=method,
                           writer=writer, mesh_cfg=mesh_cfg)


def ablation_config(config, name):
  """A copy of `config` with the named ablation's overrides applied."""
  if name not in ABLATIONS:
    raise config_lib.ConfigError(f"Unknown ablation {name!r}; known: {sorted(ABLATIONS)}")
  out = copy.deepcopy(config)
  config_lib.apply_overrides(out, ABLATIONS[name](config.rl))
  return out


def _base_model(config, env, workdir, policy_writer):
  """The shared base model: a local checkpoint, or a fresh tiny model + SFT warm-up."""
  model_cfg = config.model
  if config.task.name in ("math", "code") and not model_cfg.model_dir:
    raise config_lib.ConfigError(
        "config.model.model_dir is empty: point it at a local Hugging Face checkpoint "
        "(the `runlocal` variant makes a tiny random one itself).")
  warmup = config.warmup.steps > 0  # it trains every weight: LoRA adapters come after it
  model = common.build_model(model_cfg, getattr(env.tokenizer, "vocab_size", None),
                             seed=config.seed, lora_on=not warmup,
                             mesh_cfg=config.get("mesh"))
  model = common.apply_mesh_options(model, config.get("mesh"))
  policy, params = common.Policy.split(model)
  if warmup:
    batches = sft_lib.synthetic_warmup_batches(
        env.task, env.tokenizer, config.warmup.batch_size, seed=config.seed,
        exclude=env.heldout)
    params = sft_lib.train_sft(policy, params, batches, config.warmup, workdir=workdir,
                               name="warmup", writer=policy_writer,
                               mesh_cfg=config.get("mesh"))
    policy, params = common.add_lora(policy, params, model_cfg, seed=config.seed)
  return policy, params


def _repair_set(config, env, model_fn, workdir, mesh=None):
  """MBPP-R's `(problems_by_id, records, description)`, or None when `config.repair` is off."""
  r = config.get("repair")
  if not r or not r.task:
    return None
  if config.task.name != "code":
    raise config_lib.ConfigError(
        f"config.repair (MBPP-R) repairs programs: it needs task.name='code', got "
        f"{config.task.name!r}")
  from score.data import loaders  # pylint: disable=g-import-not-at-top
  problems = loaders.load(r.task, **({"split": r.split} if r.split else {}))
  by_id = {p.id: p for p in problems}
  if r.path:
    records = repair_lib.load_repair_set(r.path, problems_by_id=by_id)
    return by_id, records, f"{len(records)} first attempts from {r.path}"
  if r.num_problems:
    problems = problems[:r.num_problems]
  records = repair_lib.build_repair_set(
      model_fn(), env, problems, path=os.path.join(workdir, "mbpp_r.jsonl"),
      batch_size=config.eval.batch_size, mesh=mesh)
  return by_id, records, (f"{len(records)} wrong greedy first attempts of the base model on "
                          f"{len(problems)} {r.task} {r.split} problems (mbpp_r.jsonl)")


# Settings that may change between runs in one workdir: they choose what is evaluated and how,
# not what was trained.
_NOT_TRAINED = ("title", "published", "methods", "ablations", "eval", "repair", "mesh",
                "distributed")


# Training settings added after runs were made, with the value those runs had.
_ADDED_KEYS = {"model.dtype": "float32", "model.base_dtype": "float32", "model.lora.rank": 0,
               "model.lora.alpha": 16.0, "model.lora.targets": "q,k,v,o,gate,up,down"}


def check_same_training(config, workdir: str):
  """Stops a run whose training settings differ from those of the workdir's earlier run.

  Every phase resumes from its checkpoint and every evaluation is cached, so a changed
  setting (more Stage I steps, another lr, another task) would otherwise silently mix models
  trained two ways (e.g. a Stage II resumed on top of another Stage I) or reuse evaluations
  of the old models. Evaluation settings, method lists and the mesh may change.
  """
  flat = {k: v for k, v in _flatten(config.to_dict()).items()
          if k.split(".")[0] not in _NOT_TRAINED
          and not k.endswith((".checkpoint_every", ".log_every"))}
  flat = json.loads(json.dumps(flat, default=str))  # as it reads back (tuples -> lists, ...)
  path = os.path.join(workdir, "training_config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    old = {**_ADDED_KEYS, **old}  # a run from before a key existed had its default
    changed = sorted(k for k in set(old) | set(flat) if old.get(k) != flat.get(k))
    if changed:
      diffs = "; ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in changed[:8])
      raise config_lib.ConfigError(
          f"{workdir} holds a run trained with other settings ({diffs}). Its checkpoints and "
          "evaluations would be reused or extended; use a new --workdir (or delete this one).")
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(flat, f, indent=1, sort_keys=True)


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def train(config, workdir: str):
  if config.task.name in ("math", "code") and config.get("runlocal_model"):
    envs.make_runlocal_model(config, workdir)  # sets config.model.model_dir
  check_same_training(config, workdir)
  env = envs.make_env(config)
  writer = metrics_lib.MetricWriter(workdir)
  policy, base = _base_model(config, env, workdir, writer)

  def trained(method):
    if method in ("base", "self_refine"):
      return base
    if method in ("star", "pair_sft"):
      return _sampled_sft(method, policy, base, env, config[method], workdir=workdir,
                          writer=writer, seed=config.seed, mesh_cfg=config.get("mesh"))
    if method == "score":
      return score_lib.train_score(policy, base, base, env, config.rl, workdir=workdir,
                                   writer=writer, mesh_cfg=config.get("mesh"))
    cfg = ablation_config(config, method)
    return score_lib.train_score(policy, base, base, env, cfg.rl, workdir=workdir,
                                 name=method, writer=writer, mesh_cfg=config.get("mesh"))

  mesh = common.mesh_from_config(config.get("mesh"))  # Evaluations sample on it too.
  by_id, repair_set, repair_note = (
      _repair_set(config, env, lambda: policy.model(base), workdir, mesh) or (None, [], None))
  if repair_note and not repair_set:
    logging.warning("MBPP-R: the base model fails no first attempt; nothing to repair")
  results = {}
  for method in tuple(config.methods) + tuple(config.ablations):
    if method == "self_refine" and not hasattr(env, "self_refine_instruction"):
      raise config_lib.ConfigError(
          "self_refine needs a natural-language task (math/code): the model critiques its "
          "own attempt in words.")
    model_fn = functools.cache(lambda m=method: policy.model(trained(m)))
    out = self_correction.evaluate_cached(
        workdir, method, model_fn, env, env.heldout,
        batch_size=config.eval.batch_size, self_refine=method == "self_refine", mesh=mesh)
    results[method] = out["metrics"]
    if repair_set:
      rep = repair_lib.evaluate_repair_cached(
          workdir, method, model_fn, env, by_id, repair_set, batch_size=config.eval.batch_size,
          self_refine=method == "self_refine", mesh=mesh)
      out["metrics"] = results[method] = {**out["metrics"], "mbpp_r": rep["metrics"]}
    if config.eval.samples >= 2:  # the line a second attempt has to beat (not a Δ)
      correct_PxN, _ = sampled_eval.sample_answers(
          model_fn(), env, env.heldout, samples=config.eval.samples,
          temperature=config.eval.temperature, seed=config.eval.seed,
          batch_size=config.eval.batch_size, mesh=mesh)
      out["metrics"] = results[method] = {
          **out["metrics"], "pass@2": sampled_eval.sampled_metrics(correct_PxN, ks=[2])["pass@2"]}
    writer.write_scalars(0, {f"eval/{method}/{k}": v["value"]
                             for k, v in out["metrics"].items() if k != "n"})
    logging.warning("%s: %s", method, {k: round(v["value"], 1)
                                       for k, v in out["metrics"].items() if k != "n"})
  info = run_lib.run_info(workdir, config)
  table = tables.write_results(
      workdir, results, title=config.title, published=tables.PUBLISHED.get(config.published),
      published_extra=tables.PUBLISHED_EXTRA.get(config.published),
      info={"commit": info["commit"], "machine": info["machine"], "seed": config.seed,
            **({"MBPP-R": repair_note} if repair_note else {})})
  print(table)
  writer.close()
  return results
