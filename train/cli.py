"""Command-line pieces shared by the training entry points (finetune, label_difficulty)."""

from __future__ import annotations

import argparse

from cascade_jax import data


def add_model_data_args(g: argparse._ArgumentGroup, *, model_help: str) -> None:
    """--model, --num-layers, --task, --source, --max-length."""
    g.add_argument("--model", default="minilm-l3", help=model_help)
    g.add_argument("--num-layers", type=int, default=None, help="keep only the first k layers (BERT-kL)")
    g.add_argument("--task", default="rotten_tomatoes", help=f"one of: {', '.join(sorted(data.TASKS))}")
    g.add_argument("--source", default=None, help="local folder or file with the task's data (default: built-in/hub)")
    g.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")


def add_optimizer_args(g: argparse._ArgumentGroup, *, epochs_help: str, steps_help: str, batch_help: str) -> None:
    """--epochs, --max-steps, --batch-size, --lr, --warmup-ratio, --weight-decay, --max-grad-norm, --dtype."""
    g.add_argument("--epochs", type=float, default=3.0, help=epochs_help)
    g.add_argument("--max-steps", type=int, default=None, help=steps_help)
    g.add_argument("--batch-size", type=int, default=32, help=batch_help)
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW, linear warm-up and decay)")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps spent warming up")
    g.add_argument("--weight-decay", type=float, default=0.01, help="not applied to LayerNorm and biases")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm gradient clipping")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")


def add_run_args(g: argparse._ArgumentGroup, *, log_help: str) -> None:
    """--log-every, --no-progress, and the multi-process flags (see :func:`maybe_initialize_distributed`)."""
    g.add_argument("--log-every", type=int, default=10, help=log_help)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run first (jax.distributed.initialize; gloo collectives on CPU). "
                        "SLURM, Open MPI, Kubernetes and Cloud TPU are detected; elsewhere give the three below")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run (implies --distributed)")
    g.add_argument("--process-id", type=int, default=None, help="this process, 0..N-1 (implies --distributed)")


def maybe_initialize_distributed(args: argparse.Namespace) -> None:
    """Join the multi-process run when --distributed or any of its three explicit settings was given."""
    manual = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in manual):
        from cascade_jax import parallel

        parallel.initialize_distributed(*manual)
