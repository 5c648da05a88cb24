"""LoRA (`score.models.lora`): the adapted model, what a step trains, what is shared with the
reference, checkpoints, bf16 base, config checks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import score_common
from score.models import ModelConfig, Transformer, lora, token_logprobs
from score.trainers import common
from score.utils import config as config_lib

TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 128, (2, 7)), jnp.int32)
MASK = jnp.ones((2, 7), jnp.int32)


def _lora_model(rank=4, targets=ModelConfig.tiny().lora_targets, **kw):
  config = ModelConfig.tiny(lora_rank=rank, lora_alpha=8.0, lora_targets=tuple(targets), **kw)
  return Transformer(config, rngs=nnx.Rngs(0))


def _with_random_b(params, seed=1):
  """Non-zero B factors, so the adapters change the model."""
  rng = np.random.default_rng(seed)
  return {k: (jnp.asarray(rng.normal(0, 0.05, v.shape), v.dtype) if "_lora_b']" in k else v)
          for k, v in params.items()}


def test_lora_model_equals_its_base_at_init():
  base = Transformer(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  adapted = _lora_model()
  _, base_params = common.Policy.split(base)
  _, params = common.Policy.split(adapted)
  # The same seed gives the same base weights (the adapters are drawn after them) ...
  for k, v in base_params.items():
    np.testing.assert_array_equal(params[k], v)
  assert sum(lora.is_adapter(k) for k in params) == 2 * 7  # A, B × 7 targets (layers stacked)
  # ... and B = 0 makes the adapted model the base model.
  np.testing.assert_allclose(adapted(TOKENS), base(TOKENS), atol=1e-6)
  assert float(jnp.abs(params["['layers']['attn']['q_lora_a'].value"]).max()) > 0


def test_adapted_projection_is_the_merged_weight():
  """x·W + (alpha/r)·(x·A)·B (unmerged, in the model) == x·(W + (alpha/r)·A·B) computed here
  with numpy, for a 3-d attention weight (q) and the o projection (2 input axes)."""
  model = _lora_model()
  policy, params = common.Policy.split(model)
  params = _with_random_b(params)
  graphdef, state = nnx.split(policy.model(params).layers)  # layer 0 of the stacked blocks
  attn = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state)).attn
  x = np.random.default_rng(2).normal(size=(2, 3, 64)).astype(np.float32)
  w = np.asarray(attn.q.value)
  a, b = np.asarray(attn.q_lora_a.value), np.asarray(attn.q_lora_b.value)
  merged = w + 2.0 * np.einsum("dr,rnh->dnh", a, b)  # alpha / r = 8 / 4
  from score.models import transformer  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(transformer._projection(attn, "q", jnp.asarray(x)),
                             np.einsum("btd,dnh->btnh", x, merged), rtol=1e-4, atol=1e-5)
  out = np.random.default_rng(3).normal(size=(2, 3, 4, 16)).astype(np.float32)
  merged_o = np.asarray(attn.o.value) + 2.0 * np.einsum(
      "nhr,rd->nhd", np.asarray(attn.o_lora_a.value), np.asarray(attn.o_lora_b.value))
  np.testing.assert_allclose(transformer._projection(attn, "o", jnp.asarray(out), (0, 1)),
                             np.einsum("btnh,nhd->btd", out, merged_o), rtol=1e-4, atol=1e-5)


def test_merged_model_has_the_same_logits():
  model = _lora_model()
  policy, params = common.Policy.split(model)
  adapted = policy.model(_with_random_b(params))
  merged = lora.merged_model(adapted)
  assert merged.config.lora_rank == 0
  assert not lora.has_adapters(common.Policy.split(merged)[1])
  base_logits = Transformer(ModelConfig.tiny(), rngs=nnx.Rngs(0))(TOKENS)
  assert float(jnp.abs(adapted(TOKENS) - base_logits).max()) > 1e-3  # the adapters matter
  np.testing.assert_allclose(merged(TOKENS), adapted(TOKENS), rtol=1e-4, atol=1e-4)


def test_adapter_gradient_matches_the_merged_weight_gradient():
  """d loss / d(A, B) of the unmerged model == the chain rule through an explicitly merged
  weight W + (alpha/r)·A·B in a model without adapters (an independent computation)."""
  model = _lora_model(targets=("q", "down"))
  policy, params = common.Policy.split(model)
  params = _with_random_b(params)
  train, frozen = lora.split(params)
  assert set(train) == {k for k in params if lora.is_adapter(k)}
  plain_policy, _ = common.Policy.split(Transformer(ModelConfig.tiny(), rngs=nnx.Rngs(0)))

  def loss(logp):
    return -jnp.mean(logp)

  def unmerged(train):
    return loss(token_logprobs(policy.model({**frozen, **train}), TOKENS, MASK))

  def merged(train):
    plain = dict(frozen)
    for w_key, a_key, b_key in lora.pairs(train | frozen):
      per_layer = jax.vmap(lambda a, b: jnp.tensordot(a, b, axes=([-1], [0])))  # stacked
      plain[w_key] = frozen[w_key] + 2.0 * per_layer(train[a_key], train[b_key])
    return loss(token_logprobs(plain_policy.model(plain), TOKENS, MASK))

  np.testing.assert_allclose(unmerged(train), merged(train), rtol=1e-5)
  g_unmerged, g_merged = jax.grad(unmerged)(train), jax.grad(merged)(train)
  for k in train:
    np.testing.assert_allclose(g_unmerged[k], g_merged[k], rtol=2e-3, atol=1e-6)
    assert float(jnp.abs(g_merged[k]).max()) > 0


def _sgd_step(policy, lr=0.1):
  def loss_fn(params, tokens, mask):
    logp = token_logprobs(policy.model(params), tokens, mask)
    return -jnp.mean(logp), {}

  optimizer = common.make_optimizer(ml_collections.ConfigDict(dict(lr=lr)), 10)
  return optimizer, common.make_step(loss_fn, optimizer)


def test_a_step_trains_only_adapters_and_shares_the_base_with_the_reference():
  policy, params = common.Policy.split(_lora_model())
  reference = params  # the phase's starting model: the same dict, i.e. the same base arrays
  optimizer, step = _sgd_step(policy)
  opt_state = optimizer.init(params)
  mu = opt_state[0][0].mu  # adamw's state over the params it trains
  assert set(mu) == {k for k in params if lora.is_adapter(k)}
  new, opt_state, metrics = step(params, opt_state, TOKENS, MASK)
  new, opt_state, metrics = step(new, opt_state, TOKENS, MASK)
  assert np.isfinite(float(metrics["loss"]))
  for k, v in params.items():
    if lora.is_adapter(k):
      continue
    assert new[k] is reference[k], k  # not a copy: one frozen base for policy and reference
  moved = [(k, i) for k in params if "_lora_b']" in k for i in range(2)
           if float(jnp.abs(new[k][i]).max()) > 0]
  assert len(moved) == 14  # every B (7 targets × 2 stacked layers) left zero
  assert float(jnp.abs(policy.model(new)(TOKENS) - policy.model(reference)(TOKENS)).max()) > 0


def test_without_adapters_a_step_trains_everything():
  policy, params = common.Policy.split(Transformer(ModelConfig.tiny(), rngs=nnx.Rngs(0)))
  optimizer, step = _sgd_step(policy)
  new, _, _ = step(params, optimizer.init(params), TOKENS, MASK)
  assert all(not np.array_equal(new[k], params[k]) for k in params if "norm" not in k)


def test_checkpoint_holds_the_adapters_and_resume_is_exact(tmp_path):
  policy, params = common.Policy.split(_lora_model())
  optimizer, step = _sgd_step(policy)

  def update(i, state):
    p, o, m = step(state["params"], state["opt_state"], TOKENS + i, MASK)
    return {"params": p, "opt_state": o}, m

  def run(workdir, num_steps):
    return common.train_loop(workdir=str(workdir), name="phase", num_steps=num_steps,
                             state={"params": params, "opt_state": optimizer.init(params)},
                             update=update, checkpoint_every=1)

  straight = run(tmp_path / "a", 3)
  run(tmp_path / "b", 2)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  saved = ocp.StandardCheckpointer().metadata(str(tmp_path / "b/checkpoints/phase/2/state"))
  saved_keys = set(saved.item_metadata.tree["params"] if hasattr(saved, "item_metadata")
                   else saved.tree["params"])
  assert saved_keys == {k for k in params if lora.is_adapter(k)}  # no base in the checkpoint
  resumed = run(tmp_path / "b", 3)
  for k in params:
    np.testing.assert_array_equal(resumed["params"][k], straight["params"][k])
    if not lora.is_adapter(k):
      assert resumed["params"][k] is params[k]


def test_bfloat16_base_with_float32_adapters():
  section = score_common.model(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                               head_dim=16, intermediate_size=128)
  section.base_dtype = "bfloat16"
  section.lora.rank = 4
  policy, params = common.Policy.split(common.build_model(section, 128))
  for k, v in params.items():
    assert v.dtype == (jnp.float32 if lora.is_adapter(k) else jnp.bfloat16), k
  optimizer, step = _sgd_step(policy)
  opt_state = optimizer.init(params)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(opt_state[0][0].mu))
  new, _, metrics = step(params, opt_state, TOKENS, MASK)
  assert np.isfinite(float(metrics["loss"]))
  assert all(new[k].dtype == params[k].dtype for k in params)


def test_bad_lora_settings_are_config_errors():
  section = score_common.model()
  section.lora.rank = 4
  section.lora.targets = "q,v,qkv"
  with pytest.raises(config_lib.ConfigError, match=r"\['qkv'\]"):
    common.build_model(section, 128)
  section = score_common.model()
  section.base_dtype = "bfloat16"
  with pytest.raises(config_lib.ConfigError, match="model.lora.rank"):
    common.build_model(section, 128)
  section.base_dtype = "float16"
  with pytest.raises(config_lib.ConfigError, match="float16"):
    common.build_model(section, 128)


def test_add_lora_keeps_the_warmed_weights():
  policy, params = common.Policy.split(Transformer(ModelConfig.tiny(), rngs=nnx.Rngs(3)))
  section = score_common.model()
  section.lora.rank = 2
  section.lora.targets = "v,up"
  new_policy, new = common.add_lora(policy, params, section, seed=0)
  assert sorted(k for k in new if lora.is_adapter(k)) == sorted(
      f"['layers']['{m}']['{p}_lora_{f}'].value"
      for m, p in (("attn", "v"), ("mlp", "up")) for f in "ab")
  assert all(new[k] is params[k] for k in params)
  np.testing.assert_allclose(new_policy.model(new)(TOKENS), policy.model(params)(TOKENS),
                             atol=1e-6)


def test_lora_step_on_a_mesh_matches_one_device():
  from score import parallel  # pylint: disable=g-import-not-at-top
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  policy, params = common.Policy.split(_lora_model())
  optimizer, step = _sgd_step(policy)
  tokens, mask = jnp.concatenate([TOKENS, TOKENS[:, ::-1]]), jnp.concatenate([MASK, MASK])
  one, _, _ = step(params, optimizer.init(params), tokens, mask)
  p, o, sharded_step = common.shard(policy, params, optimizer.init(params), step,
                                    parallel.mesh_config(data=2, fsdp=2, tensor=2))
  reference = common.shard_like(params, p)
  new, _, _ = sharded_step(p, o, tokens, mask)
  embed = "['embed'].value"
  assert p[embed].sharding.spec != new["['layers']['attn']['q_lora_b'].value"].sharding.spec
  assert len(p[embed].sharding.device_set) == 8
  for k in params:
    np.testing.assert_allclose(new[k], one[k], rtol=1e-3, atol=1e-4)  # Adam: ~g/|g|
    if not lora.is_adapter(k):
      assert new[k] is p[k] and reference[k] is p[k], k  # one sharded base for all three


def test_two_models_sharing_a_base_keep_one_copy_on_the_mesh():
  """PPO's value model starts from the policy (`value.init="policy"`): the same base arrays,
  which `shard_models` places once."""
  from score import parallel  # pylint: disable=g-import-not-at-top
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  policy, params = common.Policy.split(_lora_model())
  value = dict(params)  # another model on the same base arrays
  optimizer = common.make_optimizer(ml_collections.ConfigDict(dict(lr=0.1)), 10)
  [(p, _), (v, _)], _ = common.shard_models(
      lambda *args: args, parallel.mesh_config(data=1, fsdp=8, tensor=1),
      (policy, params, optimizer.init(params)), (policy, value, optimizer.init(value)))
  for k in params:
    assert (v[k] is p[k]) == (not lora.is_adapter(k)), k


@pytest.mark.slow  # fast: test_a_step_trains_only_adapters_and_shares_the_base_with_the_reference
def test_grpo_with_lora_learns_the_toy_target(tmp_path):
  """GRPO end to end with rank-4 adapters and a k3 KL to the reference (the base)."""
  from score.trainers import grpo  # pylint: disable=g-import-not-at-top
  from test_grpo import ToyEnv, rl_cfg, reward_cfg  # pylint: disable=g-import-not-at-top
  config = ModelConfig.tiny(vocab_size=8, hidden_size=16, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, intermediate_size=32,
                            max_position_embeddings=16, lora_rank=4)
  policy, params = common.Policy.split(Transformer(config, rngs=nnx.Rngs(0)))
  env = ToyEnv(target=5)
  before = grpo.evaluate(policy.model(params), env, env.heldout * 4)["accuracy"]
  rl = rl_cfg(steps=12, prompts_per_step=8, samples_per_prompt=8, lr=1e-1, beta=0.04,
              temperature=1.0)
  new = grpo.train_grpo(policy, params, params, env, rl, reward_cfg(), workdir=str(tmp_path))
  after = grpo.evaluate(policy.model(new), env, env.heldout * 4)["accuracy"]
  assert before == 0.0 and after == 100.0
  assert all(new[k] is params[k] for k in lora.frozen_keys(params))


def _hf_checkpoint(path):
  """A tiny random Qwen2 checkpoint written by `transformers`, with a (character) tokenizer:
  what `model.model_dir` must hold."""
  from score import export as export_lib  # pylint: disable=g-import-not-at-top
  from score.data import synthetic  # pylint: disable=g-import-not-at-top
  from test_export import _hf_base  # pylint: disable=g-import-not-at-top
  _hf_base("qwen2", path)
  export_lib.char_tokenizer(synthetic.make_task("addition").tokenizer).save_pretrained(path)
  return path


def test_export_merged_and_peft_adapter_match_our_logits(tmp_path):
  """A LoRA run from a Hugging Face checkpoint: its adapters-only checkpoint exports to a merged
  checkpoint (`transformers`) and a PEFT adapter (`peft` onto the base), both with our logits."""
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  transformers = pytest.importorskip("transformers")
  import json  # pylint: disable=g-import-not-at-top
  from score import export as export_lib  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.utils import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from test_export import VOCAB, _hf_logits, _tokens  # pylint: disable=g-import-not-at-top
  base_dir = _hf_checkpoint(str(tmp_path / "base"))
  workdir = tmp_path / "run"
  model_cfg = score_common.model(base_dir)
  model_cfg.lora = score_common.lora(rank=4, alpha=8.0, targets="q,v,o,down")
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"model": model_cfg.to_dict(), "seed": 0}))
  policy, params = common.Policy.split(common.build_model(model_cfg, seed=5))
  params = _with_random_b(params)
  ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints" / "score" / "r0_stage2"))
  ckpt.save(3, common._without_frozen({"params": params})[0], force=True)
  ckpt.close()

  out = tmp_path / "hf"
  record = export_lib.export(str(workdir / "checkpoints" / "score" / "r0_stage2"), str(out))
  assert record["lora"]["base"] == base_dir and record["lora"]["rank"] == 4
  tokens = _tokens(VOCAB)
  ours = np.asarray(policy.model(params)(jnp.asarray(tokens, jnp.int32)))
  base_logits = _hf_logits(base_dir, tokens)
  assert np.abs(ours - base_logits).max() > 1e-2  # the adapters change the model
  np.testing.assert_allclose(_hf_logits(str(out), tokens), ours, atol=2e-4, rtol=2e-4)

  adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
  assert adapter_config["base_model_name_or_path"] == base_dir
  assert sorted(adapter_config["target_modules"]) == ["down_proj", "o_proj", "q_proj", "v_proj"]
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  names = load_file(str(out / "adapter" / "adapter_model.safetensors"))
  assert names["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
  assert names["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (32, 4)
  base = transformers.AutoModelForCausalLM.from_pretrained(
      adapter_config["base_model_name_or_path"], attn_implementation="eager")
  with_adapter = peft.PeftModel.from_pretrained(base, str(out / "adapter"))
  with torch.no_grad():
    theirs = with_adapter.eval().float()(input_ids=torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=2e-4)


def test_merge_adapters_makes_the_next_phase_base():
  """A Self-Rewarding iteration starts from M_t: its adapters merged into a new frozen base
  (W + (alpha/r)·A·B, checked with numpy), B zero, the same logits."""
  policy, params = common.Policy.split(_lora_model(targets=("v", "gate")))
  trained = _with_random_b(params)
  start = common.merge_adapters(policy, trained)
  np.testing.assert_allclose(policy.model(start)(TOKENS), policy.model(trained)(TOKENS),
                             rtol=1e-4, atol=1e-4)
  for w_key, a_key, b_key in lora.pairs(trained):
    a, b = np.asarray(trained[a_key]), np.asarray(trained[b_key])  # stacked over layers
    delta = np.stack([np.tensordot(a[i], b[i], axes=([-1], [0])) for i in range(len(a))])
    np.testing.assert_allclose(start[w_key], np.asarray(trained[w_key]) + 2.0 * delta,
                               rtol=1e-5, atol=1e-6)
    assert not np.asarray(start[b_key]).any() and start[a_key] is trained[a_key]
  assert lora.frozen_keys(start) == lora.frozen_keys(trained)
  embed = "['embed'].value"
  assert start[embed] is trained[embed]  # weights without adapters are not copied
  plain_policy, plain = common.Policy.split(Transformer(ModelConfig.tiny(), rngs=nnx.Rngs(0)))
  assert common.merge_adapters(plain_policy, plain) is plain


def test_a_checkpoint_loads_in_bf16_straight_onto_the_mesh(tmp_path):
  """`model.base_dtype=bfloat16` + a mesh: every tensor arrives in bf16 with its mesh sharding
  (each device holds its shard only), the adapters in fp32; the model is the checkpoint's."""
  pytest.importorskip("transformers")
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from score import parallel  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from test_export import VOCAB, _tokens  # pylint: disable=g-import-not-at-top
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  base_dir = _hf_checkpoint(str(tmp_path / "base"))
  section = score_common.model(base_dir)
  section.base_dtype = "bfloat16"
  section.lora.rank = 4
  model = common.build_model(section, seed=0,
                             mesh_cfg=parallel.mesh_config(data=1, fsdp=4, tensor=2))
  _, params = common.Policy.split(model)
  embed = params["['embed'].value"]  # [V, D], V over tensor × fsdp
  assert embed.dtype == jnp.bfloat16 and isinstance(embed.sharding, NamedSharding)
  assert embed.addressable_shards[0].data.shape == (VOCAB // 8, 32)
  for k, v in params.items():
    assert v.dtype == (jnp.float32 if lora.is_adapter(k) else jnp.bfloat16), k
    assert isinstance(v.sharding, NamedSharding) and len(v.sharding.device_set) == 8, k
  tokens = jnp.asarray(_tokens(VOCAB), jnp.int32)
  one_device = hf.from_pretrained(base_dir, param_dtype=jnp.bfloat16)
  np.testing.assert_allclose(model(tokens), one_device(tokens), rtol=1e-5, atol=1e-5)


def _runlocal(name):
  import importlib  # pylint: disable=g-import-not-at-top
  if name == "self_rewarding":
    from test_self_rewarding import tiny_config  # pylint: disable=g-import-not-at-top
    return tiny_config()
  module, _, arg = name.partition(":")
  return importlib.import_module(f"configs.{module}").get_config(arg or "runlocal")


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "score_synthetic", "sft_synthetic", "grpo_synthetic", "rlvr_math", "reward_model_synthetic",
    "dpo", "self_rewarding"])
