"""Curves of exit methods on hand-made inputs: points, grids, the matched operating-point rule against a brute-force
reference, and the threshold-free summary against dense integration."""

import math

import numpy as np
import pytest

from cascade_jax import cascade, curves, metrics

# ---------------------------------------------------------------------------------------------------------------
# Hand-made cascade outputs.

LABELS = np.array([0, 1, 0, 1])
STAGE1 = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]  # right, wrong, wrong, right; max .9 .6 .7 .8
STAGE2 = [[0.8, 0.2], [0.1, 0.9], [0.9, 0.1], [0.6, 0.4]]  # right, right, right, wrong


def _sim(stage1=STAGE1, stage2=STAGE2, layers=(1, 3)):
    probs = np.array([stage1, stage2], np.float32)
    entropy = -(probs * np.log(probs)).sum(-1) / np.log(2)
    return cascade.CascadeSimulation(probs=probs, max_prob=probs.max(-1), entropy=entropy.astype(np.float32),
                                     num_layers=layers)


def _curve(**kw):
    return curves.Curve.cascade(_sim(), LABELS, "accuracy", flops_per_stage=[1.0, 3.0], split="dev", **kw)


def test_cascade_points_by_hand():
    curve = _curve()
    mid = curve.point(0.75)  # Examples 0 and 3 exit at stage 1 (both right); 1 and 2 go on (both right there).
    assert mid.metrics == {"accuracy": 1.0} and mid.metric == 1.0
    assert mid.mean_layers == 2.5 and mid.layer_speedup == pytest.approx(3 / 2.5)
    assert mid.flops_speedup == pytest.approx(3 / 2.5)
    assert mid.exit_shares == (0.5, 0.5) and mid.exit_unit == "stage"
    conf = np.array([0.9, 0.9, 0.9, 0.8])
    assert mid.ece == pytest.approx(metrics.expected_calibration_error(conf, [True] * 4))
    first, last = curve.point(0.0), curve.point(1.0)
    assert (first.metric, first.layer_speedup, first.exit_shares) == (0.5, 3.0, (1.0, 0.0))
    assert (last.metric, last.layer_speedup, last.exit_shares) == (0.75, 0.75, (0.0, 1.0))
    # A common reference model: the speed-ups divide its layers / FLOPs instead.
    ref = _curve(reference_layers=6, reference_flops=6.0).point(0.75)
    assert ref.layer_speedup == pytest.approx(6 / 2.5) and ref.flops_speedup == pytest.approx(6 / 2.5)


def test_cascade_grid_and_sweep_span_both_extremes():
    curve = _curve()
    grid = curve.grid(3)
    assert grid == sorted(set(grid)) and grid[0] == 0.0 and grid[-1] == 1.0
    assert {float(np.float32(0.6)), float(np.float32(0.9))} <= set(grid)  # Quantiles 0 and 1 of stage 1.
    assert len(grid) == 5
    points = curves.sweep(curve, num=3)
    assert len(points) == len(grid)
    assert points[0].layer_speedup == 3.0 and points[-1].layer_speedup == 0.75
    assert [p.param for p in curves.sweep(curve, [0.1, 0.95])] == [0.1, 0.95]
    entropy_grid = curves.Curve.cascade(_sim(), LABELS, exit_rule="entropy").grid(2)
    assert entropy_grid[0] == 0.0 and entropy_grid[-1] > 1.0


def test_members_have_ece_and_dis():
    members = _curve(names=["small", "large"]).members(difficulty=np.array([0, 1, 1, 0]))
    assert [m["name"] for m in members] == ["small", "large"]
    assert members[0]["metrics"]["accuracy"] == 0.5
    # Easy (0, 3): conf .9, .8; hard (1, 2): .6, .7 -> every pair ranked right.
    assert members[0]["dis"] == 1.0
    conf = np.array(STAGE1, np.float32).max(-1).astype(np.float64)
    assert members[0]["ece"] == pytest.approx(metrics.expected_calibration_error(conf, [1, 0, 0, 1]))
    assert _curve().members()[0]["dis"] is None


def test_early_exit_and_static_curves_by_hand():
    # 3 layers, 2 examples. Example 0 predicts 0,0,1 ; example 1 predicts 1,1,1 (label 1 for both).
    logits = np.array([[[2, 0], [0, 2]], [[2, 0], [0, 3]], [[0, 2], [0, 4]]], np.float32)
    labels = np.array([1, 1])
    pabee = curves.Curve.early_exit(logits, labels, rule="patience", name="PABEE")
    assert pabee.grid() == [0, 1, 2] and pabee.param_name == "patience"
    p1 = pabee.point(1)  # Example 0 agrees at layer 2 (wrong, 0); example 1 at layer 2 (right).
    assert p1.mean_layers == 2.0 and p1.layer_speedup == 1.5 and p1.metric == 0.5
    assert p1.exit_shares == (0.0, 1.0, 0.0) and p1.flops_speedup is None
    p2 = pabee.point(2)
    assert p2.layer_speedup == 1.0 and p2.metric == 1.0
    p0 = pabee.point(0)  # PABEE's own semantics: patience 0 runs the whole model.
    assert p0.layer_speedup == 1.0 and p0.exit_shares == (0.0, 0.0, 1.0)
    deebert = curves.Curve.early_exit(logits, labels, rule="max_prob", exit_costs=[1.0, 2.0, 3.0],
                                      reference_flops=2.5, name="DeeBERT")
    d = deebert.point(0.95)  # Max probs: 2 vs 0 -> .881, 3 vs 0 -> .953: example 1 exits at layer 2, example 0 last.
    assert d.exit_shares == (0.0, 0.5, 0.5) and d.flops_speedup == pytest.approx(2.5 / 2.5)
    static = curves.Curve.static(logits[0], labels, num_layers=1, reference_layers=3, flops=1.0, reference_flops=3.0)
    s = static.point()
    assert (s.param, s.layer_speedup, s.flops_speedup, s.metric) == (1, 3.0, 3.0, 0.5)
    assert s.exit_shares == (1.0, 0.0, 0.0) and static.grid() == [1]
    with pytest.raises(ValueError):
        static.point(2)


