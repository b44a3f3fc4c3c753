"""The whole CascadeBERT pipeline as resumable stages: labels -> members -> baselines -> sweeps -> report.

Stages, in order (each writes under ``output_dir`` and is skipped when its marker ``stages/<name>.json`` exists;
the training stages also resume mid-way from their own checkpoints):

  labels       difficulty labels for the small member: K folds x S seeds, one vmapped run (``difficulty``)
  small-ce     the small member with cross-entropy (the cascade without DAR)
  small-dar-m  the small member with DAR, one run per margin ``m`` (the margin is chosen on dev when several)
  large        the large member with cross-entropy
  trunc-kd     the large model truncated to ``trunc_layers`` layers, distilled from the large member (Sec. 5.4)
  bert-kL      static baselines: the large model's first k layers fine-tuned with cross-entropy
  deebert      internal classifiers on the frozen large member (DeeBERT's second stage)
  pabee        internal classifiers trained jointly with the backbone (PABEE's weighted loss)
  evaluate     every method on dev and test: sweeps, operating points chosen on dev for target speed-ups and
               reported on test, the small member with and without DAR (accuracy, ECE, DIS), wall-clock speed-ups;
               writes ``report/results.json``, ``report/results.md``, ``report/curve.png``

:func:`results_markdown` turns ``report/results.json`` into the page ``docs/results.md``; no number in it is typed
by hand. Library code reports progress through a callback (``log``); ``train/main.py`` prints it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from typing import Any, Callable

import numpy as np

from cascade_jax import baselines, cascade, data, difficulty, evaluation, metrics, models, report, trainer


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline does. :data:`PRESETS` hold the two standard settings.

    ``train_subset`` trains (and labels) on a fixed random sample of the training split; ``cuts`` says in words
    what a preset leaves out of the paper's protocol, and is printed and written into the results.
    """

    output_dir: str
    preset: str = "quick"
    cuts: str = ""
    task: str = "rotten_tomatoes"
    source: str | None = None
    small_model: str = "minilm-l3"
    large_model: str = "minilm-l6"
    trunc_layers: int = 2
    bert_kl_layers: tuple[int, ...] = (2, 3)
    train_subset: int | None = None
    max_length: int = 64
    batch_size: int = 32
    label_folds: int = 8
    label_seeds: int = 5
    label_epochs: float = 10.0
    label_learning_rate: float = 2e-5
    epochs: float = 10.0
    learning_rate: float = 2e-5
    margins: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    dar_weight: float = 0.5
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    shallow_epochs: float | None = None  # trunc-kd and BERT-kL; None: ``epochs``
    shallow_learning_rate: float | None = None  # trunc-kd and BERT-kL; None: ``learning_rate``
    exit_epochs: float = 10.0
    exit_learning_rate: float = 2e-5
    dev_eval: str = "epoch"  # "epoch": members evaluated on dev (best kept) each epoch; "end": once, at the end
    targets: tuple[float, ...] = (1.25, 1.5, 1.75)
    sweep_points: int = 41
    eval_batch_size: int = 64
    wallclock_batch_sizes: tuple[int, ...] = (64, 256)
    wallclock_repeats: int = 3
    wallclock_targets: tuple[float, ...] | None = None  # None: every target
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.dev_eval not in ("epoch", "end"):
            raise ValueError(f"dev_eval must be 'epoch' or 'end', got {self.dev_eval!r}")
        extra = set(self.wallclock_targets or ()) - set(self.targets)
        if extra:
            raise ValueError(f"wallclock_targets {sorted(extra)} are not among targets {list(self.targets)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        preset="quick",
        cuts="trains on a 1,600-example sample of the 10,643 training reviews; difficulty labels from K=3 folds x "
             "S=2 seeds x 1 epoch (paper: K=8, S=5, 10 epochs); the 3- and 6-layer members 2 epochs at lr 1e-4, "
             "the 2-layer truncations of minilm-l6 (KD member, BERT-2L) 4 epochs at lr 2e-4, the DeeBERT and PABEE "
             "exits 2 epochs at lr 2e-4 (paper: 10 epochs at 2e-5); members scored on dev once, after their last "
             "step, and that model kept (the paper preset scores every epoch and keeps the best); one DAR margin "
             "(0.5) instead of a search over {0.1, 0.3, 0.5, 0.7}; BERT-kL for k=2 only; wall-clock timed at the "
             "1.5x operating point and batch 64 only, best of 2",
        train_subset=1600, label_folds=3, label_seeds=2, label_epochs=1.0, label_learning_rate=1e-4, epochs=2.0,
        learning_rate=1e-4, shallow_epochs=4.0, shallow_learning_rate=2e-4, margins=(0.5,), exit_epochs=2.0,
        exit_learning_rate=2e-4, bert_kl_layers=(2,), dev_eval="end", wallclock_batch_sizes=(64,),
        wallclock_repeats=2, wallclock_targets=(1.5,), sweep_points=31,
    ),
    "paper": dict(
        preset="paper",
        cuts="none of the protocol (K=8 folds x 5 seeds, 10 epochs, lr 2e-5, margins searched on dev); the models are "
             "MiniLM-L3/L6 rather than BERT-base-sized members, and the task is rotten_tomatoes unless --task says",
    ),
}

