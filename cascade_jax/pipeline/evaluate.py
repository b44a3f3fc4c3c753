"""The pipeline's evaluation stage: every method on dev and test, operating points, Table 5, wall clock."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

import numpy as np

from cascade_jax import baselines, cascade, data, evaluation, metrics, models, report
from cascade_jax.pipeline.config import PipelineConfig
from cascade_jax.pipeline.layout import RunLayout, dar_member, trunc_member

# Evaluation trims each batch to its longest row rounded up to this (cascade's length_multiple).
_LENGTH_MULTIPLE = 16


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _cascades(config: PipelineConfig, margin: float) -> dict[str, list[pathlib.Path]]:
    layout = RunLayout(config.output_dir)
    large = layout.member_model("large")
    small_dar = layout.member_model(dar_member(margin))
    trunc = layout.member_model(trunc_member(config.trunc_layers))
    n = _layers(large)
    s, t = _layers(small_dar), config.trunc_layers
    return {
        f"CascadeBERT ({s}L+DAR -> {n}L)": [small_dar, large],
        f"Cascade w/o DAR ({s}L -> {n}L)": [layout.member_model("small-ce"), large],
        f"CascadeBERT ({t}L-KD -> {n}L)": [trunc, large],
        f"CascadeBERT ({t}L-KD -> {s}L+DAR -> {n}L)": [trunc, small_dar, large],
    }


def _layers(model_dir: pathlib.Path) -> int:
    return models.load_config(model_dir).num_hidden_layers


class _MemberOutputs:
    """Each cascade member's outputs on dev and test, computed once and shared by every cascade (and table) that
    uses it: a member runs alone through :func:`cascade.simulate_all`, and a cascade's simulation is its members'
    stacked (:meth:`cascade.CascadeSimulation.stack`), the same numbers a joint ``simulate_all`` gives."""

    def __init__(self, config: PipelineConfig, enc: dict[str, data.Encoded], num_labels: int):
        self.config, self.enc, self.num_labels = config, enc, num_labels
        self._stages: dict[str, cascade.Stage] = {}
        self._sims: dict[tuple[str, str], cascade.CascadeSimulation] = {}

    def stage(self, model_dir: pathlib.Path) -> cascade.Stage:
        key = str(model_dir)
        if key not in self._stages:
            self._stages[key] = report.load_cascade([model_dir], self.num_labels)[0]
        return self._stages[key]

    def sim(self, model_dir: pathlib.Path, split: str) -> cascade.CascadeSimulation:
        key = (str(model_dir), split)
        if key not in self._sims:
            self._sims[key] = cascade.simulate_all([self.stage(model_dir)], report.padded_inputs(self.enc[split]),
                                                   self.config.eval.batch_size, length_multiple=_LENGTH_MULTIPLE)
        return self._sims[key]

    def curve(self, dirs: list[pathlib.Path], split: str, **kw) -> report.Curve:
        stages = [self.stage(d) for d in dirs]
        sim = cascade.CascadeSimulation.stack([self.sim(d, split) for d in dirs])
        return report.cascade_curve(stages, self.enc[split], sim=sim, **kw)


def _choose_margin(config: PipelineConfig, outputs: _MemberOutputs, log) -> tuple[float, dict]:
    """The DAR margin whose cascade (small+DAR -> large) has the best mean dev metric over the target speed-ups."""
    if len(config.dar.margins) == 1:
        return config.dar.margins[0], {}
    layout = RunLayout(config.output_dir)
    scores = {}
    for m in config.dar.margins:
        curve = outputs.curve([layout.member_model(dar_member(m)), layout.member_model("large")], "dev")
        points = report.sweep(curve, num=config.eval.sweep_points)
        scores[m] = float(np.mean([report.select_point(points, t).metric for t in config.eval.targets]))
        log(f"  margin {m:g}: mean dev metric over targets {scores[m]:.4f}")
    return max(scores, key=scores.get), scores


def _dis_table(config: PipelineConfig, outputs: _MemberOutputs, margin: float) -> list[dict]:
    """Table 5: the small member with and without DAR on dev: metric, ECE, DIS.

    Dev instances have no K-fold labels, so DIS uses two stand-ins for difficulty, both written down: ``self``
    (hard = the model itself is wrong) and ``ref`` (hard = the member trained without DAR is wrong; the same
    labels for both rows).
    """
    labels = outputs.enc["dev"].labels
    layout = RunLayout(config.output_dir)
    rows, ce_wrong = [], None
    for name, d in [("without DAR", layout.member_model("small-ce")),
                    (f"with DAR (margin {margin:g})", layout.member_model(dar_member(margin)))]:
        probs = np.asarray(outputs.sim(d, "dev").probs[0], np.float64)
        preds, conf = probs.argmax(-1), probs.max(-1)
        wrong = (preds != labels).astype(np.int32)
        if ce_wrong is None:
            ce_wrong = wrong
        rows.append({
            "model": name, **metrics.task_metrics(data.get_task(config.data.task).metric, preds, labels),
            "ece": metrics.expected_calibration_error(conf, preds == labels),
            "dis_self": metrics.difficulty_inversion_score(conf, wrong),
            "dis_ref": metrics.difficulty_inversion_score(conf, ce_wrong),
            "mean_confidence": float(conf.mean()),
        })
    return rows


def stage_evaluate(config: PipelineConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    started = time.perf_counter()

    def note(line: str) -> None:  # Each sub-step line says when it started within the stage.
        log(f"{line} (at {_minutes(time.perf_counter() - started)})")

    layout = RunLayout(config.output_dir)
    d = config.data
    tokenizer = models.tokenizer_for(config.large_model)
    enc = {split: data.encode_split(d.task, split, d.source, tokenizer=tokenizer, max_length=d.max_length)
           for split in ("dev", "test")}
    task = data.get_task(d.task)
    num_labels = task.num_labels
    large = layout.member_model("large")
    n_large = _layers(large)
    outputs = _MemberOutputs(config, enc, num_labels)
    margin, margin_scores = _choose_margin(config, outputs, note)

    cascades = _cascades(config, margin)
    curves: dict[str, dict[str, Any]] = {}
    for name, dirs in cascades.items():
        note(f"  {name}")
        curves[name] = {s: outputs.curve(dirs, s, name=name, reference_layers=n_large) for s in enc}
    for mode, rule, label in [("deebert", "entropy", "DeeBERT"), ("pabee", "patience", "PABEE")]:
        note(f"  {label}")
        module, params = baselines.load_multi_exit(layout.baseline_model(mode))
        curves[label] = {s: report.early_exit_curve(module, params, enc[s], rule=rule, name=label,
                                                    batch_size=config.eval.batch_size) for s in enc}
    for k in config.bert_kl_layers:
        note(f"  BERT-{k}L")
        module, params = models.from_pretrained(layout.baseline_model(f"bert-{k}L"), num_labels=num_labels)
        curves[f"BERT-{k}L"] = {s: report.static_curve(module, params, enc[s], reference_layers=n_large,
                                                       batch_size=config.eval.batch_size, name=f"BERT-{k}L")
                                for s in enc}
    note(f"  BERT-{n_large}L (large member)")
    module, params = models.from_pretrained(large, num_labels=num_labels)
    curves[f"BERT-{n_large}L (large member)"] = {
        s: report.static_curve(module, params, enc[s], reference_layers=n_large, batch_size=config.eval.batch_size,
                               name=f"BERT-{n_large}L (large member)") for s in enc}

    selected, test_points = [], []
    for name, c in curves.items():
        selected += report.operating_points(c["dev"], c["test"], config.eval.targets, num=config.eval.sweep_points)
        test_points += report.sweep(c["test"], num=config.eval.sweep_points)

    members = {name: c["dev"].members() for name, c in curves.items() if c["dev"].kind == "cascade"}
    note("  Table 5: the small member with and without DAR")
    dis_rows = _dis_table(config, outputs, margin)

    wallclock = []
    main_name, main_dirs = next(iter(cascades.items()))
    timed = set(config.eval.wallclock_targets or config.eval.targets)
    chosen = [s for s in selected if s.method == main_name and s.target in timed]
    stages = [outputs.stage(d) for d in main_dirs]
    inputs = report.padded_inputs(enc["test"])
    for sel in chosen:
        for bs in config.eval.wallclock_batch_sizes:
            note(f"  wall-clock: {main_name} at target {sel.target:g}x, batch {bs}")
            w = cascade.measure_wallclock(stages, inputs, sel.dev.param, bs, repeats=config.eval.wallclock_repeats,
                                          length_multiple=_LENGTH_MULTIPLE)
            wallclock.append({"method": main_name, "target": sel.target, "threshold": sel.dev.param,
                              "batch_size": bs, "layer_speedup": w.layer_speedup, "wallclock_speedup": w.speedup,
                              "ratio": w.speedup / w.layer_speedup, "cascade_s": min(w.cascade_s),
                              "large_alone_s": min(w.baseline_s), "num_examples": w.num_examples,
                              "compiles_during_timing": w.compiles_during_timing})

    meta = {"preset": config.preset, "cuts": config.cuts, "task": d.task, "dev_examples": len(enc["dev"]),
            "test_examples": len(enc["test"]), "test_majority_accuracy": metrics.majority_accuracy(enc["test"].labels),
            "dev_majority_accuracy": metrics.majority_accuracy(enc["dev"].labels), "margin": margin,
            "margin_dev_scores": margin_scores,
            "targets": list(config.eval.targets), "metric": evaluation.primary_metric(task.metric)}
    exit_layers = {name: c["dev"].members() for name, c in curves.items() if c["dev"].kind == "early_exit"}
    extra = {"table5": dis_rows, "wallclock": wallclock, "label_summary": _label_summary(layout),
             "exit_layers": exit_layers}
    paths = report.write_report(layout.report_dir, test_points, members=members, selected=selected, meta=meta,
                                extra=extra, title=f"CascadeBERT on {d.task} ({config.preset} preset), test split")
    return json.loads(paths["json"].read_text())


def _label_summary(layout: RunLayout) -> dict | None:
    f = layout.labels_dir / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None
