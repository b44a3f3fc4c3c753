"""Members that differ only in numbers (seed, data positions, DAR margin and weight, KD weight), trained as one
vmapped run: parameters, optimiser states and keys stacked on a leading member axis, one compiled step.

  Member(index, seed, train_positions, hparams={"margin": .5, "dar_weight": .5})
  make_plan(model, data_cfg, optim, run, loss, train, members) -> Plan
  train_group(plan, members, dp, ckpt=...) -> (host state, status, seconds)       # resumable, through loop.py
  predict_group(plan, members, params, dp, positions) -> [logits per member]

Difficulty labelling (K folds x S seeds) and the pipeline's seeds and margins (:func:`fit_members`) both use it;
the design (lock-step batches, the member axis inside the data-parallel mapping) is in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cascade_jax import checkpoints, configs, data, evaluation, models, parallel, trainer, xla
from cascade_jax.configs import DataConfig, ModelConfig, OptimConfig, RunConfig, section
from cascade_jax.loop import Every, run_steps
from cascade_jax.preemption import Preemption
from cascade_jax.run_log import RunLog

HPARAMS = ("margin", "dar_weight", "kd_alpha")


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One model of a stacked run: its seed, its training positions (sorted positions in the training split) and
    the numbers of its loss (``hparams``: any of :data:`HPARAMS`; the rest come from the plan's LossConfig)."""

    index: int
    seed: int
    train_positions: np.ndarray
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    name: str = ""


def groups_of(members: Sequence[Member], chunk: int | None) -> list[list[Member]]:
    """Consecutive groups of at most ``chunk`` members (one group when ``chunk`` is None)."""
    size = len(members) if chunk is None else chunk
    return [list(members[i:i + size]) for i in range(0, len(members), size)]


# ----------------------------------------------------------------------------------------------------------------
# The plan: data, model, optimiser and the compiled functions of a run.


@dataclasses.dataclass(eq=False)
class Plan:
    """What every group of a stacked run shares. Build it with :func:`make_plan`."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    run: RunConfig
    loss: trainer.LossConfig
    train: data.Encoded
    members: list[Member]
    module: models.BertForSequenceClassification
    tx: optax.GradientTransformation
    num_labels: int
    steps_per_epoch: int
    total_steps: int
    extras: tuple[str, ...] = ()
    teacher: Any = None  # (module, params) of a KD teacher
    _init_params: dict = dataclasses.field(default_factory=dict)
    _build_stacked: Callable | None = None

    def init_params(self, seed: int) -> Any:
        """Host parameters of a member with seed ``seed`` (pretrained encoder; classifier etc. from the seed)."""
        if seed not in self._init_params:
            m = self.model
            _, params = models.from_pretrained(m.name, num_labels=self.num_labels, num_layers=m.num_layers,
                                               dtype=m.jnp_dtype, seed=seed)
            self._init_params[seed] = jax.device_get(params)
        return self._init_params[seed]

    def hparams_of(self, member: Member) -> dict[str, np.ndarray] | None:
        """The member's loss numbers as float32 scalars (None when the plan varies none)."""
        if not self.varied:
            return None
        base = {"margin": self.loss.margin, "dar_weight": self.loss.dar_weight, "kd_alpha": self.loss.kd_alpha}
        return {k: np.float32(member.hparams.get(k, base[k])) for k in HPARAMS}

    @property
    def varied(self) -> bool:
        return any(m.hparams for m in self.members)

    def init_state(self, member: Member) -> trainer.TrainState:
        """A member's initial host :class:`trainer.TrainState` (what :func:`trainer.fit` starts from)."""
        return trainer.new_state(self.init_params(member.seed), self.tx, member.seed, self.hparams_of(member))

    def init_stacked_state(self, group: Sequence[Member]) -> trainer.TrainState:
        """The initial state of ``group`` stacked on a leading member axis, as device arrays: equal to
        ``stack_trees([init_state(m) for m in group])``, built by one compiled function (each distinct seed's
        parameters go in once; the optimiser state is ``vmap(tx.init)`` of the stacked parameters). Stacking
        per-member host states instead cost 11.5 s for 8 minilm-l3 members on a 2-core CPU (3.1 s this way).
        The arrays stay on the device, so that the first training step reuses their buffers (a round trip
        through the host made it allocate and copy the whole stacked state once more)."""
        seeds = sorted({m.seed for m in group})
        index = np.asarray([seeds.index(m.seed) for m in group])
        keys = np.stack([trainer.initial_rng(m.seed) for m in group])
        hparams = stack_trees([self.hparams_of(m) for m in group]) if self.varied else None
        if self._build_stacked is None:
            tx = self.tx

            def build(per_seed, index, keys, hparams):
                params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[index], *per_seed)
                return trainer.TrainState(step=jnp.zeros(index.shape, jnp.int32), params=params,
                                          opt_state=jax.vmap(tx.init)(params), rng=keys, hparams=hparams)

            self._build_stacked = jax.jit(build)
        return self._build_stacked([self.init_params(s) for s in seeds], index, keys, hparams)

    def functions(self, dp: parallel.DataParallel, stacked: bool) -> tuple[Callable, Callable]:
        """The mapped ``(train_step, predict_step)``: shared by every group, and by every plan of this process with
        the same model, loss, optimiser settings and devices, so that they share compilations."""
        teacher = None if self.teacher is None else self.teacher[0]
        return _mapped_functions(self.module, self.optim, self.largest_train_set, self.model.dropout, self.loss,
                                 teacher, self.skip_empty, stacked, dp)

    @property
    def largest_train_set(self) -> int:
        """Examples of the largest member's training set: what an epoch of the lock-step schedule covers."""
        return max(len(m.train_positions) for m in self.members)

    @property
    def skip_empty(self) -> bool:
        """Whether some member runs out of examples before the others in an epoch (and so needs skipped steps)."""
        return any(data.steps_per_epoch(len(m.train_positions), self.optim.batch_size) < self.steps_per_epoch
                   for m in self.members)


