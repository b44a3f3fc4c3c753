"""Bootstrap intervals against slow loops, their coverage, verdicts, and temperature scaling against a grid."""

import math

import numpy as np
import pytest

from cascade_jax import metrics, stats


def test_resample_weights_are_multinomial_counts_shared_by_every_method():
    w = stats.resample_weights(50, 200, seed=3)
    assert w.shape == (200, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, stats.resample_weights(50, 200, seed=3))  # Seeded.
    assert not np.array_equal(w, stats.resample_weights(50, 200, seed=4))
    assert abs(w.mean() - 1.0) < 1e-12 and 0.8 < w.var() < 1.2  # Multinomial(n, 1/n): mean 1, variance ~1.


def test_bootstrap_means_equal_a_slow_loop_over_resamples_and_seeds():
    rng = np.random.default_rng(0)
    values = {"a": (rng.random((3, 40)) < 0.7).astype(float), "b": (rng.random((3, 40)) < 0.6).astype(float),
              "one seed": rng.random((1, 40))}
    weights = stats.resample_weights(40, 60, seed=1)
    fast = stats.bootstrap_means(values, weights, seed=5)
    for name, v in values.items():
        draws = stats.seed_draws(v.shape[0], 60, 5, stats._stream(name))
        for r in range(60):
            rows = np.repeat(np.arange(40), weights[r].astype(int))  # The resampled examples, one by one.
            expected = np.mean([np.mean([v[s, i] for i in rows]) for s in draws[r]])
            assert fast[name][r] == pytest.approx(expected, abs=1e-12), (name, r)


def test_bootstrap_statistic_equals_a_loop_and_resamples_rows_together():
    rng = np.random.default_rng(2)
    arrays = [(rng.random(30), (rng.random(30) < 0.3).astype(int)) for _ in range(2)]
    weights = stats.resample_weights(30, 25, seed=0)
    got = stats.bootstrap_statistic(metrics.difficulty_inversion_score, arrays, weights, seed=1, name="dis")
    draws = stats.seed_draws(2, 25, 1, stats._stream("dis"))
    for r in range(25):
        rows = [i for i in range(30) for _ in range(int(weights[r, i]))]
        want = np.mean([metrics.difficulty_inversion_score(arrays[s][0][rows], arrays[s][1][rows]) for s in draws[r]])
        assert got[r] == pytest.approx(want, abs=1e-12)


def test_paired_intervals_cover_the_truth_and_are_tighter_than_unpaired():
    """Two methods that agree on most examples: the paired interval of their difference is far narrower than the
    spread of either accuracy, and 95% intervals of a known accuracy cover it about 95% of the time."""
    rng = np.random.default_rng(7)
    covered, widths = 0, []
    trials = 120
    for t in range(trials):
        base = rng.random(400) < 0.75
        flip = rng.random(400) < 0.05
        a = base.astype(float)[None]
        b = np.where(flip, ~base, base).astype(float)[None]
        w = stats.resample_weights(400, 400, seed=t)
        m = stats.bootstrap_means({"a": a, "b": b}, w, seed=t)
        low, high = stats.interval(m["a"])
        covered += low <= 0.75 <= high
        d_low, d_high = stats.interval(m["a"] - m["b"])
        widths.append((high - low, d_high - d_low))
    assert 0.88 <= covered / trials <= 0.99, covered / trials
    assert np.mean([d for _, d in widths]) < 0.6 * np.mean([a for a, _ in widths])


def test_interval_and_verdicts():
    samples = np.arange(1001) / 1000.0
    low, high = stats.interval(samples)
    assert low == pytest.approx(0.025) and high == pytest.approx(0.975)
    assert stats.interval(np.array([np.nan, np.nan])) != stats.interval(samples)
    assert stats.verdict(0.01, 0.05, +1) == "reproduces"
    assert stats.verdict(-0.05, -0.01, +1) == "contradicted"
    assert stats.verdict(-0.01, 0.05, +1) == "not distinguishable"
    assert stats.verdict(-0.05, -0.01, -1) == "reproduces"  # The paper: DAR *lowers* ECE.
    assert stats.verdict(0.0, 0.05, +1) == "not distinguishable"  # 0 is inside a closed interval.
    assert stats.verdict(math.nan, 0.1, 1) == "not distinguishable"
    with pytest.raises(ValueError):
        stats.verdict(0.1, 0.2, 0)


def test_fit_temperature_minimises_the_nll_like_a_fine_grid():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3))
    logits[np.arange(500), labels] += 1.5
    base = stats.fit_temperature(logits, labels)
    for scale in (0.3, 1.0, 4.0):  # Over- and under-confident versions of the same model.
        t = stats.fit_temperature(logits * scale, labels)
        grid = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
        best = grid[np.argmin([stats._nll(logits * scale, labels, g) for g in grid])]
        assert t == pytest.approx(best, rel=2e-3)
        assert t == pytest.approx(scale * base, rel=1e-4)  # softmax(s z / T) depends on s / T only.
    probs = stats.temperature_scale(np.array([[0.9, 0.1]]), 2.0)
    np.testing.assert_allclose(probs, [[3 / 4, 1 / 4]])  # (0.9 / 0.1) ** (1/2) = 3.
