"""Every trainer takes its mesh from config.

GRPO, PPO (policy and value model), the reward model and DPO run on a (data=2, fsdp=2,
tensor=1) mesh of the 8 virtual CPU devices (tests/conftest.py): they give the params of the
same run on one device, and their params really are split over the mesh. `train(config)` of
SFT, GRPO, PPO and the reward model hands `config.mesh` to the sharding (the full runlocal
runs on a mesh are `slow`). Self-Rewarding is covered through DPO and SFT (SFT on a mesh:
tests/test_parallel.py, tests/test_score_trainer.py): its loop only forwards `config.mesh` to
`train_sft` and `train_dpo`. Also: a sharded train state survives a checkpoint round trip
through `common.train_loop` with its shardings. The RL trainers sample their rollouts on the
mesh (`generate`/`rollout` with `mesh=`: the batch split over data×fsdp), with the greedy
tokens of one device. `mesh.micro_batches` (gradient accumulation in `common.make_step`, the
SFT step, PPO's update; SCoRe's groups kept whole) and `mesh.remat` give the params of the
plain full-batch run; bad values and batches that do not split stop with a clear error.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from configs import grpo_synthetic
from configs import reward_model_synthetic
from configs import rlvr_math
from configs import score_synthetic
from configs import sft_synthetic
from score import parallel
from score.models import ModelConfig, Transformer
from score.parallel import sampling as parallel_sampling
from score.sampling import rollouts
from score.sampling import sampler
from score.trainers import common
from score.trainers import dpo
from score.trainers import grpo
from score.trainers import ppo
from score.trainers import reward_model as rm_lib
from score.trainers import sft
from test_grpo import ToyEnv, rl_cfg, reward_cfg, tiny_policy
from test_ppo import value_model

MESH = dict(data=2, fsdp=2, tensor=1)


@pytest.fixture(autouse=True)
def _eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")


def mesh_cfg(**sizes):
  return parallel.mesh_config(**{**MESH, **sizes})


def assert_on_mesh(params, sizes=MESH):
  """Every param lives on the mesh `sizes`, and some are split (a shard < the array)."""
  split = []
  for k, v in params.items():
    assert isinstance(v.sharding, NamedSharding), (k, v.sharding)
    assert dict(v.sharding.mesh.shape) == sizes, k
    if v.addressable_shards[0].data.shape != v.shape:
      split.append(k)
  assert split, "no parameter is split over the mesh"
  return split


@pytest.fixture
def sharded_sampling(monkeypatch):
  """The batch size of every `score.parallel.sampling.sharded_generate_arrays` call."""
  seen = []
  fn = parallel_sampling.sharded_generate_arrays

  def recording(model, prompt_BxP, *args, **kwargs):
    seen.append(np.shape(prompt_BxP)[0])
    return fn(model, prompt_BxP, *args, **kwargs)

  monkeypatch.setattr(parallel_sampling, "sharded_generate_arrays", recording)
  return seen


@pytest.fixture
def references(monkeypatch):
  """The frozen reference params each trainer put on its mesh (`common.shard_like`), checked
  to carry the policy's shardings."""
  seen = []
  shard_like = common.shard_like

  def recording(params, like):
    out = shard_like(params, like)
    seen.append(out)
    for k, v in like.items():
      assert out[k].sharding == v.sharding, k
    return out

  monkeypatch.setattr(common, "shard_like", recording)
  return seen


def assert_params_close(one, sharded, init, rtol=2e-2, skip=()):
  """Per array, `‖sharded − one‖ ≤ rtol · ‖one − init‖` (and the run moved the params).

  The measure is the training update, not the params: Adam divides each coordinate by its
  own gradient scale, so a float-rounding difference (the sharded step sums its gradient in
  another order, ~1e-8) in a coordinate whose gradient is itself tiny becomes a visible
  fraction of a step there. A wrong batch, reference or update gives a difference of the
  order of the update itself.
  """
  assert one.keys() == sharded.keys() == init.keys()
  moved = 0.0
  for k in one:
    if k in skip:
      continue
    x, y, x0 = (np.asarray(a[k], np.float64) for a in (one, sharded, init))
    update, diff = np.linalg.norm(x - x0), np.linalg.norm(y - x)
    assert diff <= rtol * update + 1e-6, f"{k}: |sharded - one| = {diff:.3g}, update {update:.3g}"
    moved = max(moved, update)
  assert moved > 1e-3, "the run did not train"


# ---------------------------------------------------------------------------------------------
# One device vs the mesh, trainer by trainer.


