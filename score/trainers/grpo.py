r"""Single-turn RL with verifiable rewards: GRPO, Dr. GRPO, DAPO (and RLOO) in one trainer.

Each step (SPEC §5):

1. Sample G responses for each of `prompts_per_step` prompts with the current policy
   (`score.sampling.rollouts`, one turn). The sampler returns the raw model's log-probs of
   every generated token (π_sampler); the trainer recomputes them with its own forward pass at
   the same weights: these are the "old" log-probs `log π_old` of the importance ratio. Their
   difference, the sampler/trainer mismatch, is logged (`mismatch/mean`, `abs_max`, `frac`
   beyond `rl.mismatch_threshold`) and can be corrected with truncated importance weights
   `min(π_old / π_sampler, rl.tis_cap)` per token or per sequence (`rl.tis_level`; "none" by
   default: in fp32 the mismatch is float noise; for bf16 sampling on accelerators use
   "token" with a cap of 2, Yao et al. 2025).
2. Reward each response with the configured components (`rewards_compose`: the verifiable
   oracle, graders, format, Kimi length, DAPO overlong, no-EOS).
3. DAPO dynamic sampling (`dynamic_sampling=True`): groups whose rewards are all equal carry
   no signal (their group advantage is 0); they are dropped and fresh prompts are sampled
   until `prompts_per_step` informative groups are collected or `max_sampling_rounds` rounds
   have run. Missing groups are then filled with copies whose loss mask is 0 (shapes stay
   static, no gradient comes from them): the batch never trains on an all-equal group.
   (The `"token"` and `"sequence"` reductions ignore fillers; `"constant"` still counts them
   in its B·C denominator.)
4. Advantages by name over each group (`score.losses.pg`: `grpo` = (r − mean)/(σ + ε) with
   σ per `adv_std` ("sample", Bessel-corrected as TRL/verl, or "population") and `adv_scale`
   ("group", "batch" or "none"), ε = `adv_eps`; `dr_grpo` = r − mean; `rloo`), broadcast to
   every response token.
5. `num_epochs` passes over the batch in `num_minibatches` shuffled minibatches; each update
   minimises the clipped surrogate `rl.policy_loss` ("ppo_clip" per token; "gspo" /
   "gspo_token": GSPO's length-normalised sequence ratio, clipped per sequence) with
   `eps_low`/`eps_high` (DAPO clip-higher 0.2/0.28; GSPO 3e-4/4e-4) against `log π_old`,
   plus β·KL to the reference (the initial policy):
   `kl_placement="loss"` adds `β·k(log π − log π_ref)` per token (GRPO: k3, β = 0.04);
   `"reward"` subtracts `β·Σ_t k(log π_old − log π_ref)` from each sequence reward before the
   group advantage. β = 0 skips the reference model altogether (DAPO).
   The loss is reduced by name: `"sequence"` (GRPO), `"token"` (DAPO), `"constant"`
   (Dr. GRPO; the constant defaults to the generation budget).

On the first update of a step the policy *is* the sampler's, so the importance ratio is 1 up
to float error (`ratio_max_dev` logs max |ρ − 1| of every update; `tests/test_grpo.py`
checks it).

Papers: GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300), Dr. GRPO (Liu et al. 2025,
arXiv 2503.20783), DAPO (Yu et al. 2025, arXiv 2503.14476), RLOO (Ahmadian et al. 2024,
arXiv 2402.14740).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from score.eval import results as results_lib
from score.eval import sampled as sampled_eval
from score.losses import importance
from score.losses import kl as kl_lib
from score.losses import pg
from score.losses import ppo as ppo_losses
from score.losses import reduce as reduce_lib
from score.models import token_logprobs
from score.sampling import rollouts
from score.sampling import sampler
from score.trainers import common
from score.trainers import envs
from score.trainers import rewards_compose
from score.trainers import sft as sft_lib
from score.trainers.score import stable_hash
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib
from score.utils import run as run_lib


# ---------------------------------------------------------------------------------------------
# Rollout batches.


@dataclasses.dataclass
class RolloutBatch:
  """N = groups × G single-turn samples, prompt-major (row `i·G + g` = sample g of group i).

  tokens_NxL / mask_NxL: prompt ⊕ response, left-padded to the environment's `max_len`.
  loss_mask_NxL: 1 on generated tokens (EOS included), 0 elsewhere.
  sampler_logp_NxL: the sampler's raw-model log-probs of generated tokens (same alignment
    as `token_logprobs`): π_sampler of the mismatch metrics and truncated importance weights.
  rewards_N: composed rewards; correct_N: oracle rewards; lengths_N: generated tokens;
  finished_N: ended with EOS; active_N: 0 for filler rows (no loss, see dynamic sampling).
  """
  tokens_NxL: np.ndarray
  mask_NxL: np.ndarray
  loss_mask_NxL: np.ndarray
  sampler_logp_NxL: np.ndarray
  rewards_N: np.ndarray
  correct_N: np.ndarray
  lengths_N: np.ndarray
  finished_N: np.ndarray
  active_N: np.ndarray
  problems: list
  responses: list

  def __len__(self):
    return len(self.rewards_N)

  def rows(self, index: Sequence[int]) -> "RolloutBatch":
    index = np.asarray(index, np.int64)
    arrays = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)
              if f.name not in ("problems", "responses")}
    return RolloutBatch(**arrays, problems=[self.problems[i] for i in index],
                        responses=[self.responses[i] for i in index])

  @classmethod
  def concat(cls, parts: Sequence["RolloutBatch"]) -> "RolloutBatch":
    arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
              for f in dataclasses.fields(cls) if f.name not in ("problems", "responses")}
    return cls(**arrays, problems=sum((p.problems for p in parts), []),
               responses=sum((p.responses for p in parts), []))


def sample_batch(policy, params, env, problems, *, group_size, temperature, seed,
                 reward_cfg, top_p=None) -> tuple[RolloutBatch, dict]:
  """G single-turn samples per problem, rewarded; returns `(batch, reward metrics)`. Sampled
  on the mesh `params` live on, if any (the batch split over data×fsdp)."""
  episodes = rollouts.rollout(
      policy.model(params), [env.prompt_tokens(p) for p in problems], num_turns=1,
      max_new_tokens=env.max_new_tokens, samples_per_prompt=group_size,
      temperature=temperature, top_p=top_p, eos_ids=env.eos_ids, max_len=env.max_len,
      pad_id=env.pad_id, seed=seed, mesh=common.mesh_of(params))
  row_problems = [problems[int(i)] for i in episodes.prompt_index_B]
  responses = [r[0] for r in episodes.responses]
  finished = ~episodes.truncated_BxK[:, 0]
  rewards, correct, metrics = rewards_compose.score_responses(
      env, row_problems, responses, group_size=group_size, reward_cfg=reward_cfg,
      finished=finished)
  batch = RolloutBatch(
      tokens_NxL=episodes.tokens_BxL, mask_NxL=episodes.mask_BxL,
      loss_mask_NxL=episodes.loss_mask_BxL, sampler_logp_NxL=episodes.logprobs_BxL,
      rewards_N=rewards, correct_N=correct,
      lengths_N=episodes.lengths_BxK[:, 0].astype(np.int32), finished_N=finished,
      active_N=np.ones(len(rewards), np.float32), problems=row_problems, responses=responses)
  return batch, metrics


def informative_groups(rewards_N, group_size) -> np.ndarray:
  """Bool per group: the rewards of its G samples are not all equal."""
  r = np.asarray(rewards_N).reshape(-1, group_size)
  return r.max(axis=1) != r.min(axis=1)


def collect_groups(sample_round, num_groups: int, group_size: int, *, dynamic: bool,
                   max_rounds: int) -> tuple[RolloutBatch, dict]:
  """Collects `num_groups` groups; with `dynamic`, only groups whose rewards differ (DAPO).

  Args:
    sample_round: `round -> (RolloutBatch, metrics)`; called with 0, 1, … until enough
      informative groups are found or `max_rounds` rounds have run.
    num_groups: groups in the returned batch.
    group_size: G.
    dynamic: drop all-equal groups and resample (else one round, every group kept).
    max_rounds: bound on sampling rounds.

  Returns:
    `(batch, metrics)`. If fewer than `num_groups` informative groups were found, the batch
    is filled with copies of collected groups whose `active_N` and loss mask are 0, so the
    update sees static shapes and never a gradient from an all-equal group.
  """
  first, metrics = sample_round(0)
  if not dynamic:
    return first, dict(metrics, **{"dynamic/rounds": 1.0})
  kept, seen, informative, rounds = [], [first], 0, 0
  batch = first
  while True:
    rounds += 1
    keep_G = informative_groups(batch.rewards_N, group_size)
    informative += int(keep_G.sum())
    for g in np.flatnonzero(keep_G):
      if sum(len(k) for k in kept) < num_groups * group_size:
        kept.append(batch.rows(range(g * group_size, (g + 1) * group_size)))
    if sum(len(k) for k in kept) >= num_groups * group_size or rounds >= max_rounds:
      break
    batch, _ = sample_round(rounds)
    seen.append(batch)
  have = sum(len(k) for k in kept) // group_size
  sampled = sum(len(s) for s in seen) // group_size
  pool = kept if kept else [seen[0].rows(range(group_size))]
  fillers = []
  for j in range(num_groups - have):
    filler = pool[j % len(pool)].rows(range(group_size))
    filler.active_N = np.zeros(group_size, np.float32)
    filler.loss_mask_NxL = np.zeros_like(filler.loss_mask_NxL)
    fillers.append(filler)
  out = RolloutBatch.concat(kept + fillers)
  metrics = dict(metrics, **{
      "dynamic/rounds": float(rounds),
      "dynamic/informative_frac": informative / max(sampled, 1),
      "dynamic/active_groups": float(have),
  })
  return out, metrics


# ---------------------------------------------------------------------------------------------
# The jitted update.


def grpo_loss(params, batch, *, policy, rl, loss_constant):
  """The per-update objective on a minibatch; returns `(loss, metrics)`.

  `batch`: tokens, mask, loss_mask, old_logp (the trainer's recomputation at the sampling
  weights), sampler_logp (the sampler's), ref_logp (unused when the KL is not in the loss),
  advantages_B (one per sequence). The policy loss is `rl.policy_loss` ("ppo_clip", "gspo",
  "gspo_token"), weighted per token by the truncated importance weights of `rl.tis_level`.
  """
  logp_BxL = token_logprobs(policy.model(params), batch["tokens"], batch["mask"])
  loss_mask_BxL = batch["loss_mask"]
  adv_BxL = batch["advantages"][:, None] * loss_mask_BxL
  pg_BxL, metrics = policy_loss(logp_BxL, adv_BxL, batch, rl)
  loss_BxL = pg_BxL
  if rl.beta > 0 and rl.kl_placement == "loss":
    _, kl_BxL = kl_lib.penalty(logp_BxL, batch["ref_logp"], loss_mask_BxL, beta=rl.beta,
                               kind=rl.kl_estimator, placement="loss")
    loss_BxL = loss_BxL + kl_BxL
    metrics["kl"] = reduce_lib.reduce(kl_BxL / rl.beta, loss_mask_BxL, "token")
  loss = reduce_lib.reduce(loss_BxL, loss_mask_BxL, rl.reduction, constant=loss_constant)
  dev_BxL = jnp.abs(jnp.exp(logp_BxL - batch["old_logp"]) - 1.0)
  metrics["ratio_max_dev"] = jnp.max(jnp.where(loss_mask_BxL > 0, dev_BxL, 0.0))
  metrics["pg_loss"] = reduce_lib.reduce(pg_BxL, loss_mask_BxL, rl.reduction,
                                         constant=loss_constant)
  return loss, jax.lax.stop_gradient(metrics)


def policy_loss(logp_BxL, adv_BxL, batch, rl):
  """`rl.policy_loss` against `batch["old_logp"]`, times the TIS weights of `rl.tis_level`
  (`min(π_old / π_sampler, rl.tis_cap)`, 1 with "none"); `(loss_BxL, metrics)` (GRPO, PPO)."""
  loss_mask_BxL = batch["loss_mask"]
  pg_BxL, metrics = ppo_losses.surrogate(
      rl.policy_loss, logp_BxL, batch["old_logp"], adv_BxL, loss_mask_BxL, eps_low=rl.eps_low,
      eps_high=rl.eps_high, dual_clip=rl.dual_clip or None)
  weights_BxL = importance.truncated_weights(batch["old_logp"], batch["sampler_logp"],
                                             loss_mask_BxL, level=rl.tis_level, cap=rl.tis_cap)
  metrics["tis_weight"] = reduce_lib.reduce(weights_BxL, loss_mask_BxL, "token")
  return pg_BxL * weights_BxL, metrics


def old_logprobs(logp_fn, params, batch: RolloutBatch, rl) -> tuple[np.ndarray, dict]:
  """π_old: the trainer's log-probs of the sampled tokens at the sampling weights (what the
  importance ratio divides by), and the sampler/trainer mismatch against the sampler's own
  (`score.losses.importance.mismatch_metrics`, threshold `rl.mismatch_threshold`) as
  `mismatch/mean`, `mismatch/abs_max`, `mismatch/frac`. On the host (GRPO, PPO)."""
  old_logp = common.to_host(logp_fn(params, batch.tokens_NxL, batch.mask_NxL))
  metrics = importance.mismatch_metrics(old_logp, batch.sampler_logp_NxL, batch.loss_mask_NxL,
                                        threshold=rl.mismatch_threshold)
  return old_logp, {f"mismatch/{k}": float(v) for k, v in metrics.items()}


def make_update(policy, optimizer, rl, loss_constant, micro_batches=1):
  """Jitted `(params, opt_state, minibatch) -> (params, opt_state, metrics)`; gradients
  accumulated over `micro_batches` micro-batches of the minibatch (`common.make_step`)."""
  loss_fn = functools.partial(grpo_loss, policy=policy, rl=rl, loss_constant=loss_constant)

  return common.make_step(loss_fn, optimizer, micro_batches=micro_batches)


def sequence_kl(old_logp_NxL, ref_logp_NxL, loss_mask_NxL, kind) -> np.ndarray:
  """`Σ_t k(log π_old − log π_ref)` over each response (the KL of `kl_placement="reward"`)."""
  kl_NxL = kl_lib.estimate(jnp.asarray(old_logp_NxL), jnp.asarray(ref_logp_NxL), kind)
  return np.asarray(jnp.sum(jnp.where(jnp.asarray(loss_mask_NxL) > 0, kl_NxL, 0.0), axis=1))


def minibatches(num_rows: int, num_minibatches: int, seed) -> list[np.ndarray]:
  """A seeded shuffle of `range(num_rows)` split into `num_minibatches` equal parts."""
  if num_rows % num_minibatches:
    raise ValueError(f"{num_rows} rollout rows cannot be split into {num_minibatches} "
                     "equal minibatches; make prompts_per_step × samples_per_prompt a multiple "
                     "of num_minibatches.")
  perm = np.random.default_rng(seed).permutation(num_rows)
  return np.split(perm, num_minibatches)


def _check_rl(rl):
  common.check_names(rl, advantage=pg.ADVANTAGES, kl_placement=kl_lib.PLACEMENTS,
                     kl_estimator=kl_lib.ESTIMATORS, reduction=reduce_lib.MODES,
                     adv_std=pg.STDS, adv_scale=pg.SCALES, policy_loss=ppo_losses.SURROGATES,
                     tis_level=importance.LEVELS)


def advantage_options(rl) -> dict:
  """The `"grpo"` estimator's std and scaling (`rl.adv_std`, `rl.adv_scale`); the other
  estimators take none."""
  return dict(std=rl.adv_std, scale=rl.adv_scale) if rl.advantage == "grpo" else {}


def check_minibatch(rl, mesh_cfg):
  """The update's minibatch (`prompts_per_step × samples_per_prompt / num_minibatches` rows)
  splits into the mesh's `micro_batches` and over its devices (GRPO, PPO)."""
  rows = rl.prompts_per_step * rl.samples_per_prompt
  if rows % rl.num_minibatches == 0:  # else `minibatches` says so at the first step
    common.check_batch(mesh_cfg, rows // rl.num_minibatches,
                       "the minibatch (rl.prompts_per_step × rl.samples_per_prompt / "
                       "rl.num_minibatches)")


