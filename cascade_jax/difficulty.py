"""Difficulty labels (paper Sec. 4.1): K folds x S seeds of the small model, trained together as one vmapped run.

  label_difficulty(LabelConfig(output_dir, folds=8, seeds=5, ...)) -> LabelResult      # resumable
  make_plan(config) -> Plan;  train_group(plan, members, dp) -> (state, status, seconds)
  predict_group(plan, members, params, dp);  aggregate(plan, logits) -> columns;  write_labels(dir, columns)

An example is easy (difficulty 0) only if every one of the S members that held it out predicts it right. Members,
lock-step batches, the vmapped step and the files written are described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cascade_jax import checkpoints, configs, data, metrics, models, parallel, trainer
from cascade_jax.configs import DataConfig, ModelConfig, OptimConfig, RunConfig, section
from cascade_jax.loop import Every, run_steps
from cascade_jax.preemption import Preemption
from cascade_jax.run_log import RunLog

LABEL_COLUMNS = ("difficulty", "seeds_wrong", "num_seeds", "confidence", "fold")
CONFIG_FILE = "config.json"
_FOLD_STREAM = 0x466F6C64  # "Fold": keeps the fold shuffle apart from other uses of the same seed.
ResumeMismatchError = configs.ResumeMismatchError


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Everything that defines a labelling run (saved as ``config.json``).

    ``model`` is the small cascade member; ``data.train_subset`` labels only ``data.subset(train, n)`` (the sample
    a member trained with the same setting takes); ``optim`` is each member's fine-tuning (``batch_size`` rows per
    member per step). Member seeds are ``seed + s``; ``seed`` also assigns the folds.
    """

    output_dir: str = configs.field("", "where labels, summary and checkpoints go; reused to resume")
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    run: RunConfig = section(RunConfig, eval_batch_size=64)
    folds: int = configs.field(8, "K: each member holds out one fold (paper: 8)")
    seeds: int = configs.field(5, "S: seeds per fold; easy only if all are right (paper: 5)")
    seed: int = configs.field(0, "fold assignment; member seeds are SEED .. SEED+S-1")
    chunk: int | None = configs.field(None, "train at most C members at once (default: all K x S); the same labels, "
                                            "less memory (minilm-l3: ~280 MB a member in float32, plus activations)")
    sequential: bool = configs.field(False, "train members one at a time without vmap (the reference; slower)")

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
class Member:
    """One model of the ensemble: fold ``fold`` held out, seed ``seed`` (= config seed + ``seed_index``).

    ``train_positions`` and ``heldout_positions`` are sorted positions in the training split.
    """

    index: int
    fold: int
    seed_index: int
    seed: int
    train_positions: np.ndarray
    heldout_positions: np.ndarray


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
        Member(index=k * seeds + s, fold=k, seed_index=s, seed=seed + s,
               train_positions=positions[fold != k], heldout_positions=positions[fold == k])
        for k in range(folds) for s in range(seeds)
    ]


def groups_of(members: Sequence[Member], chunk: int | None) -> list[list[Member]]:
    """Consecutive groups of at most ``chunk`` members (one group when ``chunk`` is None)."""
    size = len(members) if chunk is None else chunk
    return [list(members[i:i + size]) for i in range(0, len(members), size)]


# ----------------------------------------------------------------------------------------------------------------
# The plan: data, model, optimiser and the compiled functions of a run.


@dataclasses.dataclass(eq=False)
class Plan:
    """What every group of a run shares. Build it with :func:`make_plan`."""

    config: LabelConfig
    train: data.Encoded
    members: list[Member]
    module: models.BertForSequenceClassification
    tx: optax.GradientTransformation
    num_labels: int
    steps_per_epoch: int
    total_steps: int
    _init_params: dict = dataclasses.field(default_factory=dict)

    def init_params(self, seed: int) -> Any:
        """Host parameters of a member with seed ``seed`` (pretrained encoder; classifier etc. from the seed)."""
        if seed not in self._init_params:
            m = self.config.model
            _, params = models.from_pretrained(m.name, num_labels=self.num_labels, num_layers=m.num_layers,
                                               dtype=m.jnp_dtype, seed=seed)
            self._init_params[seed] = jax.device_get(params)
        return self._init_params[seed]

    def init_state(self, member: Member) -> trainer.TrainState:
        """A member's initial host :class:`trainer.TrainState` (what :func:`trainer.fit` starts from)."""
        return trainer.new_state(self.init_params(member.seed), self.tx, member.seed)

    def functions(self, dp: parallel.DataParallel, stacked: bool) -> tuple[Callable, Callable]:
        """The mapped ``(train_step, predict_step)``: shared by every group, and by every plan of this process with
        the same model, optimiser settings and devices, so that they share compilations."""
        return _mapped_functions(self.module, self.config.optim, self.largest_train_set, self.config.model.dropout,
                                 self.skip_empty, stacked, dp)

    @property
    def largest_train_set(self) -> int:
        """Examples of the largest member's training set: what an epoch of the lock-step schedule covers."""
        return max(len(m.train_positions) for m in self.members)

    @property
    def skip_empty(self) -> bool:
        """Whether some member runs out of examples before the others in an epoch (and so needs skipped steps)."""
        return any(data.steps_per_epoch(len(m.train_positions), self.config.optim.batch_size) < self.steps_per_epoch
                   for m in self.members)