@pytest.mark.slow  # fast representative: test_dpo_on_a_mesh_matches_one_device
def test_grpo_on_a_mesh_matches_one_device(tmp_path, references, sharded_sampling):
  """β > 0 and the KL in the loss: the frozen reference is used and sharded like the policy.
  The rollouts are sampled on the mesh (one sharded sampler call per step)."""
  policy, params = tiny_policy()
  env = ToyEnv(target=5)
  rl = rl_cfg(steps=2, prompts_per_step=4, samples_per_prompt=4, num_minibatches=2,
              beta=0.04, kl_placement="loss", lr=1e-2)
  one = grpo.train_grpo(policy, params, params, env, rl, reward_cfg(),
                        workdir=str(tmp_path / "one"))
  assert not sharded_sampling
  sharded = grpo.train_grpo(policy, params, params, env, rl, reward_cfg(),
                            workdir=str(tmp_path / "mesh"), mesh_cfg=mesh_cfg())
  assert sharded_sampling == [16, 16]
  assert_on_mesh(sharded)
  assert_on_mesh(references[-1])
  assert_params_close(one, sharded, params)


@pytest.mark.slow  # fast representative: test_dpo_on_a_mesh_matches_one_device
def test_ppo_on_a_mesh_matches_one_device(tmp_path, references, sharded_sampling):
  """Policy and value model both sharded; KL to the (sharded) reference in the reward."""
  policy, params = tiny_policy(seed=1)
  env = ToyEnv(target=6)
  value_def, vparams = value_model(params)
  rl = rlvr_math.ppo_rl(steps=2, prompts_per_step=8, samples_per_prompt=2, lr=1e-2,
                        value_lr=1e-2, beta=0.05, num_epochs=1, num_minibatches=2,
                        checkpoint_every=100)
  reward = grpo_synthetic.reward_config(verifiable=1.0)
  one, one_v = ppo.train_ppo(policy, params, params, value_def, vparams, env, rl, reward,
                             workdir=str(tmp_path / "one"))
  assert not sharded_sampling
  sharded, sharded_v = ppo.train_ppo(policy, params, params, value_def, vparams, env, rl,
                                     reward, workdir=str(tmp_path / "mesh"),
                                     mesh_cfg=mesh_cfg())
  assert len(sharded_sampling) == rl.steps  # one sharded rollout per step
  assert_on_mesh(sharded)
  assert_on_mesh(sharded_v)
  assert_on_mesh(references[-1])
  assert_params_close(one, sharded, params)
  assert_params_close(one_v, sharded_v, vparams)


def _rm_model():
  config = ModelConfig.tiny(vocab_size=16, hidden_size=16, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, intermediate_size=32)
  return common.Policy.split(
      rm_lib.ScalarModel(Transformer(config, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1)))


def _rm_batches(step):
  rng = np.random.default_rng(step)
  tokens = rng.integers(3, 13, size=(8, 3, 5)).astype(np.int32)
  ranks = (tokens[:, :, -1] % 2).astype(np.int32)  # even last token -> rank 0 (better)
  return tokens, np.ones_like(tokens), ranks


@pytest.mark.slow  # fast: test_parallel's sharded restore
def test_reward_model_on_a_mesh_matches_one_device_and_resumes_sharded(tmp_path):
  model_def, params = _rm_model()
  cfg = ml_collections.ConfigDict(dict(steps=3, lr=1e-2, checkpoint_every=1, log_every=1))
  one = rm_lib.train_reward_model(model_def, params, _rm_batches, cfg,
                                  workdir=str(tmp_path / "one"))
  sharded = rm_lib.train_reward_model(model_def, params, _rm_batches, cfg,
                                      workdir=str(tmp_path / "mesh"), mesh_cfg=mesh_cfg(fsdp=4,
                                                                                       data=1))
  assert_on_mesh(sharded, dict(MESH, data=1, fsdp=4))
  # The Bradley–Terry loss only sees reward differences: the head's bias has gradient 0 up to
  # rounding, which Adam turns into steps of noise (different in every summation order).
  assert_params_close(one, sharded, params, skip=("['head']['bias'].value",))
  # A restart finds the finished run's last checkpoint: the params come back from disk with
  # the shardings of the (freshly sharded) template, not gathered onto one device.
  restored = rm_lib.train_reward_model(model_def, params, _rm_batches, cfg,
                                       workdir=str(tmp_path / "mesh"),
                                       mesh_cfg=mesh_cfg(fsdp=4, data=1))
  for k, v in sharded.items():
    assert restored[k].sharding == v.sharding, k
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(v), err_msg=k)


def _dpo_pairs(n=16, seed=0):
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(n):
    prompt = [1] + rng.integers(3, 8, size=2).tolist()
    chosen = rng.integers(3, 8, size=int(rng.integers(1, 4))).tolist() + [2]
    rejected = rng.integers(3, 8, size=int(rng.integers(1, 4))).tolist() + [2]
    pairs.append((prompt + chosen, [0] * len(prompt) + [1] * len(chosen),
                  prompt + rejected, [0] * len(prompt) + [1] * len(rejected)))
  return pairs