def train_grpo(policy, params, ref_params, env, rl, reward_cfg, *, workdir: str,
               name: str = "grpo", writer=None, mesh_cfg=None):
  """Runs `rl.steps` GRPO-family steps from `params`; resumable; returns the new params.

  `rl`: see `configs/grpo_synthetic.py`. The RNG and the problems of every step are pure
  functions of (seed, step, sampling round), so a resumed run samples the same batches.
  `mesh_cfg`: the config's `mesh` section (None: one device); the policy's params and
  optimizer state are sharded over it, the frozen reference like the policy; each update's
  gradient is accumulated over its `micro_batches`.
  """
  _check_rl(rl)
  check_minibatch(rl, mesh_cfg)
  updates_per_step = rl.num_epochs * rl.num_minibatches
  optimizer = common.make_optimizer(rl, rl.steps * updates_per_step)
  loss_constant = rl.loss_constant or env.max_new_tokens
  params, opt_state, update_fn = common.shard(
      policy, params, optimizer.init(params),
      make_update(policy, optimizer, rl, float(loss_constant),
                  micro_batches=common.micro_batches(mesh_cfg)), mesh_cfg)
  logp_fn = ref_fn = common.logprobs_fn(policy)
  use_ref = rl.beta > 0
  ref_params = common.shard_like(ref_params, params) if use_ref else None
  base_key = jax.random.fold_in(jax.random.key(rl.seed), stable_hash(name))
  group_size = rl.samples_per_prompt

  def update(step, state):
    t0 = time.perf_counter()
    params, opt_state = state["params"], state["opt_state"]

    def sample_round(r):
      problems = env.train_problems(stable_hash(f"{name}/{step}/{r}"), rl.prompts_per_step)
      return sample_batch(policy, params, env, problems, group_size=group_size,
                          temperature=rl.temperature, reward_cfg=reward_cfg,
                          seed=jax.random.fold_in(jax.random.fold_in(base_key, step), r))

    batch, metrics = collect_groups(sample_round, rl.prompts_per_step, group_size,
                                    dynamic=rl.dynamic_sampling,
                                    max_rounds=rl.max_sampling_rounds)
    t_sample = time.perf_counter() - t0
    tokens, mask = batch.tokens_NxL, batch.mask_NxL
    # On the host, so that a sharded update can lay it out like the rest of the batch.
    ref_logp = (common.to_host(ref_fn(ref_params, tokens, mask)) if use_ref
                else np.zeros(tokens.shape, np.float32))
    old_logp, mismatch = old_logprobs(logp_fn, params, batch, rl)
    metrics.update(mismatch)
    rewards = batch.rewards_N
    if use_ref and rl.kl_placement == "reward":
      seq_kl = sequence_kl(old_logp, ref_logp, batch.loss_mask_NxL, rl.kl_estimator)
      rewards = rewards - rl.beta * seq_kl
      metrics["kl_seq"] = float(np.mean(seq_kl))
    adv = np.asarray(pg.flat_advantages(jnp.asarray(rewards), group_size, rl.advantage,
                                        eps=rl.adv_eps, **advantage_options(rl)))
    adv = adv * batch.active_N
    arrays = {"tokens": tokens, "mask": mask, "loss_mask": batch.loss_mask_NxL,
              "old_logp": old_logp, "sampler_logp": batch.sampler_logp_NxL,
              "ref_logp": ref_logp, "advantages": adv.astype(np.float32)}
    history = []
    for epoch in range(rl.num_epochs):
      for idx in minibatches(len(batch), rl.num_minibatches, [rl.seed, step, epoch]):
        mb = {k: v[idx] for k, v in arrays.items()}
        params, opt_state, m = update_fn(params, opt_state, mb)
        history.append(m)
    history = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    out["ratio_max_dev_first"] = float(history[0]["ratio_max_dev"])
    out["ratio_max_dev"] = float(max(h["ratio_max_dev"] for h in history))
    out.update(metrics)
    out["time/sample_s"] = t_sample
    out["time/step_s"] = time.perf_counter() - t0
    return {"params": params, "opt_state": opt_state}, out

  state = {"params": params, "opt_state": opt_state}
  state = common.train_loop(workdir=workdir, name=name, state=state, update=update,
                            num_steps=rl.steps, checkpoint_every=rl.checkpoint_every,
                            writer=writer, log_every=rl.log_every)
  return state["params"]


