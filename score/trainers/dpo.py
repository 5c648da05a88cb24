"""DPO training through the shared loop: sequence log-probs (sums over response tokens), a
frozen reference, batches that are a pure function of the step (resumable).

Rafailov et al. (2023), arXiv 2305.18290, as used by Self-Rewarding LMs (Yuan et al. 2024):
``L = −log σ(β[(log πθ(y_c|x) − log π_ref(y_c|x)) − (log πθ(y_r|x) − log π_ref(y_r|x))])``,
with ``log π(y|x) = Σ_t∈response log p(y_t | x, y_<t)`` — a sum, *not* a length-normalised
mean (the loss itself is `score.losses.preference.dpo`).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score.data import codec as codec_lib
from score.eval import results as results_lib
from score.losses import preference
from score.models import token_logprobs
from score.trainers import common
from score.utils import metrics as metrics_lib

# (tokens, loss_mask) of the chosen and of the rejected sequence (prompt ⊕ response ⊕ EOS).
PairTokens = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]
LogprobFn = Callable[[common.Params, jax.Array, jax.Array], jax.Array]


@functools.lru_cache(maxsize=16)
def policy_logprob_fn(policy: common.Policy) -> LogprobFn:
  """`(params, tokens_BxL, mask_BxL) -> logp_BxL` of a `Policy`'s Transformer (one function
  object per policy, so jitted users of it compile once)."""
  return lambda params, tokens_BxL, mask_BxL: token_logprobs(
      policy.model(params), tokens_BxL, mask_BxL)


def sequence_logps(logp_BxL: jax.Array, loss_mask_BxL: jax.Array) -> jax.Array:
  """``Σ_t logp_BxL[b, t] · loss_mask_BxL[b, t]`` — the response's log-probability (a sum)."""
  return jnp.sum(logp_BxL * loss_mask_BxL.astype(logp_BxL.dtype), axis=-1)


