"""GRPO / Dr. GRPO / DAPO trainer and reward composition (score.trainers.grpo, rewards_compose)."""

import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import dapo_math
from configs import grpo_math
from configs import grpo_synthetic
from score.models import ModelConfig, Transformer
from score.trainers import common
from score.trainers import grpo
from score.trainers import rewards_compose


# ------------------------------------------------------------------------------------------------
# A toy environment: the prompt is BOS, the answer one token, EOS-terminated.

@dataclasses.dataclass(frozen=True)
class Prob:
  id: str
  answer: int


class ToyEnv:
  """A bandit: reward 1 when the first generated token is the target (ids 0-2 are special)."""
  eos_ids = (2,)
  pad_id = 0
  max_new_tokens = 3
  max_len = 5

  def __init__(self, target=5):
    self.target = target
    self.heldout = [Prob("h0", target)]

  def prompt_tokens(self, problem):
    return [1]

  def train_problems(self, step, n):
    return [Prob(f"p{step}-{i}", self.target) for i in range(n)]

  def decode(self, ids):
    return " ".join(str(i) for i in ids)

  def reward(self, problem, ids):
    return float(list(ids[:1]) == [problem.answer])


def tiny_policy(vocab=8, seed=0):
  config = ModelConfig.tiny(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, intermediate_size=32,
                            max_position_embeddings=16)
  return common.Policy.split(Transformer(config, rngs=nnx.Rngs(seed)))


def rl_cfg(**kw):
  return grpo_synthetic.rl_config(**{**dict(steps=2, prompts_per_step=4, samples_per_prompt=4,
                                             lr=1e-2, checkpoint_every=100, log_every=1), **kw})


def reward_cfg(**kw):
  return grpo_synthetic.reward_config(**kw)


# ------------------------------------------------------------------------------------------------
# End to end.

def test_grpo_runlocal_end_to_end(tmp_path):
  """The launcher path: warm-up, base eval, 2 GRPO steps (2 epochs × 2 minibatches), eval."""
  config = grpo_synthetic.get_config("runlocal")
  results = grpo.train(config, str(tmp_path))
  assert set(results) == {"base", "grpo"}
  assert 0.0 <= results["grpo"]["accuracy"] <= 100.0
  # eval.samples = 4 in runlocal: pass@k and maj@k for k = 1, 2, 4, monotone in k.
  r = results["grpo"]
  assert r["pass@1"] <= r["pass@2"] <= r["pass@4"] and 0.0 <= r["maj@4"] <= 100.0
  assert "| pass@1 | maj@1 | pass@2 |" in open(tmp_path / "results.md").read()
  for name in ("results.json", "results.md", "metrics.jsonl", "config.json"):
    assert os.path.exists(tmp_path / name), name
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  steps = [r for r in rows if "grpo/loss" in r]
  assert [r["step"] for r in steps] == [1, 2]
  for r in steps:
    # The first update of a step uses the sampler's policy: ρ = 1 up to float error.
    assert r["grpo/ratio_max_dev_first"] < 1e-4
    assert np.isfinite(r["grpo/loss"])
    # π_old is the trainer's recomputation; in fp32 it matches the sampler's log-probs.
    assert r["grpo/mismatch/abs_max"] < 1e-4 and r["grpo/mismatch/frac"] == 0.0
  # Later updates of the same step see a moved policy (the test above can fail).
  assert max(r["grpo/ratio_max_dev"] for r in steps) > 1e-4
  # Resuming a finished run is a no-op that returns the same results.
  again = grpo.train(config, str(tmp_path))
  assert again["grpo"] == results["grpo"]


@pytest.mark.slow
@pytest.mark.parametrize("module", [grpo_math, dapo_math])
def test_math_configs_runlocal(module, tmp_path):
  results = grpo.train(module.get_config("runlocal"), str(tmp_path))
  assert "grpo" in results


@pytest.mark.slow
@pytest.mark.parametrize("module", [grpo_math, dapo_math])
def test_math_local_text_env_path(module, tmp_path):
  """MATH data, prompts and answer checker through the trainer on a tiny random checkpoint."""
  config = module.get_config("math_local")
  results = grpo.train(config, str(tmp_path))
  assert results["base"]["n"] == 4
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  step = [r for r in rows if "grpo/loss" in r][0]
  assert step["grpo/ratio_max_dev_first"] < 1e-4