@functools.lru_cache(maxsize=8)
def _mapped_functions(module, optim: OptimConfig, num_examples: int, dropout, loss, teacher, skip_empty, stacked,
                      dp) -> tuple[Callable, Callable]:
    step = make_member_step(module, configs.make_optimizer(optim, num_examples)[0], loss, teacher, dropout,
                            skip_empty)
    predict = make_predict_step(module, stacked)
    axis = 1 if stacked else 0
    if stacked:
        step = jax.vmap(step, in_axes=(0, 0) + ((None,) if teacher is not None else ()))
    return (dp.map_step(step, batch_axis=axis, num_extra=int(teacher is not None)),
            dp.map_step(predict, donate_state=False, batch_axis=axis, compiler_options=xla.compiler_options()))


def make_plan(model: ModelConfig, data_config: DataConfig, optim: OptimConfig, run: RunConfig,
              loss: trainer.LossConfig, train: data.Encoded, members: list[Member], *, seed: int = 0,
              teacher: str | None = None) -> Plan:
    """The plan of ``members`` (lock-step: an epoch is the largest member's training set)."""
    task = data.get_task(data_config.task)
    largest = max(len(m.train_positions) for m in members)
    tx, total = configs.make_optimizer(optim, largest)
    module, params = models.from_pretrained(model.name, num_labels=task.num_labels, num_layers=model.num_layers,
                                            dtype=model.jnp_dtype, seed=seed)
    models.check_inputs_fit(module.config, max_length=data_config.max_length, max_token_id=_max_token(train),
                            source=model.name)
    teacher_pair = None
    if loss.uses_kd:
        if not teacher:
            raise configs.ConfigError("loss 'kd' needs a teacher: pass teacher (a saved model directory or name)")
        t_module, t_params = models.from_pretrained(teacher, num_labels=task.num_labels, dtype=model.jnp_dtype)
        models.check_inputs_fit(t_module.config, max_length=data_config.max_length, max_token_id=_max_token(train),
                                source=teacher)
        teacher_pair = (t_module, jax.device_get(t_params))
    return Plan(model=model, data=data_config, optim=optim, run=run, loss=loss, train=train, members=members,
                module=module, tx=tx, num_labels=task.num_labels,
                steps_per_epoch=data.steps_per_epoch(largest, optim.batch_size), total_steps=total,
                extras=trainer.batch_extras(train, loss.uses_dar), teacher=teacher_pair,
                _init_params={seed: jax.device_get(params)})


def _max_token(enc: data.Encoded) -> int | None:
    return int(enc.input_ids.max()) if len(enc.input_ids) else None


# ----------------------------------------------------------------------------------------------------------------
# Per-member step and prediction (per-device code in the pmap style, see parallel.py).


