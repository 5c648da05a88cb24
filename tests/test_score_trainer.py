"""SCoRe trainer: objectives on a toy tabular policy, and tiny end-to-end suite runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score.losses import score as score_losses

B, G, T, V = 8, 4, 6, 5
TURN_MASK = np.array([[0, 1, 1, 0, 2, 2]] * B, np.int32)


def _toy(seed=0):
  """A tabular policy: independent logits per (row, position); returns θ, tokens, ref logp."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  theta = jax.random.normal(k1, (B, T, V))
  tokens = jax.random.randint(k2, (B, T), 0, V)
  ref = jax.nn.log_softmax(theta + 0.3 * jax.random.normal(k3, (B, T, V)))
  ref_logp = jnp.take_along_axis(ref, tokens[..., None], -1)[..., 0]
  return theta, tokens, ref_logp


def _logp(theta, tokens):
  return jnp.take_along_axis(jax.nn.log_softmax(theta), tokens[..., None], -1)[..., 0]


def _grad(objective, theta, tokens, ref_logp, r1, r2, **kw):
  def loss(th):
    return objective(_logp(th, tokens), ref_logp, TURN_MASK, r1, r2, group_size=G, **kw)[0]
  return jax.grad(loss)(theta)


R1 = jnp.array([0, 1, 0, 1, 1, 0, 0, 1], jnp.float32)
R2 = jnp.array([1, 1, 0, 0, 1, 1, 0, 1], jnp.float32)


def test_stage1_puts_no_reward_gradient_on_first_attempt():
  theta, tokens, ref_logp = _toy()
  g = _grad(score_losses.stage1_objective, theta, tokens, ref_logp, R1, R2, beta1=0.0,
            beta2=0.0)
  turn1 = TURN_MASK == 1
  assert np.all(np.asarray(g)[turn1] == 0.0)
  assert np.abs(np.asarray(g)[TURN_MASK == 2]).sum() > 0
  # With β2 > 0 the first attempt is pulled towards the reference, and only by the KL.
  g_kl = _grad(score_losses.stage1_objective, theta, tokens, ref_logp, R1, R2, beta1=0.0,
               beta2=0.1)
  assert np.abs(np.asarray(g_kl)[turn1]).sum() > 0
  g_kl_other_r = _grad(score_losses.stage1_objective, theta, tokens, ref_logp, 1 - R1, 1 - R2,
                       beta1=0.0, beta2=0.1)
  np.testing.assert_allclose(np.asarray(g_kl)[turn1], np.asarray(g_kl_other_r)[turn1])


def test_stage2_first_attempt_sees_only_its_own_return():
  theta, tokens, ref_logp = _toy(1)
  g_a = _grad(score_losses.stage2_objective, theta, tokens, ref_logp, R1, R2, alpha=10.0,
              beta1=0.0)
  g_b = _grad(score_losses.stage2_objective, theta, tokens, ref_logp, R1, 1 - R2, alpha=3.0,
              beta1=0.0)
  turn1, turn2 = TURN_MASK == 1, TURN_MASK == 2
  # Changing r2 and α changes nothing on turn-1 tokens...
  np.testing.assert_allclose(np.asarray(g_a)[turn1], np.asarray(g_b)[turn1], atol=1e-7)
  # ...but does change turn-2 tokens.
  assert not np.allclose(np.asarray(g_a)[turn2], np.asarray(g_b)[turn2])


@pytest.mark.parametrize("objective", [score_losses.stage1_objective,
                                       score_losses.stage2_objective])
def test_importance_weights_scale_the_reinforce_term_of_both_turns(objective):
  """Weights w on every token: the REINFORCE term (both turns) is w times, the KL is not."""
  theta, tokens, ref_logp = _toy()
  logp = _logp(theta, tokens)
  plain, m = objective(logp, ref_logp, TURN_MASK, R1, R2, group_size=G)
  w = jnp.full((B, T), 2.0)
  _, m_w = objective(logp, ref_logp, TURN_MASK, R1, R2, group_size=G, is_weights_BxT=w)
  np.testing.assert_allclose(m_w["pg_loss"], 2.0 * m["pg_loss"], rtol=1e-6)
  np.testing.assert_allclose(m_w["kl_loss"], m["kl_loss"], rtol=1e-6)
  assert abs(float(m["pg_loss"])) > 1e-3 and float(plain) != float(m_w["loss"])
  # Without KL, weight 0 on the second turn: its tokens get no gradient (weight 1: they do).
  no_kl = dict(beta1=0.0, **({"beta2": 0.0} if objective is score_losses.stage1_objective
                             else {}))
  w2 = jnp.asarray(np.where(TURN_MASK == 2, 0.0, 1.0), jnp.float32)
  g = _grad(objective, theta, tokens, ref_logp, R1, R2, is_weights_BxT=w2, **no_kl)
  np.testing.assert_array_equal(np.asarray(g)[TURN_MASK == 2], 0.0)
  g1 = _grad(objective, theta, tokens, ref_logp, R1, R2, **no_kl)
  assert np.abs(np.asarray(g1)[TURN_MASK == 2]).max() > 1e-4


