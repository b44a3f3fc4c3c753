"""The pipeline's evaluation stage: every method in every seed on dev and test through :func:`comparison.compare`
(matched operating points, paired intervals, the paper's claims), Table 5 with intervals, out-of-domain sets,
wall clock; writes ``report/results.json`` (built once) and the plot."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

import numpy as np

from cascade_jax import cascade, comparison, curves, data, metrics, models, provenance, report, stats
from cascade_jax.data import holdout
from cascade_jax.data.overlap import drop_overlap
from cascade_jax.pipeline.config import PipelineConfig
from cascade_jax.pipeline.layout import RunLayout, ce_member, dar_member, seed_member
from cascade_jax.pipeline.runner import minutes


# ----------------------------------------------------------------------------------------------------------------
# Splits.


def evaluation_splits(config: PipelineConfig, tokenizer) -> tuple[dict[str, data.Encoded], dict]:
    """``{"dev", "test"}`` encoded splits (:func:`data.holdout.dev_and_test`: a task whose test labels are withheld,
    as GLUE's, gets a seeded share of the official dev split as its test split; the members selected on the rest)."""
    d = config.data
    dev, test, where = holdout.dev_and_test(d.task, d.source, tokenizer=tokenizer, max_length=d.max_length,
                                            test_from_dev=d.test_from_dev, seed=d.holdout_seed)
    return {"dev": dev, "test": test}, {"test_source": where}


def ood_splits(config: PipelineConfig, tokenizer) -> tuple[dict[str, data.Encoded], dict[str, int]]:
    """The out-of-domain test sets, each without the examples whose normalised text is in the training split."""
    d = config.data
    if not config.eval.ood_tasks:
        return {}, {}
    train_texts = _texts(data.load_split(d.task, "train", d.source))
    out, removed = {}, {}
    for name in config.eval.ood_tasks:
        enc = data.encode_split(name, "test", None, tokenizer=tokenizer, max_length=d.max_length)
        kept, n = drop_overlap(enc, _texts(data.load_split(name, "test", None)), train_texts)
        cap = config.eval.ood_max_examples
        if cap is not None and len(kept) > cap:
            kept = data.subset(kept, cap, seed=config.seed)
        out[name], removed[name] = kept, n
    return out, removed


def _texts(ds) -> list[str]:
    fields = [c for c in ("sentence", "sentence1", "question", "premise") if c in ds.column_names]
    return list(ds[fields[0]]) if fields else []


# ----------------------------------------------------------------------------------------------------------------
# Methods and claims.


def _large_for(config: PipelineConfig, i: int) -> str:
    return str(RunLayout(config.output_dir).member_model("large", seed_member(i % config.large_seeds)))


def main_names(config: PipelineConfig, small_layers: int, large_layers: int) -> dict[str, str]:
    s, t, n = small_layers, config.trunc_layers, large_layers
    return {"main": f"CascadeBERT ({s}L+DAR -> {n}L)", "main_ce": f"Cascade w/o DAR ({s}L -> {n}L)",
            "main_ts": f"Cascade with temperature scaling ({s}L+TS -> {n}L)",
            "trunc": f"CascadeBERT ({t}L+DAR -> {n}L)", "trunc_ce": f"Cascade w/o DAR ({t}L -> {n}L)",
            "kd": f"Cascade w/o DAR ({t}L-KD -> {n}L)", "three": f"CascadeBERT ({t}L+DAR -> {s}L+DAR -> {n}L)",
            "small": f"{s}L alone (complete small model)", "large": f"BERT-{n}L (large member)",
            "pkd": f"BERT-PKD ({config.distill_layers}L)", "theseus": f"BERT-of-Theseus ({config.distill_layers}L)",
            "pd": f"BERT-PD analogue ({s}L complete + KD)"}


def build_methods(config: PipelineConfig, margin: float, names: dict[str, str]) -> list[comparison.Method]:
    layout = RunLayout(config.output_dir)
    seeds = range(config.seeds)
    small = lambda name: str(layout.member_model("small", name))  # noqa: E731
    shallow = lambda name: str(layout.member_model("shallow", name))  # noqa: E731
    methods = [
        comparison.Method(names["main"], "cascade", tuple((small(dar_member(margin, i)), _large_for(config, i))
                                                          for i in seeds), family="CascadeBERT"),
        comparison.Method(names["main_ce"], "cascade", tuple((small(ce_member(i)), _large_for(config, i))
                                                             for i in seeds), family="cascade without DAR"),
        comparison.Method(names["main_ts"], "cascade", tuple((small(ce_member(i)), _large_for(config, i))
                                                             for i in seeds), calibrate=True,
                          family="cascade without DAR"),
        comparison.Method(names["trunc"], "cascade", tuple((shallow(dar_member(margin, i)), _large_for(config, i))
                                                           for i in seeds), family="CascadeBERT"),
        comparison.Method(names["trunc_ce"], "cascade", tuple((shallow(ce_member(i)), _large_for(config, i))
                                                              for i in seeds), family="cascade without DAR"),
        comparison.Method(names["three"], "cascade", tuple((shallow(dar_member(margin, i)), small(dar_member(margin, i)),
                                                            _large_for(config, i)) for i in seeds),
                          family="CascadeBERT"),
    ]
    if config.kd.member:
        methods.append(comparison.Method(names["kd"], "cascade", tuple(
            (str(layout.member_model("kd", seed_member(i))), _large_for(config, i)) for i in seeds),
            family="cascade without DAR"))
    for label, mode, rule in (("DeeBERT", "deebert", "entropy"), ("PABEE", "pabee", "patience"),
                              ("FastBERT", "fastbert", "entropy")):
        methods.append(comparison.Method(label, "early_exit", tuple((str(layout.baseline_model(mode, i)),)
                                                                      for i in seeds), rule=rule,
                                         family="early exit"))
    for k in config.bert_kl_layers:
        runs = tuple((shallow(ce_member(i)),) if k == config.trunc_layers else
                     (str(layout.baseline_model(f"bert-{k}L", i)),) for i in seeds)
        methods.append(comparison.Method(f"BERT-{k}L", "static", runs, family="static"))
    methods.append(comparison.Method(names["small"], "static", tuple((small(ce_member(i)),) for i in seeds),
                                     family="static"))
    for key, folder in (("pkd", "bert-pkd"), ("theseus", "theseus"), ("pd", "bert-pd")):
        methods.append(comparison.Method(names[key], "static", tuple((str(layout.baseline_model(folder, i)),)
                                                                     for i in seeds), family="distilled"))
    methods.append(comparison.Method(names["large"], "static", tuple((_large_for(config, i),)
                                                                     for i in range(config.large_seeds)),
                                     family="static"))
    return methods


def build_claims(config: PipelineConfig, names: dict[str, str], large_layers: int) -> list[comparison.Claim]:
    C = comparison.Claim
    claims = [
        C("dar_cascade", "DAR raises cascade accuracy at matched speed-ups (Table 4)", names["main"], names["main_ce"]),
        C("dar_cascade_trunc", "DAR raises cascade accuracy at matched speed-ups, truncated small member",
          names["trunc"], names["trunc_ce"]),
    ]
    for other in ("DeeBERT", "PABEE", "FastBERT"):
        claims.append(C(f"vs_{other.lower()}", f"CascadeBERT beats {other} at matched speed-ups (Table 2)",
                        names["main"], other))
        claims.append(C(f"vs_{other.lower()}_trunc", f"CascadeBERT beats {other} at matched speed-ups, 2-4x regime",
                        names["trunc"], other))
    for k in config.bert_kl_layers:
        speedup = large_layers / k
        if k != config.trunc_layers:
            claims.append(C(f"vs_bert_{k}l", f"CascadeBERT beats BERT-{k}L at its speed-up ({speedup:g}x; Table 2)",
                            names["trunc"], f"BERT-{k}L", targets=(speedup,)))
    small_k = None
    try:
        small_k = models.load_config(models.resolve_model_dir(config.small_model)).num_hidden_layers
    except Exception:  # noqa: BLE001 - the claim is only made when the small model's depth is known.
        pass
    if small_k is not None and small_k in config.bert_kl_layers:
        claims.append(C("complete_vs_truncated", f"a complete {small_k}-layer model beats the {small_k}-layer "
                        f"truncation of the large one (Sec. 5.4)", names["small"], f"BERT-{small_k}L",
                        targets=(large_layers / small_k,)))
    distilled_speedup = large_layers / config.distill_layers
    for key, label in (("pkd", "BERT-PKD"), ("theseus", "BERT-of-Theseus"), ("pd", "the BERT-PD analogue")):
        claims.append(C(f"vs_{key}", f"CascadeBERT beats {label} at its speed-up ({distilled_speedup:g}x; Table 3)",
                        names["trunc"], names[key], targets=(distilled_speedup,)))
    claims.append(C("complete_vs_truncated_kd", "a complete small model distilled (BERT-PD analogue) beats a "
                    "truncated one distilled (BERT-PKD) of the same size (Sec. 5.4)", names["pd"], names["pkd"],
                    targets=(distilled_speedup,)))
    claims.append(C("dar_vs_temperature", "DAR is a better exit signal than post-hoc temperature scaling (not in the "
                    "paper)", names["main"], names["main_ts"]))
    return claims


# ----------------------------------------------------------------------------------------------------------------
# Table 5: the small member with and without DAR, with intervals.


def _member_probs(outputs: comparison.Outputs, model_dir: str, split: str) -> np.ndarray:
    return np.asarray(outputs.sim(model_dir, split).probs[0], np.float64)


def table5(config: PipelineConfig, outputs: comparison.Outputs, margin: float, group: str, split: str,
           temperatures: list[float | None], weights: np.ndarray) -> dict:
    """Accuracy, ECE, DIS and mean confidence of a group's members without DAR, with DAR, and without DAR but
    temperature-scaled (``temperatures`` per seed, fitted on dev), on ``split``; per seed, pooled, and the
    bootstrap interval of DAR minus without for ECE and DIS (paired over examples, seeds resampled).

    The examples have no K-fold difficulty labels, so DIS has two stand-ins: ``self`` (hard = the model's own
    errors) and ``ref`` (hard = the errors of the same seed's member without DAR).
    """
    layout = RunLayout(config.output_dir)
    labels = outputs.encs[split].labels
    metric = data.get_task(config.data.task).metric
    rows = {"without DAR": [], f"with DAR (margin {margin:g})": [], "without DAR, temperature-scaled": []}
    arrays = {k: [] for k in rows}
    for i in range(config.seeds):
        ce = _member_probs(outputs, str(layout.member_model(group, ce_member(i))), split)
        dar = _member_probs(outputs, str(layout.member_model(group, dar_member(margin, i))), split)
        ts = stats.temperature_scale(ce, temperatures[i]) if temperatures and temperatures[i] else None
        ref_wrong = (ce.argmax(-1) != labels).astype(np.int64)
        for name, probs in zip(rows, (ce, dar, ts)):
            if probs is None:
                continue
            preds, conf = probs.argmax(-1), probs.max(-1)
            wrong = (preds != labels).astype(np.int64)
            rows[name].append({
                **metrics.task_metrics(metric, preds, labels), "ece": metrics.expected_calibration_error(conf, ~wrong.astype(bool)),
                "dis_self": metrics.difficulty_inversion_score(conf, wrong),
                "dis_ref": metrics.difficulty_inversion_score(conf, ref_wrong),
                "mean_confidence": float(conf.mean())})
            arrays[name].append((conf, wrong, ref_wrong))
    out = {"split": split, "group": group, "rows": {}, "differences": {}}
    for name, per_seed in rows.items():
        if per_seed:
            out["rows"][name] = {"per_seed": per_seed, **{k: float(np.nanmean([r[k] for r in per_seed]))
                                                          for k in ("accuracy", "ece", "dis_self", "dis_ref",
                                                                    "mean_confidence") if k in per_seed[0]}}
    ce_name, dar_name, ts_name = list(rows)
    statistics = {"ece": lambda conf, wrong, ref: metrics.expected_calibration_error(conf, wrong == 0),
                  "dis_self": lambda conf, wrong, ref: metrics.difficulty_inversion_score(conf, wrong),
                  "dis_ref": lambda conf, wrong, ref: metrics.difficulty_inversion_score(conf, ref)}
    for other in (ce_name, ts_name):
        if not arrays[other]:
            continue
        for key, fn in statistics.items():
            a = stats.bootstrap_statistic(fn, arrays[dar_name], weights, config.seed, f"{group}/{key}/dar")
            b = stats.bootstrap_statistic(fn, arrays[other], weights, config.seed, f"{group}/{key}/{other}")
            low, high = stats.interval(a - b)
            direction = -1 if key == "ece" else 1  # The paper: DAR lowers ECE, raises DIS.
            out["differences"][f"{key}: DAR - {other}"] = {
                "difference": out["rows"][dar_name][key] - out["rows"][other][key], "interval": [low, high],
                "verdict": stats.verdict(low, high, direction), "direction": direction}
    return out


# ----------------------------------------------------------------------------------------------------------------
# The stage.


def _choose_margin(config: PipelineConfig, outputs, names_of, log) -> tuple[float, dict]:
    """The DAR margin whose cascade has the best mean dev metric over the targets and seeds (the paper's search)."""
    if len(config.dar.margins) == 1:
        return config.dar.margins[0], {}
    layout = RunLayout(config.output_dir)
    scores = {}
    for m in config.dar.margins:
        method = comparison.Method(f"margin {m:g}", "cascade", tuple(
            (str(layout.member_model("small", dar_member(m, i))), _large_for(config, i)) for i in range(config.seeds)))
        values = []
        for run in comparison.method_runs(method, outputs, ("dev",), **names_of):
            points = curves.sweep(run.curves["dev"], num=config.eval.sweep_points)
            values += [curves.select_point(points, t).metric for t in config.eval.targets]
        scores[m] = float(np.mean(values))
        log(f"  margin {m:g}: mean dev metric over targets and seeds {scores[m]:.4f}")
    return max(scores, key=scores.get), {f"{k:g}": v for k, v in scores.items()}


def stage_evaluate(config: PipelineConfig, log: Callable[[str], None] = lambda s: None,
                   made_by: dict | None = None) -> dict:
    """Evaluate everything; ``made_by``: the provenance of the code that runs it (default: now)."""
    started = time.perf_counter()

    def note(line: str) -> None:  # Each sub-step line says when it started within the stage.
        log(f"{line} (at {minutes(time.perf_counter() - started)})")

    layout = RunLayout(config.output_dir)
    task = data.get_task(config.data.task)
    if task.is_regression:
        raise ValueError(f"task {task.name!r} is a regression task: cascades exit on class confidence")
    tokenizer = models.tokenizer_for(config.large_model)
    encs, split_meta = evaluation_splits(config, tokenizer)
    outputs = comparison.Outputs(encs, task.num_labels, batch_size=config.eval.batch_size,
                                 length_multiple=comparison.LENGTH_MULTIPLE)
    large_dir = _large_for(config, 0)
    reference_config = models.load_config(pathlib.Path(large_dir))
    n_large = reference_config.num_hidden_layers
    reference = {"reference_layers": n_large, "reference_config": reference_config}
    margin, margin_scores = _choose_margin(config, outputs, reference, note)
    small_layers = models.load_config(layout.member_model("small", ce_member(0))).num_hidden_layers
    names = main_names(config, small_layers, n_large)
    methods = build_methods(config, margin, names)
    note(f"  {len(methods)} methods x {config.seeds} seed(s) on dev and test; bootstrap x {config.eval.resamples}")
    result = comparison.compare(methods, outputs, targets=config.eval.targets, claims=build_claims(
        config, names, n_large), sweep_points=config.eval.sweep_points, resamples=config.eval.resamples,
        bootstrap_seed=config.seed, auc_range=tuple(config.eval.auc_range), **reference)

    note("  Table 5, members alone, early-exit layers")
    weights = stats.resample_weights(len(encs["test"]), min(config.eval.resamples, 400), config.seed)
    temperatures = [r.temperature for r in result.runs[names["main_ts"]]]
    t5 = {f"{group}/{split}": table5(config, outputs, margin, group, split, temperatures if group == "small" else
                                     [None] * config.seeds, weights if split == "test" else
                                     stats.resample_weights(len(encs[split]), weights.shape[0], config.seed))
          for group in ("small", "shallow") for split in ("test", "dev")}
    members = _members(methods, outputs, task.metric)
    exit_layers = _exit_layers(methods, result, outputs, task.metric)

    note("  out-of-domain sets")
    ood_encs, removed = ood_splits(config, tokenizer)
    ood = _ood(config, methods, result, ood_encs, removed, outputs, reference)

    wallclock = _wallclock(config, result, names["main"], outputs, encs["test"], note)
    meta = {"preset": config.preset, "cuts": config.cuts, "task": task.name, "metric": comparison.primary(task.metric),
            "dev_examples": len(encs["dev"]), "test_examples": len(encs["test"]), **split_meta,
            "dev_majority_accuracy": result.majority["dev"], "test_majority_accuracy": result.majority["test"],
            "margin": margin, "margin_dev_scores": margin_scores, "targets": list(config.eval.targets),
            "seeds": config.seeds, "large_seeds": config.large_seeds, "resamples": config.eval.resamples,
            "reference_layers": n_large, "names": names, "small_model": config.small_model,
            "large_model": config.large_model, "evaluate_seconds": None}
    thresholds = {"method": names["main"],
                  "members": [str(pathlib.Path(p).relative_to(layout.root)) for p in methods[0].runs[0]],
                  "thresholds": {f"{t:g}": result.selected[names["main"]][0][k].dev.param
                                 for k, t in enumerate(result.targets)}}
    doc = {"meta": meta, "provenance": made_by or provenance.provenance(), **result.to_json(), "table5": t5, "members": members, "exit_layers": exit_layers,
           "ood": ood, "wallclock": wallclock, "labels": _label_summaries(layout),
           "cascade_thresholds": thresholds}
    doc["meta"]["evaluate_seconds"] = time.perf_counter() - started
    layout.report_dir.mkdir(parents=True, exist_ok=True)
    layout.results_file.write_text(json.dumps(report.json_safe(doc), indent=2, allow_nan=False) + "\n")
    report.plot_comparison(layout.report_dir / "curve.png", result,
                           title=f"CascadeBERT on {task.name} ({config.preset} preset), test split")
    return doc


def _members(methods, outputs, metric: str) -> list[dict]:
    """Every distinct model of the cascades and static methods alone, on dev and test, per seed."""
    seen, rows = set(), []
    for m in methods:
        if m.kind == "early_exit":
            continue
        for i, run in enumerate(m.runs):
            for d in run:
                if d in seen:
                    continue
                seen.add(d)
                row = {"model": comparison.member_path_name(d), "layers": outputs.stage(d).num_layers, "seed": i}
                for split in ("dev", "test"):
                    row[split] = comparison.member_summary(d, _member_probs(outputs, d, split),
                                                           outputs.encs[split].labels, metric)
                rows.append(row)
    return rows


def _exit_layers(methods, result, outputs, metric: str) -> dict:
    """Each early-exit method's classifiers alone on dev, per seed, with whether each beats the majority class."""
    out = {}
    majority = result.majority["dev"]
    for m in methods:
        if m.kind != "early_exit":
            continue
        per_seed = []
        for run in result.runs[m.name]:
            layers = run.curves["dev"].members()
            for layer in layers:
                layer["learned"] = bool(layer["metrics"][comparison.primary(metric)] > majority +
                                        comparison.MAJORITY_TOLERANCE)
            per_seed.append(layers)
        out[m.name] = per_seed
    return out


def _ood(config, methods, result, ood_encs, removed, outputs, reference) -> dict:
    """Each cascade and static method on each out-of-domain set at the thresholds chosen in-domain (on dev):
    accuracy, achieved layer speed-up, ECE; the mean over seeds."""
    if not ood_encs:
        return {}
    table = {"removed_as_in_train": removed, "sizes": {k: len(v) for k, v in ood_encs.items()},
             "max_examples": config.eval.ood_max_examples, "methods": {}}
    for name, enc in ood_encs.items():
        outputs.add_split(name, enc)
        for m in methods:
            if m.kind == "early_exit":
                continue
            runs = comparison.method_runs(m, outputs, (name,), temperatures=[r.temperature for r in result.runs[m.name]],
                                          **reference)
            per_target = {}
            for k, t in enumerate(result.targets):
                pts = [run.curves[name].point(result.selected[m.name][i][k].dev.param) for i, run in enumerate(runs)]
                per_target[f"{t:g}"] = {"accuracy": float(np.mean([p.metric for p in pts])),
                                        "layer_speedup": float(np.mean([p.layer_speedup for p in pts])),
                                        "ece": float(np.mean([p.ece for p in pts]))}
            table["methods"].setdefault(m.name, {})[name] = per_target
    return table


def _wallclock(config, result, main, outputs, test_enc, note) -> list[dict]:
    timed = set(config.eval.wallclock_targets or config.eval.targets)
    method = next(m for m in result.methods if m.name == main)
    stages = [outputs.stage(d) for d in method.runs[0]]
    inputs = comparison.padded_inputs(test_enc)
    out = []
    for k, t in enumerate(result.targets):
        if t not in timed:
            continue
        sel = result.selected[main][0][k]
        for bs in config.eval.wallclock_batch_sizes:
            note(f"  wall-clock: {main} at target {t:g}x, batch {bs}")
            w = cascade.measure_wallclock(stages, inputs, sel.dev.param, bs, repeats=config.eval.wallclock_repeats,
                                          length_multiple=comparison.LENGTH_MULTIPLE)
            out.append({"method": main, "target": t, "threshold": sel.dev.param, "batch_size": bs,
                        "layer_speedup": w.layer_speedup, "wallclock_speedup": w.speedup,
                        "ratio": w.speedup / w.layer_speedup, "cascade_s": min(w.cascade_s),
                        "large_alone_s": min(w.baseline_s), "num_examples": w.num_examples,
                        "compiles_during_timing": w.compiles_during_timing})
    return out


def _label_summaries(layout: RunLayout) -> dict[str, Any]:
    out = {}
    for which in ("small", "shallow"):
        f = layout.labels_dir(which) / "summary.json"
        if f.exists():
            out[which] = json.loads(f.read_text())
    return out
