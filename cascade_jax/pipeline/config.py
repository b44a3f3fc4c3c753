"""The pipeline's configuration (nested sections) and its presets, each a set of overrides of those sections."""

from __future__ import annotations

import dataclasses
from typing import Any

from cascade_jax import configs
from cascade_jax.configs import DataConfig, OptimConfig, field, section


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """Difficulty labels of a small member (the complete one, and the truncated one): K folds x S seeds."""

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
    temperature: float = field(2.0, "distillation temperature")
    alpha: float = field(0.5, "weight of the KD term (1 - alpha on CE)")
    member: bool = field(True, "train the truncated member with KD too (the paper's Sec. 5.4 variant)")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    targets: tuple[float, ...] = field((1.25, 1.5, 1.75, 2.0, 2.5), "target layer speed-ups of the operating points")
    auc_range: tuple[float, ...] = field((1.0, 2.0), "layer speed-ups over which the threshold-free mean accuracy is "
                                                     "taken")
    sweep_points: int = field(41, "thresholds per sweep (quantiles of the exit statistic, plus the extremes)")
    batch_size: int = field(64, "inference batch size")
    resamples: int = field(1000, "bootstrap resamples (paired over test examples, seeds resampled too)")
    ood_tasks: tuple[str, ...] = field(("vader_amazon", "vader_nyt", "vader_tweets"),
                                       "out-of-domain test sets (deduplicated against the training split)")
    ood_max_examples: int | None = field(None, "evaluate at most this many examples of each out-of-domain set (a "
                                               "seeded sample; default: all)")
    wallclock_batch_sizes: tuple[int, ...] = field((64, 256), "batch sizes of the wall-clock timings")
    wallclock_repeats: int = field(3, "timed repeats of each wall-clock measurement (best is kept)")
    wallclock_targets: tuple[float, ...] | None = field(None, "targets timed by wall clock (default: every target)")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline does (saved as ``pipeline_config.json``). :data:`PRESETS` hold the standard settings.

    ``cuts`` says in words what a preset leaves out of the paper's protocol (derived from its difference with the
    ``paper`` preset when empty), and is printed and written into the results.
    """

    output_dir: str = field("", "where everything goes; reused to resume")
    preset: str = field("custom", "the preset these settings came from")
    cuts: str = field("", "what these settings leave out of the paper's protocol, in words")
    data: DataConfig = section(DataConfig, max_length=128)
    small_model: str = field("minilm-l3", "the small member (a complete small model)")
    large_model: str = field("minilm-l6", "the large member")
    trunc_layers: int = field(2, "layers of the truncated small member (first k layers of the large model)")
    bert_kl_layers: tuple[int, ...] = field((2, 3), "k of the static BERT-kL baselines (k = trunc_layers is the "
                                                    "truncated member trained without DAR)")
    seeds: int = field(3, "seeds of every trained method")
    large_seeds: int = field(1, "seeds of the large member (shared by every cascade)")
    labels: LabelSettings = section(LabelSettings)
    labels_shallow: LabelSettings = section(LabelSettings)
    members: OptimConfig = section(OptimConfig, epochs=10.0)
    large_epochs: float | None = field(None, "epochs of the large member (default: members.epochs)")
    shallow: OptimConfig = section(OptimConfig, epochs=10.0)
    exits: OptimConfig = section(OptimConfig, epochs=10.0)
    pabee: OptimConfig = section(OptimConfig, epochs=10.0)
    distill_layers: int = field(3, "layers of the distilled static baselines (BERT-PKD, BERT-of-Theseus); BERT-PD "
                                   "is the complete small model")
    distill: OptimConfig = section(OptimConfig, epochs=10.0)
    pkd_epochs: float | None = field(None, "epochs of BERT-PKD (default: distill.epochs)")
    dar: DarSettings = section(DarSettings)
    kd: KdSettings = section(KdSettings)
    eval: EvalSettings = section(EvalSettings)
    dev_eval: str = field("epoch", "members scored on dev each epoch and the best kept, or once at the end",
                          choices=("epoch", "end"))
    seed: int = field(0, "first seed; seed i of a method is seed + i; also the fold assignment")
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
        for name in ("large_epochs", "pkd_epochs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise configs.ConfigError(f"{name} must be positive (or unset: the section's epochs), got {value}")
        if self.seeds < 1 or self.large_seeds < 1:
            raise configs.ConfigError("seeds and large_seeds must be at least 1")
        if len(self.eval.auc_range) != 2 or not self.eval.auc_range[0] < self.eval.auc_range[1]:
            raise configs.ConfigError(f"eval.auc_range must be (low, high) with low < high, got "
                                      f"{self.eval.auc_range}")


# Settings a resumed pipeline may change (they change nothing that was trained): progress bars, and the evaluation
# (the evaluate stage runs again when they change).
RESUME_FREE = ("progress", "cuts")
EVAL_SECTION = "eval"

_QUICK_EPOCHS = {"members.epochs": 2.0, "members.learning_rate": 1e-4, "shallow.epochs": 4.0,
                 "shallow.learning_rate": 3e-4, "exits.epochs": 2.0, "exits.learning_rate": 5e-3,
                 "pabee.epochs": 1.0, "pabee.learning_rate": 3e-4, "labels.optim.learning_rate": 1e-4,
                 "distill.epochs": 2.0, "distill.learning_rate": 3e-4, "pkd_epochs": 4.0}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"preset": "paper"},
    "quick": {
        "preset": "quick", "data.train_subset": 800, "data.max_length": 64, "data.length_grouping": 50, "seeds": 1,
        "labels.folds": 3, "labels.seeds": 2, "labels.optim.epochs": 1.0, **_QUICK_EPOCHS,
        "labels_shallow.folds": 2, "labels_shallow.seeds": 1, "labels_shallow.optim.epochs": 4.0,
        "labels_shallow.optim.learning_rate": 3e-4,
        "dar.margins": (0.5,), "kd.member": False, "dev_eval": "end",
        "eval.wallclock_batch_sizes": (64,), "eval.wallclock_repeats": 2, "eval.wallclock_targets": (1.5,),
        "eval.sweep_points": 31, "eval.resamples": 1000, "eval.ood_max_examples": 300,
    },
    "standard": {
        "preset": "standard", "data.max_length": 64, "data.length_grouping": 50, "seeds": 3,
        "labels.folds": 3, "labels.seeds": 2, "labels.optim.epochs": 1.0, "labels.optim.learning_rate": 1e-4,
        "labels_shallow.folds": 3, "labels_shallow.seeds": 2, "labels_shallow.optim.epochs": 1.0,
        "labels_shallow.optim.learning_rate": 2e-4,
        "members.epochs": 1.0, "members.learning_rate": 1e-4, "large_epochs": 2.0, "shallow.epochs": 1.0,
        "shallow.learning_rate": 2e-4, "exits.epochs": 1.0, "exits.learning_rate": 5e-3, "pabee.epochs": 1.0,
        "pabee.learning_rate": 2e-4, "distill.epochs": 1.0, "distill.learning_rate": 2e-4,
        "dar.margins": (0.5,), "kd.member": False, "dev_eval": "epoch", "eval.ood_max_examples": 2000,
        "eval.wallclock_batch_sizes": (64,), "eval.wallclock_repeats": 2, "eval.wallclock_targets": (1.5,),
    },
}


def make_config(preset: str, output_dir: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A :class:`PipelineConfig` from a preset name and explicit overrides (dotted paths or unique leaf names)."""
    if preset not in PRESETS:
        raise configs.ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = configs.override(PipelineConfig(output_dir=output_dir), {**PRESETS[preset], **(overrides or {})})
    if not config.cuts:
        config = dataclasses.replace(config, cuts=describe_cuts(config))
    return config


