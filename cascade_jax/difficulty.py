"""Difficulty labels (paper Sec. 4.1): K folds x S seeds of the small model, trained together as one vmapped run.

The training split is cut into ``K`` folds (:func:`assign_folds`: a seeded shuffle dealt round-robin, so fold sizes
differ by at most one). Member ``(k, s)`` of the ``K x S`` ensemble is the small model fine-tuned with seed ``s`` on
every example not in fold ``k``; it then predicts fold ``k``. Each example is thus predicted by exactly the ``S``
members that held it out, and is labelled::

    seeds_wrong = #{s : member (fold(x), s) predicts x wrong}       in [0, S]
    difficulty  = 1 if seeds_wrong > 0 else 0                        (easy only if every seed was right)
    confidence  = mean over those S members of max_y p(y | x)        (float32)

Members and seeds. Member ``m = k * S + s`` has seed ``config.seed + s``, used exactly as :func:`trainer.fit` uses
its seed: it initialises what the checkpoint lacks (classifier, and the pooler of minilm-l3), gives the dropout key
``PRNGKey(seed)`` and the data order (epoch ``e`` visits the member's own training positions in the order
``data.epoch_permutation(n_k, seed, e)``). The step is :func:`trainer.make_train_step` with plain cross entropy and
AdamW as :func:`trainer.adamw` builds it.

Lock-step. Members' training sets differ in size by at most one, so their steps per epoch differ by at most one.
All members run ``steps_per_epoch = max_k ceil(n_k / B)`` steps an epoch; a member that has run out of examples in
an epoch gets an all-padding batch (``valid=False``), and its step is skipped exactly (parameters, optimiser state
and step counter unchanged, so it is the same as not running it; the select this takes is compiled in only when
some member needs it). One learning-rate schedule serves all members, with the lock-step total. The batches of
all members in a step are padded to one length (the longest of their buckets), which changes nothing but float
rounding: padded positions are masked.

Vectorisation and devices. Parameters, optimiser states, step counters and RNG keys are stacked on a leading
member axis; ``jax.vmap`` of the per-member step makes one program, compiled once per batch shape, that trains all
members of a group. It is then mapped over devices by :class:`parallel.DataParallel` exactly as the fine-tuning
step is, with the *per-member batch* split over the ``"data"`` axis (``batch_axis=1``: batches are
``[M, B, L]``, each device gets ``[M, B / devices, L]``) and the members vmapped inside each device. The
collectives need no change: inside ``vmap`` a ``psum``/``pmean`` over ``"data"`` reduces each member's values over
devices separately, so every member sees the gradient of its own global batch, as in a single data-parallel run.
Why this axis: members differ in data, not in shapes, and the batch axis is the one that scales with devices
(any device count that divides ``B``, independently of ``K x S``). The price is that every device holds all members
of a group (parameters, two Adam moments, gradients) and all-reduces their gradients each step; splitting members
over devices instead would need no collectives, but ties the device count to the member count. As in the trainer,
dropout keys fold in the device index, so with dropout on, runs on different device counts draw different masks.
When the members do not fit (each holds parameters, two Adam moments and gradients: ~280 MB for minilm-l3's 17.4M
float32 parameters, plus activations), ``chunk=C`` trains them in groups of at most ``C`` members, one group after
another: the same labels, since members never interact (only float rounding differs, as batch shapes do); each
distinct group size is one more compilation. On a CPU, vmapping buys no speed (see docs/bench_difficulty.md); it
is meant for accelerators, where one program with M times the work per kernel fills the device.

Files, under ``output_dir``::

    config.json                    the LabelConfig (a resumed run must match it)
    groups/<g>/checkpoints/<step>  orbax checkpoints of group g's stacked state (deleted once the group is done)
    groups/<g>/predictions.npz     group g's held-out logits (its completion marker)
    difficulty.jsonl, difficulty.csv   one row per training example: id, difficulty, seeds_wrong, num_seeds,
                                   confidence, fold (readable by ``data.join_by_id``)
    summary.json                   K, S, epochs, steps, share hard, per-member held-out accuracy, DIS, times
    metrics.jsonl                  per-member training loss and accuracy every ``log_every`` steps

Resume: run again with the same config; finished groups are read back, the current group restarts from its last
checkpoint (the batches, dropout keys and updates are a pure function of the step), so the labels are identical to
an uninterrupted run's. SIGTERM saves a checkpoint and returns with ``status="preempted"``.

Public API::

    LabelConfig(output_dir, model="minilm-l3", folds=8, seeds=5, ...)
    label_difficulty(config, *, dp=None, on_step=None) -> LabelResult        # the whole thing, resumable
    assign_folds(n, folds, seed) -> int64 [n];  plan_members(n, folds, seeds, seed) -> list[Member]
    make_plan(config) -> Plan;  train_group(plan, members, dp, stacked=True) -> (host state, status, seconds)
    predict_group(plan, members, params, dp, stacked=True) -> list of held-out logits
    aggregate(plan, logits_by_member) -> dict of columns;  write_labels(directory, columns) -> paths
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

from cascade_jax import checkpoints, data, metrics, models, parallel, trainer
from cascade_jax.run_log import RunLog

LABEL_COLUMNS = ("difficulty", "seeds_wrong", "num_seeds", "confidence", "fold")
_FOLD_STREAM = 0x466F6C64  # "Fold": keeps the fold shuffle apart from other uses of the same seed.
# Settings that may change between a run and its resumption (they do not change the labels).
_RESUME_FREE = ("progress", "log_every", "backend", "checkpoint_every", "keep_checkpoints")


class ResumeMismatchError(ValueError):
    """The output directory holds a labelling run with other settings."""


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Everything that defines a labelling run (saved as ``config.json``).

    Attributes:
      output_dir: where labels, summary and checkpoints go; reused to resume.
      model, num_layers: the small cascade member (a built-in name or model directory; keep the first k layers).
      task, source, max_length, buckets: the data, as for :class:`trainer.TrainConfig`.
      subset: label only ``data.subset(train, subset)`` (the fixed random sample ``--train-subset`` of finetune
        takes too), for quick runs; None labels the whole training split.
      folds, seeds: K and S (paper: 8 and 5). seed: fold assignment; member seeds are ``seed + s``.
      epochs, max_steps, batch_size, learning_rate, warmup_ratio, weight_decay, max_grad_norm, dropout, dtype: the
        fine-tuning of each member (``batch_size`` rows per member per step).
      chunk: train at most this many members at once (None: all ``K x S``).
      sequential: train members one at a time with the un-vmapped step (the reference the vmapped run must
        equal; slower).
      backend: data-parallel mapping (``shard_map`` or ``pmap``).
      eval_batch_size: rows per member per prediction batch.
      checkpoint_every: steps between checkpoints (0: once per epoch); keep_checkpoints: how many to keep.
      log_every: steps between training-metric records; progress: show a progress bar.
    """

    output_dir: str
    model: str = "minilm-l3"
    num_layers: int | None = None
    task: str = "rotten_tomatoes"
    source: str | None = None
    subset: int | None = None
    max_length: int = 128
    buckets: tuple[int, ...] = data.DEFAULT_BUCKETS
    folds: int = 8
    seeds: int = 5
    seed: int = 0
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    dropout: bool = True
    dtype: str = "float32"
    chunk: int | None = None
    sequential: bool = False
    backend: str = "shard_map"
    eval_batch_size: int = 64
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2 (each member needs a held-out fold), got {self.folds}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be a positive number of members, got {self.chunk}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be a positive number of examples, got {self.subset}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        object.__setattr__(self, "buckets", tuple(self.buckets))

    @property
    def num_members(self) -> int:
        return self.folds * self.seeds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelConfig":
        return cls(**d)


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
            _, params = models.from_pretrained(
                self.config.model, num_labels=self.num_labels, num_layers=self.config.num_layers,
                dtype=_dtype(self.config.dtype), seed=seed,
            )
            self._init_params[seed] = jax.device_get(params)
        return self._init_params[seed]

    def init_state(self, member: Member) -> trainer.TrainState:
        """A member's initial host :class:`trainer.TrainState` (what :func:`trainer.fit` starts from)."""
        params = self.init_params(member.seed)
        return trainer.TrainState(
            step=np.asarray(0, np.int32), params=params, opt_state=jax.device_get(self.tx.init(params)),
            rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(member.seed))),
        )

    def functions(self, dp: parallel.DataParallel, stacked: bool) -> tuple[Callable, Callable]:
        """The mapped ``(train_step, predict_step)``: shared by every group, and by every plan of this process with
        the same model, optimiser settings and devices, so that they share compilations."""
        c = self.config
        return _mapped_functions(self.module, (c.learning_rate, c.warmup_ratio, c.weight_decay, c.max_grad_norm),
                                 self.total_steps, c.dropout, self.skip_empty, stacked, dp)

    @property
    def skip_empty(self) -> bool:
        """Whether some member runs out of examples before the others in an epoch (and so needs skipped steps)."""
        return any(data.steps_per_epoch(len(m.train_positions), self.config.batch_size) < self.steps_per_epoch
                   for m in self.members)