# ---------------------------------------------------------------------------------------------
# Shared by the single-turn trainers (GRPO, PPO).


def evaluate(model, env, problems, *, batch_size: int = 256, samples: int = 0,
             temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
  """Greedy single-attempt accuracy (oracle reward) and mean response length (sampled on the
  mesh the model's params live on, if any). With `samples` n > 0, also pass@k and maj@k of n
  samples per problem at `temperature` (`score.eval.sampled`; k = 1, 2, 4, …, n) as
  `pass@k`, `pass@k_low`, `pass@k_high` (95 % interval), the same for `maj@k`."""
  mesh = common.model_mesh(model)
  correct, lengths, finished = [], [], []
  for start in range(0, len(problems), batch_size):
    chunk = problems[start:start + batch_size]
    out = sampler.generate(model, [env.prompt_tokens(p) for p in chunk],
                           max_new_tokens=env.max_new_tokens, temperature=0.0,
                           eos_ids=env.eos_ids, pad_id=env.pad_id, mesh=mesh)
    for p, ids, reason in zip(chunk, out.tokens, out.finish_reason):
      correct.append(env.reward(p, ids))
      lengths.append(len(ids))
      finished.append(reason == sampler.FINISH_STOP)
  n = len(correct)
  acc = float(np.mean(correct)) if n else 0.0
  half = 1.96 * np.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1))
  out = {"accuracy": 100 * acc, "accuracy_ci95": float(100 * half),
         "length": float(np.mean(lengths)), "finished": 100 * float(np.mean(finished)), "n": n}
  if samples > 0:
    sampled = sampled_eval.evaluate(model, env, problems, samples=samples,
                                    temperature=temperature, seed=seed, batch_size=batch_size,
                                    mesh=mesh)
    for name, m in sampled.items():
      out.update({name: m["value"], f"{name}_low": m["low"], f"{name}_high": m["high"]})
  return out