def test_math_configs_need_model_dir(tmp_path):
  for module in (grpo_math, dapo_math):
    config = module.get_config("")
    assert config.task.name == "math" and config.rl.steps > 100
    with pytest.raises(ValueError, match="model_dir"):
      grpo.train(config, str(tmp_path))
  dapo = dapo_math.get_config("model_dir=/nonexistent")
  assert (dapo.rl.eps_low, dapo.rl.eps_high, dapo.rl.beta) == (0.2, 0.28, 0.0)
  assert dapo.rl.dynamic_sampling and dapo.rl.reduction == "token"
  assert dapo.reward.dapo_overlong.weight == 1.0
  grpo_cfg = grpo_math.get_config("model_dir=/nonexistent")
  assert (grpo_cfg.rl.beta, grpo_cfg.rl.kl_estimator, grpo_cfg.rl.samples_per_prompt) == (
      0.04, "k3", 64)


# ------------------------------------------------------------------------------------------------
# Importance ratio and the loss against numpy.

@pytest.fixture(scope="module")
def toy_batch():
  policy, params = tiny_policy()
  env = ToyEnv()
  problems = env.train_problems(0, 4)
  batch, _ = grpo.sample_batch(policy, params, env, problems, group_size=4, temperature=1.0,
                               seed=3, reward_cfg=reward_cfg())
  return policy, params, env, batch


def _arrays(batch, advantages, ref_logp=None):
  return {"tokens": jnp.asarray(batch.tokens_NxL), "mask": jnp.asarray(batch.mask_NxL),
          "loss_mask": jnp.asarray(batch.loss_mask_NxL),
          "old_logp": jnp.asarray(batch.sampler_logp_NxL),
          "sampler_logp": jnp.asarray(batch.sampler_logp_NxL),
          "ref_logp": jnp.zeros(batch.tokens_NxL.shape) if ref_logp is None else ref_logp,
          "advantages": jnp.asarray(advantages, jnp.float32)}


def test_first_epoch_ratio_is_one(toy_batch):
  """Sampler log-probs (KV-cache decode) == trainer log-probs (full forward), per token."""
  policy, params, _, batch = toy_batch
  assert batch.loss_mask_NxL.sum() > 0
  adv = np.linspace(-1, 1, len(batch))
  _, m = grpo.grpo_loss(params, _arrays(batch, adv), policy=policy, rl=rl_cfg(beta=0.0),
                        loss_constant=3.0)
  assert float(m["ratio_max_dev"]) < 1e-5
  assert abs(float(m["ratio"]) - 1.0) < 1e-6
  assert float(m["clip_frac"]) == 0.0


def _np_clip_loss(logp, old, adv, mask, eps_low, eps_high):
  ratio = np.exp(logp - old)
  return np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps_low, 1 + eps_high)) * mask


