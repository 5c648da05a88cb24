r"""PPO with a value model and GAE: the Tülu 3 RLVR recipe (Lambert et al. 2024, arXiv 2411.15124).

Each step (SPEC §3–§4):

1. Sample responses with the current policy; `log π_old` is the trainer's recomputation of
   the sampled tokens' log-probs (the sampler/trainer mismatch against the sampler's own is
   logged and optionally corrected by truncated importance weights, `rl.tis_level`, as in
   `score.trainers.grpo`); score them: reward = α·[answer verified] (α = 10) plus the −10
   no-EOS penalty (`rewards_compose`, from the config's `reward` section).
2. Per-token rewards: `r_t = −β·k1(log π_old − log π_ref)` on every response token (KL in the
   reward, `kl_placement="reward"`, k1), plus the sequence reward on the last response token.
3. Values `V(s_t)` from the value model (a `ScalarModel`: a Transformer body with a scalar
   head), aligned like the log-probs: the value of the state *before* token t is the head at
   position t − 1. GAE over response tokens (γ = 1, λ = 0.95): δ_t = r_t + γV_{t+1} − V_t,
   A_t = Σ_l (γλ)^l δ_{t+l}, returns R_t = A_t + V_t; advantages optionally whitened over the
   batch's response tokens.
4. `num_epochs` × `num_minibatches` updates of both models: clipped surrogate
   (`rl.policy_loss`: "ppo_clip", or GSPO's sequence ratio; `eps_low`/`eps_high`) for the
   policy, `vf_coef` × clipped value loss for the value model
   (each with its own optimiser; the two parameter sets are disjoint).

The value model starts from the policy's body (`value.init="policy"`), from a reward model
trained by `score.trainers.reward_model` (`"reward_model"`, Tülu 3 / InstructGPT; the RM run's
workdir in `value.reward_model_dir`) or from scratch (`"scratch"`). Its head is zero-initialised
when it does not come from a reward model, so V ≡ 0 at the start.
"""

from __future__ import annotations

import functools
import time

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from score.losses import importance
from score.losses import kl as kl_lib
from score.losses import ppo as ppo_losses
from score.losses import reduce as reduce_lib
from score.models import lora, token_logprobs
from score.trainers import common
from score.trainers import grpo as grpo_lib
from score.trainers import reward_model as rm_lib
from score.trainers.score import stable_hash


def shift_values(scores_BxL):
  """Head outputs at every position -> `values_BxL[b, t] = V(tokens[:t])` (position 0: 0)."""
  return jnp.concatenate([jnp.zeros_like(scores_BxL[:, :1]), scores_BxL[:, :-1]], axis=1)


@functools.lru_cache(maxsize=None)
def values_fn(value_def):
  """Jitted `(value_params, tokens_BxL, mask_BxL) -> values_BxL` (aligned with log-probs)."""
  @jax.jit
  def fn(params, tokens_BxL, mask_BxL):
    return shift_values(value_def.model(params)(tokens_BxL, mask_BxL))
  return fn


def last_token_mask(loss_mask_BxL) -> np.ndarray:
  """1 at the last response token of each row (nothing for an empty response)."""
  m = np.asarray(loss_mask_BxL) > 0
  length = m.shape[1]
  last_B = length - 1 - np.argmax(m[:, ::-1], axis=1)
  out = np.zeros(m.shape, np.float32)
  has = m.any(axis=1)
  out[np.flatnonzero(has), last_B[has]] = 1.0
  return out


def token_rewards(rewards_B, old_logp_BxL, ref_logp_BxL, loss_mask_BxL, *, beta, kl_estimator,
                  kl_placement):
  """Per-token rewards: the sequence reward on the last response token, minus
  `β·k(log π_old − log π_ref)` on every response token when the KL is in the reward."""
  rewards_BxL = jnp.asarray(last_token_mask(loss_mask_BxL)) * jnp.asarray(rewards_B)[:, None]
  if beta > 0 and kl_placement == "reward":
    delta_BxL, _ = kl_lib.penalty(jnp.asarray(old_logp_BxL), jnp.asarray(ref_logp_BxL),
                                  jnp.asarray(loss_mask_BxL), beta=beta, kind=kl_estimator,
                                  placement="reward")
    rewards_BxL = rewards_BxL + delta_BxL
  return rewards_BxL