STAGE_ORDER = ("labels", "small-ce", "small-dar", "large", "trunc-kd", "bert-kl", "deebert", "pabee", "evaluate")

# Evaluation trims each batch to its longest row rounded up to this (cascade's length_multiple).
_LENGTH_MULTIPLE = 16

# A score within this of the majority-class rate counts as "answers one class for everything".
_MAJORITY_TOLERANCE = 0.005


def _at_majority(score: float, majority: float) -> bool:
    return score <= majority + _MAJORITY_TOLERANCE


# Seconds per stage of the quick preset measured on a quiet 2-core CPU on 2026-11-25 (17.8 min in all); used for
# the "rest will take" line only, scaled by how fast the finished stages went.
_QUICK_ESTIMATES = {"labels": 185, "small-ce": 78, "small-dar": 76, "large": 143, "trunc-kd": 152, "bert-kl": 99,
                    "deebert": 41, "pabee": 132, "evaluate": 156}


def make_config(preset: str, output_dir: str, **overrides) -> PipelineConfig:
    """A :class:`PipelineConfig` from a preset name, with explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return PipelineConfig(output_dir=output_dir, **values)


# ----------------------------------------------------------------------------------------------------------------
# Paths.


def member_dir(config: PipelineConfig, name: str) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / "members" / name


def baseline_dir(config: PipelineConfig, name: str) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / "baselines" / name


def labels_file(config: PipelineConfig) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / "labels" / "difficulty.jsonl"


def _dar_name(margin: float) -> str:
    return f"small-dar-m{margin:g}"


# ----------------------------------------------------------------------------------------------------------------
# Stages.


def _fit(config: PipelineConfig, out: pathlib.Path, **kw) -> pathlib.Path:
    """Fine-tune one member with the pipeline's shared settings; returns its exported model directory."""
    kw = {"epochs": config.epochs, "learning_rate": config.learning_rate, **kw}
    if config.dev_eval == "end":
        kw.update(eval_every=-1)
    cfg = trainer.TrainConfig(
        output_dir=str(out), task=config.task, source=config.source, train_subset=config.train_subset,
        max_length=config.max_length, batch_size=config.batch_size, seed=config.seed, progress=config.progress,
        eval_batch_size=config.eval_batch_size, log_every=10, **kw,
    )
    result = trainer.fit(cfg)
    if result.status != "finished":
        raise KeyboardInterrupt(f"{out}: stopped at step {result.step} (pre-empted); run again to resume")
    return out / "model"


def stage_labels(config: PipelineConfig) -> None:
    result = difficulty.label_difficulty(difficulty.LabelConfig(
        output_dir=str(labels_file(config).parent), model=config.small_model, task=config.task,
        source=config.source, subset=config.train_subset, max_length=config.max_length, folds=config.label_folds,
        seeds=config.label_seeds, seed=config.seed, epochs=config.label_epochs, batch_size=config.batch_size,
        learning_rate=config.label_learning_rate, progress=config.progress,
    ))
    if result.status != "finished":
        raise KeyboardInterrupt("difficulty labelling pre-empted; run again to resume")


def stage_small_ce(config: PipelineConfig) -> None:
    _fit(config, member_dir(config, "small-ce"), model=config.small_model)


