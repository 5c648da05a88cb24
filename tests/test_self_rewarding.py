"""Self-Rewarding trainer: DPO step vs a numpy reference, the tiny end-to-end loop M1 → M2 → M3
with all artefacts, resume in the middle of an iteration, and a stop when no pairs come out."""

import json
import math
import os
import shutil
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import self_rewarding as config_mod
from score.data import self_rewarding as data_lib
from score.eval import judge_quality as jq
from score.rewards import judge as judge_lib
from score.trainers import dpo as dpo_lib
from score.trainers import self_instruct as si
from score.trainers import self_rewarding as sr
from score.utils import config as config_lib
from score.utils import metrics as metrics_lib

# ---------------------------------------------------------------------------------------------
# DPO through the trainer's step, against numpy, on a tabular bigram model.

V = 5


def _bigram_logprobs(params, tokens_BxL, mask_BxL):
  """logp[b, t] = log softmax(W[tokens[t-1]])[tokens[t]]; position 0 and padding hold 0."""
  logits = params["W"][tokens_BxL[:, :-1]]
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens_BxL[:, 1:, None], -1)[..., 0]
  lp = jnp.where((mask_BxL[:, 1:] > 0) & (mask_BxL[:, :-1] > 0), lp, 0.0)
  return jnp.concatenate([jnp.zeros((tokens_BxL.shape[0], 1)), lp], axis=1)


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _np_seq_logp_and_grad(W, tokens, loss_mask, *, normalise=False):
  """Σ_{t: mask} log softmax(W[x_{t-1}])[x_t] and its gradient w.r.t. W, by hand."""
  logp, grad = 0.0, np.zeros_like(W)
  n = sum(loss_mask)
  for t in range(1, len(tokens)):
    if not loss_mask[t]:
      continue
    p = _softmax(W[tokens[t - 1]])
    w = 1.0 / n if normalise else 1.0
    logp += w * np.log(p[tokens[t]])
    grad[tokens[t - 1]] += w * (np.eye(V)[tokens[t]] - p)
  return logp, grad


def _np_dpo_update(W, ref_W, pairs, beta, eps, lr, *, normalise=False, nll=0.0):
  """One SGD step on the batch-mean of −(1−ε) log σ(βh) − ε log σ(−βh) − nll · πc / |yc|
  (RPO's NLL term); returns (W', loss)."""
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  total_grad, losses = np.zeros_like(W), []
  for ct, cm, rt, rm in pairs:
    pc, gc = _np_seq_logp_and_grad(W, ct, cm, normalise=normalise)
    pr, gr = _np_seq_logp_and_grad(W, rt, rm, normalise=normalise)
    rc, _ = _np_seq_logp_and_grad(ref_W, ct, cm, normalise=normalise)
    rr, _ = _np_seq_logp_and_grad(ref_W, rt, rm, normalise=normalise)
    h = (pc - rc) - (pr - rr)
    losses.append(-(1 - eps) * np.log(sig(beta * h)) - eps * np.log(sig(-beta * h))
                  - nll * pc / sum(cm))
    dl_dh = -beta * ((1 - eps) * sig(-beta * h) - eps * sig(beta * h))
    total_grad += dl_dh * (gc - gr) - nll * gc / sum(cm)
  return W - lr * total_grad / len(pairs), float(np.mean(losses))


# (chosen tokens, chosen loss mask, rejected tokens, rejected loss mask): prompt [0, 1] or
# [0, 2, 3], responses of different lengths (a length-normalised loss would differ).
PAIRS = [
    ([0, 1, 2, 3, 4], [0, 0, 1, 1, 1], [0, 1, 4], [0, 0, 1]),
    ([0, 2, 3, 1], [0, 0, 0, 1], [0, 2, 3, 4, 4, 2, 1], [0, 0, 0, 1, 1, 1, 1]),
]