def make_member_step(module: models.BertForSequenceClassification, tx: optax.GradientTransformation,
                     loss: trainer.LossConfig = trainer.LossConfig(), teacher=None, dropout: bool = True,
                     skip_empty: bool = True) -> Callable:
    """``step(state, batch[, teacher_params]) -> (state, metrics)`` of ONE member: :func:`trainer.make_train_step`
    (its loss numbers from ``state.hparams`` when set), except that (with ``skip_empty``) a batch with no valid row
    anywhere leaves the state exactly as it was. The skip is a select over the whole state (about 5% of a
    minilm-l3 step on CPU), so plans whose members all have the same steps per epoch leave it out.

    ``jax.vmap`` of it trains stacked members; its collectives (over the ``"data"`` axis) then act per member.
    """
    step = trainer.make_train_step(module, tx, loss, teacher, dropout=dropout)
    if not skip_empty:
        return step

    def member_step(state: trainer.TrainState, batch, *extra):
        new_state, m = step(state, batch, *extra)
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


def member_train_positions(member: Member, step: int, steps_per_epoch: int, batch_size: int, *,
                           lengths: np.ndarray | None = None, length_grouping: int = 0,
                           buckets: Sequence[int] = data.DEFAULT_BUCKETS) -> np.ndarray:
    """Training-split positions in ``member``'s batch at lock-step ``step`` (empty past the end of its epoch): batch
    ``j`` of epoch ``e`` of ``data.train_batch_indices`` over the member's own positions, seeded by its seed.
    ``lengths`` (of the whole training split) are needed with ``length_grouping``."""
    epoch, j = divmod(step, steps_per_epoch)
    own = None if not length_grouping else lengths[member.train_positions]
    batches = data.train_batch_indices(len(member.train_positions), batch_size, seed=member.seed, epoch=epoch,
                                       start_step=j, lengths=own, length_grouping=length_grouping, buckets=buckets)
    return member.train_positions[batches[0] if batches else np.zeros(0, np.int64)]


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


def _batch_of(plan: Plan, enc: data.Encoded, positions: np.ndarray, size: int, extras=()) -> dict[str, np.ndarray]:
    batch = data.make_batch(enc, positions, size, buckets=plan.data.buckets, extras=extras)
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
    size = plan.optim.batch_size
    grouping = plan.data.length_grouping
    lengths = plan.train.lengths if grouping else None
    buckets = data.bucket_set(plan.data.buckets, plan.train.max_length)
    batches = [_batch_of(plan, plan.train, member_train_positions(m, step, plan.steps_per_epoch, size,
                                                                  lengths=lengths, length_grouping=grouping,
                                                                  buckets=buckets),
                         size, plan.extras) for m in group]
    return _group_batch(plan, batches, stacked)


