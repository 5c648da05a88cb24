"""`score.eval.metrics`: the self-correction table's numbers against hand-worked values, the
percentile bootstrap against an independently written one, and interval coverage on simulated
data (the intervals every SCoRe table prints must mean what they say)."""

import math

import numpy as np
import pytest

from score.eval import metrics

# Ten problems, worked by hand:
#   c1: 1 1 0 0 1 0 0 1 0 0   -> Acc@t1 = 4/10
#   c2: 1 0 1 1 1 1 0 1 0 0   -> Acc@t2 = 6/10
#   wrong -> right at problems 2, 3, 5 -> Δi→c = 3/10; right -> wrong at problem 1 -> Δc→i = 1/10
#   Δ = 60 − 40 = 20 = 30 − 10.
C1 = [1, 1, 0, 0, 1, 0, 0, 1, 0, 0]
C2 = [1, 0, 1, 1, 1, 1, 0, 1, 0, 0]


def _values(m):
  return {k: m[k]["value"] for k in metrics.METRICS}


def test_self_correction_table_by_hand():
  m = metrics.self_correction_metrics(C1, C2, num_bootstrap=10)
  assert m["n"] == 10
  expected = {"acc_t1": 40.0, "acc_t2": 60.0, "delta": 20.0, "delta_i2c": 30.0,
              "delta_c2i": 10.0}
  assert _values(m) == pytest.approx(expected, abs=1e-9)
  # Bools are accepted and give the same table.
  mb = metrics.self_correction_metrics(np.array(C1, bool), np.array(C2, bool), num_bootstrap=10)
  assert _values(mb) == pytest.approx(expected, abs=1e-9)


def test_self_correction_table_when_the_second_attempt_is_worse():
  # c1: 1 1 1 0; c2: 0 1 0 1 -> Acc 75 -> 50, Δi→c = 25 (problem 3), Δc→i = 50 (problems 0, 2).
  m = metrics.self_correction_metrics([1, 1, 1, 0], [0, 1, 0, 1], num_bootstrap=10)
  assert _values(m) == pytest.approx(
      {"acc_t1": 75.0, "acc_t2": 50.0, "delta": -25.0, "delta_i2c": 25.0, "delta_c2i": 50.0})


@pytest.mark.parametrize("c,acc", [(1, 100.0), (0, 0.0)])
def test_all_correct_and_all_wrong(c, acc):
  m = metrics.self_correction_metrics([c] * 7, [c] * 7, num_bootstrap=50)
  for name, value in {"acc_t1": acc, "acc_t2": acc, "delta": 0.0, "delta_i2c": 0.0,
                      "delta_c2i": 0.0}.items():
    # Every resample is the same table: a zero-width interval at the value.
    assert (m[name]["low"], m[name]["value"], m[name]["high"]) == (value, value, value), name
  a = metrics.accuracy([c] * 5, num_bootstrap=50)
  assert a == {"value": acc, "low": acc, "high": acc, "n": 5}


def test_delta_is_i2c_minus_c2i_on_random_tables():
  rng = np.random.default_rng(3)
  for n in (1, 2, 9, 50):
    c1, c2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    m = metrics.self_correction_metrics(c1, c2, num_bootstrap=20, seed=int(n))
    # Counted independently of the module.
    i2c = sum(1 for a, b in zip(c1, c2) if not a and b) / n * 100
    c2i = sum(1 for a, b in zip(c1, c2) if a and not b) / n * 100
    assert m["delta_i2c"]["value"] == pytest.approx(i2c)
    assert m["delta_c2i"]["value"] == pytest.approx(c2i)
    assert m["delta"]["value"] == pytest.approx(m["delta_i2c"]["value"] -
                                                m["delta_c2i"]["value"])
    assert m["delta"]["value"] == pytest.approx(100 * (c2.mean() - c1.mean()))


def test_bad_inputs_are_errors():
  with pytest.raises(ValueError, match="equal non-empty 1-D"):
    metrics.self_correction_metrics([1, 0], [1])
  with pytest.raises(ValueError, match="equal non-empty 1-D"):
    metrics.self_correction_metrics([], [])
  with pytest.raises(ValueError, match="non-empty 1-D"):
    metrics.accuracy([[1, 0]])


# ---------------------------------------------------------------------------------------------
# Bootstrap intervals against an independent percentile bootstrap.


