"""How well a judge agrees with a reference ranking (Self-Rewarding LMs, Yuan et al. 2024,
Table 1), and win/tie/lose rates of pairwise verdicts. Pure functions of scores and ranks."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["spearman", "kendall_tau", "judge_quality", "win_tie_lose"]



def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(len(x), dtype=np.float64)
  for v in np.unique(x):
    tie = x == v
    ranks[tie] = ranks[tie].mean()
  return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman's ρ (Pearson correlation of average ranks); None if either side is constant."""
  rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
  if rx.std() == 0 or ry.std() == 0:
    return None
  return float(np.corrcoef(rx, ry)[0, 1])


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Kendall's τ-b (tie-corrected); None if either side is constant."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  n = len(x)
  concordant = discordant = ties_x = ties_y = 0
  for i in range(n):
    for j in range(i + 1, n):
      dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
      if dx == 0 and dy == 0:
        continue
      if dx == 0:
        ties_x += 1
      elif dy == 0:
        ties_y += 1
      elif dx == dy:
        concordant += 1
      else:
        discordant += 1
  denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
  return None if denom == 0 else (concordant - discordant) / denom


def judge_quality(scores: Sequence[Sequence[float | None]], ranks: Sequence[Sequence[int]]
                  ) -> dict[str, float]:
  """Agreement of judge scores with human rankings, over prompts (rank 0 = best).

  * ``pairwise_accuracy`` (%): over response pairs of a prompt with different human ranks,
    how often the judge scores the better one strictly higher. A tie or a missing (None)
    score counts as a disagreement.
  * ``five_best`` (%): how often the human-best response gets score 5 (average ≥ 4.5).
  * ``exact_match`` (%): prompts whose judge ordering equals the human one exactly (same
    ties, no missing score).
  * ``spearman``, ``kendall_tau``: per-prompt correlation between judge scores and −rank,
    averaged over prompts where it is defined (≥ 2 scored responses, neither side constant);
    ``correlation_prompts`` says how many.
  * ``missing`` (%): responses without a valid score.
  """
  pairs = agree = best_five = exact = missing = total = 0
  rhos, taus = [], []
  for s_row, r_row in zip(scores, ranks, strict=True):
    if len(s_row) != len(r_row):
      raise ValueError(f"judge_quality: {len(s_row)} scores for {len(r_row)} ranks")
    n = len(r_row)
    total += n
    missing += sum(s is None for s in s_row)
    for i in range(n):
      for j in range(i + 1, n):
        if r_row[i] == r_row[j]:
          continue
        pairs += 1
        better, worse = (i, j) if r_row[i] < r_row[j] else (j, i)
        if s_row[better] is not None and s_row[worse] is not None and \
            s_row[better] > s_row[worse]:
          agree += 1
    best = min(range(n), key=lambda k: (r_row[k], k))
    best_five += int(s_row[best] is not None and s_row[best] >= 4.5)
    if all(s is not None for s in s_row):
      exact += int(all(np.sign(s_row[j] - s_row[i]) == np.sign(r_row[i] - r_row[j])
                       for i in range(n) for j in range(i + 1, n)))
    valid = [k for k in range(n) if s_row[k] is not None]
    if len(valid) >= 2:
      xs = [s_row[k] for k in valid]
      ys = [-r_row[k] for k in valid]
      rho, tau = spearman(xs, ys), kendall_tau(xs, ys)
      if rho is not None and tau is not None:
        rhos.append(rho)
        taus.append(tau)
  num_prompts = len(ranks)
  pct = lambda a, b: 100.0 * a / b if b else float("nan")
  return {"pairwise_accuracy": pct(agree, pairs), "five_best": pct(best_five, num_prompts),
          "exact_match": pct(exact, num_prompts),
          "spearman": float(np.mean(rhos)) if rhos else float("nan"),
          "kendall_tau": float(np.mean(taus)) if taus else float("nan"),
          "correlation_prompts": len(rhos), "prompts": num_prompts, "pairs": pairs,
          "missing": pct(missing, total)}


def win_tie_lose(winners: Sequence[str | None]) -> dict[str, float]:
  """Win/tie/lose % of response A over the judged items (None = both orders failed, counted
  in ``failed`` and left out); ``win_rate`` = win + tie / 2 (AlpacaEval-style)."""
  judged = [w for w in winners if w is not None]
  n = len(judged)
  pct = lambda k: 100.0 * sum(w == k for w in judged) / n if n else float("nan")
  out = {"win": pct("A"), "tie": pct("tie"), "lose": pct("B"), "judged": n,
         "failed": len(winners) - n}
  out["win_rate"] = out["win"] + out["tie"] / 2 if n else float("nan")
  return out
