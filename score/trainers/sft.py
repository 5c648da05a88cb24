"""Supervised fine-tuning: masked token cross-entropy on model-written tokens only.

Used for the SFT warm-up of the embedded default, the STaR and Pair-SFT baselines, and M1 of
Self-Rewarding LMs. `train` is the launcher entry for `config.trainer = "sft"`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score.data import synthetic
from score.losses import reduce as reduce_lib
from score.models import lora, token_logprobs
from score.trainers import common
from score.utils import metrics as metrics_lib


def make_sft_step(policy: common.Policy, optimizer: optax.GradientTransformation, *,
                  micro_batches: int = 1):
  """A jitted step minimising −Σ log p(token) over `loss_mask_BxL` / its token count.

  `step(params, opt_state, tokens_BxL, mask_BxL, loss_mask_BxL) -> (params, opt_state,
  metrics)`. With `micro_batches` M > 1 the gradient is accumulated over M micro-batches
  (`score.parallel.accumulate_gradients`; activations of B/M rows at a time). Each
  micro-batch's token sum is divided by the token count of the *whole* batch, so loss and
  gradient are exactly the full batch's token mean (not a mean of per-micro-batch means). A
  batch whose B is not a multiple of M (e.g. STaR's successful rows) is padded inside the step
  with copies of its rows that have an all-zero loss mask.
  """

  def grads_of(frozen, params, tokens_BxL, mask_BxL, loss_mask_BxL):
    def loss_fn(params, tokens_BxL, mask_BxL, loss_mask_BxL):
      logp_BxL = token_logprobs(policy.model(lora.join(frozen, params)), tokens_BxL, mask_BxL)
      return reduce_lib.reduce(-logp_BxL, loss_mask_BxL, "token")

    def micro_loss_fn(params, tokens_BxL, mask_BxL, loss_mask_BxL, scale_B):
      # `scale_B` = M / (the whole batch's token count) on every row.
      logp_BxL = token_logprobs(policy.model(lora.join(frozen, params)), tokens_BxL, mask_BxL)
      weight_BxL = loss_mask_BxL.astype(logp_BxL.dtype)
      return jnp.sum(jnp.where(weight_BxL > 0, -logp_BxL * weight_BxL, 0.0)) * scale_B[0]

    if micro_batches == 1:
      return jax.value_and_grad(loss_fn)(params, tokens_BxL, mask_BxL, loss_mask_BxL)
    from score import parallel  # pylint: disable=g-import-not-at-top
    b = tokens_BxL.shape[0]
    pad = -b % micro_batches
    if pad:  # copies of real rows (whole attention masks), no loss tokens
      rows_P = jnp.arange(pad) % b
      tokens_BxL = jnp.concatenate([tokens_BxL, tokens_BxL[rows_P]])
      mask_BxL = jnp.concatenate([mask_BxL, mask_BxL[rows_P]])
      loss_mask_BxL = jnp.concatenate([loss_mask_BxL, jnp.zeros_like(loss_mask_BxL[rows_P])])
    count = jnp.maximum(jnp.sum(loss_mask_BxL.astype(jnp.float32)), 1.0)  # as "token" does
    scale_B = jnp.full((b + pad,), micro_batches / count, jnp.float32)
    return parallel.accumulate_gradients(micro_loss_fn, micro_batches)(
        params, tokens_BxL, mask_BxL, loss_mask_BxL, scale_B)

  def step(frozen, params, opt_state, tokens_BxL, mask_BxL, loss_mask_BxL):
    # `params` are the trainable ones (LoRA: the adapters), `frozen` the rest (TrainStep).
    loss, grads = grads_of(frozen[0], params, tokens_BxL, mask_BxL, loss_mask_BxL)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

  from score import parallel  # pylint: disable=g-import-not-at-top
  return parallel.TrainStep(step)


@functools.lru_cache(maxsize=16)
def _compiled_step(policy, cfg_items, micro_batches=1):
  cfg = common.unfrozen(cfg_items)
  optimizer = common.make_optimizer(cfg, cfg.steps)
  return optimizer, make_sft_step(policy, optimizer, micro_batches=micro_batches)


class ExampleBatches:
  """Batch `step` of a finite list of `(tokens, loss_mask)` examples, reshuffled each epoch.

  The batch is a pure function of (seed, step), so a resumed run sees the same data.
  """

  def __init__(self, examples, batch_size: int, *, seed: int, pad_id: int = 0):
    if not examples:
      raise ValueError("no training examples")
    self.examples = examples
    self.batch_size = batch_size
    self.seed = seed
    self.pad_id = pad_id
    self.length = max(len(t) for t, _ in examples)

  def __call__(self, step: int):
    n = len(self.examples)
    start = step * self.batch_size
    idx = []
    while len(idx) < self.batch_size:
      epoch, offset = divmod(start + len(idx), n)
      perm = np.random.default_rng([self.seed, epoch]).permutation(n)
      idx.extend(perm[offset:offset + self.batch_size - len(idx)])
    rows = [self.examples[i] for i in idx]
    tokens = common.pad_batch([t for t, _ in rows], pad_id=self.pad_id, length=self.length)
    loss_mask = common.pad_batch([m for _, m in rows], length=self.length)
    mask = common.pad_batch([[1] * len(t) for t, _ in rows], length=self.length)
    return tokens, mask, loss_mask


def train_sft(policy: common.Policy, params, batches, cfg, *, workdir: str, name: str,
              writer: metrics_lib.MetricWriter | None = None, mesh_cfg=None):
  """Fine-tunes `params` for `cfg.steps` steps on `batches(step)`; resumable per phase.

  Args:
    policy: the model layout.
    params: initial params (also the template when resuming).
    batches: `step -> (tokens_BxL, mask_BxL, loss_mask_BxL)`, a pure function of `step`.
    cfg: `steps`, `lr` (+ optimiser fields of `common.make_optimizer`), `checkpoint_every`.
    workdir: the run's workdir.
    name: the phase name (checkpoint folder and metric prefix).
    writer: metrics writer.
    mesh_cfg: the config's `mesh` section (None: one device).

  Returns:
    The fine-tuned params.
  """
  if cfg.get("batch_size"):
    common.check_batch(mesh_cfg, cfg.batch_size, "the SFT batch_size")
  optimizer, step_fn = _compiled_step(policy, common.frozen(cfg), common.micro_batches(mesh_cfg))
  params, opt_state, step_fn = common.shard(policy, params, optimizer.init(params), step_fn,
                                            mesh_cfg)
  state = {"params": params, "opt_state": opt_state}

  def update(step, state):
    tokens, mask, loss_mask = batches(step)
    p, o, metrics = step_fn(state["params"], state["opt_state"], jnp.asarray(tokens),
                            jnp.asarray(mask), jnp.asarray(loss_mask > 0, jnp.int32))
    return {"params": p, "opt_state": o}, metrics

  state = common.train_loop(workdir=workdir, name=name, state=state, update=update,
                            num_steps=cfg.steps, checkpoint_every=cfg.checkpoint_every,
                            writer=writer)
  return state["params"]


def synthetic_warmup_batches(task, tokenizer, batch_size: int, *, seed: int, exclude=()):
  """Fresh warm-up episodes for every step (seeded by step): `step -> batch`."""
  exclude = tuple(exclude)

  def batches(step):
    episodes = task.warmup_episodes(batch_size, seed=seed * 1_000_003 + step, exclude=exclude)
    rows = [synthetic.episode_tokens(tokenizer, e.problem.question, (e.y1, e.y2))
            for e in episodes]
    length = 1 + task.prompt_len + 2 * task.max_answer_len + 1
    tokens = common.pad_batch([t for t, _ in rows], pad_id=tokenizer.pad_id, length=length)
    mask = common.pad_batch([[1] * len(t) for t, _ in rows], length=length)
    loss_mask = common.pad_batch([m for _, m in rows], length=length)
    return tokens, mask, loss_mask

  return batches


def train(config, workdir: str):
  """`config.trainer = "sft"`: the SFT warm-up on a synthetic task (see configs/sft_synthetic.py)."""
  task = synthetic.make_task(config.task.name, **{k: v for k, v in config.task.items()
                                                   if k != "name"})
  tokenizer = task.tokenizer
  model = common.build_model(config.model, tokenizer.vocab_size, seed=config.seed,
                             mesh_cfg=config.get("mesh"))
  model = common.apply_mesh_options(model, config.get("mesh"))
  policy, params = common.Policy.split(model)
  writer = metrics_lib.MetricWriter(workdir)
  heldout = task.problems(config.eval.num_problems, seed=config.eval.seed)
  batches = synthetic_warmup_batches(task, tokenizer, config.warmup.batch_size,
                                     seed=config.seed, exclude=heldout)
  params = train_sft(policy, params, batches, config.warmup, workdir=workdir, name="warmup",
                     writer=writer, mesh_cfg=config.get("mesh"))
  writer.close()
  return policy, params