def make_dpo_step(logprob_fn: LogprobFn, optimizer: optax.GradientTransformation, *,
                  beta: float, label_smoothing: float = 0.0, nll_weight: float = 0.0,
                  micro_batches: int = 1):
  """A jitted DPO step `(params, opt_state, batch) -> (params, opt_state, metrics)`.

  `batch`: `chosen_BxL`, `chosen_mask_BxL` (padding), `chosen_loss_mask_BxL` (response
  tokens), the same three for `rejected_*`, and `ref_chosen_B`, `ref_rejected_B` (reference
  sequence log-probs, constants). Chosen and rejected go through one forward pass. The loss
  is the batch mean of `preference.dpo` plus `nll_weight` × `preference.chosen_nll` (RPO;
  0 = plain DPO); with `micro_batches` M > 1 it and its gradient are accumulated over M
  micro-batches of pairs (`common.make_step`; exact, a mean over pairs).
  """

  def loss_fn(params, batch):
    b = batch["chosen_BxL"].shape[0]
    tokens = jnp.concatenate([batch["chosen_BxL"], batch["rejected_BxL"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask_BxL"], batch["rejected_mask_BxL"]], axis=0)
    loss_mask = jnp.concatenate(
        [batch["chosen_loss_mask_BxL"], batch["rejected_loss_mask_BxL"]], axis=0)
    seq = sequence_logps(logprob_fn(params, tokens, mask), loss_mask)
    pc_B, pr_B = seq[:b], seq[b:]
    losses_B = preference.dpo(pc_B, pr_B, batch["ref_chosen_B"], batch["ref_rejected_B"], beta,
                              label_smoothing=label_smoothing)
    if nll_weight:
      chosen_len_B = jnp.sum(batch["chosen_loss_mask_BxL"], axis=-1)
      losses_B = losses_B + nll_weight * preference.chosen_nll(pc_B, chosen_len_B)
    rc_B = preference.implicit_rewards(pc_B, batch["ref_chosen_B"], beta)
    rr_B = preference.implicit_rewards(pr_B, batch["ref_rejected_B"], beta)
    metrics = {"reward/chosen": rc_B.mean(), "reward/rejected": rr_B.mean(),
               "reward/margin": (rc_B - rr_B).mean(),
               "reward/accuracy": (rc_B > rr_B).astype(jnp.float32).mean(),
               "logp/chosen": pc_B.mean(), "logp/rejected": pr_B.mean()}
    return losses_B.mean(), metrics

  return common.make_step(loss_fn, optimizer, micro_batches=micro_batches)


def _pad(rows, length, pad_id=0):
  return common.pad_batch([list(r) for r in rows], pad_id=pad_id, length=length)


@functools.lru_cache(maxsize=16)
def _jitted_sequence_logps(logprob_fn: LogprobFn):
  return jax.jit(lambda p, t, m, lm: sequence_logps(logprob_fn(p, t, m), lm))


def reference_logps(logprob_fn: LogprobFn, params, rows: Sequence[tuple[Sequence[int],
                                                                        Sequence[int]]],
                    *, length: int, batch_size: int, pad_id: int = 0) -> np.ndarray:
  """Sequence log-probs (sums over each row's loss mask) of `(tokens, loss_mask)` rows, in
  fixed-shape batches (one compilation)."""
  fn = _jitted_sequence_logps(logprob_fn)
  out = []
  for start in range(0, len(rows), batch_size):
    chunk = list(rows[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)
    tokens = _pad([t for t, _ in chunk], length, pad_id)
    mask = _pad([[1] * len(t) for t, _ in chunk], length)
    loss_mask = _pad([m for _, m in chunk], length)
    out.append(np.asarray(fn(params, jnp.asarray(tokens), jnp.asarray(mask),
                             jnp.asarray(loss_mask)))[:n])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


class PairBatches:
  """Batch `step` of a finite list of preference pairs, reshuffled each epoch; a pure function
  of (seed, step), so a resumed run sees the same data."""

  def __init__(self, pairs: Sequence[PairTokens], ref_chosen: np.ndarray,
               ref_rejected: np.ndarray, batch_size: int, *, seed: int, pad_id: int = 0):
    if not pairs:
      raise ValueError("PairBatches: no preference pairs")
    self.pairs = list(pairs)
    self.ref_chosen = np.asarray(ref_chosen, np.float32)
    self.ref_rejected = np.asarray(ref_rejected, np.float32)
    self.batch_size = batch_size
    self.seed = seed
    self.pad_id = pad_id
    self.length = max(max(len(p[0]), len(p[2])) for p in self.pairs)

  def indices(self, step: int) -> list[int]:
    n = len(self.pairs)
    start = step * self.batch_size
    idx: list[int] = []
    while len(idx) < self.batch_size:
      epoch, offset = divmod(start + len(idx), n)
      perm = np.random.default_rng([self.seed, epoch]).permutation(n)
      idx.extend(int(i) for i in perm[offset:offset + self.batch_size - len(idx)])
    return idx

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    idx = self.indices(step)
    rows = [self.pairs[i] for i in idx]
    out = {}
    for name, k in (("chosen", 0), ("rejected", 2)):
      out[f"{name}_BxL"] = _pad([r[k] for r in rows], self.length, self.pad_id)
      out[f"{name}_mask_BxL"] = _pad([[1] * len(r[k]) for r in rows], self.length)
      out[f"{name}_loss_mask_BxL"] = _pad([r[k + 1] for r in rows], self.length)
    out["ref_chosen_B"] = self.ref_chosen[idx]
    out["ref_rejected_B"] = self.ref_rejected[idx]
    return out


def num_steps(cfg, num_pairs: int) -> int:
  """`cfg.steps` when > 0, else ``ceil(cfg.epochs · num_pairs / cfg.batch_size)``."""
  if cfg.steps > 0:
    return int(cfg.steps)
  return max(1, math.ceil(cfg.epochs * num_pairs / cfg.batch_size))


def train_dpo(policy: common.Policy, params, ref_params, pairs: Sequence[PairTokens], cfg, *,
              workdir: str, name: str, seed: int, pad_id: int = 0,
              writer: metrics_lib.MetricWriter | None = None, mesh_cfg=None):
  """DPO of `params` against the frozen `ref_params` on `pairs`; a resumable phase.

  Args:
    policy: the model layout.
    params: initial params (the Self-Rewarding loop starts M_{t+1} from M_t = reference).
    ref_params: the reference model's params; their sequence log-probs are computed once.
    pairs: `(chosen_tokens, chosen_loss_mask, rejected_tokens, rejected_loss_mask)`.
    cfg: `beta`, `label_smoothing`, `nll_weight` (optional, RPO's NLL term; 0 = DPO),
      `batch_size`, `steps` (or `epochs`), `lr` and the optimiser fields of
      `common.make_optimizer`, `checkpoint_every`, `log_every`.
    workdir, name: checkpoints go to `<workdir>/checkpoints/<name>`; re-running resumes.
    seed: data order.
    pad_id: padding token.
    writer: metrics writer.
    mesh_cfg: the config's `mesh` section (None: one device): params and optimizer state are
      sharded over it, the reference like the params; gradients accumulated over its
      `micro_batches`.

  Returns:
    `(params, summary)`: the trained params and the DPO loss / implicit-reward accuracy of
    the final params over all `pairs`.
  """
  common.check_batch(mesh_cfg, cfg.batch_size, "dpo.batch_size")
  logprob_fn = policy_logprob_fn(policy)
  steps = num_steps(cfg, len(pairs))
  optimizer = common.make_optimizer(cfg, steps)
  params, opt_state, step_fn = common.shard(
      policy, params, optimizer.init(params),
      make_dpo_step(logprob_fn, optimizer, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                    nll_weight=cfg.get("nll_weight", 0.0),
                    micro_batches=common.micro_batches(mesh_cfg)),
      mesh_cfg)
  ref_params = common.shard_like(ref_params, params)
  length = max(max(len(p[0]), len(p[2])) for p in pairs)
  ref_c = reference_logps(logprob_fn, ref_params, [(p[0], p[1]) for p in pairs],
                          length=length, batch_size=cfg.batch_size, pad_id=pad_id)
  ref_r = reference_logps(logprob_fn, ref_params, [(p[2], p[3]) for p in pairs],
                          length=length, batch_size=cfg.batch_size, pad_id=pad_id)
  batches = PairBatches(pairs, ref_c, ref_r, cfg.batch_size, seed=seed, pad_id=pad_id)

  def update(step, state):
    p, o, metrics = step_fn(state["params"], state["opt_state"], batches(step))
    return {"params": p, "opt_state": o}, metrics

  state = {"params": params, "opt_state": opt_state}
  state = common.train_loop(workdir=workdir, name=name, state=state, update=update,
                            num_steps=steps, checkpoint_every=cfg.checkpoint_every,
                            log_every=cfg.log_every, writer=writer)
  params = state["params"]
  summary = evaluate_pairs(logprob_fn, params, pairs, cfg, pad_id=pad_id, ref=(ref_c, ref_r))
  summary = {"pairs": len(pairs), "steps": steps, "final_loss": summary["loss"],
             "reward_accuracy": summary["reward_accuracy"],
             "reward_margin": summary["reward_margin"]}
  return params, summary


def evaluate_pairs(logprob_fn: LogprobFn, params, pairs: Sequence[PairTokens], cfg, *,
                   pad_id: int = 0, ref_params=None, ref=None) -> dict[str, float]:
  """DPO loss, implicit-reward accuracy (margin > 0) and mean margin of `params` on `pairs`
  against the reference (its params, or its sequence log-probs `ref=(chosen, rejected)`)."""
  length = max(max(len(p[0]), len(p[2])) for p in pairs)
  kw = dict(length=length, batch_size=cfg.batch_size, pad_id=pad_id)

  def seq(p):
    return (reference_logps(logprob_fn, p, [(r[0], r[1]) for r in pairs], **kw),
            reference_logps(logprob_fn, p, [(r[2], r[3]) for r in pairs], **kw))

  ref_c, ref_r = ref if ref is not None else seq(ref_params)
  pol_c, pol_r = seq(params)
  losses = np.asarray(preference.dpo(pol_c, pol_r, ref_c, ref_r, cfg.beta,
                                     label_smoothing=cfg.label_smoothing))
  margin = cfg.beta * ((pol_c - ref_c) - (pol_r - ref_r))
  return {"pairs": len(pairs), "loss": float(losses.mean()),
          "reward_accuracy": float((margin > 0).mean()), "reward_margin": float(margin.mean())}


def preference_pairs(codec, ranked, max_len: int) -> tuple[list[PairTokens], int]:
  """`(chosen tokens, loss mask, rejected tokens, loss mask)` per prompt — its best against its
  worst response (pairs data: chosen against rejected) — rendered by `codec`
  (`score.data.codec.Codec`). Prompts whose responses all tie, or whose texts
  exceed `max_len` tokens, are dropped; returns the pairs and the number dropped."""
  out, dropped = [], 0
  for r in ranked:
    best = min(range(len(r.ranks)), key=lambda i: (r.ranks[i], i))
    worst = max(range(len(r.ranks)), key=lambda i: (r.ranks[i], -i))
    c = codec.example(r.prompt, r.responses[best], max_len)
    w = codec.example(r.prompt, r.responses[worst], max_len)
    if r.ranks[best] == r.ranks[worst] or c is None or w is None:
      dropped += 1
      continue
    out.append((c[0], c[1], w[0], w[1]))
  return out, dropped


def train(config, workdir: str):
  """`config.trainer = "dpo"`: DPO of `config.model.model_dir` on JSONL preferences
  (configs/dpo.py); the reference is the initial model. Writes results.json/md (held-out
  DPO loss and implicit-reward accuracy before and after) and the trained model as a Hugging
  Face checkpoint in `<workdir>/model`."""
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.trainers import reward_model as rm_lib  # pylint: disable=g-import-not-at-top
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  from score.utils import run as run_lib  # pylint: disable=g-import-not-at-top

  if config.data.get("runlocal"):
    rm_lib.write_runlocal_preferences(config, workdir)
  if not config.model.model_dir:
    raise config_lib.ConfigError("dpo needs model.model_dir (a local Hugging Face checkpoint: "
                                 "the initial policy, the reference and the tokenizer)")
  tokenizer = hf.load_tokenizer(config.model.model_dir)
  codec = codec_lib.Codec(tokenizer, config.data.format)
  train_rows, heldout_rows = rm_lib.split_preferences(config)
  (pairs, dropped), (heldout, dropped_eval) = (
      preference_pairs(codec, rows, config.data.max_len) for rows in (train_rows, heldout_rows))
  if not pairs or not heldout:
    raise ValueError(f"dpo: {len(pairs)} training and {len(heldout)} held-out pairs after "
                     f"dropping tied or over-long ones (max_len={config.data.max_len})")
  model = common.build_model(config.model, seed=config.seed, mesh_cfg=config.get("mesh"))
  policy, ref_params = common.Policy.split(model)
  writer = metrics_lib.MetricWriter(workdir)
  logprob_fn = policy_logprob_fn(policy)
  before = evaluate_pairs(logprob_fn, ref_params, heldout, config.dpo, pad_id=codec.pad_id,
                          ref_params=ref_params)
  params, summary = train_dpo(policy, ref_params, ref_params, pairs, config.dpo,
                              workdir=workdir, name="dpo", seed=config.seed,
                              pad_id=codec.pad_id, writer=writer, mesh_cfg=config.get("mesh"))
  results = {"init": before,
             "trained": evaluate_pairs(logprob_fn, params, heldout, config.dpo,
                                       pad_id=codec.pad_id, ref_params=ref_params)}
  hf.save_pretrained(policy.model(params), os.path.join(workdir, "model"), tokenizer=tokenizer)
  info = run_lib.write_run_info(workdir, config)
  data = {"train_pairs": len(pairs), "heldout_pairs": len(heldout),
          "dropped": dropped + dropped_eval, "train_path": config.data.train_path}
  lines = ["**DPO, held-out pairs (implicit reward β·(log π − log π_ref))**", "",
           "| model | pairs | DPO loss | reward accuracy % | reward margin |",
           "|---|---|---|---|---|"]
  lines += [f"| {k} | {r['pairs']} | {r['loss']:.4f} | {100 * r['reward_accuracy']:.1f} | "
            f"{r['reward_margin']:.4f} |" for k, r in results.items()]
  lines += ["", "data: " + ", ".join(f"{k} {v}" for k, v in data.items()),
            f"commit {info['commit']}, {info['machine']}, seed {config.seed}"]
  results_lib.write(workdir, {"results": results, "train_summary": summary, "data": data,
                               "commit": info["commit"], "seed": config.seed},
                    "\n".join(lines) + "\n")
  writer.close()
  return results