def stage_small_dar(config: PipelineConfig) -> None:
    for margin in config.margins:
        _fit(config, member_dir(config, _dar_name(margin)), model=config.small_model,
             loss=trainer.LossConfig(kind="dar", margin=margin, dar_weight=config.dar_weight),
             difficulty_file=str(labels_file(config)))


def stage_large(config: PipelineConfig) -> None:
    _fit(config, member_dir(config, "large"), model=config.large_model)


def _shallow(config: PipelineConfig) -> dict:
    """The optimisation settings of the truncated models (trunc-kd, BERT-kL)."""
    return {"epochs": config.shallow_epochs if config.shallow_epochs is not None else config.epochs,
            "learning_rate": (config.shallow_learning_rate if config.shallow_learning_rate is not None
                              else config.learning_rate)}


def stage_trunc_kd(config: PipelineConfig) -> None:
    _fit(config, member_dir(config, f"large-{config.trunc_layers}L-kd"), model=config.large_model,
         num_layers=config.trunc_layers, teacher=str(member_dir(config, "large") / "model"),
         loss=trainer.LossConfig(kind="kd", temperature=config.kd_temperature, kd_alpha=config.kd_alpha),
         **_shallow(config))


def stage_bert_kl(config: PipelineConfig) -> None:
    for k in config.bert_kl_layers:
        _fit(config, baseline_dir(config, f"bert-{k}L"), model=config.large_model, num_layers=k, **_shallow(config))


def _train_exit_model(config: PipelineConfig, mode: str, head: str) -> None:
    tokenizer = models.tokenizer_for(config.large_model)
    train = data.subset(data.encode_split(config.task, "train", config.source, tokenizer=tokenizer,
                                          max_length=config.max_length), config.train_subset)
    module, params = baselines.load_multi_exit(member_dir(config, "large") / "model", head=head, seed=config.seed)
    result = baselines.train_exits(module, params, train, baselines.ExitTrainConfig(
        mode=mode, epochs=config.exit_epochs, batch_size=config.batch_size,
        learning_rate=config.exit_learning_rate, seed=config.seed))
    baselines.save_multi_exit(module, result.params, baseline_dir(config, mode), tokenizer=tokenizer)


def stage_deebert(config: PipelineConfig) -> None:
    _train_exit_model(config, "deebert", "pooler")


def stage_pabee(config: PipelineConfig) -> None:
    _train_exit_model(config, "pabee", "shared_pooler")


# ----------------------------------------------------------------------------------------------------------------
# Evaluation.


def _cascades(config: PipelineConfig, margin: float) -> dict[str, list[pathlib.Path]]:
    large = member_dir(config, "large") / "model"
    small_dar = member_dir(config, _dar_name(margin)) / "model"
    trunc = member_dir(config, f"large-{config.trunc_layers}L-kd") / "model"
    n = _layers(large)
    s, t = _layers(small_dar), config.trunc_layers
    return {
        f"CascadeBERT ({s}L+DAR -> {n}L)": [small_dar, large],
        f"Cascade w/o DAR ({s}L -> {n}L)": [member_dir(config, "small-ce") / "model", large],
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
                                                   self.config.eval_batch_size, length_multiple=_LENGTH_MULTIPLE)
        return self._sims[key]

    def curve(self, dirs: list[pathlib.Path], split: str, **kw) -> report.CascadeCurve:
        stages = [self.stage(d) for d in dirs]
        sim = cascade.CascadeSimulation.stack([self.sim(d, split) for d in dirs])
        return report.cascade_curve(stages, self.enc[split], sim=sim, **kw)


def _choose_margin(config: PipelineConfig, outputs: _MemberOutputs, log) -> tuple[float, dict]:
    """The DAR margin whose cascade (small+DAR -> large) has the best mean dev metric over the target speed-ups."""
    if len(config.margins) == 1:
        return config.margins[0], {}
    large = member_dir(config, "large") / "model"
    scores = {}
    for m in config.margins:
        curve = outputs.curve([member_dir(config, _dar_name(m)) / "model", large], "dev")
        points = report.sweep(curve, num=config.sweep_points)
        scores[m] = float(np.mean([report.select_point(points, t).metric for t in config.targets]))
        log(f"  margin {m:g}: mean dev metric over targets {scores[m]:.4f}")
    return max(scores, key=scores.get), scores