def init_policy(config, env, *, workdir: str, writer=None):
  """The starting policy: `config.model` (a fresh tiny model or `model_dir`), then, when
  `config.warmup.steps > 0` on a synthetic task, the SFT warm-up of
  `score.trainers.sft.synthetic_warmup_batches` (only its first-attempt answers matter here).
  Returns `(policy, params)`."""
  tokenizer = getattr(env, "tokenizer", None)
  vocab = getattr(tokenizer, "vocab_size", None)
  warmup = config.warmup.steps > 0  # it trains every weight: LoRA adapters come after it
  model = common.build_model(config.model, vocab, seed=config.seed, lora_on=not warmup,
                             mesh_cfg=config.get("mesh"))
  model = common.apply_mesh_options(model, config.get("mesh"))
  policy, params = common.Policy.split(model)
  if warmup:
    if not hasattr(env, "task"):
      raise ValueError("warmup.steps > 0 needs a synthetic task (SFT warm-up data); set "
                       "warmup.steps=0 to start from model.model_dir as it is.")
    batches = sft_lib.synthetic_warmup_batches(env.task, env.tokenizer, config.warmup.batch_size,
                                               seed=config.seed, exclude=env.heldout)
    params = sft_lib.train_sft(policy, params, batches, config.warmup, workdir=workdir,
                               name="warmup", writer=writer, mesh_cfg=config.get("mesh"))
    policy, params = common.add_lora(policy, params, config.model, seed=config.seed)
  return policy, params