def test_dpo_on_a_mesh_matches_one_device(tmp_path, references):
  """The reference (here the initial policy) is sharded like the policy; its sequence
  log-probs, and so the summary's reward accuracy, match one device's."""
  policy, params = tiny_policy()
  cfg = ml_collections.ConfigDict(dict(beta=0.1, label_smoothing=0.0, batch_size=8, steps=3,
                                       epochs=1.0, lr=1e-2, checkpoint_every=100,
                                       log_every=1))
  pairs = _dpo_pairs()
  one, one_summary = dpo.train_dpo(policy, params, params, pairs, cfg,
                                   workdir=str(tmp_path / "one"), name="dpo", seed=0)
  sharded, sharded_summary = dpo.train_dpo(policy, params, params, pairs, cfg,
                                           workdir=str(tmp_path / "mesh"), name="dpo", seed=0,
                                           mesh_cfg=mesh_cfg())
  assert_on_mesh(sharded)
  assert_on_mesh(references[-1])
  assert_params_close(one, sharded, params)
  np.testing.assert_allclose(sharded_summary["final_loss"], one_summary["final_loss"],
                             rtol=1e-4)
  assert sharded_summary["reward_accuracy"] == one_summary["reward_accuracy"]


# ---------------------------------------------------------------------------------------------
# Sampling on the mesh.


def _sharded_model(model):
  """`model` with its params on a (2, 2, 1) mesh (as `common.shard` puts a trainer's)."""
  policy, params = common.Policy.split(model)
  mesh = common.mesh_from_config(mesh_cfg())
  sharded = parallel.shard_params(params, mesh, parallel.logical_axes(model))
  assert common.mesh_of(params) is None and common.mesh_of(sharded) is mesh
  return policy.model(sharded), mesh


def _sampling_model():
  config = ModelConfig.tiny(vocab_size=32, hidden_size=32, num_layers=1, num_heads=4,
                            num_kv_heads=2, head_dim=8, intermediate_size=64)
  return Transformer(config, rngs=nnx.Rngs(3))


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 32, size=int(rng.integers(1, 6))).tolist() for _ in range(n)]


@pytest.mark.parametrize("bucket", [True, False])
def test_generate_on_a_mesh_gives_the_greedy_tokens_of_one_device(bucket, sharded_sampling):
  """6 prompts (not a multiple of data×fsdp = 4): bucketed to 8 rows, or padded with filler
  rows to 8 without bucketing; sampled by the sharded sampler, same tokens as one device."""
  model = _sampling_model()
  sharded_model, mesh = _sharded_model(model)
  prompts = _prompts(6)
  kwargs = dict(max_new_tokens=[6, 3, 6, 5, 6, 1], temperature=0.0, eos_ids=(7,),
                bucket=bucket)
  one = sampler.generate(model, prompts, **kwargs)
  assert not sharded_sampling
  out = sampler.generate(sharded_model, prompts, mesh=mesh, **kwargs)
  assert sharded_sampling == [8]
  assert out.tokens == one.tokens and out.finish_reason == one.finish_reason
  for a, b in zip(out.logprobs, one.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow  # fast: test_generate_on_a_mesh_gives_the_greedy_tokens_of_one_device
@pytest.mark.parametrize("instruction", [[5, 6], lambda turn, context, response: [5, 6]])
def test_rollout_on_a_mesh_gives_the_greedy_episodes_of_one_device(sharded_sampling,
                                                                   instruction):
  """Two turns, 3 prompts × G=2: each turn is one sharded sampler call (6 rows → 8). Fixed
  ids dispatch both turns at once (`generate_turns`); a callable goes turn by turn through
  `generate` and its continuation."""
  model = _sampling_model()
  sharded_model, mesh = _sharded_model(model)
  kwargs = dict(num_turns=2, max_new_tokens=4, instruction=instruction, samples_per_prompt=2,
                temperature=0.0, eos_ids=(7,), max_len=24, seed=1)
  one = rollouts.rollout(model, _prompts(3, seed=1), **kwargs)
  out = rollouts.rollout(sharded_model, _prompts(3, seed=1), mesh=mesh, **kwargs)
  assert sharded_sampling == [8, 8]
  assert out.responses == one.responses
  np.testing.assert_array_equal(out.tokens_BxL, one.tokens_BxL)
  np.testing.assert_array_equal(out.turn_mask_BxL, one.turn_mask_BxL)
  np.testing.assert_allclose(out.logprobs_BxL, one.logprobs_BxL, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoints of sharded state through the training loop.


@pytest.mark.slow  # fast: test_parallel's sharded restore
def test_train_loop_restores_sharded_state_with_the_templates_shardings(tmp_path):
  """Save a sharded (params, Adam state) through `train_loop`, restart: every restored array
  has its template's sharding (not device 0's) and the saved values; numpy stays numpy."""
  policy, params = tiny_policy()
  optimizer = common.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-2)), 10)
  axes = parallel.logical_axes(policy.model(params))

  def on_mesh(**sizes):
    mesh = common.mesh_from_config(mesh_cfg(**sizes))
    params_, opt_state_, _ = parallel.shard_train_state(params, optimizer.init(params), mesh,
                                                        axes)
    return params_, opt_state_

  sharded, opt_state = on_mesh()
  assert_on_mesh(sharded)

  def update(step, state):
    del step
    grads = jax.tree.map(jnp.ones_like, state["params"])
    updates, opt = optimizer.update(grads, state["opt_state"], state["params"])
    return {"params": jax.tree.map(jnp.add, state["params"], updates), "opt_state": opt,
            "host": state["host"] + 1}, {"loss": 0.0}

  template = {"params": sharded, "opt_state": opt_state, "host": np.zeros(3, np.float32)}
  saved = common.train_loop(workdir=str(tmp_path), name="p", state=template, update=update,
                            num_steps=2, checkpoint_every=1)
  restored = common.train_loop(workdir=str(tmp_path), name="p", state=template,
                               update=update, num_steps=2, checkpoint_every=1)
  leaves_t = jax.tree_util.tree_leaves_with_path(template)
  leaves_s = jax.tree.leaves(saved)
  leaves_r = jax.tree.leaves(restored)
  assert len(leaves_t) == len(leaves_r) == len(leaves_s)
  for (path, t), s, r in zip(leaves_t, leaves_s, leaves_r):
    name = jax.tree_util.keystr(path)
    if isinstance(t, jax.Array):
      assert isinstance(r, jax.Array) and r.sharding == t.sharding, (name, r)
    else:
      assert isinstance(r, np.ndarray), name
    np.testing.assert_array_equal(np.asarray(r), np.asarray(s), err_msg=name)
  assert restored["host"][0] == 2

  # Resuming onto another mesh: the template's shardings win.
  other, other_opt = on_mesh(data=1, fsdp=8)
  moved = common.train_loop(workdir=str(tmp_path), name="p",
                            state=dict(template, params=other, opt_state=other_opt),
                            update=update, num_steps=2, checkpoint_every=1)
  for k, v in other.items():
    assert moved["params"][k].sharding == v.sharding, k
    np.testing.assert_array_equal(np.asarray(moved["params"][k]),
                                  np.asarray(saved["params"][k]), err_msg=k)