def _optimizer(optim: tuple[float, float, float, float], total_steps: int) -> optax.GradientTransformation:
    lr, warmup, decay, clip = optim
    return trainer.adamw(lr, total_steps, warmup_ratio=warmup, weight_decay=decay, max_grad_norm=clip)


@functools.lru_cache(maxsize=8)
def _mapped_functions(module, optim, total_steps, dropout, skip_empty, stacked, dp) -> tuple[Callable, Callable]:
    step = make_member_step(module, _optimizer(optim, total_steps), dropout, skip_empty)
    predict = make_predict_step(module, stacked)
    axis = 1 if stacked else 0
    return (dp.map_step(jax.vmap(step) if stacked else step, batch_axis=axis),
            dp.map_step(predict, donate_state=False, batch_axis=axis))


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def load_train_split(config: LabelConfig) -> data.Encoded:
    """The tokenised training split the run labels (``data.subset`` of it when ``config.subset`` is set)."""
    tokenizer = models.tokenizer_for(config.model)
    train = data.encode_split(config.task, "train", config.source, tokenizer=tokenizer, max_length=config.max_length)
    return data.subset(train, config.subset)


def make_plan(config: LabelConfig, train: data.Encoded | None = None) -> Plan:
    """Load the data and the model, assign folds and count the lock-step steps of ``config``."""
    task = data.get_task(config.task)
    if not task.label_names:
        raise ValueError(f"task {config.task!r} is a regression task: difficulty labels need right/wrong predictions")
    train = load_train_split(config) if train is None else train
    members = plan_members(len(train), config.folds, config.seeds, config.seed)
    spe = max(data.steps_per_epoch(len(m.train_positions), config.batch_size) for m in members)
    total = max(1, math.ceil(config.epochs * spe))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    module, params = models.from_pretrained(config.model, num_labels=len(task.label_names),
                                            num_layers=config.num_layers, dtype=_dtype(config.dtype), seed=config.seed)
    optim = (config.learning_rate, config.warmup_ratio, config.weight_decay, config.max_grad_norm)
    return Plan(config=config, train=train, members=members, module=module,
                tx=_optimizer(optim, total), num_labels=len(task.label_names),
                steps_per_epoch=spe, total_steps=total, _init_params={config.seed: jax.device_get(params)})


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
    batch = data.make_batch(plan.train, positions, size, buckets=plan.config.buckets)
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
    size = plan.config.batch_size
    batches = [_batch_of(plan, member_train_positions(m, step, plan.steps_per_epoch, size), size) for m in group]
    return _group_batch(plan, batches, stacked)


