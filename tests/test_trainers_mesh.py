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
tokens of one device.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from configs import grpo_synthetic
from configs import reward_model_synthetic
from configs import rlvr_math
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


def test_rollout_on_a_mesh_gives_the_greedy_episodes_of_one_device(sharded_sampling):
  """Two turns, 3 prompts × G=2: each turn is one sharded sampler call (6 rows → 8)."""
  model = _sampling_model()
  sharded_model, mesh = _sharded_model(model)
  kwargs = dict(num_turns=2, max_new_tokens=4, instruction=[5, 6], samples_per_prompt=2,
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


def test_score_on_a_mesh_matches_one_device(tmp_path, references, sharded_sampling,
                                            monkeypatch):
  """SCoRe Stage I + Stage II (β1, β2 > 0: the reference is used, sharded like the policy);
  both attempts of every step's episodes are sampled on the mesh."""
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  from test_score_trainer import _runlocal_config  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"rl.stage1_steps": 1, "rl.stage2_steps": 1, "rl.lr": 1e-2})
  env = envs.make_env(c)
  # A fresh model never answers right: with all-zero rewards the gradient would be rounding
  # noise, which Adam's first step blows up to ±lr. Reward the parity of the response instead.
  monkeypatch.setattr(env, "rewards", lambda problems, responses: [
      float(sum(r) % 2) for r in responses])
  policy, params = common.Policy.split(
      common.build_model(c.model, env.tokenizer.vocab_size, seed=0))
  one = score_lib.train_score(policy, params, params, env, c.rl, workdir=str(tmp_path / "one"))
  assert not sharded_sampling
  sharded = score_lib.train_score(policy, params, params, env, c.rl,
                                  workdir=str(tmp_path / "mesh"), mesh_cfg=mesh_cfg())
  assert len(sharded_sampling) == 4  # 2 stages × 1 step × 2 turns
  assert_on_mesh(sharded)
  assert_on_mesh(references[-1])
  assert_params_close(one, sharded, params)


@pytest.mark.parametrize("knob", [{"remat": "block"}, {"micro_batches": 2}])
def test_trainers_refuse_mesh_knobs_they_do_not_apply(knob):
  """`mesh.remat` / `mesh.micro_batches` are `score.parallel` API the trainers do not wire in
  yet: a config that sets them stops instead of silently training without them."""
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  for sizes in ({}, {"data": 1, "fsdp": 1}):  # also on one device, where nothing is sharded
    with pytest.raises(config_lib.ConfigError, match="do not apply these yet"):
      common.mesh_from_config(mesh_cfg(**sizes, **knob))