# ---------------------------------------------------------------------------------------------
# The launcher path: `train(config)` shards over `config.mesh`.


class _Sharded(Exception):
  """Stops a run at its first `common.mesh_from_config` call (after which the trainer's own
  code is what the tests above check)."""


def _stop_at_first_mesh(monkeypatch):
  seen = []

  def record(mesh_cfg):
    seen.append(mesh_cfg)
    raise _Sharded()

  monkeypatch.setattr(common, "mesh_from_config", record)
  return seen


@pytest.mark.parametrize("module,trainer,rl", [
    (sft_synthetic, sft, False), (grpo_synthetic, grpo, True), (rlvr_math, ppo, True),
    (reward_model_synthetic, rm_lib, False)])
def test_train_hands_config_mesh_to_the_trainer(module, trainer, rl, tmp_path, monkeypatch):
  """SFT, GRPO and PPO (without their SFT warm-up, so the first phase is the RL one), the
  reward model."""
  config = module.get_config("runlocal")
  config.mesh.update(MESH)
  if rl:
    config.warmup.steps = 0
  monkeypatch.setattr(grpo, "evaluate", lambda *a, **k: {})  # GRPO/PPO's base-model eval
  seen = _stop_at_first_mesh(monkeypatch)
  with pytest.raises(_Sharded):
    trainer.train(config, str(tmp_path))
  assert seen == [config.mesh]


def _record_train_states(monkeypatch):
  """Records the `state` every `common.train_loop` call starts from."""
  seen = []
  loop = common.train_loop

  def recording(**kwargs):
    seen.append((kwargs["name"], kwargs["state"]))
    return loop(**kwargs)

  monkeypatch.setattr(common, "train_loop", recording)
  return seen


@pytest.mark.slow
@pytest.mark.parametrize("module,trainer,phases", [
    (grpo_synthetic, grpo, ["warmup", "grpo"]),
    (rlvr_math, ppo, ["warmup", "ppo"]),
    (reward_model_synthetic, rm_lib, ["rm"]),
])
def test_runlocal_configs_run_on_a_mesh(module, trainer, phases, tmp_path, monkeypatch):
  """The runlocal configs end to end with `config.mesh` set: every phase (the SFT warm-up,
  the RL phase, PPO's value model, the reward model) starts from params on the mesh."""
  seen = _record_train_states(monkeypatch)
  config = module.get_config("runlocal")
  config.mesh.update(MESH)
  trainer.train(config, str(tmp_path))
  assert [name for name, _ in seen] == phases
  for _, state in seen:
    for key in ("params", "value_params"):
      if key in state:
        assert_on_mesh(state[key])
  with open(tmp_path / "results.json", encoding="utf-8") as f:
    assert json.load(f)["results"]