def write_results(workdir: str, results: dict[str, dict], *, config, title: str) -> str:
  """`results.json` + `results.md` (printed): greedy held-out accuracy of each model of the run."""
  info = run_lib.write_run_info(workdir, config)
  lines = [f"**{title}**", "", "| model | n | accuracy % (95% CI) | mean length | ends with EOS % |",
           "|---|---|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['n']} | {r['accuracy']:.1f} ± {r['accuracy_ci95']:.1f} | "
                 f"{r['length']:.2f} | {r['finished']:.1f} |")
  sampled = [k for k in next(iter(results.values())) if k.startswith(("pass@", "maj@"))
             and not k.endswith(("_low", "_high"))]
  if sampled:  # `eval.samples` > 0
    lines += ["", f"Sampled at temperature {config.eval.temperature}, "
              f"{config.eval.samples} samples per problem (95 % bootstrap intervals):", "",
              "| model | " + " | ".join(sampled) + " |", "|---|" + "---|" * len(sampled)]
    for name, r in results.items():
      lines.append(f"| {name} | " + " | ".join(
          f"{r[k]:.1f} [{r[k + '_low']:.1f}, {r[k + '_high']:.1f}]" for k in sampled) + " |")
  lines += ["", f"commit {info['commit']}, {info['machine']}, seed {config.seed}"]
  return results_lib.write(workdir, {"results": results, "commit": info["commit"],
                                     "seed": config.seed}, "\n".join(lines) + "\n")


