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
  parser.add_argument("--torch_threads", type=int, default=1)
  parser.add_argument("--jax_threads", type=int, default=0,
                      help="0: XLA's default (every core); 1: single-threaded XLA")


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


def add_common_flags(parser) -> None:
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes, seconds; prints the JSON line, records nothing")
  parser.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
