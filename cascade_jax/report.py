"""Report files of a comparison: strict JSON, Markdown tables with intervals, and the accuracy/speed-up plot.

  json_safe(x) -> plain JSON types (NaN and inf -> None)
  target_table(doc) / claim_lines(doc) / auc_table(doc) -> Markdown   # from ``Comparison.to_json()``
  plot_comparison(path, comparison, title=None)                      # test curves and matched points
  write_comparison(out_dir, comparison, meta=..., title=...) -> {"json", "markdown", "plot"} paths
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping

import numpy as np


def json_safe(x):
    """Plain JSON types: numpy numbers and arrays converted, NaN and inf written as None."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    return x


def pct(x, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}"


def interval_text(iv, digits: int = 2) -> str:
    """``[lo, hi]`` (fractions) as ``[a, b]`` in points."""
    if not iv or iv[0] is None or iv[1] is None:
        return "n/a"
    return f"[{pct(iv[0], digits)}, {pct(iv[1], digits)}]"


def _speedups(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{min(values):.2f}x" if max(values) - min(values) < 0.005 else f"{min(values):.2f}-{max(values):.2f}x"


def target_table(doc: Mapping, methods: list[str] | None = None) -> str:
    """Per method and target: test accuracy pooled over seeds with its 95% interval, the achieved test speed-up,
    and the dev speed-up and accuracy it was chosen with. ``(not reached)``: the fastest point is below the target;
    ``(majority)``: the answers are the majority class; ``(x% from layers that learned nothing)``: an early-exit
    method answers that share from classifiers no better than the majority class on dev."""
    targets = doc["targets"]
    metric = doc.get("meta", {}).get("metric", "accuracy")
    lines = ["| method | seeds | " + " | ".join(f"~{t:g}x" for t in targets) + " |",
             "|---|---|" + "---|" * len(targets)]
    for name, m in doc["methods"].items():
        if methods is not None and name not in methods:
            continue
        cells = []
        for t in targets:
            row = m["targets"].get(f"{t:g}")
            if row is None:
                cells.append("")
                continue
            flags = ("" if all(row["reached"]) else " (not reached)") + (" (majority)" if row["at_majority"] else "")
            unlearned = max(row.get("unlearned_share") or [0.0])
            if unlearned > 0.01:
                flags += f" ({100 * unlearned:.0f}% from layers that learned nothing)"
            cells.append(f"{pct(row['pooled_accuracy'])} {interval_text(row['accuracy_interval'])} at "
                         f"{_speedups(row['test_speedup'])} (dev {_speedups(row['dev_speedup'])}, "
                         f"{pct(float(np.mean(row['dev_metric'])))}){flags}")
        lines.append(f"| {name} | {m['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nCells: test {metric} (%) pooled over seeds [95% interval] at the test layer " \
                              f"speed-up (the dev speed-up and dev {metric} the threshold was chosen with).\n"


def claim_lines(doc: Mapping) -> list[str]:
    """One line per claim and target: the difference with its interval and the verdict."""
    out = []
    for c in doc.get("claims", []):
        rows = c["rows"]
        if not rows:
            out.append(f"- {c['text']}: {c['a']} vs {c['b']}: no target where both are evaluated.")
            continue
        parts = [f"{r['target']:g}x: {pct(r['difference'])} {interval_text(r['interval'])} -> {r['verdict']}"
                 for r in rows]
        summary = overall_verdict([r["verdict"] for r in rows])
        out.append(f"- **{c['text']}** ({c['a']} minus {c['b']}, points): {'; '.join(parts)}. Overall: {summary}.")
    return out


def overall_verdict(verdicts: list[str]) -> str:
    """A claim's verdict over its targets, from the targets that make a comparison ("no comparison: ..." ones
    decide nothing): their one verdict when they agree, else "mixed" with how many targets read each way."""
    decided = [v for v in verdicts if not v.startswith("no comparison")]
    if not decided:
        return "no comparison at any target"
    kinds = list(dict.fromkeys(decided))  # In the order of the targets.
    if len(kinds) == 1:
        return kinds[0]
    return "mixed (" + ", ".join(f"{decided.count(k)} {k}" for k in kinds) + ")"


def auc_table(doc: Mapping) -> str:
    """The threshold-free summary: mean test accuracy over a common speed-up range, mean and sd over seeds."""
    rows = [(n, m["auc"]) for n, m in doc["methods"].items() if m.get("auc")]
    if not rows:
        return ""
    low, high = rows[0][1]["range"]
    lines = [f"| method | mean test accuracy over {low:g}-{high:g}x (%) | sd over seeds |", "|---|---|---|"]
    for name, a in rows:
        lines.append(f"| {name} | {pct(a['mean']) if a['mean'] is not None else 'n/a (does not cover the range)'} | "
                     f"{pct(a['sd']) if a.get('sd') is not None else '-'} |")
    return "\n".join(lines) + "\n"


def plot_comparison(path, comparison, *, title: str | None = None, methods: list[str] | None = None):
    """PNG of test accuracy (%) against layer speed-up: seed 0's sweep of each method as a line, each target's
    pooled matched point as a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # No pyplot: no global backend state, no display.

    fig = Figure(figsize=(7.2, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [m.name for m in comparison.methods if methods is None or m.name in methods]
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        pts = sorted(comparison.test_points[name][0], key=lambda p: p.layer_speedup)
        style = {"marker": "o", "markersize": 3, "linewidth": 1.2} if len(pts) > 1 else {"marker": "D",
                                                                                           "markersize": 6}
        ax.plot([p.layer_speedup for p in pts], [100 * p.metric for p in pts], color=color, label=name, **style)
        table = comparison.table[name]
        stars = [(float(np.mean(r["test_speedup"])), 100 * r["pooled_accuracy"]) for r in table.values()
                 if all(r["reached"])]
        if stars and len(pts) > 1:
            ax.plot(*zip(*stars), marker="*", markersize=10, color=color, linestyle="none", markeredgecolor="black",
                    markeredgewidth=0.5)
    ax.set_xlabel("speed-up (layers)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower left")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, format="png")
    return path


def write_comparison(out_dir, comparison, *, meta: Mapping | None = None, title: str | None = None,
                     extra: Mapping | None = None) -> dict[str, pathlib.Path]:
    """``results.json`` (the comparison, ``meta`` and ``extra``), ``results.md`` and ``curve.png`` in ``out_dir``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "curve.png"}
    from cascade_jax import provenance

    doc = json_safe({"meta": dict(meta or {}), "provenance": provenance.provenance(), **comparison.to_json(),
                     **dict(extra or {})})
    paths["json"].write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    md = [f"# {title or 'Results'}\n", "".join(f"- {k}: {v}\n" for k, v in doc["meta"].items()),
          "\n## Matched operating points (chosen on dev, reported on test)\n\n" + target_table(doc)]
    auc = auc_table(doc)
    if auc:
        md.append("\n## Threshold-free summary\n\n" + auc)
    claims = claim_lines(doc)
    if claims:
        md.append("\n## Differences\n\n" + "\n".join(claims) + "\n")
    paths["markdown"].write_text("\n".join(md))
    plot_comparison(paths["plot"], comparison, title=title)
    return paths