def _dis_table(config: PipelineConfig, outputs: _MemberOutputs, margin: float) -> list[dict]:
    """Table 5: the small member with and without DAR on dev: metric, ECE, DIS.

    Dev instances have no K-fold labels, so DIS uses two stand-ins for difficulty, both written down: ``self``
    (hard = the model itself is wrong) and ``ref`` (hard = the member trained without DAR is wrong; the same
    labels for both rows).
    """
    labels = outputs.enc["dev"].labels
    rows, ce_wrong = [], None
    for name, d in [("without DAR", member_dir(config, "small-ce")), (f"with DAR (margin {margin:g})",
                                                                      member_dir(config, _dar_name(margin)))]:
        probs = np.asarray(outputs.sim(d / "model", "dev").probs[0], np.float64)
        preds, conf = probs.argmax(-1), probs.max(-1)
        wrong = (preds != labels).astype(np.int32)
        if ce_wrong is None:
            ce_wrong = wrong
        rows.append({
            "model": name, **metrics.task_metrics(data.get_task(config.task).metric, preds, labels),
            "ece": metrics.expected_calibration_error(conf, preds == labels),
            "dis_self": metrics.difficulty_inversion_score(conf, wrong),
            "dis_ref": metrics.difficulty_inversion_score(conf, ce_wrong),
            "mean_confidence": float(conf.mean()),
        })
    return rows


