"""Self-correction metrics (SCoRe, Kumar et al. 2024, §6): Acc@t1, Acc@t2, Δ(t1,t2), Δi→c, Δc→i.

For per-problem correctness `c1_N`, `c2_N` in {0, 1} of the first and second attempt:
  Acc@t1 = mean(c1), Acc@t2 = mean(c2), Δ = Acc@t2 − Acc@t1,
  Δi→c = mean((1 − c1) · c2)  (wrong at t1, right at t2),
  Δc→i = mean(c1 · (1 − c2))  (right at t1, wrong at t2), so Δ = Δi→c − Δc→i.
Intervals are 95 % percentile bootstrap intervals over problems (paired: the same resampled
problems for every metric), reported in percent.
"""

from __future__ import annotations

import numpy as np

METRICS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")
LABELS = {"acc_t1": "Acc@t1", "acc_t2": "Acc@t2", "delta": "Δ(t1,t2)",
          "delta_i2c": "Δi→c", "delta_c2i": "Δc→i", "mbpp_r": "MBPP-R",
          "pass@2": "pass@2 (sampled t1)"}


def _point(c1_RxN: np.ndarray, c2_RxN: np.ndarray) -> dict[str, np.ndarray]:
  return {
      "acc_t1": c1_RxN.mean(-1),
      "acc_t2": c2_RxN.mean(-1),
      "delta": c2_RxN.mean(-1) - c1_RxN.mean(-1),
      "delta_i2c": ((1 - c1_RxN) * c2_RxN).mean(-1),
      "delta_c2i": (c1_RxN * (1 - c2_RxN)).mean(-1),
  }


def self_correction_metrics(correct_t1, correct_t2, *, num_bootstrap: int = 2000,
                            seed: int = 0, level: float = 0.95) -> dict[str, dict]:
  """Each metric as `{"value", "low", "high"}` in percent, plus `"n"`.

  Args:
    correct_t1: per-problem correctness of the first attempt (N,), bools or {0, 1}.
    correct_t2: the same for the second attempt.
    num_bootstrap: bootstrap resamples for the intervals.
    seed: bootstrap seed.
    level: interval coverage.
  """
  c1 = np.asarray(correct_t1, dtype=np.float64)
  c2 = np.asarray(correct_t2, dtype=np.float64)
  if c1.shape != c2.shape or c1.ndim != 1 or c1.size == 0:
    raise ValueError(f"need two equal non-empty 1-D arrays, got {c1.shape} and {c2.shape}")
  point = _point(c1[None], c2[None])
  idx_RxN = np.random.default_rng(seed).integers(0, c1.size, size=(num_bootstrap, c1.size))
  boot = _point(c1[idx_RxN], c2[idx_RxN])
  q = (1 - level) / 2
  out = {"n": int(c1.size)}
  for name in METRICS:
    lo, hi = np.quantile(boot[name], [q, 1 - q])
    out[name] = {"value": 100 * float(point[name][0]), "low": 100 * float(lo),
                 "high": 100 * float(hi)}
  return out


def accuracy(correct, *, num_bootstrap: int = 2000, seed: int = 0,
             level: float = 0.95) -> dict:
  """`{"value", "low", "high", "n"}`: the mean of per-item correctness (N,) in percent with a
  percentile bootstrap interval over items (e.g. MBPP-R, the share of programs repaired)."""
  return mean(correct, scale=100.0, num_bootstrap=num_bootstrap, seed=seed, level=level)


def mean(values, *, scale: float = 1.0, num_bootstrap: int = 2000, seed: int = 0,
         level: float = 0.95) -> dict:
  """`{"value", "low", "high", "n"}`: `scale` × the mean of per-item values (N,) with a
  percentile bootstrap interval over items (e.g. a mean rubric score, `scale` 1)."""
  c = np.asarray(values, dtype=np.float64)
  if c.ndim != 1 or c.size == 0:
    raise ValueError(f"need a non-empty 1-D array, got shape {c.shape}")
  idx_RxN = np.random.default_rng(seed).integers(0, c.size, size=(num_bootstrap, c.size))
  q = (1 - level) / 2
  lo, hi = np.quantile(c[idx_RxN].mean(-1), [q, 1 - q])
  return {"value": scale * float(c.mean()), "low": scale * float(lo),
          "high": scale * float(hi), "n": int(c.size)}


def intervals_overlap(a: dict, b: dict) -> bool:
  """Whether two `{"low", "high"}` intervals overlap."""
  return not (a["high"] < b["low"] or b["high"] < a["low"])
