"""Exit methods compared on the same examples: each method's outputs computed once, operating points matched on dev
per seed, paired bootstrap intervals for accuracies and for the differences a study claims.

  methods = [Method("CascadeBERT (3L+DAR -> 6L)", "cascade", runs=((small_s0, large), (small_s1, large))), ...]
  outputs = Outputs({"dev": dev_enc, "test": test_enc}, num_labels=2)
  result = compare(methods, outputs, targets=(1.25, 1.5), claims=[Claim(...)], reference_layers=6)

``./run main``'s evaluation and ``python -m eval.evaluate_cascade`` both call :func:`compare`; the curves,
selection and statistics it uses are the pure functions of :mod:`cascade_jax.curves` and :mod:`cascade_jax.stats`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cascade_jax import baselines, cascade, curves, data, evaluation, flops, metrics, models, stats, xla

KINDS = ("cascade", "early_exit", "static")


@dataclasses.dataclass(frozen=True)
class Method:
    """One exit method in one or more seeds.

    ``runs[s]`` is seed s's model directories: a cascade's members (fewest layers first), one multi-exit model
    (``early_exit``: DeeBERT/PABEE/FastBERT directories from ``baselines``), or one static model. ``rule``: the
    cascade's exit rule (``max_prob``, ``entropy``) or the early-exit rule (``entropy``, ``max_prob``,
    ``patience``). ``calibrate``: temperature-scale the first member on dev before it decides exits.
    """

    name: str
    kind: str
    runs: tuple[tuple[str, ...], ...]
    rule: str = "max_prob"
    calibrate: bool = False
    family: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.runs or any(not r for r in self.runs):
            raise ValueError(f"method {self.name!r} needs at least one run of at least one model")
        object.__setattr__(self, "runs", tuple(tuple(str(d) for d in r) for r in self.runs))

    @property
    def seeds(self) -> int:
        return len(self.runs)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A difference the paper claims: ``a`` minus ``b`` has the sign ``direction`` at each of ``targets`` (None:
    the targets both methods are compared at). ``b_target`` (for a static ``b``): compare ``a`` at b's own speed-up."""

    key: str
    text: str
    a: str
    b: str
    direction: int = 1
    targets: tuple[float, ...] | None = None
    at_b_speedup: bool = False


# ----------------------------------------------------------------------------------------------------------------
# Model outputs, computed once.


def padded_inputs(enc: data.Encoded) -> dict[str, np.ndarray]:
    """Every example of a split as [N, L] arrays, ready for :mod:`cascade`."""
    batch = data.make_batch(enc, np.arange(len(enc)), len(enc))
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def load_stage(model_dir, num_labels: int, dtype=None) -> cascade.Stage:
    """A fine-tuned model directory as a :class:`cascade.Stage` (with ``dtype`` bfloat16: parameters and
    activations in bfloat16, LayerNorm, softmax and the exit statistics in float32)."""
    dtype = dtype or jax.numpy.float32
    module, params = models.from_pretrained(model_dir, num_labels=num_labels, dtype=dtype)
    if jax.numpy.dtype(dtype) != jax.numpy.float32:
        params = models.cast_params(params, dtype)
    return cascade.Stage(models.logits_fn(module), params, module.config.num_hidden_layers, config=module.config,
                         name=str(model_dir))


def load_cascade(member_dirs: Sequence, num_labels: int, dtype=None) -> list[cascade.Stage]:
    """The members (fine-tuned model directories, fewest layers first) as stages."""
    return [load_stage(d, num_labels, dtype) for d in member_dirs]


@functools.partial(xla.jit, static_argnums=0)  # One compilation per (module config, batch shape).
def _logits(module, params, batch):
    return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                        batch["token_type_ids"]).logits


# Evaluation trims each batch to its longest row rounded up to this (cascade's length_multiple).
LENGTH_MULTIPLE = 16