def stage_evaluate(config: PipelineConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    out = pathlib.Path(config.output_dir)
    started = time.perf_counter()

    def note(line: str) -> None:  # Each sub-step line says when it started within the stage.
        log(f"{line} (at {_minutes(time.perf_counter() - started)})")
    tokenizer = models.tokenizer_for(config.large_model)
    enc = {split: data.encode_split(config.task, split, config.source, tokenizer=tokenizer,
                                    max_length=config.max_length) for split in ("dev", "test")}
    task = data.get_task(config.task)
    num_labels = max(1, len(task.label_names))
    large = member_dir(config, "large") / "model"
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
        module, params = baselines.load_multi_exit(baseline_dir(config, mode))
        curves[label] = {s: report.early_exit_curve(module, params, enc[s], rule=rule, name=label,
                                                    batch_size=config.eval_batch_size) for s in enc}
    for k in config.bert_kl_layers:
        note(f"  BERT-{k}L")
        module, params = models.from_pretrained(baseline_dir(config, f"bert-{k}L") / "model", num_labels=num_labels)
        curves[f"BERT-{k}L"] = {s: report.static_curve(module, params, enc[s], reference_layers=n_large,
                                                       batch_size=config.eval_batch_size, name=f"BERT-{k}L")
                                for s in enc}
    note(f"  BERT-{n_large}L (large member)")
    module, params = models.from_pretrained(large, num_labels=num_labels)
    curves[f"BERT-{n_large}L (large member)"] = {
        s: report.static_curve(module, params, enc[s], reference_layers=n_large, batch_size=config.eval_batch_size,
                               name=f"BERT-{n_large}L (large member)") for s in enc}

    selected, test_points = [], []
    for name, c in curves.items():
        selected += report.operating_points(c["dev"], c["test"], config.targets, num=config.sweep_points)
        test_points += report.sweep(c["test"], num=config.sweep_points)

    members = {name: curves[name]["dev"].members() for name in curves if isinstance(curves[name]["dev"],
                                                                                      report.CascadeCurve)}
    note("  Table 5: the small member with and without DAR")
    dis_rows = _dis_table(config, outputs, margin)

    wallclock = []
    main_name, main_dirs = next(iter(cascades.items()))
    timed = set(config.wallclock_targets or config.targets)
    chosen = [s for s in selected if s.method == main_name and s.target in timed]
    stages = [outputs.stage(d) for d in main_dirs]
    inputs = report.padded_inputs(enc["test"])
    for sel in chosen:
        for bs in config.wallclock_batch_sizes:
            note(f"  wall-clock: {main_name} at target {sel.target:g}x, batch {bs}")
            w = cascade.measure_wallclock(stages, inputs, sel.dev.param, bs, repeats=config.wallclock_repeats,
                                          length_multiple=_LENGTH_MULTIPLE)
            wallclock.append({"method": main_name, "target": sel.target, "threshold": sel.dev.param,
                              "batch_size": bs, "layer_speedup": w.layer_speedup, "wallclock_speedup": w.speedup,
                              "ratio": w.speedup / w.layer_speedup, "cascade_s": min(w.cascade_s),
                              "large_alone_s": min(w.baseline_s), "num_examples": w.num_examples,
                              "compiles_during_timing": w.compiles_during_timing})

    meta = {"preset": config.preset, "cuts": config.cuts, "task": config.task, "dev_examples": len(enc["dev"]),
            "test_examples": len(enc["test"]), "test_majority_accuracy": majority_accuracy(enc["test"].labels),
            "dev_majority_accuracy": majority_accuracy(enc["dev"].labels), "margin": margin,
            "margin_dev_scores": margin_scores,
            "targets": list(config.targets), "metric": evaluation.primary_metric(task.metric)}
    paths = report.write_report(out / "report", test_points, members=members, selected=selected, meta=meta,
                                title=f"CascadeBERT on {config.task} ({config.preset} preset), test split")
    exit_layers = {name: c["dev"].members() for name, c in curves.items()
                   if isinstance(c["dev"], report.EarlyExitCurve)}
    extra = {"table5": dis_rows, "wallclock": wallclock, "label_summary": _label_summary(config),
             "exit_layers": exit_layers}
    doc = json.loads(paths["json"].read_text())
    doc.update(report._json_safe(extra))
    paths["json"].write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return doc


def majority_accuracy(labels) -> float:
    """Accuracy of always answering the most frequent label: what a model that learned nothing scores."""
    counts = np.bincount(np.asarray(labels, np.int64))
    return float(counts.max() / counts.sum())


def _label_summary(config: PipelineConfig) -> dict | None:
    f = labels_file(config).parent / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None


STAGES: dict[str, Callable[[PipelineConfig], Any]] = {
    "labels": stage_labels, "small-ce": stage_small_ce, "small-dar": stage_small_dar, "large": stage_large,
    "trunc-kd": stage_trunc_kd, "bert-kl": stage_bert_kl, "deebert": stage_deebert, "pabee": stage_pabee,
}


# ----------------------------------------------------------------------------------------------------------------
# Running.


def _marker(config: PipelineConfig, name: str) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / "stages" / f"{name}.json"


def run(config: PipelineConfig, *, log: Callable[[str], None] = lambda s: None,
        only: tuple[str, ...] | None = None, estimates: dict[str, float] | None = None) -> dict:
    """Run the stages not yet done (``only``: a subset of :data:`STAGE_ORDER`); returns ``{stage: seconds}``.

    A stage that finished earlier (its marker exists) is skipped; an interrupted one resumes from its own
    checkpoints. ``log`` receives one line per stage with the time spent so far and an estimate of the rest.
    """
    out = pathlib.Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    estimates = dict(estimates or (_QUICK_ESTIMATES if config.preset == "quick" else {}))
    names = [n for n in STAGE_ORDER if only is None or n in only]
    unknown = set(only or ()) - set(STAGE_ORDER)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGE_ORDER}")
    start = time.perf_counter()
    spent: dict[str, float] = {}
    done_est = done_real = 0.0
    for i, name in enumerate(names, 1):
        marker = _marker(config, name)
        if marker.exists():
            log(f"[{i}/{len(names)}] {name}: done earlier, skipped ({marker})")
            continue
        rest = [estimates.get(n, 0.0) for n in names[i - 1:] if not _marker(config, n).exists()]
        scale = done_real / done_est if done_est > 0 else 1.0
        eta = f", the rest ~{_minutes(sum(rest) * scale)}" if all(rest) and rest else ""
        log(f"[{i}/{len(names)}] {name}: running (elapsed {_minutes(time.perf_counter() - start)}{eta})")
        t0 = time.perf_counter()
        if name == "evaluate":
            stage_evaluate(config, log)
        else:
            STAGES[name](config)
        spent[name] = time.perf_counter() - t0
        done_est += estimates.get(name, 0.0)
        done_real += spent[name] if name in estimates else 0.0
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"stage": name, "seconds": spent[name], "finished": time.time()}) + "\n")
        log(f"[{i}/{len(names)}] {name}: finished in {_minutes(spent[name])}")
    return spent


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ----------------------------------------------------------------------------------------------------------------
# The results page.


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def results_markdown(doc: dict, *, plot_name: str = "results_curve.png") -> str:
    """``docs/results.md`` from ``report/results.json``: every number comes from that file."""
    meta = doc["meta"]
    metric = meta["metric"]
    lines = [f"# Results: CascadeBERT on {meta['task']} ({meta['preset']} preset)\n",
             "Written by `./run main` (`train/main.py`) from the pipeline's own output "
             "(`report/results.json`); no number here is typed by hand.\n",
             f"- What the preset cuts from the paper's protocol: {meta['cuts'] or 'nothing'}.",
             f"- Dev examples: {meta['dev_examples']}; test examples: {meta['test_examples']}. Thresholds are "
             f"chosen on dev for each target layer speed-up and reported on test." + _noise_note(meta, metric),
             f"- DAR margin used: {meta['margin']:g}" + (f" (dev scores per margin: {meta['margin_dev_scores']})"
                                                           if meta.get("margin_dev_scores") else "") + ".\n"]
    lines.append(f"## Table 2 analogue: test {metric} at matched speed-ups\n")
    by_method: dict[str, dict] = {}
    for s in doc["selected"]:
        by_method.setdefault(s["method"], {})[s["target"]] = s
    targets = meta["targets"]
    lines.append("| method | " + " | ".join(f"~{t:g}x: {metric} (speed-up)" for t in targets) + " |")
    lines.append("|---|" + "---|" * len(targets))
    for method, per in by_method.items():
        cells = []
        for t in targets:
            s = per.get(t)
            if s is None:
                cells.append("")
                continue
            mark = "" if s["reached"] else " (max)"
            cells.append(f"{s['test']['metrics'][metric] * 100:.2f} ({s['test']['layer_speedup']:.2f}x{mark})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("\n(max) marks a method that cannot reach the target; its fastest point is shown. Static "
                 "models (BERT-kL) have one speed-up whatever the target.\n")
    lines.append(f"![{metric} against layer speed-up on test]({plot_name})\n")

    members = _member_rows(doc.get("members") or {}, metric)
    if members:
        lines.append("## The cascade members alone (dev)\n")
        lines.append(f"| member | layers | {metric} | ECE | mean confidence | used in |")
        lines.append("|---|---|---|---|---|---|")
        for m in members:
            lines.append(f"| {m['name']} | {m['layers']} | {m['metric'] * 100:.2f} | {m['ece'] * 100:.2f} | "
                         f"{m['mean_confidence']:.3f} | {'; '.join(m['used_in'])} |")
        lines.append("")
    exits = doc.get("exit_layers") or {}
    if exits:
        depth = max(len(v) for v in exits.values())
        lines.append(f"## Internal classifiers of the early-exit baselines, each alone (dev {metric})\n")
        lines.append("| method | " + " | ".join(f"layer {j + 1}" for j in range(depth)) + " |")
        lines.append("|---|" + "---|" * depth)
        for name, layers in exits.items():
            lines.append(f"| {name} | " + " | ".join(f"{m['metrics'][metric] * 100:.2f}" for m in layers) + " |")
        lines.append("")

    lines.append("## Table 5 analogue: the small member with and without DAR (dev)\n")
    lines.append(f"| model | {metric} | ECE | DIS (hard = own errors) | DIS (hard = errors of the model without DAR) "
                 "| mean confidence |")
    lines.append("|---|---|---|---|---|---|")
    for r in doc["table5"]:
        lines.append(f"| {r['model']} | {r[metric] * 100:.2f} | {r['ece'] * 100:.2f} | {_pct(r['dis_self'])} | "
                     f"{_pct(r['dis_ref'])} | {r['mean_confidence']:.3f} |")
    lines.append("\nDev instances have no K-fold difficulty labels, so DIS is computed with two stand-ins for "
                 "difficulty, named in the header.\n")

    lines.append("## Wall-clock speed-up of the cascade (test, CPU of the machine that ran it)\n")
    lines.append("| method | target | batch | layer speed-up | wall-clock speed-up | wall-clock / layer |")
    lines.append("|---|---|---|---|---|---|")
    for w in doc["wallclock"]:
        lines.append(f"| {w['method']} | {w['target']:g}x | {w['batch_size']} | {w['layer_speedup']:.2f} | "
                     f"{w['wallclock_speedup']:.2f} | {w['ratio']:.2f} |")
    lines.append("")
    lines.append("## What reproduces and what does not\n")
    lines += findings(doc)
    times = doc.get("stage_seconds")
    if times:
        lines.append("\n## Time per stage (this run)\n")
        lines.append(" | ".join(f"{k} {_minutes(v)}" for k, v in times.items())
                     + f" | total {_minutes(sum(times.values()))}")
    ls = doc.get("label_summary")
    if ls:
        lines.append("\n## Difficulty labels\n")
        lines.append(f"- {ls.get('folds')} folds x {ls.get('seeds')} seeds; share labelled hard: "
                     f"{_pct(ls.get('share_hard'))}; DIS of the labelling models on their held-out predictions: "
                     f"{_pct(ls.get('dis'))}.")
    return "\n".join(lines) + "\n"


