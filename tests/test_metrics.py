"""Tests for cascade_jax.metrics against plain-loop, hand-computed and scipy references."""

import math
import time

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_jax import metrics

# ---------------------------------------------------------------------------------------------------------------
# ECE


def ref_ece(conf, correct, num_bins):
    """Explicit bins: B_0 = [0, 1/M], B_k = (k/M, (k+1)/M]; weighted |accuracy - mean confidence|."""
    n = len(conf)
    total = 0.0
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        members = [i for i in range(n) if (lo < conf[i] <= hi) or (k == 0 and conf[i] == 0.0)]
        if not members:
            continue
        acc = sum(1.0 for i in members if correct[i]) / len(members)
        mean_conf = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - mean_conf)
    return total


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([1, 3, 10, 15]),
)
def test_ece_matches_loop(rows, num_bins):
    conf = [c for c, _ in rows]
    correct = [k for _, k in rows]
    got = metrics.expected_calibration_error(np.array(conf), np.array(correct), num_bins=num_bins)
    assert got == pytest.approx(ref_ece(conf, correct, num_bins), abs=1e-12)


def test_ece_bin_edges():
    # 0 and 0.1 both in (0, 0.1] -> |1/2 - 0.05|; 0.3 in (0.2, 0.3] alone -> 0.7; 1.0 in (0.9, 1] -> 0.
    got = metrics.expected_calibration_error([0.0, 0.1, 0.3, 1.0], [1, 0, 1, 1])
    assert got == pytest.approx((2 * abs(0.5 - 0.05) + abs(1 - 0.3) + 0.0) / 4)
    # An edge belongs to the lower bin: 0.3 and 0.35 in different bins, 0.31 and 0.35 in the same one.
    apart = (abs(1 - 0.3) + abs(0 - 0.35)) / 2
    together = abs(0.5 - (0.31 + 0.35) / 2)
    assert metrics.expected_calibration_error([0.3, 0.35], [1, 0]) == pytest.approx(apart)
    assert metrics.expected_calibration_error([0.31, 0.35], [1, 0]) == pytest.approx(together)
    # float32 0.3 (slightly above 3/10) is still treated as the edge 0.3, in its own dtype.
    assert metrics.expected_calibration_error(np.array([0.3, 0.35], np.float32), [1, 0]) == pytest.approx(
        apart, rel=1e-6
    )
    assert metrics.expected_calibration_error(jnp.array([0.3, 0.35]), jnp.array([True, False])) == pytest.approx(
        apart, rel=1e-6
    )


def test_ece_simple_cases():
    assert metrics.expected_calibration_error([1.0, 1.0, 1.0], [1, 1, 1]) == 0.0
    assert metrics.expected_calibration_error([0.0, 0.0], [0, 0]) == 0.0
    assert metrics.expected_calibration_error([0.5, 0.5], [1, 1]) == pytest.approx(0.5)
    assert metrics.expected_calibration_error([0.95, 0.85], [0, 0]) == pytest.approx(0.9)
    # One bin: |accuracy - mean confidence|.
    assert metrics.expected_calibration_error([0.2, 0.9, 0.6], [1, 0, 1], num_bins=1) == pytest.approx(
        abs(2 / 3 - 1.7 / 3)
    )
    # valid drops rows.
    assert metrics.expected_calibration_error([0.5, 0.9], [1, 0], valid=[True, False]) == pytest.approx(0.5)


def test_ece_errors():
    with pytest.raises(ValueError, match="empty"):
        metrics.expected_calibration_error([], [])
    with pytest.raises(ValueError, match="empty"):
        metrics.expected_calibration_error([0.5], [1], valid=[False])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.expected_calibration_error([float("nan")], [1])
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([0.5], [1], num_bins=0)


# ---------------------------------------------------------------------------------------------------------------
# DIS