@pytest.mark.parametrize("eps,nll", [(0.0, 0.0), (0.2, 0.0), (0.0, 1.0)])
def test_dpo_step_matches_numpy_gradient(eps, nll):
  rng = np.random.default_rng(0)
  W = rng.normal(size=(V, V)).astype(np.float64)
  ref_W = W + 0.5 * rng.normal(size=(V, V))  # policy ≠ reference, so h ≠ 0
  beta, lr = 0.5, 0.3
  batches = dpo_lib.PairBatches(
      PAIRS,
      dpo_lib.reference_logps(_bigram_logprobs, {"W": jnp.asarray(ref_W, jnp.float32)},
                              [(p[0], p[1]) for p in PAIRS], length=7, batch_size=2),
      dpo_lib.reference_logps(_bigram_logprobs, {"W": jnp.asarray(ref_W, jnp.float32)},
                              [(p[2], p[3]) for p in PAIRS], length=7, batch_size=2),
      batch_size=2, seed=0)
  step = dpo_lib.make_dpo_step(_bigram_logprobs, optax.sgd(lr), beta=beta, label_smoothing=eps,
                               nll_weight=nll)
  params = {"W": jnp.asarray(W, jnp.float32)}
  new, _, metrics = step(params, optax.sgd(lr).init(params),
                         {k: jnp.asarray(v) for k, v in batches(0).items()})
  order = batches.indices(0)
  want_W, want_loss = _np_dpo_update(W, ref_W, [PAIRS[i] for i in order], beta, eps, lr,
                                     nll=nll)
  np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["W"]), want_W, rtol=1e-4, atol=1e-5)
  # The reference above sums log-probs; a length-normalised DPO is a different update.
  norm_W, _ = _np_dpo_update(W, ref_W, [PAIRS[i] for i in order], beta, eps, lr,
                             normalise=True, nll=nll)
  assert np.abs(norm_W - want_W).max() > 1e-3


def test_pair_batches_are_a_pure_function_of_the_step():
  pairs = [([0, i], [0, 1], [0, i + 1], [0, 1]) for i in range(5)]
  a = dpo_lib.PairBatches(pairs, np.arange(5.0), -np.arange(5.0), 4, seed=3)
  b = dpo_lib.PairBatches(pairs, np.arange(5.0), -np.arange(5.0), 4, seed=3)
  for step in (0, 1, 2, 7):
    x, y = a(step), b(step)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  # Every pair once per epoch; the reference log-probs travel with their pair.
  seen = a.indices(0) + a.indices(1)[:1]
  assert sorted(seen) == list(range(5))
  batch = a(0)
  np.testing.assert_array_equal(batch["ref_chosen_B"], -batch["ref_rejected_B"])
  np.testing.assert_array_equal(batch["chosen_BxL"][:, 1], batch["ref_chosen_B"].astype(int))


def test_dpo_num_steps():
  cfg = config_mod.get_config("runlocal").dpo
  assert dpo_lib.num_steps(cfg, 16) == math.ceil(cfg.epochs * 16 / cfg.batch_size)


# ---------------------------------------------------------------------------------------------
# The tiny end-to-end loop.

JUDGE_MARK = "Review the user's question"


def _canned_judge(text: str, k: int) -> str:
  """A deterministic stand-in for the judge's sampled text (the tiny model is too small to
  learn the format in a fast test): mostly ``Score: N``, sometimes malformed."""
  h = zlib.crc32(f"{text}/{k}".encode())
  if h % 9 == 0:
    return "I cannot decide."
  if h % 9 == 1:
    return "Score: 7"
  return f"It is fine.\nScore: {h % 6}"


class Spy:
  """Wraps `generate_texts`: counts calls by kind and replaces judge outputs."""

  def __init__(self, real, judge_fn=_canned_judge):
    self.real = real
    self.judge_fn = judge_fn
    self.calls = {"judge": 0, "few_shot": 0, "candidates": 0}

  def __call__(self, model, codec, prompts, **kw):
    texts = [codec.decode(p) for p in prompts]
    if texts and "Better response" in texts[0]:
      self.calls["pairwise"] = self.calls.get("pairwise", 0) + len(prompts)
      verdicts = ("Better response: A", "Better response: B", "Better response: tie", "?")
      return [{"text": verdicts[zlib.crc32(t.encode()) % 4], "num_tokens": 3, "finish": "stop"}
              for t in texts]
    if texts and JUDGE_MARK in texts[0]:
      self.calls["judge"] += len(prompts)
      return [{"text": self.judge_fn(t, i), "num_tokens": 3, "finish": "stop"}
              for i, t in enumerate(texts)]
    self.calls["few_shot" if data_lib.FEW_SHOT_TEMPLATE[:20] in texts[0] else
               "candidates"] += len(prompts)
    return self.real(model, codec, prompts, **kw)