def _standard_error(meta: dict, accuracy: float = 0.75) -> float | None:
    """Binomial standard error, in points, of a test accuracy near ``accuracy`` on this test set."""
    n = meta.get("test_examples")
    return 100 * math.sqrt(accuracy * (1 - accuracy) / n) if n else None


def _noise_note(meta: dict, metric: str) -> str:
    se = _standard_error(meta)
    if metric != "accuracy" or se is None:
        return ""
    return (f" With {meta['test_examples']} test examples, an accuracy near 75% has a standard error of "
            f"{se:.1f} points, so gaps between methods of less than about {2 * se:.0f} points are within noise.")


def _member_rows(members: dict, metric: str) -> list[dict]:
    """One row per distinct member model (named by its directory) of the cascades in ``results.json``."""
    rows: dict[str, dict] = {}
    for cascade_name, stages in members.items():
        for m in stages:
            name = pathlib.Path(m["name"]).parent.name if pathlib.Path(m["name"]).name == "model" else m["name"]
            row = rows.setdefault(name, {"name": name, "layers": m["layers"],
                                         "metric": m["metrics"][metric], "ece": m["ece"],
                                         "mean_confidence": m["mean_confidence"], "used_in": []})
            row["used_in"].append(cascade_name)
    return list(rows.values())


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"


