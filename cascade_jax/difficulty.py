"""Difficulty labels (paper Sec. 4.1): K folds x S seeds of the small model, as one vmapped run or one at a time.

  label_difficulty(LabelConfig(output_dir, folds=8, seeds=5, ...)) -> LabelResult      # resumable
  make_plan(config) -> stacked.Plan (members: K x S FoldMembers; trained by stacked.train_group)
  aggregate(plan, logits, seeds) -> columns;  write_labels(dir, columns)

An example is easy (difficulty 0) only if every one of the S members that held it out predicts it right. Members,
lock-step batches, the vmapped step and the files written are described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from cascade_jax import checkpoints, configs, data, metrics, models, parallel, stacked, trainer
from cascade_jax.configs import DataConfig, ModelConfig, OptimConfig, RunConfig, section
from cascade_jax.preemption import Preemption
from cascade_jax.run_log import RunLog

LABEL_COLUMNS = ("difficulty", "seeds_wrong", "num_seeds", "confidence", "fold")
CONFIG_FILE = "config.json"
_FOLD_STREAM = 0x466F6C64  # "Fold": keeps the fold shuffle apart from other uses of the same seed.
ResumeMismatchError = configs.ResumeMismatchError


LABEL_LENGTH_GROUPING = 50  # data.length_grouping of a labelling run unless set (the pipeline's presets use it too)


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Everything that defines a labelling run (saved as ``config.json``).

    ``model`` is the small cascade member; ``data.train_subset`` labels only ``data.subset(train, n)`` (the sample
    a member trained with the same setting takes); ``optim`` is each member's fine-tuning (``batch_size`` rows per
    member per step). Member seeds are ``seed + s``; ``seed`` also assigns the folds.
    """

    output_dir: str = configs.field("", "where labels, summary and checkpoints go; reused to resume")
    model: ModelConfig = section(ModelConfig)
    # Stacked members pad every lock-step to the longest of their batches; length grouping (whose chunk order does
    # not depend on the seed) puts batches of one length bucket at the same step, so they pad as little as one.
    data: DataConfig = section(DataConfig, length_grouping=LABEL_LENGTH_GROUPING)
    optim: OptimConfig = section(OptimConfig)
    run: RunConfig = section(RunConfig, eval_batch_size=64)
    folds: int = configs.field(8, "K: each member holds out one fold (paper: 8)")
    seeds: int = configs.field(5, "S: seeds per fold; easy only if all are right (paper: 5)")
    seed: int = configs.field(0, "fold assignment; member seeds are SEED .. SEED+S-1")
    chunk: int | None = configs.field(None, "train at most C members at once (default: all K x S); the same labels, "
                                            "less memory (minilm-l3: ~280 MB a member in float32, plus activations)")
    sequential: bool | None = configs.field(
        None, "train members one at a time without vmap (the reference), or (--no-sequential) as one vmapped run; "
              "automatic: one at a time on CPU unless --chunk is given (as fast or faster there, with one member's "
              "memory: docs/bench_difficulty.md), vmapped on GPU/TPU; a run folder keeps the mode it was made with")

    def __post_init__(self):
        if not self.output_dir:
            raise configs.ConfigError("LabelConfig needs an output_dir")
        if self.folds < 2:
            raise configs.ConfigError(f"folds must be at least 2 (each member needs a held-out fold), got {self.folds}")
        if self.seeds < 1:
            raise configs.ConfigError(f"seeds must be at least 1, got {self.seeds}")
        if self.chunk is not None and self.chunk < 1:
            raise configs.ConfigError(f"chunk must be a positive number of members, got {self.chunk}")
        if self.seed < 0:
            raise configs.ConfigError(f"seed must be non-negative, got {self.seed}")

    @property
    def num_members(self) -> int:
        return self.folds * self.seeds


# ----------------------------------------------------------------------------------------------------------------
# Folds and members.


@dataclasses.dataclass(frozen=True, eq=False)
class Member(stacked.Member):
    """One model of the ensemble: fold ``fold`` held out, seed ``seed`` (= config seed + ``seed_index``).

    ``train_positions`` and ``heldout_positions`` are sorted positions in the training split.
    """

    fold: int = 0
    seed_index: int = 0
    heldout_positions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