@functools.lru_cache(maxsize=8)
def _mapped_functions(module, optim: OptimConfig, num_examples: int, dropout, skip_empty, stacked,
                      dp) -> tuple[Callable, Callable]:
    step = make_member_step(module, configs.make_optimizer(optim, num_examples)[0], dropout, skip_empty)
    predict = make_predict_step(module, stacked)
    axis = 1 if stacked else 0
    return (dp.map_step(jax.vmap(step) if stacked else step, batch_axis=axis),
            dp.map_step(predict, donate_state=False, batch_axis=axis))


def load_train_split(config: LabelConfig) -> data.Encoded:
    """The tokenised training split the run labels (``data.subset`` of it when ``config.subset`` is set)."""
    d = config.data
    tokenizer = models.tokenizer_for(config.model.name)
    train = data.encode_split(d.task, "train", d.source, tokenizer=tokenizer, max_length=d.max_length)
    return data.subset(train, d.train_subset)


def make_plan(config: LabelConfig, train: data.Encoded | None = None) -> Plan:
    """Load the data and the model, assign folds and count the lock-step steps of ``config``."""
    task = data.get_task(config.data.task)
    if task.is_regression:
        raise configs.ConfigError(f"task {task.name!r} is a regression task: difficulty labels need right/wrong "
                                  f"predictions")
    train = load_train_split(config) if train is None else train
    members = plan_members(len(train), config.folds, config.seeds, config.seed)
    largest = max(len(m.train_positions) for m in members)
    tx, total = configs.make_optimizer(config.optim, largest)
    m = config.model
    module, params = models.from_pretrained(m.name, num_labels=task.num_labels, num_layers=m.num_layers,
                                            dtype=m.jnp_dtype, seed=config.seed)
    return Plan(config=config, train=train, members=members, module=module, tx=tx, num_labels=task.num_labels,
                steps_per_epoch=data.steps_per_epoch(largest, config.optim.batch_size), total_steps=total,
                _init_params={config.seed: jax.device_get(params)})


# ----------------------------------------------------------------------------------------------------------------
# Per-member step and prediction (per-device code in the pmap style, see parallel.py).


def make_member_step(module: models.BertForSequenceClassification, tx: optax.GradientTransformation,
                     dropout: bool = True, skip_empty: bool = True) -> Callable:
    """``step(state, batch) -> (state, metrics)`` of ONE member: :func:`trainer.make_train_step` with cross
    entropy, except that (with ``skip_empty``) a batch with no valid row anywhere leaves the state exactly as it
    was. The skip is a select over the whole state (about 5% of a minilm-l3 step on CPU), so plans whose members
    all have the same steps per epoch leave it out.

    ``jax.vmap`` of it trains stacked members; its collectives (over the ``"data"`` axis) then act per member.
    """
    step = trainer.make_train_step(module, tx, trainer.LossConfig(kind="ce"), dropout=dropout)
    if not skip_empty:
        return step

    def member_step(state: trainer.TrainState, batch):
        new_state, m = step(state, batch)
        keep = m["examples"] > 0  # Global rows of this member's batch: the same on every device.
        new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new_state, state)
        return new_state, m

    return member_step


def make_predict_step(module: models.BertForSequenceClassification, stacked: bool) -> Callable:
    """``predict(params, batch) -> (logits, {})``: this device's rows' logits, gathered over the ``"data"`` axis
    so that the output is replicated (``[M, B, C]`` stacked, ``[B, C]`` not). The empty dict fills the metrics
    slot of :meth:`parallel.DataParallel.map_step`."""
    fn = models.logits_fn(module)
    fn = jax.vmap(fn) if stacked else fn
    axis = 1 if stacked else 0

    def predict(params, batch):
        logits = fn(params, batch)
        return jax.lax.all_gather(logits, parallel.AXIS, axis=axis, tiled=True), {}

    return predict


# ----------------------------------------------------------------------------------------------------------------
# Batches.