def ref_dis(conf, diff, ties):
    right = tied = pairs = 0
    for i in range(len(conf)):
        for j in range(len(conf)):
            if diff[i] == 0 and diff[j] == 1:
                pairs += 1
                if conf[i] > conf[j]:
                    right += 1
                elif conf[i] == conf[j]:
                    tied += 1
    if pairs == 0:
        return float("nan")
    weight = {"half": 0.5, "incorrect": 0.0, "correct": 1.0}[ties]
    return (right + weight * tied) / pairs


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.1, 0.4, 0.5, 0.9, 1.0]), st.integers(0, 1)), min_size=0, max_size=30),
    st.sampled_from(["half", "incorrect", "correct"]),
)
def test_dis_matches_loop_with_ties(rows, ties):
    conf = [c for c, _ in rows]
    diff = [d for _, d in rows]
    got = metrics.difficulty_inversion_score(np.array(conf, float), np.array(diff, int), ties=ties)
    want = ref_dis(conf, diff, ties)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def test_dis_cases():
    assert metrics.difficulty_inversion_score([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 1.0
    assert metrics.difficulty_inversion_score([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert metrics.difficulty_inversion_score([0.5, 0.5], [0, 1]) == 0.5
    assert metrics.difficulty_inversion_score([0.5, 0.5], [0, 1], ties="incorrect") == 0.0
    assert metrics.difficulty_inversion_score([0.5, 0.5], [0, 1], ties="correct") == 1.0
    assert math.isnan(metrics.difficulty_inversion_score([0.9, 0.1], [0, 0]))  # all easy
    assert math.isnan(metrics.difficulty_inversion_score([0.9, 0.1], [1, 1]))  # all hard
    assert math.isnan(metrics.difficulty_inversion_score([], []))
    # valid, jax inputs, soft difficulty (> 0 is hard).
    assert metrics.difficulty_inversion_score(
        jnp.array([0.9, 0.1, 0.95]), jnp.array([0, 1, 1]), valid=jnp.array([True, True, False])
    ) == 1.0
    assert metrics.difficulty_inversion_score([0.9, 0.1, 0.3], [0.0, 0.2, 1.0]) == 1.0
    with pytest.raises(ValueError, match="ties"):
        metrics.difficulty_inversion_score([0.5], [0], ties="ignore")


def test_dis_large_n_is_fast_and_equals_mann_whitney():
    rng = np.random.default_rng(0)
    n = 60_000
    diff = rng.integers(0, 2, size=n)
    # Rounded confidences, so that many ties occur.
    conf = np.round(np.clip(rng.normal(0.75 - 0.2 * diff, 0.15), 0, 1), 3).astype(np.float32)
    start = time.perf_counter()
    got = metrics.difficulty_inversion_score(conf, diff)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    # scipy ranks float32 input in float32; give it float64 for an exact count.
    conf64 = conf.astype(np.float64)
    u = scipy.stats.mannwhitneyu(conf64[diff == 0], conf64[diff == 1]).statistic
    assert got == pytest.approx(u / (np.sum(diff == 0) * np.sum(diff == 1)), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# task metrics


def ref_f1(pred, lab, pos):
    tp = sum(1 for p, t in zip(pred, lab) if p == pos and t == pos)
    fp = sum(1 for p, t in zip(pred, lab) if p == pos and t != pos)
    fn = sum(1 for p, t in zip(pred, lab) if p != pos and t == pos)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def ref_mcc(pred, lab):
    """Gorodkin R_K as the correlation of one-hot indicator matrices."""
    classes = sorted(set(pred) | set(lab))
    x = np.array([[p == k for k in classes] for p in pred], float)
    y = np.array([[t == k for k in classes] for t in lab], float)
    x -= x.mean(0)
    y -= y.mean(0)
    denom = math.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if denom else 0.0


def test_accuracy_and_f1():
    pred = [1, 0, 1, 1, 0, 1, 0]
    lab = [1, 0, 0, 1, 1, 1, 0]
    assert metrics.accuracy(pred, lab) == pytest.approx(5 / 7)
    assert metrics.accuracy(jnp.array(pred), np.array(lab), valid=[1, 1, 0, 1, 0, 1, 1]) == 1.0
    # TP 3, FP 1, FN 1 -> 6 / 8.
    assert metrics.f1_binary(pred, lab) == pytest.approx(0.75)
    assert metrics.f1_binary(pred, lab, positive=0) == pytest.approx(ref_f1(pred, lab, 0))
    assert metrics.f1_binary([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
    with pytest.raises(ValueError):
        metrics.accuracy([1, 0], [1])


@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 2), (2, 3), (3, 5)])
def test_f1_and_matthews_random(seed, classes):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, classes, size=50)
    pred = np.where(rng.random(50) < 0.6, lab, rng.integers(0, classes, size=50))
    assert metrics.f1_binary(pred, lab) == pytest.approx(ref_f1(pred.tolist(), lab.tolist(), 1))
    assert metrics.matthews_corrcoef(pred, lab) == pytest.approx(ref_mcc(pred.tolist(), lab.tolist()), abs=1e-12)


def test_matthews_cases():
    # Binary textbook formula: TP 3, TN 2, FP 1, FN 1.
    pred = [1, 0, 1, 1, 0, 1, 0]
    lab = [1, 0, 0, 1, 1, 1, 0]
    want = (3 * 2 - 1 * 1) / math.sqrt(4 * 4 * 3 * 3)
    assert metrics.matthews_corrcoef(pred, lab) == pytest.approx(want)
    assert metrics.matthews_corrcoef([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([1, 0, 1], [0, 1, 0]) == pytest.approx(-1.0)
    assert metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # constant predictions


def test_pearson_spearman_against_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    # Heavy ties (STS-B labels are multiples of 0.2).
    xt, yt = np.round(x, 0), np.round(y * 5) / 5
    assert metrics.spearman(xt, yt) == pytest.approx(scipy.stats.spearmanr(xt, yt).statistic, abs=1e-12)
    assert metrics.pearson(jnp.array(x, jnp.float32), y) == pytest.approx(
        scipy.stats.pearsonr(x.astype(np.float32), y).statistic, abs=1e-6
    )
    keep = rng.random(200) < 0.5
    assert metrics.spearman(x, y, valid=keep) == pytest.approx(
        scipy.stats.spearmanr(x[keep], y[keep]).statistic, abs=1e-12
    )
    assert math.isnan(metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(metrics.spearman([1.0], [2.0]))
    assert metrics.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)


def test_task_metrics():
    pred = np.array([1, 0, 1, 1])
    lab = np.array([1, 0, 0, 1])
    assert metrics.task_metrics("accuracy", pred, lab) == {"accuracy": 0.75}
    both = metrics.task_metrics("f1+accuracy", pred, lab)
    assert set(both) == {"f1", "accuracy"} and both["f1"] == pytest.approx(0.8)
    assert set(metrics.task_metrics("matthews", pred, lab)) == {"matthews"}
    scores = metrics.task_metrics("pearson+spearman", [0.1, 0.5, 0.3], [0.0, 1.0, 0.5])
    assert scores["pearson"] == pytest.approx(scipy.stats.pearsonr([0.1, 0.5, 0.3], [0.0, 1.0, 0.5]).statistic)
    assert scores["spearman"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in both.values())
    with pytest.raises(KeyError, match="accuracy"):
        metrics.task_metrics("bleu", pred, lab)
