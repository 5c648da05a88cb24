"""Two JAX processes on localhost (`jax.distributed`, coordinator on 127.0.0.1), 4 CPU devices
each, run one sharded SFT step on a (data=2, fsdp=4) mesh over all 8 devices, save and
restore a sharded orbax checkpoint together and sample greedily with the sharded sampler
(each process feeding its half of the prompts) and through `generate(mesh=...)` (each
passing all prompts, as the trainers do); they must agree with each other and with
the same step and sampler run by one process on 8 devices.

A second test runs a whole trainer phase (`sft.train_sft`: the sharded step with 2
micro-batches, `common.train_loop`'s checkpoints, a resume) over two processes with one CPU
device each on a (data=2) mesh; both must end with the params of the same run in one process.

This file is also the worker: `python tests/test_parallel_multiprocess.py PORT ID OUT CKPT
[MODE]`.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

_WORKER_DEVICES = 4
_GLOBAL_BATCH = 8


def _problem():
  """Model, policy, params, optimizer, SFT step and the global batch (same in every process)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from score.models import ModelConfig, Transformer  # pylint: disable=g-import-not-at-top
  from score.trainers.common import Policy, make_optimizer  # pylint: disable=g-import-not-at-top
  from score.trainers.sft import make_sft_step  # pylint: disable=g-import-not-at-top

  config = ModelConfig.tiny(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
                            num_kv_heads=2, head_dim=8, intermediate_size=64)
  model = Transformer(config, rngs=nnx.Rngs(0))
  policy, params = Policy.split(model)
  optimizer = make_optimizer(ml_collections.ConfigDict(dict(lr=1e-3)), 10)
  tokens = np.random.default_rng(0).integers(1, 64, (_GLOBAL_BATCH, 10)).astype(np.int32)
  mask = np.ones_like(tokens)
  loss_mask = mask.copy()
  loss_mask[:, :3] = 0
  return model, params, optimizer, make_sft_step(policy, optimizer), (tokens, mask, loss_mask)


def _prompt_lists(batch):
  """Prompts of different lengths (3 to 5 tokens) from the batch's tokens."""
  return [row[:3 + i % 3].tolist() for i, row in enumerate(batch[0])]


def _summary(params, metrics):
  return {"loss": float(metrics["loss"]),
          "sums": {k: float(np.asarray(v, np.float64).sum()) for k, v in params.items()}}


def _worker(port: int, process_id: int, out_path: str, ckpt_dir: str):
  import jax  # pylint: disable=g-import-not-at-top

  from score import parallel  # pylint: disable=g-import-not-at-top

  started = parallel.initialize_distributed(parallel.distributed_config(
      enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
      process_id=process_id))
  assert started and jax.process_count() == 2 and jax.device_count() == 2 * _WORKER_DEVICES
  model, params, optimizer, step, batch = _problem()
  mesh = parallel.make_mesh(2, 4, 1)
  p, o, shardings = parallel.shard_train_state(params, optimizer.init(params), mesh,
                                               parallel.logical_axes(model))
  assert not p["['embed'].value"].is_fully_addressable  # really spans both processes
  rows = parallel.process_batch_slice(_GLOBAL_BATCH)
  local = tuple(x[rows] for x in batch)
  sharded_step = parallel.shard_step(step, shardings)
  new_p, new_o, metrics = sharded_step(p, o, *parallel.shard_batch(local, mesh))
  ckpt = parallel.ShardedCheckpointer(ckpt_dir)
  ckpt.save(1, {"params": new_p, "opt_state": new_o}, {"step": 1}, force=True)
  ckpt.close()
  _, restored, extra = parallel.ShardedCheckpointer(ckpt_dir).restore(
      parallel.abstract_like({"params": new_p, "opt_state": new_o}))
  gathered = parallel.gather(new_p)
  restored_gathered = parallel.gather(restored["params"])
  result = _summary(gathered, jax.device_get(metrics))
  prompts, prompt_mask = batch[0][:, :5], batch[1][:, :5]
  samples = parallel.sharded_generate_arrays(
      model, prompts[rows], prompt_mask[rows], jax.random.key(0), mesh=mesh, max_new_tokens=6)
  result["greedy_tokens"] = parallel.gather(samples.tokens_BxN).tolist()
  # The trainers' path: log-probs of the global batch under the sharded params, gathered.
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  policy = common.Policy.split(model)[0]
  logp = common.to_host(common.logprobs_fn(policy)(new_p, batch[0], batch[1]))
  result["logp"] = np.asarray(logp).tolist()
  # ... and every process passes all prompts to `generate(mesh=...)`.
  from score.sampling import generate  # pylint: disable=g-import-not-at-top
  result["generate_tokens"] = generate(model, _prompt_lists(batch), max_new_tokens=6,
                                       mesh=mesh).tokens
  # A two-turn rollout: turn 2 continues turn 1's KV cache, which spans both processes.
  from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
  result["rollout_responses"] = rollouts.rollout(
      model, _prompt_lists(batch), num_turns=2, max_new_tokens=4, instruction=[3, 4],
      temperature=0.0, mesh=mesh).responses
  result["restored_equal"] = all(
      np.array_equal(restored_gathered[k], gathered[k]) for k in gathered)
  result["extra"] = extra
  result["process_index"] = jax.process_index()
  with open(out_path, "w") as f:
    json.dump(result, f)
  parallel.sync("done")
  jax.distributed.shutdown()


