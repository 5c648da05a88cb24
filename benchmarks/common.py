"""Shared helpers of the benchmark scripts: timing, machine description, peak RSS, output.

Every script prints exactly one JSON line (`emit`) and, unless `--no_record` or `--smoke`,
appends a row to `benchmarks/RESULTS.md` (`record`): date, commit, machine (cores, load
average at the time), library versions and the measured numbers. Nothing in RESULTS.md is
typed by hand.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# Both frameworks share one GPU in these scripts: JAX must not take 75 % of its memory up
# front (its default), and its peak-memory figure then counts what it used.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")

_HEADER = """# Benchmark results

Rows are appended by the scripts in this folder (`python benchmarks/<name>.py`); every number
is one a run printed. Columns: the script's headline numbers, then the machine and versions.
Wall-clock times on a machine shared with other jobs are noisy; the `cpu` ratios (process CPU
time, all threads) are the steadier comparison. See each script's docstring for what it times.

"""


def set_jax_threads(n: int) -> None:
  """Before JAX is imported: n = 1 makes XLA's CPU backend single-threaded (no Eigen thread
  pool), for a one-core-against-one-core comparison with `torch.set_num_threads(1)`;
  n = 0 leaves XLA's default (every core)."""
  if n == 1:
    if "jax" in sys.modules:
      raise RuntimeError("set_jax_threads must run before jax is imported")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1").strip()
  elif n != 0:
    raise ValueError("--jax_threads: 0 (XLA's default, every core) or 1")


def add_thread_flags(parser) -> None:
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="0: every core, as XLA uses by default (equal hardware); 1: one")
  parser.add_argument("--jax_threads", type=int, default=0,
                      help="0: XLA's default (every core); 1: single-threaded XLA")


def set_torch_threads(torch, n: int) -> None:
  """torch's intra-op threads: `n`, or with n = 0 one per core — what XLA's CPU backend uses
  by default, so that both frameworks run on the same cores."""
  torch.set_num_threads(n or os.cpu_count() or 1)


def timed(fn):
  """Runs `fn()`; returns `(output, wall seconds, CPU seconds of this process, all threads)`."""
  t, c = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - t, time.process_time() - c


class CompileCounter:
  """Counts XLA compilations (`count`) from the moment it is made; a timed region that
  compiles is not steady state, so the scripts report how many happened inside them."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.count = 0

    def listener(name, duration, **kwargs):
      del duration, kwargs
      if name == "/jax/core/compile/backend_compile_duration":
        self.count += 1

    jax.monitoring.register_event_duration_secs_listener(listener)


def median(xs):
  return statistics.median(xs) if xs else float("nan")


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far (ru_maxrss is KiB on Linux), in MiB."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return round(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1)


def commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                         text=True, cwd=HERE, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "score", "benchmarks"],
                           capture_output=True, text=True, cwd=os.path.dirname(HERE),
                           check=False).stdout.strip()
    return out + ("+dirty" if out and dirty else "")
  except OSError:
    return ""


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def machine(torch_threads: int | None = None) -> dict:
  """Where and when the run happened (the load average is the 1-minute one, at the call)."""
  info = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "commit": commit(),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": round(os.getloadavg()[0], 2),
      "platform": platform.machine(),
      "python": platform.python_version(),
      "versions": {k: v for k in ("jax", "jaxlib", "flax", "optax", "torch", "transformers")
                   if (v := _version(k))},
  }
  if "jax" in sys.modules:  # only where the benchmark uses JAX
    info["jax_device"] = sys.modules["jax"].devices()[0].device_kind
  if torch_threads is not None:
    info["torch_threads"] = torch_threads
  info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  return info


def emit(result: dict) -> None:
  """Prints the one JSON line of a run."""
  print(json.dumps(result, sort_keys=False), flush=True)


def record(result: dict, headline: dict, path: str = RESULTS_MD) -> None:
  """Appends one row to RESULTS.md: `headline` ({column: value}) then the run's machine."""
  m = result.get("machine", {})
  versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
  cells = [m.get("date", ""), f"`{m.get('commit', '')}`", result.get("benchmark", "")]
  cells += [f"{k}: {v}" for k, v in headline.items()]
  cells += [f"{m.get('cpu_count')} cores, load {m.get('load_avg_1m')}", versions]
  new = not os.path.exists(path)
  with open(path, "a", encoding="utf-8") as f:
    if new:
      f.write(_HEADER)
    f.write("\n- " + " · ".join(str(c) for c in cells) + "\n")