def tiny_config(**overrides):
  c = config_mod.get_config("runlocal")
  config_lib.apply_overrides(c, {
      "data.synthetic_prompts": 40, "data.eft_train_size": 32, "data.eft_eval_size": 8,
      "model.vocab_size": 320, "model.hidden_size": 32, "model.num_layers": 1,
      "model.num_heads": 2, "model.num_kv_heads": 2, "model.head_dim": 16,
      "model.intermediate_size": 64,
      "sft.steps": 4, "sft.batch_size": 8, "sft.checkpoint_every": 2,
      "self_instruct.source": "few_shot", "self_instruct.num_prompts": 3,
      "self_instruct.max_new_tokens": 12, "self_instruct.max_rounds": 6,
      "self_instruct.min_chars": 1, "self_instruct.num_shots": 4,
      "candidates.max_new_tokens": 8, "judge.max_new_tokens": 8,
      "dpo.steps": 2, "dpo.batch_size": 4, "dpo.checkpoint_every": 1, "dpo.log_every": 1,
      "eval.sft_baseline": False, "eval.max_new_tokens": 8, "sample_batch_size": 32,
      "eval.head_to_head_baseline": "m1",
      **overrides})
  return c


REFERENCE = [{"instruction": "What is 2 plus 2?", "output": "2 plus 2 is 4."},
             {"instruction": "Reverse the word cat.", "output": "cat reversed is tac."},
             {"instruction": "What color is snow?", "output": "The color of snow is white."}]


def e2e_config(workdir):
  """`tiny_config` plus the pairwise evaluations; the judge checkpoint is the run's own M0
  (its verdict texts are replaced by the spy)."""
  ref = os.path.join(os.path.dirname(workdir), "reference.jsonl")
  data_lib.write_jsonl(ref, REFERENCE)
  return tiny_config(**{"eval.pairwise_judge_dir": os.path.join(workdir, "m0"),
                        "eval.reference_path": ref})


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("srlm") / "run")
  mp = pytest.MonkeyPatch()
  spy = Spy(si.generate_texts)
  mp.setattr(si, "generate_texts", spy)
  try:
    results = sr.train(e2e_config(workdir), workdir)
  finally:
    mp.undo()
  return workdir, results, spy


ARTEFACTS = ["data/ift.jsonl", "data/eft_train.jsonl", "data/eft_eval.jsonl",
             "data/judge_eval.jsonl", "data/summary.json", "results.json", "results.md",
             "eval/judge_m1.jsonl", "eval/judge_m1.json", "eval/judge_m2.json",
             "eval/judge_m3.json", "models/m1/config.json", "models/m3/model.safetensors"]
ITER_ARTEFACTS = ["prompt_generations.jsonl", "prompts.jsonl", "candidates.jsonl",
                  "judgments.jsonl", "pairs.jsonl", "mining.json", "dpo.json"]


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_end_to_end_writes_every_artefact(e2e):
  workdir, results, spy = e2e
  for a in ARTEFACTS + [f"iter{t}/{a}" for t in (1, 2) for a in ITER_ARTEFACTS]:
    assert os.path.exists(os.path.join(workdir, a)), a
  assert spy.calls["few_shot"] > 0 and spy.calls["candidates"] > 0
  assert set(results["judge"]) == {"m1", "m2", "m3"} and results["stopped"] is None
  cfg = tiny_config()
  for t in (1, 2):
    it = os.path.join(workdir, f"iter{t}")
    prompts = data_lib.read_jsonl(os.path.join(it, "prompts.jsonl"))
    assert 0 < len(prompts) <= cfg.self_instruct.num_prompts
    gens = data_lib.read_jsonl(os.path.join(it, "prompt_generations.jsonl"))
    assert sum(g["fate"] == "kept" for g in gens) == len(prompts)
    cands = data_lib.read_jsonl(os.path.join(it, "candidates.jsonl"))
    assert [len(c["candidates"]) for c in cands] == [cfg.candidates.num] * len(prompts)
    judgments = data_lib.read_jsonl(os.path.join(it, "judgments.jsonl"))
    assert len(judgments) == cfg.candidates.num * len(prompts)
    for j in judgments:
      assert len(j["judgments"]) == cfg.judge.num_judgments
      parsed = [judge_lib.parse_score(x["raw"]).score for x in j["judgments"]]
      assert [x["score"] for x in j["judgments"]] == parsed
      assert j["score"] == judge_lib.average_scores(parsed)
    mining = json.loads(_read(os.path.join(it, "mining.json")))
    pairs = data_lib.read_jsonl(os.path.join(it, "pairs.jsonl"))
    assert mining["pairs"] == len(pairs) > 0
    assert mining["pairs"] + mining["tie"] + mining["unscored"] + mining["identical"] == \
        len(prompts)
    assert mining["malformed"] == sum(x["score"] is None for j in judgments
                                      for x in j["judgments"])
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    dpo = json.loads(_read(os.path.join(it, "dpo.json")))
    assert dpo["steps"] == 2 and dpo["pairs"] == len(pairs)
  # Each DPO phase starts from its reference (M_t): at step 1 h = 0, so the loss is log 2 and
  # the implicit rewards are 0; the update then moves the policy away from the reference.
  for name in ("m2_dpo", "m3_dpo"):
    rows = {r["step"]: r for r in metrics_lib.read_metrics(workdir) if f"{name}/loss" in r}
    assert rows[1][f"{name}/loss"] == pytest.approx(math.log(2.0), abs=1e-5)
    assert rows[1][f"{name}/reward/margin"] == pytest.approx(0.0, abs=1e-5)
  for t in (1, 2):  # ... and the trained M_t+1 differs from it (`common.make_optimizer`'s
    # cosine schedule warms up from lr 0 at step 0, so only the last step moves it here).
    dpo = json.loads(_read(os.path.join(workdir, f"iter{t}", "dpo.json")))
    assert dpo["reward_margin"] != pytest.approx(0.0, abs=1e-9)
  md = _read(os.path.join(workdir, "results.md"))
  assert "| m3 |" in md and "| 2 |" in md
  judge = json.loads(_read(os.path.join(workdir, "eval", "judge_m2.json")))
  assert 0.0 <= judge["pairwise_accuracy"] <= 100.0


