"""Train the distilled static baselines of the paper's Table 3 from a fine-tuned large model.

    # BERT-PKD (PKD-Skip): the first 3 layers of the large model, distilled with CE + KD + the patient loss
    python -m train.distill pkd --model runs/l6/model --num-layers 3 --output-dir runs/pkd
    # BERT-of-Theseus: 3 successor layers replacing blocks of 2, by progressive module replacing, then fine-tuned
    python -m train.distill theseus --model runs/l6/model --num-layers 3 --output-dir runs/theseus

Both are resumable (run the same command again; SIGTERM or Ctrl-C save a checkpoint and stop) and write a plain
k-layer BERT to OUTPUT_DIR/model, for `python -m eval.evaluate_cascade evaluate --static ...`. The BERT-PD analogue
(a complete small model distilled on the task) is `python -m train.finetune --model minilm-l3 --loss kd --teacher ...`.
"""

from __future__ import annotations

import sys

from cascade_jax import distill
from train import cli

_TITLES = {"": "method and run", "model": "model (the fine-tuned large model and k)", "data": "data",
           "optim": "optimisation", "successor_optim": "optimisation of Theseus's second phase", "run": "run"}
_REQUIRED = {"output_dir": "--output-dir", "model.name": "--model", "model.num_layers": "--num-layers"}


def _summary(result):
    return {"status": result.status, "step": result.step, "model_dir": str(result.model_dir)}


COMMANDS = {
    "pkd": cli.config_command("train.distill pkd", __doc__, distill.PKDConfig, titles=_TITLES, required=_REQUIRED,
                              run=lambda c: (r := distill.train_pkd(c), _summary(r))),
    "theseus": cli.config_command("train.distill theseus", __doc__, distill.TheseusConfig, titles=_TITLES,
                                  required=_REQUIRED, run=lambda c: (r := distill.train_theseus(c), _summary(r))),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__ + f"\nusage: python -m train.distill {{{','.join(COMMANDS)}}} [--help] ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