# ---------------------------------------------------------------------------------------------
# Accelerator mode: a published shape (`--preset`), bf16 compute (`--dtype`), torch on the GPU.

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, matched
# by substring of JAX's `device_kind` in this order (first match wins).
SPEC_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0),
    ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5", 197.0), ("TPU v4", 275.0),
)


def add_device_flags(parser) -> None:
  from score.models.config import PRESETS  # pylint: disable=g-import-not-at-top
  parser.add_argument("--preset", default="", choices=[""] + sorted(PRESETS),
                      help="a published model shape (random weights), e.g. qwen2.5-0.5b "
                           "(Qwen2-0.5B has the same shape); overrides the size flags")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both frameworks (JAX: the model's dtype; torch: "
                           "autocast); the matmul peak is measured in it")
  parser.add_argument("--torch_device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="auto: cuda when torch sees a GPU")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="the accelerator's data-sheet peak in --dtype (0: looked up for bf16 "
                           "on known devices, see SPEC_BF16_TFLOPS)")


def preset_shape(name: str) -> dict:
  """The size fields of `score.models.config.PRESETS[name]` (random weights are used)."""
  from score.models.config import PRESETS  # pylint: disable=g-import-not-at-top
  p = PRESETS[name]
  return dict(name=name, hidden=p["hidden_size"], layers=p["num_layers"], heads=p["num_heads"],
              kv_heads=p["num_kv_heads"], intermediate=p["intermediate_size"],
              vocab=p["vocab_size"], tie=p.get("tie_embeddings", False))


def torch_device(name: str, torch) -> str:
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  if name == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--torch_device cuda: torch sees no GPU (a CPU-only torch wheel?)")
  return name


def torch_sync(torch, device: str) -> None:
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def jax_on_accelerator() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.devices()[0].platform != "cpu"


def spec_peak_flops(dtype: str, override_tflops: float = 0.0) -> float | None:
  """FLOP/s of the data-sheet peak: `--peak_tflops`, else the bf16 table for JAX's device
  (None on CPU, for fp32, or for a device not in the table)."""
  if override_tflops:
    return override_tflops * 1e12
  import jax  # pylint: disable=g-import-not-at-top
  if dtype != "bfloat16" or not jax_on_accelerator():
    return None
  tflops = data_sheet_bf16_tflops(jax.devices()[0].device_kind)
  return tflops * 1e12 if tflops else None


def data_sheet_bf16_tflops(device_kind: str) -> float | None:
  return next((t for key, t in SPEC_BF16_TFLOPS if key in device_kind), None)


def jax_matmul(n: int, dtype: str, seed: int = 0):
  """A jitted square n×n matmul in `dtype` on JAX's default device: a `() -> None` callable
  that runs it and waits (2n³ FLOP)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.key(seed))
  a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  return lambda: jax.block_until_ready(dot(a, b))


def torch_matmul(n: int, dtype: str, torch, device: str):
  """The same for torch (`torch.mm` on `device`, synchronised)."""
  gen = torch.Generator().manual_seed(0)
  a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=getattr(torch, dtype))
          for _ in range(2))
  torch.mm(a, b)

  def run():
    torch.mm(a, b)
    torch_sync(torch, device)
  return run


def device_memory_mb(torch=None, device: str = "cpu") -> dict:
  """Peak accelerator memory so far, MiB: JAX (`peak_bytes_in_use` of its first device) and
  torch (`max_memory_allocated`); empty on CPU."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {}
  if jax_on_accelerator():
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      out["jax_peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
  if torch is not None and device.startswith("cuda"):
    out["torch_peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
  return out


def matmul_params(model) -> int:
  """Parameters that take part in matmuls: every weight but the input embedding (unless it is
  tied to the unembedding), norm scales and biases."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  total = 0
  for path, x in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
    name = jax.tree_util.keystr(path)
    if "bias" in name or "norm" in name or x.ndim < 2:
      continue
    if "['embed']" in name and not model.config.tie_embeddings:
      continue
    total += x.size
  return int(total)


def add_shape_flags(parser, *, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int,
                    intermediate: int) -> None:
  """`--vocab --hidden --layers --heads --kv_heads --intermediate`: the shape of the random
  model a script builds, with that script's defaults."""
  for name, default in (("vocab", vocab), ("hidden", hidden), ("layers", layers),
                        ("heads", heads), ("kv_heads", kv_heads),
                        ("intermediate", intermediate)):
    parser.add_argument(f"--{name}", type=int, default=default)


def add_common_flags(parser) -> None:
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes, seconds; prints the JSON line, records nothing")
  parser.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