def assign_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold (int64 [n], values in ``[0, folds)``) of each of ``n`` examples; a pure function of its arguments.

    A seeded permutation dealt round-robin: every fold has ``n // folds`` or ``n // folds + 1`` examples.
    """
    if folds < 1 or n < folds:
        raise ValueError(f"cannot split {n} examples into {folds} non-empty folds")
    order = np.random.default_rng([int(seed), _FOLD_STREAM]).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return fold


def plan_members(n: int, folds: int, seeds: int, seed: int) -> list[Member]:
    """The ``folds x seeds`` members, fold-major (member ``k * seeds + s``)."""
    fold = assign_folds(n, folds, seed)
    positions = np.arange(n, dtype=np.int64)
    return [
        Member(index=k * seeds + s, fold=k, seed_index=s, seed=seed + s, name=f"fold {k}, seed {seed + s}",
               train_positions=positions[fold != k], heldout_positions=positions[fold == k])
        for k in range(folds) for s in range(seeds)
    ]


def load_train_split(config: LabelConfig) -> data.Encoded:
    """The tokenised training split the run labels (``data.subset`` of it when ``config.subset`` is set)."""
    d = config.data
    tokenizer = models.tokenizer_for(config.model.name)
    train = data.encode_split(d.task, "train", d.source, tokenizer=tokenizer, max_length=d.max_length)
    return data.subset(train, d.train_subset)


def make_plan(config: LabelConfig, train: data.Encoded | None = None) -> stacked.Plan:
    """Load the data and the model, assign folds and count the lock-step steps of ``config``."""
    task = data.get_task(config.data.task)
    if task.is_regression:
        raise configs.ConfigError(f"task {task.name!r} is a regression task: difficulty labels need right/wrong "
                                  f"predictions")
    train = load_train_split(config) if train is None else train
    members = plan_members(len(train), config.folds, config.seeds, config.seed)
    return stacked.make_plan(config.model, config.data, config.optim, config.run, trainer.LossConfig(kind="ce"),
                             train, members, seed=config.seed)


# ----------------------------------------------------------------------------------------------------------------
# Labels.


def aggregate(plan: stacked.Plan, logits_by_member: dict[int, np.ndarray], seeds: int) -> dict[str, np.ndarray]:
    """The label columns (``id`` and :data:`LABEL_COLUMNS`, split order) from every member's held-out logits.

    Raises ``ValueError`` unless every example was predicted by exactly ``S`` members.
    """
    n, labels = len(plan.train), plan.train.labels
    wrong = np.zeros(n, np.int64)
    count = np.zeros(n, np.int64)
    conf = np.zeros(n, np.float64)
    fold = np.full(n, -1, np.int64)
    for member in plan.members:
        logits = logits_by_member[member.index]
        pos = member.heldout_positions
        if logits.shape[0] != len(pos):
            raise ValueError(f"member {member.index} has {logits.shape[0]} predictions for {len(pos)} examples")
        np.add.at(wrong, pos, logits.argmax(-1) != labels[pos])
        np.add.at(count, pos, 1)
        np.add.at(conf, pos, metrics.softmax(logits).max(-1))
        fold[pos] = member.fold
    if not (count == seeds).all():
        bad = np.flatnonzero(count != seeds)
        raise ValueError(f"{bad.size} examples were not predicted by exactly {seeds} members, "
                         f"e.g. positions {bad[:10].tolist()} (counts {count[bad[:10]].tolist()})")
    return {
        "id": plan.train.ids.astype(np.int64),
        "difficulty": (wrong > 0).astype(np.int64),
        "seeds_wrong": wrong,
        "num_seeds": count,
        "confidence": (conf / count).astype(np.float32),
        "fold": fold,
    }


def _cell(x) -> Any:
    return float(x) if isinstance(x, (np.floating, float)) else int(x)


def write_labels(directory: str | os.PathLike, columns: dict[str, np.ndarray]) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``difficulty.jsonl`` and ``difficulty.csv`` (same rows; float32 confidences as exact decimals)."""
    directory = pathlib.Path(directory)
    names = ["id", *LABEL_COLUMNS]
    rows = [[_cell(columns[c][i]) for c in names] for i in range(len(columns["id"]))]
    jsonl, csv = directory / "difficulty.jsonl", directory / "difficulty.csv"
    _write_atomic(jsonl, "".join(json.dumps(dict(zip(names, r))) + "\n" for r in rows))
    _write_atomic(csv, ",".join(names) + "\n" + "".join(",".join(repr(v) for v in r) + "\n" for r in rows))
    return jsonl, csv


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else x


