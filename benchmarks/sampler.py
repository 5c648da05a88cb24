"""Sampler throughput: `score.sampling.generate` vs `transformers` `generate`, one run.

Both decode the same random Qwen2 checkpoint (saved by `transformers` to a temporary
directory and loaded with `score.models.hf.from_pretrained`), greedily, with a KV cache, for
the same left-padded batch of prompts of different lengths and the same number of new tokens
(no early stop). Prints one JSON line:

    jax_tokens_per_s / torch_tokens_per_s  steady state (median of --repeats interleaved timed
                                           calls, after one warm-up call), generated tokens / s
    ratio                                  jax / torch
    jax_cpu_s / torch_cpu_s, cpu_time_ratio  process CPU time (all threads) per call: steadier
                                           than wall time on a machine shared with other jobs
    jax_first_call_s                       the first call, compilation included
    tokens_identical                       greedy outputs agree token for token (rows_identical:
                                           the fraction of rows that do; in bf16 the two
                                           frameworks round differently and may part ways)
    bandwidth_gb_s                         memory bandwidth measured in the same run: host
                                           (numpy, best of 5 copies of 256 MiB) or, on an
                                           accelerator, device (best of 5 jitted copies of
                                           1 GiB); bytes read + written
    bandwidth_bound_tokens_per_s           batch × bandwidth / weight bytes: the decode speed
                                           if every step only had to read all weights once
    jax/torch_fraction_of_bound            tokens/s ÷ that bound. Weights that fit in the CPU
                                           caches (the default model: about 4 MB) are read
                                           faster than DRAM, so fractions above 1 can occur

Accelerator mode: `--preset qwen2.5-0.5b --dtype bfloat16` decodes the published 0.5B shape
with bf16 weights in both frameworks (torch on `--torch_device`, default cuda when present).

    python benchmarks/sampler.py                      # batch 8, 128 new tokens
    python benchmarks/sampler.py --batch 32 --hidden 512 --layers 8
    python benchmarks/sampler.py --preset qwen2.5-0.5b --dtype bfloat16 --batch 64
    python benchmarks/sampler.py --smoke              # seconds; records nothing
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  pylint: disable=g-import-not-at-top


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--min_prompt", type=int, default=8)
  p.add_argument("--max_prompt", type=int, default=24)
  common.add_shape_flags(p, vocab=2048, hidden=128, layers=4, heads=4, kv_heads=2,
                         intermediate=512)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--torch_threads", type=int, default=0,
                 help="0: every core, as XLA uses by default (equal hardware)")
  common.add_device_flags(p)
  common.add_common_flags(p)
  args = p.parse_args(argv)
  if args.smoke:  # tiny whatever the flags (a --preset too); --dtype and devices stay
    args.batch, args.new_tokens, args.min_prompt, args.max_prompt = 2, 4, 3, 5
    args.vocab, args.hidden, args.layers, args.heads, args.kv_heads = 64, 32, 1, 2, 1
    args.intermediate, args.repeats, args.preset = 64, 1, ""
  args.tie = False
  if args.preset:
    shape = common.preset_shape(args.preset)
    args.tie = shape["tie"]
    args.vocab, args.hidden, args.layers = shape["vocab"], shape["hidden"], shape["layers"]
    args.heads, args.kv_heads, args.intermediate = (shape["heads"], shape["kv_heads"],
                                                    shape["intermediate"])
  return args


def _host_bandwidth(np, mib: int = 256, trials: int = 5) -> float:
  """Host memory bandwidth, bytes/s: the best of `trials` copies of `mib` MiB (read + write)."""
  src = np.ones(mib * 2**20 // 4, np.float32)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(trials):
    t = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t)
  return 2 * src.nbytes / best


def _device_bandwidth(mib: int = 1024, trials: int = 5) -> float:
  """Accelerator memory bandwidth, bytes/s: the best of `trials` jitted `x + 1` over `mib` MiB
  of float32 (each element read and written once)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.ones(mib * 2**20 // 4, jnp.float32)
  add = jax.jit(lambda x: x + 1)
  jax.block_until_ready(add(x))
  best = min(common.timed(lambda: jax.block_until_ready(add(x)))[1] for _ in range(trials))
  return 2 * x.nbytes / best


def main(argv=None):
  args = _parse(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.sampling import generate, left_pad  # pylint: disable=g-import-not-at-top

  common.set_torch_threads(torch, args.torch_threads)
  device = common.torch_device(args.torch_device, torch)
  rng = np.random.default_rng(args.seed)
  lengths = np.linspace(args.min_prompt, args.max_prompt, args.batch).astype(int)
  prompts = [rng.integers(1, args.vocab, size=n).tolist() for n in lengths]
  n = args.new_tokens

  torch.manual_seed(args.seed)
  cfg = transformers.Qwen2Config(
      vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
      intermediate_size=args.intermediate, max_position_embeddings=4096,
      initializer_range=0.1, tie_word_embeddings=args.tie, pad_token_id=0)
  torch_model = transformers.Qwen2ForCausalLM(cfg).eval()
  dtype = getattr(jnp, args.dtype)
  with tempfile.TemporaryDirectory() as tmp:
    torch_model.save_pretrained(tmp)
    # Inference: weights stored in the compute dtype, as torch's below.
    model = hf.from_pretrained(tmp, dtype=dtype, param_dtype=dtype)
  torch_model.to(device=device, dtype=getattr(torch, args.dtype))

  # --- JAX ---------------------------------------------------------------------------------
  def run_jax():
    return generate(model, prompts, max_new_tokens=n, temperature=0.0)

  jax_out, jax_first, _ = common.timed(run_jax)

  # --- PyTorch / transformers ---------------------------------------------------------------
  tokens_BxP, mask_BxP = left_pad(prompts)
  input_ids = torch.tensor(tokens_BxP, dtype=torch.long, device=device)
  attention_mask = torch.tensor(mask_BxP, dtype=torch.long, device=device)

  def run_torch():
    with torch.inference_mode():
      out = torch_model.generate(
          input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
          max_new_tokens=n, min_new_tokens=n, pad_token_id=0, use_cache=True)
    common.torch_sync(torch, device)
    return out

  run_torch()  # Warm-up.
  # Interleaved repeats, so load changes on a shared machine hit both sides alike.
  rows = {k: [] for k in ("jax_wall", "jax_cpu", "torch_wall", "torch_cpu")}
  for _ in range(args.repeats):
    jax_out, wall, cpu = common.timed(run_jax)
    rows["jax_wall"].append(wall)
    rows["jax_cpu"].append(cpu)
    torch_out, wall, cpu = common.timed(run_torch)
    rows["torch_wall"].append(wall)
    rows["torch_cpu"].append(cpu)
  med = {k: common.median(v) for k, v in rows.items()}
  torch_tokens = torch_out[:, tokens_BxP.shape[1]:].tolist()

  generated = args.batch * n
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  accelerator = common.jax_on_accelerator()
  bandwidth = _device_bandwidth() if accelerator else _host_bandwidth(np)
  bound = args.batch * bandwidth / weight_bytes
  same_rows = [a == b for a, b in zip(jax_out.tokens, torch_tokens)]
  result = {
      "benchmark": "sampler",
      "jax_tokens_per_s": round(generated / med["jax_wall"], 1),
      "torch_tokens_per_s": round(generated / med["torch_wall"], 1),
      "ratio": round(med["torch_wall"] / med["jax_wall"], 2),
      "jax_s": round(med["jax_wall"], 4),
      "torch_s": round(med["torch_wall"], 4),
      "jax_cpu_s": round(med["jax_cpu"], 4),
      "torch_cpu_s": round(med["torch_cpu"], 4),
      "cpu_time_ratio": round(med["torch_cpu"] / med["jax_cpu"], 2),
      "jax_first_call_s": round(jax_first, 2),
      "bandwidth_gb_s": round(bandwidth / 1e9, 2),
      "bandwidth_of": "device" if accelerator else "host",
      "weight_mb": round(weight_bytes / 2**20, 2),
      "bandwidth_bound_tokens_per_s": round(bound, 1),
      "jax_fraction_of_bound": float(f"{generated / med['jax_wall'] / bound:.4g}"),
      "torch_fraction_of_bound": float(f"{generated / med['torch_wall'] / bound:.4g}"),
      "tokens_identical": all(same_rows),
      "rows_identical": round(sum(same_rows) / len(same_rows), 3),
      "batch": args.batch,
      "new_tokens": n,
      "prompt_lengths": [int(x) for x in lengths],
      "model": dict(vocab=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                    kv_heads=args.kv_heads, intermediate=args.intermediate,
                    preset=args.preset or None),
      "dtype": args.dtype, "torch_device": device,
      "peak_rss_mb": common.peak_rss_mb(),
      **common.device_memory_mb(torch, device),
      "machine": common.machine(torch_threads=torch.get_num_threads()),
  }
  common.emit(result)
  if not (args.smoke or args.no_record):
    common.record(result, {
        "jax/torch tok/s": f"{result['jax_tokens_per_s']}/{result['torch_tokens_per_s']}",
        "ratio (cpu)": f"{result['ratio']} ({result['cpu_time_ratio']})",
        "fraction of bandwidth bound jax/torch":
            f"{result['jax_fraction_of_bound']}/{result['torch_fraction_of_bound']} "
            f"({result['bandwidth_gb_s']} GB/s {result['bandwidth_of']}, "
            f"{result['weight_mb']} MB weights)",
        "batch": args.batch, "new_tokens": n, "tokens_identical": result["tokens_identical"],
        "model": (args.preset or f"d{args.hidden}x{args.layers}L vocab {args.vocab}")
                 + f", {args.dtype}, torch on {device}",
        "peak RSS MB": result["peak_rss_mb"],
        **common.device_memory_mb(torch, device),
    })
  return result


if __name__ == "__main__":
  main()
