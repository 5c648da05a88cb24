"""`score.report`: the Markdown report, its plots and the rollout text for TensorBoard.

The fast tests build a workdir by hand in the format the trainers write (MetricWriter rows,
`tables.write_results`, `evals/<method>.json`); the slow one reports a real `runlocal` run.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from score import report
from score.eval import tables
from score.utils import metrics as metrics_io

PNG = b"\x89PNG\r\n\x1a\n"


def _interval(value, low, high):
  return {"value": value, "low": low, "high": high}


def _results(shift=0.0):
  """A results table written out by hand (not computed by the metrics under test)."""
  base = {"n": 40, "acc_t1": _interval(45.0 + shift, 30.0, 60.0),
          "acc_t2": _interval(45.0 + shift, 30.0, 60.0), "delta": _interval(0.0, 0.0, 0.0),
          "delta_i2c": _interval(0.0, 0.0, 0.0), "delta_c2i": _interval(0.0, 0.0, 0.0)}
  score = {"n": 40, "acc_t1": _interval(45.0 + shift, 30.0, 60.0),
           "acc_t2": _interval(72.5 + shift, 57.5, 85.0), "delta": _interval(27.5, 15.0, 42.5),
           "delta_i2c": _interval(27.5, 15.0, 42.5), "delta_c2i": _interval(0.0, 0.0, 0.0)}
  return {"base": base, "score": score}


def _fake_run(workdir, *, seed=0, rl_metrics=True, stage1_steps=4, stage2_steps=6):
  """A workdir as the self-correction suite writes it, with known curves."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"trainer": "self_correction_suite", "title": "toy", "seed": seed,
               "published": "", "rl": {"alpha": 10.0 + seed}}, f)
  with open(os.path.join(workdir, "run_info.json"), "w") as f:
    json.dump({"commit": f"deadbeef{seed}", "machine": "test", "argv": ["main.py", "--x"]}, f)
  w = metrics_io.MetricWriter(workdir, tensorboard=False)
  for s in (5, 10):
    w.write_scalars(s, {"warmup/loss": 3.0 - 0.1 * s})
  if rl_metrics:
    for s in range(1, stage1_steps + 1):
      w.write_scalars(s, {"score/r0_stage1/reward/t1": 0.5, "score/r0_stage1/reward/t2": 0.1 * s,
                          "score/r0_stage1/kl/turn1": 0.01 * s, "score/r0_stage1/loss": 1.0,
                          "score/r0_stage1/flip/i_to_c": 0.2,
                          "score/r0_stage1/tokens/turn1": 6.0})
    for s in range(1, stage2_steps + 1):
      w.write_scalars(s, {"score/r0_stage2/reward/t1": 0.6, "score/r0_stage2/reward/t2": 0.9,
                          "score/r0_stage2/loss": float("nan") if s == 3 else 0.5})
  w.write_scalars(0, {"eval/base/acc_t1": 50.0})
  w.close()
  results = _results(shift=seed)
  tables.write_results(workdir, results, info={"commit": f"deadbeef{seed}"})
  os.makedirs(os.path.join(workdir, "evals"))
  with open(os.path.join(workdir, "evals", "score.json"), "w") as f:
    json.dump({"correct_t1": [0, 1], "correct_t2": [1, 1],
               "attempts": [{"id": "p0", "t1": "12|3", "t2": "124"},
                            {"id": "p1", "t1": "7", "t2": "7"}]}, f)
  return results


def test_split_key():
  assert report.split_key("score/r0_stage2/reward/t1") == ("score", (0, 2), "reward/t1")
  assert report.split_key("no_stage1/r1_stage1/kl/turn2") == ("no_stage1", (1, 1), "kl/turn2")
  assert report.split_key("warmup/loss") == ("warmup", (0, 0), "loss")
  assert report.split_key("eval/base/acc_t1") is None
  assert report.split_key("step") is None


def test_curves_lay_stages_end_to_end(tmp_path):
  _fake_run(str(tmp_path))
  c = report.curves(metrics_io.read_metrics(str(tmp_path)))
  t2 = c["reward/t2"]["score"]
  # Stage 1 steps 1..4, stage 2 steps 1..6 -> 5..10 on the method's axis.
  np.testing.assert_array_equal(t2.steps, np.arange(1, 11))
  np.testing.assert_allclose(t2.values, [0.1, 0.2, 0.3, 0.4] + [0.9] * 6)
  assert t2.boundaries == [4.0]
  assert np.isnan(c["loss"]["score"].values[4 + 2])  # a "nan" string stays a NaN point
  np.testing.assert_array_equal(c["loss"]["warmup"].steps, [5, 10])
  assert not any(k.startswith("acc") for k in c)  # eval/ rows are not curves