# ----------------------------------------------------------------------------------------------------------------
# Training and predicting a group of members.


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stack host pytrees of equal structure on a new leading (member) axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def unstack_tree(tree: Any, index: int) -> Any:
    """Member ``index`` of a stacked host pytree."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[index], tree)


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
    extra_actions: Sequence[Every] = (),
    describe: Callable[[Member], str] = lambda m: f"member {m.index} ({m.name or f'seed {m.seed}'})",
    save_meta: Callable[[], dict] = dict,
) -> tuple[trainer.TrainState, str, float]:
    """Train ``group`` for ``plan.total_steps`` lock-steps; returns ``(host state, status, train seconds)``.

    ``stacked=True`` trains the members together (vmapped, state with a leading member axis); ``stacked=False``
    needs a one-member group and runs the un-vmapped step. With ``ckpt`` it resumes from and saves checkpoints
    (``status`` is ``"preempted"`` when ``preemption`` stopped it). ``on_step(step, per-member metrics)`` runs after
    every step (tests use it to interrupt); ``extra_actions`` run before the checkpoint (e.g. evaluation), and
    ``save_meta()`` adds to each checkpoint's meta.
    """
    if not stacked and len(group) != 1:
        raise ValueError(f"an un-stacked group holds one member, got {len(group)}")
    trainer.check_batch_size(plan.optim.batch_size, dp)
    step_fn, _ = plan.functions(dp, stacked)
    extra = () if plan.teacher is None else (dp.replicate(plan.teacher[1]),)
    state = plan.init_stacked_state(group) if stacked else plan.init_state(group[0])
    start, seconds = 0, 0.0
    if ckpt is not None and ckpt.latest_step() is not None:
        state, meta = ckpt.restore_state(state)
        start, seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
    t0 = time.perf_counter()

    def save(step, state, seen):
        ckpt.save_state(step, dp.unreplicate(state), {
            "step": step, "train_seconds": seconds + time.perf_counter() - t0, "members": [m.index for m in group],
            **save_meta()})

    def write_log(step, state, seen):
        last = seen[-1][1]
        if log is not None:
            log.write(step, "train", {"group": group_index, "members": [m.index for m in group],
                                      **{k: last[k].tolist() for k in last if k != "examples"},
                                      "examples": last["examples"].tolist(),
                                      "mean_loss": float(np.mean(last["loss"]))})
        if bar is not None:
            bar.set_postfix(group=group_index, loss=f"{float(np.mean(last['loss'])):.4f}")

    def describe_nonfinite(step, loss):
        bad = int(np.flatnonzero(~np.isfinite(loss))[0])
        return (f"the training loss of {describe(group[bad])} became {loss[bad]} at step {step}; lower the "
                f"learning rate, or check the data")

    actions = [Every(plan.run.log_every, write_log), *extra_actions]
    if bar is not None:
        actions.insert(0, Every(1, lambda step, state, seen: bar.update(len(group)), needs_metrics=False))
    if ckpt is not None:
        actions.append(Every(plan.run.checkpoint_every or plan.steps_per_epoch, save, on_stop=True))
    axis = 1 if stacked else 0
    batches = (dp.shard_batch(group_train_batch(plan, group, step, stacked), axis)
               for step in range(start, plan.total_steps))
    result = run_steps(lambda s, b: step_fn(s, b, *extra), batches, dp.replicate(state, donated=True), start=start,
                       total=plan.total_steps, actions=actions, preemption=preemption, on_step=on_step,
                       describe_nonfinite=describe_nonfinite,
                       metrics_of=lambda m: _per_member(dp.unreplicate(m), stacked))
    return dp.unreplicate(result.state), result.status, seconds + time.perf_counter() - t0


def _per_member(m: dict, stacked: bool) -> dict[str, np.ndarray]:
    return {k: np.atleast_1d(np.asarray(v, np.float64)) if stacked else np.asarray([v], np.float64)
            for k, v in m.items()}


def predict_group(plan: Plan, group: Sequence[Member], params: Any, dp: parallel.DataParallel,
                  positions: Sequence[np.ndarray], *, enc: data.Encoded | None = None,
                  stacked: bool = True) -> list[np.ndarray]:
    """Each member's logits (float32 ``[len(positions[i]), C]``, in that order) on its ``positions`` of ``enc``
    (default: the training split). ``params`` are host parameters, stacked over the group when ``stacked``.

    Each member's positions are batched in order of length (every batch padded to its own bucket; the members'
    j-th batches then have similar lengths, so their stack pads little) and the logits put back in the given order.
    """
    enc = plan.train if enc is None else enc
    orders = [np.argsort(enc.lengths[np.asarray(p, np.int64)], kind="stable") for p in positions]
    positions = [np.asarray(p, np.int64)[o] for p, o in zip(positions, orders)]
    _, predict_fn = plan.functions(dp, stacked)
    parts = dp.num_devices * (jax.process_count() if dp.backend == "pmap" else 1)
    size = -(-plan.run.eval_batch_size // parts) * parts
    placed = dp.replicate(params)
    steps = max(-(-len(p) // size) for p in positions)
    out: list[list[np.ndarray]] = [[] for _ in group]
    pending = []
    for j in range(steps):
        batches = [_batch_of(plan, enc, p[j * size:(j + 1) * size], size) for p in positions]
        logits, _ = predict_fn(placed, dp.shard_batch(_group_batch(plan, batches, stacked), 1 if stacked else 0))
        pending.append((logits, [b["valid"] for b in batches]))  # Fetch after dispatching every batch.
    for logits, valid in pending:
        host = np.asarray(dp.unreplicate(logits), np.float32)
        host = host if stacked else host[None]
        for i, v in enumerate(valid):
            out[i].append(host[i][v])
    result = []
    for o, order in zip(out, orders):
        sorted_logits = np.concatenate(o)
        logits = np.empty_like(sorted_logits)
        logits[order] = sorted_logits
        result.append(logits)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Members of a cascade in several seeds and loss numbers, as one resumable run.


@dataclasses.dataclass(frozen=True)
class Variant:
    """One member of a :class:`MemberSetConfig`: its name (its model goes to ``OUTPUT/<name>/model``), seed, and the
    loss numbers it changes (None: the set's LossConfig)."""

    name: str = configs.field("", "the member's name (its folder)")
    seed: int = configs.field(0, "initialisation of new heads, data order and dropout")
    margin: float | None = configs.field(None, "DAR margin")
    dar_weight: float | None = configs.field(None, "DAR weight (0: cross entropy alone)")
    kd_alpha: float | None = configs.field(None, "weight of the KD term (0: no distillation)")

    def hparams(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in HPARAMS if getattr(self, k) is not None}


@dataclasses.dataclass(frozen=True)
class MemberSetConfig:
    """Members that share a model, data, optimiser and loss kind and differ only in numbers (``variants``), trained
    as vmapped groups of ``chunk`` members (saved as ``config.json``; resumable like ``fit``). ``chunk=None`` is
    decided per run by :func:`resolve_chunk`: one member at a time on CPU, all at once on GPU/TPU."""

    output_dir: str = configs.field("", "where the members, checkpoints and logs go; reused to resume")
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    loss: trainer.LossConfig = section(trainer.LossConfig)
    run: RunConfig = section(RunConfig)
    variants: tuple[Variant, ...] = configs.field((), "the members")
    difficulty_file: str | None = configs.field(None, "difficulty labels keyed by example id, for dar")
    teacher: str | None = configs.field(None, "teacher model directory for kd")
    chunk: int | None = configs.field(
        None, "train at most C members at once; automatic: one at a time on CPU (faster there, with one member's "
              "memory: docs/bench_difficulty.md), all at once on GPU/TPU; a run folder keeps the grouping it was "
              "made with")

    def __post_init__(self):
        if not self.output_dir or not self.variants:
            raise configs.ConfigError("MemberSetConfig needs an output_dir and at least one variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or not all(names):
            raise configs.ConfigError(f"variant names must be distinct and non-empty, got {names}")
        if self.chunk is not None and self.chunk < 1:
            raise configs.ConfigError(f"chunk must be a positive number of members, got {self.chunk}")


@dataclasses.dataclass
class MemberSetResult:
    status: str  # "finished" or "preempted"
    model_dirs: dict[str, pathlib.Path]
    best: dict[str, dict | None]


def _member_dir(config: MemberSetConfig, name: str) -> pathlib.Path:
    return pathlib.Path(config.output_dir) / name


def resolve_chunk(config: MemberSetConfig, platform: str) -> MemberSetConfig:
    """``config`` with ``chunk`` decided when it is None (automatic): the grouping its output folder was made with
    if it holds a run (so that a run resumes the same way on any machine; None there: all members at once), else 1
    on CPU and all members at once elsewhere (``platform``: the devices' platform). On CPU the vmapped group buys no
    speed and costs memory: the quick preset's small stage with three seeds (six minilm-l3 members) took 178-196 s
    and 6.1-6.3 GB together, 150-156 s and 2.3-2.5 GB one at a time (docs/bench_difficulty.md, session 17)."""
    if config.chunk is not None:
        return config
    saved = configs.saved_choice(config.output_dir, trainer.CONFIG_FILE, "chunk", _is_chunk,
                                 "a positive number of members or null (all at once)")
    if saved is not configs.NO_RUN:
        return dataclasses.replace(config, chunk=saved)
    return dataclasses.replace(config, chunk=1 if platform == "cpu" else None)


def _is_chunk(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def fit_members(config: MemberSetConfig, *, dp: parallel.DataParallel | None = None,
                on_step: Callable[[int, dict], None] | None = None) -> MemberSetResult:
    """Train every variant of ``config`` on the whole training split in vmapped groups of ``chunk`` (see
    :func:`resolve_chunk`); each member ends as ``OUTPUT/<name>/model`` (its best dev checkpoint, or its last
    parameters with ``run.eval_every = -1``) with ``OUTPUT/<name>/summary.json``. Resumable; SIGTERM or Ctrl-C
    checkpoint and stop. Equals separate :func:`trainer.fit` runs of the variants up to float rounding (tested)."""
    out = pathlib.Path(config.output_dir)
    dp = dp or parallel.DataParallel(config.run.backend)
    is_writer = jax.process_index() == 0
    config = resolve_chunk(config, dp.platform)
    configs.check_resume(out, trainer.CONFIG_FILE, config)
    tokenizer = models.tokenizer_for(config.model.name)
    as_train = trainer.TrainConfig(output_dir=str(out), model=config.model, data=config.data, optim=config.optim,
                                   loss=config.loss, run=config.run, difficulty_file=config.difficulty_file,
                                   teacher=config.teacher)
    train, dev = trainer.load_training_data(as_train, tokenizer)
    positions = np.arange(len(train), dtype=np.int64)
    members = [Member(index=i, seed=v.seed, train_positions=positions, hparams=v.hparams(), name=v.name)
               for i, v in enumerate(config.variants)]
    plan = make_plan(config.model, config.data, config.optim, config.run, config.loss, train, members,
                     seed=config.variants[0].seed, teacher=config.teacher)
    if is_writer:
        configs.write(out, trainer.CONFIG_FILE, config)
    task = data.get_task(config.data.task)
    metric_name = evaluation.primary_metric(task.metric)
    run = config.run
    eval_every = plan.total_steps if run.eval_every < 0 else run.eval_every or plan.steps_per_epoch
    result = MemberSetResult(status="finished", model_dirs={}, best={})
    log = RunLog(out, enabled=is_writer, tensorboard=False)
    bar = trainer.progress_bar(plan.total_steps * len(members), 0, run.progress and is_writer, unit="member-step")
    preemption = Preemption()
    try:
        with preemption.installed():
            for g, group in enumerate(groups_of(members, config.chunk)):
                if all((_member_dir(config, m.name) / "model" / "config.json").exists() for m in group):
                    bar.update(plan.total_steps * len(group))
                    continue
                status = _fit_group(config, plan, group, g, dp, dev, metric_name, eval_every, tokenizer, log, bar,
                                    preemption, on_step, is_writer, result)
                if status == "preempted":
                    result.status = "preempted"
                    break
    finally:
        bar.close()
        log.close()
    for m in members:
        summary = _member_dir(config, m.name) / "summary.json"
        if summary.exists():
            result.model_dirs[m.name] = summary.parent / "model"
            result.best.setdefault(m.name, json.loads(summary.read_text()).get("best"))
    return result


def _fit_group(config, plan, group, g, dp, dev, metric_name, eval_every, tokenizer, log, bar, preemption, on_step,
               is_writer, result) -> str:
    gdir = pathlib.Path(config.output_dir) / "groups" / f"{g:03d}"
    ckpt = checkpoints.Checkpoints(gdir, max_to_keep=config.run.keep_checkpoints)
    best: list[dict | None] = [None] * len(group)
    kept: dict[str, Any] = {"params": None}  # The members' best dev parameters so far, stacked (host).
    try:
        if ckpt.latest_step() is not None:
            best = list(ckpt.restore_meta().get("best") or best)
            bar.update(ckpt.latest_step() * len(group))
        if ckpt.best_step() is not None:
            kept["params"] = ckpt.restore_best(stack_trees([plan.init_params(m.seed) for m in group]))[0]

        def evaluate(step, state, seen):
            host = dp.unreplicate(state).params
            logits = predict_group(plan, group, host, dp, [np.arange(len(dev))] * len(group), enc=dev)
            improved = np.zeros(len(group), bool)
            for i, (m, lg) in enumerate(zip(group, logits)):
                scores = evaluation.evaluate_logits(lg, dev)
                log.write(step, "eval", {"member": m.name, **scores})
                if best[i] is None or scores[metric_name] > best[i][metric_name]:
                    best[i], improved[i] = {"step": step, **scores}, True
            if improved.any():
                old = host if kept["params"] is None else kept["params"]
                kept["params"] = jax.tree_util.tree_map(
                    lambda new, prev: np.where(improved.reshape((-1,) + (1,) * (np.ndim(new) - 1)), new, prev),
                    host, old)
                ckpt.save_best(step, kept["params"], {"step": step, "best": best})

        state, status, seconds = train_group(
            plan, group, dp, ckpt=ckpt, log=log, bar=bar, group_index=g, preemption=preemption,
            extra_actions=[] if dev is None else [Every(eval_every, evaluate)], on_step=on_step,
            save_meta=lambda: {"best": best})
        if status != "finished":
            return status
        final = state.params if kept["params"] is None else kept["params"]
        if is_writer:
            for i, m in enumerate(group):
                directory = _member_dir(config, m.name)
                model_dir = models.save_pretrained(plan.module, unstack_tree(final, i), directory / "model",
                                                   tokenizer=tokenizer)
                (directory / "summary.json").write_text(json.dumps(
                    {"name": m.name, "seed": m.seed, "hparams": {k: float(v) for k, v in m.hparams.items()},
                     "step": plan.total_steps, "best": best[i], "model_dir": str(model_dir),
                     "selected": "best dev checkpoint" if best[i] else "final parameters",
                     "group_train_seconds": seconds}, indent=2) + "\n")
        return status
    finally:
        ckpt.close()
