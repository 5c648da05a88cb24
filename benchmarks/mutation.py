r"""Targeted mutation testing, sized for 2 cores: one-line mutants of the losses, the eval
metrics, the training loop and the trainers' config switches, each run against the fast tests
of its module. A mutant is *killed* when those tests fail.

  python benchmarks/mutation.py                 # all mutants, a summary and docs-ready table
  python benchmarks/mutation.py --only kl pg    # mutants whose id starts with kl / pg
  python benchmarks/mutation.py --list

Each mutant replaces one exact snippet (it must occur once in its file) in a scratch copy of
the repository (score/, tests/, configs/, experiments/, pytest.ini), never in the working tree,
and runs `pytest -x -q -m "not slow"` on its test selection there. mutmut's fork model does
not get along with JAX, so this is a hand-written list: operator swaps, sign flips,
off-by-ones, dropped masks and swapped arguments where a silent bug would hurt results. The
results are in docs/mutation.md (score, survivors and why each is equivalent or now killed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("score", "tests", "configs", "experiments", "pytest.ini")


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]


T_KL = ("tests/test_losses_kl.py",)
T_PG = ("tests/test_losses_pg.py",)
T_PPO = ("tests/test_losses_ppo.py",)
T_PREF = ("tests/test_losses_preference.py",)
T_RED = ("tests/test_losses_reduce.py",)
T_SCORE = ("tests/test_losses_score.py",)
T_SFT = ("tests/test_losses_shaping_sft.py",)
T_METRICS = ("tests/test_eval_metrics.py", "tests/test_report.py")
T_SC = ("tests/test_text_env.py", "-k", "self_refine")
T_LOOP = ("tests/test_foundation.py", "tests/test_resume.py", "-k",
          "nan or schedules or clips or dpo_killed or checkpointer")
T_SWITCH = ("tests/test_score_trainer.py", "-k", "ablation or switches or star_stage2")

L = "score/losses/"
MUTANTS = [
    # KL estimators and their placement.
    Mutant("kl.k1_sign", L + "kl.py", "return logp_BxT - ref_logp_BxT",
           "return ref_logp_BxT - logp_BxT", T_KL),
    Mutant("kl.k2_half", L + "kl.py", "return 0.5 * jnp.square(log_ratio)",
           "return jnp.square(log_ratio)", T_KL),
    Mutant("kl.k3_direction", L + "kl.py", "return jnp.exp(-log_ratio) + log_ratio - 1.0",
           "return jnp.exp(log_ratio) - log_ratio - 1.0", T_KL),
    Mutant("kl.in_reward_sign", L + "kl.py",
           "return rewards_BxT - beta * jax.lax.stop_gradient(kl_BxT)",
           "return rewards_BxT + beta * jax.lax.stop_gradient(kl_BxT)", T_KL),
    Mutant("kl.loss_mask_dropped", L + "kl.py",
           "return jnp.where(mask_BxT > 0, beta * kl_BxT * mask_BxT, 0.0)",
           "return beta * kl_BxT", T_KL),
    Mutant("kl.reward_delta_sign", L + "kl.py", "-beta * kl_BxT * mask_BxT",
           "beta * kl_BxT * mask_BxT", T_KL),
    # Advantages.
    Mutant("pg.reinforce_sign", L + "pg.py", "return jax.lax.stop_gradient(rewards_BxG - b)",
           "return jax.lax.stop_gradient(b - rewards_BxG)", T_PG),
    Mutant("pg.rloo_off_by_one", L + "pg.py", "/ (group - 1)", "/ group", T_PG),
    Mutant("pg.std_ddof", L + "pg.py", "/ max(n - ddof, 1))", "/ max(n - ddof + 1, 1))", T_PG),
    Mutant("pg.std_names_swapped", L + "pg.py", '{"sample": 1, "population": 0}',
           '{"sample": 0, "population": 1}', T_PG),
    Mutant("pg.grpo_scale_op", L + "pg.py", "(rewards_BxG - mean_Bx1) / sigma",
           "(rewards_BxG - mean_Bx1) * sigma", T_PG),
    Mutant("pg.dr_grpo_sign", L + "pg.py", "0.0, rewards_BxG - mean_Bx1)",
           "0.0, mean_Bx1 - rewards_BxG)", T_PG),
    Mutant("pg.ema_decay_swapped", L + "pg.py",
           "decay * jnp.asarray(baseline, mean.dtype) + (1.0 - decay) * mean",
           "(1.0 - decay) * jnp.asarray(baseline, mean.dtype) + decay * mean", T_PG),
    Mutant("pg.turn_index_off_by_one", L + "pg.py", "jnp.clip(turn_BxT - 1, 0, num_turns - 1)",
           "jnp.clip(turn_BxT, 0, num_turns - 1)", T_PG),
    Mutant("pg.turn_zero_valid", L + "pg.py", "valid_BxT = (turn_BxT >= 1)",
           "valid_BxT = (turn_BxT >= 0)", T_PG),
    Mutant("pg.loss_mask_dropped", L + "pg.py",
           "return jnp.where(mask_BxT > 0, -adv_BxT * logp_BxT * mask_BxT, 0.0)",
           "return -adv_BxT * logp_BxT", T_PG),
    # PPO / GSPO / value loss / GAE.
    Mutant("ppo.eps_swapped", L + "ppo.py", "jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high)",
           "jnp.clip(ratio_BxT, 1.0 - eps_high, 1.0 + eps_low)", T_PPO),
    Mutant("ppo.pessimism_dropped", L + "ppo.py",
           "loss_BxT = jnp.maximum(unclipped_BxT, clipped_BxT)",
           "loss_BxT = jnp.minimum(unclipped_BxT, clipped_BxT)", T_PPO),
    Mutant("ppo.dual_clip_sign", L + "ppo.py", "is_dual_BxT = (adv_BxT < 0)",
           "is_dual_BxT = (adv_BxT > 0)", T_PPO),
    Mutant("ppo.value_clip_min", L + "ppo.py", "0.5 * jnp.maximum(err_BxT, err_clip_BxT)",
           "0.5 * jnp.minimum(err_BxT, err_clip_BxT)", T_PPO),
    Mutant("ppo.value_clip_args", L + "ppo.py",
           "jnp.clip(values_BxT - old_values_BxT, -clip, clip)",
           "jnp.clip(old_values_BxT - values_BxT, -clip, clip)", T_PPO),
    Mutant("ppo.gspo_length_norm", L + "ppo.py",
           "length_Bx1 = jnp.maximum(jnp.sum(m_BxT, axis=1, keepdims=True), 1.0)",
           "length_Bx1 = 1.0", T_PPO),
    Mutant("ppo.gspo_token_no_sg", L + "ppo.py",
           "log_ratio_BxT = seq_log_ratio_Bx1 + logp_BxT - jax.lax.stop_gradient(logp_BxT)",
           "log_ratio_BxT = seq_log_ratio_Bx1 + logp_BxT", T_PPO),
    Mutant("ppo.gae_lambda_dropped", L + "ppo.py",
           "adv_B = delta_B + gamma * lam * next_adv_B", "adv_B = delta_B + gamma * next_adv_B",
           T_PPO),
    Mutant("ppo.gae_skips_masked", L + "ppo.py",
           "carry = (jnp.where(valid_B, value_B, next_value_B),",
           "carry = (value_B,", T_PPO),
    Mutant("ppo.returns_without_values", L + "ppo.py",
           "adv_BxT + values_BxT.astype(dtype), 0.0)", "adv_BxT, 0.0)", T_PPO),
    # Preference losses.
    Mutant("pref.margin_sign", L + "preference.py",
           "- (policy_rejected_logps - ref_rejected_logps)",
           "+ (policy_rejected_logps - ref_rejected_logps)", T_PREF),
    Mutant("pref.smoothing_swapped", L + "preference.py",
           "- label_smoothing * jax.nn.log_sigmoid(-logits))",
           "- label_smoothing * jax.nn.log_sigmoid(logits))", T_PREF),
    Mutant("pref.ipo_target", L + "preference.py", "jnp.square(margin - 1.0 / (2.0 * beta))",
           "jnp.square(margin - 1.0 / beta)", T_PREF),
    Mutant("pref.simpo_gamma_sign", L + "preference.py", "log_sigmoid(logits - gamma)",
           "log_sigmoid(logits + gamma)", T_PREF),
    Mutant("pref.bt_swapped", L + "preference.py", "log_sigmoid(r_chosen - r_rejected)",
           "log_sigmoid(r_rejected - r_chosen)", T_PREF),
    # Reductions.
    Mutant("reduce.where_dropped", L + "reduce.py",
           "masked_BxT = jnp.where(mask_BxT > 0, values_BxT * mask_BxT, 0.0)",
           "masked_BxT = values_BxT * mask_BxT", T_RED),
    Mutant("reduce.sequence_counts_empty_rows", L + "reduce.py",
           "return jnp.sum(per_seq_B * has_tokens_B) / jnp.maximum(jnp.sum(has_tokens_B), 1.0)",
           "return jnp.mean(per_seq_B)", T_RED),
    Mutant("reduce.token_count_floor", L + "reduce.py",
           "return jnp.sum(masked_BxT) / jnp.maximum(count, 1.0)",
           "return jnp.sum(masked_BxT) / count", T_RED),
    # SCoRe objectives.
    Mutant("score.shaping_sign", L + "score.py", "return r1, r2 + alpha * (r2 - r1)",
           "return r1, r2 + alpha * (r1 - r2)", T_SCORE),
    Mutant("score.stage1_betas_swapped", L + "score.py", "returns_BxK, (beta2, beta1),",
           "returns_BxK, (beta1, beta2),", T_SCORE),
    Mutant("score.stage1_credits_turn1", L + "score.py", "credited_K=(False, True)",
           "credited_K=(True, True)", T_SCORE),
    Mutant("score.kl_beta_dropped", L + "score.py",
           "kl_loss_BxT = jnp.where(mask_BxT > 0, beta_BxT * kl_BxT, 0.0)",
           "kl_loss_BxT = jnp.where(mask_BxT > 0, kl_BxT, 0.0)", T_SCORE),
    Mutant("score.kl_in_reward_sign", L + "score.py",
           "returns_BxK * credited_BxK - betas_BxK * kl_sum_BxK",
           "returns_BxK * credited_BxK + betas_BxK * kl_sum_BxK", T_SCORE),
    Mutant("score.stage2_turns_swapped", L + "score.py",
           "returns_BxK = jnp.stack([r1_B, shaped_r2_B], axis=1)",
           "returns_BxK = jnp.stack([shaped_r2_B, r1_B], axis=1)", T_SCORE),
    Mutant("score.flip_metric", L + "score.py", '"flip/i_to_c": jnp.mean((r2_B > r1_B)',
           '"flip/i_to_c": jnp.mean((r2_B < r1_B)', T_SCORE),
    # SFT and reward shaping.
    Mutant("sft.ce_mask_dropped", L + "sft.py",
           "return jnp.where(jnp.asarray(mask_BxT) > 0, -logp_BxT * mask_BxT, 0.0)",
           "return -logp_BxT", T_SFT),
    Mutant("sft.alignment_off_by_one", L + "sft.py", "targets_Bx1L = tokens_BxL[:, 1:, None]",
           "targets_Bx1L = tokens_BxL[:, :-1, None]", T_SFT),
    Mutant("shaping.length_lambda_sign", L + "shaping.py",
           "lam_BxG = 0.5 - (lengths_BxG - min_Bx1)", "lam_BxG = 0.5 + (lengths_BxG - min_Bx1)",
           T_SFT),
    Mutant("shaping.overlong_boundary", L + "shaping.py", "jnp.where(lengths <= expected, 0.0,",
           "jnp.where(lengths < expected, 0.0,", T_SFT),
    # Self-correction metrics.
    Mutant("metrics.delta_sign", "score/eval/metrics.py",
           '"delta": c2_RxN.mean(-1) - c1_RxN.mean(-1)', '"delta": c1_RxN.mean(-1) - c2_RxN.mean(-1)',
           T_METRICS),
    Mutant("metrics.i2c_as_c2i", "score/eval/metrics.py", '"delta_i2c": ((1 - c1_RxN) * c2_RxN)',
           '"delta_i2c": (c1_RxN * (1 - c2_RxN))', T_METRICS),
    Mutant("metrics.c2i_as_i2c", "score/eval/metrics.py", '"delta_c2i": (c1_RxN * (1 - c2_RxN))',
           '"delta_c2i": ((1 - c1_RxN) * c2_RxN)', T_METRICS),
    Mutant("metrics.level_not_halved", "score/eval/metrics.py",
           "  q = (1 - level) / 2\n  out = {", "  q = (1 - level)\n  out = {", T_METRICS),
    Mutant("metrics.unpaired_bootstrap", "score/eval/metrics.py",
           "boot = _point(c1[idx_RxN], c2[idx_RxN])",
           "boot = _point(c1[idx_RxN], c2[idx_RxN[::-1]])", T_METRICS),
    Mutant("metrics.seed_ignored", "score/eval/metrics.py",
           "np.random.default_rng(seed).integers(0, c1.size",
           "np.random.default_rng(0).integers(0, c1.size", T_METRICS),
    Mutant("metrics.accuracy_level", "score/eval/metrics.py",
           "  q = (1 - level) / 2\n  lo, hi", "  q = (1 - level) / 4\n  lo, hi", T_METRICS),
    Mutant("metrics.overlap_touching", "score/eval/metrics.py", 'a["high"] < b["low"]',
           'a["high"] <= b["low"]', T_METRICS),
    Mutant("self_correction.scores_feedback", "score/eval/self_correction.py",
           "c2 += env.rewards(ps, [t[-1] for t in turns])",
           "c2 += env.rewards(ps, [t[1] for t in turns])", T_SC),
    Mutant("self_correction.refine_two_turns", "score/eval/self_correction.py",
           "num_turns = 3 if self_refine else 2", "num_turns = 2", T_SC),
    # The training loop.
    Mutant("common.restore_disabled", "score/trainers/common.py",
           "  if ckpt.latest_step() is not None:\n", "  if False:\n", T_LOOP),
    Mutant("common.save_only_at_end", "score/trainers/common.py",
           "if step % checkpoint_every == 0 or step == num_steps:", "if step == num_steps:",
           T_LOOP),
    Mutant("common.nan_guard_off", "score/trainers/common.py", "if not math.isfinite(loss):",
           "if False:", T_LOOP),
    Mutant("common.warmup_off_by_one", "score/trainers/common.py",
           "warmup), lr], [warmup])", "warmup), lr], [warmup + 1])", T_LOOP),
    Mutant("common.decay_ignores_warmup", "score/trainers/common.py",
           "decay_steps = max(num_steps - warmup, 1)", "decay_steps = max(num_steps, 1)", T_LOOP),
    Mutant("common.grad_clip_dropped", "score/trainers/common.py",
           "parts.append(optax.clip_by_global_norm(cfg.grad_clip))", "pass", T_LOOP),
    # The trainers' config switches: each ablation must change what is trained.
    Mutant("switch.multi_turn_ignored", "score/trainers/score.py", "if not rl.multi_turn:",
           "if False:", T_SWITCH),
    Mutant("switch.alpha_ignored", "score/trainers/score.py", "alpha=rl.alpha,", "alpha=10.0,",
           T_SWITCH),
    Mutant("switch.beta2_is_beta1", "score/trainers/score.py", "beta2=rl.beta2, **common_kw)",
           "beta2=rl.beta1, **common_kw)", T_SWITCH),
    Mutant("switch.star_stage2_ignored", "score/trainers/score.py",
           'stage == 2 and rl.stage2_method == "star"', "False", T_SWITCH),
    Mutant("switch.no_stage1_keeps_stage1", "score/trainers/suite.py",
           '"no_stage1": lambda rl: {"rl.stage1_steps": 0,',
           '"no_stage1": lambda rl: {"rl.stage1_steps": rl.stage1_steps,', T_SWITCH),
    Mutant("switch.no_shaping_shapes", "score/trainers/suite.py", '{"rl.alpha": 0.0}',
           '{"rl.alpha": 10.0}', T_SWITCH),
]


def apply(root: str, m: Mutant) -> None:
  path = os.path.join(root, m.path)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  count = text.count(m.old)
  if count != 1:
    raise ValueError(f"{m.id}: the snippet occurs {count} times in {m.path}: {m.old!r}")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace(m.old, m.new))


def run_tests(root: str, tests, timeout: float) -> tuple[str, float]:
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  t0 = time.time()
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
         *tests], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - t0
  # 0: all passed (survived); 1: a test failed (killed); anything else is an error to look at.
  status = {0: "survived", 1: "killed"}.get(proc.returncode, f"error rc={proc.returncode}")
  return status, time.time() - t0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="*", default=(), help="mutant id prefixes")
  parser.add_argument("--list", action="store_true")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args(argv)
  mutants = [m for m in MUTANTS if not args.only or m.id.startswith(tuple(args.only))]
  if args.list:
    for m in mutants:
      print(f"{m.id:38s} {m.path}")
    return 0
  scratch = tempfile.mkdtemp(prefix="score_mutation_")
  for name in COPIED:
    src = os.path.join(ROOT, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(scratch, name),
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy(src, scratch)
  for m in mutants:  # every snippet must still be there (the code moves on)
    with open(os.path.join(scratch, m.path), encoding="utf-8") as f:
      if f.read().count(m.old) != 1:
        raise SystemExit(f"{m.id}: snippet not found once in {m.path}; update the mutant")
  results = []
  try:
    for m in mutants:
      original = open(os.path.join(scratch, m.path), encoding="utf-8").read()
      apply(scratch, m)
      try:
        status, seconds = run_tests(scratch, m.tests, args.timeout)
      finally:
        with open(os.path.join(scratch, m.path), "w", encoding="utf-8") as f:
          f.write(original)
      results.append({"id": m.id, "path": m.path, "status": status, "seconds": round(seconds, 1)})
      print(f"{status:10s} {seconds:6.1f}s  {m.id}", flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  killed = sum(r["status"] == "killed" for r in results)
  print(f"\n{killed}/{len(results)} killed")
  for r in results:
    if r["status"] != "killed":
      print(f"  not killed: {r['id']} ({r['status']})")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