_PAPER_WORDS = {
    "data.train_subset": "trains on a sample of {} training examples (paper: the whole training split)",
    "data.max_length": "inputs cut at {} tokens (paper: 128)",
    "data.length_grouping": "training batches of similar length (chunks of {} batches ordered by length bucket; "
                            "paper: random batches)",
    "seeds": "{} seed(s) per method",
    "labels.folds": "difficulty labels from K={} folds (paper: 8)",
    "labels.seeds": "S={} seeds per fold (paper: 5)",
    "labels.optim.epochs": "labellers trained {} epoch(s) (paper: 10)",
    "labels.optim.learning_rate": "labellers at lr {} (paper: 2e-5)",
    "labels_shallow.folds": "the truncated member's difficulty labels from K={} folds (paper: 8)",
    "labels_shallow.seeds": "S={} seeds per fold for them (paper: 5)",
    "labels_shallow.optim.epochs": "their labellers trained {} epoch(s) (paper: 10)",
    "labels_shallow.optim.learning_rate": "their labellers at lr {} (paper: 2e-5)",
    "members.epochs": "the complete members (the 6-layer one too, unless said below) {} epoch(s) (paper: 10)",
    "members.learning_rate": "members at lr {} (paper: 2e-5)",
    "shallow.epochs": "the truncated members and BERT-kL {} epoch(s) (paper: 10)",
    "shallow.learning_rate": "truncated members at lr {} (paper: 2e-5)",
    "exits.epochs": "DeeBERT's and FastBERT's heads {} epoch(s) (paper: 10)",
    "exits.learning_rate": "DeeBERT's and FastBERT's heads at lr {} (paper: 2e-5)",
    "pabee.epochs": "PABEE {} epoch(s) (paper: 10)",
    "pabee.learning_rate": "PABEE at lr {} (paper: 2e-5)",
    "distill.epochs": "the distilled baselines (BERT-of-Theseus per phase, BERT-PD, and BERT-PKD unless said below) "
                      "{} epoch(s) (paper: 10)",
    "pkd_epochs": "BERT-PKD {} epoch(s) (paper: 10)",
    "distill.learning_rate": "the distilled baselines at lr {} (paper: 2e-5)",
    "dar.margins": "DAR margin(s) {} without a search (paper: searched over 0.1, 0.3, 0.5, 0.7 on dev)",
    "kd.member": "no truncated member trained with KD (the paper's Sec. 5.4 variant)",
    "dev_eval": "members scored on dev only after their last step ({}; paper: every epoch, best kept)",
    "large_epochs": "the large member {} epoch(s) (paper: 10)",
}


def describe_cuts(config: PipelineConfig) -> str:
    """What ``config`` leaves out of the paper's protocol, from its differences with the ``paper`` preset."""
    paper = configs.to_dict(configs.override(PipelineConfig(output_dir=config.output_dir), PRESETS["paper"]))
    now = configs.to_dict(config)
    words = []
    changed = configs.differences(paper, now)
    ordered = [p for p in _PAPER_WORDS if p in changed] + [p for p in changed if p not in _PAPER_WORDS]
    for path in ordered:
        if path in ("preset", "output_dir", "cuts", "progress") or path.startswith("eval."):
            continue
        value = configs.get(config, path)
        shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else (
            f"{value:g}" if isinstance(value, float) else value)
        words.append(_PAPER_WORDS.get(path, path + " = {}").format(shown))
    return "; ".join(words) if words else "none of the protocol"
