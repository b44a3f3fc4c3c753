"""The results page (``docs/results.md``) written from a run's ``report/results.json``: no number typed by hand."""

from __future__ import annotations

import json
import math
import pathlib
import shutil

from cascade_jax.pipeline.layout import RunLayout
from cascade_jax.pipeline.runner import STAGE_ORDER, minutes as _minutes

# A score within this of the majority-class rate counts as "answers one class for everything".
_MAJORITY_TOLERANCE = 0.005


def _at_majority(score: float, majority: float) -> bool:
    return score <= majority + _MAJORITY_TOLERANCE


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
    layout, page = RunLayout(output_dir), pathlib.Path(page)
    if not layout.results_file.exists():
        raise FileNotFoundError(f"{layout.results_file} is missing: the pipeline's evaluate stage has not finished")
    doc = json.loads(layout.results_file.read_text())
    markers = [layout.marker(n) for n in STAGE_ORDER]
    doc["stage_seconds"] = {m.stem: json.loads(m.read_text())["seconds"] for m in markers if m.exists()}
    page.parent.mkdir(parents=True, exist_ok=True)
    plot = page.with_name(page.stem + "_curve.png")
    shutil.copy(layout.report_dir / "curve.png", plot)
    page.write_text(results_markdown(doc, plot_name=plot.name))
    return page
