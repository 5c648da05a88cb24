"""Resume after a crash, for every training phase that protects compute: SCoRe Stage I and
Stage II, PPO, DPO and the SFT warm-up (fast, in-process; GRPO slow), and the SFT warm-up, a
Self-Rewarding iteration, GRPO, PPO, DPO and the SCoRe suite killed with a real SIGKILL in a
subprocess (slow).

A run is crashed right after phase P saved its checkpoint at step k (the `common.
after_checkpoint` hook: in-process it raises `Killed`; in a subprocess `SCORE_KILL_AFTER=P:k`
makes the process SIGKILL itself, so the point of the kill is exact, no polling). The re-run
must end with the uninterrupted run's params and log the same metrics, and must not redo the
steps before the kill. Checked once (commit of this file): with `ckpt.restore` removed from
`common.train_loop` every test here fails (steps 1..k are trained and logged again).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from score.trainers import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(BaseException):
  """The in-process crash (a BaseException: no trainer's `except Exception` swallows it)."""


class Rows:
  """A metrics writer that keeps the rows (step, {name: value}) it was given."""

  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((int(step), {k: float(v) for k, v in scalars.items()
                                  if "time/" not in k}))

  def write_texts(self, step, texts):
    pass


def _steps(rows, phase):
  return [s for s, m in rows if any(k.startswith(phase + "/") for k in m)]


def kill_and_resume(monkeypatch, run, *kills):
  """`run(workdir, writer)` uninterrupted, then on another workdir killed at each `(phase,
  step)` of `kills` in turn (right after that checkpoint), then run to the end. Returns
  `(reference, resumed)` as `(result, rows)` pairs; `resumed`'s rows are those of every
  attempt on the killed workdir, in order."""
  ref_rows, rows = Rows(), Rows()
  ref = run("ref", ref_rows)
  for phase, step in kills:
    def hook(name, s, at=(phase, step)):
      if (name, s) == at:
        raise Killed(f"{name}:{s}")
    monkeypatch.setattr(common, "after_checkpoint", hook)
    with pytest.raises(Killed):  # raised only at that checkpoint
      run("killed", rows)
  monkeypatch.setattr(common, "after_checkpoint", lambda name, s: None)
  resumed = run("killed", rows)
  return (ref, ref_rows.rows), (resumed, rows.rows)


def assert_same_params(a, b, what=""):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg=what)


def assert_same_rows(ref_rows, rows, phase):
  """Each step of `phase` logged once across the killed and the resumed run, with the
  uninterrupted run's values (sampled rewards, losses, KL: what the data and params give)."""
  assert _steps(rows, phase) == _steps(ref_rows, phase), "steps were redone (or skipped)"
  ref = {s: m for s, m in ref_rows if any(k.startswith(phase + "/") for k in m)}
  for s, m in rows:
    if s in ref and any(k.startswith(phase + "/") for k in m):
      assert m.keys() == ref[s].keys()
      for k in m:
        assert m[k] == pytest.approx(ref[s][k], rel=1e-5, abs=1e-6, nan_ok=True), (s, k)


# ---------------------------------------------------------------------------------------------
# Fast: one representative per trainer family, in-process, tiny models.


@pytest.fixture(scope="module")
def score_setup():
  from score.trainers import envs  # pylint: disable=g-import-not-at-top
  from test_score_trainer import _runlocal_config  # pylint: disable=g-import-not-at-top
  c = _runlocal_config(**{"rl.stage1_steps": 3, "rl.stage2_steps": 3, "rl.checkpoint_every": 1,
                          "rl.log_every": 1})
  env = envs.make_env(c)
  model = common.build_model(c.model, env.tokenizer.vocab_size, seed=0)
  policy, params = common.Policy.split(model)
  return c, env, policy, params


def test_score_stages_killed_and_resumed(score_setup, tmp_path, monkeypatch):
  """Killed after step 1 of 3 of Stage I, re-run and killed after step 2 of 3 of Stage II,
  re-run: SCoRe ends where the uninterrupted run does, with the same logged rewards and
  losses, and no step trained twice."""
  from score.trainers import score as score_lib  # pylint: disable=g-import-not-at-top
  c, env, policy, params = score_setup

  def run(name, writer):
    return score_lib.train_score(policy, params, params, env, c.rl,
                                 workdir=str(tmp_path / name), writer=writer)
  (ref, ref_rows), (resumed, rows) = kill_and_resume(
      monkeypatch, run, ("score/r0_stage1", 1), ("score/r0_stage2", 2))
  assert_same_params(ref, resumed)
  for phase in ("score/r0_stage1", "score/r0_stage2"):
    assert_same_rows(ref_rows, rows, phase)


