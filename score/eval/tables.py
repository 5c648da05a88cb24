"""Result tables: ours beside the paper's published numbers, as Markdown and JSON."""

from __future__ import annotations

from score.eval import metrics as metrics_lib
from score.eval import results as results_lib

# SCoRe (Kumar et al., 2024) Table 2, MATH500: t1 / t2 / Δ / i→c / c→i in %.
PUBLISHED_MATH = {
    "base": (52.6, 41.4, -11.2, 4.6, 15.8),
    "self_refine": (52.8, 51.8, -1.0, 3.2, 4.2),
    "star": (53.6, 54.0, 0.4, 2.6, 2.2),
    "pair_sft": (52.4, 54.2, 1.8, 5.4, 3.6),
    "score": (60.0, 64.4, 4.4, 5.8, 1.4),
}
# Table 3, HumanEval after MBPP training: t1 / t2 / Δ / i→c / c→i (MBPP-R below).
PUBLISHED_HUMANEVAL = {
    "base": (53.7, 56.7, 3.0, 7.9, 4.9),
    "self_refine": (53.7, 52.5, -1.2, 9.8, 11.0),
    "pair_sft": (56.1, 54.3, -1.8, 4.3, 6.1),
    "score": (52.4, 64.6, 12.2, 15.2, 3.0),
}
# Table 3's MBPP-R column: % of the base model's wrong MBPP-test programs repaired.
PUBLISHED_MBPP_R = {"base": 47.3, "self_refine": 30.7, "pair_sft": 59.8, "score": 60.6}
# Table 4, MATH ablations: t1 / t2 / Δ.
PUBLISHED_ABLATIONS = {
    "score": (60.0, 64.4, 4.4),
    "no_multi_turn": (61.8, 59.4, -2.4),
    "no_stage1": (59.2, 61.4, 2.2),
    "no_shaping": (60.0, 62.6, 2.6),
    "star_stage2": (56.2, 58.4, 2.2),
}
PUBLISHED = {"math": PUBLISHED_MATH, "humaneval": PUBLISHED_HUMANEVAL,
             "ablations": PUBLISHED_ABLATIONS}
# Single-metric columns a method's results may hold beside the self-correction metrics
# (`{"value", "low", "high", "n"}`, shown before them), and the paper's values of each.
EXTRA = ("mbpp_r", "pass@2")
PUBLISHED_EXTRA = {"humaneval": {"mbpp_r": PUBLISHED_MBPP_R}}


def markdown_table(results: dict[str, dict], *, published: dict | None = None,
                   published_extra: dict[str, dict] | None = None,
                   title: str | None = None) -> str:
  """A Markdown table of `{method: self_correction_metrics(...)}` (values with 95 % CIs).

  A metric of `EXTRA` (e.g. `"mbpp_r"`) that some method has gets a column first. With
  `published`, the paper's numbers follow in their own, labelled columns
  (`published_extra[name][method]` for the extra ones).
  """
  extra = [k for k in EXTRA if any(k in r for r in results.values())]
  cols = [metrics_lib.LABELS[m] for m in metrics_lib.METRICS]
  header = (["method", "n"] + [f"{metrics_lib.LABELS[k]} (ours)" for k in extra]
            + [f"{c} (ours)" for c in cols])
  if published:
    header += ([f"{metrics_lib.LABELS[k]} (published)" for k in extra]
               + [f"{c} (published)" for c in cols])
  lines = ([f"**{title}**", ""] if title else []) + [
      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method, res in results.items():
    row = ([method, str(res["n"])] + [results_lib.interval(res[k]) if k in res else "—" for k in extra]
           + [results_lib.interval(res[m]) for m in metrics_lib.METRICS])
    if published:
      pub_extra = [(published_extra or {}).get(k, {}).get(method) for k in extra]
      row += ["—" if v is None else f"{v:.1f}" for v in pub_extra]
      pub = published.get(method)
      row += ([f"{v:.1f}" for v in pub] + [""] * (len(cols) - len(pub)) if pub
              else ["—"] * len(cols))
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def write_results(workdir: str, results: dict[str, dict], *, info: dict | None = None,
                  published: dict | None = None, published_extra: dict[str, dict] | None = None,
                  title: str | None = None) -> str:
  """Writes `results.json` and `results.md` to `workdir`; returns the Markdown."""
  table = markdown_table(results, published=published, published_extra=published_extra,
                         title=title)
  results_lib.write(workdir, {"results": results, "info": info or {}},
                    table + ("\n" + results_lib.info_lines(info) if info else ""), echo=False)
  return table
