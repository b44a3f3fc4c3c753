"""The pipeline's training stages: each builds the config of one library run from the pipeline's settings.

Members that differ only in numbers (seeds, DAR margins, DAR weight 0 for the members without DAR) are one stacked
run (:func:`stacked.fit_members`): one compilation, one resumable run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from cascade_jax import baselines, difficulty, distill, stacked, trainer
from cascade_jax.configs import ModelConfig, OptimConfig, RunConfig
from cascade_jax.pipeline.config import PipelineConfig
from cascade_jax.pipeline.layout import RunLayout, ce_member, dar_member, seed_member


class StagePreempted(KeyboardInterrupt):
    """A stage stopped on SIGTERM or Ctrl-C after saving a checkpoint; running the pipeline again resumes it."""


def _run(config: PipelineConfig) -> RunConfig:
    return RunConfig(progress=config.progress, eval_batch_size=config.eval.batch_size,
                     eval_every=-1 if config.dev_eval == "end" else 0)


def _seeds(config: PipelineConfig, count: int | None = None) -> list[tuple[int, int]]:
    """``(seed index, seed)`` of each seed of a method."""
    return [(i, config.seed + i) for i in range(config.seeds if count is None else count)]


def small_variants(config: PipelineConfig) -> tuple[stacked.Variant, ...]:
    """The small members of a group: cross entropy alone (DAR weight 0) and DAR at each margin, in every seed."""
    out = []
    for i, seed in _seeds(config):
        out.append(stacked.Variant(name=ce_member(i), seed=seed, dar_weight=0.0))
        out += [stacked.Variant(name=dar_member(m, i), seed=seed, margin=m, dar_weight=config.dar.weight)
                for m in config.dar.margins]
    return tuple(out)


def _fit_set(config: PipelineConfig, out, *, model: ModelConfig, optim: OptimConfig, loss: trainer.LossConfig,
             variants, difficulty_file=None, teacher=None) -> None:
    result = stacked.fit_members(stacked.MemberSetConfig(
        output_dir=str(out), model=model, data=config.data, optim=optim, loss=loss, run=_run(config),
        variants=variants, difficulty_file=None if difficulty_file is None else str(difficulty_file),
        teacher=None if teacher is None else str(teacher)))
    if result.status != "finished":
        raise StagePreempted(f"{out}: pre-empted")


def _labels(config: PipelineConfig, which: str, model: ModelConfig, settings) -> None:
    result = difficulty.label_difficulty(difficulty.LabelConfig(
        output_dir=str(RunLayout(config.output_dir).labels_dir(which)), model=model, data=config.data,
        optim=settings.optim, run=_run(config), folds=settings.folds, seeds=settings.seeds, seed=config.seed))
    if result.status != "finished":
        raise StagePreempted("difficulty labelling pre-empted")


def shallow_model(config: PipelineConfig, layers: int | None = None) -> ModelConfig:
    return ModelConfig(name=config.large_model, num_layers=layers or config.trunc_layers)


def stage_labels(config: PipelineConfig) -> None:
    _labels(config, "small", ModelConfig(name=config.small_model), config.labels)


def stage_labels_shallow(config: PipelineConfig) -> None:
    _labels(config, "shallow", shallow_model(config), config.labels_shallow)


def stage_small(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    _fit_set(config, layout.group("small"), model=ModelConfig(name=config.small_model), optim=config.members,
             loss=trainer.LossConfig(kind="dar", dar_weight=config.dar.weight), variants=small_variants(config),
             difficulty_file=layout.labels_file("small"))


def _with_epochs(optim: OptimConfig, epochs: float | None) -> OptimConfig:
    """``optim`` with its epochs replaced by a method's own setting (``large_epochs``, ``pkd_epochs``) when given."""
    return optim if epochs is None else dataclasses.replace(optim, epochs=epochs)


def stage_large(config: PipelineConfig) -> None:
    _fit_set(config, RunLayout(config.output_dir).group("large"), model=ModelConfig(name=config.large_model),
             optim=_with_epochs(config.members, config.large_epochs), loss=trainer.LossConfig(kind="ce"),
             variants=tuple(stacked.Variant(name=seed_member(i), seed=s) for i, s in _seeds(config,
                                                                                              config.large_seeds)))


