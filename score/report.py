r"""What a researcher sees: a Markdown report of one or several runs, with training curves.

    python -m score.report WORKDIR [WORKDIR ...] [--out DIR]

Reads what a run writes to its workdir (README, "What a run writes"): `config.json`,
`run_info.json`, `metrics.jsonl`, `results.json` and `evals/<method>.json`. Writes
`<out>/report.md` with

* the runs (config title, trainer, commit, machine, seed) and the config fields that differ
  between them;
* the results table, the workdirs side by side (value [95 % interval], in %), and a bar plot
  of Acc@t1 / Acc@t2 and of Δ(t1,t2), Δi→c, Δc→i with their intervals (`results.png`);
* training curves as PNG files (matplotlib, Agg backend): reward per turn, KL to the
  reference, Acc@t1/Acc@t2 when a trainer logs them, flip rates, lengths, and the loss of
  every phase. A plot whose metrics no run logged is skipped, and the report says so;
* a few sample attempts from the evaluations (problems where the second attempt differs);
* each run's full config.

Metric names are `<phase>/<metric>` (`score.utils.metrics`). The RL phases of one method,
`<method>/r<round>_stage<k>`, are drawn as one curve with the stages laid end to end on a
cumulative step axis (dotted lines at stage boundaries). `eval/...` scalars are the final
evaluation, shown in the table rather than as curves.

`samples_markdown` / `episodes_markdown` also build the TensorBoard text of sample rollouts
(problem, attempt 1, attempt 2, rewards) that a trainer logs with
`MetricWriter.write_texts(step, {name: text})`.

Importing this module is light: matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable, Sequence

import numpy as np

from score.eval import metrics as metrics_lib
from score.utils import metrics as metrics_io

# `<method>/r<round>_stage<k>/<metric>`, the phase names of `score.trainers.score`.
_STAGE_RE = re.compile(r"^(?P<method>.+?)/r(?P<round>\d+)_stage(?P<stage>\d+)/(?P<metric>.+)$")


# ---------------------------------------------------------------------------------------------
# Reading a workdir


@dataclasses.dataclass
class Run:
  """Everything a report needs from one workdir (missing files give empty values)."""
  workdir: str
  name: str
  config: dict
  info: dict
  rows: list[dict]
  results: dict[str, dict]
  evals: dict[str, dict]
  results_md: str = ""

  @property
  def commit(self) -> str:
    return self.info.get("commit") or "unknown"


def _read_json(path: str, default):
  if not os.path.exists(path):
    return default
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_run(workdir: str, name: str | None = None) -> Run:
  """Reads a run's workdir; raises FileNotFoundError if it holds nothing a run writes."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r} is not a directory")
  known = ("config.json", "run_info.json", "metrics.jsonl", "results.json")
  if not any(os.path.exists(os.path.join(workdir, f)) for f in known):
    raise FileNotFoundError(
        f"{workdir!r} holds none of {', '.join(known)}: is it a run's workdir "
        "(`python -m experiments.main --config ... --workdir DIR`)?")
  results = _read_json(os.path.join(workdir, "results.json"), {})
  results = results.get("results") if isinstance(results, dict) else None
  if not (isinstance(results, dict) and all(isinstance(v, dict) for v in results.values())):
    results = {}  # another trainer's layout: the report shows its results.md instead
  results_md = ""
  if os.path.exists(os.path.join(workdir, "results.md")):
    with open(os.path.join(workdir, "results.md"), encoding="utf-8") as f:
      results_md = f.read()
  evals = {}
  eval_dir = os.path.join(workdir, "evals")
  if os.path.isdir(eval_dir):
    for fn in sorted(os.listdir(eval_dir)):
      if fn.endswith(".json"):
        evals[fn[:-len(".json")]] = _read_json(os.path.join(eval_dir, fn), {})
  return Run(workdir=workdir, name=name or os.path.basename(workdir.rstrip("/")),
             config=_read_json(os.path.join(workdir, "config.json"), {}),
             info=_read_json(os.path.join(workdir, "run_info.json"), {}),
             rows=metrics_io.read_metrics(workdir),
             results=results, results_md=results_md, evals=evals)