def _check_divisible(rows: int, dp: parallel.DataParallel, what: str) -> None:
    parts = dp.num_devices * (jax.process_count() if dp.backend == "pmap" else 1)
    if rows % parts:
        raise ValueError(f"{what} {rows} must be divisible by the {parts} devices it is split over")


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
    preemption=None,
) -> tuple[trainer.TrainState, str, float]:
    """Train ``group`` for ``plan.total_steps`` lock-steps; returns ``(host state, status, train seconds)``.

    ``stacked=True`` trains the members together (vmapped, state with a leading member axis); ``stacked=False``
    needs a one-member group and runs the un-vmapped step. With ``ckpt`` it resumes from and saves checkpoints
    (``status`` is ``"preempted"`` when ``preemption`` (a ``trainer._Preemption``) stopped it). ``on_step(step, per-member metrics)``
    runs after every step (tests use it to interrupt).
    """
    config = plan.config
    if not stacked and len(group) != 1:
        raise ValueError(f"an un-stacked group holds one member, got {len(group)}")
    _check_divisible(config.batch_size, dp, "batch_size")
    step_fn, _ = plan.functions(dp, stacked)
    host = [plan.init_state(m) for m in group]
    state = stack_trees(host) if stacked else host[0]
    start, seconds = 0, 0.0
    if ckpt is not None and ckpt.latest_step() is not None:
        state, meta = ckpt.restore_state(state)
        start, seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
    state = dp.replicate(state)
    ckpt_every = config.checkpoint_every or plan.steps_per_epoch
    status, pending, t0 = "finished", [], time.perf_counter()

    def save(step):
        ckpt.save_state(step, dp.unreplicate(state), {
            "step": step, "train_seconds": seconds + time.perf_counter() - t0, "members": [m.index for m in group],
        })

    for step in range(start, plan.total_steps):
        batch = group_train_batch(plan, group, step, stacked)
        state, m = step_fn(state, dp.shard_batch(batch, 1 if stacked else 0))
        done = step + 1
        pending.append(m)
        if on_step is not None:
            on_step(done, _per_member(dp.unreplicate(m), stacked))
        stop = preemption is not None and preemption.agreed()  # Every process stops at the same step.
        saving = ckpt is not None and (done % ckpt_every == 0 or done == plan.total_steps or stop)
        if saving or done % config.log_every == 0 or done == plan.total_steps:
            _check_and_log(pending, dp, stacked, group, done, group_index, log, bar)  # Never save a NaN state.
            pending = []
        if bar is not None:
            bar.update(len(group))
        if saving:
            save(done)
        if stop and done < plan.total_steps:
            status = "preempted"
            break
    return dp.unreplicate(state), status, seconds + time.perf_counter() - t0


