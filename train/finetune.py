"""Fine-tune one cascade member (a complete small model, a truncated model, or the large model).

Examples (from the repository root, after ./run setup):

    # the small member with DAR, using difficulty labels from label_difficulty
    python -m train.finetune --model minilm-l3 --loss dar --difficulty-file runs/labels/difficulty.jsonl \
        --output-dir runs/l3-dar
    # the large member with cross-entropy
    python -m train.finetune --model minilm-l6 --output-dir runs/l6
    # a 2-layer truncation of minilm-l6 distilled from the fine-tuned large member (the paper's Sec. 5.4)
    python -m train.finetune --model minilm-l6 --num-layers 2 --loss kd --teacher runs/l6/model --output-dir runs/l6-2

Run it again with the same --output-dir to resume from the last checkpoint (SIGTERM saves one and exits).
The fine-tuned model lands in OUTPUT_DIR/model (Hugging Face layout, loadable by transformers' PyTorch BERT and
by cascade_jax.models.from_pretrained); orbax checkpoints in OUTPUT_DIR/checkpoints and OUTPUT_DIR/best; metrics
in OUTPUT_DIR/metrics.jsonl and OUTPUT_DIR/tensorboard.
"""

from __future__ import annotations

import argparse
import json
import sys

from cascade_jax import losses, trainer
from train import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("model and data")
    cli.add_model_data_args(g, model_help="built-in name (minilm-l3, minilm-l6), local Hugging Face directory or "
                                          "hub id")
    g.add_argument("--train-subset", type=int, default=None,
                   help="train on a fixed random sample of N training examples (quick runs)")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="ce", choices=trainer.LOSS_KINDS, help="objective (dar needs --difficulty-file)")
    g.add_argument("--dar-variant", default="all_pairs",
                   help=f"registered DAR variant: {', '.join(losses.dar_variant_names())}")
    g.add_argument("--margin", type=float, default=0.5, help="DAR margin eps (paper: 0.3 or 0.5)")
    g.add_argument("--dar-weight", type=float, default=0.5, help="DAR weight lambda (paper: 0.5)")
    g.add_argument("--pair-scope", default="device", choices=["device", "global"],
                   help="DAR pairs within each device's rows, or across the global batch")
    g.add_argument("--difficulty-file", default=None, help="difficulty labels keyed by example id (JSONL/CSV)")
    g.add_argument("--teacher", default=None, help="teacher model directory for --loss kd")
    g.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    g.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the KD term (1 - alpha on CE)")
    g = p.add_argument_group("optimisation")
    cli.add_optimizer_args(g, epochs_help="may be fractional", steps_help="stop after this many steps in all",
                           batch_help="global batch size")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True, help="where checkpoints, logs and the model go; reused to resume")
    g.add_argument("--backend", default="shard_map", choices=["shard_map", "pmap"], help="data-parallel mapping")
    g.add_argument("--eval-every", type=int, default=0,
                   help="evaluate on dev every N steps (0: once per epoch; -1: only at the end, keeping the last model)")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint every N steps (0: at each eval, or once per epoch with --eval-every -1)")
    cli.add_run_args(g, log_help="write train metrics every N steps")
    return p


def config_from_args(args: argparse.Namespace) -> trainer.TrainConfig:
    return trainer.TrainConfig(
        output_dir=args.output_dir, model=args.model, num_layers=args.num_layers, task=args.task,
        source=args.source, train_subset=args.train_subset, max_length=args.max_length, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, seed=args.seed,
        loss=trainer.LossConfig(kind=args.loss, dar_variant=args.dar_variant, margin=args.margin,
                                dar_weight=args.dar_weight, pair_scope=args.pair_scope,
                                temperature=args.temperature, kd_alpha=args.kd_alpha),
        difficulty_file=args.difficulty_file, teacher=args.teacher, dtype=args.dtype, backend=args.backend,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.maybe_initialize_distributed(args)
    try:
        config = config_from_args(args)
    except (ValueError, KeyError) as e:
        print(f"finetune: {e}", file=sys.stderr)
        return 2
    result = trainer.fit(config)
    if result.status == "preempted":
        print(f"finetune: stopped by SIGTERM at step {result.step}; checkpoint saved in {args.output_dir}. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 0
    print(json.dumps({"step": result.step, "best_dev": result.best, "model_dir": str(result.model_dir)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
