r"""Bradley–Terry reward models (InstructGPT, Ouyang et al. 2022, arXiv 2203.02155).

A reward model is a decoder whose unembedding is replaced by a scalar head (`ScalarModel`);
`r(x, y)` is the head's output at the last real token of `x ⊕ y`. Training minimises

    L = mean over prompts of  mean over pairs (i, j) with rank_i < rank_j of
        −log σ(r(x, y_i) − r(x, y_j))

with all K-choose-2 pairs of a prompt's K ranked responses in one batch element
(`score.losses.preference.bradley_terry_k_choose_2`): one forward pass per response, each
response used once per step. Ties are skipped. Accuracy = fraction of strict pairs ordered
correctly (`r_winner > r_loser`; an equal score counts as wrong) on held-out prompts.

The same `ScalarModel` is PPO's value model (`score.trainers.ppo`); a finished run exports
its params to `<workdir>/reward_model_params` (`export_params` / `load_params`), from which
Tülu 3 RLVR initialises the value model.

Synthetic task (the tiny test and `configs/reward_model_synthetic.py`): for an addition
problem, K responses — the right sum (rank 0) and K − 1 sums with one digit changed (rank 1,
tied among themselves). The model must learn to check a sum to rank them.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from score.data import synthetic
from score.data import codec as codec_lib
from score.eval import results as results_lib
from score.losses import preference
from score.models import Transformer
from score.trainers import common
from score.utils import checkpoint as ckpt_lib
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib
from score.utils import run as run_lib

EXPORT_DIR = "reward_model_params"


class ScalarModel(nnx.Module):
  """A Transformer body with a linear scalar head instead of the unembedding.

  `model(tokens_BxL, mask_BxL) -> scores_BxL` (fp32): the head applied to the final-norm
  hidden state of every position. The body's `lm_head` (if untied) is dropped.
  """

  def __init__(self, backbone: Transformer, *, rngs: nnx.Rngs):
    if hasattr(backbone, "lm_head"):
      del backbone.lm_head
    self.backbone = backbone
    self.head = nnx.Linear(backbone.config.hidden_size, 1, kernel_init=nnx.initializers.zeros,
                           rngs=rngs)

  def __call__(self, tokens_BxL, mask_BxL=None):
    h_BxLxD = self.backbone.hidden(tokens_BxL, mask_BxL=mask_BxL)
    return self.head(h_BxLxD.astype(jnp.float32))[..., 0]


def build_scalar_model(model_cfg, vocab_size, *, seed: int, mesh_cfg=None) -> ScalarModel:
  """A `ScalarModel` on a fresh tiny body or on `model_cfg.model_dir` (see `common.build_model`),
  rematerialised per `mesh_cfg.remat` (`common.apply_mesh_options`)."""
  body = common.apply_mesh_options(common.build_model(model_cfg, vocab_size, seed=seed,
                                                      mesh_cfg=mesh_cfg),
                                   mesh_cfg)
  return ScalarModel(body, rngs=nnx.Rngs(seed + 1))


def last_token_scores(scores_BxL, mask_BxL):
  """`scores_BxL` at the last real token of each row (left or right padding) -> `[B]`."""
  mask_BxL = jnp.asarray(mask_BxL)
  length = mask_BxL.shape[1]
  last_B = length - 1 - jnp.argmax(mask_BxL[:, ::-1] > 0, axis=1)
  return jnp.take_along_axis(scores_BxL, last_B[:, None], axis=1)[:, 0]


def sequence_rewards(model: ScalarModel, tokens_BxL, mask_BxL):
  """`r(x ⊕ y)` for every row: the scalar head at its last real token -> `[B]`."""
  return last_token_scores(model(tokens_BxL, mask_BxL), mask_BxL)


def pair_accuracy(rewards_BxK, ranks_BxK, valid_BxK=None):
  """Correctly ordered strict pairs / strict pairs (ties and padding slots skipped), over the
  whole batch."""
  i_P, j_P = preference.ranked_pairs(rewards_BxK.shape[1])
  sign_BxP = jnp.sign(ranks_BxK[:, j_P] - ranks_BxK[:, i_P])
  margin_BxP = sign_BxP * (rewards_BxK[:, i_P] - rewards_BxK[:, j_P])
  valid_BxP = sign_BxP != 0
  if valid_BxK is not None:
    valid_BxP = valid_BxP & valid_BxK[:, i_P] & valid_BxK[:, j_P]
  right = jnp.sum((margin_BxP > 0) & valid_BxP)
  return right / jnp.maximum(jnp.sum(valid_BxP), 1)


def rm_loss(params, tokens_BxKxL, mask_BxKxL, ranks_BxK, *, model_def):
  b, k, l = tokens_BxKxL.shape
  model = model_def.model(params)
  rewards_BxK = sequence_rewards(model, tokens_BxKxL.reshape(b * k, l),
                                 mask_BxKxL.reshape(b * k, l)).reshape(b, k)
  valid_BxK = jnp.any(mask_BxKxL > 0, axis=-1)  # a slot with no tokens is padding
  loss = jnp.mean(preference.bradley_terry_k_choose_2(rewards_BxK, ranks_BxK, valid_BxK))
  metrics = {"accuracy": pair_accuracy(rewards_BxK, ranks_BxK, valid_BxK),
             "reward_mean": jnp.mean(rewards_BxK), "reward_std": jnp.std(rewards_BxK)}
  return loss, jax.lax.stop_gradient(metrics)


def make_rm_step(model_def, optimizer, micro_batches=1):
  """Jitted `(params, opt_state, tokens_BxKxL, mask_BxKxL, ranks_BxK) -> (params, opt, m)`;
  gradients accumulated over `micro_batches` micro-batches of prompts (`common.make_step`)."""
  loss_fn = functools.partial(rm_loss, model_def=model_def)

  return common.make_step(loss_fn, optimizer, micro_batches=micro_batches)


@functools.lru_cache(maxsize=None)
def _eval_fn(model_def):
  return jax.jit(functools.partial(rm_loss, model_def=model_def))


def evaluate(model_def, params, data, *, batch_size: int = 256) -> dict[str, float]:
  """Pair accuracy (%) and mean loss on `(tokens_BxKxL, mask_BxKxL, ranks_BxK)`."""
  tokens, mask, ranks = data
  fn = _eval_fn(model_def)
  right = pairs = loss_sum = 0.0
  for s in range(0, len(tokens), batch_size):
    sl = slice(s, s + batch_size)
    loss, m = fn(params, jnp.asarray(tokens[sl]), jnp.asarray(mask[sl]), jnp.asarray(ranks[sl]))
    r, v = np.asarray(ranks[sl]), np.asarray(mask[sl]).any(-1)
    n_pairs = sum(int(np.sum((r[:, i] != r[:, j]) & v[:, i] & v[:, j]))
                  for i in range(r.shape[1]) for j in range(i + 1, r.shape[1]))
    right += float(m["accuracy"]) * n_pairs
    pairs += n_pairs
    loss_sum += float(loss) * len(r)
  return {"accuracy": 100 * right / max(pairs, 1), "loss": loss_sum / max(len(tokens), 1),
          "pairs": int(pairs)}


# ---------------------------------------------------------------------------------------------
# Synthetic preferences.


def synthetic_preferences(task: synthetic.AdditionTask, problems, num_responses: int, *,
                          seed: int):
  """Ranked responses for addition problems: the right sum (rank 0) and `K − 1` sums with one
  digit changed (rank 1). Shuffled within each prompt.

  Returns `(tokens_BxKxL, mask_BxKxL, ranks_BxK)` numpy arrays, left-padded.
  """
  if num_responses < 2:
    raise ValueError(f"num_responses must be >= 2 (one right and wrong ones), got {num_responses}")
  tok = task.tokenizer
  rng = np.random.default_rng(seed)
  length = 1 + task.prompt_len + task.max_answer_len
  b, k = len(problems), num_responses
  tokens = np.full((b, k, length), tok.pad_id, np.int32)
  mask = np.zeros((b, k, length), np.int32)
  ranks = np.zeros((b, k), np.int32)
  for i, p in enumerate(problems):
    answers = [(p.answer, 0)]
    while len(answers) < k:
      wrong = task._corrupt(p.answer, rng)  # pylint: disable=protected-access
      answers.append((wrong, 1))
    order = rng.permutation(k)
    for slot, a in enumerate(order):
      text, rank = answers[a]
      ids = [tok.bos_id] + tok.encode(p.question + text) + [tok.eos_id]
      tokens[i, slot, length - len(ids):] = ids
      mask[i, slot, length - len(ids):] = 1
      ranks[i, slot] = rank
  return tokens, mask, ranks


# ---------------------------------------------------------------------------------------------
# Preferences from JSONL (`score.data.self_rewarding.load_ranked` / `load_pairs`).


def ranked_arrays(codec, ranked, *, max_len: int, num_responses: int = 0):
  """`(tokens_BxKxL, mask_BxKxL, ranks_BxK)` numpy arrays, left-padded, from `RankedPrompt`s.

  Each text is what the policy sees and writes: `codec` (`score.data.codec.Codec`:
  chat template or plain "Question: … Answer: ") renders the prompt, then the response
  and EOS, where the reward is read. A text longer than `max_len` tokens keeps its last
  `max_len`. K = `num_responses` or (0) the most responses of any prompt; a prompt with fewer
  has empty slots (all-zero mask), which the loss and the accuracy skip. Returns the arrays and
  the number of truncated texts.
  """
  k = num_responses or max(len(r.responses) for r in ranked)
  too_many = [r.id for r in ranked if len(r.responses) > k]
  if too_many:
    raise ValueError(f"{len(too_many)} prompts have more than num_responses={k} responses "
                     f"(e.g. {too_many[0]}); raise rm.num_responses or set it to 0 (auto)")
  tokens = np.full((len(ranked), k, max_len), codec.pad_id, np.int32)
  mask = np.zeros((len(ranked), k, max_len), np.int32)
  ranks = np.zeros((len(ranked), k), np.int32)
  truncated = 0
  for i, r in enumerate(ranked):
    prompt = codec.encode(codec.user_prompt(r.prompt))
    for slot, (text, rank) in enumerate(zip(r.responses, r.ranks)):
      ids = prompt + codec.encode(text) + [codec.eos_ids[0]]
      if len(ids) > max_len:
        ids, truncated = ids[-max_len:], truncated + 1
      tokens[i, slot, max_len - len(ids):] = ids
      mask[i, slot, max_len - len(ids):] = 1
      ranks[i, slot] = rank
  return (tokens, mask, ranks), truncated


def _load_preferences(path: str, fmt: str):
  from score.data import self_rewarding as sr_data  # pylint: disable=g-import-not-at-top
  if fmt == "ranked":
    return sr_data.load_ranked(path)
  if fmt == "pairs":
    return sr_data.load_pairs(path)
  raise ValueError(f"data.kind={fmt!r}; expected 'ranked' or 'pairs'")


def split_preferences(config):
  """Train and held-out `RankedPrompt`s from `config.data` (train_path, kind, and eval_path or
  eval_fraction of the training prompts, in a seeded order)."""
  d = config.data
  train = _load_preferences(d.train_path, d.kind)
  if d.eval_path:
    heldout = _load_preferences(d.eval_path, d.kind)
  else:
    order = np.random.default_rng(config.seed).permutation(len(train))
    n_eval = int(round(d.eval_fraction * len(train)))
    if not 0 < n_eval < len(train):
      raise ValueError(f"data.eval_fraction={d.eval_fraction} leaves {n_eval} of {len(train)} "
                       "prompts held out; give data.eval_path or another fraction")
    heldout = [train[i] for i in order[:n_eval]]
    train = [train[i] for i in order[n_eval:]]
  return train, heldout


# ---------------------------------------------------------------------------------------------
# Export / import of the trained params (PPO's value model starts from them).


def export_params(workdir: str, params) -> str:
  directory = os.path.join(workdir, EXPORT_DIR)
  ckpt = ckpt_lib.Checkpointer(directory, every=1, keep=1)
  latest = ckpt.latest_step()  # a new step replaces an earlier export (orbax keeps one)
  ckpt.save(0 if latest is None else latest + 1, {"params": params}, force=True)
  ckpt.close()
  return directory


def load_params(workdir: str, template):
  """Params exported by a reward-model run in `workdir`, in the tree of `template`."""
  directory = os.path.join(workdir, EXPORT_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"No exported reward model in {directory!r}; run the reward_model trainer with "
        f"--workdir {workdir} first (configs/reward_model_synthetic.py).")
  ckpt = ckpt_lib.Checkpointer(directory, every=1, keep=1)
  try:
    _, state, _ = ckpt.restore({"params": template})
  finally:
    ckpt.close()
  return state["params"]


def train_reward_model(model_def, params, batches, cfg, *, workdir: str, name: str = "rm",
                       writer=None, mesh_cfg=None):
  """`cfg.steps` Bradley–Terry steps on `batches(step) -> (tokens_BxKxL, mask, ranks)`.

  `mesh_cfg`: the config's `mesh` section (None: one device); params and optimizer state are
  sharded over it, each batch over `data × fsdp` on its prompt dimension B, and the gradient
  accumulated over its `micro_batches` (of prompts).
  """
  if cfg.get("batch_size"):
    common.check_batch(mesh_cfg, cfg.batch_size, "rm.batch_size")
  optimizer = common.make_optimizer(cfg, cfg.steps)
  params, opt_state, step_fn = common.shard(
      model_def, params, optimizer.init(params),
      make_rm_step(model_def, optimizer, micro_batches=common.micro_batches(mesh_cfg)),
      mesh_cfg)

  def update(step, state):
    tokens, mask, ranks = batches(step)
    p, o, m = step_fn(state["params"], state["opt_state"], np.asarray(tokens),
                      np.asarray(mask), np.asarray(ranks))
    return {"params": p, "opt_state": o}, m

  state = {"params": params, "opt_state": opt_state}
  state = common.train_loop(workdir=workdir, name=name, state=state, update=update,
                            num_steps=cfg.steps, checkpoint_every=cfg.checkpoint_every,
                            writer=writer, log_every=cfg.log_every)
  return state["params"]


def _synthetic_setup(config):
  if config.task.name not in synthetic.TASKS:
    raise ValueError(f"reward_model trainer: task {config.task.name!r} has no preference data "
                     f"here; known synthetic tasks: {sorted(synthetic.TASKS)}; give "
                     "data.train_path (JSONL, configs/reward_model.py) or call "
                     "train_reward_model with your own batches.")
  task = synthetic.make_task(config.task.name, **{k: v for k, v in config.task.items()
                                                   if k != "name"})
  model = build_scalar_model(config.model, task.tokenizer.vocab_size, seed=config.seed,
                             mesh_cfg=config.get("mesh"))
  model_def, params = common.Policy.split(model)
  heldout_problems = task.problems(config.eval.num_problems, seed=config.eval.seed)
  heldout = synthetic_preferences(task, heldout_problems, config.rm.num_responses,
                                  seed=config.eval.seed)

  def batches(step):
    problems = task.problems(config.rm.batch_size, seed=config.seed * 1_000_003 + step + 7,
                             exclude=heldout_problems)
    return synthetic_preferences(task, problems, config.rm.num_responses,
                                 seed=config.seed * 1_000_003 + step)

  return model_def, params, heldout, batches


def _jsonl_setup(config, workdir: str):
  from score.models import hf  # pylint: disable=g-import-not-at-top
  if config.data.get("runlocal"):
    write_runlocal_preferences(config, workdir)
  if not config.model.model_dir:
    raise config_lib.ConfigError("reward_model on JSONL preferences needs model.model_dir (a "
                                 "local Hugging Face checkpoint: its weights and tokenizer)")
  codec = codec_lib.Codec(hf.load_tokenizer(config.model.model_dir), config.data.format)
  train, heldout = split_preferences(config)
  k = config.rm.num_responses or max(len(r.responses) for r in train + heldout)
  (train_arrays, cut), (heldout, cut_eval) = (
      ranked_arrays(codec, rows, max_len=config.data.max_len, num_responses=k)
      for rows in (train, heldout))
  info = {"train_prompts": len(train_arrays[0]), "heldout_prompts": len(heldout[0]),
          "truncated_texts": cut + cut_eval}
  model = build_scalar_model(config.model, None, seed=config.seed, mesh_cfg=config.get("mesh"))
  model_def, params = common.Policy.split(model)
  n, bs = len(train_arrays[0]), config.rm.batch_size
  permutation = functools.lru_cache(maxsize=4)(
      lambda epoch: np.random.default_rng([config.seed, epoch]).permutation(n))

  def batches(step):  # epochs over the training prompts, each in a seeded order
    flat = step * bs + np.arange(bs)
    idx = np.array([permutation(int(f // n))[f % n] for f in flat])
    return tuple(a[idx] for a in train_arrays)

  info.update(train_path=config.data.train_path, eval_path=config.data.eval_path or None)
  return model_def, params, heldout, batches, info


def write_runlocal_preferences(config, workdir: str):
  """runlocal: synthetic ranked JSONL and a tiny checkpoint + tokenizer trained on its text."""
  from score.data import self_rewarding as sr_data  # pylint: disable=g-import-not-at-top
  from score.utils import tiny_checkpoint  # pylint: disable=g-import-not-at-top
  ranked = sr_data.synthetic_ranked(96, seed=config.seed)
  # Every third prompt with 3 of its 4 responses: batches mix K = 4 and padded K = 3.
  ranked = [r if i % 3 else dataclasses.replace(
      r, responses=r.responses[:3], ranks=r.ranks[:3], scores=r.scores[:3],
      judgments=r.judgments[:3]) for i, r in enumerate(ranked)]
  path = os.path.join(workdir, "runlocal_preferences.jsonl")
  sr_data.write_jsonl(path, [sr_data.ranked_to_row(r) for r in ranked])
  model_dir = os.path.join(workdir, "runlocal_model")
  texts = [r.prompt + t for r in ranked for t in r.responses]
  tiny_checkpoint.make_tiny_checkpoint(model_dir, texts, hidden_size=32, seed=config.seed)
  with config.unlocked():
    config.data.train_path, config.data.kind = path, "ranked"
    config.model.model_dir = model_dir


def train(config, workdir: str):
  """`config.trainer = "reward_model"`: preferences from JSONL (`config.data.train_path`, with
  the tokenizer of `config.model.model_dir`; configs/reward_model.py) or a synthetic task
  (configs/reward_model_synthetic.py).

  Other preference data plugs in through `train_reward_model(model_def, params, batches, ...)`
  with any `batches(step) -> (tokens_BxKxL, mask_BxKxL, ranks_BxK)`.
  """
  data_cfg = config.get("data")
  if data_cfg is not None and (data_cfg.get("train_path") or data_cfg.get("runlocal")):
    model_def, params, heldout, batches, data_info = _jsonl_setup(config, workdir)
  else:
    model_def, params, heldout, batches = _synthetic_setup(config)
    data_info = {"task": config.task.name}
  writer = metrics_lib.MetricWriter(workdir)
  results = {"init": evaluate(model_def, params, heldout, batch_size=config.eval.batch_size)}
  params = train_reward_model(model_def, params, batches, config.rm, workdir=workdir,
                              writer=writer, mesh_cfg=config.get("mesh"))
  results["trained"] = evaluate(model_def, params, heldout, batch_size=config.eval.batch_size)
  export_params(workdir, params)
  info = run_lib.write_run_info(workdir, config)
  for k, r in results.items():
    writer.write_scalars(config.rm.steps, {f"eval/{k}/{m}": v for m, v in r.items()})
  lines = ["**Bradley–Terry reward model, held-out pair accuracy**", "",
           "| model | pairs | accuracy % | loss |", "|---|---|---|---|"]
  lines += [f"| {k} | {r['pairs']} | {r['accuracy']:.1f} | {r['loss']:.4f} |"
            for k, r in results.items()]
  lines += ["", "data: " + ", ".join(f"{k} {v}" for k, v in data_info.items()),
            f"commit {info['commit']}, {info['machine']}, seed {config.seed}"]
  results_lib.write(workdir, {"results": results, "data": data_info, "commit": info["commit"],
                               "seed": config.seed}, "\n".join(lines) + "\n")
  writer.close()
  return results
