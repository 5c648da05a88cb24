"""score.parallel on 8 virtual CPU devices (tests/conftest.py sets the XLA flag).

Sharded results are compared with the same computation on one device; shardings are checked
through `.sharding` and the shapes of the per-device shards.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import per_layer_layout
from flax import nnx
from jax.sharding import PartitionSpec as P

from score import parallel
from score.models import ModelConfig, Transformer
from score.models import attention as attention_lib
from score.parallel import mesh as mesh_lib
from score.parallel import plan as plan_lib
from score.sampling import sampler
from score.trainers.common import Policy, make_optimizer
from score.trainers.sft import make_sft_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (data, fsdp, tensor); (2, 2, 2) covers every axis and runs in the fast tier.
MESHES = [
    pytest.param((8, 1, 1), marks=pytest.mark.slow),
    pytest.param((2, 4, 1), marks=pytest.mark.slow),
    (2, 2, 2),
    pytest.param((1, 8, 1), marks=pytest.mark.slow),
]


def tiny_config(**overrides):
  fields = dict(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                intermediate_size=64, qkv_bias=True)
  fields.update(overrides)
  return ModelConfig.tiny(vocab_size=128, **fields)


def adam_state(opt_state) -> optax.ScaleByAdamState:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  (state,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
  return state


def require_devices(n=8):
  if jax.device_count() < n:
    pytest.skip(f"needs {n} devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")


@pytest.fixture(scope="module")
def sft_setup():
  model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
  policy, params = Policy.split(model)
  optimizer = make_optimizer(ml_collections.ConfigDict(dict(lr=1e-3)), 10)
  step = make_sft_step(policy, optimizer)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 128, (8, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[:3, 9:] = 0  # right padding on some rows
  loss_mask = mask.copy()
  loss_mask[:, :4] = 0
  batch = (tokens, mask, loss_mask)
  ref = jax.device_get(step(params, optimizer.init(params), *batch))
  return model, policy, params, optimizer, step, batch, ref


# ---------------------------------------------------------------------------------------------
# Meshes and rules.


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
  assert parallel.MeshShape(2, -1, 2).resolve(8) == (2, 2, 2)
  assert parallel.MeshShape(-1, 1, 1).resolve(8) == (8, 1, 1)
  assert parallel.parse_mesh("data=2,tensor=2").resolve(8) == (2, 2, 2)  # fsdp defaults to -1
  with pytest.raises(ValueError, match="at most one"):
    parallel.MeshShape(-1, -1, 1).resolve(8)
  with pytest.raises(ValueError, match="not a multiple"):
    parallel.MeshShape(3, -1, 1).resolve(8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    parallel.MeshShape(2, 2, 1).resolve(8)
  with pytest.raises(ValueError, match="bad mesh item"):
    parallel.parse_mesh("dp=2")


def test_mesh_from_config_section():
  require_devices()
  mesh = parallel.mesh_from_config(parallel.mesh_config(data=2, fsdp=-1, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(parallel.mesh_from_config(None).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  one = parallel.mesh_from_config("data=1,fsdp=1,tensor=1", devices=jax.devices()[:1])
  assert one.size == 1


def test_logical_to_spec_drops_axes_that_do_not_divide_or_repeat():
  sizes = {"data": 2, "fsdp": 4, "tensor": 4}
  assert parallel.logical_to_spec(("embed", "mlp"), (64, 128), sizes) == P("fsdp", "tensor")
  # Qwen2.5-0.5B-like: 2 kv heads cannot split 4 ways -> replicated dimension.
  assert parallel.logical_to_spec(("embed", "kv_heads", "kv"), (64, 2, 8), sizes) == P("fsdp")
  # Batch over data x fsdp; only the leading part that divides is kept.
  assert parallel.logical_to_spec(("batch",), (16,), sizes) == P(("data", "fsdp"))
  assert parallel.logical_to_spec(("batch",), (2,), sizes) == P("data")
  # The same mesh axis is never used twice in one spec.
  assert parallel.logical_to_spec(("heads", "mlp"), (8, 8), sizes) == P("tensor")
  with pytest.raises(ValueError, match="no rule"):
    parallel.logical_to_spec(("embedd",), (64,), sizes)


def test_logical_axes_come_from_param_metadata_keyed_like_policy_split():
  model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
  _, params = Policy.split(model)
  axes = parallel.logical_axes(model)
  assert list(axes) == list(params)
  assert axes["['embed'].value"] == ("vocab", "embed")
  assert axes["['layers']['attn']['k'].value"] == ("layers", "embed", "kv_heads", "kv")
  assert axes["['layers']['mlp']['down'].value"] == ("layers", "mlp", "embed")
  assert all(len(axes[k]) == v.ndim for k, v in params.items())


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_params_and_adam_state_are_sharded_not_replicated(shape, sft_setup):
  require_devices()
  model, _, params, optimizer, *_ = sft_setup
  mesh = parallel.make_mesh(*shape)
  sharded, opt_state, shardings = parallel.shard_train_state(
      params, optimizer.init(params), mesh, parallel.logical_axes(model))
  data, fsdp, tensor = shape
  # The stacked MLP gate [L=1, D=32, F=64] ('layers', 'embed', 'mlp') -> L whole, D over
  # fsdp, F over tensor.
  gate = sharded["['layers']['mlp']['gate'].value"]
  expected = P(None, "fsdp", "tensor") if tensor > 1 else P(None, "fsdp")
  assert gate.sharding.spec == expected
  shard_shapes = {s.data.shape for s in gate.addressable_shards}
  assert shard_shapes == {(1, 32 // fsdp, 64 // tensor)}
  distinct = {tuple((sl.start, sl.stop) for sl in s.index) for s in gate.addressable_shards}
  assert len(distinct) == fsdp * tensor  # replicated only over `data`
  # The embedding [V=128, D=32] ('vocab', 'embed'): V over tensor x fsdp, D whole.
  embed = sharded["['embed'].value"]
  assert embed.addressable_shards[0].data.shape == (128 // (tensor * fsdp), 32)
  # Every param with a dimension divisible by fsdp really is split: total bytes on device 0
  # are ~1/(fsdp*tensor) of the whole.
  dev0 = sum(s.data.nbytes for x in sharded.values() for s in x.addressable_shards
             if s.device == jax.devices()[0])
  total = sum(x.nbytes for x in sharded.values())
  assert dev0 <= total / (fsdp * tensor) * 1.05
  # Adam's mu/nu follow the params; the step count is replicated.
  adam = adam_state(opt_state)
  assert adam.mu["['layers']['mlp']['gate'].value"].sharding == gate.sharding
  assert adam.nu["['embed'].value"].sharding == embed.sharding
  assert adam.count.sharding.spec == P()
  assert shardings.params["['embed'].value"] == embed.sharding


# ---------------------------------------------------------------------------------------------
# Sharded train step and sampler vs one device.


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_sft_step_matches_single_device(shape, sft_setup):
  require_devices()
  model, _, params, optimizer, step, batch, (ref_params, ref_opt, ref_metrics) = sft_setup
  mesh = parallel.make_mesh(*shape)
  p, o, shardings = parallel.shard_train_state(params, optimizer.init(params), mesh,
                                               parallel.logical_axes(model))
  sharded_step = parallel.shard_step(step, shardings)
  new_p, new_o, metrics = sharded_step(p, o, *parallel.shard_batch(batch, mesh))
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
  for k in ref_params:
    assert new_p[k].sharding == shardings.params[k], k
    # Adam's first step moves each weight by ±lr·g/(|g|+eps): compare at a fraction of lr.
    np.testing.assert_allclose(new_p[k], ref_params[k], atol=2e-5, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(adam_state(new_o).mu[k], adam_state(ref_opt).mu[k], atol=1e-7,
                               rtol=1e-4, err_msg=k)
  assert not np.allclose(ref_params["['embed'].value"], params["['embed'].value"])


def test_shard_step_names_a_batch_that_does_not_split(sft_setup):
  require_devices()
  model, _, params, optimizer, step, batch, _ = sft_setup
  mesh = parallel.make_mesh(2, 2, 2)
  p, o, shardings = parallel.shard_train_state(params, optimizer.init(params), mesh,
                                               parallel.logical_axes(model))
  odd = tuple(np.asarray(x)[:3] for x in batch)
  with pytest.raises(ValueError, match=r"shape \(3, .*data×fsdp = 4 devices"):
    parallel.shard_step(step, shardings)(p, o, *odd)


def test_shard_step_takes_dict_batches_static_args_and_two_models():
  """GRPO/SCoRe/PPO-shaped steps: dict batch with a scalar, a static kwarg, 4 state args."""
  require_devices()
  mesh = parallel.make_mesh(2, 2, 2)
  axes = {"w": ("embed", "mlp"), "b": ("mlp",)}
  rng = np.random.default_rng(4)
  params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), "b": jnp.zeros(4)}
  value_params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), "b": jnp.ones(4)}
  opt = optax.sgd(0.1)

  def loss(p, batch, power):
    y = batch["x"] @ p["w"] + p["b"]
    return batch["scale"] * jnp.mean(jnp.sum(y * batch["t"][:, None], -1) ** power)

  def step(params, opt_state, vparams, vopt_state, batch, *, power):
    g, gv = jax.grad(lambda p, v: loss(p, batch, power) + loss(v, batch, 2), (0, 1))(
        params, vparams)
    u, opt_state = opt.update(g, opt_state)
    uv, vopt_state = opt.update(gv, vopt_state)
    return (optax.apply_updates(params, u), opt_state, optax.apply_updates(vparams, uv),
            vopt_state, {"loss": loss(params, batch, power)})

  batch = {"x": rng.normal(size=(8, 8)).astype(np.float32),
           "t": rng.normal(size=(8,)).astype(np.float32), "scale": np.float32(0.5)}
  ref = step(params, opt.init(params), value_params, opt.init(value_params), batch, power=2)
  p, o, sh = parallel.shard_train_state(params, opt.init(params), mesh, axes)
  v, vo, vsh = parallel.shard_train_state(value_params, opt.init(value_params), mesh, axes)
  sharded = parallel.shard_step(step, (*sh, *vsh), mesh=mesh, static_argnames=("power",))
  out = sharded(p, o, v, vo, parallel.shard_batch(batch, mesh), power=2)
  assert out[0]["w"].sharding.spec == P("fsdp", "tensor")
  assert out[2]["b"].sharding.spec == P("tensor")
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(TypeError, match="static_argnames"):
    sharded(p, o, v, vo, batch, exponent=2)


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_greedy_sampling_matches_single_device(shape):
  require_devices()
  model = Transformer(tiny_config(), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  prompts = rng.integers(1, 128, (8, 6)).astype(np.int32)
  mask = np.ones_like(prompts)
  mask[:3, :2] = 0  # left padding
  kwargs = dict(max_new_tokens=8, eos_ids=(5,))
  ref = sampler.generate_arrays(model, prompts, mask, jax.random.key(0), **kwargs)
  mesh = parallel.make_mesh(*shape)
  out = parallel.sharded_generate_arrays(model, prompts, mask, jax.random.key(0), mesh=mesh,
                                         **kwargs)
  np.testing.assert_array_equal(out.tokens_BxN, ref.tokens_BxN)
  np.testing.assert_array_equal(out.valid_BxN, ref.valid_BxN)
  np.testing.assert_allclose(out.logprobs_BxN, ref.logprobs_BxN, atol=1e-5)
  assert out.tokens_BxN.sharding.spec == parallel.batch_sharding(mesh).spec
  rows = {s.index[0].indices(8) for s in out.tokens_BxN.addressable_shards}
  assert len(rows) == shape[0] * shape[1]  # batch split over data x fsdp


def test_kv_cache_shardings_split_batch_and_kv_heads():
  require_devices()
  model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
  mesh = parallel.make_mesh(2, 2, 2)
  cache = model.init_cache(4, 16)
  shardings = parallel.kv_cache_shardings(cache, mesh)
  assert shardings["k"].spec == P(None, ("data", "fsdp"), "tensor")  # [L, B, K, S, H]
  placed = jax.device_put(cache, shardings)
  assert placed["v"].addressable_shards[0].data.shape == (1, 1, 1, 16, 8)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation and remat.


def _nll_fn(policy):
  def loss_fn(params, tokens_BxL):
    from score.models import token_logprobs  # pylint: disable=g-import-not-at-top
    logp = token_logprobs(policy.model(params), tokens_BxL)
    return -jnp.mean(logp[:, 1:]), {"first": logp[:, 1].mean()}
  return loss_fn


def test_accumulated_gradients_equal_full_batch_on_a_mesh():
  require_devices()
  model = Transformer(tiny_config(), rngs=nnx.Rngs(2))
  policy, params = Policy.split(model)
  tokens = np.random.default_rng(2).integers(1, 128, (16, 8)).astype(np.int32)
  loss_fn = _nll_fn(policy)
  (ref_loss, ref_aux), ref_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, tokens)
  mesh = parallel.make_mesh(2, 2, 2)
  sharded = parallel.shard_params(params, mesh, parallel.logical_axes(model))
  acc = parallel.accumulate_gradients(loss_fn, 2, has_aux=True, mesh=mesh)
  (loss, aux), grads = jax.jit(acc)(sharded, parallel.shard_batch(tokens, mesh))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(aux["first"], ref_aux["first"], rtol=1e-5)
  for k in ref_grads:
    np.testing.assert_allclose(grads[k], ref_grads[k], atol=1e-6, rtol=1e-4, err_msg=k)


def test_split_micro_batches_is_strided():
  x = np.arange(8)
  np.testing.assert_array_equal(parallel.split_micro_batches(x, 2),
                                [[0, 2, 4, 6], [1, 3, 5, 7]])
  with pytest.raises(ValueError, match="micro-batches"):
    parallel.split_micro_batches(x, 3)
  # Groups of consecutive rows (e.g. the samples of one prompt) stay whole; the stride is over
  # groups.
  np.testing.assert_array_equal(parallel.split_micro_batches(np.arange(12), 2, group_size=3),
                                [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]])
  np.testing.assert_array_equal(parallel.split_micro_batches(x, 2, group_size=2),
                                [[0, 1, 4, 5], [2, 3, 6, 7]])
  with pytest.raises(ValueError, match="whole groups of 3 rows"):
    parallel.split_micro_batches(np.arange(12), 3, group_size=3)


def test_multisteps_accumulation_applies_every_k_calls():
  opt = parallel.with_accumulation(optax.sgd(1.0), 2)
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  updates, state = opt.update({"w": jnp.full(2, 1.0)}, state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  updates, state = opt.update({"w": jnp.full(2, 3.0)}, state, params)
  np.testing.assert_allclose(updates["w"], -2.0)  # -lr * mean of the two gradients
  sgd = optax.sgd(1.0)
  assert parallel.with_accumulation(sgd, 1) is sgd


def test_remat_from_config_keeps_gradients():
  config = tiny_config()
  assert parallel.apply_remat(config, "block").remat == "block"
  assert parallel.apply_remat(config, "none").remat == "none"
  with pytest.raises(ValueError, match="remat"):
    parallel.apply_remat(config, "full")
  tokens = np.random.default_rng(3).integers(1, 128, (2, 8)).astype(np.int32)
  grads = []
  for mode in ("none", "block", "dots"):
    model = parallel.set_remat(Transformer(config, rngs=nnx.Rngs(3)), mode)
    policy, params = Policy.split(model)
    grads.append(jax.jit(jax.grad(lambda p: _nll_fn(policy)(p, tokens)[0]))(params))
  for k in grads[0]:
    for g in grads[1:]:
      np.testing.assert_allclose(g[k], grads[0][k], atol=1e-6, rtol=1e-5, err_msg=k)


# ---------------------------------------------------------------------------------------------
# Checkpoints, multi-host helpers, memory plan.


def test_sharded_checkpoint_restores_onto_another_mesh(tmp_path, sft_setup):
  require_devices()
  model, _, params, optimizer, *_ = sft_setup
  axes = parallel.logical_axes(model)
  mesh = parallel.make_mesh(2, 2, 2)
  p, o, _ = parallel.shard_train_state(params, optimizer.init(params), mesh, axes)
  ckpt = parallel.ShardedCheckpointer(str(tmp_path / "ckpt"))
  assert ckpt.save(3, {"params": p, "opt_state": o}, {"data_position": 7}, force=True)
  ckpt.close()
  other = parallel.make_mesh(1, 8, 1)
  p2, o2, shardings = parallel.shard_train_state(
      jax.tree.map(jnp.zeros_like, params), optimizer.init(params), other, axes)
  template = parallel.abstract_like({"params": p2, "opt_state": o2})
  step, restored, extra = parallel.ShardedCheckpointer(str(tmp_path / "ckpt")).restore(template)
  assert step == 3 and extra == {"data_position": 7}
  for k in params:
    assert restored["params"][k].sharding == shardings.params[k]
    np.testing.assert_array_equal(restored["params"][k], params[k])


@pytest.mark.slow  # old (per-layer) checkpoints; fast: test_parallel's stacked restores
def test_checkpoint_written_per_layer_restores_stacked_onto_a_mesh(tmp_path):
  """A checkpoint written before the blocks were stacked (params and Adam's mu/nu keyed per
  layer) restores into the stacked template: each layer's arrays in its slot of the layer
  axis, with the template's shardings."""
  require_devices()
  model = Transformer(tiny_config(num_layers=3), rngs=nnx.Rngs(0))
  _, params = Policy.split(model)
  rng = np.random.default_rng(0)
  params = {k: v + rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  opt_state = jax.tree.map(lambda x: x + 2.0 if x.ndim else x, opt_state)
  old_params = per_layer_layout(params)
  assert "['layers'][2]['attn']['q'].value" in old_params
  adam = adam_state(opt_state)
  old_adam = adam._replace(mu=per_layer_layout(adam.mu), nu=per_layer_layout(adam.nu))
  ckpt = parallel.ShardedCheckpointer(str(tmp_path / "ckpt"))
  assert ckpt.save(5, {"params": old_params, "opt_state": (old_adam, optax.EmptyState())},
                   {"data_position": 9}, force=True)
  ckpt.close()
  mesh = parallel.make_mesh(1, 4, 2)
  p, o, shardings = parallel.shard_train_state(
      jax.tree.map(jnp.zeros_like, params), optimizer.init(params), mesh,
      parallel.logical_axes(model))
  template = parallel.abstract_like({"params": p, "opt_state": o})
  step, restored, extra = parallel.ShardedCheckpointer(str(tmp_path / "ckpt")).restore(template)
  assert step == 5 and extra == {"data_position": 9}
  assert set(restored["params"]) == set(params)
  for k in params:
    assert restored["params"][k].sharding == shardings.params[k], k
    np.testing.assert_array_equal(restored["params"][k], params[k], err_msg=k)
    np.testing.assert_array_equal(adam_state(restored["opt_state"]).mu[k],
                                  adam_state(opt_state).mu[k], err_msg=k)
  assert int(adam_state(restored["opt_state"]).count) == int(adam_state(opt_state).count)


def test_process_helpers_on_one_process(monkeypatch):
  assert parallel.process_batch_slice(8) == slice(0, 8)
  assert parallel.process_batch_slice(8, process_index=1, process_count=2) == slice(4, 8)
  with pytest.raises(ValueError, match="processes"):
    parallel.process_batch_slice(7, process_index=0, process_count=2)
  assert parallel.is_main_process()
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
              "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed(None) is False  # one process: nothing to start
  assert parallel.initialize_distributed(parallel.distributed_config()) is False
  from score.parallel import distributed  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  assert distributed._resolved(None) == dict(  # pylint: disable=protected-access
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
  cfg = parallel.distributed_config(coordinator_address="h:1", num_processes=2, process_id=0)
  assert distributed._resolved(cfg) == dict(  # pylint: disable=protected-access
      coordinator_address="h:1", num_processes=2, process_id=0)


def test_plan_bytes_match_shard_shapes_and_compiled_arguments():
  require_devices()
  config = tiny_config(qkv_bias=False)  # every param then has a D (=32) dimension
  params, _ = plan_lib.abstract_params(config)
  total = sum(math.prod(x.shape) * 4 for x in params.values())
  one = plan_lib.plan(config, "data=1,fsdp=1,tensor=1", batch=8, seq=16)
  assert one.params == total and one.optimizer == 2 * total and one.devices == 1
  # Every dimension here divides 8 -> exactly 1/8 per device on fsdp=8.
  fsdp = plan_lib.plan(config, "data=1,fsdp=8,tensor=1", batch=8, seq=16, compile=True)
  assert fsdp.params * 8 == total
  assert fsdp.kv_cache * 8 == one.kv_cache  # batch split 8 ways
  assert fsdp.activations < one.activations
  # The compiled step's per-device arguments: params + Adam mu, nu + the token shard + count.
  tokens_per_device = 8 * 16 * 4 // 8
  assert fsdp.compiled["argument"] == fsdp.params + fsdp.optimizer + tokens_per_device + 4
  assert fsdp.compiled["temp"] > 0
  table = plan_lib.format_table([one, fsdp])
  assert table.count("\n") == 3 and "1,8,1 (8)" in table


def test_plan_score_update_reference_and_decode_compile(capsys):
  """`--trainer score --json`: the SCoRe update's compiled arguments are exactly the params,
  Adam's state and the batch the trainer feeds it; the reference and decode step have their
  own keys; the estimate counts the reference copy; `--num_layers` changes the depth."""
  require_devices()
  args = ["--config", os.path.join(ROOT, "configs", "score_synthetic.py") + ":runlocal",
          "--mesh", "data=1,fsdp=1,tensor=1", "--batch", "4", "--seq", "16",
          "--trainer", "score", "--json"]
  three, = plan_lib.main(args + ["--num_layers", "3"])
  row, = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  two, = plan_lib.main(args + ["--num_layers", "2", "--no-compile"])
  assert row["num_params"] == three.num_params > two.num_params
  # tokens, mask, turn_mask (int32), ref_logp (fp32): B × L × 4 bytes each; r1, r2: B × 4.
  batch_bytes = 4 * (4 * 16 * 4) + 2 * 4 * 4
  assert row["argument"] == three.params + three.optimizer + batch_bytes + 4  # + Adam's count
  assert row["compile_s"] > 0 and row["temp"] > 0
  for key in ("reference", "decode"):
    assert row[key]["compile_s"] > 0 and row[key]["argument"] > three.params
  assert row["estimate"]["reference"] == three.params == row["estimate"]["params"]
  assert row["estimate"]["train_total"] == (three.params * 2 + three.grads + three.optimizer
                                            + three.activations)


def test_plan_lora_trains_adapters_only_on_a_shared_bf16_base():
  """LoRA: the compiled update's arguments are every param (a bf16 base, fp32 adapters) plus
  Adam's state of the adapters alone; gradients and Adam are adapter-sized; no reference copy."""
  require_devices()
  config = tiny_config(qkv_bias=False, num_layers=1).replace(
      lora_rank=2, param_dtype=jnp.bfloat16)
  p = plan_lib.plan(config, "data=1,fsdp=1,tensor=1", batch=4, seq=16, compile=True,
                    trainer="score")
  params, _ = plan_lib.abstract_params(config)
  adapters = {k: x for k, x in params.items() if "_lora_" in k}
  assert adapters and all(x.dtype == jnp.float32 for x in adapters.values())
  base = {k: x for k, x in params.items() if k not in adapters}
  assert any(x.dtype == jnp.bfloat16 for x in base.values())
  nbytes = lambda d: sum(math.prod(x.shape) * x.dtype.itemsize for x in d.values())  # noqa: E731
  adapter_elems = sum(math.prod(x.shape) for x in adapters.values())
  assert p.params == nbytes(params) and p.grads == nbytes(adapters)
  assert p.optimizer == 2 * 4 * adapter_elems and p.reference == 0 and p.lora_rank == 2
  batch_bytes = 4 * (4 * 16 * 4) + 2 * 4 * 4
  assert p.compiled["argument"] == p.params + p.optimizer + batch_bytes + 4


def test_plan_accelerator_dots_hold_no_per_layer_fp32_weight_copies():
  """XLA:CPU computes bf16 dots in fp32 and hoists the converts of every layer's weights out of
  the layer scan, so a bf16 decode step's compiled temp grows with depth (`--dots cpu`, the
  default: an upper bound); `--dots accelerator` compiles the mixed-precision dots without that
  hoisting, and the decode step's temp no longer depends on the number of layers."""
  require_devices()
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  temps = {}
  for layers in (2, 4):
    config = tiny_config(qkv_bias=False, num_layers=layers).replace(
        lora_rank=2, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    rebuild, params, _ = plan_lib._abstract_model(config, mesh)  # pylint: disable=protected-access
    for dots in plan_lib.DOTS:
      def decode(options):
        return plan_lib._compiled_decode(rebuild, params, config, mesh, 4, 16, options)  # pylint: disable=protected-access
      if dots == "cpu":
        temps[dots, layers] = decode(None)["temp"]
      else:
        with attention_lib.accelerator_dots():
          temps[dots, layers] = decode(plan_lib._ACCELERATOR_OPTIONS)["temp"]  # pylint: disable=protected-access
  assert temps["cpu", 4] > temps["cpu", 2] > temps["accelerator", 2]
  assert temps["accelerator", 4] == temps["accelerator", 2]
  p = plan_lib.plan(config, "data=1,fsdp=1,tensor=1", batch=4, seq=16, dots="accelerator")
  assert p.to_json()["dots"] == "accelerator"
  with pytest.raises(ValueError, match="dots="):
    plan_lib.compiled_memory(config, mesh, 4, 16, dots="gpu")


def test_plan_cli_presets_without_compiling(capsys):
  plans = plan_lib.main(["--preset", "qwen2.5-0.5b", "--mesh", "data=1,fsdp=8,tensor=1",
                         "--mesh", "fsdp=64", "--devices", "64", "--batch", "64", "--seq",
                         "512", "--no-compile"])
  out = capsys.readouterr().out
  assert "qwen2.5-0.5b" in out and "1,64,1 (64)" in out
  p8, p64 = plans
  assert 0.45e9 < p8.num_params < 0.55e9  # Qwen2.5-0.5B: 494M parameters
  assert p8.params == pytest.approx(p8.num_params * 4 / 8, rel=0.01)
  assert p64.params == pytest.approx(p8.params / 8, rel=0.02)
  assert p64.optimizer == 2 * p64.params