def whiten(x_BxL, mask_BxL, eps=1e-8):
  """`(x − mean) / std` over the masked entries; 0 elsewhere."""
  m = jnp.asarray(mask_BxL, jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  mean = jnp.sum(x_BxL * m) / n
  var = jnp.sum(jnp.square(x_BxL - mean) * m) / n
  return jnp.where(m > 0, (x_BxL - mean) / jnp.sqrt(var + eps), 0.0)


def compute_advantages(rewards_B, old_logp_BxL, ref_logp_BxL, values_BxL, loss_mask_BxL, rl):
  """`(advantages_BxL, returns_BxL, token_rewards_BxL)` of a rollout batch (steps 2–3 above)."""
  r_BxL = token_rewards(rewards_B, old_logp_BxL, ref_logp_BxL, loss_mask_BxL, beta=rl.beta,
                        kl_estimator=rl.kl_estimator, kl_placement=rl.kl_placement)
  adv_BxL, returns_BxL = ppo_losses.gae(r_BxL, jnp.asarray(values_BxL), jnp.asarray(loss_mask_BxL),
                                       gamma=rl.gamma, lam=rl.lam)
  if rl.whiten_advantages:
    adv_BxL = whiten(adv_BxL, loss_mask_BxL)
  return adv_BxL, returns_BxL, r_BxL


def ppo_loss(params, value_params, batch, *, policy, value_def, rl):
  """`(total loss, (policy loss, value loss, metrics))` on a minibatch."""
  loss_mask_BxL = batch["loss_mask"]
  logp_BxL = token_logprobs(policy.model(params), batch["tokens"], batch["mask"])
  pg_BxL, metrics = grpo_lib.policy_loss(logp_BxL, batch["advantages"], batch, rl)
  if rl.beta > 0 and rl.kl_placement == "loss":
    _, kl_BxL = kl_lib.penalty(logp_BxL, batch["ref_logp"], loss_mask_BxL, beta=rl.beta,
                               kind=rl.kl_estimator, placement="loss")
    pg_BxL = pg_BxL + kl_BxL
  pg_loss = reduce_lib.reduce(pg_BxL, loss_mask_BxL, rl.reduction)
  values_BxL = shift_values(value_def.model(value_params)(batch["tokens"], batch["mask"]))
  vf_BxL, vf_metrics = ppo_losses.clipped_value_loss(
      values_BxL, batch["old_values"], batch["returns"], loss_mask_BxL,
      clip=rl.value_clip or None)
  vf_loss = reduce_lib.reduce(vf_BxL, loss_mask_BxL, rl.reduction)
  dev_BxL = jnp.abs(jnp.exp(logp_BxL - batch["old_logp"]) - 1.0)
  metrics = dict(metrics, **vf_metrics, pg_loss=pg_loss, value_loss=vf_loss,
                 ratio_max_dev=jnp.max(jnp.where(loss_mask_BxL > 0, dev_BxL, 0.0)))
  return pg_loss + rl.vf_coef * vf_loss, jax.lax.stop_gradient(metrics)


def make_update(policy, value_def, policy_opt, value_opt, rl, micro_batches=1):
  """Jitted update of both models on one minibatch; the gradients of both are accumulated
  over `micro_batches` micro-batches of it (`score.parallel.accumulate_gradients`: loss,
  gradients and metrics are means over the micro-batches, see `common.make_step`)."""
  from score import parallel  # pylint: disable=g-import-not-at-top

  def update(frozen, params, opt_state, value_params, value_opt_state, batch):
    # Trainable params (LoRA: adapters, and the value head) in, the frozen rest beside.
    def loss_fn(both, batch):
      return ppo_loss(lora.join(frozen[0], both[0]), lora.join(frozen[1], both[1]), batch,
                      policy=policy, value_def=value_def, rl=rl)

    grad_fn = parallel.accumulate_gradients(loss_fn, micro_batches, has_aux=True)
    (loss, metrics), (g_pi, g_v) = grad_fn((params, value_params), batch)
    updates, opt_state = policy_opt.update(g_pi, opt_state, params)
    params = optax.apply_updates(params, updates)
    v_updates, value_opt_state = value_opt.update(g_v, value_opt_state, value_params)
    value_params = optax.apply_updates(value_params, v_updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(g_pi),
                   value_grad_norm=optax.global_norm(g_v))
    return params, opt_state, value_params, value_opt_state, metrics

  return parallel.TrainStep(update, num_models=2)


def init_value_model(value_cfg, model_cfg, policy_params, *, vocab_size, seed, mesh_cfg=None):
  """`(value_def, value_params)` per `value_cfg.init` ("policy", "reward_model", "scratch");
  the body rematerialised per `mesh_cfg.remat` (`common.apply_mesh_options`)."""
  body = common.apply_mesh_options(common.build_model(model_cfg, vocab_size, seed=seed + 17,
                                                      mesh_cfg=mesh_cfg),
                                   mesh_cfg)
  model = rm_lib.ScalarModel(body, rngs=nnx.Rngs(seed + 18))
  value_def, value_params = common.Policy.split(model)
  if value_cfg.init == "policy":
    prefix = "['backbone']"
    copied = 0
    for key in value_params:
      if key.startswith(prefix) and key[len(prefix):] in policy_params:
        value_params[key] = policy_params[key[len(prefix):]]
        copied += 1
    if not copied:
      raise ValueError("value.init='policy': no parameter of the policy matches the value "
                       "model's body; are config.model and the policy the same architecture?")
  elif value_cfg.init == "reward_model":
    value_params = rm_lib.load_params(value_cfg.reward_model_dir, value_params)
  elif value_cfg.init != "scratch":
    raise ValueError(f"value.init={value_cfg.init!r}; expected 'policy', 'reward_model' or "
                     "'scratch'.")
  return value_def, value_params


def _check_rl(rl):
  common.check_names(rl, kl_placement=kl_lib.PLACEMENTS,
                     kl_estimator=kl_lib.ESTIMATORS, reduction=reduce_lib.MODES,
                     policy_loss=ppo_losses.SURROGATES, tis_level=importance.LEVELS)


def train_ppo(policy, params, ref_params, value_def, value_params, env, rl, reward_cfg, *,
              workdir: str, name: str = "ppo", writer=None, mesh_cfg=None):
  """Runs `rl.steps` PPO steps; resumable; returns `(params, value_params)`.

  `mesh_cfg`: the config's `mesh` section (None: one device); both models' params and
  optimizer states are sharded over it, the frozen reference like the policy; each update's
  gradients are accumulated over its `micro_batches`.
  """
  _check_rl(rl)
  grpo_lib.check_minibatch(rl, mesh_cfg)
  updates_per_step = rl.num_epochs * rl.num_minibatches
  policy_opt = common.make_optimizer(rl, rl.steps * updates_per_step)
  value_opt = common.make_optimizer(ml_collections.ConfigDict(dict(rl.to_dict(), lr=rl.value_lr)),
                                    rl.steps * updates_per_step)
  [(params, opt_state), (value_params, value_opt_state)], update_fn = common.shard_models(
      make_update(policy, value_def, policy_opt, value_opt, rl,
                  micro_batches=common.micro_batches(mesh_cfg)), mesh_cfg,
      (policy, params, policy_opt.init(params)),
      (value_def, value_params, value_opt.init(value_params)))
  logp_fn = ref_fn = common.logprobs_fn(policy)
  ref_params = common.shard_like(ref_params, params) if rl.beta > 0 else None
  v_fn = values_fn(value_def)
  base_key = jax.random.fold_in(jax.random.key(rl.seed), stable_hash(name))

  def update(step, state):
    t0 = time.perf_counter()
    problems = env.train_problems(stable_hash(f"{name}/{step}"), rl.prompts_per_step)
    batch, metrics = grpo_lib.sample_batch(
        policy, state["params"], env, problems, group_size=rl.samples_per_prompt,
        temperature=rl.temperature, reward_cfg=reward_cfg, seed=jax.random.fold_in(base_key, step))
    t_sample = time.perf_counter() - t0
    tokens, mask = batch.tokens_NxL, batch.mask_NxL
    # On the host, so that a sharded update can lay them out like the rest of the batch.
    ref_logp = (common.to_host(ref_fn(ref_params, tokens, mask)) if rl.beta > 0
                else np.zeros(tokens.shape, np.float32))
    old_logp, mismatch = grpo_lib.old_logprobs(logp_fn, state["params"], batch, rl)
    metrics.update(mismatch)
    old_values = common.to_host(v_fn(state["value_params"], tokens, mask))
    adv, returns, r_tok = common.to_host(compute_advantages(
        batch.rewards_N, old_logp, ref_logp, old_values, batch.loss_mask_NxL, rl))
    arrays = {"tokens": tokens, "mask": mask, "loss_mask": batch.loss_mask_NxL,
              "old_logp": old_logp, "sampler_logp": batch.sampler_logp_NxL, "ref_logp": ref_logp,
              "advantages": adv, "returns": returns, "old_values": old_values}
    p, o = state["params"], state["opt_state"]
    vp, vo = state["value_params"], state["value_opt_state"]
    history = []
    for epoch in range(rl.num_epochs):
      for idx in grpo_lib.minibatches(len(batch), rl.num_minibatches, [rl.seed, step, epoch]):
        p, o, vp, vo, m = update_fn(p, o, vp, vo, {k: v[idx] for k, v in arrays.items()})
        history.append(m)
    history = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    out["ratio_max_dev_first"] = float(history[0]["ratio_max_dev"])
    lm = np.asarray(batch.loss_mask_NxL, np.float32)
    out["token_reward_sum"] = float(np.sum(np.asarray(r_tok) * lm) / max(len(batch), 1))
    out["value_mean"] = float(np.sum(np.asarray(old_values) * lm) / max(lm.sum(), 1.0))
    out.update(metrics)
    out["time/sample_s"] = t_sample
    out["time/step_s"] = time.perf_counter() - t0
    return {"params": p, "opt_state": o, "value_params": vp, "value_opt_state": vo}, out

  state = {"params": params, "opt_state": opt_state,
           "value_params": value_params, "value_opt_state": value_opt_state}
  state = common.train_loop(workdir=workdir, name=name, state=state, update=update,
                            num_steps=rl.steps, checkpoint_every=rl.checkpoint_every,
                            writer=writer, log_every=rl.log_every)
  return state["params"], state["value_params"]


def train(config, workdir: str):
  """`config.trainer = "ppo"` (configs/rlvr_math.py; runlocal on synthetic addition)."""
  def train_fn(policy, base, env, writer):
    vocab = getattr(getattr(env, "tokenizer", None), "vocab_size", None)
    value_def, value_params = init_value_model(config.value, config.model, base,
                                               vocab_size=vocab, seed=config.seed,
                                               mesh_cfg=config.get("mesh"))
    params, _ = train_ppo(policy, base, base, value_def, value_params, env, config.rl,
                          config.reward, workdir=workdir, writer=writer,
                          mesh_cfg=config.get("mesh"))
    return params
  return grpo_lib.run_single_turn(config, workdir, train_fn,
                                  title=config.get("title", "PPO (RLVR), greedy held-out accuracy"))
