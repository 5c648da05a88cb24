"""Multi-host JAX: `jax.distributed` start-up from config/environment, per-process data, and
checkpoints written and read by every process through orbax.

Every process runs the same program (SPMD). After `initialize_distributed`, `jax.devices()`
lists the devices of all processes, `jax.local_devices()` this process's; a mesh built by
`score.parallel.make_mesh` spans all of them. Each process loads only its rows of the global
batch (`process_batch_slice`) and `shard_batch` assembles the global array.

Start-up, in order of precedence:
  1. explicit fields of the config's `distributed` section (`coordinator_address`,
     `num_processes`, `process_id`, `local_device_ids`);
  2. JAX's environment variables (`JAX_COORDINATOR_ADDRESS`, and ours `JAX_NUM_PROCESSES`,
     `JAX_PROCESS_ID`, read here because JAX reads only the first);
  3. JAX's cluster auto-detection: TPU VM pod slices (the TPU metadata server), SLURM
     (`SLURM_*` variables under `srun`), Open MPI (`OMPI_*` under `mpirun`), and GKE/K8s
     where JAX supports it. On a TPU pod slice nothing needs to be set.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
        "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def distributed_config(enabled: bool = False, coordinator_address: str = "",
                       num_processes: int = 0, process_id: int = -1):
  """The `distributed` section of a config (empty/0/-1 = from the environment or auto)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      enabled=enabled, coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id))


def _resolved(cfg) -> dict[str, Any]:
  get = (cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)) if cfg \
      else (lambda k, d=None: d)
  kwargs: dict[str, Any] = {}
  address = get("coordinator_address", "") or os.environ.get(_ENV["coordinator_address"], "")
  if address:
    kwargs["coordinator_address"] = address
  n = int(get("num_processes", 0) or os.environ.get(_ENV["num_processes"], 0) or 0)
  if n:
    kwargs["num_processes"] = n
  pid = get("process_id", -1)
  pid = int(os.environ.get(_ENV["process_id"], -1)) if pid is None or int(pid) < 0 else int(pid)
  if pid >= 0:
    kwargs["process_id"] = pid
  local = get("local_device_ids", None)
  if local:
    kwargs["local_device_ids"] = [int(i) for i in local]
  return kwargs


def initialize_distributed(cfg=None, *, force: bool = False) -> bool:
  """Starts `jax.distributed` when the config or the environment asks for several processes.

  Call it first, before anything touches a JAX device. It runs when `cfg.enabled` is true,
  `force` is set, a coordinator address / process count is configured, or a multi-process
  launcher (SLURM with more than one task, Open MPI, a TPU pod slice with several hosts) is
  detected; otherwise (one process, e.g. a laptop) it does nothing.

  Args:
    cfg: a `distributed` config section (see `distributed_config`), or None.
    force: call `jax.distributed.initialize` even if nothing was detected (it then does its
      own auto-detection and raises if it finds no cluster).

  Returns:
    Whether `jax.distributed.initialize` was called (False if already initialised).
  """
  kwargs = _resolved(cfg)
  enabled = bool(cfg.get("enabled", False)) if cfg is not None and hasattr(cfg, "get") else False
  if jax.distributed.is_initialized():
    return False
  launched = (int(os.environ.get("SLURM_NTASKS", "1")) > 1
              or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
              or bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")))
  if not (force or enabled or kwargs or launched):
    return False
  jax.distributed.initialize(**kwargs)
  return True


def is_main_process() -> bool:
  """Process 0 writes logs, metrics and results tables; every process writes checkpoints."""
  return jax.process_index() == 0


def process_batch_slice(global_batch: int, *, process_index: int | None = None,
                        process_count: int | None = None) -> slice:
  """Rows of the global batch this process loads (contiguous, equal shares).

  With the mesh from `make_mesh` over all devices in process order, process p's devices hold
  exactly these rows of a batch split over data×fsdp.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if global_batch % count:
    raise ValueError(f"global batch {global_batch} does not split over {count} processes")
  per = global_batch // count
  return slice(index * per, (index + 1) * per)


def process_seed(seed: int) -> int:
  """A per-process seed for data loading (all processes share model/sampling seeds)."""
  return int(np.random.SeedSequence([seed, jax.process_index()]).generate_state(1)[0])


def gather(tree):
  """A pytree of (possibly multi-process, sharded) arrays as full numpy arrays on every
  process (`multihost_utils.process_allgather`)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def sync(name: str):
  """A barrier: every process waits here until all reach it."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