class Outputs:
    """Each model's outputs on each split, computed once and shared by every method that uses the model."""

    def __init__(self, encs: Mapping[str, data.Encoded], num_labels: int, *, batch_size: int = 64,
                 length_multiple: int | None = LENGTH_MULTIPLE):
        self.encs, self.num_labels = dict(encs), num_labels
        self.batch_size, self.length_multiple = batch_size, length_multiple
        self._stages: dict[str, cascade.Stage] = {}
        self._cache: dict[tuple, Any] = {}

    def add_split(self, name: str, enc: data.Encoded) -> None:
        """Another split (e.g. an out-of-domain test set) on which the same models are evaluated."""
        self.encs[name] = enc

    def _check(self, model_dir, config: models.BertConfig) -> None:
        """Every split's tokens fit the model's embeddings; the directory holds a trained head."""
        models.check_trained_head(model_dir)
        for name, enc in self.encs.items():
            models.check_inputs_fit(config, max_length=enc.max_length,
                                    max_token_id=int(enc.input_ids.max()) if len(enc.input_ids) else None,
                                    source=f"{model_dir} on {name}")

    def stage(self, model_dir) -> cascade.Stage:
        key = str(model_dir)
        if key not in self._stages:
            stage = load_stage(model_dir, self.num_labels)
            self._check(model_dir, stage.config)
            self._stages[key] = stage
        return self._stages[key]

    def sim(self, model_dir, split: str) -> cascade.CascadeSimulation:
        """One member alone on every example of ``split`` (a one-stage simulation)."""
        key = ("sim", str(model_dir), split)
        if key not in self._cache:
            self._cache[key] = cascade.simulate_all([self.stage(model_dir)], padded_inputs(self.encs[split]),
                                                    self.batch_size, length_multiple=self.length_multiple)
        return self._cache[key]

    def exit_logits(self, model_dir, split: str) -> tuple[np.ndarray, baselines.MultiExitBert]:
        """All layers' logits ``[L, N, C]`` of a multi-exit model on ``split``, and the model."""
        key = ("exits", str(model_dir), split)
        if key not in self._cache:
            module, params = baselines.load_multi_exit(model_dir)
            self._check(model_dir, module.config)
            self._cache[key] = (baselines.predict_exit_logits(module, params, self.encs[split], self.batch_size),
                                module)
        return self._cache[key]


def scaled_sim(sim: cascade.CascadeSimulation, temperature: float) -> cascade.CascadeSimulation:
    """A one-stage simulation with its probabilities temperature-scaled (exit statistics recomputed, float64)."""
    probs = stats.temperature_scale(sim.probs[0], temperature)
    return cascade.CascadeSimulation(probs=probs[None], max_prob=probs.max(-1)[None],
                                     entropy=metrics.normalized_entropy(probs)[None], num_layers=sim.num_layers)


# ----------------------------------------------------------------------------------------------------------------
# Curves of a method.


@dataclasses.dataclass
class Run:
    """One seed of a method: its curve on each split, and its first member's temperature when calibrated."""

    curves: dict[str, curves.Curve]
    temperature: float | None = None


def method_runs(method: Method, outputs: Outputs, splits: Sequence[str], *, reference_layers: int,
                reference_config: models.BertConfig, temperatures: Sequence[float | None] | None = None) -> list[Run]:
    """Each seed's curves of ``method`` on ``splits`` (speed-ups against ``reference_layers`` layers; FLOPs against
    ``reference_config`` at each example's real length). A calibrated cascade's temperatures are fitted on dev,
    unless given."""
    runs = []
    for i, dirs in enumerate(method.runs):
        temperature = None if temperatures is None else temperatures[i]
        if method.kind == "cascade" and method.calibrate and temperature is None:
            dev = outputs.sim(dirs[0], "dev")
            temperature = stats.fit_temperature(np.log(np.clip(dev.probs[0], 1e-300, None)),
                                                outputs.encs["dev"].labels)
        per_split = {}
        for split in splits:
            enc = outputs.encs[split]
            labels, metric = enc.labels, data.get_task(enc.task).metric
            ref_flops = flops.bert_flops(reference_config, enc.lengths)
            if method.kind == "cascade":
                sims = [outputs.sim(d, split) for d in dirs]
                if temperature is not None:
                    sims[0] = scaled_sim(sims[0], temperature)
                stages = [outputs.stage(d) for d in dirs]
                curve = curves.Curve.cascade(
                    cascade.CascadeSimulation.stack(sims), labels, metric, exit_rule=method.rule,
                    flops_per_stage=cascade.stage_flops(stages, enc.lengths), reference_layers=reference_layers,
                    reference_flops=ref_flops, split=split, name=method.name, names=[str(d) for d in dirs])
            elif method.kind == "early_exit":
                logits, module = outputs.exit_logits(dirs[0], split)
                costs = 2 * flops.layer_exit_macs(module.config, enc.lengths, module.head)
                curve = curves.Curve.early_exit(
                    logits, labels, metric, rule=method.rule, exit_costs=costs,
                    reference_flops=ref_flops, reference_layers=reference_layers, split=split, name=method.name)
            else:
                stage = outputs.stage(dirs[0])
                sim = outputs.sim(dirs[0], split)
                curve = curves.Curve.static(np.log(np.clip(sim.probs[0], 1e-300, None)), labels, metric,
                                            num_layers=stage.num_layers, reference_layers=reference_layers,
                                            flops=flops.bert_flops(stage.config, enc.lengths),
                                            reference_flops=ref_flops, split=split, name=method.name)
            per_split[split] = curve
        runs.append(Run(per_split, temperature))
    return runs