@pytest.mark.slow  # PPO is the fast representative of the RLVR trainers
def test_grpo_killed_and_resumed(tmp_path, monkeypatch):
  from score.trainers import grpo  # pylint: disable=g-import-not-at-top
  from test_grpo import ToyEnv, reward_cfg, rl_cfg, tiny_policy  # pylint: disable=g-import-not-at-top
  policy, params = tiny_policy()
  env = ToyEnv(target=5)
  # Two epochs of two minibatches, a linear schedule: optimizer state and step count matter.
  rl = rl_cfg(steps=4, checkpoint_every=1, num_epochs=2, num_minibatches=2, beta=0.04,
              schedule="linear", lr=3e-2)

  def run(name, writer):
    return grpo.train_grpo(policy, params, params, env, rl, reward_cfg(),
                           workdir=str(tmp_path / name), writer=writer)
  (ref, ref_rows), (resumed, rows) = kill_and_resume(monkeypatch, run, ("grpo", 2))
  assert_same_params(ref, resumed)
  assert_same_rows(ref_rows, rows, "grpo")


def test_ppo_killed_and_resumed(tmp_path, monkeypatch):
  """The policy, the value model and both optimizer states come back."""
  from configs import rlvr_math  # pylint: disable=g-import-not-at-top
  from score.trainers import ppo  # pylint: disable=g-import-not-at-top
  from test_grpo import ToyEnv, reward_cfg, tiny_policy  # pylint: disable=g-import-not-at-top
  from test_ppo import value_model  # pylint: disable=g-import-not-at-top
  policy, params = tiny_policy(seed=1)
  env = ToyEnv(target=6)
  value_def, vparams = value_model(params)
  rl = rlvr_math.ppo_rl(steps=3, prompts_per_step=8, lr=3e-2, value_lr=3e-2, beta=0.01,
                        num_epochs=2, num_minibatches=2, checkpoint_every=1, log_every=1)

  def run(name, writer):
    return ppo.train_ppo(policy, params, params, value_def, vparams, env, rl, reward_cfg(),
                         workdir=str(tmp_path / name), writer=writer)
  (ref, ref_rows), (resumed, rows) = kill_and_resume(monkeypatch, run, ("ppo", 1))
  assert_same_params(ref[0], resumed[0], "policy")
  assert_same_params(ref[1], resumed[1], "value model")
  assert_same_rows(ref_rows, rows, "ppo")