def test_every_trainer_trains_and_checkpoints_only_adapters(tmp_path, name):
  """Each trainer's runlocal config with `model.lora.rank=4`: every phase but a synthetic
  task's full-weight warm-up saves adapters (and a scalar model's head) only; they moved."""
  from score import export as export_lib  # pylint: disable=g-import-not-at-top
  from score import trainers  # pylint: disable=g-import-not-at-top
  config = _runlocal(name)
  config_lib.apply_overrides(config, {"model.lora.rank": 4})
  trainers.get(config.trainer)(config, str(tmp_path))
  moved = {}
  for phase in export_lib.list_phases(str(tmp_path)):
    step_dir, _ = export_lib.resolve_checkpoint(str(tmp_path / "checkpoints" / phase))
    saved = export_lib.checkpoint_params_metadata(step_dir)
    if not lora.has_adapters(saved):  # the SFT warm-up that makes a synthetic task's base
      assert phase == "warmup" and config.trainer != "sft", phase
      continue
    assert all(lora.is_adapter(k) or k.startswith("['head']") for k in saved), (phase, saved)
    values = export_lib.load_params(step_dir, {k: shape for k, (shape, _) in saved.items()})
    moved[phase] = max(lora.adapter_norms(values).values())
  assert moved and max(moved.values()) > 0, moved  # (a phase may see no signal at all)