def findings(doc: dict) -> list[str]:
    """Plain statements comparing our numbers with the paper's claims, decided from the numbers."""
    metric = doc["meta"]["metric"]
    out = []
    t5 = doc["table5"]
    if len(t5) == 2:
        ce, dar = t5
        for key, better, claim in [("dis_self", "higher", "DAR raises DIS"), ("ece", "lower", "DAR lowers ECE")]:
            a, b = ce[key], dar[key]
            if a is None or b is None:
                continue
            ok = b > a if better == "higher" else b < a
            out.append(f"- The paper: {claim}. Here: {_pct(a)} without DAR, {_pct(b)} with DAR: "
                       f"{'reproduces' if ok else 'does not reproduce'}.")
    by = {(s["method"], s["target"]): s for s in doc["selected"]}
    methods = {m for m, _ in by}
    main = next((m for m in methods if m.startswith("CascadeBERT") and "DAR" in m and "KD" not in m), None)
    for other, claim in [("DeeBERT", "CascadeBERT beats DeeBERT at matched speed-ups"),
                         ("PABEE", "CascadeBERT beats PABEE at matched speed-ups")]:
        if main is None or other not in methods:
            continue
        wins = [(t, by[(main, t)]["test"]["metrics"][metric], by[(other, t)]["test"]["metrics"][metric])
                for t in doc["meta"]["targets"] if (main, t) in by and (other, t) in by]
        n_win = sum(a > b for _, a, b in wins)
        detail = ", ".join(f"{t:g}x: {100 * a:.2f} vs {100 * b:.2f}" for t, a, b in wins)
        majority = doc["meta"].get("test_majority_accuracy")
        if metric == "accuracy" and majority is not None and wins and all(_at_majority(b, majority) for _, _, b in wins):
            out.append(f"- The paper: {claim}. Here {other} scores the majority-class rate ({100 * majority:.2f}) "
                       f"at every target: at these speed-ups its answers are one class for everything"
                       f"{_flat_exits_note(doc, other)}, so the comparison says little.")
            continue
        out.append(f"- The paper: {claim}. Here: better at {n_win} of {len(wins)} targets ({detail}): "
                   f"{'reproduces' if n_win == len(wins) else 'partly reproduces' if n_win else 'does not reproduce'}.")
    wo = next((m for m in methods if m.startswith("Cascade w/o DAR")), None)
    if main and wo:
        wins = [(t, by[(main, t)]["test"]["metrics"][metric], by[(wo, t)]["test"]["metrics"][metric])
                for t in doc["meta"]["targets"] if (main, t) in by and (wo, t) in by]
        n_win = sum(a > b for _, a, b in wins)
        detail = ", ".join(f"{t:g}x: {100 * a:.2f} vs {100 * b:.2f}" for t, a, b in wins)
        se = _standard_error(doc["meta"]) if metric == "accuracy" else None
        noise = ""
        if se is not None and wins:
            gap = max(abs(a - b) for _, a, b in wins) * 100
            noise = (f" The largest gap is {gap:.2f} points" +
                     (f", within two standard errors ({2 * se:.1f})." if gap < 2 * se else "."))
        out.append(f"- The paper (Table 4): the cascade with DAR beats the cascade without it. Here: better at "
                   f"{n_win} of {len(wins)} targets ({detail}): "
                   f"{'reproduces' if n_win == len(wins) else 'partly reproduces' if n_win else 'does not reproduce'}."
                   + noise)
    majority = doc["meta"].get("test_majority_accuracy")
    if metric == "accuracy" and majority is not None:
        flat = sorted({s["method"] for s in doc["selected"] if _at_majority(s["test"]["metrics"][metric], majority)})
        if flat:
            out.append(f"- At the majority-class rate ({100 * majority:.2f}, a model that learned nothing): "
                       f"{', '.join(flat)}: at their selected operating points they answer one class for everything; this "
                       f"preset's training budget is too small for them.")
    for w in doc["wallclock"]:
        out.append(f"- Wall-clock vs layer speed-up at {w['target']:g}x, batch {w['batch_size']}: "
                   f"{w['wallclock_speedup']:.2f}x measured vs {w['layer_speedup']:.2f}x counted "
                   f"(ratio {w['ratio']:.2f}; the goal is at least 0.85).")
    return out


