"""One SCoRe Stage II iteration: `score` vs the same iteration composed in PyTorch today.

The task is the embedded default (`configs/score_synthetic.py`: 4-digit addition, char-level
Llama-style model d=128 × 2 layers, 64 prompts × 4 samples = 256 two-attempt episodes,
temperature 1, RLOO, α = 10, β1 = 0.01, k2 KL in the loss, sequence-mean, Adam 3e-4, clip 1).
The model is freshly initialised (no SFT warm-up), so attempts mostly run to the token limit
and rewards are mostly 0: the work per iteration is that of the longest episodes.

  score    `score.trainers.score.sample_episodes` (jitted KV-cache rollouts of both turns +
           the environment's rewards), `common.logprobs_fn` (jitted reference log-probs), the
           jitted Stage II update of `make_rl_step` — exactly what `train_score` runs per step.
  torch    the same weights written by `score.models.hf.save_pretrained` and loaded by
           `transformers.AutoModelForCausalLM.from_pretrained` (a `LlamaForCausalLM`; a second
           copy is the frozen reference); turn 1 and turn 2 each one `generate(do_sample=True,
           temperature=1, top_k=0)` call over the left-padded batch (prompts repeated G times),
           EOS-trimmed in Python, turn-2 contexts built as prompt ⊕ y1 ⊕ instruction; the same
           `env.rewards`; reference log-probs under `torch.no_grad`; the same Stage II loss
           written in torch (RLOO per turn, shaped r2, ½(logπ − logπref)² KL, per-sequence
           mean), `backward`, `clip_grad_norm_(1.0)`, `torch.optim.AdamW` — eager. Threads:
           `--torch_threads` (default 0: every core, as XLA; 1 for one thread).

Phases (seconds, median of --repeats interleaved iterations after one warm-up each; the JAX
warm-up compiles): `rollout` (both turns, rewards excluded), `rewards`, `ref_logprobs`,
`update`, and `total`, each as wall time and as process CPU time (`*_cpu`, all threads).
`--jax_threads 1` makes XLA single-threaded, for one core against torch's one thread. A parity check outside the
timed region: the torch reference model's log-probs on the JAX episodes vs the JAX ones.
Memory: peak RSS of the process (both frameworks share it), and peak device memory of each.

MFU: 10·N·(episode tokens) per iteration ÷ time ÷ the matmul peak measured in the run (JAX,
`--peak_n`, in the compute dtype), N = matmul parameters: each token once through the policy
while sampling (2N), once through the reference (2N), forward + backward in the update (6N);
`*_mfu_spec` uses the data-sheet peak on known accelerators.

Accelerator mode: `--preset qwen2.5-0.5b` gives the model the published 0.5B layers (hidden
896 × 24 layers, 14 heads, 2 KV heads, MLP 4864; the vocabulary stays the task's), `--dtype
bfloat16` computes in bf16 (config `model.dtype`; torch: autocast), torch runs on
`--torch_device` (default: cuda when torch sees a GPU).

    python benchmarks/rl_step.py
    python benchmarks/rl_step.py --prompts 16 --hidden 256 --layers 4
    python benchmarks/rl_step.py --preset qwen2.5-0.5b --dtype bfloat16 --prompts 64 --samples 4
    python benchmarks/rl_step.py --smoke       # seconds; records nothing
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  pylint: disable=g-import-not-at-top

PHASES = ("rollout", "rewards", "ref_logprobs", "update")


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--prompts", type=int, default=0, help="prompts per step (0: the config's)")
  p.add_argument("--samples", type=int, default=0, help="samples per prompt (0: the config's)")
  p.add_argument("--hidden", type=int, default=0, help="model width (0: the config's)")
  p.add_argument("--layers", type=int, default=0, help="layers (0: the config's)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peak_n", type=int, default=0,
                 help="side of the peak matmul (0: 2048 on CPU, 8192 on an accelerator)")
  common.add_thread_flags(p)
  common.add_device_flags(p)
  common.add_common_flags(p)
  args = p.parse_args(argv)
  if args.smoke:  # the runlocal config whatever the size flags (a --preset too)
    args.repeats, args.preset, args.peak_n = 1, "", 256
  return args


class _TimedEnv:
  """Delegates to an environment and adds up the time spent in `rewards`."""

  def __init__(self, env):
    self._env = env
    self.reward_s = self.reward_cpu = 0.0

  def __getattr__(self, name):
    return getattr(self._env, name)

  def rewards(self, problems, responses):
    t, c = time.perf_counter(), time.process_time()
    out = self._env.rewards(problems, responses)
    self.reward_s += time.perf_counter() - t
    self.reward_cpu += time.process_time() - c
    return out


# Architecture fields a --preset sets on the config's fresh model (the vocabulary stays the
# task's tokenizer's: a preset's 151,936-token embedding would sample ids it cannot decode).
_PRESET_FIELDS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "qkv_bias", "rope_theta", "rms_norm_eps",
                  "tie_embeddings", "model_type")


def _config(args):
  from configs import score_synthetic  # pylint: disable=g-import-not-at-top
  from score.models.config import PRESETS  # pylint: disable=g-import-not-at-top
  config = score_synthetic.get_config("runlocal=True" if args.smoke else None)
  with config.unlocked():
    config.model.dtype = args.dtype
    if args.preset:
      for key in _PRESET_FIELDS:
        if key in PRESETS[args.preset]:
          config.model[key] = PRESETS[args.preset][key]
    if args.prompts:
      config.rl.prompts_per_step = args.prompts
    if args.samples:
      config.rl.samples_per_prompt = args.samples
    if args.hidden:
      config.model.hidden_size = args.hidden
      config.model.head_dim = args.hidden // config.model.num_heads
      config.model.intermediate_size = 4 * args.hidden
    if args.layers:
      config.model.num_layers = args.layers
  return config


def main(argv=None):
  args = _parse(argv)
  common.set_jax_threads(args.jax_threads)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.trainers import common as trainer_common  # pylint: disable=g-import-not-at-top
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_trainer  # pylint: disable=g-import-not-at-top

  common.set_torch_threads(torch, args.torch_threads)
  device = common.torch_device(args.torch_device, torch)
  bf16 = args.dtype == "bfloat16"
  args.peak_n = args.peak_n or (8192 if common.jax_on_accelerator() else 2048)
  config = _config(args)
  rl = config.rl
  env = _TimedEnv(envs.make_env(config))
  model = trainer_common.build_model(config.model, env.tokenizer.vocab_size, seed=config.seed)
  policy, params = trainer_common.Policy.split(model)
  ref_params = dict(params)
  n_params = int(sum(np.size(v) for v in params.values()))
  optimizer = trainer_common.make_optimizer(rl, rl.stage2_steps)
  step_fn = score_trainer.make_rl_step(policy, optimizer, rl)
  ref_fn = trainer_common.logprobs_fn(policy)
  group = rl.samples_per_prompt
  jstate = {"params": params, "opt": optimizer.init(params), "it": 0}

  def problems_for(it):
    return env.train_problems(it, rl.prompts_per_step)

  def run_jax():
    it = jstate["it"]
    jstate["it"] += 1
    problems = problems_for(it)
    times = {}
    env.reward_s = env.reward_cpu = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    episodes, rewards = score_trainer.sample_episodes(
        policy, jstate["params"], env, problems, samples_per_prompt=group,
        temperature=rl.temperature, seed=jax.random.fold_in(jax.random.key(rl.seed), it))
    times["rewards"], times["rewards_cpu"] = env.reward_s, env.reward_cpu
    times["rollout"] = time.perf_counter() - t0 - env.reward_s
    times["rollout_cpu"] = time.process_time() - c0 - env.reward_cpu
    tokens, mask = jnp.asarray(episodes.tokens_BxL), jnp.asarray(episodes.mask_BxL)
    t, c = time.perf_counter(), time.process_time()
    ref_logp = jax.block_until_ready(ref_fn(ref_params, tokens, mask))
    times["ref_logprobs"] = time.perf_counter() - t
    times["ref_logprobs_cpu"] = time.process_time() - c
    batch = {"tokens": tokens, "mask": mask, "turn_mask": jnp.asarray(episodes.turn_mask_BxL),
             "sampler_logp": jnp.asarray(episodes.logprobs_BxL),
             "ref_logp": ref_logp, "r1": jnp.asarray(rewards[:, 0]),
             "r2": jnp.asarray(rewards[:, 1])}
    t, c = time.perf_counter(), time.process_time()
    p, o, metrics = step_fn(jstate["params"], jstate["opt"], batch, 2)
    loss = float(jax.block_until_ready(metrics["loss"]))
    times["update"] = time.perf_counter() - t
    times["update_cpu"] = time.process_time() - c
    jstate["params"], jstate["opt"] = p, o
    gen = int((episodes.turn_mask_BxL > 0).sum())
    return times, dict(loss=loss, generated_tokens=gen, episode_tokens=int(episodes.mask_BxL.sum()), reward_t1=float(rewards[:, 0].mean()),
                       reward_t2=float(rewards[:, 1].mean()), episodes=episodes)

  # --- The PyTorch composition ----------------------------------------------------------------
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(model, tmp)
    torch_policy = transformers.AutoModelForCausalLM.from_pretrained(tmp).to(device).train()
    torch_ref = transformers.AutoModelForCausalLM.from_pretrained(tmp).to(device).eval()
  for prm in torch_ref.parameters():
    prm.requires_grad_(False)
  t_opt = torch.optim.AdamW(torch_policy.parameters(), lr=rl.lr, betas=(rl.b1, rl.b2),
                            weight_decay=rl.weight_decay)
  pad, eos = env.pad_id, env.eos_ids[0]
  instruction = list(env.instruction)
  tstate = {"it": 0}
  autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

  def left_pad(rows):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
      ids[i, width - len(r):] = torch.tensor(r)
      attn[i, width - len(r):] = 1
    return ids.to(device), attn.to(device)

  def sample_turn(contexts, max_new):
    ids, attn = left_pad(contexts)
    with torch.no_grad(), autocast():
      out = torch_policy.generate(
          input_ids=ids, attention_mask=attn, do_sample=True, temperature=rl.temperature,
          top_k=0, top_p=1.0, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad)
    responses = []
    for row in out[:, ids.shape[1]:].tolist():
      cut = row.index(eos) + 1 if eos in row else len(row)
      responses.append(row[:cut])
    return responses

  def logprobs(net, ids, attn):
    with autocast():
      logits = net(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    targets = ids[:, 1:]
    return torch.gather(logits, -1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)

  def rloo(r_B):
    r = r_B.view(-1, group)
    loo = (r.sum(1, keepdim=True) - r) / (group - 1)
    adv = torch.where(r.max(1, keepdim=True).values == r.min(1, keepdim=True).values,
                      torch.zeros_like(r), r - loo)
    return adv.reshape(-1)

  def run_torch():
    it = tstate["it"]
    tstate["it"] += 1
    torch.manual_seed(it)
    problems = problems_for(it)
    rows = [b // group for b in range(len(problems) * group)]
    prompts = [env.prompt_tokens(problems[i]) for i in rows]
    times = {}
    t0, c0 = time.perf_counter(), time.process_time()
    y1 = sample_turn(prompts, env.max_new_tokens)
    t, c = time.perf_counter(), time.process_time()
    r1 = env._env.rewards([problems[i] for i in rows], y1)  # pylint: disable=protected-access
    times["rewards"] = time.perf_counter() - t
    times["rewards_cpu"] = time.process_time() - c
    contexts = [x + y + instruction for x, y in zip(prompts, y1)]
    budget = min(env.max_new_tokens, env.max_len - max(map(len, contexts)))
    y2 = sample_turn(contexts, max(budget, 1))
    t, c = time.perf_counter(), time.process_time()
    r2 = env._env.rewards([problems[i] for i in rows], y2)  # pylint: disable=protected-access
    times["rewards"] += time.perf_counter() - t
    times["rewards_cpu"] += time.process_time() - c
    # Episodes x1 ⊕ y1 ⊕ p ⊕ y2, right-padded (default positions are then right), turn mask.
    seqs = [c + y for c, y in zip(contexts, y2)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    turn = torch.zeros_like(ids)
    for b, (x, a, c, s) in enumerate(zip(prompts, y1, contexts, seqs)):
      ids[b, :len(s)] = torch.tensor(s)
      attn[b, :len(s)] = 1
      turn[b, len(x):len(x) + len(a)] = 1
      turn[b, len(c):len(s)] = 2
    ids, attn, turn = ids.to(device), attn.to(device), turn.to(device)
    times["rollout"] = time.perf_counter() - t0 - times["rewards"]
    times["rollout_cpu"] = time.process_time() - c0 - times["rewards_cpu"]
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
      ref_logp = logprobs(torch_ref, ids, attn)
    common.torch_sync(torch, device)
    times["ref_logprobs"] = time.perf_counter() - t
    times["ref_logprobs_cpu"] = time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    logp = logprobs(torch_policy, ids, attn)
    turn_t = turn[:, 1:]
    r1_t, r2_t = torch.tensor(r1, device=device), torch.tensor(r2, device=device)
    adv1, adv2 = rloo(r1_t), rloo(r2_t + rl.alpha * (r2_t - r1_t))
    adv = torch.where(turn_t == 1, adv1[:, None], torch.where(turn_t == 2, adv2[:, None], 0.0))
    m = (turn_t > 0).float()
    per_tok = -adv * logp + rl.beta1 * 0.5 * (logp - ref_logp) ** 2
    count = m.sum(1)
    per_seq = (per_tok * m).sum(1) / count.clamp(min=1.0)
    has = (count > 0).float()
    loss = (per_seq * has).sum() / has.sum().clamp(min=1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(torch_policy.parameters(), rl.grad_clip)
    t_opt.step()
    t_opt.zero_grad(set_to_none=True)
    common.torch_sync(torch, device)
    times["update"] = time.perf_counter() - t
    times["update_cpu"] = time.process_time() - c
    gen = int(m.sum())
    return times, dict(loss=float(loss.detach()), generated_tokens=gen,
                       episode_tokens=int(attn.sum()),
                       reward_t1=float(np.mean(r1)), reward_t2=float(np.mean(r2)))

  def timed_iteration(fn):
    (times, info), wall, cpu = common.timed(fn)
    return dict(times, total=wall, total_cpu=cpu), info

  first_jax, jinfo = timed_iteration(run_jax)
  first_torch, _ = timed_iteration(run_torch)

  # Parity (untimed): the torch reference on the JAX episodes vs the JAX reference log-probs.
  ep = jinfo.pop("episodes")
  jax_ref = np.asarray(ref_fn(ref_params, jnp.asarray(ep.tokens_BxL), jnp.asarray(ep.mask_BxL)))
  ids_t = torch.tensor(np.asarray(ep.tokens_BxL), dtype=torch.long, device=device)
  mask_t = torch.tensor(np.asarray(ep.mask_BxL), dtype=torch.long, device=device)
  positions = (mask_t.cumsum(1) - 1).clamp(min=0)
  with torch.no_grad(), autocast():
    logits = torch_ref(input_ids=ids_t, attention_mask=mask_t, position_ids=positions).logits
  logits = logits[:, :-1].float()
  t_ref = (torch.gather(logits, -1, ids_t[:, 1:, None])[..., 0]
           - torch.logsumexp(logits, -1)).cpu().numpy()
  gen_mask = np.asarray(ep.turn_mask_BxL)[:, 1:] > 0
  parity = float(np.max(np.abs(t_ref - jax_ref[:, 1:])[gen_mask])) if gen_mask.any() else 0.0

  # The matmul peak (compiled before the timed region: `compiles` counts from here).
  jax_mm = common.jax_matmul(args.peak_n, args.dtype)
  peak = 2 * args.peak_n ** 3 / min(common.timed(jax_mm)[1] for _ in range(3))

  compiles = common.CompileCounter()
  samples = {"jax": [], "torch": []}
  infos = {"jax": [], "torch": []}
  for _ in range(args.repeats):
    for name, fn in (("jax", run_jax), ("torch", run_torch)):
      times, info = timed_iteration(fn)
      info.pop("episodes", None)
      samples[name].append(times)
      infos[name].append(info)

  def summary(name):
    keys = PHASES + tuple(f"{k}_cpu" for k in PHASES) + ("total", "total_cpu")
    return {k: round(common.median([s[k] for s in samples[name]]), 4) for k in keys}

  jax_s, torch_s = summary("jax"), summary("torch")
  episodes = rl.prompts_per_step * group
  # Model FLOPs of an iteration: every episode token once through the policy while sampling
  # (2N), once through the reference (2N) and once forward + backward in the update (6N);
  # N = matmul parameters. Re-prefilled turn-1 tokens and padding are not counted (overhead).
  n_matmul = common.matmul_params(model)
  flops = {k: 10 * n_matmul * common.median([i["episode_tokens"] for i in infos[k]])
           for k in infos}
  spec = common.spec_peak_flops(args.dtype, args.peak_tflops)
  # Three significant digits: a tiny model's MFU is small, not zero.
  mfu = {f"{k}_mfu": float(f"{flops[k] / s['total'] / peak:.3g}")
         for k, s in (("jax", jax_s), ("torch", torch_s))}
  if spec:
    mfu.update({f"{k}_mfu_spec": float(f"{flops[k] / s['total'] / spec:.3g}")
                for k, s in (("jax", jax_s), ("torch", torch_s))})
  result = {
      "benchmark": "rl_step",
      "task": "synthetic addition (configs/score_synthetic.py" + (":runlocal)" if args.smoke
                                                                  else ")"),
      "episodes": episodes,
      "prompts": rl.prompts_per_step, "samples_per_prompt": group,
      "model": dict(hidden=config.model.hidden_size, layers=config.model.num_layers,
                    heads=config.model.num_heads, vocab=env.tokenizer.vocab_size,
                    params=n_params, matmul_params=n_matmul, preset=args.preset or None),
      "dtype": args.dtype, "torch_device": device,
      "ratio": round(torch_s["total"] / jax_s["total"], 3),
      "cpu_time_ratio": round(torch_s["total_cpu"] / jax_s["total_cpu"], 3),
      "jax_s": jax_s,
      "torch_s": torch_s,
      "jax_episodes_per_s": round(episodes / jax_s["total"], 1),
      "torch_episodes_per_s": round(episodes / torch_s["total"], 1),
      "jax_first_iteration_s": round(first_jax["total"], 2),
      "torch_first_iteration_s": round(first_torch["total"], 2),
      "generated_tokens_per_iteration": {
          "jax": int(common.median([i["generated_tokens"] for i in infos["jax"]])),
          "torch": int(common.median([i["generated_tokens"] for i in infos["torch"]]))},
      "reward_t1_t2": {k: [round(common.median([i["reward_t1"] for i in infos[k]]), 3),
                           round(common.median([i["reward_t2"] for i in infos[k]]), 3)]
                       for k in infos},
      "ref_logprob_max_abs_diff": parity,
      "episode_tokens_per_iteration": {k: int(flops[k] // (10 * n_matmul)) for k in flops},
      "matmul_peak_tflops": round(peak / 1e12, 3),
      "peak_matmul": f"{args.peak_n}^3 {args.dtype} (jax)",
      **mfu,
      "mfu_formula": "10*N_matmul*episode tokens / iteration s / peak (sampling 2N + "
                     "reference 2N + update 6N per token)",
      "repeats": args.repeats,
      "jax_compiles_while_timed": compiles.count,
      "peak_rss_mb": common.peak_rss_mb(),
      **common.device_memory_mb(torch, device),
      "machine": common.machine(torch_threads=torch.get_num_threads()),
  }
  common.emit(result)
  if not (args.smoke or args.no_record):
    phases = lambda s: "/".join(f"{s[k]:.3g}" for k in PHASES)  # noqa: E731
    common.record(result, {
        "episodes": episodes,
        "iteration s jax/torch": f"{jax_s['total']:.3g}/{torch_s['total']:.3g}",
        "ratio (cpu)": f"{result['ratio']} ({result['cpu_time_ratio']})",
        "jax rollout/rewards/ref/update s": phases(jax_s),
        "torch rollout/rewards/ref/update s": phases(torch_s),
        "jax/torch CPU s per phase": phases({k: jax_s[f"{k}_cpu"] for k in PHASES}) + " vs "
                                     + phases({k: torch_s[f"{k}_cpu"] for k in PHASES}),
        "MFU jax/torch": f"{mfu['jax_mfu']}/{mfu['torch_mfu']}" + (
            f" (data-sheet peak {mfu['jax_mfu_spec']}/{mfu['torch_mfu_spec']})" if spec else ""),
        "model": f"{args.preset or 'config'} {n_params / 1e6:.1f}M params, {args.dtype}",
        "torch device": device,
        "jax_threads": args.jax_threads or "all",
        "peak RSS MB": result["peak_rss_mb"],
        **common.device_memory_mb(torch, device),
    })
  return result


if __name__ == "__main__":
  main()