@pytest.mark.parametrize("reduction", ["sequence", "token", "constant"])
def test_loss_matches_numpy(toy_batch, reduction):
  """Clipped surrogate (clip-higher) + β·k3 in the loss, reduced by name, against numpy."""
  policy, params, _, batch = toy_batch
  rng = np.random.default_rng(0)
  mask = batch.loss_mask_NxL.astype(np.float64)
  old = batch.sampler_logp_NxL + rng.normal(0, 0.3, mask.shape) * mask  # off-policy by a bit
  ref = batch.sampler_logp_NxL + rng.normal(0, 0.5, mask.shape) * mask
  adv = rng.normal(size=len(batch))
  arrays = _arrays(batch, adv, jnp.asarray(ref, jnp.float32))
  arrays["old_logp"] = jnp.asarray(old, jnp.float32)
  rl = rl_cfg(beta=0.1, eps_low=0.2, eps_high=0.28, reduction=reduction)
  loss, _ = grpo.grpo_loss(params, arrays, policy=policy, rl=rl, loss_constant=3.0)
  from score.models import token_logprobs
  logp = np.asarray(token_logprobs(policy.model(params), arrays["tokens"], arrays["mask"]),
                    np.float64)
  per_tok = _np_clip_loss(logp, old, adv[:, None], mask, 0.2, 0.28)
  lr = np.clip(logp - ref, -20, 20)
  per_tok = per_tok + 0.1 * (np.exp(-lr) + lr - 1) * mask
  if reduction == "token":
    expected = per_tok.sum() / mask.sum()
  elif reduction == "sequence":
    n = mask.sum(1)
    expected = np.mean((per_tok.sum(1) / np.maximum(n, 1))[n > 0])
  else:
    expected = per_tok.sum() / (len(batch) * 3.0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("policy_loss", ["ppo_clip", "gspo"])
def test_truncated_importance_weights_scale_the_policy_term_only(toy_batch, policy_loss):
  """TIS off: the sampler's log-probs do not enter the loss (perturbing them changes neither
  loss nor gradient). Token TIS with π_old / π_sampler = 3 on every token and cap 2: the
  policy term doubles, the KL term does not, and the gradient changes."""
  import jax  # pylint: disable=g-import-not-at-top
  policy, params, _, batch = toy_batch
  rng = np.random.default_rng(2)
  mask = batch.loss_mask_NxL.astype(np.float32)
  ref = batch.sampler_logp_NxL + rng.normal(0, 0.5, mask.shape) * mask
  arrays = _arrays(batch, rng.normal(size=len(batch)), jnp.asarray(ref, jnp.float32))
  arrays["old_logp"] = arrays["old_logp"] + jnp.asarray(rng.normal(0, 0.3, mask.shape) * mask,
                                                        jnp.float32)
  perturbed = dict(arrays, sampler_logp=arrays["old_logp"] - np.log(3.0) * mask)

  def run(batch_arrays, tis_level):
    rl = rl_cfg(beta=0.1, policy_loss=policy_loss, tis_level=tis_level, tis_cap=2.0)
    fn = lambda p: grpo.grpo_loss(p, batch_arrays, policy=policy, rl=rl, loss_constant=3.0)
    return jax.value_and_grad(fn, has_aux=True)(params)

  (loss_a, m_a), g_a = run(arrays, "none")
  # The named surrogate is the one applied (PPO-clip and GSPO differ on this batch).
  from score.losses import ppo as ppo_losses  # pylint: disable=g-import-not-at-top
  from score.losses import reduce as reduce_lib  # pylint: disable=g-import-not-at-top
  from score.models import token_logprobs  # pylint: disable=g-import-not-at-top
  logp = token_logprobs(policy.model(params), arrays["tokens"], arrays["mask"])
  adv = arrays["advantages"][:, None] * arrays["loss_mask"]
  want = {name: reduce_lib.reduce(ppo_losses.SURROGATES[name](
      logp, arrays["old_logp"], adv, arrays["loss_mask"], 0.2, 0.2)[0], arrays["loss_mask"],
      "sequence") for name in ("ppo_clip", "gspo")}
  assert abs(float(want["ppo_clip"]) - float(want["gspo"])) > 1e-3
  np.testing.assert_allclose(m_a["pg_loss"], want[policy_loss], rtol=1e-5)
  (loss_b, m_b), g_b = run(perturbed, "none")
  assert float(loss_a) == float(loss_b)
  for k in g_a:
    np.testing.assert_array_equal(g_a[k], g_b[k], err_msg=k)
  (loss_c, m_c), g_c = run(perturbed, "token")
  np.testing.assert_allclose(m_c["pg_loss"], 2.0 * m_a["pg_loss"], rtol=1e-5)
  np.testing.assert_allclose(m_c["kl"], m_a["kl"], rtol=1e-6)
  np.testing.assert_allclose(float(loss_c) - float(loss_a), float(m_a["pg_loss"]), rtol=1e-4)
  assert max(float(jnp.max(jnp.abs(g_c[k] - g_a[k]))) for k in g_a) > 1e-4
  np.testing.assert_allclose(m_c["tis_weight"], 2.0, rtol=1e-6)


def test_advantage_std_scale_and_eps_reach_the_estimator(tmp_path, monkeypatch):
  """rl.adv_std / adv_scale / adv_eps go to `pg.grpo` (and nothing but eps to other kinds)."""
  from score.losses import pg  # pylint: disable=g-import-not-at-top
  calls = []
  real = pg.flat_advantages

  def spy(*args, **kw):
    calls.append((args[2], kw))
    return real(*args, **kw)
  monkeypatch.setattr(pg, "flat_advantages", spy)
  policy, params = tiny_policy()
  for advantage in ("grpo", "rloo"):
    rl = rl_cfg(steps=1, beta=0.0, advantage=advantage, adv_std="population", adv_scale="batch",
                adv_eps=1e-4)
    grpo.train_grpo(policy, params, params, ToyEnv(), rl, reward_cfg(),
                    workdir=str(tmp_path / advantage))
  assert calls == [("grpo", dict(eps=1e-4, std="population", scale="batch")),
                   ("rloo", dict(eps=1e-4))]


def test_kl_in_reward_is_sequence_sum_of_estimator():
  old = np.array([[0.0, -1.0, -2.0, -0.5]])
  ref = np.array([[0.0, -1.5, -1.0, -3.0]])
  mask = np.array([[0, 1, 1, 0]])
  l = (old - ref)[0, 1:3]
  np.testing.assert_allclose(grpo.sequence_kl(old, ref, mask, "k1"), [l.sum()], rtol=1e-6)
  np.testing.assert_allclose(grpo.sequence_kl(old, ref, mask, "k3"),
                             [np.sum(np.exp(-l) + l - 1)], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Dynamic sampling.

def _fake_round_factory(group_size, num_groups, seed):
  """Rounds of `num_groups` groups with 0/1 rewards; about half the groups all-equal."""

  def sample_round(r):
    rng = np.random.default_rng([seed, r])
    rewards = np.zeros((num_groups, group_size), np.float32)
    for g in range(num_groups):
      kind = rng.integers(3)
      rewards[g] = 0.0 if kind == 0 else (1.0 if kind == 1 else rng.integers(0, 2, group_size))
    rewards = rewards.reshape(-1)
    n = len(rewards)
    batch = grpo.RolloutBatch(
        tokens_NxL=np.tile(np.arange(n)[:, None], (1, 4)).astype(np.int32),
        mask_NxL=np.ones((n, 4), np.int32), loss_mask_NxL=np.ones((n, 4), np.int32),
        sampler_logp_NxL=np.zeros((n, 4), np.float32), rewards_N=rewards, correct_N=rewards,
        lengths_N=np.ones(n, np.int32), finished_N=np.ones(n, bool),
        active_N=np.ones(n, np.float32), problems=[(r, i // group_size) for i in range(n)],
        responses=[[i] for i in range(n)])
    return batch, {"reward/total": float(rewards.mean())}

  return sample_round


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_rounds", [1, 2, 8])
def test_dynamic_sampling_never_yields_all_equal_group(seed, max_rounds):
  g, n = 4, 6
  calls = []
  base = _fake_round_factory(g, n, seed)

  def sample_round(r):
    calls.append(r)
    return base(r)

  batch, metrics = grpo.collect_groups(sample_round, n, g, dynamic=True, max_rounds=max_rounds)
  assert len(batch) == n * g  # static shape
  assert len(calls) <= max_rounds and calls == list(range(len(calls)))
  rewards = batch.rewards_N.reshape(n, g)
  active = batch.active_N.reshape(n, g)
  assert np.all((active == active[:, :1]))  # whole groups are active or not
  for grp, act, lm in zip(rewards, active[:, 0], batch.loss_mask_NxL.reshape(n, g, -1)):
    if act:
      assert grp.max() != grp.min()
    else:
      assert lm.sum() == 0  # fillers contribute no loss
  assert metrics["dynamic/active_groups"] == active[:, 0].sum()
  # Groups come from the sampled rounds, in order, each at most once.
  keys = [batch.problems[i * g] for i in range(n) if active[i, 0]]
  assert len(set(keys)) == len(keys)


def test_dynamic_sampling_all_equal_everywhere_gives_no_active_group():
  def sample_round(r):
    b, m = _fake_round_factory(2, 3, 0)(r)
    b.rewards_N[:] = 1.0
    return b, m
  batch, metrics = grpo.collect_groups(sample_round, 3, 2, dynamic=True, max_rounds=3)
  assert metrics["dynamic/rounds"] == 3 and batch.active_N.sum() == 0
  assert batch.loss_mask_NxL.sum() == 0


def test_without_dynamic_sampling_everything_is_kept():
  batch, metrics = grpo.collect_groups(_fake_round_factory(4, 5, 1), 5, 4, dynamic=False,
                                       max_rounds=8)
  assert batch.active_N.sum() == 20 and metrics["dynamic/rounds"] == 1


# ------------------------------------------------------------------------------------------------
# Learning on the toy environment (advantage estimators by name).

@pytest.mark.parametrize("advantage,reduction,placement,beta", [
    ("grpo", "sequence", "loss", 0.0),
    pytest.param("dr_grpo", "constant", "loss", 0.04, marks=pytest.mark.slow),
    pytest.param("rloo", "token", "reward", 0.01, marks=pytest.mark.slow),
    pytest.param("grpo", "token", "reward", 0.01, marks=pytest.mark.slow),
])
def test_grpo_learns_toy_target(tmp_path, advantage, reduction, placement, beta):
  policy, params = tiny_policy()
  env = ToyEnv(target=5)
  before = grpo.evaluate(policy.model(params), env, env.heldout * 4)["accuracy"]
  rl = rl_cfg(steps=12, prompts_per_step=8, samples_per_prompt=8, advantage=advantage,
              reduction=reduction, lr=3e-2, beta=beta, kl_placement=placement,
              kl_estimator="k3" if placement == "loss" else "k1", temperature=1.0)
  new = grpo.train_grpo(policy, params, params, env, rl, reward_cfg(), workdir=str(tmp_path))
  after = grpo.evaluate(policy.model(new), env, env.heldout * 4)["accuracy"]
  assert before == 0.0 and after == 100.0


# ------------------------------------------------------------------------------------------------
# Reward composition.

class TextEnv(ToyEnv):
  def decode(self, ids):
    return "".join(chr(ord("a") + i) for i in ids if i != 2)


def test_reward_components_hand_computed():
  env = TextEnv(target=5)
  problems = [Prob("a", 5)] * 4
  # G = 4: right+EOS (len 2), wrong+EOS (len 2), right without EOS (len 3), wrong (len 1).
  responses = [[5, 2], [4, 2], [5, 5, 5], [3]]
  cfg = ml_collections.ConfigDict(dict(
      verifiable=dict(weight=10.0),
      no_eos=dict(weight=1.0, penalty=-10.0),
      kimi_length=dict(weight=2.0),
      dapo_overlong=dict(weight=1.0, max_len=3, cache_len=2),
      format=dict(weight=0.5, pattern=r"^f", fullmatch=False),
      exact=dict(type="grader", weight=3.0, grader=dict(
          type="string_check", name="exact", input="{{sample.output_text}}",
          reference="f", operation="eq")),
  ))
  rewards, correct, metrics = rewards_compose.score_responses(
      env, problems, responses, group_size=4, reward_cfg=cfg)
  np.testing.assert_array_equal(correct, [1, 0, 1, 0])
  verifiable = 10 * np.array([1, 0, 1, 0])
  no_eos = np.array([0, 0, -10, -10])
  lengths = np.array([2, 2, 3, 1])
  lam = 0.5 - (lengths - 1) / 2  # [0, 0, -0.5, 0.5]
  kimi = 2 * np.where(correct > 0, lam, np.minimum(0, lam))
  overlong = np.array([-0.5, -0.5, -1.0, 0.0])  # L_max 3, cache 2: 0 up to 1, then linear
  fmt = 0.5 * np.array([1, 0, 1, 0])
  exact = 3 * np.array([1, 0, 0, 0])
  np.testing.assert_allclose(rewards, verifiable + no_eos + kimi + overlong + fmt + exact,
                             rtol=1e-6)
  assert metrics["reward/no_eos"] == pytest.approx(-5.0)
  assert metrics["reward/correct"] == pytest.approx(0.5)


def test_reward_unknown_component_and_zero_weight():
  env = TextEnv()
  bad = ml_collections.ConfigDict(dict(length=dict(weight=1.0)))
  with pytest.raises(ValueError, match="unknown type 'length'"):
    rewards_compose.score_responses(env, [Prob("a", 5)], [[5, 2]], group_size=1, reward_cfg=bad)
  off = ml_collections.ConfigDict(dict(grader=dict(weight=0.0, grader=dict(type="nonexistent"))))
  rewards, _, _ = rewards_compose.score_responses(env, [Prob("a", 5)], [[5, 2]], group_size=1,
                                                  reward_cfg=off)
  assert rewards.tolist() == [0.0]