def stage_shallow(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    _fit_set(config, layout.group("shallow"), model=shallow_model(config), optim=config.shallow,
             loss=trainer.LossConfig(kind="dar", dar_weight=config.dar.weight), variants=small_variants(config),
             difficulty_file=layout.labels_file("shallow"))


def stage_kd(config: PipelineConfig) -> None:
    if not config.kd.member:
        return
    layout = RunLayout(config.output_dir)
    _fit_set(config, layout.group("kd"), model=shallow_model(config), optim=config.shallow,
             loss=trainer.LossConfig(kind="kd", temperature=config.kd.temperature, kd_alpha=config.kd.alpha),
             variants=tuple(stacked.Variant(name=seed_member(i), seed=s) for i, s in _seeds(config)),
             teacher=layout.member_model("large", seed_member(0)))


def stage_bert_kl(config: PipelineConfig) -> None:
    layout = RunLayout(config.output_dir)
    for k in config.bert_kl_layers:
        if k == config.trunc_layers:
            continue  # The truncated member trained without DAR is BERT-kL for this k.
        _fit_set(config, layout.baseline(f"bert-{k}L"), model=shallow_model(config, k), optim=config.shallow,
                 loss=trainer.LossConfig(kind="ce"),
                 variants=tuple(stacked.Variant(name=seed_member(i), seed=s) for i, s in _seeds(config)))


def _train_exits(config: PipelineConfig, mode: str, optim: OptimConfig) -> None:
    layout = RunLayout(config.output_dir)
    for i, seed in _seeds(config):
        result = baselines.train_exits(baselines.ExitTrainConfig(
            output_dir=str(layout.baseline_run(mode, i)),
            model=ModelConfig(name=str(layout.member_model("large", seed_member(0)))), data=config.data,
            optim=optim, run=RunConfig(progress=config.progress), mode=mode, seed=seed))
        if result.status != "finished":
            raise StagePreempted(f"{mode}: stopped at step {result.step} (pre-empted)")


def stage_deebert(config: PipelineConfig) -> None:
    _train_exits(config, "deebert", config.exits)


def stage_pabee(config: PipelineConfig) -> None:
    _train_exits(config, "pabee", config.pabee)


def stage_fastbert(config: PipelineConfig) -> None:
    _train_exits(config, "fastbert", config.exits)


def _distilled(config: PipelineConfig, name: str, train: Callable, make_config: Callable) -> None:
    layout = RunLayout(config.output_dir)
    large = str(layout.member_model("large", seed_member(0)))
    for i, seed in _seeds(config):
        result = train(make_config(str(layout.baseline_run(name, i)), large, seed))
        if result.status != "finished":
            raise StagePreempted(f"{name}: stopped at step {result.step} (pre-empted)")


def stage_pkd(config: PipelineConfig) -> None:
    run = RunConfig(progress=config.progress)
    optim = _with_epochs(config.distill, config.pkd_epochs)
    _distilled(config, "bert-pkd", distill.train_pkd, lambda out, large, seed: distill.PKDConfig(
        output_dir=out, model=ModelConfig(name=large, num_layers=config.distill_layers), data=config.data,
        optim=optim, run=run, teacher=large, temperature=config.kd.temperature, seed=seed))


def stage_theseus(config: PipelineConfig) -> None:
    run = RunConfig(progress=config.progress)
    _distilled(config, "theseus", distill.train_theseus, lambda out, large, seed: distill.TheseusConfig(
        output_dir=out, model=ModelConfig(name=large, num_layers=config.distill_layers), data=config.data,
        optim=config.distill, successor_optim=config.distill, run=run, predecessor=large, seed=seed))


def stage_pd(config: PipelineConfig) -> None:
    """The BERT-PD analogue: the complete compact pretrained model (the small model) distilled from the large
    member on the task (Turc et al.'s recipe), in every seed, as one stacked run."""
    layout = RunLayout(config.output_dir)
    _fit_set(config, layout.baseline("bert-pd"), model=ModelConfig(name=config.small_model), optim=config.distill,
             loss=trainer.LossConfig(kind="kd", temperature=config.kd.temperature, kd_alpha=config.kd.alpha),
             variants=tuple(stacked.Variant(name=seed_member(i), seed=s) for i, s in _seeds(config)),
             teacher=layout.member_model("large", seed_member(0)))


TRAINING_STAGES: dict[str, Callable[[PipelineConfig], None]] = {
    "labels": stage_labels, "labels-shallow": stage_labels_shallow, "small": stage_small, "large": stage_large,
    "shallow": stage_shallow, "kd": stage_kd, "bert-kl": stage_bert_kl, "deebert": stage_deebert,
    "pabee": stage_pabee, "fastbert": stage_fastbert, "pkd": stage_pkd, "theseus": stage_theseus, "pd": stage_pd,
}
