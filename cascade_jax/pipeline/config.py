"""The pipeline's configuration (nested sections) and its presets, each a set of overrides of those sections."""

from __future__ import annotations

import dataclasses
from typing import Any

from cascade_jax import configs
from cascade_jax.configs import DataConfig, OptimConfig, field, section


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """Difficulty labels for the small member: K folds x S seeds, each member fine-tuned with ``optim``."""

    folds: int = field(8, "K: folds (paper: 8)")
    seeds: int = field(5, "S: seeds per fold (paper: 5)")
    optim: OptimConfig = section(OptimConfig, epochs=10.0)


@dataclasses.dataclass(frozen=True)
class DarSettings:
    margins: tuple[float, ...] = field((0.1, 0.3, 0.5, 0.7), "DAR margins; with several, the one whose cascade is "
                                                             "best on dev is used (paper's search)")
    weight: float = field(0.5, "DAR weight lambda (paper: 0.5)")


@dataclasses.dataclass(frozen=True)
class KdSettings:
    temperature: float = field(2.0, "distillation temperature of the truncated member")
    alpha: float = field(0.5, "weight of the KD term (1 - alpha on CE)")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    targets: tuple[float, ...] = field((1.25, 1.5, 1.75), "target layer speed-ups of the operating points")
    sweep_points: int = field(41, "thresholds per sweep (quantiles of the exit statistic, plus the extremes)")
    batch_size: int = field(64, "inference batch size")
    wallclock_batch_sizes: tuple[int, ...] = field((64, 256), "batch sizes of the wall-clock timings")
    wallclock_repeats: int = field(3, "timed repeats of each wall-clock measurement (best is kept)")
    wallclock_targets: tuple[float, ...] | None = field(None, "targets timed by wall clock (default: every target)")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline does (saved as ``pipeline_config.json``). :data:`PRESETS` hold the standard settings.

    ``cuts`` says in words what a preset leaves out of the paper's protocol, and is printed and written into the
    results.
    """

    output_dir: str = field("", "where everything goes; reused to resume")
    preset: str = field("custom", "the preset these settings came from")
    cuts: str = field("", "what these settings leave out of the paper's protocol, in words")
    data: DataConfig = section(DataConfig, max_length=64)
    small_model: str = field("minilm-l3", "the small member (a complete small model)")
    large_model: str = field("minilm-l6", "the large member")
    trunc_layers: int = field(2, "layers of the truncated member distilled from the large one")
    bert_kl_layers: tuple[int, ...] = field((2, 3), "k of the static BERT-kL baselines")
    labels: LabelSettings = section(LabelSettings)
    members: OptimConfig = section(OptimConfig, epochs=10.0)
    shallow: OptimConfig = section(OptimConfig, epochs=10.0)
    exits: OptimConfig = section(OptimConfig, epochs=10.0)
    dar: DarSettings = section(DarSettings)
    kd: KdSettings = section(KdSettings)
    eval: EvalSettings = section(EvalSettings)
    dev_eval: str = field("epoch", "members scored on dev each epoch and the best kept, or once at the end",
                          choices=("epoch", "end"))
    seed: int = field(0, "seed of every training run and of the fold assignment")
    progress: bool = field(True, "per-step progress bars")

    def __post_init__(self):
        if not self.output_dir:
            raise configs.ConfigError("PipelineConfig needs an output_dir")
        if self.dev_eval not in ("epoch", "end"):
            raise configs.ConfigError(f"dev_eval must be 'epoch' or 'end', got {self.dev_eval!r}")
        extra = set(self.eval.wallclock_targets or ()) - set(self.eval.targets)
        if extra:
            raise configs.ConfigError(f"eval.wallclock_targets {sorted(extra)} are not among eval.targets "
                                      f"{list(self.eval.targets)}")
        if not self.dar.margins:
            raise configs.ConfigError("dar.margins needs at least one margin")


# Settings a resumed pipeline may change (they change nothing that was trained): progress bars, and the evaluation
# (the evaluate stage runs again when they change).
RESUME_FREE = ("progress",)
EVAL_SECTION = "eval"

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "preset": "quick",
        "cuts": "trains on a 1,600-example sample of the 10,643 training reviews; difficulty labels from K=3 folds x "
                "S=2 seeds x 1 epoch (paper: K=8, S=5, 10 epochs); the 3- and 6-layer members 2 epochs at lr 1e-4, "
                "the 2-layer truncations of minilm-l6 (KD member, BERT-2L) 4 epochs at lr 2e-4, the DeeBERT and "
                "PABEE exits 2 epochs at lr 2e-4 (paper: 10 epochs at 2e-5); members scored on dev once, after their "
                "last step, and that model kept (the paper preset scores every epoch and keeps the best); one DAR "
                "margin (0.5) instead of a search over {0.1, 0.3, 0.5, 0.7}; BERT-kL for k=2 only; wall-clock timed "
                "at the 1.5x operating point and batch 64 only, best of 2",
        "data.train_subset": 1600,
        "labels.folds": 3, "labels.seeds": 2, "labels.optim.epochs": 1.0, "labels.optim.learning_rate": 1e-4,
        "members.epochs": 2.0, "members.learning_rate": 1e-4,
        "shallow.epochs": 4.0, "shallow.learning_rate": 2e-4,
        "exits.epochs": 2.0, "exits.learning_rate": 2e-4,
        "dar.margins": (0.5,), "bert_kl_layers": (2,), "dev_eval": "end",
        "eval.wallclock_batch_sizes": (64,), "eval.wallclock_repeats": 2, "eval.wallclock_targets": (1.5,),
        "eval.sweep_points": 31,
    },
    "paper": {
        "preset": "paper",
        "cuts": "none of the protocol (K=8 folds x 5 seeds, 10 epochs, lr 2e-5, margins searched on dev); the models "
                "are MiniLM-L3/L6 rather than BERT-base-sized members, and the task is rotten_tomatoes unless --task "
                "says",
    },
}


def make_config(preset: str, output_dir: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A :class:`PipelineConfig` from a preset name and explicit overrides (dotted paths or unique leaf names)."""
    if preset not in PRESETS:
        raise configs.ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PipelineConfig(output_dir=output_dir)
    return configs.override(config, {**PRESETS[preset], **(overrides or {})})
