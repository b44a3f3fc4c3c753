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

import sys

from cascade_jax import trainer
from train import cli


def _run(config: trainer.TrainConfig):
    result = trainer.fit(config)
    return result, {"step": result.step, "best_dev": result.best, "model_dir": str(result.model_dir)}


main = cli.config_command(
    "train.finetune", __doc__, trainer.TrainConfig, run=_run, required={"output_dir": "--output-dir"},
    titles={"": "run", "model": "model", "data": "data", "optim": "optimisation", "loss": "loss", "run": "run"})
build_parser = main.build_parser

if __name__ == "__main__":
    sys.exit(main())