def _unique_names(workdirs: Sequence[str]) -> list[str]:
  """Short run names: the workdir's basename, with its parent when basenames collide."""
  paths = [os.path.abspath(w).rstrip("/") for w in workdirs]
  names = [os.path.basename(p) for p in paths]
  if len(set(names)) < len(names):
    names = [os.path.join(os.path.basename(os.path.dirname(p)), n) for p, n in zip(paths, names)]
  if len(set(names)) < len(names):
    names = [f"{n}#{i}" for i, n in enumerate(names)]
  return names


# ---------------------------------------------------------------------------------------------
# Curves


@dataclasses.dataclass
class Curve:
  """One metric of one method: steps on a cumulative axis across its phases."""
  steps: np.ndarray
  values: np.ndarray
  boundaries: list[float]  # cumulative steps where a new stage starts


def split_key(key: str) -> tuple[str, tuple[int, int], str] | None:
  """`(method, (round, stage), metric)` of a metric name, or None for eval/bookkeeping keys.

  `score/r0_stage2/reward/t1` -> `("score", (0, 2), "reward/t1")`;
  `warmup/loss` -> `("warmup", (0, 0), "loss")`; `eval/base/acc_t1` -> None.
  """
  if key in ("step", "time") or key.startswith("eval/"):
    return None
  m = _STAGE_RE.match(key)
  if m:
    return m["method"], (int(m["round"]), int(m["stage"])), m["metric"]
  method, sep, metric = key.partition("/")
  if not sep:
    return None
  return method, (0, 0), metric


def _as_float(v) -> float:
  try:
    return float(v)  # "nan" / "inf" strings too (MetricWriter writes non-finite as strings)
  except (TypeError, ValueError):
    return math.nan


def curves(rows: Sequence[dict]) -> dict[str, dict[str, Curve]]:
  """`{metric: {method: Curve}}` from metrics.jsonl rows.

  A resumed run may write a step twice; the last value wins. The stages of a method
  (rounds × stages) are laid end to end: each starts where the previous one's last step is.
  """
  # (method, segment, metric) -> {step: value}
  raw: dict[tuple[str, tuple[int, int], str], dict[int, float]] = {}
  for row in rows:
    step = int(row.get("step", 0))
    for key, value in row.items():
      parts = split_key(key)
      if parts is None or isinstance(value, (dict, list)):
        continue
      raw.setdefault(parts, {})[step] = _as_float(value)
  # Length of each segment of each method: the largest step any of its metrics logged.
  seg_len: dict[str, dict[tuple[int, int], int]] = {}
  for (method, seg, _), points in raw.items():
    d = seg_len.setdefault(method, {})
    d[seg] = max(d.get(seg, 0), max(points))
  offsets = {}
  for method, segs in seg_len.items():
    total = 0
    for seg in sorted(segs):
      offsets[(method, seg)] = total
      total += segs[seg]
  out: dict[str, dict[str, Curve]] = {}
  grouped: dict[tuple[str, str], list[tuple[float, float, tuple[int, int]]]] = {}
  for (method, seg, metric), points in raw.items():
    off = offsets[(method, seg)]
    grouped.setdefault((metric, method), []).extend(
        (off + s, v, seg) for s, v in points.items())
  for (metric, method), pts in grouped.items():
    pts.sort()
    segs = sorted(seg_len[method])
    bounds = [float(offsets[(method, s)]) for s in segs[1:]] if len(segs) > 1 else []
    out.setdefault(metric, {})[method] = Curve(
        steps=np.array([p[0] for p in pts], float), values=np.array([p[1] for p in pts]),
        boundaries=bounds)
  return out


@dataclasses.dataclass(frozen=True)
class PlotSpec:
  """One figure: the metrics it shows (`match(metric_name)`), one panel per metric or per
  method (`by`)."""
  filename: str
  title: str
  match: Callable[[str], bool]
  by: str = "metric"  # "metric": a panel per metric, a line per method; "method": vice versa