def test_dpo_killed_and_resumed(tmp_path, monkeypatch):
  """Killed mid-epoch: the data position (a function of the step) and the cosine schedule
  continue where they stopped."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from score.trainers import dpo  # pylint: disable=g-import-not-at-top
  from test_grpo import tiny_policy  # pylint: disable=g-import-not-at-top
  policy, params = tiny_policy()
  rng = np.random.default_rng(0)
  pairs = []
  for _ in range(6):
    n = int(rng.integers(3, 6))
    chosen, rejected = rng.integers(3, 8, n).tolist(), rng.integers(3, 8, n + 1).tolist()
    pairs.append(([1] + chosen, [0] + [1] * n, [1] + rejected, [0] + [1] * (n + 1)))
  cfg = ml_collections.ConfigDict(dict(
      beta=0.5, label_smoothing=0.0, batch_size=4, steps=0, epochs=2.0, lr=3e-2,
      schedule="cosine", end_lr_factor=0.1, warmup_steps=0, grad_clip=1.0, weight_decay=0.0,
      checkpoint_every=1, log_every=1))

  def run(name, writer):
    return dpo.train_dpo(policy, params, params, pairs, cfg, workdir=str(tmp_path / name),
                         name="dpo", seed=3, writer=writer)
  (ref, ref_rows), (resumed, rows) = kill_and_resume(monkeypatch, run, ("dpo", 1))
  assert_same_params(ref[0], resumed[0])
  assert ref[1] == pytest.approx(resumed[1], rel=1e-5)
  assert_same_rows(ref_rows, rows, "dpo")


def test_sft_warmup_killed_and_resumed(score_setup, tmp_path, monkeypatch):
  """The SFT warm-up (also STaR / Pair-SFT's loop) killed after step 11 of 12: metrics are
  logged every 10 steps, so a re-run from scratch would log step 10 twice."""
  from score.trainers import sft  # pylint: disable=g-import-not-at-top
  c, env, policy, params = score_setup
  cfg = common.unfrozen(common.frozen(c.warmup))
  cfg.update(steps=12, checkpoint_every=1, batch_size=8)
  batches = sft.synthetic_warmup_batches(env.task, env.tokenizer, 8, seed=0)

  def run(name, writer):
    return sft.train_sft(policy, params, batches, cfg, workdir=str(tmp_path / name),
                         name="warmup", writer=writer)
  (ref, ref_rows), (resumed, rows) = kill_and_resume(monkeypatch, run, ("warmup", 11))
  assert_same_params(ref, resumed)
  assert_same_rows(ref_rows, rows, "warmup")


# ---------------------------------------------------------------------------------------------
# Slow: the launcher, killed with a real SIGKILL.


def launch(workdir, config, *overrides, kill_after=None):
  """`python -m experiments.main` on `workdir`; with `kill_after="phase:step"` the run
  SIGKILLs itself right after that checkpoint. Returns the completed process."""
  env = dict(os.environ, CI="true", JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop(common.KILL_AFTER_ENV, None)
  if kill_after:
    env[common.KILL_AFTER_ENV] = kill_after
  return subprocess.run(
      [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
       *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def checkpoint_params(workdir, phase):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints", phase)
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  return ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step), "state"))


def metric_rows(workdir):
  rows = []
  for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8"):
    r = json.loads(line)
    rows.append((r.pop("step"), {k: v for k, v in r.items() if "time/" not in k}))
  return rows


def sigkill_and_resume(tmp_path, config, overrides, phase, step):
  """The uninterrupted run, the run killed after `phase`'s checkpoint `step`, the re-run; the
  final checkpoint of `phase` and its logged metrics must agree. Returns both workdirs."""
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  out = launch(ref, config, *overrides)
  assert out.returncode == 0, out.stdout + out.stderr
  out = launch(killed, config, *overrides, kill_after=f"{phase}:{step}")
  assert out.returncode == -9, out.stdout + out.stderr
  out = launch(killed, config, *overrides)
  assert out.returncode == 0, out.stdout + out.stderr
  assert_same_params(checkpoint_params(ref, phase), checkpoint_params(killed, phase), phase)
  assert_same_rows(metric_rows(ref), metric_rows(killed), phase)
  return ref, killed


@pytest.mark.slow  # in-process: test_sft_warmup_killed_and_resumed
def test_sft_warmup_sigkilled_resumes_exactly(tmp_path):
  """The launcher SIGKILLed in the SFT warm-up after its step-12 checkpoint (metrics are
  logged every 10 steps: a re-run from scratch would log step 10 twice)."""
  sigkill_and_resume(tmp_path, "configs/sft_synthetic.py:runlocal",
                     ["--config.warmup.steps=24", "--config.warmup.checkpoint_every=4"],
                     "warmup", 12)


@pytest.mark.slow
@pytest.mark.parametrize("config,overrides,phase", [
    ("configs/grpo_synthetic.py:runlocal", ["--config.rl.steps=4", "--config.rl.log_every=1",
                                            "--config.rl.checkpoint_every=1"], "grpo"),
    ("configs/rlvr_math.py:runlocal", ["--config.rl.steps=4", "--config.rl.log_every=1",
                                       "--config.rl.checkpoint_every=1"], "ppo"),
    ("configs/dpo.py:runlocal", ["--config.dpo.steps=4", "--config.dpo.log_every=1",
                                 "--config.dpo.checkpoint_every=1"], "dpo"),
])
def test_launcher_sigkilled_mid_phase_resumes_exactly(tmp_path, config, overrides, phase):
  ref, killed = sigkill_and_resume(tmp_path, config, overrides, phase, 2)
  assert (json.load(open(os.path.join(ref, "results.json")))["results"] ==
          json.load(open(os.path.join(killed, "results.json")))["results"])


@pytest.mark.slow
def test_score_suite_sigkilled_in_stage2_resumes_exactly(tmp_path):
  overrides = ["--config.methods=('score',)", "--config.rl.stage1_steps=2",
               "--config.rl.stage2_steps=3", "--config.rl.checkpoint_every=1",
               "--config.rl.log_every=1"]
  ref, killed = sigkill_and_resume(tmp_path, "configs/score_synthetic.py:runlocal", overrides,
                                   "score/r0_stage2", 1)
  assert_same_rows(metric_rows(ref), metric_rows(killed), "score/r0_stage1")
  assert (json.load(open(os.path.join(ref, "results.json")))["results"] ==
          json.load(open(os.path.join(killed, "results.json")))["results"])


@pytest.mark.slow
def test_self_rewarding_iteration_sigkilled_mid_dpo_resumes_exactly(tmp_path):
  """Iteration 1 (M1 -> M2) killed in its DPO phase: the re-run keeps the prompts, candidates
  and judgments, finishes the DPO where it stopped, and ends with the same models."""
  ref, killed = sigkill_and_resume(tmp_path, "configs/self_rewarding.py:runlocal",
                                   ["--config.dpo.checkpoint_every=1",
                                    "--config.dpo.log_every=1"], "m2_dpo", 1)
  assert_same_params(checkpoint_params(ref, "m3_dpo"), checkpoint_params(killed, "m3_dpo"))
  for a in ("iter1/pairs.jsonl", "iter2/pairs.jsonl", "results.md"):
    assert (open(os.path.join(ref, a)).read() == open(os.path.join(killed, a)).read()), a
