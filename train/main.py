"""The main job: the whole CascadeBERT pipeline on the built-in real data and models, in one command.

    python -m train.main                       # preset "quick": about 15 minutes on a quiet 2-core CPU
    python -m train.main --preset standard     # the whole training split in 3 seeds: about 2 hours there
    python -m train.main --preset paper        # the paper's protocol (a GPU/TPU job)
    python -m train.main --train-subset 800 --members.epochs 3 --output-dir runs/mine   # a preset, overridden

Stages (--stages runs a subset): difficulty labels for the small member and for the truncated one (K folds x S
seeds; one member at a time on CPU, one vmapped run on GPU/TPU) -> the small member with DAR (and without, for the
ablation) -> the large member -> the truncated member (the large one's first layers) with DAR, and with --kd.member
one distilled from the large member -> baselines (BERT-kL, DeeBERT, PABEE, FastBERT, BERT-PKD, BERT-of-Theseus, a
BERT-PD analogue) -> threshold sweeps on dev and test -> results table, plot and wall-clock speed-ups. Every stage
is skipped when its output exists and resumes when it was interrupted: run the same command again. Results:
OUTPUT_DIR/report/ (results.json, results.md, curve.png), and with --results-page a page such as docs/results.md
is rewritten from them.
"""

from __future__ import annotations

import argparse
import sys
import time

from cascade_jax import configs, pipeline
from cascade_jax.pipeline.config import PipelineConfig
from train import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("the job")
    g.add_argument("--preset", default="quick", choices=sorted(pipeline.PRESETS),
                   help="quick: a 20-minute CPU run that says what it cuts; standard: the whole training split "
                        "in 3 seeds (about 2 hours on 2 CPU cores); paper: the paper's protocol (default: quick). "
                        "The flags below override the preset's settings")
    g.add_argument("--stages", default=None,
                   help=f"comma-separated subset of the stages to run: {','.join(pipeline.STAGE_ORDER)}")
    g.add_argument("--results-page", default=None,
                   help="also write this Markdown page (e.g. docs/results.md) and its plot from the results")
    quick = pipeline.make_config("quick", "runs/quick")
    cli.add_config_flags(p, PipelineConfig, exclude=("preset", "cuts"), flat_sections=("data",),
                         defaults={**configs.defaults(PipelineConfig), **{
                             k: configs.get(quick, k) for k in configs.leaves(PipelineConfig)}, "output_dir":
                             "runs/PRESET"}, default_label="quick preset",
                         titles={"": "settings", "data": "data", "labels": "difficulty labels",
                                 "members": "members (small, large)", "shallow": "truncated models (KD member, "
                                 "BERT-kL)", "exits": "early-exit heads (DeeBERT, PABEE)", "dar": "DAR",
                                 "kd": "distillation", "eval": "evaluation"})
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        overrides = cli.config_overrides(args)
        out = overrides.pop("output_dir", None) or f"runs/{args.preset}"
        config = pipeline.make_config(args.preset, out, overrides)
        print(f"[main] preset {config.preset!r} -> {out}", flush=True)
        if config.cuts:
            print(f"[main] this preset cuts: {config.cuts}", flush=True)
        if overrides:
            print(f"[main] overridden: {', '.join(f'{k}={v}' for k, v in overrides.items())}", flush=True)
        only = tuple(args.stages.split(",")) if args.stages else None
        t0 = time.perf_counter()
        try:
            pipeline.run(config, log=lambda line: print(f"[main] {line}", flush=True), only=only)
        except KeyboardInterrupt as e:
            print(f"[main] interrupted: {e or 'Ctrl-C'}; run the same command again to resume", file=sys.stderr)
            return 130
        report = pipeline.RunLayout(out).report_dir / "results.md"
        print(f"[main] done in {(time.perf_counter() - t0) / 60:.1f} min; results: {report}", flush=True)
        if args.results_page:
            print(f"[main] wrote {pipeline.write_results_page(out, args.results_page)}", flush=True)
        if report.exists():
            print(report.read_text())
        return 0

    return cli.run_cli("main", body)


if __name__ == "__main__":
    sys.exit(main())
