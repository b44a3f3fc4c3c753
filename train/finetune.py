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

from cascade_jax import data, losses, trainer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="minilm-l3",
                   help="built-in name (minilm-l3, minilm-l6), local Hugging Face directory or hub id")
    g.add_argument("--num-layers", type=int, default=None, help="keep only the first k layers (BERT-kL)")
    g.add_argument("--task", default="rotten_tomatoes", help=f"one of: {', '.join(sorted(data.TASKS))}")
    g.add_argument("--source", default=None, help="local folder or file with the task's data (default: built-in/hub)")
    g.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
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
    g.add_argument("--epochs", type=float, default=3.0, help="may be fractional")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    g.add_argument("--batch-size", type=int, default=32, help="global batch size")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW, linear warm-up and decay)")
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=0.01, help="not applied to LayerNorm and biases")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True, help="where checkpoints, logs and the model go; reused to resume")
    g.add_argument("--backend", default="shard_map", choices=["shard_map", "pmap"], help="data-parallel mapping")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate on dev every N steps (0: once per epoch)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: at each eval)")
    g.add_argument("--log-every", type=int, default=10, help="write train metrics every N steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run first (jax.distributed.initialize; gloo collectives on CPU). "
                        "SLURM, Open MPI, Kubernetes and Cloud TPU are detected; elsewhere give the three below")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run (implies --distributed)")
    g.add_argument("--process-id", type=int, default=None, help="this process, 0..N-1 (implies --distributed)")
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
    manual = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in manual):
        from cascade_jax import parallel

        parallel.initialize_distributed(*manual)
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