# ----------------------------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class LabelResult:
    """What :func:`label_difficulty` did."""

    status: str  # "finished" or "preempted"
    output_dir: pathlib.Path
    labels_path: pathlib.Path | None
    summary: dict | None


def _save_group(path: pathlib.Path, group: Sequence[Member], logits: list[np.ndarray], info: dict) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, members=np.asarray([m.index for m in group]), sizes=np.asarray([len(x) for x in logits]),
             logits=np.concatenate(logits), info=np.asarray(json.dumps(info)))
    os.replace(tmp, path)


def _load_group(path: pathlib.Path) -> tuple[dict[int, np.ndarray], dict]:
    with np.load(path) as f:
        split = np.split(f["logits"], np.cumsum(f["sizes"])[:-1])
        return dict(zip(f["members"].tolist(), split)), json.loads(str(f["info"]))


def resolve_mode(config: LabelConfig, platform: str) -> LabelConfig:
    """``config`` with ``sequential`` decided when it is None (automatic): the mode its output folder was made with
    if it holds a run (so that a run resumes the same way on any machine), else one member at a time on CPU (unless
    ``chunk`` asks for vmapped groups) and vmapped on an accelerator (``platform``: the devices' platform)."""
    if config.sequential is not None:
        return config
    mode = configs.saved_choice(config.output_dir, CONFIG_FILE, "sequential",
                                lambda v: v is None or isinstance(v, bool), "true, false or null")
    if isinstance(mode, bool):
        return dataclasses.replace(config, sequential=mode)
    return dataclasses.replace(config, sequential=platform == "cpu" and config.chunk is None)


