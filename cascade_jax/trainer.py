"""Fine-tuning one cascade member: the per-device step (CE, DAR, KD) and :func:`fit`, its resumable run.

  make_step(objective, tx) -> step(state, batch, *extra)       # any objective, exact under data parallelism
  make_train_step(module, tx, loss, teacher=None) -> step      # a member's CE / DAR / KD objective
  fit(TrainConfig(output_dir, model=..., data=..., optim=..., loss=...)) -> FitResult

The maths of the data-parallel objective and of exact resume are in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import warnings
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cascade_jax import checkpoints, configs, data, evaluation, losses, models, parallel, xla
from cascade_jax.configs import DataConfig, ModelConfig, OptimConfig, RunConfig, section
from cascade_jax.data import holdout
from cascade_jax.loop import Every, LoopResult, NonFiniteLossError, run_steps
from cascade_jax.preemption import Preemption
from cascade_jax.run_log import RunLog

__all__ = ["LOSS_KINDS", "DarInactiveWarning", "LossConfig", "TrainConfig", "TrainState", "FitResult",
           "NonFiniteLossError", "new_state", "make_step", "make_train_step", "fit", "load_training_data", "CONFIG_FILE"]

LOSS_KINDS = ("ce", "dar", "kd", "kd+dar")
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What a member is trained with: ``CE_global + dar_weight * DAR``, or with KD ``(1 - kd_alpha) CE + kd_alpha KD``
    in place of CE."""

    kind: str = configs.field("ce", "objective (dar needs difficulty labels, kd a teacher)", flag="loss",
                              choices=LOSS_KINDS)
    dar_variant: str = configs.field("all_pairs", "registered DAR variant (losses.dar_variant_names())")
    margin: float = configs.field(0.5, "DAR margin eps (paper: 0.3 for MNLI/QNLI/QQP, 0.5 for MRPC/RTE/SST-2)")
    dar_weight: float = configs.field(0.5, "DAR weight lambda (paper: 0.5)")
    pair_scope: str = configs.field("device", "DAR pairs within each device's rows, or across the global batch",
                                    choices=("device", "global"))
    temperature: float = configs.field(2.0, "distillation temperature")
    kd_alpha: float = configs.field(0.5, "weight of the KD term (1 - alpha on CE)")

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise configs.ConfigError(f"unknown loss kind {self.kind!r}; choose one of {LOSS_KINDS}")
        if self.pair_scope not in ("device", "global"):
            raise configs.ConfigError(f"pair_scope must be 'device' or 'global', got {self.pair_scope!r}")
        if self.uses_dar:
            losses.get_dar_variant(self.dar_variant)  # Fails now, naming the registered variants.

    @property
    def uses_dar(self) -> bool:
        return "dar" in self.kind

    @property
    def uses_kd(self) -> bool:
        return "kd" in self.kind


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a fine-tuning run (saved as ``config.json`` beside its checkpoints)."""

    output_dir: str = configs.field("", "where checkpoints, logs and the model go; reused to resume")
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    loss: LossConfig = section(LossConfig)
    run: RunConfig = section(RunConfig)
    seed: int = configs.field(0, "initialisation of new heads, data order and dropout")
    difficulty_file: str | None = configs.field(None, "difficulty labels keyed by example id (JSONL/CSV), for dar")
    teacher: str | None = configs.field(None, "teacher model directory for kd")

    def __post_init__(self):
        if not self.output_dir:
            raise configs.ConfigError("TrainConfig needs an output_dir")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # Raw uint32[2] key: dropout keys are fold_in(fold_in(rng, step), device).
    hparams: Any = None  # Per-run loss numbers ({"margin", "dar_weight", "kd_alpha"}) of stacked members, or None.


def initial_rng(seed: int) -> np.ndarray:
    """The raw ``uint32[2]`` key a run with ``seed`` starts from (:attr:`TrainState.rng`)."""
    return np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))


def new_state(params, tx: optax.GradientTransformation, seed: int, hparams=None) -> TrainState:
    """A host :class:`TrainState` at step 0."""
    params = jax.device_get(params)
    return TrainState(step=np.asarray(0, np.int32), params=params, opt_state=jax.device_get(tx.init(params)),
                      rng=initial_rng(seed), hparams=hparams)


# ----------------------------------------------------------------------------------------------------------------
# The per-device step.

class DarInactiveWarning(UserWarning):
    """DAR cannot act: the difficulty labels hold no easy/hard pair."""


class Terms(NamedTuple):
    """What an objective returns. ``row_loss`` is a mean over this device's valid rows (the step weights it by the
    device's share of the global rows, so that ``pmean`` of gradients is the global-batch gradient); ``device_loss``
    is already a per-device loss (e.g. DAR) and is added as it is. ``row_metrics`` / ``device_metrics`` are
    reported the same two ways. ``logits`` [B, C] (or [L, B, C]: the last is scored) give the accuracy metric."""

    row_loss: jax.Array
    device_loss: jax.Array | float
    row_metrics: dict
    device_metrics: dict
    logits: jax.Array


# objective(params, batch, dropout_key, step_key, hparams, *extra) -> Terms (hparams: the state's, or None)
Objective = Callable[..., Terms]


def make_step(objective: Objective, tx: optax.GradientTransformation) -> Callable:
    """``step(state, batch, *extra) -> (state, metrics)``: per-device code for :class:`parallel.DataParallel`.

    ``batch`` holds this device's rows with ``valid`` and ``label``; metrics are global-batch values: ``loss``,
    each term, ``accuracy``, ``grad_norm``, ``examples``.
    """

    def step(state: TrainState, batch, *extra):
        valid = batch["valid"]
        local_rows = jnp.sum(valid.astype(jnp.float32))
        global_rows = parallel.psum(local_rows)
        share = parallel.axis_size() * local_rows / jnp.maximum(global_rows, 1.0)  # local mean -> global share
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key = jax.random.fold_in(step_key, parallel.axis_index())

        def total_fn(params):
            terms = objective(params, batch, dropout_key, step_key, state.hparams, *extra)
            return share * terms.row_loss + terms.device_loss, terms

        (total, terms), grads = jax.value_and_grad(total_fn, has_aux=True)(state.params)
        grads = parallel.pmean(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        scored = terms.logits[-1] if terms.logits.ndim == 3 else terms.logits
        correct = jnp.sum((jnp.argmax(scored, -1) == batch["label"]) & valid)
        metrics = {
            "loss": parallel.pmean(total),
            **{k: parallel.pmean(share * v) for k, v in terms.row_metrics.items()},
            **{k: parallel.pmean(v) for k, v in terms.device_metrics.items()},
            "accuracy": parallel.psum(correct) / jnp.maximum(global_rows, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "examples": global_rows,
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng,
                          hparams=state.hparams), metrics

    return step


def make_train_step(
    module: models.BertForSequenceClassification,
    tx: optax.GradientTransformation,
    loss: LossConfig,
    teacher: models.BertForSequenceClassification | None = None,
    dropout: bool = True,
) -> Callable:
    """A member's step: cross entropy, with DAR (needs ``difficulty`` in the batch; the ``soft`` variant uses
    ``seeds_wrong / num_seeds`` when present) and/or KD from ``teacher`` (its params the step's extra argument).
    The margin, DAR weight and KD weight are ``loss``'s, or the state's ``hparams`` when it has them (stacked
    members that differ in them)."""
    dar = losses.get_dar_variant(loss.dar_variant) if loss.uses_dar else None
    dar_axis = parallel.AXIS if loss.pair_scope == "global" else None

    def objective(params, batch, dropout_key, step_key, hparams, *extra):
        numbers = hparams or {"margin": loss.margin, "dar_weight": loss.dar_weight, "kd_alpha": loss.kd_alpha}
        valid = batch["valid"]
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        logits = module.apply({"params": params}, *inputs, deterministic=not dropout,
                              rngs={"dropout": dropout_key}).logits
        ce = losses.cross_entropy(logits, batch["label"], valid)
        row_loss, row_metrics = ce, {"ce": ce}
        if loss.uses_kd:
            teacher_logits = teacher.apply({"params": extra[0]}, *inputs).logits
            kd = losses.distillation_loss(logits, teacher_logits, loss.temperature, valid)
            alpha = numbers["kd_alpha"]
            row_loss, row_metrics["kd"] = (1.0 - alpha) * ce + alpha * kd, kd
        device_loss, device_metrics = 0.0, {}
        if dar is not None:
            soft = batch["seeds_wrong"] / jnp.maximum(batch["num_seeds"], 1.0) if "seeds_wrong" in batch else None
            reg = dar(losses.confidence_from_logits(logits), batch["difficulty"], valid, margin=numbers["margin"],
                      rng=jax.random.fold_in(step_key, 1 << 20), soft_difficulty=soft, axis_name=dar_axis)
            device_loss, device_metrics = numbers["dar_weight"] * reg, {"dar": reg}
        return Terms(row_loss, device_loss, row_metrics, device_metrics, logits)

    return make_step(objective, tx)


# ----------------------------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did: final step, why it stopped, best evaluation, where the model went."""

    step: int
    status: str  # "finished" or "preempted"
    best: dict | None
    model_dir: pathlib.Path | None
    params: Any


def load_training_data(config: TrainConfig, tokenizer) -> tuple[data.Encoded, data.Encoded | None]:
    """Tokenised train split (with difficulty columns joined when DAR needs them) and dev split if any."""
    d = config.data
    full = data.encode_split(d.task, "train", d.source, tokenizer=tokenizer, max_length=d.max_length)
    train = data.subset(full, d.train_subset)
    if config.loss.uses_dar:
        if not config.difficulty_file:
            raise configs.ConfigError(
                f"loss {config.loss.kind!r} needs difficulty labels: pass difficulty_file (see label_difficulty)")
        train = data.join_by_id(train, config.difficulty_file, split_ids=full.ids)
        if "difficulty" not in train.extras:
            raise configs.ConfigError(f"{config.difficulty_file} has no 'difficulty' column")
        hard = int(np.sum(np.asarray(train.extras["difficulty"]) > 0))
        if hard in (0, len(train)):
            warnings.warn(DarInactiveWarning(
                f"{config.difficulty_file}: every one of the {len(train)} training examples is labelled "
                f"{'hard' if hard else 'easy'}, so DAR (which pairs easy with hard examples) is 0 at every step and "
                f"this run is plain cross entropy. Check the labels (difficulty.summary.json: share_hard)."),
                stacklevel=2)
    task = data.get_task(d.task)
    dev = None
    if task.dev_split is not None:
        dev = holdout.encode_dev(task, d.source, tokenizer=tokenizer, max_length=d.max_length,
                                 test_from_dev=d.test_from_dev, seed=d.holdout_seed)
    return train, dev


def batch_extras(train: data.Encoded, uses_dar: bool) -> tuple[str, ...]:
    """The side columns a step needs in its batches."""
    if not uses_dar:
        return ()
    soft = ("seeds_wrong", "num_seeds") if {"seeds_wrong", "num_seeds"} <= set(train.extras) else ()
    return ("difficulty",) + soft


def check_batch_size(batch_size: int, dp: parallel.DataParallel, what: str = "batch_size") -> None:
    parts = dp.num_devices * (jax.process_count() if dp.backend == "pmap" else 1)
    if batch_size % parts or batch_size % jax.process_count():
        raise configs.ConfigError(f"{what} {batch_size} must be divisible by the {parts} devices it is split over")


def device_batches(dp: parallel.DataParallel, batches):
    """Host batches -> this process's rows placed for a mapped step (the ``id`` column dropped)."""
    for batch in batches:
        local = data.process_rows(batch)
        local.pop("id", None)
        yield dp.shard_batch(local)


def logging_action(log: RunLog, every: int, schedule, bar=None) -> Every:
    """Every ``every`` steps: the last step's metrics, examples/second since the last record, the learning rate."""
    clock = {"t": time.perf_counter()}

    def write(step, state, seen):
        if not seen:
            return
        now = time.perf_counter()
        host = {k: float(np.ravel(v)[0]) for k, v in seen[-1][1].items()}
        host["examples_per_second"] = sum(float(np.ravel(m["examples"])[0]) for _, m in seen) / max(
            now - clock["t"], 1e-9)
        host["learning_rate"] = float(schedule(step - 1))
        log.write(step, "train", host)
        if bar is not None:
            bar.set_postfix(loss=f"{host['loss']:.4f}", ex_s=f"{host['examples_per_second']:.0f}")
        clock["t"] = now

    return Every(every, write)


def run_mapped(mapped_step: Callable, batches, host_state, dp: parallel.DataParallel, *, start: int, total: int,
               actions, on_step=None, describe_nonfinite=None, preemption: Preemption | None = None):
    """:func:`loop.run_steps` of a mapped step over host ``batches`` (placed with :func:`device_batches`), from a
    host state, with SIGTERM and Ctrl-C handled as pre-emption (``preemption``: one shared with other runs)."""
    preemption = preemption or Preemption()
    with preemption.installed():
        if preemption.agreed():  # Asked to stop before this run began (e.g. at the end of an earlier phase).
            return LoopResult(dp.replicate(host_state), start, "preempted" if start < total else "finished")
        return run_steps(mapped_step, device_batches(dp, batches), dp.replicate(host_state, donated=True), start=start,
                         total=total, actions=actions, preemption=preemption, on_step=on_step,
                         describe_nonfinite=describe_nonfinite, metrics_of=dp.unreplicate)


def run_resumable(out: pathlib.Path, step: Callable, extra: tuple, state: TrainState, train: data.Encoded,
                  optim: OptimConfig, run: RunConfig, *, seed: int, data_cfg: DataConfig, total: int,
                  dp: parallel.DataParallel,
                  is_writer: bool, on_step=None, offset: int = 0, preemption: Preemption | None = None):
    """One resumable run of ``step`` (per-device, extra arguments ``extra``) over ``train`` into ``out``: restores
    ``out``'s latest checkpoint, runs the rest through :func:`run_mapped` and checkpoints every epoch (or
    ``run.checkpoint_every`` steps), at the end and on pre-emption. ``on_step`` sees ``offset + step``; a
    ``preemption`` shared by several runs carries a stop request from one to the next."""
    ckpt = checkpoints.Checkpoints(out, max_to_keep=run.keep_checkpoints)
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore_state(state)
        start = int(meta["step"])
    log = RunLog(out, enabled=is_writer, after_step=start)
    mapped = dp.map_step(step, num_extra=len(extra))
    placed = tuple(dp.replicate(jax.device_get(e)) for e in extra)
    bar = progress_bar(total, start, run.progress and is_writer)
    spe = data.steps_per_epoch(len(train), optim.batch_size)

    def save(s, state, seen):
        ckpt.save_state(s, dp.unreplicate(state), {"step": s, "steps_total": total})

    actions = [Every(1, lambda s, state, seen: bar.update(1), needs_metrics=False),
               logging_action(log, run.log_every, configs.learning_rate_schedule(optim, total), bar),
               Every(run.checkpoint_every or spe, save, on_stop=True)]
    batches = data.batches_from_step(train, optim.batch_size, seed=seed, start_step=start, buckets=data_cfg.buckets,
                                     length_grouping=data_cfg.length_grouping)
    hook = None if on_step is None else (lambda s, m: on_step(offset + s, m))
    try:
        return run_mapped(lambda s, b: mapped(s, b, *placed), batches, state, dp, start=start, total=total,
                          actions=actions, on_step=hook, preemption=preemption)
    finally:
        bar.close()
        ckpt.close()
        log.close()



def progress_bar(total: int, start: int, enabled: bool, unit: str = "step"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit=unit, dynamic_ncols=True)


def fit(
    config: TrainConfig,
    *,
    dp: parallel.DataParallel | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Fine-tune one member as ``config`` says; resumes from ``config.output_dir`` when it holds this run.

    ``on_step(step, host_metrics)`` is called after every step (tests use it to interrupt a run). SIGTERM or Ctrl-C
    make it save a checkpoint at the current step and return with ``status="preempted"``. A non-finite loss raises
    :class:`NonFiniteLossError`; nothing is saved after the last finite step. A directory holding a run with other
    settings raises :class:`configs.ResumeMismatchError`.
    """
    out = pathlib.Path(config.output_dir)
    dp = dp or parallel.DataParallel(config.run.backend)
    is_writer = jax.process_index() == 0
    configs.check_resume(out, CONFIG_FILE, config)
    task = data.get_task(config.data.task)
    tokenizer = models.tokenizer_for(config.model.name)
    train, dev = load_training_data(config, tokenizer)
    tx, total = configs.make_optimizer(config.optim, len(train))
    spe = data.steps_per_epoch(len(train), config.optim.batch_size)
    check_batch_size(config.optim.batch_size, dp)
    dtype = config.model.jnp_dtype
    module, params = models.from_pretrained(config.model.name, num_labels=task.num_labels,
                                            num_layers=config.model.num_layers, dtype=dtype, seed=config.seed)
    models.check_inputs_fit(module.config, max_length=config.data.max_length, vocab_size=len(tokenizer),
                            source=config.model.name)
    state = new_state(params, tx, config.seed)
    extra, teacher = (), None
    if config.loss.uses_kd:
        if not config.teacher:
            raise configs.ConfigError("loss 'kd' needs a teacher: pass teacher (a saved model directory or name)")
        teacher, teacher_params = models.from_pretrained(config.teacher, num_labels=task.num_labels, dtype=dtype)
        models.check_inputs_fit(teacher.config, max_length=config.data.max_length, vocab_size=len(tokenizer),
                                source=config.teacher)
        extra = (dp.replicate(jax.device_get(teacher_params)),)

    if is_writer:
        configs.write(out, CONFIG_FILE, config)
    ckpt = checkpoints.Checkpoints(out, max_to_keep=config.run.keep_checkpoints)
    best: dict | None = None
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore_state(state)
        start, best = int(meta["step"]), meta.get("best")
    log = RunLog(out, enabled=is_writer, after_step=start)
    mapped = dp.map_step(make_train_step(module, tx, config.loss, teacher, config.model.dropout),
                         num_extra=len(extra))
    eval_fn = xla.jit(models.logits_fn(module))
    run = config.run
    eval_every = total if run.eval_every < 0 else run.eval_every or spe
    ckpt_every = run.checkpoint_every or (spe if run.eval_every < 0 else eval_every)
    metric_name = evaluation.primary_metric(task.metric)
    bar = progress_bar(total, start, run.progress and is_writer)

    def evaluate(step, state, seen):
        nonlocal best
        host_params = dp.unreplicate(state).params
        scores = evaluation.evaluate_logits(evaluation.predict_logits(
            eval_fn, host_params, dev, run.eval_batch_size, buckets=config.data.buckets), dev)
        log.write(step, "eval", scores)
        if best is None or scores[metric_name] > best[metric_name]:
            best = {"step": step, **scores}
            ckpt.save_best(step, host_params, {"step": step, "metrics": scores})

    def save(step, state, seen):
        epoch, in_epoch = divmod(step, spe)
        ckpt.save_state(step, dp.unreplicate(state), {"step": step, "epoch": epoch, "step_in_epoch": in_epoch,
                                                      "best": best, "steps_total": total, "steps_per_epoch": spe})

    def describe_nonfinite(step, loss):
        last = ckpt.latest_step()
        where = (f"The last good checkpoint is step {last} in {out / 'checkpoints'}" if last is not None
                 else "No checkpoint was saved before it")
        return (f"the training loss became {loss[0]} at step {step}; stopping. {where}. Lower the learning rate, or "
                f"check the data.")

    actions = [Every(1, lambda step, state, seen: bar.update(1), needs_metrics=False),
               logging_action(log, run.log_every, configs.learning_rate_schedule(config.optim, total), bar)]
    if dev is not None:
        actions.append(Every(eval_every, evaluate))
    actions.append(Every(ckpt_every, save, on_stop=True))
    batches = data.batches_from_step(train, config.optim.batch_size, seed=config.seed, start_step=start,
                                     buckets=config.data.buckets, length_grouping=config.data.length_grouping,
                                     extras=batch_extras(train, config.loss.uses_dar))
    try:
        result = run_mapped(lambda s, b: mapped(s, b, *extra), batches, state, dp, start=start, total=total,
                            actions=actions, on_step=on_step, describe_nonfinite=describe_nonfinite)
    finally:
        bar.close()
        ckpt.wait()
        log.close()

    final_params = dp.unreplicate(result.state).params
    model_dir = None
    if result.status == "finished":
        if ckpt.best_step() is not None:
            final_params, _ = ckpt.restore_best(final_params)
        if is_writer:
            model_dir = models.save_pretrained(module, final_params, out / "model", tokenizer=tokenizer)
            (out / "summary.json").write_text(json.dumps(
                {"step": result.step, "status": result.status, "best": best, "model_dir": str(model_dir),
                 "selected": "best dev checkpoint" if best else "final parameters"}, indent=2) + "\n")
    ckpt.close()
    return FitResult(step=result.step, status=result.status, best=best, model_dir=model_dir, params=final_params)