PLOTS = (
    PlotSpec("reward.png", "Reward per turn",
             lambda m: m.startswith("reward/")),
    PlotSpec("kl.png", "KL to the reference",
             lambda m: m in ("kl", "kl_seq") or m.startswith("kl/")),
    PlotSpec("accuracy.png", "Acc@t1 / Acc@t2 during training",
             lambda m: m.startswith("acc") or "/acc" in m),
    PlotSpec("flips.png", "Flip rates (i→c, c→i)", lambda m: m.startswith("flip/")),
    PlotSpec("lengths.png", "Lengths (tokens per attempt)",
             lambda m: m.startswith(("tokens/", "length")) or "/length" in m),
    PlotSpec("loss.png", "Loss per phase", lambda m: m == "loss" or m.endswith("_loss"),
             by="method"),
)


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _grid(n: int):
  cols = min(n, 3)
  return (n + cols - 1) // cols, cols


def plot_curves(runs_curves: dict[str, dict[str, dict[str, Curve]]], spec: PlotSpec,
                path: str) -> list[str] | None:
  """Draws `spec` for `{run: curves(...)}`; returns the metric names drawn, or None (skipped).

  Colours follow the method, line styles the run, so methods and runs can be told apart.
  """
  metrics = sorted({m for c in runs_curves.values() for m in c if spec.match(m)})
  if not metrics:
    return None
  methods = sorted({meth for c in runs_curves.values() for m in metrics for meth in c.get(m, {})})
  panels = metrics if spec.by == "metric" else methods
  plt = _plt()
  rows, cols = _grid(len(panels))
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
  colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
  styles = ["-", "--", ":", "-."]
  multi = len(runs_curves) > 1
  for ax, panel in zip(axes.flat, panels):
    for r, (run, c) in enumerate(runs_curves.items()):
      pairs = ([(panel, meth) for meth in methods] if spec.by == "metric"
               else [(m, panel) for m in metrics])
      for metric, method in pairs:
        curve = c.get(metric, {}).get(method)
        if curve is None:
          continue
        label = method if spec.by == "metric" else metric
        if multi:
          label = f"{run}: {label}"
        colour = colours[method] if spec.by == "metric" else f"C{metrics.index(metric) % 10}"
        ax.plot(curve.steps, curve.values, styles[r % len(styles)], color=colour,
                marker="." if len(curve.steps) < 20 else None, label=label)
        for b in curve.boundaries:
          ax.axvline(b, color="grey", lw=0.6, ls=":")
    ax.set_title(panel, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(spec.title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return metrics


def _number(res: dict, key: str) -> tuple[float, float, float] | None:
  """`(value, minus, plus)` of a result entry: an interval dict `{"value", "low", "high"}`,
  or a number with an optional symmetric `<key>_ci95`; None for anything else."""
  v = res.get(key)
  if isinstance(v, dict) and "value" in v:
    value = float(v["value"])
    return value, value - float(v.get("low", value)), float(v.get("high", value)) - value
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    ci = res.get(f"{key}_ci95")
    ci = float(ci) if isinstance(ci, (int, float)) else 0.0
    return float(v), ci, ci
  return None


def result_columns(runs: Sequence[Run]) -> list[str]:
  """The metrics of the runs' results, self-correction metrics first, then the others in the
  order the runs wrote them (`n` and `<key>_ci95`, shown with their metric, left out)."""
  keys: dict[str, None] = {}
  for r in runs:
    for res in r.results.values():
      for k in res:
        if k != "n" and not (k.endswith("_ci95") and k[:-len("_ci95")] in res):
          if _number(res, k) is not None:
            keys[k] = None
  first = [k for k in metrics_lib.METRICS if k in keys]
  return first + [k for k in keys if k not in first]


def plot_results(runs: Sequence[Run], path: str) -> bool:
  """Bar plot of the evaluation with its intervals, the runs side by side. Self-correction
  runs: Acc@t1/Acc@t2 and Δ, Δi→c, Δc→i per method; other trainers: a panel per metric (at
  most four). Returns False (and draws nothing) without results."""
  runs = [r for r in runs if r.results]
  columns = result_columns(runs)
  if not columns:
    return False
  methods = list(dict.fromkeys(m for r in runs for m in r.results))
  if set(metrics_lib.METRICS) <= set(columns):
    groups = (("acc_t1", "acc_t2"), ("delta", "delta_i2c", "delta_c2i"))
    titles = ("Accuracy of each attempt", "Self-correction: Δ = Δi→c − Δc→i")
  else:
    groups = tuple((c,) for c in columns[:4])
    titles = tuple(metrics_lib.LABELS.get(c, c) for c in columns[:4])
  plt = _plt()
  width = min(16.0, 3.0 + 0.8 * len(methods) * len(runs))
  if len(groups) == 2 and width > 9:  # many bars: one panel above the other
    fig, axes = plt.subplots(2, 1, figsize=(width, 6.4), squeeze=False)
  else:
    fig, axes = plt.subplots(1, len(groups), figsize=(min(2 * width, 4.5 * len(groups) + 2), 3.6),
                             squeeze=False)
  x = np.arange(len(methods))
  for ax, names, title in zip(axes.flat, groups, titles):
    bars = [(r, n) for r in runs for n in names]
    bar_width = 0.8 / len(bars)
    for i, (run, name) in enumerate(bars):
      points = [_number(run.results.get(m, {}), name) for m in methods]
      vals = [p[0] if p else np.nan for p in points]
      err = [[p[1] if p else 0 for p in points], [p[2] if p else 0 for p in points]]
      label = (metrics_lib.LABELS.get(name, name) if len(names) > 1 else "") + (
          f" ({run.name})" if len(runs) > 1 else "")
      alpha = 1.0 - 0.45 * runs.index(run) / max(len(runs) - 1, 1) if len(runs) > 1 else 1.0
      colour = f"C{names.index(name)}" if len(names) > 1 else f"C{runs.index(run)}"
      ax.bar(x + (i - (len(bars) - 1) / 2) * bar_width, vals, bar_width, yerr=err, capsize=2,
             label=label.strip() or None, color=colour, alpha=alpha)
    ax.set_xticks(x, methods, rotation=20, fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  if len(groups) == 2 and groups[0] == ("acc_t1", "acc_t2"):
    axes.flat[0].set_ylabel("%")
  n = {r.results[m]["n"] for r in runs for m in r.results if "n" in r.results[m]}
  title = ("Greedy two-attempt evaluation, 95 % bootstrap intervals"
           if groups[0] == ("acc_t1", "acc_t2") else "Evaluation, 95 % intervals where logged")
  fig.suptitle(title + (f" (n = {', '.join(map(str, sorted(n)))})" if n else ""), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ---------------------------------------------------------------------------------------------
# Sample rollouts (TensorBoard text and the report)


def _cell(text: str, max_chars: int) -> str:
  text = str(text)
  if len(text) > max_chars:
    text = text[:max_chars - 1] + "…"
  text = text.replace("|", "\\|")
  return text.replace("\r", "").replace("\n", "<br>") or "∅"


def samples_markdown(problems: Sequence[str], attempts: Sequence[Sequence[str]],
                     rewards_BxK=None, *, max_rows: int = 8, max_chars: int = 400) -> str:
  """A Markdown table of rollouts: problem, attempt 1, attempt 2 (..., one per turn), rewards.

  TensorBoard's text plugin renders Markdown tables, so this is what a trainer logs with
  `MetricWriter.write_texts(step, {"<phase>/samples": samples_markdown(...)})`.

  Args:
    problems: the problem text of each row (B,).
    attempts: the decoded attempts of each row, `attempts[b][k]` for turn k+1.
    rewards_BxK: reward of each attempt, or None.
    max_rows: rows shown (the first ones).
    max_chars: longer texts are cut, with "…".
  """
  if len(problems) != len(attempts):
    raise ValueError(f"{len(problems)} problems but {len(attempts)} rows of attempts")
  num_turns = max((len(a) for a in attempts), default=0)
  rewards = None if rewards_BxK is None else np.asarray(rewards_BxK, dtype=np.float64)
  if rewards is not None and rewards.shape[0] != len(problems):
    raise ValueError(f"rewards_BxK has {rewards.shape[0]} rows, expected {len(problems)}")
  header = ["#", "problem"]
  for k in range(num_turns):
    header.append(f"attempt {k + 1}")
    if rewards is not None:
      header.append(f"r{k + 1}")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for b in range(min(max_rows, len(problems))):
    row = [str(b), _cell(problems[b], max_chars)]
    for k in range(num_turns):
      row.append(_cell(attempts[b][k], max_chars) if k < len(attempts[b]) else "—")
      if rewards is not None:
        row.append(f"{rewards[b, k]:g}" if k < rewards.shape[1] and k < len(attempts[b])
                   else "—")
    lines.append("| " + " | ".join(row) + " |")
  if len(problems) > max_rows:
    lines.append(f"\n{max_rows} of {len(problems)} rows.")
  return "\n".join(lines) + "\n"


def problem_text(problem) -> str:
  """The human-readable text of a problem record (synthetic `question`, MATH/code `problem`)."""
  for attr in ("question", "problem", "prompt", "text"):
    value = getattr(problem, attr, None)
    if isinstance(value, str):
      return value
  return str(problem)


def episodes_markdown(env, problems: Sequence[Any], episodes, rewards_BxK, *,
                      max_rows: int = 8, max_chars: int = 400) -> str:
  """`samples_markdown` of a rollout batch (`score.sampling.rollouts.Episodes`).

  `env` decodes token ids (`env.decode(ids)`, as every environment of `score.trainers.envs`
  does); `problems[episodes.prompt_index_B[b]]` is row b's problem.
  """
  rows = range(min(max_rows, len(episodes.responses)))
  texts = [problem_text(problems[int(episodes.prompt_index_B[b])]) for b in rows]
  attempts = [[env.decode(ids) for ids in episodes.responses[b]] for b in rows]
  rewards = np.asarray(rewards_BxK)[:len(texts)]
  table = samples_markdown(texts, attempts, rewards, max_rows=max_rows, max_chars=max_chars)
  if len(episodes.responses) > max_rows:
    table += f"\n{max_rows} of {len(episodes.responses)} episodes.\n"
  return table


def write_rollout_samples(writer, step: int, name: str, env, problems: Sequence[Any], episodes,
                          rewards_BxK, *, max_rows: int = 8) -> str:
  """Logs `episodes_markdown(...)` as TensorBoard text `name` at `step`; returns the text.

  `writer` is a `score.utils.metrics.MetricWriter` (or anything with `write_texts`). In a
  trainer's update, after sampling:
  `report.write_rollout_samples(writer, step, f"{phase}/samples", env, problems, episodes, r)`.
  """
  text = episodes_markdown(env, problems, episodes, rewards_BxK, max_rows=max_rows)
  writer.write_texts(step, {name: text})
  return text


def eval_samples_markdown(evaluation: dict, *, max_rows: int = 5, max_chars: int = 200) -> str:
  """Sample attempts from an `evals/<method>.json`, those whose two attempts differ first."""
  attempts = evaluation.get("attempts") or []
  c1, c2 = evaluation.get("correct_t1") or [], evaluation.get("correct_t2") or []
  if not attempts:
    return ""
  order = sorted(range(len(attempts)),
                 key=lambda i: (attempts[i].get("t1") == attempts[i].get("t2"), i))
  order = order[:max_rows]
  rewards = (np.array([[c1[i], c2[i]] for i in order], float)
             if len(c1) == len(c2) == len(attempts) else None)
  return samples_markdown([str(attempts[i].get("id", i)) for i in order],
                          [[attempts[i].get("t1", ""), attempts[i].get("t2", "")] for i in order],
                          rewards, max_rows=max_rows, max_chars=max_chars)


# ---------------------------------------------------------------------------------------------
# The report


def _fmt(res: dict | None, key: str) -> str:
  """An entry of a results table: `value [low, high]`, `value ± ci95` or the number."""
  point = _number(res or {}, key)
  if point is None:
    return "—"
  value, minus, plus = point
  v = (res or {}).get(key)
  if isinstance(v, dict):
    return f"{value:.1f} [{value - minus:.1f}, {value + plus:.1f}]"
  if f"{key}_ci95" in (res or {}):
    return f"{value:.1f} ± {minus:.1f}"
  return f"{value:.4g}"


def results_table(runs: Sequence[Run]) -> str:
  """One Markdown table, the runs side by side: a row per method, per metric a column per run.

  Self-correction results are % with 95 % bootstrap intervals; other trainers' metrics are
  shown as they wrote them ("±": their 95 % interval). "—" where a run has no such method or
  metric. When every run's config names the same published table (`config.published`), the
  paper's numbers follow in their own columns.
  """
  from score.eval import tables  # pylint: disable=g-import-not-at-top
  runs = [r for r in runs if r.results]
  columns = result_columns(runs)
  if not columns:
    return ""
  methods = list(dict.fromkeys(m for r in runs for m in r.results))
  multi = len(runs) > 1
  header = ["method", "n"]
  for name in columns:
    header += [metrics_lib.LABELS.get(name, name) + (f" ({r.name})" if multi else "")
               for r in runs]
  published_names = {r.config.get("published") or "" for r in runs}
  published_name = published_names.pop() if len(published_names) == 1 else ""
  published = tables.PUBLISHED.get(published_name)
  if published and not set(metrics_lib.METRICS) <= set(columns):
    published = None
  # Columns the paper reports beside the main ones (Table 3's MBPP-R), when measured.
  extra = {k: v for k, v in tables.PUBLISHED_EXTRA.get(published_name, {}).items()
           if published and k in columns}
  if published:
    header += [f"{metrics_lib.LABELS.get(m, m)} (published)"
               for m in list(metrics_lib.METRICS) + list(extra)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method in methods:
    ns = sorted({str(r.results[method]["n"]) for r in runs
                 if method in r.results and "n" in r.results[method]})
    row = [method, "/".join(ns) or "—"]
    for name in columns:
      row += [_fmt(r.results.get(method), name) for r in runs]
    if published:
      pub = published.get(method)
      row += ([f"{v:.1f}" for v in pub] + [""] * (len(metrics_lib.METRICS) - len(pub))
              if pub else ["—"] * len(metrics_lib.METRICS))
      row += [f"{v[method]:.1f}" if method in v else "—" for v in extra.values()]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


_MISSING = "<missing>"


def config_differences(runs: Sequence[Run]) -> dict[str, list]:
  """Config fields (dotted names) whose values differ between runs."""
  flat = [_flatten(r.config) for r in runs]
  keys = sorted(set().union(*flat)) if flat else []
  return {k: [f.get(k, _MISSING) for f in flat] for k in keys
          if len({json.dumps(f.get(k, _MISSING), sort_keys=True, default=str)
                  for f in flat}) > 1}


def _runs_table(runs: Sequence[Run]) -> str:
  fields = [
      ("workdir", lambda r: f"`{r.workdir}`"),
      ("title", lambda r: r.config.get("title", "—")),
      ("trainer", lambda r: r.config.get("trainer", "—")),
      ("commit", lambda r: f"`{r.commit}`"),
      ("machine", lambda r: r.info.get("machine", "—")),
      ("seed", lambda r: str(r.config.get("seed", "—"))),
      ("command", lambda r: "`" + " ".join(r.info.get("argv", [])[1:]) + "`"
       if r.info.get("argv") else "—"),
      ("versions", lambda r: ", ".join(f"{k} {v}" for k, v in r.info.get("versions", {}).items()
                                      if k in ("jax", "flax", "optax", "transformers")) or "—"),
  ]
  lines = ["| | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
  for label, fn in fields:
    lines.append(f"| {label} | " + " | ".join(_cell(fn(r), 300) for r in runs) + " |")
  return "\n".join(lines) + "\n"


def write_report(workdirs: Sequence[str], out: str | None = None, *,
                 samples: int = 5) -> str:
  """Writes `<out>/report.md` and its PNG plots for `workdirs`; returns the report's path.

  `out` defaults to `<workdir>/report` for one run and `./report` for several.
  """
  if not workdirs:
    raise ValueError("no workdirs given")
  runs = [load_run(w, n) for w, n in zip(workdirs, _unique_names(workdirs))]
  if out is None:
    out = os.path.join(runs[0].workdir, "report") if len(runs) == 1 else "report"
  os.makedirs(out, exist_ok=True)
  md = ["# Report: " + ", ".join(r.name for r in runs), ""]
  md += ["## Runs", "", _runs_table(runs)]
  if len(runs) > 1:
    diff = config_differences(runs)
    if diff:
      md += ["Config fields that differ:", "",
             "| field | " + " | ".join(r.name for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
      md += [f"| `{k}` | " + " | ".join(
          "—" if v == _MISSING else _cell(json.dumps(v, ensure_ascii=False, default=str), 80)
          for v in vals)
             + " |" for k, vals in diff.items()]
      md.append("")

  md += ["## Results", ""]
  table = results_table(runs)
  if table:
    titles = {r.config.get("title") for r in runs if r.config.get("title")}
    if len(titles) == 1:
      md += [f"**{titles.pop()}** — value [95 % bootstrap interval], %", ""]
    md += [table]
    if plot_results(runs, os.path.join(out, "results.png")):
      md += ["![results](results.png)", ""]
  for r in runs:
    if not r.results and r.results_md:
      md += [f"`{r.name}/results.md`:", "", r.results_md, ""]
  missing = [r.name for r in runs if not r.results and not r.results_md]
  if missing:
    md += [f"No results in: {', '.join(missing)} (the run has not finished its "
           "evaluation, or its trainer writes none).", ""]

  md += ["## Training curves", ""]
  runs_curves = {r.name: curves(r.rows) for r in runs}
  skipped = []
  for spec in PLOTS:
    drawn = plot_curves(runs_curves, spec, os.path.join(out, spec.filename))
    if drawn is None:
      skipped.append(spec.title)
      continue
    md += [f"### {spec.title}", "", f"![{spec.title}]({spec.filename})", "",
           "Metrics: " + ", ".join(f"`{m}`" for m in drawn), ""]
  if skipped:
    md += ["Not drawn (no run logged these metrics): " + "; ".join(skipped) + ".", ""]
  no_rows = [r.name for r in runs if not r.rows]
  if no_rows:
    md += [f"No `metrics.jsonl` rows in: {', '.join(no_rows)}.", ""]

  if samples > 0 and any(r.evals for r in runs):
    md += ["## Sample attempts", "",
           "Held-out problems of the evaluation, those whose attempts differ first.", ""]
    for r in runs:
      for method, ev in r.evals.items():
        text = eval_samples_markdown(ev, max_rows=samples)
        if text:
          md += [f"<details><summary>{r.name}: {method}</summary>", "", text, "</details>", ""]

  md += ["## Config", ""]
  for r in runs:
    if r.config:
      md += [f"<details><summary>{r.name}: config.json</summary>", "", "```json",
             json.dumps(r.config, indent=2, default=str), "```", "", "</details>", ""]
    else:
      md += [f"{r.name}: no `config.json`.", ""]
  path = os.path.join(out, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(md))
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m score.report",
      description="A Markdown report (results table, training curves, config) of runs.")
  parser.add_argument("workdirs", nargs="+", help="run workdirs, compared side by side")
  parser.add_argument("--out", default=None,
                      help="output folder (default: WORKDIR/report for one run, ./report)")
  parser.add_argument("--samples", type=int, default=5,
                      help="sample attempts shown per method (0: none)")
  args = parser.parse_args(argv)
  try:
    path = write_report(args.workdirs, args.out, samples=args.samples)
  except (FileNotFoundError, ValueError) as e:
    print(f"score.report: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
