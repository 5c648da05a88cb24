"""Training-step throughput: one jitted policy-gradient step vs PyTorch eager, and MFU.

For each model shape (default: two tiny Qwen2 shapes, hidden 256 × 4 layers and 512 × 8
layers, vocabulary 32,000, batch 8 × 256 tokens) the same step runs in both frameworks on
identical weights (a random `transformers` Qwen2 saved to a temporary directory, loaded by
`score.models.hf.from_pretrained`):

  JAX    `token_logprobs` -> `score.losses.pg.policy_gradient_loss` -> token-mean ->
         `jax.value_and_grad` -> `optax.adamw`, one `jax.jit` (params and optimiser state
         donated).
  torch  `Qwen2ForCausalLM(...).logits` -> gather − logsumexp (what TRL does) -> the same
         loss -> `backward()` -> `torch.optim.AdamW` (eager; torch threads: --torch_threads,
         default 0 = every core, the cores XLA's thread pool uses unless `--jax_threads 1`:
         both frameworks run on the same hardware; the CPU-time columns count all threads).

Both: AdamW lr 1e-5, weight decay 0.01, no clipping; random advantages per sequence; the loss
is on the last 3/4 of each row (the first quarter plays the prompt).

MFU: model FLOPs per step = 6 · N · tokens (forward 2N, backward 4N per token), N = the
parameters of every matmul (all weights except the input-embedding table, norms and biases;
the attention score/value products, 12·layers·seq·hidden per token, are left out — under 5 %
at these shapes). The peak is measured in the same run by a square matmul in the compute
dtype (`--peak_n`, 2048³ on CPU, 8192³ on an accelerator; `jnp.dot` under `jax.jit` /
`torch.mm`), `--peak_trials` times per repeat, interleaved with the steps; the best one (least
wall, least CPU time) is the peak:

  mfu      = model FLOP/s (wall) / the same framework's matmul FLOP/s (wall)
  mfu_cpu  = model FLOP per CPU-second / the best matmul FLOP per CPU-second of either
             framework (the hardware limit as reachable here) — the load-robust one: on a
             shared machine, wall time includes time other jobs held the cores. CPU runs only.
  mfu_spec = model FLOP/s (wall) / the accelerator's data-sheet peak (bf16 on a known GPU/TPU,
             or `--peak_tflops`).

Accelerator mode: `--preset qwen2.5-0.5b` (the published 0.5B shape, random weights; replaces
--shapes and --vocab), `--dtype bfloat16` (JAX: bf16 compute with fp32 params; torch: autocast
with fp32 params), torch on `--torch_device` (default: cuda when torch sees a GPU). Peak device
memory of both frameworks is reported beside the host RSS.
Steady state: the median of --repeats interleaved timed steps after one warm-up step each
(the JAX warm-up includes compilation and is reported as `jax_first_step_s`).
Memory: peak RSS of the process after the JAX warm-up (both models and the JAX step's
buffers) and at the end (everything); both frameworks share the process.

    python benchmarks/train_step.py                  # both shapes, batch 8 × 256
    python benchmarks/train_step.py --shapes 256x4 --batch 4 --seq 128
    python benchmarks/train_step.py --preset qwen2.5-0.5b --dtype bfloat16   # on a GPU
    python benchmarks/train_step.py --smoke          # seconds; records nothing
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  pylint: disable=g-import-not-at-top


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="256x4,512x8", help="hidden x layers, comma-separated")
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peak_n", type=int, default=0,
                 help="side of the peak matmul (0: 2048 on CPU, 8192 on an accelerator)")
  p.add_argument("--peak_trials", type=int, default=3, help="matmuls per repeat and framework")
  common.add_thread_flags(p)
  common.add_device_flags(p)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--profile", action="store_true",
                 help="also time forward / forward+backward parts (CPU seconds)")
  common.add_common_flags(p)
  args = p.parse_args(argv)
  if args.smoke:  # tiny whatever the flags (a --preset too); --dtype and devices stay
    args.shapes, args.vocab, args.batch, args.seq = "64x2", 512, 2, 32
    args.repeats, args.peak_n, args.preset = 1, 256, ""
  return args


def _shapes(args):
  if args.preset:
    return [common.preset_shape(args.preset)]
  out = []
  for text in args.shapes.split(","):
    hidden, layers = (int(x) for x in text.lower().split("x"))
    heads = max(1, hidden // 64)
    out.append(dict(name=f"{hidden}x{layers}", hidden=hidden, layers=layers, heads=heads,
                    kv_heads=max(1, heads // 2), intermediate=4 * hidden, vocab=args.vocab,
                    tie=False))
  return out


def torch_config(shape, transformers, seq):
  """The `transformers` Qwen2 config of a shape (random init, std 0.02)."""
  return transformers.Qwen2Config(
      vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
      intermediate_size=shape["intermediate"], max_position_embeddings=max(4096, seq),
      initializer_range=0.02, tie_word_embeddings=shape["tie"], pad_token_id=0)


def bench_shape(shape, args, torch, transformers, device):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from score.losses import pg  # pylint: disable=g-import-not-at-top
  from score.losses import reduce as reduce_lib  # pylint: disable=g-import-not-at-top
  from score.models import hf, token_logprobs  # pylint: disable=g-import-not-at-top
  from score.trainers.common import Policy  # pylint: disable=g-import-not-at-top

  b, l, vocab = args.batch, args.seq, shape["vocab"]
  bf16 = args.dtype == "bfloat16"
  torch.manual_seed(args.seed)
  torch_model = transformers.Qwen2ForCausalLM(torch_config(shape, transformers, l)).train()
  with tempfile.TemporaryDirectory() as tmp:
    torch_model.save_pretrained(tmp)
    model = hf.from_pretrained(tmp, dtype=getattr(jnp, args.dtype))  # fp32 params
  torch_model.to(device)
  n_matmul = common.matmul_params(model)
  n_total = int(sum(p.numel() for p in torch_model.parameters()))
  flops_per_step = 6 * n_matmul * b * l

  peaks = {k: [] for k in ("jax_wall", "jax_cpu", "torch_wall", "torch_cpu")}
  rng = np.random.default_rng(args.seed)
  tokens = rng.integers(1, vocab, size=(b, l), dtype=np.int32)
  mask = np.ones((b, l), np.int32)
  loss_mask = np.zeros((b, l), np.float32)
  loss_mask[:, l // 4:] = 1.0
  adv = np.repeat(rng.standard_normal((b, 1)).astype(np.float32), l, axis=1)

  # --- JAX --------------------------------------------------------------------------------
  policy, params = Policy.split(model)
  del model
  optimizer = optax.adamw(1e-5, weight_decay=0.01)
  opt_state = optimizer.init(params)

  def loss_fn(params, tokens_BxL, mask_BxL, loss_mask_BxL, adv_BxL):
    logp_BxL = token_logprobs(policy.model(params), tokens_BxL, mask_BxL)
    loss_BxL = pg.policy_gradient_loss(logp_BxL, adv_BxL, loss_mask_BxL)
    return reduce_lib.reduce(loss_BxL, loss_mask_BxL, "token")

  def _step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(_step, donate_argnums=(0, 1))
  batch = tuple(jnp.asarray(x) for x in (tokens, mask, loss_mask, adv))
  state = {"params": params, "opt": opt_state}

  def run_jax():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], batch)
    return float(jax.block_until_ready(loss))

  jax_mm = common.jax_matmul(args.peak_n, args.dtype, args.seed)

  def jax_peak():
    for _ in range(args.peak_trials):
      _, wall, cpu = common.timed(jax_mm)
      peaks["jax_wall"].append(wall)
      peaks["jax_cpu"].append(cpu)

  # --- PyTorch eager ------------------------------------------------------------------------
  t_tokens = torch.tensor(tokens, dtype=torch.long, device=device)
  t_mask = torch.tensor(mask, dtype=torch.long, device=device)
  t_loss_mask = torch.tensor(loss_mask, device=device)
  t_adv = torch.tensor(adv, device=device)
  t_opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-5, weight_decay=0.01)
  torch_mm = common.torch_matmul(args.peak_n, args.dtype, torch, device)
  autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

  def run_torch():
    with autocast():
      logits = torch_model(input_ids=t_tokens, attention_mask=t_mask).logits[:, :-1].float()
    targets = t_tokens[:, 1:]
    logp = (torch.gather(logits, -1, targets[..., None])[..., 0]
            - torch.logsumexp(logits, dim=-1))
    lm = t_loss_mask[:, 1:]
    loss = (-t_adv[:, 1:] * logp * lm).sum() / lm.sum().clamp(min=1.0)
    loss.backward()
    t_opt.step()
    t_opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  def torch_peak():
    for _ in range(args.peak_trials):
      _, wall, cpu = common.timed(torch_mm)
      peaks["torch_wall"].append(wall)
      peaks["torch_cpu"].append(cpu)

  # Warm-ups: JAX compiles here; the first losses must agree (identical weights and batch;
  # JAX's loss also holds position 0 of each row at 0, outside the loss mask).
  jax_loss0, jax_first, _ = common.timed(run_jax)
  rss_after_jax = common.peak_rss_mb()
  torch_loss0, torch_first, _ = common.timed(run_torch)
  torch_peak()
  for v in peaks.values():
    v.clear()

  compiles = common.CompileCounter()
  rows = {k: [] for k in ("jax_wall", "jax_cpu", "torch_wall", "torch_cpu")}
  for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
    jax_peak()
    for key, fn in (("jax", run_jax), ("torch", run_torch)):
      if key == "torch":
        torch_peak()
      _, wall, cpu = common.timed(fn)
      rows[f"{key}_wall"].append(wall)
      rows[f"{key}_cpu"].append(cpu)
  med = {k: common.median(v) for k, v in rows.items()}
  # The achievable peak is the best matmul seen (on a shared machine, slower ones are waits).
  med.update({f"{k[0]}pk_{k.split('_')[1]}": min(v) for k, v in peaks.items()})
  peak_flops = 2 * args.peak_n ** 3
  best_per_cpu_s = peak_flops / min(med["jpk_cpu"], med["tpk_cpu"])
  out = {
      "shape": shape["name"],
      "params": n_total,
      "matmul_params": n_matmul,
      "tokens_per_step": b * l,
      "jax_tokens_per_s": round(b * l / med["jax_wall"], 1),
      "torch_tokens_per_s": round(b * l / med["torch_wall"], 1),
      "ratio": round(med["torch_wall"] / med["jax_wall"], 3),
      "cpu_time_ratio": round(med["torch_cpu"] / med["jax_cpu"], 3),
      "jax_step_s": round(med["jax_wall"], 4),
      "torch_step_s": round(med["torch_wall"], 4),
      "jax_step_cpu_s": round(med["jax_cpu"], 4),
      "torch_step_cpu_s": round(med["torch_cpu"], 4),
      "jax_matmul_gflops": round(peak_flops / med["jpk_wall"] / 1e9, 2),
      "torch_matmul_gflops": round(peak_flops / med["tpk_wall"] / 1e9, 2),
      "jax_matmul_gflop_per_cpu_s": round(peak_flops / med["jpk_cpu"] / 1e9, 2),
      "torch_matmul_gflop_per_cpu_s": round(peak_flops / med["tpk_cpu"] / 1e9, 2),
      "jax_mfu": round((flops_per_step / med["jax_wall"]) / (peak_flops / med["jpk_wall"]), 3),
      "torch_mfu": round((flops_per_step / med["torch_wall"]) / (peak_flops / med["tpk_wall"]),
                         3),
      "jax_first_step_s": round(jax_first, 2),
      "torch_first_step_s": round(torch_first, 2),
      "jax_compiles_while_timed": compiles.count,
      "first_loss_jax": round(jax_loss0, 6),
      "first_loss_torch": round(torch_loss0, 6),
      "peak_rss_mb_after_jax_warmup": rss_after_jax,
      "peak_rss_mb": common.peak_rss_mb(),
      **common.device_memory_mb(torch, device),
  }
  if not common.jax_on_accelerator() and device == "cpu":  # CPU time is the work done
    out["jax_mfu_cpu"] = round((flops_per_step / med["jax_cpu"]) / best_per_cpu_s, 3)
    out["torch_mfu_cpu"] = round((flops_per_step / med["torch_cpu"]) / best_per_cpu_s, 3)
  spec = common.spec_peak_flops(args.dtype, args.peak_tflops)
  if spec:  # against the data-sheet peak
    out["jax_mfu_spec"] = round(flops_per_step / med["jax_wall"] / spec, 3)
    out["torch_mfu_spec"] = round(flops_per_step / med["torch_wall"] / spec, 3)
  if args.profile:
    out["profile_cpu_s"] = _profile(args, policy, state, batch, torch_model, t_tokens, t_mask,
                                    t_loss_mask, t_adv, loss_fn)
  return out


def _profile(args, policy, state, batch, torch_model, t_tokens, t_mask, t_loss_mask, t_adv,
             loss_fn):
  """Median CPU seconds of the parts of a step, per framework (where the time goes).

  fwd          log-probs only (JAX: `token_logprobs`, jitted; torch: under `no_grad`)
  fwd_bwd      loss + gradients, no optimiser
  fwd_bwd_full_logits  JAX only: the same with the plain full-logits log-softmax
               (`model(tokens)` then `log_softmax`), i.e. without `token_logprobs`' chunked,
               rematerialised unembedding
  step         the whole timed step (from the main table)
  """
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from score.losses import pg  # pylint: disable=g-import-not-at-top
  from score.losses import reduce as reduce_lib  # pylint: disable=g-import-not-at-top
  from score.models import token_logprobs  # pylint: disable=g-import-not-at-top

  params = state["params"]
  tokens_BxL, mask_BxL, loss_mask_BxL, adv_BxL = batch

  def full_logits_loss(params, tokens_BxL, mask_BxL, loss_mask_BxL, adv_BxL):
    logits = policy.model(params)(tokens_BxL, mask_BxL=mask_BxL)[:, :-1]
    logp = jax.numpy.take_along_axis(jax.nn.log_softmax(logits), tokens_BxL[:, 1:, None],
                                     axis=-1)[..., 0]
    logp_BxL = jax.numpy.pad(logp, ((0, 0), (1, 0)))
    return reduce_lib.reduce(pg.policy_gradient_loss(logp_BxL, adv_BxL, loss_mask_BxL),
                             loss_mask_BxL, "token")

  fns = {
      "jax_fwd": jax.jit(lambda p: token_logprobs(policy.model(p), tokens_BxL, mask_BxL)),
      "jax_fwd_bwd": jax.jit(jax.grad(loss_fn)),
      "jax_fwd_bwd_full_logits": jax.jit(jax.grad(full_logits_loss)),
  }
  jax_calls = {
      "jax_fwd": lambda: jax.block_until_ready(fns["jax_fwd"](params)),
      "jax_fwd_bwd": lambda: jax.block_until_ready(fns["jax_fwd_bwd"](params, *batch)),
      "jax_fwd_bwd_full_logits": lambda: jax.block_until_ready(
          fns["jax_fwd_bwd_full_logits"](params, *batch)),
  }

  def torch_logp():
    logits = torch_model(input_ids=t_tokens, attention_mask=t_mask).logits[:, :-1].float()
    return (torch.gather(logits, -1, t_tokens[:, 1:, None])[..., 0]
            - torch.logsumexp(logits, dim=-1))

  def torch_fwd():
    with torch.no_grad():
      torch_logp()

  def torch_fwd_bwd():
    lm = t_loss_mask[:, 1:]
    loss = (-t_adv[:, 1:] * torch_logp() * lm).sum() / lm.sum().clamp(min=1.0)
    loss.backward()
    torch_model.zero_grad(set_to_none=True)

  calls = dict(jax_calls, torch_fwd=torch_fwd, torch_fwd_bwd=torch_fwd_bwd)
  for fn in calls.values():  # compile / warm up
    fn()
  cpu = {k: [] for k in calls}
  for _ in range(args.repeats):
    for k, fn in calls.items():
      cpu[k].append(common.timed(fn)[2])
  return {k: round(common.median(v), 4) for k, v in cpu.items()}


def main(argv=None):
  args = _parse(argv)
  common.set_jax_threads(args.jax_threads)
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  common.set_torch_threads(torch, args.torch_threads)
  device = common.torch_device(args.torch_device, torch)
  accelerator = common.jax_on_accelerator()
  if args.profile and (accelerator or device != "cpu"):
    raise SystemExit("--profile splits CPU seconds: CPU runs only")
  args.peak_n = args.peak_n or (8192 if accelerator else 2048)
  results = [bench_shape(shape, args, torch, transformers, device) for shape in _shapes(args)]
  result = {
      "benchmark": "train_step",
      "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
      "dtype": args.dtype, "preset": args.preset or None, "torch_device": device,
      "peak_matmul": f"{args.peak_n}^3 {args.dtype}",
      "mfu_formula": "6*N_matmul*tokens/s / measured matmul FLOP/s (attention products omitted)",
      "shapes": results,
      "machine": common.machine(torch_threads=torch.get_num_threads()),
  }
  common.emit(result)
  if not (args.smoke or args.no_record):
    headline = {}
    for r in results:
      s = r["shape"]
      headline[f"{s} jax/torch tok/s"] = f"{r['jax_tokens_per_s']}/{r['torch_tokens_per_s']}"
      headline[f"{s} ratio (cpu)"] = f"{r['ratio']} ({r['cpu_time_ratio']})"
      if "jax_mfu_cpu" in r:
        headline[f"{s} MFU jax/torch (cpu)"] = (f"{r['jax_mfu']}/{r['torch_mfu']} "
                                                f"({r['jax_mfu_cpu']}/{r['torch_mfu_cpu']})")
      else:
        headline[f"{s} MFU jax/torch"] = f"{r['jax_mfu']}/{r['torch_mfu']}"
      if "jax_mfu_spec" in r:
        headline[f"{s} MFU of data-sheet peak jax/torch"] = (
            f"{r['jax_mfu_spec']}/{r['torch_mfu_spec']}")
    headline["batch×seq"] = f"{args.batch}×{args.seq}"
    headline["dtype, torch device"] = f"{args.dtype}, {device}"
    headline["jax_threads"] = args.jax_threads or "all"
    for r in results:
      if "profile_cpu_s" in r:
        headline[f"{r['shape']} profile CPU s"] = ", ".join(
            f"{k} {v}" for k, v in r["profile_cpu_s"].items())
    headline["peak RSS MB"] = results[-1]["peak_rss_mb"]
    for key in ("jax_peak_device_mb", "torch_peak_device_mb"):
      if key in results[-1]:
        headline[key] = results[-1][key]
    common.record(result, headline)
  return result


if __name__ == "__main__":
  main()
