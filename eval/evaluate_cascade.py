"""Evaluate a cascade and the baselines (BERT-kL, DeeBERT, PABEE) on a task split.

Subcommand `evaluate` (run from the repository root; `train-exits` is python -m train.train_exits):

    # a cascade of fine-tuned members (trainer output OUTPUT/model, fewest layers first), swept over thresholds
    python -m eval.evaluate_cascade evaluate --cascade runs/l3-dar/model runs/l6/model --output-dir runs/eval

    # ... at given thresholds only
    python -m eval.evaluate_cascade evaluate --cascade runs/l3/model runs/l6/model --thresholds 0.8 0.9 \
        --output-dir runs/eval

    # compare with the baselines; pick each method's parameter on dev for 1.5x and 2x, report those on test
    python -m eval.evaluate_cascade evaluate --cascade runs/l3/model runs/l6/model --static runs/l6-3/model \
        --deebert runs/deebert/model --pabee runs/pabee/model --split test --tune-split validation --target-speedup 1.5 2 \
        --output-dir runs/compare

    # the DeeBERT / PABEE models come from: python -m train.train_exits --model runs/l6/model --mode deebert ...

`evaluate` writes results.json, results.md and curve.png into --output-dir and prints the Markdown. Each method's
models run once per split; every threshold/patience is then derived from their outputs (see cascade_jax.report).
Speed-ups are by layers against the reference model (default: the model with the most layers among those given).
All models must share one tokenizer (the first directory's is used).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

if __package__ in (None, ""):  # `python eval/evaluate_cascade.py`: make `cascade_jax` importable.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.evaluate_cascade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("evaluate", help="evaluate a cascade and/or baselines; write JSON, Markdown and a plot",
                       description="Evaluate a cascade and/or baselines on a split over a threshold sweep (or at "
                       "given parameters); optionally choose each method's parameter on --tune-split for target "
                       "speed-ups and report them on --split. Writes results.json, results.md, curve.png.")
    g = e.add_argument_group("methods (at least one)")
    g.add_argument("--cascade", nargs="+", metavar="DIR", default=[],
                   help="cascade members: fine-tuned model directories, fewest layers first")
    g.add_argument("--static", nargs="+", metavar="DIR", default=[],
                   help="BERT-kL: fine-tuned k-layer truncations of the large model (k read from each config)")
    g.add_argument("--deebert", metavar="DIR", help="DeeBERT multi-exit model (train.train_exits --mode deebert: OUTPUT/model)")
    g.add_argument("--pabee", metavar="DIR", help="PABEE multi-exit model (from train-exits --mode pabee)")
    g = e.add_argument_group("parameters (default: a sweep)")
    g.add_argument("--thresholds", nargs="+", type=float, metavar="T", help="cascade thresholds (default: sweep)")
    g.add_argument("--exit-rule", default="max_prob", choices=["max_prob", "entropy"],
                   help="cascade exit rule: max prob > threshold (the paper) or normalised entropy < threshold")
    g.add_argument("--deebert-rule", default="entropy", choices=["entropy", "max_prob"],
                   help="DeeBERT exit rule (entropy is normalised by log C; DeeBERT's raw S is S / log C)")
    g.add_argument("--deebert-thresholds", nargs="+", type=float, metavar="T", help="DeeBERT thresholds (default: sweep)")
    g.add_argument("--patience", nargs="+", type=int, metavar="P", help="PABEE patience values (default: 0 .. layers-1)")
    g.add_argument("--sweep-points", type=int, default=21, metavar="N",
                   help="thresholds per sweep: quantiles of the exit statistic, plus the extremes (default 21)")
    g = e.add_argument_group("data and accounting")
    g.add_argument("--task", default="rotten_tomatoes", help="task name (see cascade_jax.data.TASKS)")
    g.add_argument("--source", default=None, help="local folder or file with the task's data (default: built-in)")
    g.add_argument("--split", default="validation", help="the split reported (default: validation)")
    g.add_argument("--tune-split", default=None,
                   help="choose parameters on this split for each --target-speedup, report them on --split")
    g.add_argument("--target-speedup", nargs="+", type=float, default=[], metavar="X",
                   help="target layer speed-ups for --tune-split selection (e.g. 1.5 2 3)")
    g.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    g.add_argument("--reference-layers", type=int, default=None,
                   help="layers of the full model the speed-ups divide (default: most layers among the models)")
    g.add_argument("--difficulty-file", default=None,
                   help="difficulty labels (by example id) of --split: adds each member's DIS")
    g.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    g.add_argument("--length-multiple", type=int, default=16,
                   help="cascade: trim batches to their longest row rounded up to this multiple (0: no trimming)")
    g.add_argument("--output-dir", required=True, help="where results.json, results.md and curve.png go")
    g.add_argument("--title", default=None, help="title of the report and the plot")

    return p


def _evaluate(args) -> int:
    from cascade_jax import baselines, data, flops, models, report

    if not (args.cascade or args.static or args.deebert or args.pabee):
        raise SystemExit("evaluate: give at least one of --cascade, --static, --deebert, --pabee")
    if bool(args.tune_split) != bool(args.target_speedup):
        raise SystemExit("evaluate: --tune-split and --target-speedup go together")
    num_labels = data.get_task(args.task).num_labels
    # Every model is loaded once; its outputs are computed once per split.
    stages = report.load_cascade(args.cascade, num_labels) if args.cascade else []
    static = [models.from_pretrained(d, num_labels=num_labels) for d in args.static]
    exits = {name: baselines.load_multi_exit(d) for name, d in (("DeeBERT", args.deebert), ("PABEE", args.pabee)) if d}
    configs = [s.config for s in stages] + [m.config for m, _ in exits.values()]
    largest = max(configs, key=lambda c: c.num_hidden_layers) if configs else None
    reference_layers = args.reference_layers or (largest.num_hidden_layers if largest else None)
    if reference_layers is None:
        raise SystemExit("evaluate: with only --static models, give --reference-layers (the full model's depth)")
    first = (args.cascade + args.static + [d for d in (args.deebert, args.pabee) if d])[0]
    tokenizer = models.tokenizer_for(first)

    def curves(split):
        enc = data.encode_split(args.task, split, args.source, tokenizer=tokenizer, max_length=args.max_length)
        ref_flops = (flops.bert_flops(dataclasses.replace(largest, num_hidden_layers=reference_layers), enc.lengths)
                     if largest else None)
        common = dict(batch_size=args.batch_size, reference_layers=reference_layers, reference_flops=ref_flops)
        out = []
        if stages:
            out.append((report.cascade_curve(stages, enc, exit_rule=args.exit_rule,
                                             length_multiple=args.length_multiple or None, **common), args.thresholds))
        for module, params in static:
            out.append((report.static_curve(module, params, enc, **common), None))
        for name, (module, params) in exits.items():
            rule = args.deebert_rule if name == "DeeBERT" else "patience"
            grid = args.deebert_thresholds if name == "DeeBERT" else args.patience
            out.append((report.early_exit_curve(module, params, enc, rule=rule, name=name, **common), grid))
        return enc, out

    enc, report_curves = curves(args.split)
    tune = curves(args.tune_split)[1] if args.tune_split else None
    points, members, selected = [], {}, []
    difficulty = None
    if args.difficulty_file:
        difficulty = data.join_by_id(enc, args.difficulty_file, ["difficulty"]).extras["difficulty"]
    for i, (curve, params) in enumerate(report_curves):
        if tune is not None:
            tune_curve = tune[i][0]
            grid = params if params is not None else tune_curve.grid(args.sweep_points)
            selected += report.operating_points(tune_curve, curve, args.target_speedup, grid)
        points += report.sweep(curve, params, args.sweep_points)
        members.setdefault(curve.name, []).extend(curve.members(difficulty))
    meta = {"task": args.task, "split": enc.split, "tune_split": args.tune_split, "examples": len(enc),
            "reference_layers": reference_layers, "cascade": args.cascade, "static": args.static,
            "deebert": args.deebert, "pabee": args.pabee, "cascade_exit_rule": args.exit_rule,
            "deebert_rule": args.deebert_rule}
    paths = report.write_report(args.output_dir, points, members=members, selected=selected, meta=meta,
                                title=args.title or f"{args.task} ({enc.split})")
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-exits"]:  # Kept for old command lines: the trainer lives in train/ now.
        from train import train_exits

        return train_exits.main(argv[1:])
    args = build_parser().parse_args(argv)
    return _evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
