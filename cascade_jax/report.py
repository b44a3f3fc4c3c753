"""Accuracy/speed-up curves of exit methods, operating points chosen on dev, and the report files.

  Curve.cascade(sim, labels, ...), Curve.early_exit(logits, labels, rule=...), Curve.static(logits, labels, ...)
  cascade_curve(stages, enc), early_exit_curve(module, params, enc, rule=...), static_curve(module, params, enc)
  curve.point(param) -> Point;  sweep(curve) -> [Point];  select_point(points, target) -> Point
  operating_points(dev_curve, test_curve, targets) -> [Selected];  write_report(out_dir, points, ...)

A curve is one method on one split with its models' outputs computed once (a :class:`cascade.CascadeSimulation`:
cascade stages, a multi-exit model's layers, or a static model's one stage); any threshold, patience or depth is
derived from it without running a model. Grids and the selection rule are described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Mapping, Sequence

import jax
import numpy as np

from cascade_jax import baselines, cascade, data, evaluation, flops, metrics, models

__all__ = [
    "Point",
    "Selected",
    "Curve",
    "quantile_thresholds",
    "sweep",
    "select_point",
    "operating_points",
    "load_cascade",
    "cascade_curve",
    "early_exit_curve",
    "static_curve",
    "padded_inputs",
    "json_safe",
    "results_dict",
    "markdown_table",
    "selected_table",
    "members_table",
    "plot_curves",
    "write_report",
]

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
        if rule not in baselines.EXIT_RULES:
            raise ValueError(f"rule must be one of {baselines.EXIT_RULES}, got {rule!r}")
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
            return self.sim.result_at(baselines.patience_exit_layers(self.sim.probs, param), rule="patience")
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
    """The point for a target layer speed-up: the best metric among points with speed-up >= target (ties: the
    higher speed-up, then the earlier point); if none reaches it, the one with the highest speed-up."""
    points = list(points)
    if not points:
        raise ValueError("no points to choose from")
    ok = [p for p in points if p.layer_speedup >= target_speedup - _SPEEDUP_TOL]
    if ok:
        return max(ok, key=lambda p: (_finite(p.metric), p.layer_speedup))  # max() keeps the first of equals.
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


# ----------------------------------------------------------------------------------------------------------------
# Building curves from model directories.


def padded_inputs(enc) -> dict[str, np.ndarray]:
    """Every example of an ``data.Encoded`` split as [N, L] arrays (L: the smallest of ``data.DEFAULT_BUCKETS``
    and ``max_length`` that holds the longest), ready for :mod:`cascade`."""
    batch = data.make_batch(enc, np.arange(len(enc)), len(enc))
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def load_cascade(member_dirs: Sequence, num_labels: int, dtype=None) -> list[cascade.Stage]:
    """The members (fine-tuned model directories, fewest layers first) as :class:`cascade.Stage` s."""
    stages = []
    for d in member_dirs:
        module, params = models.from_pretrained(d, num_labels=num_labels, dtype=dtype or jax.numpy.float32)
        stages.append(cascade.Stage(models.logits_fn(module), params, module.config.num_hidden_layers,
                                    config=module.config, name=str(d)))
    return stages


def cascade_curve(stages: Sequence[cascade.Stage], enc, *, batch_size: int = 64, exit_rule: str = "max_prob",
                  length_multiple: int | None = 16, reference_layers: int | None = None, reference_flops=None,
                  name: str = "cascade", sim: cascade.CascadeSimulation | None = None) -> Curve:
    """Run every stage on every example of ``enc`` once (:func:`cascade.simulate_all`) and return the cascade's
    curve; FLOPs at each example's real length. ``sim``: the stages' outputs on ``enc`` computed earlier (then no
    model runs here)."""
    if sim is None:
        sim = cascade.simulate_all(stages, padded_inputs(enc), batch_size, length_multiple=length_multiple)
    elif sim.probs.shape[:2] != (len(stages), len(enc)):
        raise ValueError(f"sim holds {sim.probs.shape[0]} stages x {sim.probs.shape[1]} examples; expected "
                         f"{len(stages)} x {len(enc)}")
    return Curve.cascade(sim, enc.labels, data.get_task(enc.task).metric, exit_rule=exit_rule,
                         flops_per_stage=cascade.stage_flops(stages, enc.lengths), reference_layers=reference_layers,
                         reference_flops=reference_flops, split=enc.split, name=name,
                         names=[s.name for s in stages])


def early_exit_curve(module, params, enc, *, rule: str, name: str, batch_size: int = 64,
                     reference_layers: int | None = None, reference_flops=None) -> Curve:
    """All layers' logits of a multi-exit model (:func:`baselines.load_multi_exit`) on ``enc``, as a curve.
    Without ``reference_flops`` the plain model (no internal heads) is the FLOPs reference."""
    logits = baselines.predict_exit_logits(module, params, enc, batch_size)
    lengths = enc.lengths
    if reference_flops is None:
        reference_flops = flops.bert_flops(module.config, lengths)
    return Curve.early_exit(logits, enc.labels, data.get_task(enc.task).metric, rule=rule,
                            exit_costs=2 * flops.layer_exit_macs(module.config, lengths),
                            reference_flops=reference_flops, reference_layers=reference_layers, split=enc.split,
                            name=name)


@functools.partial(jax.jit, static_argnums=0)  # One compilation per (module config, batch shape).
def _logits(module, params, batch):
    return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                        batch["token_type_ids"]).logits


def static_curve(module, params, enc, *, reference_layers: int, batch_size: int = 64, reference_flops=None,
                 name: str = "BERT-kL") -> Curve:
    """A fine-tuned k-layer model (BERT-kL; ``models.from_pretrained``) on ``enc``, as a one-point curve. Without
    ``reference_flops`` the full model is taken to be this one with ``reference_layers`` layers."""
    logits = evaluation.predict_logits(functools.partial(_logits, module), params, enc, batch_size)
    cfg = module.config
    lengths = enc.lengths
    if reference_flops is None:
        reference_flops = flops.bert_flops(dataclasses.replace(cfg, num_hidden_layers=reference_layers), lengths)
    return Curve.static(logits, enc.labels, data.get_task(enc.task).metric, num_layers=cfg.num_hidden_layers,
                        reference_layers=reference_layers, flops=flops.bert_flops(cfg, lengths),
                        reference_flops=reference_flops, split=enc.split, name=name)


# ----------------------------------------------------------------------------------------------------------------
# Writing.


def _json_safe(x):
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


json_safe = _json_safe  # Public name: plain JSON types, NaN/inf -> None (used for extra report data).


def results_dict(points: Sequence[Point], *, members: Mapping[str, list] | None = None,
                 selected: Sequence[Selected] | None = None, meta: Mapping | None = None,
                 extra: Mapping | None = None) -> dict:
    """Everything as plain JSON types (NaN/inf -> None); ``extra`` adds top-level entries."""
    return _json_safe({
        "meta": dict(meta or {}),
        "points": [p.to_dict() for p in points],
        "selected": [s.to_dict() for s in selected or []],
        "members": dict(members or {}),
        **dict(extra or {}),
    })


def _fmt(x, digits: int = 2, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x * scale:.{digits}f}"


def _fmt_param(p: Point) -> str:
    if p.param_name == "threshold":
        return f"threshold={p.param:.6g}"
    return f"{p.param_name}={p.param}"


def _metric_names(points: Sequence[Point]) -> list[str]:
    names: list[str] = []
    for p in points:
        for k in p.metrics:
            if k not in names:
                names.append(k)
    return names


def _shares(p: Point) -> str:
    return "/".join(f"{100 * s:.0f}" for s in p.exit_shares)


def markdown_table(points: Sequence[Point]) -> str:
    """One row per point: method, parameter, split, task metrics (%), speed-ups, mean layers, exit shares (%, per
    stage or layer), ECE (%)."""
    names = _metric_names(points)
    header = ["method", "parameter", "split", *[f"{n} (%)" for n in names], "speed-up (layers)",
              "speed-up (FLOPs)", "mean layers", "exits per stage/layer (%)", "ECE (%)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for p in points:
        cells = [p.method, _fmt_param(p), p.split, *[_fmt(p.metrics.get(n), 2, 100) for n in names],
                 f"{p.layer_speedup:.2f}x", "-" if p.flops_speedup is None else f"{p.flops_speedup:.2f}x",
                 f"{p.mean_layers:.2f}", _shares(p), _fmt(p.ece, 2, 100)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def selected_table(selected: Sequence[Selected]) -> str:
    """One row per (method, target): the dev choice and its test result."""
    if not selected:
        return ""
    metric = selected[0].test.metric_name
    header = ["method", "target", "parameter (dev)", "dev speed-up", f"dev {metric} (%)", "test speed-up (layers)",
              "test speed-up (FLOPs)", f"test {metric} (%)", "test exits (%)", "test ECE (%)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for s in selected:
        target = f"{s.target:g}x" + ("" if s.reached else " (not reached)")
        rows.append("| " + " | ".join([
            s.method, target, _fmt_param(s.dev), f"{s.dev.layer_speedup:.2f}x", _fmt(s.dev.metric, 2, 100),
            f"{s.test.layer_speedup:.2f}x", "-" if s.test.flops_speedup is None else f"{s.test.flops_speedup:.2f}x",
            _fmt(s.test.metric, 2, 100), _shares(s.test), _fmt(s.test.ece, 2, 100),
        ]) + " |")
    return "\n".join(rows) + "\n"


def members_table(members: Mapping[str, list]) -> str:
    """One row per member (cascade stage, or internal classifier) of each method: metrics, ECE, DIS."""
    entries = [(m, e) for m, es in members.items() for e in es]
    if not entries:
        return ""
    names: list[str] = []
    for _, e in entries:
        names += [k for k in e["metrics"] if k not in names]
    header = ["method", "member", "layers", *[f"{n} (%)" for n in names], "ECE (%)", "DIS (%)", "mean confidence"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for m, e in entries:
        rows.append("| " + " | ".join([
            m, str(e["name"]), str(e["layers"]), *[_fmt(e["metrics"].get(n), 2, 100) for n in names],
            _fmt(e["ece"], 2, 100), _fmt(e["dis"], 2, 100), _fmt(e["mean_confidence"], 3),
        ]) + " |")
    return "\n".join(rows) + "\n"


def plot_curves(path, points: Sequence[Point], *, selected: Sequence[Selected] = (), title: str | None = None):
    """PNG of the primary metric (%) against the layer speed-up: one line per method (points sorted by speed-up),
    selected test points as stars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # No pyplot: no global backend state, no display.

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(p.method for p in points))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods + [s.method for s in selected if s.method not in methods])}
    for m in methods:
        pts = sorted((p for p in points if p.method == m), key=lambda p: p.layer_speedup)
        ax.plot([p.layer_speedup for p in pts], [100 * p.metric for p in pts], marker="o", markersize=3,
                linewidth=1.2, color=colors[m], label=m)
    for s in selected:
        ax.plot([s.test.layer_speedup], [100 * s.test.metric], marker="*", markersize=11, color=colors[s.method],
                linestyle="none", markeredgecolor="black", markeredgewidth=0.5)
    metric = (points[0] if points else selected[0].test).metric_name if (points or selected) else "metric"
    ax.set_xlabel("speed-up (layers)")
    ax.set_ylabel(f"{metric} (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if methods:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, format="png")
    return path


def write_report(out_dir, points: Sequence[Point], *, members: Mapping[str, list] | None = None,
                 selected: Sequence[Selected] | None = None, meta: Mapping | None = None,
                 extra: Mapping | None = None, title: str | None = None) -> dict[str, pathlib.Path]:
    """Write ``results.json`` (with ``extra`` entries), ``results.md`` and ``curve.png`` into ``out_dir``
    (created); returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "curve.png"}
    doc = results_dict(points, members=members, selected=selected, meta=meta, extra=extra)
    paths["json"].write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    md = [f"# {title or 'Results'}\n"]
    if meta:
        md.append("".join(f"- {k}: {_json_safe(v)}\n" for k, v in meta.items()))
    if points:
        md.append("\n## Points\n\n" + markdown_table(points))
    if selected:
        md.append("\n## Operating points (chosen on dev, reported on test)\n\n" + selected_table(selected))
    if members:
        md.append("\n## Members\n\n" + members_table(members))
    paths["markdown"].write_text("".join(md))
    plot_curves(paths["plot"], points, selected=selected or (), title=title)
    return paths
