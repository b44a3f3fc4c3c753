"""The main job: the whole CascadeBERT pipeline on the built-in real data and models, in one command.

    python -m train.main                       # preset "quick": 18 minutes on a quiet 2-core CPU
    python -m train.main --preset paper        # the paper's protocol (a GPU/TPU job)

Stages: difficulty labels for the small member (K folds x S seeds, one vmapped run) -> the small member with DAR
(and without, for the ablation) -> the large member -> a truncated member distilled from the large one ->
baselines (BERT-kL, DeeBERT, PABEE) -> threshold sweeps on dev and test -> results table, plot and wall-clock
speed-ups. Every stage is skipped when its output exists and resumes when it was interrupted: run the same
command again. Results: OUTPUT_DIR/report/ (results.json, results.md, curve.png), and with --results-page the
page docs/results.md is rewritten from them.
"""

from __future__ import annotations

import argparse
import sys
import time

from cascade_jax import pipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=sorted(pipeline.PRESETS),
                   help="quick: a 20-minute CPU run that says what it cuts; paper: the paper's protocol")
    p.add_argument("--output-dir", default=None, help="where everything goes (default: runs/<preset>)")
    p.add_argument("--task", default=None, help="task (default rotten_tomatoes, the built-in real data)")
    p.add_argument("--source", default=None, help="local data folder/file for the task (default: built-in/hub)")
    p.add_argument("--small-model", default=None, help="small member (default minilm-l3)")
    p.add_argument("--large-model", default=None, help="large member (default minilm-l6)")
    p.add_argument("--train-subset", type=int, default=None, help="override the preset's training sample size")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated subset of the stages to run: {','.join(pipeline.STAGE_ORDER)}")
    p.add_argument("--results-page", default=None,
                   help="also write this Markdown page (e.g. docs/results.md) and its plot from the results")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress bars (stage lines remain)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.output_dir or f"runs/{args.preset}"
    config = pipeline.make_config(
        args.preset, out, task=args.task, source=args.source, small_model=args.small_model,
        large_model=args.large_model, train_subset=args.train_subset, progress=not args.no_progress)
    print(f"[main] preset {config.preset!r} -> {out}", flush=True)
    if config.cuts:
        print(f"[main] this preset cuts: {config.cuts}", flush=True)
    only = tuple(args.stages.split(",")) if args.stages else None
    t0 = time.perf_counter()
    try:
        pipeline.run(config, log=lambda line: print(f"[main] {line}", flush=True), only=only)
    except KeyboardInterrupt as e:
        print(f"[main] interrupted: {e or 'Ctrl-C'}; run the same command again to resume", file=sys.stderr)
        return 130
    report = f"{out}/report/results.md"
    print(f"[main] done in {(time.perf_counter() - t0) / 60:.1f} min; results: {report}", flush=True)
    if args.results_page:
        print(f"[main] wrote {pipeline.write_results_page(out, args.results_page)}", flush=True)
    try:
        print(open(report).read())
    except FileNotFoundError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