def test_report_one_run_writes_table_and_plots(tmp_path):
  workdir = str(tmp_path / "run")
  _fake_run(workdir)
  path = report.write_report([workdir])
  out = os.path.dirname(path)
  assert out == os.path.join(workdir, "report")
  md = open(path, encoding="utf-8").read()
  # The results table, with intervals, from results.json.
  assert "| score | 40 | " in md
  assert "72.5 [57.5, 85.0]" in md and "27.5 [15.0, 42.5]" in md
  assert "`deadbeef0`" in md and "self_correction_suite" in md
  for fn in ("results.png", "reward.png", "kl.png", "flips.png", "lengths.png", "loss.png"):
    with open(os.path.join(out, fn), "rb") as f:
      assert f.read(8) == PNG, fn
    assert f"({fn})" in md
  # Acc@t1/t2 curves were never logged: skipped, and the report says so.
  assert not os.path.exists(os.path.join(out, "accuracy.png"))
  assert "Not drawn (no run logged these metrics): Acc@t1 / Acc@t2 during training" in md
  # Sample attempts, the one whose attempts differ first, pipes escaped.
  assert md.index("12\\|3") < md.index("| p1 |")
  assert '"alpha": 10.0' in md  # the config


def test_report_side_by_side_and_missing_metrics(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  _fake_run(a, seed=0)
  _fake_run(b, seed=1, rl_metrics=False)
  out = str(tmp_path / "out")
  assert report.main([a, b, "--out", out]) == 0
  md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  assert "| method | n | Acc@t1 (a) | Acc@t1 (b) | Acc@t2 (a) | Acc@t2 (b) |" in md
  assert "| `rl.alpha` | 10.0 | 11.0 |" in md  # the config field that differs
  # Each run's value in its own column, a's before b's.
  assert ("| score | 40 | 45.0 [30.0, 60.0] | 46.0 [30.0, 60.0] | 72.5 [57.5, 85.0] | "
          "73.5 [57.5, 85.0] | 27.5 [15.0, 42.5] | 27.5 [15.0, 42.5] |") in md
  # b logged no RL metrics, a did: the plots exist; only warm-up loss is common.
  assert os.path.exists(os.path.join(out, "reward.png"))
  a_curves = report.curves(metrics_io.read_metrics(a))
  b_curves = report.curves(metrics_io.read_metrics(b))
  assert "reward/t1" in a_curves and "reward/t1" not in b_curves


def test_report_of_run_without_results_or_metrics(tmp_path):
  workdir = tmp_path / "empty_run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"trainer": "sft"}))
  path = report.write_report([str(workdir)], str(tmp_path / "out"))
  md = open(path, encoding="utf-8").read()
  assert "No results in: empty_run" in md
  assert "No `metrics.jsonl` rows in: empty_run" in md
  assert os.listdir(tmp_path / "out") == ["report.md"]
  assert report.main([str(tmp_path / "nothing_here")]) == 2


def test_report_of_other_trainers_results(tmp_path):
  """GRPO writes `{model: {accuracy, accuracy_ci95, length, n}}`; Self-Rewarding another
  layout: a table of what is there, or the run's own results.md."""
  grpo, srl = tmp_path / "grpo", tmp_path / "srl"
  grpo.mkdir()
  srl.mkdir()
  (grpo / "results.json").write_text(json.dumps({"results": {
      "base": {"accuracy": 12.0, "accuracy_ci95": 2.5, "length": 5.5, "n": 500},
      "grpo": {"accuracy": 40.0, "accuracy_ci95": 4.0, "length": 4.25, "n": 500}}}))
  (srl / "results.json").write_text(json.dumps({"iterations": [1, 2], "info": {}}))
  (srl / "results.md").write_text("| model | win |\n|---|---|\n| M1 | 0.4 |\n")
  out = str(tmp_path / "out")
  md = open(report.write_report([str(grpo), str(srl)], out), encoding="utf-8").read()
  # Only runs with a results table get columns (srl's own table follows).
  assert "| method | n | accuracy | length |" in md
  assert "| grpo | 500 | 40.0 ± 4.0 | 4.25 |" in md
  assert "`srl/results.md`:" in md and "| M1 | 0.4 |" in md
  with open(os.path.join(out, "results.png"), "rb") as f:
    assert f.read(8) == PNG


def test_samples_markdown_for_tensorboard():
  text = report.samples_markdown(["1+2=", "a|b"], [["3.", "3."], ["x\ny", "z"]],
                                 np.array([[1.0, 1.0], [0.0, 1.0]]), max_rows=1)
  lines = text.splitlines()
  assert lines[0] == "| # | problem | attempt 1 | r1 | attempt 2 | r2 |"
  assert lines[2] == "| 0 | 1+2= | 3. | 1 | 3. | 1 |"
  assert "1 of 2 rows." in text
  text = report.samples_markdown(["a|b"], [["x\ny"]], None, max_chars=3)
  assert "| 0 | a\\|b | x<br>y |" in text
  with pytest.raises(ValueError, match="2 problems but 1 rows"):
    report.samples_markdown(["a", "b"], [["x"]])


def test_episodes_markdown_from_a_rollout():
  from score.data import synthetic
  from score.sampling import rollouts

  task = synthetic.make_task("addition", num_digits=2)
  tok = task.tokenizer
  problems = task.problems(2, seed=0)
  eos = tok.eos_id
  responses = [[tok.encode("10") + [eos], tok.encode("r01") + [eos]],
               [tok.encode("99") + [eos], tok.encode("99") + [eos]]]

  class Env:
    decode = staticmethod(tok.decode)

  episodes = rollouts.Episodes(
      *(np.zeros((2, 1)),) * 5, prompt_index_B=np.array([1, 0]),
      lengths_BxK=np.zeros((2, 2)), truncated_BxK=np.zeros((2, 2), bool), responses=responses,
      instructions=[[[]], [[]]], finish_reason=[["stop"] * 2] * 2)
  rewards = np.array([[0, 1], [0, 0]])
  text = report.episodes_markdown(Env(), problems, episodes, rewards)
  assert f"| 0 | {problems[1].question} | 10 | 0 | r01 | 1 |" in text
  assert f"| 1 | {problems[0].question} | 99 | 0 | 99 | 0 |" in text

  class Writer:
    texts = []
    def write_texts(self, step, texts):
      self.texts.append((step, texts))

  writer = Writer()
  report.write_rollout_samples(writer, 7, "score/r0_stage1/samples", Env(), problems, episodes,
                               rewards)
  assert writer.texts == [(7, {"score/r0_stage1/samples": text})]


def _tb_events(logdir):
  """Events of tensorboardX's event files (TFRecord: length, crc, payload, crc)."""
  import struct
  from tensorboardX.proto import event_pb2
  events = []
  for fn in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, fn), "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def test_rollout_samples_reach_tensorboard(tmp_path):
  writer = metrics_io.MetricWriter(str(tmp_path))
  text = report.samples_markdown(["1+2="], [["3.", "r3."]], np.array([[1.0, 1.0]]))
  writer.write_texts(5, {"score/samples": text})
  writer.close()
  texts = [(e.step, v.tag, v.tensor.string_val[0].decode())
           for e in _tb_events(str(tmp_path / "tensorboard")) for v in e.summary.value]
  assert texts == [(5, "score/samples/text_summary", text)]


