"""LoRA rollouts: decode with the adapters unmerged, or merge them into the weights per update?

One decode step (a batch of one new token against a KV cache of `--cache` slots, jitted) of
the same LoRA model two ways, interleaved, after one warm-up call each:

    unmerged_step_ms   the adapted model as it trains: x·W + (alpha/r)·(x·A)·B per projection
    merged_step_ms     a plain model whose weights hold W + (alpha/r)·A·B
    merge_ms           building those merged weights (jitted, all projections): paid once per
                       update when rollouts use merged weights
    merged_extra_bytes the merged weights' bytes: a second full copy of every adapted weight
                       beside the frozen base (a LoRA run keeps one base otherwise)

Medians of `--repeats` calls (process CPU time per call too: steadier than wall time on a
shared machine). Prints one JSON line.

    python benchmarks/lora_decode.py                      # D=512, 4 layers, rank 16, batch 8
    python benchmarks/lora_decode.py --smoke              # seconds; records nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  pylint: disable=g-import-not-at-top


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--cache", type=int, default=256)
  common.add_shape_flags(p, vocab=4096, hidden=512, layers=4, heads=8, kv_heads=2,
                         intermediate=2048)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--targets", default="q,k,v,o,gate,up,down")
  p.add_argument("--repeats", type=int, default=50)
  p.add_argument("--smoke", action="store_true")
  args = p.parse_args(argv)
  if args.smoke:
    args.hidden, args.intermediate, args.vocab, args.layers, args.repeats = 64, 128, 256, 2, 3
  return args


def main(argv=None):
  args = _parse(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from score.models import ModelConfig, Transformer, lora  # pylint: disable=g-import-not-at-top
  from score.trainers.common import Policy  # pylint: disable=g-import-not-at-top

  config = ModelConfig.tiny(
      vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
      num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
      intermediate_size=args.intermediate, max_position_embeddings=args.cache + 8,
      lora_rank=args.rank, lora_targets=tuple(args.targets.split(",")))
  policy, params = Policy.split(Transformer(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.normal(0, 0.01, v.shape), v.dtype) if "_lora_b']" in k else v
            for k, v in params.items()}
  merged_policy, merged = Policy.split(lora.merged_model(policy.model(params)))

  b, s = args.batch, args.cache
  cache = policy.model(params).init_cache(b, s)
  tokens = jnp.asarray(rng.integers(3, args.vocab, (b, 1)), jnp.int32)
  index = s // 2
  positions = jnp.full((b, 1), index, jnp.int32)
  kv_mask = jnp.asarray(np.arange(s)[None, :] <= index, jnp.int32).repeat(b, 0)

  def step_fn(pol):
    @jax.jit
    def step(params, cache):
      logits, cache = pol.model(params).decode(tokens, positions, cache, index, kv_mask)
      return logits, cache
    return step

  steps = {"unmerged": (step_fn(policy), params), "merged": (step_fn(merged_policy), merged)}
  scale = config.lora_scale
  merge_fn = jax.jit(lambda p: lora.merge(p, scale))
  out = {name: fn(p, cache) for name, (fn, p) in steps.items()}
  np.testing.assert_allclose(out["unmerged"][0], out["merged"][0], rtol=2e-3, atol=2e-3)
  jax.block_until_ready(merge_fn(params))
  wall = {k: [] for k in (*steps, "merge")}
  cpu = {k: [] for k in wall}
  for _ in range(args.repeats):  # interleaved
    for name, (fn, p) in steps.items():
      _, w, c = common.timed(lambda fn=fn, p=p: jax.block_until_ready(fn(p, cache)))
      wall[name].append(w)
      cpu[name].append(c)
    _, w, c = common.timed(lambda: jax.block_until_ready(merge_fn(params)))
    wall["merge"].append(w)
    cpu["merge"].append(c)
  adapted_bytes = sum(params[w].nbytes for w, _, _ in lora.pairs(params))
  record = {
      "config": {k: v for k, v in vars(args).items() if k != "smoke"},
      "unmerged_step_ms": 1e3 * statistics.median(wall["unmerged"]),
      "merged_step_ms": 1e3 * statistics.median(wall["merged"]),
      "unmerged_step_cpu_ms": 1e3 * statistics.median(cpu["unmerged"]),
      "merged_step_cpu_ms": 1e3 * statistics.median(cpu["merged"]),
      "merge_ms": 1e3 * statistics.median(wall["merge"]),
      "merge_cpu_ms": 1e3 * statistics.median(cpu["merge"]),
      "merged_extra_bytes": adapted_bytes,
      "adapter_bytes": sum(v.nbytes for k, v in params.items() if lora.is_adapter(k)),
      "device": jax.devices()[0].device_kind,
  }
  record["unmerged_over_merged"] = record["unmerged_step_ms"] / record["merged_step_ms"]
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
