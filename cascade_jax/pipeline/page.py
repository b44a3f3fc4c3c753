"""The results page (``docs/results*.md``) written from a run's ``report/results.json``: no number typed by hand."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

from cascade_jax.pipeline.layout import RunLayout
from cascade_jax.pipeline.runner import STAGE_ORDER, minutes
from cascade_jax.report import auc_table, claim_lines, interval_text, pct, target_table


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def results_markdown(doc: dict, *, plot_name: str = "results_curve.png") -> str:
    """The page from ``results.json``."""
    meta = doc["meta"]
    metric = meta["metric"]
    lines = [f"# Results: CascadeBERT on {meta['task']} ({meta['preset']} preset)\n",
             "Written by `./run main` (`train/main.py`) from the run's own `report/results.json`; no number here is "
             "typed by hand.\n",
             f"- What these settings cut from the paper's protocol: {meta['cuts']}. The members are "
             f"{meta['small_model']} and {meta['large_model']} (MiniLM-sized), not BERT-base-sized models.",
             f"- Dev examples: {meta['dev_examples']}; test examples: {meta['test_examples']} "
             f"({meta['test_source']}). Every trained method in {meta['seeds']} seed(s) (the large member in "
             f"{meta['large_seeds']}).",
             f"- Operating points: for each target layer speed-up and seed, the threshold whose **dev** speed-up is the "
             f"smallest at or above the target (ties: higher dev {metric}); its test {metric} and speed-up are reported. "
             f"Intervals: 95%, paired bootstrap over test examples ({meta['resamples']} resamples, the same for every "
             f"method) with the seeds resampled too. A finding *reproduces* only when the interval of the difference "
             f"excludes 0 in the paper's direction, is *contradicted* when it excludes 0 the other way, and is *not "
             f"distinguishable* otherwise.",
             "- Baselines: BERT-kL, DeeBERT, PABEE, FastBERT, BERT-PKD, BERT-of-Theseus and a BERT-PD analogue (the "
             "complete compact model distilled on the task). DistilBERT is not here: it needs general-domain "
             "pre-training of its own, and no offline asset carries such a checkpoint of these members' size.",
             f"- DAR margin: {meta['margin']:g}" + (f" (dev scores per margin: {meta['margin_dev_scores']})"
                                                   if meta.get("margin_dev_scores") else "") + ".",
             f"- A model that learned nothing scores the majority-class rate: {pct(meta['test_majority_accuracy'])} "
             f"on test, {pct(meta['dev_majority_accuracy'])} on dev; a comparison with a method at that rate is not "
             f"counted.\n"]
    lines.append("## The paper's findings, decided by intervals\n")
    lines += claim_lines(doc)
    lines += _table5_findings(doc)
    lines.append("")
    lines.append(f"## Table 2 analogue: test {metric} at matched speed-ups\n")
    lines.append(target_table(doc))
    auc = auc_table(doc)
    if auc:
        lines.append("### Threshold-free summary\n")
        lines.append("The mean test accuracy over a common range of layer speed-ups (the area under the "
                     "accuracy/speed-up curve of the test sweep, divided by the range's width); static models have "
                     "one speed-up and no area.\n")
        lines.append(auc)
    lines.append(f"![{metric} against layer speed-up on test]({plot_name})\n")
    lines += _table5_section(doc)
    lines += _members_section(doc, metric)
    lines += _exit_layer_section(doc, metric)
    lines += _ood_section(doc)
    lines += _wallclock_section(doc)
    lines += _labels_section(doc)
    times = doc.get("stage_seconds")
    if times:
        lines.append("## Time per stage (this run)\n")
        lines.append("Wall-clock time of the invocation that finished each stage, with whatever else the machine ran "
                     "then; a stage resumed after an interruption counts its last invocation only.\n")
        lines.append(" | ".join(f"{k} {minutes(v)}" for k, v in times.items())
                     + f" | total {minutes(sum(times.values()))}\n")
    prov = doc.get("provenance")
    if prov:
        packages = ", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items())
        lines.append("## Provenance\n")
        malloc = f"; malloc: {prov['malloc']}" if prov.get("malloc") else ""
        lines.append(f"Evaluated by commit `{prov.get('git_commit')}` on {prov.get('cpu')}, Python "
                     f"{prov.get('python')}; {packages}{malloc}.")
        commits: dict[str, list[str]] = {}
        for stage, commit in (doc.get("stage_commits") or {}).items():
            commits.setdefault(str(commit), []).append(stage)
        if commits:
            lines.append("Stages by the commit that ran them: " + "; ".join(
                f"`{c}`: {', '.join(s)}" for c, s in commits.items()) + ".\n")
    return "\n".join(lines) + "\n"


def _table5_findings(doc: dict) -> list[str]:
    out = []
    for key, t5 in doc.get("table5", {}).items():
        if not key.endswith("/test"):
            continue
        for name, d in t5["differences"].items():
            if "temperature" in name:
                continue
            claim = "DAR lowers ECE" if name.startswith("ece") else "DAR raises DIS" + (
                " (hard = own errors)" if "self" in name else " (hard = the model without DAR's errors)")
            out.append(f"- **{claim} (Table 5)**, {t5['group']} member, test: {name} = {pct(d['difference'])} "
                       f"{interval_text(d['interval'])} points -> {d['verdict']}.")
    return out


def _table5_section(doc: dict) -> list[str]:
    lines = ["## Table 5 analogue: the small members with and without DAR, and temperature-scaled\n",
             "Pooled over seeds. The examples have no K-fold difficulty labels, so DIS has two stand-ins: hard = "
             "the model's own errors, and hard = the errors of the same seed's member without DAR. The "
             "temperature is fitted on dev, so its dev row is in-sample.\n",
             "| member | split | accuracy | ECE | DIS (own errors) | DIS (errors w/o DAR) | mean confidence |",
             "|---|---|---|---|---|---|---|"]
    diffs = []
    for key, t5 in doc.get("table5", {}).items():
        for name, r in t5["rows"].items():
            lines.append(f"| {t5['group']}: {name} | {t5['split']} | {pct(r.get('accuracy'))} | {pct(r.get('ece'))} "
                         f"| {pct(r.get('dis_self'))} | {pct(r.get('dis_ref'))} | {r.get('mean_confidence', 0):.3f} |")
        for name, d in t5["differences"].items():
            diffs.append(f"- {t5['group']}, {t5['split']}: {name} = {pct(d['difference'])} "
                         f"{interval_text(d['interval'])} -> {d['verdict']}")
    return lines + [""] + diffs + [""]


def _members_section(doc: dict, metric: str) -> list[str]:
    rows = doc.get("members") or []
    if not rows:
        return []
    lines = ["## Each model alone\n", f"| model | layers | seed | dev {metric} | dev ECE | test {metric} | test ECE | "
             "test mean confidence |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dev, test = r["dev"], r["test"]
        lines.append(f"| {r['model']} | {r['layers']} | {r['seed']} | {pct(dev['metrics'][metric])} | {pct(dev['ece'])} "
                     f"| {pct(test['metrics'][metric])} | {pct(test['ece'])} | {test['mean_confidence']:.3f} |")
    return lines + [""]


def _exit_layer_section(doc: dict, metric: str) -> list[str]:
    exits = doc.get("exit_layers") or {}
    if not exits:
        return []
    depth = max(len(seeds[0]) for seeds in exits.values())
    lines = [f"## Internal classifiers of the early-exit baselines, each alone (dev {metric}, seed 0; * = not above "
             f"the majority class)\n", "| method | " + " | ".join(f"layer {j + 1}" for j in range(depth)) + " |",
             "|---|" + "---|" * depth]
    notes = []
    for name, seeds in exits.items():
        layers = seeds[0]
        lines.append(f"| {name} | " + " | ".join(
            f"{pct(m['metrics'][metric])}{'' if m['learned'] else '*'}" for m in layers) + " |")
        flat = sorted({m["layers"] for s in seeds for m in s if not m["learned"]})
        if flat:
            notes.append(f"- {name}: the classifier(s) at layer(s) {', '.join(map(str, flat))} did not beat the "
                         f"majority class in at least one seed; its exits there answer one class.")
    return lines + [""] + notes + [""]


def _ood_section(doc: dict) -> list[str]:
    ood = doc.get("ood") or {}
    if not ood.get("methods"):
        return []
    sets = list(ood["sizes"])
    targets = doc["targets"]
    lines = ["## Out of domain: the dev-chosen thresholds on other data\n",
             "Each set without the examples whose normalised text (lower case, punctuation and spaces folded) is in "
             "the training split (" + ", ".join(f"{s}: {ood['removed_as_in_train'][s]} removed" for s in sets) +
             "), then at most " + (f"{ood['max_examples']}" if ood.get("max_examples") else "all") + " examples each "
             "(evaluated: " + ", ".join(f"{s} {ood['sizes'][s]}" for s in sets) + "). `vader_movie` is not used: 97% "
             "of its snippets are rotten_tomatoes sentences.\n"]
    for t in targets:
        lines.append(f"### ~{t:g}x (threshold chosen in-domain)\n")
        lines.append("| method | " + " | ".join(f"{s}: accuracy / speed-up / ECE" for s in sets) + " |")
        lines.append("|---|" + "---|" * len(sets))
        for name, per_set in ood["methods"].items():
            cells = []
            for s in sets:
                r = per_set[s][f"{t:g}"]
                cells.append(f"{pct(r['accuracy'])} / {r['layer_speedup']:.2f}x / {pct(r['ece'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _wallclock_section(doc: dict) -> list[str]:
    rows = doc.get("wallclock") or []
    if not rows:
        return []
    lines = ["## Wall-clock speed-up of the cascade (test, CPU of the machine that ran it, seed 0)\n",
             "| method | target | batch | layer speed-up | wall-clock speed-up | wall-clock / layer |",
             "|---|---|---|---|---|---|"]
    for w in rows:
        lines.append(f"| {w['method']} | {w['target']:g}x | {w['batch_size']} | {w['layer_speedup']:.2f} | "
                     f"{w['wallclock_speedup']:.2f} | {w['ratio']:.2f} |")
    return lines + [""]


def _labels_section(doc: dict) -> list[str]:
    labels = doc.get("labels") or {}
    if not labels:
        return []
    lines = ["## Difficulty labels\n"]
    for which, s in labels.items():
        lines.append(f"- {which} member ({s.get('model')}, {s.get('num_layers') or 'all'} layers): {s.get('folds')} "
                     f"folds x {s.get('seeds')} seeds on {s.get('examples')} examples; share labelled hard "
                     f"{pct(s.get('share_hard'))}; mean held-out accuracy {pct(s.get('mean_heldout_accuracy'))}; DIS "
                     f"of the labellers on their held-out predictions {pct(s.get('dis'))}.")
    return lines + [""]


def write_results_page(output_dir: str | pathlib.Path, page: str | pathlib.Path) -> pathlib.Path:
    """Write ``page`` (e.g. ``docs/results.md``) and its plot beside it from ``output_dir/report``."""
    layout, page = RunLayout(output_dir), pathlib.Path(page)
    if not layout.results_file.exists():
        raise FileNotFoundError(f"{layout.results_file} is missing: the pipeline's evaluate stage has not finished")
    doc = json.loads(layout.results_file.read_text())
    markers = [layout.marker(n) for n in STAGE_ORDER]
    found = {m.stem: json.loads(m.read_text()) for m in markers if m.exists()}
    doc["stage_seconds"] = {k: v["seconds"] for k, v in found.items()}
    doc["stage_commits"] = {k: v.get("git_commit") for k, v in found.items()}
    page.parent.mkdir(parents=True, exist_ok=True)
    plot = page.with_name(page.stem + "_curve.png")
    shutil.copy(layout.report_dir / "curve.png", plot)
    page.write_text(results_markdown(doc, plot_name=plot.name))
    return page
