"""Label every training example easy or hard for the small cascade member (the paper's Sec. 4.1).

The training split is cut into K folds; for each fold k and seed s, the small model is fine-tuned on the other
folds and predicts fold k. An example is easy (difficulty 0) only if all S seeds predict it right. On GPU/TPU
the K x S members train together as one vmapped run (--chunk C: in groups of at most C, when memory is short);
on CPU they train one at a time by default (--sequential; as fast or faster on a CPU of a few cores, with one
member's memory: docs/bench_difficulty.md), unless --chunk or --no-sequential asks for vmapped groups. The
labels agree up to float rounding (a borderline example can flip: 255 of 256 in docs/bench_difficulty.md).

Examples (from the repository root, after ./run setup):

    # the paper's protocol (K=8, S=5) with minilm-l3 on rotten_tomatoes, 3 epochs
    python -m train.label_difficulty --output-dir runs/labels
    # a quick preset: 2,000 examples, K=4, S=2, 1 epoch, short inputs
    python -m train.label_difficulty --train-subset 2000 --folds 4 --seeds 2 --epochs 1 --max-length 64 \
        --output-dir runs/labels-quick
    # then: python -m train.finetune --loss dar --difficulty-file runs/labels/difficulty.jsonl ...

Output in OUTPUT_DIR: difficulty.jsonl and difficulty.csv (columns id, difficulty, seeds_wrong, num_seeds,
confidence, fold; finetune's --difficulty-file reads either), summary.json (share of hard examples, per-member
held-out accuracy, DIS of the labelling ensemble, times). Run the same command again to resume (SIGTERM saves a
checkpoint and exits).
"""

from __future__ import annotations

import sys

from cascade_jax import difficulty
from train import cli


def _run(config: difficulty.LabelConfig):
    result = difficulty.label_difficulty(config)
    s = result.summary or {}
    return result, {"labels": str(result.labels_path), "examples": s.get("examples"),
                    "share_hard": s.get("share_hard"), "dis": s.get("dis"),
                    "mean_heldout_accuracy": s.get("mean_heldout_accuracy"), "train_seconds": s.get("train_seconds"),
                    "summary": str(result.output_dir / "summary.json")}


main = cli.config_command(
    "train.label_difficulty", __doc__, difficulty.LabelConfig, run=_run, required={"output_dir": "--output-dir"},
    titles={"": "folds, seeds and run", "model": "model (the small member)", "data": "data",
            "optim": "optimisation (of each member)", "run": "run"})
build_parser = main.build_parser

if __name__ == "__main__":
    sys.exit(main())
