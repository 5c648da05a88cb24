"""SCoRe: two-stage multi-turn RL for self-correction (Kumar et al., 2024, arXiv 2409.12917).

Each RL step: sample `prompts_per_step × samples_per_prompt` two-attempt episodes with the
current policy at `temperature` (`score.sampling.rollouts`), reward each attempt with the
environment's oracle, compute the frozen reference policy's log-probs once, and take one
gradient step on the Stage I or Stage II objective (`score.losses.score`):

* Stage I: reward on the second attempt only; β2 KL on first-attempt tokens keeps the first
  attempt near the reference (against collapse); β1 KL on the second attempt.
* Stage II: both attempts rewarded, each turn credited with its own return; the second
  attempt's reward gets the bonus α·(r2 − r1); β1 KL on both turns.

Stages are interleaved for `rounds` rounds. The reference policy is the initial model.
The update logs the sampler/trainer mismatch of both turns' tokens (`mismatch/*`: the
update's own log-probs, at the sampling weights, against the sampler's) and can weight the
REINFORCE term with truncated importance weights (`rl.tis_level`, `rl.tis_cap`;
`score.losses.importance`).
Ablations are config overrides (`configs/score_ablations.py`):
`rl.stage1_steps=0` (w/o Stage I), `rl.alpha=0` (w/o shaping), `rl.multi_turn=False`
(w/o multi-turn training: only the first attempt is trained, single-turn RL),
`rl.stage2_method="star"` (STaR instead of REINFORCE in Stage II).
"""

from __future__ import annotations

import functools
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from score import report
from score.losses import importance
from score.losses import kl as kl_lib
from score.losses import pg
from score.losses import reduce as reduce_lib
from score.losses import score as score_losses
from score.models import token_logprobs
from score.sampling import rollouts
from score.trainers import common
from score.trainers import sft as sft_lib


def sample_episodes(policy, params, env, problems, *, samples_per_prompt, temperature, seed,
                    num_turns=2):
  """Two-attempt episodes for `problems` and their per-turn rewards `r_BxK`; sampled on the
  mesh `params` live on, if any (the batch split over data×fsdp)."""
  episodes = rollouts.rollout(
      policy.model(params), [env.prompt_tokens(p) for p in problems], num_turns=num_turns,
      max_new_tokens=env.max_new_tokens, instruction=env.instruction,
      samples_per_prompt=samples_per_prompt, temperature=temperature, eos_ids=env.eos_ids,
      max_len=env.max_len, pad_id=env.pad_id, seed=seed, mesh=common.mesh_of(params))
  rewards = np.zeros((len(episodes.responses), num_turns), np.float32)
  for k in range(num_turns):
    rows = [b for b, r in enumerate(episodes.responses) if len(r) > k]
    responses = [episodes.responses[b][k] for b in rows]
    rewards[rows, k] = np.add(
        env.rewards([problems[int(episodes.prompt_index_B[b])] for b in rows], responses),
        env.shaping_bonus(responses))
  return episodes, rewards


def stable_hash(text: str) -> int:
  """A process-independent 31-bit hash (Python's `hash` of a str changes between runs)."""
  return zlib.crc32(text.encode()) & 0x7FFFFFFF


def make_rl_step(policy, optimizer, rl, micro_batches=1):
  """A jitted SCoRe update for one stage; returns `(params, opt_state, metrics)`."""

  def loss_fn(params, batch, stage):
    logp_BxL = token_logprobs(policy.model(params), batch["tokens"], batch["mask"])
    # One update at the sampling weights: π_old is this forward pass, held constant.
    old_logp_BxL = jax.lax.stop_gradient(logp_BxL)
    turn_mask = batch["turn_mask"]
    mismatch = importance.mismatch_metrics(old_logp_BxL, batch["sampler_logp"], turn_mask > 0,
                                           threshold=rl.mismatch_threshold)
    if not rl.multi_turn:  # w/o multi-turn training: only the first attempt is trained
      turn_mask = jnp.where(turn_mask == 1, 1, 0)
    common_kw = dict(group_size=rl.samples_per_prompt, advantage=rl.advantage,
                     beta1=rl.beta1, kl_estimator=rl.kl_estimator,
                     kl_placement=rl.kl_placement, reduction=rl.reduction,
                     is_weights_BxT=importance.truncated_weights(
                         old_logp_BxL, batch["sampler_logp"], turn_mask > 0,
                         level=rl.tis_level, cap=rl.tis_cap))
    if stage == 1:
      loss, metrics = score_losses.stage1_objective(
          logp_BxL, batch["ref_logp"], turn_mask, batch["r1"], batch["r2"],
          beta2=rl.beta2, **common_kw)
    else:
      loss, metrics = score_losses.stage2_objective(
          logp_BxL, batch["ref_logp"], turn_mask, batch["r1"], batch["r2"], alpha=rl.alpha,
          **common_kw)
    return loss, dict(metrics, **{f"mismatch/{k}": v for k, v in mismatch.items()})

  step = common.make_step(loss_fn, optimizer, static_argnames=("stage",),
                          micro_batches=micro_batches, group_size=rl.samples_per_prompt)
  return lambda params, opt_state, batch, stage: step(params, opt_state, batch, stage=stage)


