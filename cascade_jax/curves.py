"""Accuracy/speed-up curves of exit methods and the choice of operating points: pure functions of arrays.

  Curve.cascade(sim, labels, ...), Curve.early_exit(logits, labels, rule=...), Curve.static(logits, labels, ...)
  curve.point(param) -> Point;  sweep(curve) -> [Point]
  select_point(points, target) -> Point      # the smallest speed-up at or above the target (ties: higher metric)
  operating_points(dev_curve, test_curve, targets) -> [Selected];  area_under_curve(points, low, high)

A curve is one method on one split with its models' outputs computed once (a :class:`cascade.CascadeSimulation`:
cascade stages, a multi-exit model's layers, or a static model's one stage); any threshold, patience or depth is
derived from it without running a model. Grids and the selection rule are described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from cascade_jax import cascade, evaluation, metrics

_SPEEDUP_TOL = 1e-9


# ----------------------------------------------------------------------------------------------------------------
# Points.


@dataclasses.dataclass(frozen=True)
class Point:
    """One operating point of one method on one split.

    param_name/param: what was set (``threshold``, ``patience`` or ``layers``) and its value. metric_name: the
    primary metric (e.g. ``accuracy``, ``f1``); metrics: every task metric. exit_shares: share of examples answered
    by each stage (cascade) or layer (early exit, static), in order (``exit_unit`` says which). ece: expected
    calibration error of the answers' max probability (10 bins). flops_speedup: None when costs are unknown.
    """

    method: str
    param_name: str
    param: float
    split: str
    num_examples: int
    metric_name: str
    metrics: Mapping[str, float]
    layer_speedup: float
    mean_layers: float
    reference_layers: int
    flops_speedup: float | None
    exit_unit: str
    exit_shares: tuple[float, ...]
    ece: float | None

    @property
    def metric(self) -> float:
        return float(self.metrics[self.metric_name])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["metrics"] = dict(self.metrics)
        d["exit_shares"] = list(self.exit_shares)
        return d


def _point(method, param_name, param, split, labels, metric_name, probs, mean_layers, reference_layers, flops,
           exit_unit, answered) -> Point:
    labels = np.asarray(labels)
    preds = np.argmax(probs, axis=-1)
    task = metrics.task_metrics(metric_name, preds, labels)
    correct = preds == labels
    return Point(
        method=method, param_name=param_name, param=_plain(param), split=split, num_examples=int(len(labels)),
        metric_name=evaluation.primary_metric(metric_name), metrics=task,
        layer_speedup=float(reference_layers / mean_layers), mean_layers=float(mean_layers),
        reference_layers=int(reference_layers), flops_speedup=None if flops is None else float(flops),
        exit_unit=exit_unit, exit_shares=tuple(float(a) / len(labels) for a in answered),
        ece=metrics.expected_calibration_error(np.max(probs, axis=-1), correct),
    )


def _plain(x):
    """numpy scalars -> Python numbers (ints stay ints)."""
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    return float(x)


def _check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels have shape {labels.shape}; the outputs hold {n} examples")
    return labels


def quantile_thresholds(stat, num: int, rule: str) -> list[float]:
    """Thresholds at the quantiles ``0, 1/(num-1), ..., 1`` of ``stat`` (any shape), plus the extremes of ``rule``:
    for ``max_prob`` 0.0 (all exit at once) and 1.0 (none exits); for ``entropy`` 0.0 (none) and just above 1.0
    (all). Sorted, without duplicates."""
    if num < 2:
        raise ValueError(f"num must be at least 2, got {num}")
    values = np.asarray(stat, np.float64).ravel()
    qs = np.quantile(values, np.linspace(0.0, 1.0, num)) if values.size else np.zeros(0)
    if rule == "max_prob":
        extremes = [0.0, 1.0]
    elif rule == "entropy":
        extremes = [0.0, float(np.nextafter(1.0, 2.0))]
    else:
        raise ValueError(f"rule must be 'max_prob' or 'entropy', got {rule!r}")
    return sorted({float(q) for q in qs} | set(extremes))


def _member_summary(name, layers, probs, labels, metric_name, difficulty) -> dict:
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    preds = probs.argmax(-1)
    conf = probs.max(-1)
    return {
        "name": name, "layers": int(layers), "metrics": metrics.task_metrics(metric_name, preds, labels),
        "ece": metrics.expected_calibration_error(conf, preds == labels),
        "dis": None if difficulty is None else metrics.difficulty_inversion_score(conf, difficulty),
        "mean_confidence": float(conf.mean()),
    }


# ----------------------------------------------------------------------------------------------------------------
# Curves.

CURVE_RULES = ("max_prob", "entropy", "patience", "static")


class Curve:
    """One method on one split: a :class:`cascade.CascadeSimulation`, the labels, and how examples exit.

    Args:
      sim: every stage's outputs on every example (cascade members; a multi-exit model's layers; one static model).
      labels: [N] gold labels. metric: task metric name (``accuracy``, ``f1+accuracy``, ``matthews``).
      rule: ``max_prob`` / ``entropy`` (param = threshold), ``patience`` (PABEE), ``static`` (param = layers).
      exit_costs: FLOPs of answering at each stage, cumulative over the stages run: [S] or [S, N]; None: no FLOPs
        speed-up. reference_flops: the reference model's FLOPs (number or [N]; default: the largest stage alone).
      reference_layers: layers the speed-up divides (default: the simulation's reference).
      kind: ``cascade``, ``early_exit`` or ``static`` (how the report lists its members).
    """

    def __init__(self, sim: cascade.CascadeSimulation, labels, metric: str = "accuracy", *, rule: str = "max_prob",
                 exit_costs=None, reference_flops=None, reference_layers: int | None = None, split: str = "",
                 name: str = "cascade", names: Sequence[str] | None = None, kind: str = "cascade"):
        if rule not in CURVE_RULES:
            raise ValueError(f"rule must be one of {CURVE_RULES}, got {rule!r}")
        self.sim = sim
        self.labels = _check_labels(labels, sim.probs.shape[1])
        self.metric = metric
        self.rule = rule
        self.exit_costs = None if exit_costs is None else np.asarray(exit_costs, np.float64)
        self.reference_flops = reference_flops
        self.reference_layers = int(reference_layers or sim.reference_layers or max(sim.num_layers))
        self.split = split
        self.name = name
        self.kind = kind
        self.names = list(names) if names is not None else [f"stage {k + 1}" for k in range(len(sim.num_layers))]
        self.param_name = {"patience": "patience", "static": "layers"}.get(rule, "threshold")
        self.exit_unit = "stage" if kind == "cascade" else "layer"

    # Constructors.

    @classmethod
    def cascade(cls, sim, labels, metric: str = "accuracy", *, exit_rule: str = "max_prob",
                flops_per_stage: Sequence | None = None, reference_layers: int | None = None, reference_flops=None,
                split: str = "", name: str = "cascade", names: Sequence[str] | None = None) -> "Curve":
        """A cascade; ``flops_per_stage`` is each stage's cost of one example (number or [N])."""
        costs = ref = None
        if flops_per_stage is not None:
            per = _stage_costs(flops_per_stage, len(sim.num_layers), sim.probs.shape[1])
            costs = np.cumsum(per, axis=0)
            largest = len(sim.num_layers) - 1 - int(np.argmax(sim.num_layers[::-1]))
            ref = per[largest] if reference_flops is None else reference_flops
        return cls(sim, labels, metric, rule=exit_rule, exit_costs=costs, reference_flops=ref,
                   reference_layers=reference_layers, split=split, name=name, names=names, kind="cascade")

    @classmethod
    def early_exit(cls, logits, labels, metric: str = "accuracy", *, rule: str = "entropy", exit_costs=None,
                   reference_flops=None, reference_layers: int | None = None, split: str = "",
                   name: str = "DeeBERT") -> "Curve":
        """A multi-exit model from all layers' logits ``[L, N, C]`` (``exit_costs``: FLOPs of answering at each
        layer, [L] or [L, N], e.g. ``2 * flops.layer_exit_macs``). Both costs are needed for a FLOPs speed-up."""
        logits = np.asarray(logits, np.float32)
        if logits.ndim != 3:
            raise ValueError(f"logits must be [num_layers, N, C], got shape {logits.shape}")
        if rule not in cascade.EXIT_METHOD_RULES:
            raise ValueError(f"rule must be one of {cascade.EXIT_METHOD_RULES}, got {rule!r}")
        sim = cascade.CascadeSimulation.from_logits(logits)
        if exit_costs is None or reference_flops is None:
            exit_costs = reference_flops = None
        return cls(sim, labels, metric, rule=rule, exit_costs=exit_costs, reference_flops=reference_flops,
                   reference_layers=reference_layers, split=split, name=name,
                   names=[f"layer {j + 1}" for j in range(logits.shape[0])], kind="early_exit")

    @classmethod
    def static(cls, logits, labels, metric: str = "accuracy", *, num_layers: int, reference_layers: int, flops=None,
               reference_flops=None, split: str = "", name: str = "BERT-kL") -> "Curve":
        """BERT-kL: a ``num_layers``-layer model's logits [N, C]; one point. ``flops`` / ``reference_flops``: one
        example's FLOPs of this model and of the full model (numbers or [N])."""
        logits = np.asarray(logits, np.float32)
        sim = cascade.CascadeSimulation.from_logits(logits[None], num_layers=(int(num_layers),),
                                                    reference_layers=int(reference_layers))
        costs = None if flops is None or reference_flops is None else np.asarray(flops, np.float64)[None]
        return cls(sim, labels, metric, rule="static", exit_costs=costs,
                   reference_flops=None if costs is None else reference_flops, reference_layers=reference_layers,
                   split=split, name=name, names=[f"{int(num_layers)} layers"], kind="static")

    # Points.

    def result(self, param) -> cascade.CascadeResult:
        if self.rule == "patience":
            return self.sim.result_at(cascade.patience_exits(self.sim.probs, param), rule="patience")
        if self.rule == "static":
            layers = self.sim.num_layers[0]
            if param is not None and int(param) != layers:
                raise ValueError(f"{self.name} has {layers} layers; param {param!r} cannot be set")
            return self.sim.result_at(np.zeros(self.sim.probs.shape[1], np.int64), rule="static")
        return self.sim.result(param, self.rule)

    def point(self, param=None) -> Point:
        if param is None and self.rule == "static":
            param = self.sim.num_layers[0]
        r = self.result(param)
        flops = None
        if self.exit_costs is not None:
            n = len(r.exit_stage)
            costs = self.exit_costs if self.exit_costs.ndim == 2 else np.repeat(self.exit_costs[:, None], n, axis=1)
            cost = costs[r.exit_stage, np.arange(n)]
            ref = np.broadcast_to(np.asarray(self.reference_flops, np.float64), (n,))
            flops = float(np.mean(ref) / np.mean(cost))
        answered = r.answered
        if self.rule == "static":  # Answers at layer k of the reference model's layers.
            answered = np.zeros(self.reference_layers, np.int64)
            answered[self.sim.num_layers[0] - 1] = len(r.exit_stage)
        return _point(self.name, self.param_name, param, self.split, self.labels, self.metric, r.probs,
                      r.mean_layers, self.reference_layers, flops, self.exit_unit, answered)

    def grid(self, num: int = 21) -> list:
        if self.rule == "static":
            return [self.sim.num_layers[0]]
        if self.rule == "patience":
            return list(range(len(self.sim.num_layers)))
        stat = self.sim.max_prob if self.rule == "max_prob" else self.sim.entropy
        return quantile_thresholds(stat[:-1], num, self.rule)

    def members(self, difficulty=None) -> list[dict]:
        """Each stage (layer) alone on every example: task metrics, ECE, mean confidence, DIS (with ``difficulty``)."""
        layers = np.cumsum(self.sim.num_layers) if self.kind == "early_exit" else self.sim.num_layers
        return [_member_summary(self.names[k], layers[k], self.sim.probs[k], self.labels, self.metric, difficulty)
                for k in range(len(self.sim.num_layers))]


def _stage_costs(flops_per_stage, num_stages: int, n: int) -> np.ndarray:
    if len(flops_per_stage) != num_stages:
        raise ValueError(f"flops_per_stage has {len(flops_per_stage)} entries for {num_stages} stages")
    return np.stack([np.broadcast_to(np.asarray(f, np.float64), (n,)) for f in flops_per_stage])


def sweep(curve, params: Sequence | None = None, num: int = 21) -> list[Point]:
    """``[curve.point(p) for p in params]``; ``params`` default to ``curve.grid(num)``."""
    return [curve.point(p) for p in (curve.grid(num) if params is None else params)]


# ----------------------------------------------------------------------------------------------------------------
# Operating points.


@dataclasses.dataclass(frozen=True)
class Selected:
    """An operating point chosen for ``target`` speed-up on dev, and the same parameter on test.

    reached: whether the dev point's layer speed-up is >= target (else it is the closest from below).
    """

    method: str
    target: float
    reached: bool
    dev: Point
    test: Point

    def to_dict(self) -> dict:
        return {"method": self.method, "target": self.target, "reached": self.reached,
                "dev": self.dev.to_dict(), "test": self.test.to_dict()}


def select_point(points: Sequence[Point], target_speedup: float) -> Point:
    """The matched operating point for a target layer speed-up: among the points whose speed-up is at least the
    target, the one with the *smallest* speed-up (ties: the higher metric, then the earlier point), so that every
    method is compared as close to the target as it can get; if no point reaches the target, the fastest one (the
    closest from below)."""
    points = list(points)
    if not points:
        raise ValueError("no points to choose from")
    ok = [p for p in points if p.layer_speedup >= target_speedup - _SPEEDUP_TOL]
    if ok:
        return min(ok, key=lambda p: (p.layer_speedup, -_finite(p.metric)))  # min() keeps the first of equals.
    return max(points, key=lambda p: p.layer_speedup)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def operating_points(dev_curve, test_curve, targets: Sequence[float], params: Sequence | None = None,
                     num: int = 21) -> list[Selected]:
    """For each target: :func:`select_point` on ``sweep(dev_curve, params)``, then ``test_curve.point`` at the
    chosen parameter. ``params`` default to the dev curve's grid."""
    dev_points = sweep(dev_curve, params, num)
    out = []
    for t in targets:
        dev = select_point(dev_points, t)
        out.append(Selected(method=dev.method, target=float(t), reached=dev.layer_speedup >= t - _SPEEDUP_TOL,
                            dev=dev, test=test_curve.point(dev.param)))
    return out




def area_under_curve(points: Sequence[Point], low: float, high: float, num: int = 101) -> float | None:
    """A threshold-free summary of a curve: the mean metric over the layer speed-ups ``[low, high]`` (the area under
    the metric/speed-up curve on a fixed grid of ``num`` speed-ups, divided by its width), the curve being the
    linear interpolation of the points sorted by speed-up (points at the same speed-up averaged). None when the
    points do not cover ``[low, high]`` (a static model, or one that cannot reach ``high``)."""
    if not high > low:
        raise ValueError(f"need low < high, got {low}, {high}")
    pts = sorted((p.layer_speedup, _finite(p.metric)) for p in points)
    speed = np.array([s for s, _ in pts])
    metric = np.array([m for _, m in pts])
    if speed.size < 2 or speed[0] > low + _SPEEDUP_TOL or speed[-1] < high - _SPEEDUP_TOL:
        return None
    unique, inverse = np.unique(speed, return_inverse=True)
    mean = np.bincount(inverse, weights=metric) / np.bincount(inverse)
    grid = np.linspace(low, high, num)
    return float(np.mean(np.interp(grid, unique, mean)))