# ----------------------------------------------------------------------------------------------------------------
# The comparison.


@dataclasses.dataclass
class Comparison:
    """Everything :func:`compare` found; ``to_json()`` is what results.json holds of it."""

    methods: list[Method]
    runs: dict[str, list[Run]]
    targets: tuple[float, ...]
    selected: dict[str, list[list[curves.Selected]]]  # method -> seed -> target
    test_points: dict[str, list[list[curves.Point]]]   # method -> seed -> sweep on test
    table: dict[str, dict]                             # method -> per-target summary with intervals
    claims: list[dict]
    auc: dict[str, dict]
    majority: dict[str, float]

    def to_json(self) -> dict:
        return {
            "targets": list(self.targets),
            "methods": {m.name: {"kind": m.kind, "family": m.family, "rule": m.rule, "seeds": m.seeds,
                                 "runs": [list(r) for r in m.runs],
                                 "temperatures": [r.temperature for r in self.runs[m.name]],
                                 "targets": self.table[m.name], "auc": self.auc[m.name]} for m in self.methods},
            "claims": self.claims,
            "majority": self.majority,
            "points": {name: [p.to_dict() for p in seeds[0]] for name, seeds in self.test_points.items()},
        }


def _correct(curve: curves.Curve, param) -> tuple[np.ndarray, np.ndarray]:
    """Per-example 0/1 correctness and layers executed of ``curve`` at ``param``."""
    r = curve.result(param)
    return (r.predictions == curve.labels).astype(np.float64), r.layers.astype(np.float64)


def compare(methods: Sequence[Method], outputs: Outputs, *, targets: Sequence[float], reference_layers: int,
            reference_config: models.BertConfig, claims: Sequence[Claim] = (), sweep_points: int = 41,
            resamples: int = 1000, bootstrap_seed: int = 0, auc_range: tuple[float, float] | None = None,
            level: float = 0.95) -> Comparison:
    """Evaluate ``methods`` on dev and test: each seed's operating point for each target is chosen on dev
    (:func:`curves.select_point`: the smallest dev speed-up at or above the target) and evaluated on test; the test
    accuracy of each method and target gets a ``level`` interval from a paired bootstrap over test examples (the
    same resamples for every method) combined with resampling the seeds; so does each claimed difference."""
    targets = tuple(float(t) for t in targets)
    runs = {m.name: method_runs(m, outputs, ("dev", "test"), reference_layers=reference_layers,
                                reference_config=reference_config) for m in methods}
    test_enc = outputs.encs["test"]
    weights = stats.resample_weights(len(test_enc), resamples, bootstrap_seed)
    majority = {split: metrics.majority_accuracy(outputs.encs[split].labels) for split in ("dev", "test")}
    selected, test_points, table, auc, correct, speed = {}, {}, {}, {}, {}, {}
    for m in methods:
        chosen = [curves.operating_points(r.curves["dev"], r.curves["test"], targets, num=sweep_points)
                  for r in runs[m.name]]
        unlearned = [unlearned_layers(r.curves["dev"], majority["dev"]) for r in runs[m.name]]
        selected[m.name] = chosen
        test_points[m.name] = [curves.sweep(r.curves["test"], num=sweep_points) for r in runs[m.name]]
        table[m.name], per_target = {}, {}
        for k, t in enumerate(targets):
            per_seed = [c[k] for c in chosen]
            hits = [_correct(r.curves["test"], s.dev.param) for r, s in zip(runs[m.name], per_seed)]
            c = np.stack([h[0] for h in hits])
            layers = np.stack([h[1] for h in hits])
            correct[(m.name, t)], speed[(m.name, t)] = c, layers
            samples = stats.bootstrap_means({m.name: c}, weights, bootstrap_seed)[m.name]
            low, high = stats.interval(samples, level)
            pooled = float(c.mean())
            per_target[f"{t:g}"] = {
                "target": t, "reached": [s.reached for s in per_seed],
                "param": [s.dev.param for s in per_seed],
                "dev_speedup": [s.dev.layer_speedup for s in per_seed],
                "dev_metric": [s.dev.metric for s in per_seed],
                "test_speedup": [s.test.layer_speedup for s in per_seed],
                "test_metric": [s.test.metric for s in per_seed],
                "test_flops_speedup": [s.test.flops_speedup for s in per_seed],
                "test_ece": [s.test.ece for s in per_seed],
                "test_exit_shares": [list(s.test.exit_shares) for s in per_seed],
                "unlearned_share": [float(sum(s.test.exit_shares[j] for j in bad)) for s, bad in
                                    zip(per_seed, unlearned)],
                "pooled_accuracy": pooled, "pooled_speedup": float(reference_layers / layers.mean()),
                "accuracy_interval": [low, high], "seed_sd": float(np.std(c.mean(axis=1), ddof=1)) if len(c) > 1
                else None,
                "at_majority": bool(pooled <= majority["test"] + MAJORITY_TOLERANCE),
            }
        table[m.name] = per_target
        if auc_range is not None:
            values = [curves.area_under_curve(p, *auc_range) for p in test_points[m.name]]
            known = [v for v in values if v is not None]
            auc[m.name] = {"range": list(auc_range), "per_seed": values,
                           "mean": float(np.mean(known)) if len(known) == len(values) else None,
                           "sd": float(np.std(known, ddof=1)) if len(known) == len(values) > 1 else None}
        else:
            auc[m.name] = {}
    found = [_claim(c, methods, table, correct, weights, bootstrap_seed, targets, level) for c in claims]
    return Comparison(methods=list(methods), runs=runs, targets=targets, selected=selected, test_points=test_points,
                      table=table, claims=[f for f in found if f is not None], auc=auc, majority=majority)


