"""Evaluate cascades and baselines (BERT-kL, DeeBERT, PABEE) side by side on a task: matched operating points chosen
on one split and reported on another, paired bootstrap intervals, and the differences you ask for.

    # a cascade of fine-tuned members (fewest layers first) against the large model alone and DeeBERT
    python -m eval.evaluate_cascade evaluate --cascade runs/l3-dar/model runs/l6/model --static runs/l6/model \
        --deebert runs/deebert/model --target-speedup 1.25 1.5 1.75 --compare cascade DeeBERT --output-dir runs/eval

    # three seeds of a cascade: repeat --cascade, once per seed
    python -m eval.evaluate_cascade evaluate --cascade runs/s0/l3/model runs/l6/model \
        --cascade runs/s1/l3/model runs/l6/model --cascade runs/s2/l3/model runs/l6/model --output-dir runs/eval

Operating points are chosen on --tune-split (default: validation) and reported on --split (default: test): for each
target, the threshold (patience, depth) whose speed-up on the tuning split is the smallest at or above the target.
Writes results.json, results.md and curve.png into --output-dir and prints the Markdown. `./run main` evaluates
with the same routine (cascade_jax.comparison.compare). The DeeBERT / PABEE models come from
`python -m train.train_exits --model runs/l6/model --mode deebert ...` (their OUTPUT/model). All models must share
one tokenizer (the first directory's is used).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

if __package__ in (None, ""):  # `python eval/evaluate_cascade.py`: make `cascade_jax` importable.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.evaluate_cascade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="evaluate cascades and baselines; write JSON, Markdown and a plot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = e.add_argument_group("methods (at least one; repeat a flag once per seed)")
    g.add_argument("--cascade", nargs="+", action="append", metavar="DIR", default=[],
                   help="cascade members: fine-tuned model directories, fewest layers first")
    g.add_argument("--static", nargs="+", action="append", metavar="DIR", default=[],
                   help="static models (BERT-kL, the large model alone): one method per directory given, k read "
                        "from each config")
    g.add_argument("--deebert", action="append", metavar="DIR", default=[],
                   help="DeeBERT multi-exit model (train.train_exits --mode deebert: OUTPUT/model)")
    g.add_argument("--pabee", action="append", metavar="DIR", default=[],
                   help="PABEE multi-exit model (train.train_exits --mode pabee: OUTPUT/model)")
    g = e.add_argument_group("exits and operating points")
    g.add_argument("--exit-rule", default="max_prob", choices=["max_prob", "entropy"],
                   help="cascade exit rule: max prob > threshold (the paper) or normalised entropy < threshold")
    g.add_argument("--deebert-rule", default="entropy", choices=["entropy", "max_prob"],
                   help="DeeBERT exit rule (entropy is normalised by log C; DeeBERT's raw S is S / log C)")
    g.add_argument("--target-speedup", nargs="+", type=float, default=[1.25, 1.5, 1.75, 2.0], metavar="X",
                   help="target layer speed-ups (default: 1.25 1.5 1.75 2)")
    g.add_argument("--sweep-points", type=int, default=41, metavar="N",
                   help="thresholds per sweep: quantiles of the exit statistic, plus the extremes (default 41)")
    g.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"), default=[],
                   help="report the difference A minus B with its interval (method names as in the output)")
    g.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    g = e.add_argument_group("data and accounting")
    g.add_argument("--task", default="rotten_tomatoes", help="task name (see cascade_jax.data.TASKS)")
    g.add_argument("--source", default=None, help="local folder or file with the task's data (default: built-in)")
    g.add_argument("--split", default="test", help="the split reported (default: test)")
    g.add_argument("--tune-split", default="validation", help="the split thresholds are chosen on (default: "
                                                              "validation)")
    g.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    g.add_argument("--reference-layers", type=int, default=None,
                   help="layers of the full model the speed-ups divide (default: most layers among the models)")
    g.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    g.add_argument("--length-multiple", type=int, default=16,
                   help="cascade: trim batches to their longest row rounded up to this multiple (0: no trimming)")
    g.add_argument("--output-dir", required=True, help="where results.json, results.md and curve.png go")
    g.add_argument("--title", default=None, help="title of the report and the plot")
    return p


def _methods(args):
    from cascade_jax import comparison

    methods = []
    if args.cascade:
        methods.append(comparison.Method("cascade", "cascade", tuple(tuple(r) for r in args.cascade),
                                         rule=args.exit_rule))
    for group in args.static:
        for d in group:
            methods.append(comparison.Method(f"static {pathlib.Path(d).parent.name or d}", "static", ((d,),)))
    if args.deebert:
        methods.append(comparison.Method("DeeBERT", "early_exit", tuple((d,) for d in args.deebert),
                                         rule=args.deebert_rule))
    if args.pabee:
        methods.append(comparison.Method("PABEE", "early_exit", tuple((d,) for d in args.pabee), rule="patience"))
    return methods


def _evaluate(args) -> int:
    from cascade_jax import comparison, data, models, report

    methods = _methods(args)
    if not methods:
        raise SystemExit("evaluate: give at least one of --cascade, --static, --deebert, --pabee")
    task = data.get_task(args.task)
    dirs = [d for m in methods for run in m.runs for d in run]
    config_of = {d: models.load_config(models.resolve_model_dir(d)) for d in dirs}
    largest = max(config_of.values(), key=lambda c: c.num_hidden_layers)
    reference_layers = args.reference_layers or largest.num_hidden_layers
    tokenizer = models.tokenizer_for(dirs[0])
    encs = {key: data.encode_split(task, split, args.source, tokenizer=tokenizer, max_length=args.max_length)
            for key, split in (("dev", args.tune_split), ("test", args.split))}
    outputs = comparison.Outputs(encs, task.num_labels, batch_size=args.batch_size,
                                 length_multiple=args.length_multiple or None)
    names = {m.name for m in methods}
    unknown = [n for pair in args.compare for n in pair if n not in names]
    if unknown:
        raise SystemExit(f"evaluate: --compare names {unknown} are not among the methods {sorted(names)}")
    claims = [comparison.Claim(f"{a} - {b}", f"{a} minus {b}", a, b) for a, b in args.compare]
    import dataclasses

    reference_config = dataclasses.replace(largest, num_hidden_layers=reference_layers)
    result = comparison.compare(methods, outputs, targets=args.target_speedup, claims=claims,
                                sweep_points=args.sweep_points, resamples=args.resamples,
                                reference_layers=reference_layers, reference_config=reference_config,
                                auc_range=(1.0, max(args.target_speedup)) if args.target_speedup else None)
    meta = {"task": task.name, "metric": comparison.primary(task.metric), "split": args.split,
            "tune_split": args.tune_split, "examples": len(encs["test"]), "reference_layers": reference_layers,
            "resamples": args.resamples}
    if args.split == args.tune_split:
        meta["warning"] = "thresholds were chosen on the split they are reported on (in-sample)"
    paths = report.write_comparison(args.output_dir, result, meta=meta,
                                    title=args.title or f"{task.name}: {args.split} (chosen on {args.tune_split})")
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-exits"]:  # Kept for old command lines: the trainer lives in train/ now.
        from train import train_exits

        return train_exits.main(argv[1:])
    args = build_parser().parse_args(argv)
    from train import cli

    return cli.run_cli("evaluate_cascade", lambda: _evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