def _flat_exits_note(doc: dict, method: str) -> str:
    """'' or a clause naming the internal classifiers of ``method`` that answer the majority class on dev."""
    layers = (doc.get("exit_layers") or {}).get(method)
    majority = doc["meta"].get("dev_majority_accuracy")
    metric = doc["meta"]["metric"]
    if not layers or majority is None or metric != "accuracy":
        return ""
    flat = [m["layers"] for m in layers if _at_majority(m["metrics"][metric], majority)]
    if not flat:
        return ""
    return (f" (its classifiers at layer{'s' if len(flat) > 1 else ''} {', '.join(map(str, flat))} score the "
            f"majority-class rate on dev, {100 * majority:.2f}: under this preset's training budget they learned "
            f"nothing, see the internal-classifier table)")


def write_results_page(output_dir: str | pathlib.Path, page: str | pathlib.Path) -> pathlib.Path:
    """Write ``page`` (e.g. ``docs/results.md``) and its plot beside it from ``output_dir/report``."""
    output_dir, page = pathlib.Path(output_dir), pathlib.Path(page)
    doc = json.loads((output_dir / "report" / "results.json").read_text())
    missing = [split for split in ("test", "dev") if f"{split}_majority_accuracy" not in doc["meta"]]
    if missing:  # Results written before these fields existed.
        cfg = json.loads((output_dir / "pipeline_config.json").read_text())
        for split in missing:
            doc["meta"][f"{split}_majority_accuracy"] = majority_accuracy(
                data.load_split(cfg["task"], split, cfg["source"])["label"])
    markers = [output_dir / "stages" / f"{n}.json" for n in STAGE_ORDER]
    doc["stage_seconds"] = {m.stem: json.loads(m.read_text())["seconds"] for m in markers if m.exists()}
    page.parent.mkdir(parents=True, exist_ok=True)
    plot = page.with_name(page.stem + "_curve.png")
    shutil.copy(output_dir / "report" / "curve.png", plot)
    page.write_text(results_markdown(doc, plot_name=plot.name))
    return page
