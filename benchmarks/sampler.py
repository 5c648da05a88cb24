"""Sampler throughput: `score.sampling.generate` vs `transformers` `generate`, one run.

Both decode the same tiny random Qwen2 checkpoint (saved by `transformers` to a temporary
directory and loaded with `score.models.hf.from_pretrained`), greedily, with a KV cache, for
the same left-padded batch of prompts of different lengths and the same number of new tokens
(no early stop). Prints one JSON line:

    jax_tokens_per_s / torch_tokens_per_s  steady state (median of --repeats interleaved timed
                                           calls, after one warm-up call), generated tokens / s
    ratio                                  jax / torch
    jax_cpu_s / torch_cpu_s, cpu_time_ratio  process CPU time (all threads) per call: steadier
                                           than wall time on a machine shared with other jobs
    jax_first_call_s                       the first call, compilation included
    tokens_identical                       greedy outputs agree token for token
    bandwidth_gb_s                         host memory bandwidth measured in the same run
                                           (best of 5 copies of 256 MiB: bytes read + written)
    bandwidth_bound_tokens_per_s           batch × bandwidth / weight bytes: the decode speed
                                           if every step only had to read all weights once
    jax/torch_fraction_of_bound            tokens/s ÷ that bound. Weights that fit in the CPU
                                           caches (the default model: about 4 MB) are read
                                           faster than DRAM, so fractions above 1 can occur

    python benchmarks/sampler.py                      # batch 8, 128 new tokens
    python benchmarks/sampler.py --batch 32 --hidden 512 --layers 8
    python benchmarks/sampler.py --smoke              # seconds; records nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--min_prompt", type=int, default=8)
    p.add_argument("--max_prompt", type=int, default=24)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--smoke", action="store_true", help="seconds-long run; records nothing")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.new_tokens, args.min_prompt, args.max_prompt = 2, 4, 3, 5
        args.vocab, args.hidden, args.layers, args.heads, args.kv_heads = 64, 32, 1, 2, 1
        args.intermediate, args.repeats, args.no_record = 64, 1, True
    return args


def _timed(fn):
    """(output, wall seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _bandwidth_bytes_per_s(np, mib: int = 256, trials: int = 5) -> float:
    """Host memory bandwidth: the best of `trials` copies of `mib` MiB (read + write bytes)."""
    src = np.ones(mib * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def main():
    args = _parse()
    import numpy as np
    import torch
    import transformers

    import jax
    from flax import nnx
    from score.models import hf
    from score.sampling import generate, left_pad

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(args.seed)
    lengths = np.linspace(args.min_prompt, args.max_prompt, args.batch).astype(int)
    prompts = [rng.integers(1, args.vocab, size=n).tolist() for n in lengths]
    n = args.new_tokens

    torch.manual_seed(args.seed)
    cfg = transformers.Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate, max_position_embeddings=4096,
        initializer_range=0.1, tie_word_embeddings=False, pad_token_id=0,
    )
    torch_model = transformers.Qwen2ForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model = hf.from_pretrained(tmp)

    # --- JAX ---------------------------------------------------------------------------------
    def run_jax():
        return generate(model, prompts, max_new_tokens=n, temperature=0.0)

    t = time.perf_counter()
    jax_out = run_jax()
    jax_first = time.perf_counter() - t

    # --- PyTorch / transformers ---------------------------------------------------------------
    tokens_BxP, mask_BxP = left_pad(prompts)
    input_ids = torch.tensor(tokens_BxP, dtype=torch.long)
    attention_mask = torch.tensor(mask_BxP, dtype=torch.long)

    def run_torch():
        with torch.inference_mode():
            return torch_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                max_new_tokens=n, min_new_tokens=n, pad_token_id=0, use_cache=True,
            )

    run_torch()  # Warm-up.
    # Interleaved repeats, so load changes on a shared machine hit both sides alike.
    jax_wall, jax_cpu, torch_wall, torch_cpu = [], [], [], []
    for _ in range(args.repeats):
        jax_out, wall, cpu = _timed(run_jax)
        jax_wall.append(wall)
        jax_cpu.append(cpu)
        torch_out, wall, cpu = _timed(run_torch)
        torch_wall.append(wall)
        torch_cpu.append(cpu)
    jax_time, torch_time = statistics.median(jax_wall), statistics.median(torch_wall)
    jax_cpu, torch_cpu = statistics.median(jax_cpu), statistics.median(torch_cpu)
    torch_tokens = torch_out[:, tokens_BxP.shape[1]:].tolist()

    generated = args.batch * n
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    bandwidth = _bandwidth_bytes_per_s(np)
    bound = args.batch * bandwidth / weight_bytes
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "benchmark": "sampler",
        "jax_tokens_per_s": round(generated / jax_time, 1),
        "torch_tokens_per_s": round(generated / torch_time, 1),
        "ratio": round(torch_time / jax_time, 2),
        "jax_s": round(jax_time, 4),
        "torch_s": round(torch_time, 4),
        "jax_cpu_s": round(jax_cpu, 4),
        "torch_cpu_s": round(torch_cpu, 4),
        "cpu_time_ratio": round(torch_cpu / jax_cpu, 2),
        "jax_first_call_s": round(jax_first, 2),
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "weight_mb": round(weight_bytes / 2**20, 2),
        "bandwidth_bound_tokens_per_s": round(bound, 1),
        "jax_fraction_of_bound": float(f"{generated / jax_time / bound:.4g}"),
        "torch_fraction_of_bound": float(f"{generated / torch_time / bound:.4g}"),
        "tokens_identical": jax_out.tokens == torch_tokens,
        "batch": args.batch,
        "new_tokens": n,
        "prompt_lengths": [int(x) for x in lengths],
        "model": dict(vocab=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                      kv_heads=args.kv_heads, intermediate=args.intermediate),
        "jax_device": jax.devices()[0].device_kind,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "commit": commit,
    }
    print(json.dumps(result))
    if not args.no_record:  # a row in benchmarks/RESULTS.md (date, commit, machine, versions)
        import common  # benchmarks/common.py, beside this script

        result["machine"] = common.machine(torch_threads=torch.get_num_threads())
        result["peak_rss_mb"] = common.peak_rss_mb()
        common.record(result, {
            "jax/torch tok/s": f"{result['jax_tokens_per_s']}/{result['torch_tokens_per_s']}",
            "ratio (cpu)": f"{result['ratio']} ({result['cpu_time_ratio']})",
            "fraction of bandwidth bound jax/torch":
                f"{result['jax_fraction_of_bound']}/{result['torch_fraction_of_bound']} "
                f"({result['bandwidth_gb_s']} GB/s, {result['weight_mb']} MB weights)",
            "batch": args.batch, "new_tokens": n, "tokens_identical": result["tokens_identical"],
            "model": f"d{args.hidden}x{args.layers}L vocab {args.vocab}",
            "peak RSS MB": result["peak_rss_mb"],
        })


if __name__ == "__main__":
    main()