@pytest.mark.slow  # fast: test_score_micro_batches_on_a_mesh_keep_groups_whole
def test_score_on_a_mesh_matches_one_device(tmp_path, references, sharded_sampling,
                                            monkeypatch):
  """SCoRe Stage I + Stage II (β1, β2 > 0: the reference is used, sharded like the policy);
  both attempts of every step's episodes are sampled on the mesh. In both runs, between the
  rewards and the update, the reference log-probs stay on the device(s): never brought to the
  host, and on the mesh a sharded array (one test, so the two SCoRe runs are compiled once)."""
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  from test_score_trainer import _runlocal_config  # pylint: disable=g-import-not-at-top
  # One layer (runlocal has 2): the blocks are a Python loop, so each one is compiled again;
  # the sharding of a block's params and activations is the same in every block.
  c = _runlocal_config(**{"rl.stage1_steps": 1, "rl.stage2_steps": 1, "rl.lr": 1e-2,
                          "model.num_layers": 1})
  env = envs.make_env(c)
  # A fresh model never answers right: with all-zero rewards the gradient would be rounding
  # noise, which Adam's first step blows up to ±lr. Reward the parity of the response instead.
  monkeypatch.setattr(env, "rewards", lambda problems, responses: [
      float(sum(r) % 2) for r in responses])
  policy, params = common.Policy.split(
      common.build_model(c.model, env.tokenizer.vocab_size, seed=0))

  def no_host(tree):
    raise AssertionError("brought to the host")

  monkeypatch.setattr(common, "to_host", no_host)
  seen = []  # the reference log-probs of every step
  real = common.logprobs_fn

  def spy(policy_):
    fn = real(policy_)
    return lambda *a: seen.append(fn(*a)) or seen[-1]

  monkeypatch.setattr(common, "logprobs_fn", spy)
  one = score_lib.train_score(policy, params, params, env, c.rl, workdir=str(tmp_path / "one"))
  assert not sharded_sampling
  assert len(seen) == 2 and all(isinstance(x, jax.Array) for x in seen)  # Stage I, Stage II
  assert not any(isinstance(x.sharding, NamedSharding) for x in seen)
  seen.clear()
  sharded = score_lib.train_score(policy, params, params, env, c.rl,
                                  workdir=str(tmp_path / "mesh"), mesh_cfg=mesh_cfg())
  assert len(seen) == 2 and all(isinstance(x, jax.Array) for x in seen)
  assert all(isinstance(x.sharding, NamedSharding) for x in seen)
  assert len(sharded_sampling) == 4  # 2 stages × 1 step × 2 turns
  assert_on_mesh(sharded)
  assert_on_mesh(references[-1])
  assert_params_close(one, sharded, params)


# ---------------------------------------------------------------------------------------------
# `mesh.micro_batches` (gradient accumulation) and `mesh.remat`.


def _toy_runs(micro_batches, *, group_size=1, grouped=False, steps=3):
  """`steps` Adam steps of `common.make_step` on a toy regression whose loss is a mean over
  rows; with `grouped`, of each row's error minus its group's mean error (groups of 2
  consecutive rows: a per-group statistic like SCoRe's baseline). A static keyword argument
  (`scale`, like SCoRe's `stage`) is bound before the accumulation. Returns
  `(params, [metrics])`."""
  rng = np.random.default_rng(0)
  x_BxD = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  y_B = jnp.asarray(rng.normal(size=8), jnp.float32)

  def loss_fn(params, x_BxD, y_B, *, scale):
    pred_B = x_BxD @ params["w"] + params["b"]
    err_B = pred_B - y_B
    if grouped:
      err_GxN = err_B.reshape(-1, 2)
      err_B = (err_GxN - err_GxN.mean(axis=1, keepdims=True)).reshape(-1)
    return scale * jnp.mean(jnp.square(err_B)), {"pred_mean": jnp.mean(pred_B)}

  optimizer = optax.adam(0.1)
  step = common.make_step(loss_fn, optimizer, static_argnames=("scale",),
                          micro_batches=micro_batches, group_size=group_size)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  opt_state = optimizer.init(params)
  history = []
  for _ in range(steps):
    params, opt_state, metrics = step(params, opt_state, x_BxD, y_B, scale=2.0)
    history.append(metrics)
  return params, history