@pytest.mark.slow
def test_report_cli_on_a_runlocal_run(tmp_path):
  """The README's three commands: train (runlocal), report, look at the plot."""
  workdir, out = str(tmp_path / "run"), str(tmp_path / "report")
  subprocess.run([sys.executable, "-m", "experiments.main", "--config",
                  "configs/score_synthetic.py:runlocal", "--workdir", workdir],
                 check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  proc = subprocess.run([sys.executable, "-m", "score.report", workdir, "--out", out],
                        check=True, capture_output=True, text=True)
  assert proc.stdout.strip() == os.path.join(out, "report.md")
  md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
  for method in ("base", "star", "pair_sft", "score"):
    assert f"| {method} | 16 |" in md
  for fn in ("results.png", "reward.png", "kl.png", "flips.png", "lengths.png", "loss.png"):
    assert open(os.path.join(out, fn), "rb").read(8) == PNG


def test_results_table_puts_published_mbpp_r_beside_the_measured_one():
  results = {m: dict(_results()["score"], mbpp_r=dict(_interval(66.7, 33.3, 100.0), n=3))
             for m in ("base", "score", "star")}
  run = report.Run(workdir="w", name="w", config={"published": "humaneval"}, info={},
                   rows=[], results=results, evals={})
  lines = report.results_table([run]).splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  assert header[-1] == "MBPP-R (published)" and "MBPP-R" in header
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
          for r in lines[2:]}
  assert rows["score"][-1] == f"{tables.PUBLISHED_MBPP_R['score']:.1f}" == "60.6"
  assert rows["score"][header.index("MBPP-R")] == "66.7 [33.3, 100.0]"
  assert rows["base"][-1] == "47.3" and rows["star"][-1] == "—"  # the paper has no STaR MBPP-R
  # Without an MBPP-R measurement there is no published MBPP-R column either.
  for r in results.values():
    del r["mbpp_r"]
  assert "MBPP-R" not in report.results_table([run])