@pytest.mark.parametrize("kind", ["k2", "k3"])
def test_kl_gradient_is_live_and_matches_finite_differences(kind):
  theta, tokens, ref_logp = _toy(3)
  zeros = jnp.zeros((B,), jnp.float32)

  def loss(th):  # equal rewards: only the KL term is left
    return score_losses.stage2_objective(_logp(th, tokens), ref_logp, TURN_MASK, zeros, zeros,
                                         group_size=G, beta1=0.5, kl_estimator=kind)[0]

  g = np.asarray(jax.grad(loss)(theta))
  assert np.abs(g).sum() > 1e-4  # not detached
  rng = np.random.default_rng(0)
  for _ in range(5):
    idx = (rng.integers(B), int(rng.choice([1, 2, 4, 5])), rng.integers(V))
    eps = 1e-3
    up = theta.at[idx].add(eps)
    down = theta.at[idx].add(-eps)
    fd = (loss(up) - loss(down)) / (2 * eps)
    np.testing.assert_allclose(g[idx], fd, rtol=2e-2, atol=1e-5)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runlocal_config(**overrides):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "score_synthetic", os.path.join(ROOT, "configs", "score_synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("runlocal")
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.apply_overrides(c, overrides)
  return c


def test_ablation_configs_change_what_is_trained():
  """Each Table-4 ablation changes exactly its `rl` fields (runlocal: 2 + 2 steps, α = 10)."""
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  c = _runlocal_config()
  want = {"no_stage1": {"stage1_steps": 0, "stage2_steps": 4},
          "no_shaping": {"alpha": 0.0},
          "no_stage1_no_shaping": {"stage1_steps": 0, "stage2_steps": 4, "alpha": 0.0},
          "no_multi_turn": {"multi_turn": False, "stage1_steps": 0, "stage2_steps": 4},
          "star_stage2": {"stage2_method": "star"}}
  assert set(want) == set(suite.ABLATIONS)
  for name, fields in want.items():
    rl = suite.ablation_config(c, name).rl
    assert {k: rl[k] for k in rl if rl[k] != c.rl[k]} == fields, name


class _TabularPolicy:
  """The tabular policy of `_toy` behind the trainer's `policy.model(params)`."""

  def model(self, params):
    return params["theta"]


def _one_update(rl, batch, stage):
  import optax  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  theta = _toy(4)[0]
  opt = optax.sgd(1.0)
  step = score_lib.make_rl_step(_TabularPolicy(), opt, rl)
  new, _, _ = step({"theta": theta}, opt.init({"theta": theta}), batch, stage)
  return np.asarray(new["theta"] - theta)


def test_rl_step_switches_change_the_update(monkeypatch):
  """`rl.alpha`, `rl.multi_turn` and `rl.beta2` reach the compiled update (on the tabular
  policy): α changes the Stage II step; without multi-turn training the Stage II step ignores
  r2 and moves no turn-2 logit (only attempt 1 is trained, on r1); β2 changes Stage I."""
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(score_lib, "token_logprobs", lambda theta, tokens, mask: _logp(theta,
                                                                                     tokens))
  c = _runlocal_config(**{"rl.samples_per_prompt": G})
  _, tokens, ref_logp = _toy(4)
  batch = {"tokens": tokens, "mask": jnp.ones_like(tokens), "turn_mask": jnp.asarray(TURN_MASK),
           "ref_logp": ref_logp, "r1": R1, "r2": R2,
           "sampler_logp": _logp(_toy(4)[0], tokens)}  # the sampler's: no mismatch
  flipped = dict(batch, r2=1 - R2)

  def rl(**kw):
    out = common.unfrozen(common.frozen(c.rl))
    out.update(kw)
    return out
  base = _one_update(rl(), batch, 2)
  assert not np.allclose(base, _one_update(rl(alpha=0.0), batch, 2))
  single = _one_update(rl(multi_turn=False), batch, 2)
  assert np.abs(base[TURN_MASK == 2]).sum() > 0 and not single[TURN_MASK == 2].any()
  np.testing.assert_allclose(single, _one_update(rl(multi_turn=False), flipped, 2), atol=1e-7)
  s1 = _one_update(rl(beta2=0.1), batch, 1)
  assert not np.allclose(s1, _one_update(rl(beta2=1.0), batch, 1))
  # `rl.tis_level`: off, the sampler's log-probs do not enter the step; token-level with
  # π_old / π_sampler = 3 (capped at 2) on both turns, the step changes; without mismatch
  # the weights are 1.
  shifted = dict(batch, sampler_logp=batch["sampler_logp"] - np.log(3.0))
  np.testing.assert_array_equal(_one_update(rl(), shifted, 2), base)
  np.testing.assert_allclose(_one_update(rl(tis_level="token"), batch, 2), base, atol=1e-6)
  tis = _one_update(rl(tis_level="token", tis_cap=2.0), shifted, 2)
  for turn in (1, 2):
    assert not np.allclose(tis[TURN_MASK == turn], base[TURN_MASK == turn]), turn


def test_star_stage2_trains_with_sft(monkeypatch):
  """`rl.stage2_method="star"` compiles Stage II as an SFT step (Stage I stays RL)."""
  from score.trainers import common, envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"rl.stage2_method": "star"})
  env = envs.make_env(c)
  policy, params = common.Policy.split(common.build_model(c.model, env.tokenizer.vocab_size))
  stars = []

  class Stop(Exception):
    pass

  def spy(policy, rl_items, steps, star, micro_batches=1):
    stars.append(star)
    if len(stars) == 2:
      raise Stop
    return score_lib.__wrapped_compiled_steps(policy, rl_items, steps, star, micro_batches)
  monkeypatch.setattr(score_lib, "__wrapped_compiled_steps", score_lib._compiled_steps,
                      raising=False)
  monkeypatch.setattr(score_lib, "_compiled_steps", spy)
  monkeypatch.setattr(score_lib.common, "train_loop", lambda **kw: kw["state"])
  with pytest.raises(Stop):
    score_lib.train_score(policy, params, params, env, c.rl, workdir="/nonexistent")
  assert stars == [False, True]