@pytest.mark.parametrize("grouped", [False, True])
def test_make_step_micro_batches_give_the_full_batch_steps(grouped):
  """A loss that is a mean over rows (of equal weight): accumulating over 2 or 4 micro-batches
  gives the params, loss and (mean) metrics of one full-batch step. A per-group statistic
  needs whole groups in a micro-batch (`group_size`): strided single rows change the loss."""
  group_size = 2 if grouped else 1
  one, one_m = _toy_runs(1, grouped=grouped)
  for m in (2, 4):
    acc, acc_m = _toy_runs(m, group_size=group_size, grouped=grouped)
    for k in one:
      np.testing.assert_allclose(acc[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(acc_m, one_m):
      for k in ("loss", "grad_norm", "pred_mean"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert np.abs(np.asarray(one["w"])).max() > 0.1  # it trained
  if grouped:
    wrong, _ = _toy_runs(2, grouped=True)  # rows 0, 2, 4, ... form the "groups"
    assert np.abs(np.asarray(wrong["w"]) - np.asarray(one["w"])).max() > 1e-2


def test_make_step_micro_batches_reject_batches_that_do_not_split():
  with pytest.raises(ValueError, match="8 rows does not split into 3 micro-batches"):
    _toy_runs(3)
  with pytest.raises(ValueError, match="whole groups of 2 rows"):
    _toy_runs(8, group_size=2, grouped=True)
  optimizer = optax.sgd(1.0)
  step = common.make_step(lambda p, x_B, s: (jnp.mean(p * x_B) * s, {}), optimizer,
                          micro_batches=2)
  with pytest.raises(ValueError, match="must be the batch"):  # a scalar among batch args
    step(jnp.ones(()), optimizer.init(jnp.ones(())), jnp.ones(4), jnp.float32(2.0))


def _sft_batch(rows, seed=0):
  """Rows with very unequal loss-token counts (1 to 6), so that a mean of per-micro-batch
  token means would differ from the batch's token mean."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 8, size=(rows, 8)).astype(np.int32)
  mask = np.ones_like(tokens)
  loss_mask = np.zeros_like(tokens)
  for r in range(rows):
    loss_mask[r, 8 - 1 - r % 6:] = 1
  return jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(loss_mask)


@pytest.mark.parametrize("rows", [8, 5])
def test_sft_step_micro_batches_are_the_full_batch_token_mean(rows):
  """`make_sft_step` divides every micro-batch's token sum by the whole batch's token count:
  exactly the full-batch loss and gradient (SGD, so params = params − grad), also for a batch
  that is not a multiple of M (5 rows: padded with loss-free copies inside the step).

  One M per case (each M is another compile of the same accumulation): 8 rows in M = 2
  strided micro-batches of 10 and 14 loss tokens; 5 rows padded to 8 for M = 4."""
  policy, params = tiny_policy()
  optimizer = optax.sgd(1.0)
  batch = _sft_batch(rows)
  one = sft.make_sft_step(policy, optimizer)(params, optimizer.init(params), *batch)
  for m in ((2,) if rows == 8 else (4,)):
    acc = sft.make_sft_step(policy, optimizer, micro_batches=m)(
        params, optimizer.init(params), *batch)
    np.testing.assert_allclose(acc[2]["loss"], one[2]["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc[2]["grad_norm"], one[2]["grad_norm"], rtol=1e-4)
    for k in params:
      np.testing.assert_allclose(acc[0][k], one[0][k], rtol=1e-4, atol=1e-6, err_msg=k)


def _random_minibatch(policy, params, rows=8, length=8, seed=0):
  """A GRPO/PPO minibatch with the policy's own log-probs as `old_logp` (ratio 1)."""
  from score.models import token_logprobs  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 8, size=(rows, length)).astype(np.int32)
  mask = np.ones_like(tokens)
  loss_mask = np.zeros_like(tokens)
  for r in range(rows):
    loss_mask[r, length - 1 - r % 5:] = 1
  logp = np.asarray(token_logprobs(policy.model(params), tokens, mask))
  f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask, "old_logp": logp,
          "sampler_logp": logp, "ref_logp": logp + 0.1 * f(rows, length), "advantages": f(rows),
          "returns": f(rows, length), "old_values": f(rows, length)}


@pytest.mark.slow  # fast: test_sft_step_micro_batches_are_the_full_batch_token_mean
def test_grpo_and_ppo_updates_accumulate_micro_batches():
  """GRPO's and PPO's (two models, their own step) updates with 2 micro-batches: the params
  of the full-batch update (sequence-normalised losses: exact)."""
  policy, params = tiny_policy()
  batch = _random_minibatch(policy, params)
  sgd = optax.sgd(1.0)
  rl = rl_cfg(beta=0.04, kl_placement="loss", reduction="sequence")
  outs = [grpo.make_update(policy, sgd, rl, 8.0, micro_batches=m)(
      params, sgd.init(params), batch) for m in (1, 2)]
  value_def, vparams = value_model(params)
  ppo_batch = dict(batch, advantages=np.repeat(batch["advantages"][:, None], 8, axis=1))
  prl = rlvr_math.ppo_rl(reduction="sequence", beta=0.05, kl_placement="loss")
  ppo_outs = [ppo.make_update(policy, value_def, sgd, sgd, prl, micro_batches=m)(
      params, sgd.init(params), vparams, sgd.init(vparams), ppo_batch) for m in (1, 2)]
  (one, _, one_m), (acc, _, acc_m) = outs
  for k in one:
    np.testing.assert_allclose(acc[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in ("loss", "pg_loss"):
    np.testing.assert_allclose(acc_m[k], one_m[k], rtol=1e-5, err_msg=k)
  # The `kl` metric is a token mean: the mean of the micro-batches' token means is close.
  np.testing.assert_allclose(acc_m["kl"], one_m["kl"], rtol=5e-2)
  (one, _, one_v, _, one_m), (acc, _, acc_v, _, acc_m) = ppo_outs
  for k in one:
    np.testing.assert_allclose(acc[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in one_v:
    np.testing.assert_allclose(acc_v[k], one_v[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in ("loss", "pg_loss", "value_loss"):
    np.testing.assert_allclose(acc_m[k], one_m[k], rtol=1e-5, err_msg=k)


@pytest.mark.slow  # fast: test_sft_step_micro_batches_are_the_full_batch_token_mean
def test_sft_train_applies_micro_batches_and_remat_on_a_mesh(tmp_path, monkeypatch):
  """`sft.train(config)` on the (2, 2, 1) mesh with `mesh.micro_batches=2`, and with
  `mesh.remat="block"`: the params of the plain mesh run (micro-batching: the same token mean;
  remat: the same math, recomputed), and the remat run's model (as `Policy.split` saw it, and
  as the returned policy builds it) really rematerialises."""
  seen = []
  split = common.Policy.split

  def recording(model):
    policy, params = split(model)
    seen.append((model.config.remat, params))
    return policy, params

  monkeypatch.setattr(common.Policy, "split", recording)
  runs = {}
  for name, knobs in [("plain", {}), ("micro", {"micro_batches": 2}),
                      ("remat", {"remat": "block"})]:
    config = sft_synthetic.get_config("runlocal")
    config.mesh.update(MESH, **knobs)
    config.warmup.steps = 3
    config.warmup.checkpoint_every = 3
    runs[name] = sft.train(config, str(tmp_path / name))
  assert [remat for remat, _ in seen] == ["none", "none", "block"]
  assert runs["remat"][0].model(runs["remat"][1]).config.remat == "block"
  assert runs["plain"][0].model(runs["plain"][1]).config.remat == "none"
  init, plain = seen[0][1], runs["plain"][1]
  assert_on_mesh(plain)
  for name in ("micro", "remat"):
    assert_on_mesh(runs[name][1])
    assert_params_close(plain, runs[name][1], init)


def test_score_micro_batches_on_a_mesh_keep_groups_whole(tmp_path, monkeypatch):
  """SCoRe Stage I with `mesh.micro_batches=2` on the (2, 2, 1) mesh: 16 rows = 4 prompts × G=4
  in 2 micro-batches of 2 whole groups (its leave-one-out baseline is per group), the params
  of the one-device full-batch run."""
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  from test_score_trainer import _runlocal_config  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"rl.stage1_steps": 1, "rl.stage2_steps": 0, "rl.lr": 1e-2,
                          "model.num_layers": 1})  # as above: one block is enough
  env = envs.make_env(c)
  monkeypatch.setattr(env, "rewards", lambda problems, responses: [  # see the test above
      float(sum(r) % 2) for r in responses])
  policy, params = common.Policy.split(
      common.build_model(c.model, env.tokenizer.vocab_size, seed=0))
  one = score_lib.train_score(policy, params, params, env, c.rl, workdir=str(tmp_path / "one"))
  micro = score_lib.train_score(policy, params, params, env, c.rl,
                                workdir=str(tmp_path / "micro"),
                                mesh_cfg=mesh_cfg(micro_batches=2))
  assert_on_mesh(micro)
  assert_params_close(one, micro, params)


def test_mesh_options_reject_bad_values():
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  for sizes in ({}, {"data": 1, "fsdp": 1}):  # also on one device, where nothing is sharded
    with pytest.raises(config_lib.ConfigError, match="mesh.remat='foo'"):
      common.mesh_from_config(mesh_cfg(**sizes, remat="foo"))
    for bad in (0, -2, 1.5, True, "2"):
      with pytest.raises(config_lib.ConfigError, match="mesh.micro_batches"):
        common.mesh_from_config(mesh_cfg(**sizes, micro_batches=bad))
  with pytest.raises(config_lib.ConfigError, match="mesh.remat"):
    common.apply_mesh_options(tiny_policy_model(), mesh_cfg(remat="full"))
  assert common.mesh_options(None) == ("none", 1)
  assert common.mesh_options(ml_collections.ConfigDict(dict(data=1))) == ("none", 1)
  assert common.mesh_options(mesh_cfg(remat="block", micro_batches=4)) == ("block", 4)


def tiny_policy_model():
  policy, params = tiny_policy()
  return policy.model(params)


def test_trainers_reject_batches_that_do_not_split_into_micro_batches(tmp_path):
  """At the start of the run, before anything is compiled: the message names the batch, its
  size, the micro-batches and the multiple to use."""
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  policy, params = tiny_policy()
  cfg = ml_collections.ConfigDict(dict(beta=0.1, label_smoothing=0.0, batch_size=8, steps=1,
                                       epochs=1.0, lr=1e-2, checkpoint_every=100,
                                       log_every=1))
  with pytest.raises(config_lib.ConfigError,
                     match=r"dpo.batch_size = 8 rows .*micro_batches = 3 .* multiple of 12"):
    dpo.train_dpo(policy, params, params, _dpo_pairs(), cfg, workdir=str(tmp_path), name="d",
                  seed=0, mesh_cfg=mesh_cfg(micro_batches=3))
  with pytest.raises(config_lib.ConfigError, match=r"= 8 rows .*data×fsdp = 8 .* multiple of 16"):
    dpo.train_dpo(policy, params, params, _dpo_pairs(), cfg, workdir=str(tmp_path), name="d",
                  seed=0, mesh_cfg=mesh_cfg(micro_batches=2, data=1, fsdp=8))
  rl = rl_cfg(prompts_per_step=4, samples_per_prompt=4, num_minibatches=2)  # 8-row minibatches
  with pytest.raises(config_lib.ConfigError, match=r"the minibatch .* = 8 rows .*multiple of 16"):
    grpo.train_grpo(policy, params, params, ToyEnv(target=5), rl, reward_cfg(),
                    workdir=str(tmp_path), mesh_cfg=mesh_cfg(micro_batches=4))
  with pytest.raises(config_lib.ConfigError, match=r"the SFT batch_size = 6 rows"):
    sft.train_sft(policy, params, None, ml_collections.ConfigDict(dict(
        batch_size=6, steps=1, lr=1e-3, checkpoint_every=1)), workdir=str(tmp_path), name="s",
                  mesh_cfg=parallel.mesh_config(data=1, fsdp=1, micro_batches=4))


@pytest.mark.slow  # fast: test_generation_and_evaluation_sample_on_the_models_mesh
def test_suite_evaluates_on_the_mesh(tmp_path, sharded_sampling):
  """The self-correction suite's greedy evaluation samples on the configured mesh and gives
  the one-device attempts."""
  from score.trainers import suite  # pylint: disable=g-import-not-at-top

  def run(workdir, **mesh):
    c = score_synthetic.get_config("runlocal")
    with c.unlocked():
      c.methods = ("base",)
      c.warmup.steps = 0
      if mesh:
        c.mesh = mesh_cfg(**mesh)
    suite.train(c, str(workdir))
    with open(workdir / "evals" / "base.json") as f:
      return json.load(f)

  one = run(tmp_path / "one")
  assert not sharded_sampling
  sharded = run(tmp_path / "mesh", data=2, fsdp=2, tensor=1)
  assert sharded_sampling and all(b % 4 == 0 for b in sharded_sampling)
  assert sharded["attempts"] == one["attempts"]


def test_generation_and_evaluation_sample_on_the_models_mesh(sharded_sampling):
  from score.trainers import self_instruct  # pylint: disable=g-import-not-at-top

  class Codec:  # what `generate_texts` uses of one
    eos_ids, pad_id = (1,), 0

    @staticmethod
    def decode(ids):
      return " ".join(map(str, ids))

  model = Transformer(ModelConfig.tiny(vocab_size=64), rngs=nnx.Rngs(0))
  prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [3], [4, 4]]
  kwargs = dict(max_new_tokens=5, temperature=0.0, top_p=None, seed=0, batch_size=8,
                max_prompt_tokens=16)
  one = self_instruct.generate_texts(model, Codec(), prompts, **kwargs)
  assert not sharded_sampling and common.model_mesh(model) is None
  policy, params = common.Policy.split(model)
  params, _, _ = common.shard(policy, params, {}, lambda *a: a, mesh_cfg())
  on_mesh = policy.model(params)
  assert common.model_mesh(on_mesh) is not None
  assert self_instruct.generate_texts(on_mesh, Codec(), prompts, **kwargs) == one
  assert sharded_sampling
  # GRPO/PPO's greedy evaluation too.
  sharded_sampling.clear()
  env = ToyEnv(target=7)
  problems = env.train_problems(0, 6)
  assert grpo.evaluate(on_mesh, env, problems) == grpo.evaluate(model, env, problems)
  assert len(sharded_sampling) == 1