def test_end_to_end_pairwise_evaluations(e2e):
  workdir, results, spy = e2e
  assert set(results["pairwise"]) == {
      "winrate_m1_vs_reference", "h2h_m2_vs_m1", "winrate_m2_vs_reference", "h2h_m3_vs_m1",
      "winrate_m3_vs_reference"}
  for key, m in results["pairwise"].items():
    rows = data_lib.read_jsonl(os.path.join(workdir, "eval", f"{key}.jsonl"))
    assert len(rows) == len(REFERENCE) == m["judged"] + m["failed"]
    winners = [r["winner"] for r in rows]
    assert m == pytest.approx(jq.win_tie_lose(winners), nan_ok=True)
    for r in rows:  # both orders were judged and combined
      assert r["winner"] == judge_lib.combine_pairwise(
          judge_lib.parse_pairwise(r["raw_ab"]), judge_lib.parse_pairwise(r["raw_ba"])).winner
    if m["judged"]:
      assert m["win"] + m["tie"] + m["lose"] == pytest.approx(100.0)
  responses = data_lib.read_jsonl(os.path.join(workdir, "eval", "responses_m2.jsonl"))
  assert [r["instruction"] for r in responses] == [r["instruction"] for r in REFERENCE]
  assert "h2h_m3_vs_m1" in _read(os.path.join(workdir, "results.md"))


def test_win_tie_lose():
  m = jq.win_tie_lose(["A", "A", "tie", "B", None])
  assert m == {"win": 50.0, "tie": 25.0, "lose": 25.0, "judged": 4, "failed": 1,
               "win_rate": 62.5}


def test_saved_models_load_and_differ(e2e):
  from score.models import hf
  workdir, _, _ = e2e
  m1 = hf.from_pretrained(os.path.join(workdir, "models", "m1"))
  m3 = hf.from_pretrained(os.path.join(workdir, "models", "m3"))
  w1 = jax.tree.leaves(jax.tree.map(np.asarray, __import__("flax").nnx.state(m1)))
  w3 = jax.tree.leaves(jax.tree.map(np.asarray, __import__("flax").nnx.state(m3)))
  assert any(not np.array_equal(a, b) for a, b in zip(w1, w3))


