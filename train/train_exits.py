"""Train the early-exit baselines on a fine-tuned model: DeeBERT's or FastBERT's internal classifiers, or PABEE.

    # DeeBERT stage 2: internal classifiers on the frozen fine-tuned model (backbone and final classifier frozen)
    python -m train.train_exits --model runs/l6/model --mode deebert --output-dir runs/deebert
    # PABEE: every classifier and the backbone, on the weighted loss sum_j j*CE_j / sum_j j
    python -m train.train_exits --model runs/l6/model --mode pabee --output-dir runs/pabee

Resumable like finetune (run the same command again; SIGTERM or Ctrl-C save a checkpoint and stop). The
multi-exit model lands in OUTPUT_DIR/model, for `python -m eval.evaluate_cascade evaluate --deebert/--pabee`.
"""

from __future__ import annotations

import sys

from cascade_jax import baselines
from train import cli


def _run(config: baselines.ExitTrainConfig):
    result = baselines.train_exits(config)
    return result, {"mode": config.mode, "step": result.step, "model_dir": str(result.model_dir)}


main = cli.config_command(
    "train.train_exits", __doc__, baselines.ExitTrainConfig, run=_run,
    required={"output_dir": "--output-dir", "model.name": "--model"},
    titles={"": "exits and run", "model": "model (the fine-tuned directory)", "data": "data",
            "optim": "optimisation", "run": "run"})
build_parser = main.build_parser

if __name__ == "__main__":
    sys.exit(main())
