"""The run infrastructure: configs, launcher, NaN guard, light import (resume after SIGKILL:
tests/test_resume.py)."""

import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score.utils import checkpoint as ckpt_lib
from score.utils import config as config_lib
from score.utils import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir, *overrides, config="configs/sft_synthetic.py:runlocal"):
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config}",
         f"--workdir={workdir}", *overrides]
  env = dict(os.environ, CI="true", JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_parse_arg_types_and_unknown_key():
  arg = config_lib.parse_arg("runlocal,steps=7,lr=0.5,name=x", runlocal=False, steps=1,
                             lr=1.0, name="")
  assert arg.runlocal is True and arg.steps == 7 and arg.lr == 0.5 and arg.name == "x"
  with pytest.raises(config_lib.ConfigError, match="runlocal"):
    config_lib.parse_arg("runlocl", runlocal=False, steps=1)
  with pytest.raises(config_lib.ConfigError, match="steps"):
    config_lib.parse_arg("steps=abc", steps=1)


def test_apply_overrides_names_closest_field():
  c = ml_collections.ConfigDict({"rl": {"alpha": 10.0, "beta1": 0.01}})
  c.lock()
  config_lib.apply_overrides(c, {"rl.alpha": 0.0})
  assert c.rl.alpha == 0.0
  with pytest.raises(config_lib.ConfigError, match="rl.alpha"):
    config_lib.apply_overrides(c, {"rl.alpah": 1.0})


def test_every_config_is_locked_and_builds():
  import importlib.util  # pylint: disable=g-import-not-at-top
  for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):  # shared sections, e.g. score_common.py
      continue
    for arg in (None, "runlocal"):
      c = module.get_config(arg)
      assert c.is_locked, name
      assert isinstance(c.trainer, str), name
      with pytest.raises(AttributeError):
        c.no_such_field_xyz = 1


def test_launcher_rejects_misspelled_override(tmp_path):
  proc = _launch(str(tmp_path / "w"), "--config.warmup.stpes=3")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "steps" in out  # the closest valid name is suggested


def test_missing_model_dir_is_a_clear_error(tmp_path):
  proc = _launch(str(tmp_path / "w"), "--config.model.model_dir=/no/such/dir")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "model.model_dir '/no/such/dir' does not exist" in out
  assert not (tmp_path / "w" / "run_info.json").exists()  # stopped before any work


def test_checkpointer_roundtrip_and_nan_error(tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path / "c"), every=2)
  state = {"w": np.arange(3.0), "n": np.int32(4)}
  assert ck.save(2, state, {"pos": 7})
  step, restored, extra = ck.restore(state)
  assert step == 2 and extra == {"pos": 7}
  np.testing.assert_array_equal(restored["w"], state["w"])
  err = run_lib.NonFiniteLossError(5, 2)
  assert "step 5" in str(err) and "step 2" in str(err)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  from score.trainers import common  # pylint: disable=g-import-not-at-top

  def update(step, state):
    loss = jnp.nan if step == 6 else 1.0
    return {"w": state["w"] + 1}, {"loss": loss}

  with pytest.raises(run_lib.NonFiniteLossError, match="step 7"):
    common.train_loop(workdir=str(tmp_path), name="p", state={"w": np.zeros(2)},
                      update=update, num_steps=10, checkpoint_every=3)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints" / "p"), every=3)
  step, state, _ = ck.restore({"w": np.zeros(2)})
  assert step == 6 and state["w"][0] == 6


def test_import_score_is_light():
  code = ("import sys, score, score.losses, score.models, score.sampling, score.rewards, "
          "score.data, score.trainers, score.eval, score.utils; "
          "print(sorted(m for m in ('torch', 'transformers', 'tensorflow', "
          "'tensorflow_datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"


def test_optimizer_clips_gradients_before_adam():
  """`grad_clip`: the global norm is clipped before Adam sees the gradient. Adam's first step
  is scale-free, so the check is the second: gradients 10 then 0.5 (clipped: 1 then 0.5)
  against Adam written out in numpy."""
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(lr=1.0, schedule="constant", warmup_steps=0,
                                       grad_clip=1.0, b1=0.9, b2=0.999, weight_decay=0.0))
  grads = [10.0, 0.5]

  def np_adam(gs, b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0
    out = []
    for t, g in enumerate(gs, 1):
      m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
      out.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return out
  for clip, want in ((1.0, np_adam([1.0, 0.5])), (0.0, np_adam(grads))):
    cfg.grad_clip = clip
    opt = common.make_optimizer(cfg, 2)
    params = {"x": jnp.zeros(())}
    state = opt.init(params)
    got = []
    for g in grads:
      updates, state = opt.update({"x": jnp.asarray(g)}, state, params)
      got.append(-float(updates["x"]))
    np.testing.assert_allclose(got, want, rtol=1e-4)  # fp32
  assert abs(np_adam([1.0, 0.5])[1] - np_adam(grads)[1]) > 0.1  # the clip matters here


@pytest.mark.parametrize("schedule,warmup,expected", [
    ("constant", 0, [1.0, 1.0, 1.0, 1.0]),
    ("cosine", 0, [1.0, 0.8535534, 0.5, 0.1464466]),
    ("linear", 0, [1.0, 0.75, 0.5, 0.25]),
    ("linear", 2, [0.0, 0.5, 1.0, 0.5]),
])
def test_optimizer_schedules(schedule, warmup, expected):
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(lr=1.0, schedule=schedule, warmup_steps=warmup,
                                       end_lr_factor=0.0))
  opt = common.make_optimizer(cfg, 4)
  params = {"x": jnp.zeros(())}
  state = opt.init(params)
  lrs = []
  for _ in range(4):  # Adam's first steps on a constant gradient move by exactly lr
    updates, state = opt.update({"x": jnp.ones(())}, state, params)
    lrs.append(-float(updates["x"]))
  np.testing.assert_allclose(lrs, expected, atol=1e-3)
  with pytest.raises(ValueError, match="schedule"):
    common.make_optimizer(ml_collections.ConfigDict(dict(lr=1.0, schedule="step")), 4)