@pytest.mark.slow  # passes with restore disabled; test_resume's SIGKILL test is the guard
def test_resume_in_the_middle_of_an_iteration(e2e, tmp_path, monkeypatch):
  """Kill points: M2's DPO after step 1 of 2, and iteration 2 after its candidates. The rerun
  regenerates nothing before the kill point and reproduces every later artefact."""
  workdir, _, _ = e2e
  resumed = str(tmp_path / "run")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "m2_dpo", "2"))
  shutil.rmtree(os.path.join(resumed, "checkpoints", "m3_dpo"))
  removed = ["iter1/dpo.json", "iter2/judgments.jsonl", "iter2/pairs.jsonl",
             "iter2/mining.json", "iter2/dpo.json", "eval/judge_m2.json", "eval/judge_m2.jsonl",
             "eval/judge_m3.json", "eval/judge_m3.jsonl", "results.json", "results.md"]
  for a in removed:
    os.remove(os.path.join(resumed, a))
  shutil.rmtree(os.path.join(resumed, "models", "m2"))
  shutil.rmtree(os.path.join(resumed, "models", "m3"))
  kept = {a: _read(os.path.join(resumed, a)) for a in
          ["iter1/prompts.jsonl", "iter2/prompts.jsonl", "iter2/candidates.jsonl"]}
  spy = Spy(si.generate_texts)
  monkeypatch.setattr(si, "generate_texts", spy)
  sr.train(e2e_config(resumed), resumed)
  assert spy.calls["few_shot"] == 0 and spy.calls["candidates"] == 0
  assert spy.calls["judge"] > 0
  for a, text in kept.items():
    assert _read(os.path.join(resumed, a)) == text
  for a in ["iter2/judgments.jsonl", "iter2/pairs.jsonl", "iter2/mining.json"]:
    assert _read(os.path.join(resumed, a)) == _read(os.path.join(workdir, a)), a
  for a in ["iter1/dpo.json", "iter2/dpo.json"]:  # M2 resumed at step 1 = M2 uninterrupted
    got, want = (json.loads(_read(os.path.join(d, a))) for d in (resumed, workdir))
    assert got.keys() == want.keys()
    for k in want:
      assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (a, k)


def test_no_pairs_stops_with_a_clear_message(e2e, tmp_path, monkeypatch):
  """Every judgment malformed → no pairs in iteration 1 → the loop stops after M1, says why,
  and still writes the results."""
  workdir, _, _ = e2e
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  for d in ["iter2", "checkpoints/m2_dpo", "checkpoints/m3_dpo", "models/m2", "models/m3"]:
    shutil.rmtree(os.path.join(run, d))
  for a in ["iter1/judgments.jsonl", "iter1/pairs.jsonl", "iter1/mining.json",
            "iter1/dpo.json", "eval/judge_m2.json", "eval/judge_m3.json"]:
    os.remove(os.path.join(run, a))
  spy = Spy(si.generate_texts, judge_fn=lambda text, k: ["no verdict", "Score: 3-4",
                                                         "Score: 12"][k % 3])
  monkeypatch.setattr(si, "generate_texts", spy)
  results = sr.train(e2e_config(run), run)
  assert "iteration 1 yielded no preference pairs" in results["stopped"]
  assert set(results["judge"]) == {"m1"}
  mining = json.loads(_read(os.path.join(run, "iter1", "mining.json")))
  assert mining["pairs"] == 0 and mining["malformed"] == mining["judgments"] > 0
  assert mining["malformed_reasons"] == {
      "no 'Score:' line": mining["judgments"] // 3,
      "non-numeric score: '3-4'": mining["judgments"] // 3,
      "score 12 out of range [0, 5]": mining["judgments"] // 3}
  assert not os.path.exists(os.path.join(run, "iter2"))
  assert "Stopped: iteration 1" in _read(os.path.join(run, "results.md"))


@pytest.mark.slow
def test_runlocal_config_runs_the_real_loop(tmp_path):
  """configs/self_rewarding.py:runlocal as the README runs it (no stand-ins): the trained
  tiny judge writes parsable scores and every iteration yields pairs."""
  results = sr.train(config_mod.get_config("runlocal"), str(tmp_path / "run"))
  assert results["stopped"] is None and set(results["judge"]) >= {"m1", "m2", "m3"}
  for it in results["iterations"].values():
    assert it["mining"]["pairs"] > 0
    assert it["mining"]["malformed_pct"] < 50


def test_paper_config():
  c = config_mod.get_config("model_dir=/ckpt,eft_path=/data/oa.jsonl")
  assert (c.data.ift_size, c.data.eft_train_size, c.data.eft_eval_size) == (3200, 1630, 541)
  assert (c.candidates.num, c.candidates.temperature, c.candidates.top_p) == (4, 0.7, 0.9)
  assert c.judge.num_judgments == 3 and c.self_instruct.num_shots == 8
  assert (c.dpo.beta, c.dpo.lr, c.dpo.lr * c.dpo.end_lr_factor, c.dpo.batch_size) == (
      0.1, 1e-6, pytest.approx(1e-7), 16)
  assert c.iterations == 2 and c.self_instruct.source == "few_shot"
  assert c.model.model_dir == "/ckpt" and c.data.eft_path == "/data/oa.jsonl"
  with pytest.raises(AttributeError):
    c.dpo.betta = 0.2  # locked: a typo is an error


def test_missing_eft_path_is_a_clear_error(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="eft_path"):
    sr.train(config_mod.get_config(), str(tmp_path))