def _per_member(m: dict, stacked: bool) -> dict[str, np.ndarray]:
    return {k: np.atleast_1d(np.asarray(v, np.float64)) if stacked else np.asarray([v], np.float64)
            for k, v in m.items()}


def _check_and_log(pending, dp, stacked, group, step, group_index, log, bar) -> None:
    """Raise on a non-finite loss of any member among ``pending`` steps; log the last step's per-member values."""
    host = [_per_member(dp.unreplicate(m), stacked) for m in pending]
    for i, h in enumerate(host):
        bad = np.flatnonzero(~np.isfinite(h["loss"]))
        if bad.size:
            member = group[int(bad[0])]
            raise trainer.NonFiniteLossError(
                f"the training loss of member {member.index} (fold {member.fold}, seed {member.seed}) became "
                f"{h['loss'][bad[0]]} at step {step - len(host) + i + 1}; lower the learning rate, or check the data"
            )
    last = host[-1]
    if log is not None:
        log.write(step, "train", {"group": group_index, "members": [m.index for m in group],
                                  **{k: last[k].tolist() for k in ("loss", "accuracy", "grad_norm", "examples")},
                                  "mean_loss": float(np.mean(last["loss"]))})
    if bar is not None:
        bar.set_postfix(group=group_index, loss=f"{float(np.mean(last['loss'])):.4f}")


def predict_group(plan: Plan, group: Sequence[Member], params: Any, dp: parallel.DataParallel, *,
                  stacked: bool = True) -> list[np.ndarray]:
    """Each member's logits (float32 ``[n_heldout, C]``, in ``heldout_positions`` order) on its held-out fold.

    ``params`` are host parameters, stacked over the group's members when ``stacked``.
    """
    _, predict_fn = plan.functions(dp, stacked)
    parts = dp.num_devices * (jax.process_count() if dp.backend == "pmap" else 1)
    size = -(-plan.config.eval_batch_size // parts) * parts
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


def _softmax_max(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(-1, keepdims=True)).max(-1)


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
        np.add.at(conf, pos, _softmax_max(logits))
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


def _check_resume(out: pathlib.Path, config: LabelConfig) -> None:
    file = out / "config.json"
    if not file.exists():
        return
    saved = json.loads(file.read_text())
    now = json.loads(json.dumps(config.to_dict()))
    diff = sorted(k for k in set(saved) | set(now) if k not in _RESUME_FREE and k != "output_dir"
                  and saved.get(k) != now.get(k))
    if diff:
        raise ResumeMismatchError(f"{out} holds a labelling run with other settings ({', '.join(diff)}: "
                         f"{[saved.get(k) for k in diff]} there, {[now.get(k) for k in diff]} now); "
                         f"use another output directory")


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
    dp = dp or parallel.DataParallel(config.backend)
    is_writer = jax.process_index() == 0
    _check_resume(out, config)
    plan = make_plan(config, train)
    groups = [[m] for m in plan.members] if config.sequential else groups_of(plan.members, config.chunk)
    stacked = not config.sequential
    if is_writer:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

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
               disable=not (config.progress and is_writer), unit="member-step", dynamic_ncols=True)
    log = RunLog(out, enabled=is_writer, tensorboard=False)
    status = "finished"
    preemption = trainer._Preemption()
    try:
        with preemption.installed():
            for g in todo:
                if preemption.agreed():
                    status = "preempted"
                    break
                group, gdir = groups[g], out / "groups" / f"{g:03d}"
                ckpt = checkpoints.Checkpoints(gdir, max_to_keep=config.keep_checkpoints)
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
        "task": config.task, "model": config.model, "num_layers": config.num_layers,
        "examples": len(plan.train), "folds": config.folds, "seeds": config.seeds, "seed": config.seed,
        "epochs": config.epochs, "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
        "batch_size": config.batch_size, "learning_rate": config.learning_rate,
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