_TRAINER_MESH = dict(data=2, fsdp=1, tensor=1, micro_batches=2)


def _trainer_problem():
  """Policy, params, a pure `step -> batch` of 8 rows with unequal loss-token counts, and the
  SFT phase's config (same in every process)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from score.models import ModelConfig, Transformer  # pylint: disable=g-import-not-at-top
  from score.trainers.common import Policy  # pylint: disable=g-import-not-at-top

  config = ModelConfig.tiny(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, intermediate_size=64)
  policy, params = Policy.split(Transformer(config, rngs=nnx.Rngs(0)))

  def batches(step):
    tokens = np.random.default_rng(step).integers(1, 64, (_GLOBAL_BATCH, 10)).astype(np.int32)
    mask = np.ones_like(tokens)
    loss_mask = np.zeros_like(tokens)
    for r in range(_GLOBAL_BATCH):
      loss_mask[r, 3 + r % 6:] = 1
    return tokens, mask, loss_mask

  def cfg(steps):
    return ml_collections.ConfigDict(dict(steps=steps, lr=1e-2, batch_size=_GLOBAL_BATCH,
                                          checkpoint_every=1))

  return policy, params, batches, cfg


def _train_twice(workdir):
  """2 steps, then a restart of the same phase for 4 steps (resumes from step 2)."""
  from score import parallel  # pylint: disable=g-import-not-at-top
  from score.trainers import sft  # pylint: disable=g-import-not-at-top
  policy, params, batches, cfg = _trainer_problem()
  mesh_cfg = parallel.mesh_config(**_TRAINER_MESH)
  sft.train_sft(policy, params, batches, cfg(2), workdir=workdir, name="sft",
                mesh_cfg=mesh_cfg)
  return sft.train_sft(policy, params, batches, cfg(4), workdir=workdir, name="sft",
                       mesh_cfg=mesh_cfg)


def _trainer_worker(port: int, process_id: int, out_path: str, workdir: str):
  import jax  # pylint: disable=g-import-not-at-top

  from score import parallel  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(parallel.distributed_config(
      enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
      process_id=process_id))
  assert jax.process_count() == 2 and jax.device_count() == 2
  params = _train_twice(workdir)
  assert not params["['embed'].value"].is_fully_addressable  # on both processes' devices
  gathered = parallel.gather(params)
  with open(out_path, "w") as f:
    json.dump({k: np.asarray(v, np.float64).tolist() for k, v in gathered.items()}, f)
  parallel.sync("done")
  jax.distributed.shutdown()


def _run_workers(tmp_path, devices_per_worker, last_arg, mode=None):
  """Starts the two workers of this file; returns their JSON outputs."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_worker}",
             PYTHONPATH=os.pathsep.join(filter(None, [
                 os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 os.environ.get("PYTHONPATH")])))
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(var, None)
  outs = [tmp_path / f"out{i}.json" for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(port), str(i), str(outs[i]),
       str(last_arg)] + ([mode] if mode else []), env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=420)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return [json.loads(o.read_text()) for o in outs]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top

  from score import parallel  # pylint: disable=g-import-not-at-top

  if jax.device_count() < 8:
    pytest.skip("needs 8 devices for the single-process reference")
  results = _run_workers(tmp_path, _WORKER_DEVICES, tmp_path / "ckpt")
  assert [r["process_index"] for r in results] == [0, 1]
  assert results[0]["loss"] == results[1]["loss"]
  assert results[0]["sums"] == results[1]["sums"]
  assert all(r["restored_equal"] and r["extra"] == {"step": 1} for r in results)

  # The same step in this process on 8 devices with the same mesh.
  model, params, optimizer, step, batch = _problem()
  mesh = parallel.make_mesh(2, 4, 1)
  p, o, shardings = parallel.shard_train_state(params, optimizer.init(params), mesh,
                                               parallel.logical_axes(model))
  new_p, _, metrics = parallel.shard_step(step, shardings)(
      p, o, *parallel.shard_batch(batch, mesh))
  ref = _summary(jax.device_get(new_p), jax.device_get(metrics))
  samples = parallel.sharded_generate_arrays(
      model, batch[0][:, :5], batch[1][:, :5], jax.random.key(0), mesh=mesh, max_new_tokens=6)
  assert results[0]["greedy_tokens"] == results[1]["greedy_tokens"]
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  ref_logp = common.logprobs_fn(common.Policy.split(model)[0])(
      jax.device_get(new_p), batch[0], batch[1])
  for r in results:
    np.testing.assert_allclose(r["logp"], np.asarray(ref_logp), rtol=1e-4, atol=1e-5)
  from score.sampling import generate  # pylint: disable=g-import-not-at-top
  expected = generate(model, _prompt_lists(batch), max_new_tokens=6).tokens
  assert results[0]["generate_tokens"] == results[1]["generate_tokens"] == expected
  from score.sampling import rollouts  # pylint: disable=g-import-not-at-top
  expected = rollouts.rollout(model, _prompt_lists(batch), num_turns=2, max_new_tokens=4,
                              instruction=[3, 4], temperature=0.0).responses
  assert results[0]["rollout_responses"] == results[1]["rollout_responses"] == expected
  np.testing.assert_array_equal(results[0]["greedy_tokens"], jax.device_get(samples.tokens_BxN))
  np.testing.assert_allclose(results[0]["loss"], ref["loss"], rtol=1e-5)
  for k, v in ref["sums"].items():
    np.testing.assert_allclose(results[0]["sums"][k], v, rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.mark.slow
def test_two_processes_train_and_resume_like_one(tmp_path):
  """`sft.train_sft` with `mesh.micro_batches=2` on a data=2 mesh whose two devices are two
  processes: 2 steps, checkpoints in a shared workdir, a restart that resumes to 4 steps.
  Both processes end with the same params, those of the same two calls in one process on 2
  devices (and, up to float rounding, of one uninterrupted 4-step run)."""
  import jax  # pylint: disable=g-import-not-at-top

  from score import parallel  # pylint: disable=g-import-not-at-top
  from score.trainers import sft  # pylint: disable=g-import-not-at-top

  if jax.device_count() < 2:
    pytest.skip("needs 2 devices for the single-process reference")
  results = _run_workers(tmp_path, 1, tmp_path / "workdir", mode="trainer")
  assert results[0] == results[1]
  one = jax.device_get(_train_twice(str(tmp_path / "one")))
  policy, params, batches, cfg = _trainer_problem()
  straight = jax.device_get(sft.train_sft(
      policy, params, batches, cfg(4), workdir=str(tmp_path / "straight"), name="sft",
      mesh_cfg=parallel.mesh_config(**_TRAINER_MESH)))
  moved = 0.0
  for k, v in one.items():
    np.testing.assert_allclose(results[0][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(straight[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    moved = max(moved, float(np.abs(np.asarray(v) - np.asarray(params[k])).max()))
  assert moved > 1e-3


if __name__ == "__main__":
  if sys.argv[5:] == ["trainer"]:
    _trainer_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
  else:
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
