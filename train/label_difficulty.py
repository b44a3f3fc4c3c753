"""Label every training example easy or hard for the small cascade member (the paper's Sec. 4.1).

The training split is cut into K folds; for each fold k and seed s, the small model is fine-tuned on the other
folds and predicts fold k. An example is easy (difficulty 0) only if all S seeds predict it right. All K x S
members train together as one vmapped run (--chunk C trains them in groups of at most C when memory is short;
the labels are the same).

Examples (from the repository root, after ./run setup):

    # the paper's protocol (K=8, S=5) with minilm-l3 on rotten_tomatoes, 3 epochs
    python -m train.label_difficulty --output-dir runs/labels
    # a quick preset: 2,000 examples, K=4, S=2, 1 epoch, short inputs
    python -m train.label_difficulty --subset 2000 --folds 4 --seeds 2 --epochs 1 --max-length 64 \
        --output-dir runs/labels-quick
    # then: python -m train.finetune --loss dar --difficulty-file runs/labels/difficulty.jsonl ...

Output in OUTPUT_DIR: difficulty.jsonl and difficulty.csv (columns id, difficulty, seeds_wrong, num_seeds,
confidence, fold; finetune's --difficulty-file reads either), summary.json (share of hard examples, per-member
held-out accuracy, DIS of the labelling ensemble, times). Run the same command again to resume (SIGTERM saves a
checkpoint and exits).
"""

from __future__ import annotations

import argparse
import json
import sys

from cascade_jax import difficulty
from train import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.label_difficulty", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model and data")
    cli.add_model_data_args(g, model_help="the small member: built-in name (minilm-l3, minilm-l6), local Hugging "
                                          "Face directory or hub id")
    g.add_argument("--subset", type=int, default=None,
                   help="label only a fixed random sample of N training examples (the one finetune's "
                        "--train-subset N takes), for quick runs")
    g = p.add_argument_group("folds and seeds")
    g.add_argument("--folds", type=int, default=8, help="K: each member holds out one fold (paper: 8)")
    g.add_argument("--seeds", type=int, default=5, help="S: seeds per fold; easy only if all are right (paper: 5)")
    g.add_argument("--seed", type=int, default=0, help="fold assignment; member seeds are SEED .. SEED+S-1")
    g = p.add_argument_group("optimisation (of each member)")
    cli.add_optimizer_args(g, epochs_help="may be fractional (the paper trains 10)",
                           steps_help="stop each member after this many steps", batch_help="rows per member per step")
    g.add_argument("--no-dropout", action="store_true", help="train without dropout")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True, help="where labels, summary and checkpoints go; reused to resume")
    g.add_argument("--chunk", type=int, default=None,
                   help="train at most C members at once (default: all K x S); same labels, less memory. "
                        "Each member holds parameters, two Adam moments and gradients (minilm-l3: ~17M "
                        "parameters, ~280 MB in float32) plus its activations")
    g.add_argument("--sequential", action="store_true",
                   help="train members one at a time without vmap (the reference; slower)")
    g.add_argument("--backend", default="shard_map", choices=["shard_map", "pmap"],
                   help="data-parallel mapping: each member's batch is split over devices")
    g.add_argument("--eval-batch-size", type=int, default=64, help="rows per member per prediction batch")
    g.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: once per epoch)")
    cli.add_run_args(g, log_help="write per-member train metrics every N steps")
    return p


def config_from_args(args: argparse.Namespace) -> difficulty.LabelConfig:
    return difficulty.LabelConfig(
        output_dir=args.output_dir, model=args.model, num_layers=args.num_layers, task=args.task,
        source=args.source, subset=args.subset, max_length=args.max_length, folds=args.folds, seeds=args.seeds,
        seed=args.seed, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, dropout=not args.no_dropout, dtype=args.dtype, chunk=args.chunk,
        sequential=args.sequential, backend=args.backend, eval_batch_size=args.eval_batch_size,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.maybe_initialize_distributed(args)
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"label_difficulty: {e}", file=sys.stderr)
        return 2
    try:
        result = difficulty.label_difficulty(config)
    except difficulty.ResumeMismatchError as e:
        print(f"label_difficulty: {e}", file=sys.stderr)
        return 2
    if result.status == "preempted":
        print(f"label_difficulty: stopped by SIGTERM; checkpoint saved in {args.output_dir}. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 0
    s = result.summary
    print(json.dumps({
        "labels": str(result.labels_path), "examples": s["examples"], "share_hard": s["share_hard"],
        "dis": s["dis"], "mean_heldout_accuracy": s["mean_heldout_accuracy"],
        "train_seconds": s["train_seconds"], "summary": str(result.output_dir / "summary.json"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
