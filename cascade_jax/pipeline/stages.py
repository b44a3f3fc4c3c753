"""The pipeline's training stages: each builds the config of one library run from the pipeline's settings."""

from __future__ import annotations

from typing import Callable

from cascade_jax import baselines, difficulty, trainer
from cascade_jax.configs import ModelConfig, OptimConfig, RunConfig
from cascade_jax.pipeline.config import PipelineConfig
from cascade_jax.pipeline.layout import RunLayout, dar_member, trunc_member


class StagePreempted(KeyboardInterrupt):
    """A stage stopped on SIGTERM or Ctrl-C after saving a checkpoint; running the pipeline again resumes it."""


def _run_config(config: PipelineConfig, **kw) -> RunConfig:
    return RunConfig(progress=config.progress, eval_batch_size=config.eval.batch_size, **kw)


def fit_member(config: PipelineConfig, out, *, model: str, optim: OptimConfig, num_layers: int | None = None,
               loss: trainer.LossConfig = trainer.LossConfig(), difficulty_file=None, teacher=None):
    """Fine-tune one member with the pipeline's shared settings; returns its exported model directory."""
    run = _run_config(config, eval_every=-1 if config.dev_eval == "end" else 0)
    cfg = trainer.TrainConfig(
        output_dir=str(out), model=ModelConfig(name=model, num_layers=num_layers), data=config.data, optim=optim,
        loss=loss, run=run, seed=config.seed,
        difficulty_file=None if difficulty_file is None else str(difficulty_file),
        teacher=None if teacher is None else str(teacher))
    result = trainer.fit(cfg)
    if result.status != "finished":
        raise StagePreempted(f"{out}: stopped at step {result.step} (pre-empted); run again to resume")
    return out / "model"


def stage_labels(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    result = difficulty.label_difficulty(difficulty.LabelConfig(
        output_dir=str(layout.labels_dir), model=ModelConfig(name=config.small_model), data=config.data,
        optim=config.labels.optim, run=_run_config(config),
        folds=config.labels.folds, seeds=config.labels.seeds, seed=config.seed))
    if result.status != "finished":
        raise StagePreempted("difficulty labelling pre-empted; run again to resume")


def stage_small_ce(config: PipelineConfig) -> None:
    fit_member(config, RunLayout(config.output_dir).member("small-ce"), model=config.small_model,
               optim=config.members)


def stage_small_dar(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    for margin in config.dar.margins:
        fit_member(config, layout.member(dar_member(margin)), model=config.small_model, optim=config.members,
                   loss=trainer.LossConfig(kind="dar", margin=margin, dar_weight=config.dar.weight),
                   difficulty_file=layout.labels_file)


def stage_large(config: PipelineConfig) -> None:
    fit_member(config, RunLayout(config.output_dir).member("large"), model=config.large_model, optim=config.members)


def stage_trunc_kd(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    fit_member(config, layout.member(trunc_member(config.trunc_layers)), model=config.large_model,
               num_layers=config.trunc_layers, optim=config.shallow, teacher=layout.member_model("large"),
               loss=trainer.LossConfig(kind="kd", temperature=config.kd.temperature, kd_alpha=config.kd.alpha))


def stage_bert_kl(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    for k in config.bert_kl_layers:
        fit_member(config, layout.baseline(f"bert-{k}L"), model=config.large_model, num_layers=k,
                   optim=config.shallow)


def _train_exits(config: PipelineConfig, mode: str) -> None:
    layout = RunLayout(config.output_dir)
    result = baselines.train_exits(baselines.ExitTrainConfig(
        output_dir=str(layout.baseline(mode)), model=ModelConfig(name=str(layout.member_model("large"))),
        data=config.data, optim=config.exits, run=RunConfig(progress=config.progress), mode=mode,
        seed=config.seed))
    if result.status != "finished":
        raise StagePreempted(f"{mode}: stopped at step {result.step} (pre-empted); run again to resume")


def stage_deebert(config: PipelineConfig) -> None:
    _train_exits(config, "deebert")


def stage_pabee(config: PipelineConfig) -> None:
    _train_exits(config, "pabee")


TRAINING_STAGES: dict[str, Callable[[PipelineConfig], None]] = {
    "labels": stage_labels, "small-ce": stage_small_ce, "small-dar": stage_small_dar, "large": stage_large,
    "trunc-kd": stage_trunc_kd, "bert-kl": stage_bert_kl, "deebert": stage_deebert, "pabee": stage_pabee,
}