@pytest.mark.parametrize("warmup", [True, False])
def test_export_of_a_fresh_model_lora_run_rebuilds_its_base(tmp_path, warmup):
  """A synthetic run's adapters-only checkpoint exports onto the base its trainer built: the
  full-weight SFT warm-up's params (`checkpoints/warmup`), else the fresh model of its seed."""
  pytest.importorskip("transformers")
  import json  # pylint: disable=g-import-not-at-top
  from configs import score_synthetic  # pylint: disable=g-import-not-at-top
  from score import export as export_lib  # pylint: disable=g-import-not-at-top
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from score.utils import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from test_export import _hf_logits, _perturbed  # pylint: disable=g-import-not-at-top
  config = score_synthetic.get_config("runlocal")
  config_lib.apply_overrides(config, {"model.lora.rank": 2, "model.lora.targets": "k,up",
                                      "seed": 7})
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(config), default=str))
  chars = envs.make_env(config).tokenizer
  model = common.build_model(config.model, chars.vocab_size, seed=config.seed, lora_on=False)
  policy, params = common.Policy.split(model)
  if warmup:  # what the warm-up phase saved: every weight, trained
    params = _perturbed(params, 1)
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints" / "warmup"))
    ckpt.save(10, {"params": params}, force=True)
    ckpt.close()
  policy, params = common.add_lora(policy, params, config.model, seed=config.seed)
  params = _with_random_b(params)
  ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints" / "score" / "r0_stage2"))
  ckpt.save(2, common._without_frozen({"params": params})[0], force=True)
  ckpt.close()
  record = export_lib.export(str(workdir / "checkpoints" / "score" / "r0_stage2"),
                             str(tmp_path / "hf"))
  assert record["lora"]["peft_adapter"] is None  # no Hugging Face base to apply it to
  assert ("warmup" in record["lora"]["base"]) == warmup
  tokens = np.array([[chars.bos_id] + chars.encode("1234+5678=")])
  np.testing.assert_allclose(
      _hf_logits(str(tmp_path / "hf"), tokens),
      np.asarray(policy.model(params)(jnp.asarray(tokens, jnp.int32))), atol=2e-4, rtol=2e-4)
