"""Config sections shared by the SCoRe configs (hyper-parameters from SPEC §1 unless noted)."""

import ml_collections


SUITE_METHODS = ("base", "self_refine", "star", "pair_sft", "score")
# Table 4 of Kumar et al. (2024): SCoRe without multi-turn training, without Stage I, without
# reward shaping, and with STaR in place of REINFORCE in Stage II.
TABLE4_ABLATIONS = ("no_multi_turn", "no_stage1", "no_shaping", "star_stage2")


def suite_config(arg, *, title, published):
  """A `self_correction_suite` config's first fields, from a parsed arg with `seed`,
  `runlocal` and `model_dir`: a fresh tiny checkpoint is made only for `runlocal` without
  `model_dir` (`runlocal_model`)."""
  c = ml_collections.ConfigDict()
  c.trainer = "self_correction_suite"
  c.title = title
  c.published = published
  c.seed = arg.seed
  c.runlocal_model = arg.runlocal and not arg.model_dir
  return c


def suite_sections(c, arg, *, lr, num_problems, max_steps, batch_size,
                   methods=SUITE_METHODS, ablations=TABLE4_ABLATIONS):
  """Sets the suite's `methods`, `ablations` (run only with `arg.ablations`) and its STaR and
  Pair-SFT sections (`sampled_sft` at `lr`; with `arg.runlocal` 4 problems and 2 steps of
  batch 2, else `num_problems`, `max_steps`, `batch_size`)."""
  c.methods = methods
  c.ablations = ablations if arg.ablations else ()
  sft = dict(num_problems=4, max_steps=2, batch_size=2) if arg.runlocal else dict(
      num_problems=num_problems, max_steps=max_steps, batch_size=batch_size)
  c.star = sampled_sft(lr=lr, **sft)
  c.pair_sft = sampled_sft(lr=lr, **sft)


def warmup(steps=0, *, batch_size=256, lr=1e-3, checkpoint_every=100):
  """SFT warm-up of a fresh model (synthetic task only; 0 steps = start from model_dir)."""
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0, schedule="constant",
      grad_clip=1.0, weight_decay=0.0, checkpoint_every=checkpoint_every))


def sampled_sft(*, num_problems, samples_per_prompt=4, epochs=2, max_steps, batch_size, lr,
                checkpoint_every=50):
  """STaR / Pair-SFT: sample the base model at temperature 1, build the SFT set, fine-tune
  for `epochs` passes over it (at most `max_steps` steps)."""
  return ml_collections.ConfigDict(dict(
      num_problems=num_problems, samples_per_prompt=samples_per_prompt, temperature=1.0,
      epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=0,
      schedule="constant",
      grad_clip=1.0, weight_decay=0.0, checkpoint_every=checkpoint_every))


def rl(*, seed=0, stage1_steps, stage2_steps, prompts_per_step, samples_per_prompt=4, lr,
       alpha=10.0, beta1=0.01, beta2=0.1, checkpoint_every=50, log_every=10):
  """SCoRe RL: REINFORCE with a leave-one-out baseline over the samples of a prompt.

  `prompts_per_step × samples_per_prompt` is the paper's batch size. The KL gradient uses
  k2 in the loss (on-policy gradient of KL(π‖π_ref)); see `score.losses.score`.
  `tis_level` / `tis_cap` / `mismatch_threshold`: the sampler/trainer mismatch of both turns,
  logged and optionally corrected (`score.losses.importance`; "none" in fp32).
  """
  return ml_collections.ConfigDict(dict(
      seed=seed, rounds=1, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
      prompts_per_step=prompts_per_step, samples_per_prompt=samples_per_prompt,
      temperature=1.0, lr=lr, warmup_steps=0, schedule="constant", grad_clip=1.0,
      weight_decay=0.0, b1=0.9, b2=0.999, alpha=alpha, beta1=beta1, beta2=beta2,
      advantage="rloo", kl_estimator="k2", kl_placement="loss", reduction="sequence",
      multi_turn=True, stage2_method="reinforce", tis_level="none", tis_cap=2.0,
      mismatch_threshold=0.1, checkpoint_every=checkpoint_every, log_every=log_every))


def eval_config(section: dict):
  """The `eval` section with the sampled evaluation off: `samples` n > 0 adds pass@k and
  maj@k over n samples per problem at `temperature` (`score.eval.sampled`; for SCoRe, n ≥ 2
  adds pass@2 of independent first attempts beside the greedy two-attempt metrics)."""
  return ml_collections.ConfigDict(dict(dict(samples=0, temperature=1.0), **section))


def text_task(name, *, train, eval, train_kwargs=None, eval_kwargs=None, prompt_format,
              max_new_tokens, max_len, reward_timeout_s=10.0, shaping="", shaping_weight=0.0):
  """A MATH/code task; `shaping` names a training-only reward term
  (`score.trainers.envs.SHAPING`, '' = none) added with `shaping_weight` to the oracle's."""
  return ml_collections.ConfigDict(dict(
      name=name, train=train, eval=eval, train_kwargs=train_kwargs or {},
      eval_kwargs=eval_kwargs or {}, prompt_format=prompt_format,
      max_new_tokens=max_new_tokens, max_len=max_len, reward_timeout_s=reward_timeout_s,
      shaping=shaping, shaping_weight=shaping_weight))


def model(model_dir="", dtype="float32", attention="auto", **fields):
  """The `model` section (`score.trainers.common.build_model`).

  `dtype`: compute dtype, "float32" or "bfloat16". `base_dtype`: the stored params, float32;
  "bfloat16" stores a LoRA run's frozen base in bf16 (adapters and optimiser state stay
  fp32). `attention`: the kernel (`score.models.attention`): "auto" ("dense" for short
  sequences, "blocked" — memory-efficient, no [B, N, T, S] scores — for long ones), "dense",
  "blocked" or "cudnn" (NVIDIA GPUs with bf16 compute; untested so far). `lora`: see
  `lora()`; rank 0 trains every weight. `fields`: a fresh model's sizes.
  """
  return ml_collections.ConfigDict(dict(model_dir=model_dir, dtype=dtype, base_dtype="float32",
                                        attention=attention, lora=lora(), **fields))


def lora(rank=0, alpha=16.0, targets="q,k,v,o,gate,up,down"):
  """LoRA (`score.models.lora`): `rank` (0 = off: full fine-tuning), `alpha` (the adapters
  are scaled by alpha / rank), `targets`: the adapted projections, comma-separated, of
  q, k, v, o, gate, up, down. Only the adapters are trained; the reference policy is the
  frozen base the phase starts from (the same arrays, never a second copy)."""
  return ml_collections.ConfigDict(dict(rank=rank, alpha=alpha, targets=targets))


def scale(config, *, data=1, fsdp=1, tensor=1):
  """Adds the `mesh` and `distributed` sections (`score.parallel`; docs/scaling.md).

  The defaults run on one device; `--config.mesh.fsdp=-1` spreads params, optimizer state
  and the batch over every device.
  """
  from score import parallel  # pylint: disable=g-import-not-at-top
  config.mesh = parallel.mesh_config(data=data, fsdp=fsdp, tensor=tensor)
  config.distributed = parallel.distributed_config()
  return config