def label_difficulty(
    config: LabelConfig,
    *,
    dp: parallel.DataParallel | None = None,
    on_step: Callable[[int, int, dict], None] | None = None,
    train: data.Encoded | None = None,
) -> LabelResult:
    """Label every training example easy/hard as ``config`` says; resumes from ``config.output_dir``.

    ``on_step(group, step, per-member metrics)`` runs after every step (tests use it to interrupt a run).
    ``train`` overrides the split that :func:`load_train_split` would load. SIGTERM saves a checkpoint of the
    current group and returns with ``status="preempted"``.
    """
    wall0 = time.perf_counter()
    out = pathlib.Path(config.output_dir)
    dp = dp or parallel.DataParallel(config.run.backend)
    is_writer = jax.process_index() == 0
    config = resolve_mode(config, dp.platform)
    configs.check_resume(out, CONFIG_FILE, config)
    plan = make_plan(config, train)
    groups = [[m] for m in plan.members] if config.sequential else stacked.groups_of(plan.members, config.chunk)
    is_stacked = not config.sequential
    if is_writer:
        configs.write(out, CONFIG_FILE, config)

    logits: dict[int, np.ndarray] = {}
    infos: list[dict] = []
    todo = []
    for g, group in enumerate(groups):
        file = out / "groups" / f"{g:03d}" / "predictions.npz"
        if file.exists():
            got, info = _load_group(file)
            logits.update(got)
            infos.append(info)
        else:
            todo.append(g)

    from tqdm.auto import tqdm

    members_done = sum(len(group) for g, group in enumerate(groups) if g not in todo)
    bar = tqdm(total=plan.total_steps * len(plan.members), initial=members_done * plan.total_steps,
               disable=not (config.run.progress and is_writer), unit="member-step", dynamic_ncols=True)
    log = RunLog(out, enabled=is_writer, tensorboard=False)
    status = "finished"
    preemption = Preemption()
    try:
        with preemption.installed():
            for g in todo:
                if preemption.agreed():
                    status = "preempted"
                    break
                group, gdir = groups[g], out / "groups" / f"{g:03d}"
                ckpt = checkpoints.Checkpoints(gdir, max_to_keep=config.run.keep_checkpoints)
                try:  # Closing waits for in-flight saves, also when training raised.
                    resumed_at = ckpt.latest_step() or 0
                    bar.update(resumed_at * len(group))
                    state, status, train_seconds = stacked.train_group(
                        plan, group, dp, stacked=is_stacked, ckpt=ckpt, log=log, bar=bar, group_index=g,
                        preemption=preemption,
                        on_step=None if on_step is None else (lambda s, m, g=g: on_step(g, s, m)),
                    )
                finally:
                    ckpt.close()
                if status == "preempted":
                    break
                t0 = time.perf_counter()
                predicted = stacked.predict_group(plan, group, state.params, dp,
                                                  [m.heldout_positions for m in group], stacked=is_stacked)
                info = {"group": g, "members": [m.index for m in group], "train_seconds": train_seconds,
                        "predict_seconds": time.perf_counter() - t0, "resumed_at_step": resumed_at}
                logits.update({m.index: x for m, x in zip(group, predicted)})
                infos.append(info)
                if is_writer:
                    _save_group(gdir / "predictions.npz", group, predicted, info)
                    shutil.rmtree(gdir / "checkpoints", ignore_errors=True)
                    shutil.rmtree(gdir / "best", ignore_errors=True)
    finally:
        bar.close()
        log.close()
    if status == "preempted":
        return LabelResult(status=status, output_dir=out, labels_path=None, summary=None)

    columns = aggregate(plan, logits, config.seeds)
    summary = make_summary(config, plan, columns, logits, infos, dp)
    summary["wall_seconds_this_run"] = time.perf_counter() - wall0
    labels_path = None
    if is_writer:
        labels_path, _ = write_labels(out, columns)
        _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return LabelResult(status=status, output_dir=out, labels_path=labels_path or out / "difficulty.jsonl",
                       summary=summary)


def make_summary(config: LabelConfig, plan: stacked.Plan, columns: dict[str, np.ndarray],
                 logits: dict[int, np.ndarray], infos: list[dict], dp: parallel.DataParallel) -> dict:
    """The run's ``summary.json``: settings, label statistics, per-member held-out accuracy, DIS and times."""
    labels = plan.train.labels
    per_member = []
    for m in plan.members:
        acc = float(np.mean(logits[m.index].argmax(-1) == labels[m.heldout_positions]))
        per_member.append({"member": m.index, "fold": m.fold, "seed": m.seed, "train_examples": len(m.train_positions),
                           "heldout_examples": len(m.heldout_positions), "heldout_accuracy": acc})
    dis = metrics.difficulty_inversion_score(columns["confidence"], columns["difficulty"])
    histogram = np.bincount(columns["seeds_wrong"], minlength=config.seeds + 1)
    return {
        "task": config.data.task, "model": config.model.name, "num_layers": config.model.num_layers,
        "examples": len(plan.train), "folds": config.folds, "seeds": config.seeds, "seed": config.seed,
        "epochs": config.optim.epochs, "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
        "batch_size": config.optim.batch_size, "learning_rate": config.optim.learning_rate,
        "members": len(plan.members), "chunk": config.chunk, "sequential": config.sequential,
        "groups": len(infos), "devices": dp.num_devices, "backend": dp.backend,
        "share_hard": float(np.mean(columns["difficulty"])),
        "seeds_wrong_histogram": histogram.tolist(),
        "mean_confidence": float(np.mean(columns["confidence"])),
        "dis": _nan_to_none(dis),
        "dis_note": "metrics.difficulty_inversion_score(confidence, difficulty) of the held-out predictions "
                    "(ties count half; null when all examples are easy or all hard)",
        "mean_heldout_accuracy": float(np.mean([p["heldout_accuracy"] for p in per_member])),
        "per_member": per_member,
        "train_seconds": float(sum(i["train_seconds"] for i in infos)),
        "predict_seconds": float(sum(i["predict_seconds"] for i in infos)),
    }