# ---------------------------------------------------------------------------------------------------------------
# Choosing an operating point.


def _p(speedup, metric, param=0.0, method="m"):
    return curves.Point(method=method, param_name="threshold", param=param, split="dev", num_examples=1,
                        metric_name="accuracy", metrics={"accuracy": metric}, layer_speedup=speedup,
                        mean_layers=1.0, reference_layers=1, flops_speedup=None, exit_unit="stage",
                        exit_shares=(1.0,), ece=0.0)


def test_select_point_takes_the_smallest_speedup_at_or_above_the_target():
    points = [_p(1.0, 0.90, 1), _p(1.4, 0.89, 2), _p(1.6, 0.85, 3), _p(2.0, 0.95, 4), _p(2.5, 0.70, 5)]
    assert curves.select_point(points, 1.5).param == 3  # 1.6x: the closest from above, not the best (2.0x, 0.95).
    assert curves.select_point(points, 1.0).param == 1
    assert curves.select_point(points, 2.2).param == 5
    assert curves.select_point(points, 3.0).param == 5  # Unreachable: the closest from below.
    assert curves.select_point([_p(2.0, 0.7, 7), _p(2.0, 0.8, 8)], 1.5).param == 8  # Same speed-up: better metric.
    assert curves.select_point([_p(2.0, 0.8, 7), _p(2.0, 0.8, 8)], 1.5).param == 7  # Full tie: the first.
    assert curves.select_point([_p(2.0, float("nan"), 7), _p(2.0, 0.1, 8)], 1.5).param == 8  # NaN never wins.
    with pytest.raises(ValueError):
        curves.select_point([], 1.0)


def _brute_force_select(points, target):
    """The rule written out: sort candidates at or above the target by (speed-up, -metric, position)."""
    candidates = [(p.layer_speedup, -(p.metric if math.isfinite(p.metric) else -math.inf), i)
                  for i, p in enumerate(points) if p.layer_speedup >= target - 1e-9]
    if candidates:
        return points[sorted(candidates)[0][2]]
    best = max(p.layer_speedup for p in points)
    return next(p for p in points if p.layer_speedup == best)


def test_select_point_matches_a_brute_force_reference_on_random_curves():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 12))
        speed = np.round(rng.uniform(1.0, 3.0, n), int(rng.integers(1, 3)))  # Rounded: many ties.
        metric = np.round(rng.uniform(0.5, 0.9, n), 2)
        points = [_p(float(s), float(m), i) for i, (s, m) in enumerate(zip(speed, metric))]
        for target in (1.0, 1.25, 1.5, 2.0, 2.5, 3.5):
            assert curves.select_point(points, target) is _brute_force_select(points, target), (trial, target)


def test_area_under_curve_matches_dense_integration():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(2, 20))
        speed = np.sort(rng.uniform(0.8, 3.2, n))
        metric = rng.uniform(0.5, 0.9, n)
        points = [_p(float(s), float(m), i) for i, (s, m) in enumerate(zip(speed, metric))]
        low, high = 1.0, 2.0
        got = curves.area_under_curve(points, low, high, num=2001)
        if speed[0] > low or speed[-1] < high:
            assert got is None
            continue
        dense = np.linspace(low, high, 200001)
        reference = np.trapezoid(np.interp(dense, speed, metric), dense) / (high - low)
        assert got == pytest.approx(reference, abs=1e-4)
    flat = [_p(1.0, 0.8), _p(3.0, 0.8)]
    assert curves.area_under_curve(flat, 1.0, 2.0) == pytest.approx(0.8)
    assert curves.area_under_curve([_p(2.0, 0.8)], 1.0, 2.0) is None  # A static model has no area.


def test_operating_points_choose_on_dev_and_apply_on_test():
    dev = _curve()
    test = curves.Curve.cascade(_sim(stage1=STAGE2, stage2=STAGE1), LABELS, "accuracy", split="test")
    chosen = curves.operating_points(dev, test, [1.2, 5.0], num=3)
    assert [s.target for s in chosen] == [1.2, 5.0]
    assert chosen[0].reached and chosen[0].dev.metric == 1.0 and chosen[0].dev.layer_speedup >= 1.2
    assert not chosen[1].reached and chosen[1].dev.layer_speedup == 3.0
    for s in chosen:
        assert s.test.param == s.dev.param and s.test.split == "test"
        assert s.test == test.point(s.dev.param)