def member_train_positions(member: Member, step: int, steps_per_epoch: int, batch_size: int) -> np.ndarray:
    """Training-split positions in ``member``'s batch at lock-step ``step`` (empty past the end of its epoch)."""
    epoch, j = divmod(step, steps_per_epoch)
    order = data.epoch_permutation(len(member.train_positions), member.seed, epoch)
    return member.train_positions[order[j * batch_size:(j + 1) * batch_size]]


def _widen(batch: dict[str, np.ndarray], width: int, pad_id: int) -> dict[str, np.ndarray]:
    out = dict(batch)
    extra = width - batch["input_ids"].shape[1]
    if extra:
        for k, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            out[k] = np.pad(batch[k], ((0, 0), (0, extra)), constant_values=fill)
    return out


def stack_batches(batches: Sequence[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Stack members' batches to ``[M, B, ...]``, padding every one to the longest length among them."""
    width = max(b["input_ids"].shape[1] for b in batches)
    widened = [_widen(b, width, pad_id) for b in batches]
    return {k: np.stack([b[k] for b in widened]) for k in widened[0]}


def _batch_of(plan: Plan, positions: np.ndarray, size: int) -> dict[str, np.ndarray]:
    batch = data.make_batch(plan.train, positions, size, buckets=plan.config.data.buckets)
    batch.pop("id")
    return batch


def _group_batch(plan: Plan, batches: list[dict], stacked: bool) -> dict[str, np.ndarray]:
    """The host batch of a group: this process's rows, stacked over members when ``stacked``."""
    batch = stack_batches(batches, plan.train.pad_id) if stacked else batches[0]
    axis = 1 if stacked else 0
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    per = batch["valid"].shape[axis] // count
    return {k: np.take(v, np.arange(index * per, (index + 1) * per), axis=axis) for k, v in batch.items()}


def group_train_batch(plan: Plan, group: Sequence[Member], step: int, stacked: bool = True) -> dict[str, np.ndarray]:
    """The host batch (this process's rows) of ``group`` at lock-step ``step``: ``[M, B, L]`` when ``stacked``
    (place it with ``dp.shard_batch(batch, 1)``), else one member's ``[B, L]``."""
    size = plan.config.optim.batch_size
    batches = [_batch_of(plan, member_train_positions(m, step, plan.steps_per_epoch, size), size) for m in group]
    return _group_batch(plan, batches, stacked)


# ----------------------------------------------------------------------------------------------------------------
# Training and predicting a group of members.


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stack host pytrees of equal structure on a new leading (member) axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def train_group(
    plan: Plan,
    group: Sequence[Member],
    dp: parallel.DataParallel,
    *,
    stacked: bool = True,
    ckpt: checkpoints.Checkpoints | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    log: RunLog | None = None,
    bar=None,
    group_index: int = 0,
    preemption: Preemption | None = None,
) -> tuple[trainer.TrainState, str, float]:
    """Train ``group`` for ``plan.total_steps`` lock-steps; returns ``(host state, status, train seconds)``.

    ``stacked=True`` trains the members together (vmapped, state with a leading member axis); ``stacked=False``
    needs a one-member group and runs the un-vmapped step. With ``ckpt`` it resumes from and saves checkpoints
    (``status`` is ``"preempted"`` when ``preemption`` stopped it). ``on_step(step, per-member metrics)`` runs after
    every step (tests use it to interrupt).
    """
    config = plan.config
    if not stacked and len(group) != 1:
        raise ValueError(f"an un-stacked group holds one member, got {len(group)}")
    trainer.check_batch_size(config.optim.batch_size, dp)
    step_fn, _ = plan.functions(dp, stacked)
    host = [plan.init_state(m) for m in group]
    state = stack_trees(host) if stacked else host[0]
    start, seconds = 0, 0.0
    if ckpt is not None and ckpt.latest_step() is not None:
        state, meta = ckpt.restore_state(state)
        start, seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
    t0 = time.perf_counter()

    def save(step, state, seen):
        ckpt.save_state(step, dp.unreplicate(state), {
            "step": step, "train_seconds": seconds + time.perf_counter() - t0, "members": [m.index for m in group],
        })

    def write_log(step, state, seen):
        last = seen[-1][1]
        if log is not None:
            log.write(step, "train", {"group": group_index, "members": [m.index for m in group],
                                      **{k: last[k].tolist() for k in ("loss", "accuracy", "grad_norm", "examples")},
                                      "mean_loss": float(np.mean(last["loss"]))})
        if bar is not None:
            bar.set_postfix(group=group_index, loss=f"{float(np.mean(last['loss'])):.4f}")

    def describe_nonfinite(step, loss):
        bad = int(np.flatnonzero(~np.isfinite(loss))[0])
        member = group[bad]
        return (f"the training loss of member {member.index} (fold {member.fold}, seed {member.seed}) became "
                f"{loss[bad]} at step {step}; lower the learning rate, or check the data")

    actions = [Every(config.run.log_every, write_log)]
    if bar is not None:
        actions.insert(0, Every(1, lambda step, state, seen: bar.update(len(group)), needs_metrics=False))
    if ckpt is not None:
        actions.append(Every(config.run.checkpoint_every or plan.steps_per_epoch, save, on_stop=True))
    axis = 1 if stacked else 0
    batches = (dp.shard_batch(group_train_batch(plan, group, step, stacked), axis)
               for step in range(start, plan.total_steps))
    result = run_steps(step_fn, batches, dp.replicate(state), start=start, total=plan.total_steps, actions=actions,
                       preemption=preemption, on_step=on_step, describe_nonfinite=describe_nonfinite,
                       metrics_of=lambda m: _per_member(dp.unreplicate(m), stacked))
    return dp.unreplicate(result.state), result.status, seconds + time.perf_counter() - t0


def _per_member(m: dict, stacked: bool) -> dict[str, np.ndarray]:
    return {k: np.atleast_1d(np.asarray(v, np.float64)) if stacked else np.asarray([v], np.float64)
            for k, v in m.items()}


def predict_group(plan: Plan, group: Sequence[Member], params: Any, dp: parallel.DataParallel, *,
                  stacked: bool = True) -> list[np.ndarray]:
    """Each member's logits (float32 ``[n_heldout, C]``, in ``heldout_positions`` order) on its held-out fold.

    ``params`` are host parameters, stacked over the group's members when ``stacked``.
    """
    _, predict_fn = plan.functions(dp, stacked)
    parts = dp.num_devices * (jax.process_count() if dp.backend == "pmap" else 1)
    size = -(-plan.config.run.eval_batch_size // parts) * parts
    placed = dp.replicate(params)
    steps = max(-(-len(m.heldout_positions) // size) for m in group)
    out: list[list[np.ndarray]] = [[] for _ in group]
    pending = []
    for j in range(steps):
        batches = [_batch_of(plan, m.heldout_positions[j * size:(j + 1) * size], size) for m in group]
        logits, _ = predict_fn(placed, dp.shard_batch(_group_batch(plan, batches, stacked), 1 if stacked else 0))
        pending.append((logits, [b["valid"] for b in batches]))  # Fetch after dispatching every batch.
    for logits, valid in pending:
        host = np.asarray(dp.unreplicate(logits), np.float32)
        host = host if stacked else host[None]
        for i, v in enumerate(valid):
            out[i].append(host[i][v])
    return [np.concatenate(o) for o in out]


# ----------------------------------------------------------------------------------------------------------------
# Labels.


def aggregate(plan: Plan, logits_by_member: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
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
    if not (count == plan.config.seeds).all():
        bad = np.flatnonzero(count != plan.config.seeds)
        raise ValueError(f"{bad.size} examples were not predicted by exactly {plan.config.seeds} members, "
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
    configs.check_resume(out, CONFIG_FILE, config)
    plan = make_plan(config, train)
    groups = [[m] for m in plan.members] if config.sequential else groups_of(plan.members, config.chunk)
    stacked = not config.sequential
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
                    state, status, train_seconds = train_group(
                        plan, group, dp, stacked=stacked, ckpt=ckpt, log=log, bar=bar, group_index=g,
                        preemption=preemption,
                        on_step=None if on_step is None else (lambda s, m, g=g: on_step(g, s, m)),
                    )
                finally:
                    ckpt.close()
                if status == "preempted":
                    break
                t0 = time.perf_counter()
                predicted = predict_group(plan, group, state.params, dp, stacked=stacked)
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

    columns = aggregate(plan, logits)
    summary = make_summary(plan, columns, logits, infos, dp)
    summary["wall_seconds_this_run"] = time.perf_counter() - wall0
    labels_path = None
    if is_writer:
        labels_path, _ = write_labels(out, columns)
        _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return LabelResult(status=status, output_dir=out, labels_path=labels_path or out / "difficulty.jsonl",
                       summary=summary)


def make_summary(plan: Plan, columns: dict[str, np.ndarray], logits: dict[int, np.ndarray], infos: list[dict],
                 dp: parallel.DataParallel) -> dict:
    """The run's ``summary.json``: settings, label statistics, per-member held-out accuracy, DIS and times."""
    config, labels = plan.config, plan.train.labels
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