# A layer scoring within this of the majority-class rate on dev "learned nothing"; a method answering more than
# UNLEARNED_TOLERANCE of the test examples from such layers makes no comparison.
MAJORITY_TOLERANCE = 0.005
UNLEARNED_TOLERANCE = 0.01


def unlearned_layers(curve: curves.Curve, majority: float) -> list[int]:
    """The stages (layers) of an early-exit curve whose classifier alone scores no better than the majority class
    (within :data:`MAJORITY_TOLERANCE`); [] for other curves."""
    if curve.kind != "early_exit":
        return []
    return [k for k, m in enumerate(curve.members()) if m["metrics"][primary(curve.metric)] <= majority +
            MAJORITY_TOLERANCE]


def _claim(claim: Claim, methods, table, correct, weights, seed, targets, level) -> dict | None:
    names = {m.name for m in methods}
    if claim.a not in names or claim.b not in names:
        return None
    rows = []
    wanted = claim.targets or targets
    for t in wanted:
        if (claim.a, t) not in correct or (claim.b, t) not in correct:
            continue
        ta, tb = table[claim.a][f"{t:g}"], table[claim.b][f"{t:g}"]
        # A method that cannot reach the target, or answers one class for everything, makes no comparison.
        reached = all(ta["reached"]) and all(tb["reached"])
        samples = stats.bootstrap_means({claim.a: correct[(claim.a, t)], claim.b: correct[(claim.b, t)]}, weights,
                                        seed)
        diff = samples[claim.a] - samples[claim.b]
        low, high = stats.interval(diff, level)
        degenerate = [n for n, row in ((claim.a, ta), (claim.b, tb)) if row["at_majority"]]
        unlearned = [f"{n} answers {100 * max(row['unlearned_share']):.0f}% of examples from layers that learned "
                     f"nothing" for n, row in ((claim.a, ta), (claim.b, tb))
                     if max(row["unlearned_share"]) > UNLEARNED_TOLERANCE]
        rows.append({"target": t, "a": ta["pooled_accuracy"], "b": tb["pooled_accuracy"],
                     "difference": ta["pooled_accuracy"] - tb["pooled_accuracy"], "interval": [low, high],
                     "a_speedup": ta["pooled_speedup"], "b_speedup": tb["pooled_speedup"], "reached": reached,
                     "at_majority": degenerate, "unlearned": unlearned,
                     "verdict": ("no comparison: a method answers the majority class" if degenerate else
                                 f"no comparison: {'; '.join(unlearned)}" if unlearned else
                                 "no comparison: a target is not reached" if not reached else
                                 stats.verdict(low, high, claim.direction))})
    return {"key": claim.key, "text": claim.text, "a": claim.a, "b": claim.b, "direction": claim.direction,
            "rows": rows}


def member_path_name(path: str) -> str:
    """A member's short name from its model directory (``.../members/small/dar-m0.5-s0/model`` ->
    ``small/dar-m0.5-s0``)."""
    p = pathlib.Path(path)
    if p.name == "model":
        p = p.parent
    return f"{p.parent.name}/{p.name}"


def member_summary(name: str, probs: np.ndarray, labels: np.ndarray, metric: str) -> dict:
    """A member alone: task metrics, ECE and mean confidence of its probabilities ``[N, C]``."""
    probs = np.asarray(probs, np.float64)
    preds, conf = probs.argmax(-1), probs.max(-1)
    return {"name": name, "metrics": metrics.task_metrics(metric, preds, labels),
            "ece": metrics.expected_calibration_error(conf, preds == labels), "mean_confidence": float(conf.mean())}


def primary(metric: str) -> str:
    return evaluation.primary_metric(metric)