def test_suite_end_to_end_checkpoints_resumes_and_writes_table(tmp_path):
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  c = _runlocal_config()
  with c.unlocked():
    # The ablations with their own code path (no Stage I phase; SFT in Stage II); the others
    # are config overrides (test_ablation_configs_change_what_is_trained) of the same phases.
    c.ablations = ("no_stage1", "star_stage2")
  workdir = str(tmp_path)
  results = suite.train(c, workdir)
  methods = ("base", "star", "pair_sft", "score", "no_stage1", "star_stage2")
  assert tuple(results) == methods
  table = open(os.path.join(workdir, "results.md")).read()
  for m in methods:
    assert f"| {m} |" in table
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["results"]["score"]["n"] == c.eval.num_problems
  # eval.samples = 2 in runlocal: pass@2 of two sampled first attempts, its own column.
  assert 0.0 <= saved["results"]["score"]["pass@2"]["value"] <= 100.0
  assert "pass@2 (sampled t1) (ours)" in table
  phases = os.listdir(os.path.join(workdir, "checkpoints"))
  assert {"warmup", "score", "no_stage1"} <= set(phases)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "score"))) == [
      "r0_stage1", "r0_stage2"]
  assert os.listdir(os.path.join(workdir, "checkpoints", "no_stage1")) == ["r0_stage2"]
  # Each RL method moved the warmed-up params, each its own way.
  from test_resume import checkpoint_params  # pylint: disable=g-import-not-at-top
  warm = checkpoint_params(workdir, "warmup")["params"]
  moved = {m: checkpoint_params(workdir, f"{m}/r0_stage2")["params"]
           for m in ("score", "no_stage1", "star_stage2")}
  for m, p in moved.items():
    assert max(float(np.abs(p[k] - warm[k]).max()) for k in warm) > 1e-6, m
  assert any(not np.allclose(moved["score"][k], moved["no_stage1"][k]) for k in warm)
  # Both stages log the sampler/trainer mismatch of both turns: fp32 float noise here.
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  for stage in ("stage1", "stage2"):
    logged = [r[k] for r in rows for k in r if k.startswith(f"score/r0_{stage}/mismatch/abs_max")]
    assert logged and max(logged) < 1e-4, stage
  # A second run resumes: nothing is retrained, the same table comes out.
  mtime = os.path.getmtime(os.path.join(workdir, "checkpoints", "warmup"))
  again = suite.train(c, workdir)
  assert again == results
  assert os.path.getmtime(os.path.join(workdir, "checkpoints", "warmup")) == mtime


@pytest.mark.slow  # SCoRe on a mesh: test_trainers_mesh (training and the suite's evaluation)
def test_suite_trains_on_a_mesh(tmp_path):
  """The same suite with params, optimizer state and batches over a (data=2, fsdp=2) mesh."""
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"mesh.data": 2, "mesh.fsdp": 2})
  with c.unlocked():
    c.methods = ("base", "score")
  results = suite.train(c, str(tmp_path))
  assert set(results) == {"base", "score"}
  assert os.path.isdir(os.path.join(str(tmp_path), "checkpoints", "score", "r0_stage2"))


