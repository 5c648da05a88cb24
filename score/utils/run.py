"""Workdir bookkeeping: what a run writes before it starts, and the error types it raises."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata

from score.utils import config as config_lib

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy",
            "transformers", "grain", "tensorflow-datasets", "math-verify", "score")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept untouched."""

  def __init__(self, step: int, last_checkpoint: int | None, name: str = "loss"):
    self.step = step
    self.last_checkpoint = last_checkpoint
    super().__init__(
        f"Non-finite {name} at step {step}; stopped without saving. "
        f"Last good checkpoint: {'none' if last_checkpoint is None else f'step {last_checkpoint}'}.")


def git_commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def versions() -> dict[str, str]:
  out = {"python": sys.version.split()[0]}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def write_run_info(workdir: str, config) -> dict:
  """Writes `config.json` and `run_info.json` (commit, versions, devices, host) to `workdir`."""
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config_lib.to_dict(config), f, indent=2, default=str)
  info = {
      "commit": git_commit(),
      "versions": versions(),
      "devices": [str(d) for d in jax.devices()],
      "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
      "argv": sys.argv,
  }
  with open(os.path.join(workdir, "run_info.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  return info


def run_info(workdir: str, config) -> dict:
  """The run's `run_info.json` as the launcher wrote it at the start (written now if the run
  was started from Python), so results cite the commit the run started from."""
  path = os.path.join(workdir, "run_info.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return write_run_info(workdir, config)


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class ResourceLog:
  """Wall seconds, JAX compile seconds (tracing + lowering + XLA, from `jax.monitoring`) and
  peak RSS of this process; `write()` puts them in `<workdir>/resources.json`.

  `experiments.main` starts one per run and writes it at exit, so each run says what its
  compiles and memory cost (a process killed with SIGKILL writes nothing).
  """

  def __init__(self, workdir: str):
    import time  # pylint: disable=g-import-not-at-top
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    self.path = os.path.join(workdir, "resources.json")
    self._clock = time.perf_counter
    self._start = self._clock()
    self.compile_s = 0.0
    self.compiles = 0

    def on_event(name, seconds, **kwargs):
      del kwargs
      if name in _COMPILE_EVENTS:
        self.compile_s += seconds
        self.compiles += name == _COMPILE_EVENTS[-1]

    monitoring.register_event_duration_secs_listener(on_event)

  def summary(self) -> dict:
    import resource  # pylint: disable=g-import-not-at-top
    return {"wall_s": round(self._clock() - self._start, 2),
            "compile_s": round(self.compile_s, 2), "compiles": self.compiles,
            # ru_maxrss is in KiB on Linux.
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

  def write(self) -> dict:
    out = self.summary()
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    with open(self.path, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)
    return out