def run_single_turn(config, workdir: str, train_fn, *, title: str):
  """Env, starting policy, `params = train_fn(policy, base, env, writer)`, greedy evals."""
  if config.task.name in ("math", "code") and config.get("runlocal_model"):
    envs.make_runlocal_model(config, workdir)
  if config.task.name in ("math", "code") and not config.model.get("model_dir"):
    raise config_lib.ConfigError(
        "config.model.model_dir is empty: point it at a local Hugging Face checkpoint, e.g. "
        "--config configs/grpo_math.py:model_dir=/ckpt/qwen2.5-1.5b-instruct (or use :runlocal).")
  env = envs.make_env(config)
  writer = metrics_lib.MetricWriter(workdir)
  policy, base = init_policy(config, env, workdir=workdir, writer=writer)
  problems = list(env.heldout)[:config.eval.num_problems]
  eval_kw = dict(batch_size=config.eval.batch_size, samples=config.eval.samples,
                 temperature=config.eval.temperature, seed=config.eval.seed)
  results = {"base": evaluate(policy.model(base), env, problems, **eval_kw)}
  params = train_fn(policy, base, env, writer)
  results[config.trainer] = evaluate(policy.model(params), env, problems, **eval_kw)
  for name, r in results.items():
    writer.write_scalars(0, {f"eval/{name}/{k}": v for k, v in r.items()})
    logging.warning("%s: %s", name, {k: round(v, 2) for k, v in r.items()})
  write_results(workdir, results, config=config, title=title)
  writer.close()
  return results


def train(config, workdir: str):
  """`config.trainer = "grpo"` (configs/grpo_synthetic.py, grpo_math.py, dapo_math.py)."""
  def train_fn(policy, base, env, writer):
    return train_grpo(policy, base, base, env, config.rl, config.reward, workdir=workdir,
                      writer=writer, mesh_cfg=config.get("mesh"))
  return run_single_turn(config, workdir, train_fn,
                         title=config.get("title", "GRPO, greedy held-out accuracy"))