@pytest.mark.slow  # fast: test_lora's bf16 base + test_models' bf16 dots
def test_bfloat16_compute_trains_with_float32_params(tmp_path):
  """`model.dtype=bfloat16`: the model computes in bf16, params and updates stay fp32, and a
  Stage I + Stage II run gives finite losses and moves every parameter."""
  from score.trainers import common, envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"model.dtype": "bfloat16", "rl.stage1_steps": 2,
                          "rl.stage2_steps": 2})
  env = envs.make_env(c)
  model = common.build_model(c.model, env.tokenizer.vocab_size, seed=0)
  assert model.config.dtype == jnp.bfloat16
  jaxpr = str(jax.make_jaxpr(lambda t: model(t))(jnp.asarray([[1, 2, 3]])))
  assert "bf16" in jaxpr and "dot_general" in jaxpr
  policy, params = common.Policy.split(model)
  logged = []

  class Writer:
    def write_scalars(self, step, scalars):
      logged.extend(v for k, v in scalars.items() if k.endswith("/loss"))

    def write_texts(self, step, texts):
      pass

  trained = score_lib.train_score(policy, params, params, env, c.rl, workdir=str(tmp_path),
                                  writer=Writer())
  for k, v in trained.items():
    assert v.dtype == np.float32, k
    assert np.all(np.isfinite(np.asarray(v))), k
  moved = [k for k in trained if not np.array_equal(np.asarray(trained[k]), np.asarray(params[k]))]
  assert len(moved) == len(trained)
  assert len(logged) == 4 and np.all(np.isfinite(np.asarray(logged, np.float64)))


def test_bad_model_dtype_is_a_config_error():
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"model.dtype": "float16"})
  with pytest.raises(config_lib.ConfigError, match="model.dtype='float16'.*bfloat16"):
    common.build_model(c.model, 16)


def test_unknown_variant_names_are_config_errors(tmp_path):
  from score.trainers import common, envs  # pylint: disable=g-import-not-at-top
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"rl.advantage": "rlooo"})
  env = envs.make_env(c)
  policy, params = common.Policy.split(
      common.build_model(c.model, env.tokenizer.vocab_size, seed=0))
  with pytest.raises(ValueError, match="advantage='rlooo'.*rloo"):
    score_lib.train_score(policy, params, params, env, c.rl, workdir=str(tmp_path))


def test_cached_eval_is_redone_for_other_problems(tmp_path, monkeypatch):
  from score.eval import self_correction  # pylint: disable=g-import-not-at-top
  from score.data.records import Problem  # pylint: disable=g-import-not-at-top
  calls = []

  def fake(model, env, problems, **kwargs):
    calls.append([p.id for p in problems])
    return {"correct_t1": [0] * len(problems), "correct_t2": [1] * len(problems),
            "attempts": [{"id": p.id} for p in problems]}

  monkeypatch.setattr(self_correction, "two_attempts", fake)
  problems = [Problem(id=str(i), problem="", answer="") for i in range(4)]
  for ps in (problems, problems, problems[:3]):
    out = self_correction.evaluate_cached(str(tmp_path), "m", lambda: None, None, ps)
    assert out["metrics"]["n"] == len(ps)
  assert calls == [["0", "1", "2", "3"], ["0", "1", "2"]]  # the second call used the cache


def test_a_workdir_refuses_other_training_settings(tmp_path):
  """Resuming with another Stage I length would put the old Stage II on top of it."""
  from score.trainers import suite  # pylint: disable=g-import-not-at-top
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  suite.check_same_training(_runlocal_config(), str(tmp_path))
  # Evaluation, methods, the mesh and checkpoint cadence may change ...
  suite.check_same_training(_runlocal_config(**{
      "eval.num_problems": 3, "mesh.fsdp": 2, "rl.checkpoint_every": 7}), str(tmp_path))
  # ... training settings may not.
  with pytest.raises(config_lib.ConfigError, match=r"rl\.stage1_steps: 2 -> 5.*new --workdir"):
    suite.check_same_training(_runlocal_config(**{"rl.stage1_steps": 5}), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match=r"model\.dtype: 'float32' -> 'bfloat16'"):
    suite.check_same_training(_runlocal_config(**{"model.dtype": "bfloat16"}), str(tmp_path))
  # A workdir from before `model.dtype` existed resumes: the key had its default then.
  path = tmp_path / "training_config.json"
  saved = json.loads(path.read_text())
  del saved["model.dtype"]
  path.write_text(json.dumps(saved))
  suite.check_same_training(_runlocal_config(), str(tmp_path))