def _quantile(xs, q):
  """The linear-interpolation sample quantile (Hyndman & Fan type 7), written out."""
  xs = sorted(xs)
  pos = (len(xs) - 1) * q
  lo = math.floor(pos)
  hi = min(lo + 1, len(xs) - 1)
  return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _reference_bootstrap(c1, c2, *, num_bootstrap, seed, level):
  """Percentile bootstrap over problems, one loop per resample, in plain Python. It draws the
  resampled indices as the module documents (one `default_rng(seed).integers` call of shape
  (num_bootstrap, N)) so the two can agree to rounding."""
  n = len(c1)
  idx = np.random.default_rng(seed).integers(0, n, size=(num_bootstrap, n)).tolist()
  stats = {k: [] for k in metrics.METRICS}
  for row in idx:
    a = [c1[i] for i in row]
    b = [c2[i] for i in row]
    stats["acc_t1"].append(sum(a) / n)
    stats["acc_t2"].append(sum(b) / n)
    stats["delta"].append((sum(b) - sum(a)) / n)
    stats["delta_i2c"].append(sum(1 for x, y in zip(a, b) if x == 0 and y == 1) / n)
    stats["delta_c2i"].append(sum(1 for x, y in zip(a, b) if x == 1 and y == 0) / n)
  q = (1 - level) / 2
  return {k: (100 * _quantile(v, q), 100 * _quantile(v, 1 - q)) for k, v in stats.items()}


@pytest.mark.parametrize("seed,level", [(0, 0.95), (7, 0.8)])
def test_intervals_match_an_independent_percentile_bootstrap(seed, level):
  ref = _reference_bootstrap(C1, C2, num_bootstrap=400, seed=seed, level=level)
  m = metrics.self_correction_metrics(C1, C2, num_bootstrap=400, seed=seed, level=level)
  for name in metrics.METRICS:
    assert (m[name]["low"], m[name]["high"]) == pytest.approx(ref[name], abs=1e-9), name
    assert m[name]["low"] <= m[name]["value"] <= m[name]["high"], name
  # accuracy() is the same bootstrap on one column.
  a = metrics.accuracy(C2, num_bootstrap=400, seed=seed, level=level)
  assert (a["low"], a["high"]) == pytest.approx(ref["acc_t2"], abs=1e-9)
  assert (a["value"], a["n"]) == (60.0, 10)


def test_seed_is_honoured():
  a = metrics.self_correction_metrics(C1, C2, num_bootstrap=200, seed=1)
  b = metrics.self_correction_metrics(C1, C2, num_bootstrap=200, seed=1)
  c = metrics.self_correction_metrics(C1, C2, num_bootstrap=200, seed=2)
  assert a == b
  assert any(a[k]["low"] != c[k]["low"] or a[k]["high"] != c[k]["high"] for k in metrics.METRICS)


def test_interval_coverage_on_simulated_data():
  """About `level` of the intervals contain the true value. 300 simulated evaluations of
  N = 120 problems (Acc@t1 = 0.5, Δi→c = 0.2, Δc→i = 0.1): the share of 95 % intervals that
  contain the true Δ / Acc@t2 lies in [0.90, 0.99] (binomial sd at 300 draws is 0.013), and
  the 50 % intervals' share is near 0.5 (so `level` is not ignored)."""
  rng = np.random.default_rng(0)
  true = {"acc_t1": 50.0, "acc_t2": 60.0, "delta": 10.0, "delta_i2c": 20.0, "delta_c2i": 10.0}
  # Joint outcome probabilities of (c1, c2): (0,0) .3, (0,1) .2, (1,0) .1, (1,1) .4.
  outcomes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
  hits = {0.95: {k: 0 for k in true}, 0.5: {k: 0 for k in true}}
  reps = 300
  for r in range(reps):
    draw = outcomes[rng.choice(4, size=120, p=[0.3, 0.2, 0.1, 0.4])]
    for level in hits:
      m = metrics.self_correction_metrics(draw[:, 0], draw[:, 1], num_bootstrap=300, seed=r,
                                          level=level)
      for k, v in true.items():
        hits[level][k] += m[k]["low"] <= v <= m[k]["high"]
  for k in true:
    assert 0.90 <= hits[0.95][k] / reps <= 0.99, (k, hits[0.95][k] / reps)
    assert 0.40 <= hits[0.5][k] / reps <= 0.60, (k, hits[0.5][k] / reps)


def test_accuracy_coverage_on_simulated_data():
  rng = np.random.default_rng(1)
  reps, hits = 300, 0
  for r in range(reps):
    a = metrics.accuracy(rng.random(80) < 0.3, num_bootstrap=300, seed=r)
    hits += a["low"] <= 30.0 <= a["high"]
  assert 0.90 <= hits / reps <= 0.99, hits / reps


def test_intervals_overlap():
  assert metrics.intervals_overlap({"low": 0, "high": 2}, {"low": 2, "high": 3})
  assert metrics.intervals_overlap({"low": 1, "high": 5}, {"low": 2, "high": 3})
  assert not metrics.intervals_overlap({"low": 0, "high": 1.9}, {"low": 2, "high": 3})
  assert not metrics.intervals_overlap({"low": 4, "high": 5}, {"low": 2, "high": 3})
