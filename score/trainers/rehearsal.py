r"""A full-shape rehearsal of a SCoRe run, on this machine, before anyone rents a GPU.

  python -m experiments.main --config configs/score_gsm8k.py:rehearsal --workdir /tmp/rehearsal

Everything a real run does, at the real model shape, with a few steps and short answers:
1. `base/`: a random-weight checkpoint of `rehearsal.preset`'s shape (Qwen2.5-0.5B: 494M
   parameters, 151,936-row vocabulary) with a byte-level BPE tokenizer trained on GSM8K, stored
   in bf16 — a user's local Hugging Face directory.
2. `run/`: `experiments.main` on the same config file with `model_dir=base/` (the run
   settings: SCoRe Stage I and Stage II on GSM8K train prompts, bf16 compute, LoRA, the
   shaping term a random model can earn), in a child process that SIGKILLs itself right after
   the first step's checkpoint (`score.trainers.common.KILL_AFTER_ENV`); the same command again
   resumes it and finishes.
3. `uninterrupted/`: the same run without the kill.
4. `export/`: the resumed run's final policy through `python -m score.export` (merged Hugging
   Face checkpoint, plus `export/adapter/` in PEFT format for a LoRA run).
Checks (a failed one raises after the summary is written): the resumed run's exported weights
equal the uninterrupted run's; the adapters moved (the merged projection weights differ from
the base's). Prints and writes `rehearsal.json`: each child's wall, compile seconds and peak
RSS (`resources.json`), the seconds of each training phase (`run/`'s: the killed and the
resumed process's steps together; `killed`'s: the first process's alone), and the checks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from score.eval import results as results_lib
from score.trainers import common
from score.utils import metrics as metrics_io

_NOT_TRAINED = ("embed_tokens", "norm")  # tensor names LoRA leaves alone


def _child(config_file: str, arg: str, workdir: str, *, kill_after: str | None = None,
           log_name: str) -> int:
  """Runs `experiments.main` for `config_file:arg` in a child process; its return code."""
  env = dict(os.environ)
  env.pop(common.KILL_AFTER_ENV, None)
  if kill_after:
    env[common.KILL_AFTER_ENV] = kill_after
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config_file}:{arg}",
         f"--workdir={workdir}"]
  with open(os.path.join(workdir, log_name), "a", encoding="utf-8") as log:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode


def _phase_seconds(workdir: str) -> dict[str, float]:
  """Summed `time/step_s` per training phase from a run's `metrics.jsonl` (for a killed and
  resumed run: the steps of both processes)."""
  out: dict[str, float] = {}
  for row in metrics_io.read_metrics(workdir):
    for key, value in row.items():
      if key.endswith("/time/step_s"):
        phase = key[:-len("/time/step_s")]
        out[phase] = round(out.get(phase, 0.0) + float(value), 2)
  return out


def _tensors(directory: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(directory)):
    if name.endswith(".safetensors"):
      out.update(load_file(os.path.join(directory, name)))
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _export(checkpoint: str, out: str, base: str) -> int:
  cmd = [sys.executable, "-m", "score.export", f"--checkpoint={checkpoint}", f"--out={out}",
         f"--base={base}"]
  return subprocess.run(cmd, check=False, capture_output=True, text=True).returncode


def make_base(config, path: str) -> str:
  """The random-weight checkpoint of `config.rehearsal.preset`'s shape with a tokenizer
  trained on GSM8K train (problems and solutions)."""
  from score.data import loaders  # pylint: disable=g-import-not-at-top
  from score.utils import tiny_checkpoint  # pylint: disable=g-import-not-at-top
  r = config.rehearsal
  problems = loaders.load("gsm8k", split="train")
  texts = [f"{p.problem}\n{p.solution}\n#### {p.answer}" for p in problems]
  return tiny_checkpoint.make_tiny_checkpoint(
      path, texts, vocab_size=r.tokenizer_vocab, preset=r.preset, save_dtype="bfloat16",
      seed=config.seed)


def train(config, workdir: str) -> dict:
  r = config.rehearsal
  config_file = importlib.util.find_spec(r.config_module).origin
  t0 = time.perf_counter()
  base = make_base(config, os.path.join(workdir, "base"))
  summary: dict = {"preset": r.preset, "base_s": round(time.perf_counter() - t0, 2)}
  arg = f"{r.run_arg},model_dir={base}"
  first_phase = "score/r0_stage1"
  runs = {"run": os.path.join(workdir, "run"),
          "uninterrupted": os.path.join(workdir, "uninterrupted")}
  kill = f"{first_phase}:1"
  code = _child(config_file, arg, runs["run"], kill_after=kill, log_name="killed.log")
  summary["killed"] = {"after": kill, "returncode": code,
                       "was_killed": code == -signal.SIGKILL}
  summary["killed"]["phase_s"] = _phase_seconds(runs["run"])
  resume_code = _child(config_file, arg, runs["run"], log_name="resumed.log")
  full_code = _child(config_file, arg, runs["uninterrupted"], log_name="run.log")
  for name, directory in runs.items():
    resources = os.path.join(directory, "resources.json")
    summary[name] = dict(results_lib.read_json(resources) if os.path.exists(resources) else {},
                         phase_s=_phase_seconds(directory),
                         returncode=resume_code if name == "run" else full_code)
  exported = {}
  for name, directory in runs.items():
    out = os.path.join(workdir, "export" if name == "run" else "export_uninterrupted")
    ckpt = os.path.join(directory, "checkpoints", "score", "r0_stage2")
    exported[name] = out if os.path.isdir(ckpt) and _export(ckpt, out, base) == 0 else None
  checks = {"killed_mid_phase": summary["killed"]["was_killed"],
            "runs_finished": resume_code == 0 and full_code == 0,
            "exported": all(exported.values())}
  if checks["exported"]:
    resumed, full, start = (_tensors(exported["run"]), _tensors(exported["uninterrupted"]),
                            _tensors(base))
    checks["resumed_equals_uninterrupted"] = resumed.keys() == full.keys() and all(
        np.array_equal(resumed[k], full[k]) for k in resumed)
    moved = [k for k in resumed if k in start and not np.array_equal(resumed[k], start[k])]
    summary["moved_tensors"] = len(moved)
    checks["adapters_moved"] = bool(moved) and not any(
        any(n in k for n in _NOT_TRAINED) for k in moved)
    checks["peft_adapter"] = os.path.exists(
        os.path.join(exported["run"], "adapter", "adapter_model.safetensors"))
  summary["checks"] = checks
  summary["total_s"] = round(time.perf_counter() - t0, 2)
  results_lib.write_json(os.path.join(workdir, "rehearsal.json"), summary)
  print(json.dumps(summary, indent=2))
  failed = [k for k, ok in checks.items() if not ok]
  if failed:
    raise RuntimeError(f"rehearsal checks failed: {failed}; see {workdir}/rehearsal.json and "
                       "the logs in run/ and uninterrupted/")
  return summary
