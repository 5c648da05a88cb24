"""PPO with a value model (Tülu 3 RLVR): GAE and value loss through the trainer vs numpy,
a bandit it must solve, value-model initialisation, the runlocal config end to end."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import grpo_synthetic
from configs import rlvr_math
from score.models import token_logprobs
from score.trainers import grpo
from score.trainers import ppo
from score.trainers import reward_model as rm_lib
from test_grpo import ToyEnv, tiny_policy


def tiny_model_cfg():
  return ml_collections.ConfigDict(dict(
      model_dir="", hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
      intermediate_size=32, max_position_embeddings=16))


def value_model(policy_params, init="policy"):
  cfg = ml_collections.ConfigDict(dict(init=init, reward_model_dir=""))
  return ppo.init_value_model(cfg, tiny_model_cfg(), policy_params, vocab_size=8, seed=0)


def np_gae(rewards, values, mask, gamma, lam):
  """Textbook GAE over the valid tokens of each row (V after the last one = 0)."""
  adv = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    idx = np.flatnonzero(mask[b])
    next_v, next_a = 0.0, 0.0
    for t in idx[::-1]:
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      next_a = delta + gamma * lam * next_a
      adv[b, t] = next_a
      next_v = values[b, t]
  return adv, (adv + values) * mask


def test_gae_and_value_loss_through_trainer_match_numpy():
  policy, params = tiny_policy()
  env = ToyEnv()
  batch, _ = grpo.sample_batch(policy, params, env, env.train_problems(0, 6), group_size=1,
                               temperature=1.0, seed=1,
                               reward_cfg=grpo_synthetic.reward_config(verifiable=10.0,
                                                                       no_eos=1.0))
  value_def, vparams = value_model(params, init="scratch")
  # A non-zero head so that values are not trivially 0.
  vparams = dict(vparams)
  key = "['head']['kernel'].value"
  vparams[key] = jnp.asarray(np.random.default_rng(0).normal(0, 0.3, vparams[key].shape),
                             jnp.float32)
  tokens, mask = jnp.asarray(batch.tokens_NxL), jnp.asarray(batch.mask_NxL)
  values = np.asarray(ppo.values_fn(value_def)(vparams, tokens, mask), np.float64)
  # Alignment: V at token t = head(h_{t-1}).
  h = value_def.model(vparams).backbone.hidden(tokens, mask_BxL=mask)
  head = np.asarray(value_def.model(vparams).head(h)[..., 0])
  np.testing.assert_allclose(values[:, 1:], head[:, :-1], rtol=1e-5, atol=1e-6)

  rng = np.random.default_rng(1)
  lm = batch.loss_mask_NxL.astype(np.float64)
  ref = batch.sampler_logp_NxL + rng.normal(0, 0.2, lm.shape) * lm
  rl = rlvr_math.ppo_rl(beta=0.05, gamma=1.0, lam=0.95, whiten_advantages=False)
  adv, returns, r_tok = ppo.compute_advantages(batch.rewards_N, batch.sampler_logp_NxL,
                                               jnp.asarray(ref, jnp.float32), values,
                                               batch.loss_mask_NxL, rl)
  # numpy: −β·k1 on every response token, the sequence reward on the last one.
  expected_r = -0.05 * (batch.sampler_logp_NxL - ref) * lm
  for b in range(len(batch)):
    last = np.flatnonzero(lm[b])[-1]
    expected_r[b, last] += batch.rewards_N[b]
  np.testing.assert_allclose(np.asarray(r_tok), expected_r, rtol=1e-5, atol=1e-6)
  exp_adv, exp_ret = np_gae(expected_r, values * lm, lm, 1.0, 0.95)
  np.testing.assert_allclose(np.asarray(adv), exp_adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(returns), exp_ret, rtol=1e-4, atol=1e-5)

  # Whitening: zero mean, unit variance over response tokens.
  rl_w = rlvr_math.ppo_rl(beta=0.05, whiten_advantages=True)
  adv_w, _, _ = ppo.compute_advantages(batch.rewards_N, batch.sampler_logp_NxL,
                                       jnp.asarray(ref, jnp.float32), values,
                                       batch.loss_mask_NxL, rl_w)
  sel = np.asarray(adv_w)[lm > 0]
  assert abs(sel.mean()) < 1e-5 and abs(sel.std() - 1) < 1e-3

  # The value loss of the trainer's objective, at moved values, against numpy.
  old_values = values + rng.normal(0, 0.5, values.shape) * lm
  arrays = {"tokens": tokens, "mask": mask, "loss_mask": jnp.asarray(batch.loss_mask_NxL),
            "old_logp": jnp.asarray(batch.sampler_logp_NxL),
            "sampler_logp": jnp.asarray(batch.sampler_logp_NxL),
            "ref_logp": jnp.asarray(ref, jnp.float32),
            "advantages": adv, "returns": returns,
            "old_values": jnp.asarray(old_values, jnp.float32)}
  rl_l = rlvr_math.ppo_rl(value_clip=0.2, vf_coef=0.1, reduction="token")
  total, m = ppo.ppo_loss(params, vparams, arrays, policy=policy, value_def=value_def, rl=rl_l)
  v_clip = old_values + np.clip(values - old_values, -0.2, 0.2)
  ret = np.asarray(returns, np.float64)
  vf = 0.5 * np.maximum((values - ret) ** 2, (v_clip - ret) ** 2) * lm
  np.testing.assert_allclose(float(m["value_loss"]), vf.sum() / lm.sum(), rtol=1e-4)
  # Policy term at ρ = 1: −mean advantage over tokens.
  a = np.asarray(adv, np.float64)
  np.testing.assert_allclose(float(m["pg_loss"]), -(a * lm).sum() / lm.sum(), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(float(total), float(m["pg_loss"]) + 0.1 * float(m["value_loss"]),
                             rtol=1e-5)
  assert float(m["ratio_max_dev"]) < 1e-5
  # Sequence-level TIS: π_old / π_sampler = e^0.1 on each of a row's n tokens, so the row's
  # weight is min(e^(0.1 n), 1.5); the value loss is untouched.
  rl_tis = rlvr_math.ppo_rl(value_clip=0.2, vf_coef=0.1, reduction="token",
                            tis_level="sequence", tis_cap=1.5)
  shifted = dict(arrays, sampler_logp=arrays["old_logp"] - 0.1 * jnp.asarray(lm, jnp.float32))
  _, m_tis = ppo.ppo_loss(params, vparams, shifted, policy=policy, value_def=value_def,
                          rl=rl_tis)
  w = np.minimum(np.exp(0.1 * lm.sum(1, keepdims=True)), 1.5)
  np.testing.assert_allclose(float(m_tis["pg_loss"]), -(w * a * lm).sum() / lm.sum(),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(m_tis["value_loss"]), float(m["value_loss"]), rtol=1e-6)


def test_ppo_bandit_learns_the_optimal_action(tmp_path):
  """One-token bandit with 5 arms (ids 3..7): PPO must put its mass on the rewarded arm."""
  policy, params = tiny_policy(seed=1)
  env = ToyEnv(target=6)
  env.max_new_tokens = 1  # instance override: one action per episode
  value_def, vparams = value_model(params)
  model = policy.model(params)
  prompt = jnp.asarray([[1, 6]])
  p_before = float(jnp.exp(token_logprobs(model, prompt)[0, 1]))
  rl = rlvr_math.ppo_rl(steps=12, prompts_per_step=32, lr=3e-2, value_lr=3e-2, beta=0.0,
                        num_epochs=2, num_minibatches=2, checkpoint_every=100)
  reward = grpo_synthetic.reward_config(verifiable=1.0)
  new, _ = ppo.train_ppo(policy, params, params, value_def, vparams, env, rl, reward,
                         workdir=str(tmp_path))
  p_after = float(jnp.exp(token_logprobs(policy.model(new), prompt)[0, 1]))
  assert p_before < 0.3 and p_after > 0.9, (p_before, p_after)


def test_value_init_from_policy_and_from_reward_model(tmp_path):
  policy, params = tiny_policy()
  value_def, vparams = value_model(params, init="policy")
  key = "['layers']['attn']['q'].value"
  np.testing.assert_array_equal(vparams["['backbone']" + key], params[key])
  assert not any("lm_head" in k for k in vparams)
  assert float(jnp.abs(vparams["['head']['kernel'].value"]).sum()) == 0.0  # V ≡ 0 at start
  # A "trained" reward model, exported and loaded as the value model.
  rm = {k: v + 1.0 for k, v in vparams.items()}
  rm_lib.export_params(str(tmp_path), rm)
  cfg = ml_collections.ConfigDict(dict(init="reward_model", reward_model_dir=str(tmp_path)))
  _, loaded = ppo.init_value_model(cfg, tiny_model_cfg(), params, vocab_size=8, seed=0)
  for k in rm:
    np.testing.assert_array_equal(loaded[k], rm[k])
  with pytest.raises(FileNotFoundError, match="reward_model"):
    bad = ml_collections.ConfigDict(dict(init="reward_model", reward_model_dir=str(tmp_path / "x")))
    ppo.init_value_model(bad, tiny_model_cfg(), params, vocab_size=8, seed=0)


def test_last_token_mask():
  m = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
  np.testing.assert_array_equal(ppo.last_token_mask(m),
                                [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])


def test_rlvr_runlocal_end_to_end(tmp_path):
  config = rlvr_math.get_config("runlocal")
  assert config.reward.verifiable.weight == 10.0 and config.reward.no_eos.penalty == -10.0
  assert (config.rl.gamma, config.rl.lam, config.rl.kl_estimator, config.rl.kl_placement) == (
      1.0, 0.95, "k1", "reward")
  results = ppo.train(config, str(tmp_path))
  assert set(results) == {"base", "ppo"}
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  steps = [r for r in rows if "ppo/value_loss" in r]
  assert len(steps) == 2
  for r in steps:
    assert r["ppo/ratio_max_dev_first"] < 1e-4 and np.isfinite(r["ppo/loss"])
    assert r["ppo/mismatch/abs_max"] < 1e-4  # the trainer's π_old vs the sampler's, fp32
  assert os.path.exists(tmp_path / "results.md")
  # PPO moved the warmed-up policy (and the value model was trained from its copy).
  from test_resume import checkpoint_params  # pylint: disable=g-import-not-at-top
  warm = checkpoint_params(str(tmp_path), "warmup")["params"]
  trained = checkpoint_params(str(tmp_path), "ppo")
  assert max(float(np.abs(trained["params"][k] - warm[k]).max()) for k in warm) > 1e-6
  assert any(np.abs(trained["value_params"][k]).max() > 0 for k in trained["value_params"])


def test_rlvr_math_config():
  c = rlvr_math.get_config("model_dir=/ckpt,rm_dir=/rm")
  assert c.value.init == "reward_model" and c.value.reward_model_dir == "/rm"
  assert (c.rl.beta, c.rl.eps_low, c.rl.num_epochs, c.rl.vf_coef) == (0.05, 0.2, 4, 0.1)
  assert rlvr_math.get_config("model_dir=/ckpt").value.init == "policy"


@pytest.mark.slow
def test_rlvr_math_local_text_env_path(tmp_path):
  results = ppo.train(rlvr_math.get_config("math_local"), str(tmp_path))
  assert results["base"]["n"] == 4 and "ppo" in results