# Settings that do not change the compiled update (they act outside it).
_NOT_IN_STEP = ("seed", "rounds", "stage1_steps", "stage2_steps", "prompts_per_step",
                "temperature", "stage2_method", "checkpoint_every", "log_every")


@functools.lru_cache(maxsize=16)
def _compiled_steps(policy, rl_items, steps, star, micro_batches=1):
  """One optimiser and jitted steps per (policy, hyper-parameters): phases with the same
  settings (SCoRe and its ablations) share their compilations."""
  rl = common.unfrozen(rl_items)
  optimizer = common.make_optimizer(rl, steps)
  return (optimizer, make_rl_step(policy, optimizer, rl, micro_batches),
          sft_lib.make_sft_step(policy, optimizer, micro_batches=micro_batches) if star else None)


def _star_batch(env, episodes, rewards, problems, pad_to):
  """STaR-style SFT batch from an RL batch: successful second attempts, loss on turn 2."""
  rows = []
  for b in np.flatnonzero(rewards[:, 1] > 0):
    problem = problems[int(episodes.prompt_index_B[b])]
    tokens, turn_mask = env.episode_tokens(problem, episodes.responses[b][:2])
    rows.append((tokens, [1 if m == 2 else 0 for m in turn_mask]))
  if not rows:
    return None
  tokens = common.pad_batch([t for t, _ in rows], pad_id=env.pad_id, length=pad_to)
  loss_mask = common.pad_batch([m for _, m in rows], length=pad_to)
  mask = common.pad_batch([[1] * len(t) for t, _ in rows], length=pad_to)
  return tokens, mask, loss_mask


def train_score(policy, params, ref_params, env, rl, *, workdir: str, name: str = "score",
                writer=None, mesh_cfg=None):
  """Runs `rl.rounds` rounds of Stage I then Stage II from `params`; returns the new params.

  Each stage is a resumable phase `<name>/r<round>_stage<k>`; the RNG of every step is a
  function of (seed, phase, step), so a resumed run samples the same episodes.
  """
  common.check_names(rl, advantage=pg.ADVANTAGES, kl_placement=kl_lib.PLACEMENTS,
                     kl_estimator=kl_lib.ESTIMATORS, reduction=reduce_lib.MODES,
                     stage2_method=("reinforce", "star"), tis_level=importance.LEVELS)
  ref_fn = common.logprobs_fn(policy)
  stages = [(1, rl.stage1_steps), (2, rl.stage2_steps)]
  for rnd in range(rl.rounds):
    for stage, steps in stages:
      if steps <= 0:
        continue
      phase = f"{name}/r{rnd}_stage{stage}"
      optimizer, step_fn, sft_step = _compiled_steps(
          policy, common.frozen(rl, _NOT_IN_STEP), steps,
          stage == 2 and rl.stage2_method == "star", common.micro_batches(mesh_cfg))
      base_key = jax.random.fold_in(jax.random.key(rl.seed), stable_hash(phase))
      p, o, step_fn = common.shard(policy, params, optimizer.init(params), step_fn, mesh_cfg,
                                   static_argnames=("stage",))
      state = {"params": p, "opt_state": o}
      ref = common.shard_like(ref_params, p)

      def update(step, state, stage=stage, phase=phase, step_fn=step_fn, sft_step=sft_step,
                 base_key=base_key, ref=ref):
        t0 = time.perf_counter()
        problems = env.train_problems(stable_hash(f"{phase}/{step}"), rl.prompts_per_step)
        episodes, rewards = sample_episodes(
            policy, state["params"], env, problems, samples_per_prompt=rl.samples_per_prompt,
            temperature=rl.temperature, seed=jax.random.fold_in(base_key, step))
        t_sample = time.perf_counter() - t0
        if writer is not None and (step + 1) % rl.log_every == 0:
          report.write_rollout_samples(writer, step + 1, f"{phase}/samples", env, problems,
                                       episodes, rewards)
        tokens = jnp.asarray(episodes.tokens_BxL)
        mask = jnp.asarray(episodes.mask_BxL)
        if sft_step is not None:
          batch = _star_batch(env, episodes, rewards, problems, tokens.shape[1])
          metrics = {"loss": 0.0}
          p, o = state["params"], state["opt_state"]
          if batch is not None:
            p, o, metrics = sft_step(p, o, *map(jnp.asarray, batch))
        else:
          batch = {"tokens": tokens, "mask": mask,
                   "turn_mask": jnp.asarray(episodes.turn_mask_BxL),
                   "sampler_logp": jnp.asarray(episodes.logprobs_BxL),
                   # Stays on the device(s): reference log-probs never visit the host.
                   "ref_logp": ref_fn(ref, tokens, mask),
                   "r1": jnp.asarray(rewards[:, 0]), "r2": jnp.asarray(rewards[:, 1])}
          p, o, metrics = step_fn(state["params"], state["opt_state"], batch, stage=stage)
        metrics = dict(metrics, **{"reward/t1_sampled": rewards[:, 0].mean(),
                                   "reward/t2_sampled": rewards[:, 1].mean(),
                                   "time/sample_s": t_sample,
                                   "time/step_s": time.perf_counter() - t0})
        return {"params": p, "opt_state": o}, metrics

      state = common.train_loop(workdir=workdir, name=phase, state=state, update=update,
                                num_steps=steps, checkpoint_every=rl.checkpoint_every,
                                writer=writer, log_every=rl.log_every)
      params = state["params"]
  return params
