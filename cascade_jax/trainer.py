"""Fine-tuning one cascade member: the per-device step (CE, DAR, KD) and the resumable training loop.

The step is per-device code in the pmap style (collectives over :data:`parallel.AXIS`), mapped by
:class:`parallel.DataParallel` with ``jax.shard_map`` (default) or ``jax.pmap``. Its objective is arranged so that
averaging per-device gradients with ``lax.pmean`` gives exactly the gradient of the global-batch objective:

    objective = CE_global + weight * DAR

where ``CE_global`` is the mean cross entropy over every valid row of the global batch (each device weights its
local mean by ``n_devices * local_rows / global_rows``, so padding rows and uneven shards are exact), and DAR is
either the mean over devices of each device's own all-pairs loss (``pair_scope="device"``, the default) or one
loss over the pairs of the whole global batch (``pair_scope="global"``, confidences gathered across devices).
With ``kind`` ``"kd"`` the CE term becomes ``(1 - alpha) CE + alpha KD(student, teacher, T)``.

The loop (:func:`fit`) derives the data position from the step (epoch = step // steps_per_epoch), so a resumed
run replays exactly the batches, dropout keys and optimiser updates of one never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cascade_jax import checkpoints, data, evaluation, losses, models, parallel
from cascade_jax.run_log import RunLog

LOSS_KINDS = ("ce", "dar", "kd", "kd+dar")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What a member is trained with.

    Attributes:
      kind: ``ce``; ``dar`` (CE + weight * DAR, needs difficulty labels); ``kd`` (distillation from a teacher);
        ``kd+dar``.
      dar_variant: a name registered in :mod:`cascade_jax.losses` (``all_pairs``, ``authors``, ``logistic``,
        ``soft``, or your own).
      margin: DAR margin eps (paper: 0.3 for MNLI/QNLI/QQP, 0.5 for MRPC/RTE/SST-2).
      dar_weight: lambda (paper: 0.5).
      pair_scope: ``device`` (pairs within each device's rows) or ``global`` (pairs across the global batch).
      temperature, kd_alpha: distillation temperature and weight of the KD term.
    """

    kind: str = "ce"
    dar_variant: str = "all_pairs"
    margin: float = 0.5
    dar_weight: float = 0.5
    pair_scope: str = "device"
    temperature: float = 2.0
    kd_alpha: float = 0.5

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {self.kind!r}; choose one of {LOSS_KINDS}")
        if self.pair_scope not in ("device", "global"):
            raise ValueError(f"pair_scope must be 'device' or 'global', got {self.pair_scope!r}")
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
    """Everything that defines a fine-tuning run (saved as ``config.json`` beside its checkpoints).

    ``train_subset=n`` trains on :func:`cascade_jax.data.subset` ``(train, n)``: a fixed random sample, the same
    one the difficulty labeller takes, for quick runs.

    ``eval_every``: evaluate on dev every N steps; 0 = once per epoch; -1 = only after the last step (the exported
    model is then the last one). ``checkpoint_every``: N steps; 0 = at each evaluation, or once per epoch when
    ``eval_every`` is -1. The last step is always evaluated and checkpointed.
    """

    output_dir: str
    model: str = "minilm-l3"
    num_layers: int | None = None
    task: str = "rotten_tomatoes"
    source: str | None = None
    train_subset: int | None = None
    max_length: int = 128
    buckets: tuple[int, ...] = data.DEFAULT_BUCKETS
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    loss: LossConfig = LossConfig()
    difficulty_file: str | None = None
    teacher: str | None = None
    dtype: str = "float32"
    backend: str = "shard_map"
    eval_every: int = 0
    eval_batch_size: int = 128
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    dropout: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        d["buckets"] = tuple(d.get("buckets", data.DEFAULT_BUCKETS))
        return cls(**d)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # Raw uint32[2] key: dropout keys are fold_in(rng, step, device).


# ----------------------------------------------------------------------------------------------------------------
# Optimiser.


def decay_mask(params) -> Any:
    """True where weight decay applies: everything but LayerNorm parameters and biases."""

    def keep(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        return not ("LayerNorm" in names or names[-1] == "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def linear_warmup_decay(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """``peak * min(step / warmup, (total - step) / (total - warmup))``, floored at 0."""

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = count / warmup_steps if warmup_steps > 0 else jnp.float32(1.0)
        decay = jnp.maximum(0.0, (total_steps - count) / max(total_steps - warmup_steps, 1))
        return peak * jnp.minimum(warm, decay)

    return schedule


def adamw(learning_rate: float, total_steps: int, *, warmup_ratio: float, weight_decay: float,
          max_grad_norm: float) -> optax.GradientTransformation:
    """The one optimiser of the project (members, difficulty labellers, exit heads): AdamW with linear warm-up over
    ``warmup_ratio`` of ``total_steps`` then linear decay to 0, global-norm clipping, no decay on LayerNorm and
    biases."""
    schedule = linear_warmup_decay(learning_rate, total_steps, int(warmup_ratio * total_steps))
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """:func:`adamw` with ``config`` 's settings."""
    return adamw(config.learning_rate, total_steps, warmup_ratio=config.warmup_ratio,
                 weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm)


# ----------------------------------------------------------------------------------------------------------------
# The per-device step.


def make_train_step(
    module: models.BertForSequenceClassification,
    tx: optax.GradientTransformation,
    loss: LossConfig,
    teacher: models.BertForSequenceClassification | None = None,
    dropout: bool = True,
) -> Callable:
    """``step(state, batch[, teacher_params]) -> (state, metrics)``: per-device code for :class:`DataParallel`.

    ``batch`` holds this device's rows (see :mod:`cascade_jax.data.batching`; DAR needs ``difficulty``, and the
    ``soft`` variant uses ``seeds_wrong / num_seeds`` when present). Metrics are global-batch values.
    """
    dar = losses.get_dar_variant(loss.dar_variant) if loss.uses_dar else None
    dar_axis = parallel.AXIS if loss.pair_scope == "global" else None

    def step(state: TrainState, batch, *extra):
        valid = batch["valid"]
        local_rows = jnp.sum(valid.astype(jnp.float32))
        global_rows = parallel.psum(local_rows)
        n_devices = parallel.axis_size()
        share = n_devices * local_rows / jnp.maximum(global_rows, 1.0)  # local mean -> share of the global mean
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key = jax.random.fold_in(step_key, parallel.axis_index())
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        teacher_logits = None
        if loss.uses_kd:
            teacher_logits = teacher.apply({"params": extra[0]}, *inputs).logits

        def objective(params):
            logits = module.apply(
                {"params": params}, *inputs, deterministic=not dropout, rngs={"dropout": dropout_key}
            ).logits
            ce = losses.cross_entropy(logits, batch["label"], valid)
            terms = {"ce": ce}
            main = ce
            if loss.uses_kd:
                kd = losses.distillation_loss(logits, teacher_logits, loss.temperature, valid)
                terms["kd"] = kd
                main = (1.0 - loss.kd_alpha) * ce + loss.kd_alpha * kd
            total = share * main
            if dar is not None:
                soft = batch["seeds_wrong"] / jnp.maximum(batch["num_seeds"], 1.0) if "seeds_wrong" in batch else None
                reg = dar(
                    losses.confidence_from_logits(logits), batch["difficulty"], valid,
                    margin=loss.margin, rng=jax.random.fold_in(step_key, 1 << 20), soft_difficulty=soft,
                    axis_name=dar_axis,
                )
                terms["dar"] = reg
                total = total + loss.dar_weight * reg
            return total, (terms, logits)

        (total, (terms, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = parallel.pmean(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & valid)
        metrics = {
            "loss": parallel.pmean(total),
            **{k: parallel.pmean(share * v if k in ("ce", "kd") else v) for k, v in terms.items()},
            "accuracy": parallel.psum(correct) / jnp.maximum(global_rows, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "examples": global_rows,
        }
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did: final step, why it stopped, best evaluation, where the model went."""

    step: int
    status: str  # "finished" or "preempted"
    best: dict | None
    model_dir: pathlib.Path | None
    params: Any


class _Preemption:
    """SIGTERM (and SIGINT) set a flag the loop checks after each step; installed only on the main thread."""

    def __init__(self):
        self.requested = False

    def agreed(self) -> bool:
        """Whether any process was asked to stop; every process calls this after every step.

        A checkpoint save is collective across processes, so all must stop at the same step even when the
        signal reached only some of them (or reached them at different steps).
        """
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested, np.int32))))

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}

        def handler(signum, frame):
            self.requested = True

        for s in old:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def load_training_data(config: TrainConfig, tokenizer) -> tuple[data.Encoded, data.Encoded | None]:
    """Tokenised train split (with difficulty columns joined when DAR needs them) and dev split if any."""
    train = data.encode_split(config.task, "train", config.source, tokenizer=tokenizer, max_length=config.max_length)
    train = data.subset(train, config.train_subset)
    if config.loss.uses_dar:
        if not config.difficulty_file:
            raise ValueError(
                f"loss {config.loss.kind!r} needs difficulty labels: pass difficulty_file (see label_difficulty)"
            )
        train = data.join_by_id(train, config.difficulty_file)
        if "difficulty" not in train.extras:
            raise ValueError(f"{config.difficulty_file} has no 'difficulty' column")
    task = data.get_task(config.task)
    dev = None
    if task.dev_split is not None:
        dev = data.encode_split(config.task, "dev", config.source, tokenizer=tokenizer, max_length=config.max_length)
    return train, dev


def _batch_extras(config: TrainConfig, train: data.Encoded) -> tuple[str, ...]:
    if not config.loss.uses_dar:
        return ()
    soft = ("seeds_wrong", "num_seeds") if {"seeds_wrong", "num_seeds"} <= set(train.extras) else ()
    return ("difficulty",) + soft


def total_steps(config: TrainConfig, num_examples: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``: epochs may be fractional; ``max_steps`` caps the total."""
    spe = data.steps_per_epoch(num_examples, config.batch_size)
    total = max(1, math.ceil(config.epochs * spe))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return spe, total


def fit(
    config: TrainConfig,
    *,
    dp: parallel.DataParallel | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Fine-tune one member as ``config`` says; resumes from ``config.output_dir`` when it has a checkpoint.

    ``on_step(step, host_metrics)`` is called after every step (tests use it to interrupt a run). SIGTERM makes
    the loop save a checkpoint at the current step and return with ``status="preempted"``. A non-finite loss
    raises :class:`NonFiniteLossError`; nothing is saved after the last finite step.
    """
    out = pathlib.Path(config.output_dir)
    dp = dp or parallel.DataParallel(config.backend)
    is_writer = jax.process_index() == 0
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]

    tokenizer = models.tokenizer_for(config.model)
    train, dev = load_training_data(config, tokenizer)
    task = data.get_task(config.task)
    num_labels = max(1, len(task.label_names))
    spe, steps_total = total_steps(config, len(train))
    if config.batch_size % (dp.num_devices) or config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} must be divisible by {dp.num_devices} devices")

    module, params = models.from_pretrained(
        config.model, num_labels=num_labels, num_layers=config.num_layers, dtype=dtype, seed=config.seed
    )
    tx = make_optimizer(config, steps_total)
    state = TrainState(
        step=np.asarray(0, np.int32), params=jax.device_get(params), opt_state=jax.device_get(tx.init(params)),
        rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(config.seed))),
    )
    extra, teacher = (), None
    if config.loss.uses_kd:
        if not config.teacher:
            raise ValueError("loss 'kd' needs a teacher: pass teacher (a saved model directory or name)")
        teacher, teacher_params = models.from_pretrained(config.teacher, num_labels=num_labels, dtype=dtype)
        extra = (dp.replicate(jax.device_get(teacher_params)),)

    if is_writer:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    ckpt = checkpoints.Checkpoints(out, max_to_keep=config.keep_checkpoints)
    best: dict | None = None
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore_state(state)
        start, best = int(meta["step"]), meta.get("best")
    log = RunLog(out, enabled=is_writer)

    step_fn = dp.map_step(make_train_step(module, tx, config.loss, teacher, config.dropout), num_extra=len(extra))
    eval_fn = jax.jit(models.logits_fn(module))
    extras = _batch_extras(config, train)
    eval_every = steps_total if config.eval_every < 0 else config.eval_every or spe
    ckpt_every = config.checkpoint_every or (spe if config.eval_every < 0 else eval_every)
    metric_name = evaluation.primary_metric(task.metric)

    def meta_for(step: int) -> dict:
        epoch, in_epoch = divmod(step, spe)
        return {"step": step, "epoch": epoch, "step_in_epoch": in_epoch, "best": best,
                "steps_total": steps_total, "steps_per_epoch": spe}

    def check_finite(pending: list, last_good: int) -> None:
        if not pending:
            return
        losses_seen = np.asarray(jax.device_get([m["loss"] for _, m in pending]), np.float64).reshape(len(pending), -1)
        bad = np.flatnonzero(~np.isfinite(losses_seen).all(axis=1))
        if bad.size:
            s = pending[bad[0]][0]
            raise NonFiniteLossError(
                f"the training loss became {losses_seen[bad[0]].ravel()[0]} at step {s}; stopping. The last good "
                f"checkpoint is step {last_good} in {out / 'checkpoints'} (lower the learning rate, or check the data)."
            )

    state = dp.replicate(state)
    from tqdm.auto import tqdm

    bar = tqdm(total=steps_total, initial=start, disable=not (config.progress and is_writer), unit="step",
               dynamic_ncols=True)
    step, status, last_saved = start, "finished", start
    pending: list[tuple[int, dict]] = []
    t_last = time.perf_counter()
    preemption = _Preemption()
    try:
        with preemption.installed():
            while step < steps_total and status == "finished":
                epoch, in_epoch = divmod(step, spe)
                for batch in data.train_batches(train, config.batch_size, seed=config.seed, epoch=epoch,
                                                start_step=in_epoch, buckets=config.buckets, extras=extras):
                    local = data.process_rows(batch)
                    local.pop("id")
                    state, m = step_fn(state, dp.shard_batch(local), *extra)
                    step += 1
                    pending.append((step, m))
                    if on_step is not None:
                        on_step(step, dp.unreplicate(m))
                    if step % config.log_every == 0 or step == steps_total:
                        check_finite(pending, last_saved)
                        host = {k: float(np.ravel(v)[0]) for k, v in dp.unreplicate(pending[-1][1]).items()}
                        now = time.perf_counter()
                        ex = sum(float(np.ravel(dp.unreplicate(mm)["examples"])[0]) for _, mm in pending)
                        host["examples_per_second"] = ex / max(now - t_last, 1e-9)
                        host["learning_rate"] = float(linear_warmup_decay(
                            config.learning_rate, steps_total, int(config.warmup_ratio * steps_total))(step - 1))
                        log.write(step, "train", host)
                        bar.set_postfix(loss=f"{host['loss']:.4f}", ex_s=f"{host['examples_per_second']:.0f}")
                        pending, t_last = [], now
                    bar.update(1)
                    if dev is not None and (step % eval_every == 0 or step == steps_total):
                        check_finite(pending, last_saved)
                        host_params = dp.unreplicate(state).params
                        scores = evaluation.evaluate_logits(
                            evaluation.predict_logits(eval_fn, host_params, dev, config.eval_batch_size,
                                                      buckets=config.buckets), dev)
                        log.write(step, "eval", scores)
                        if best is None or scores[metric_name] > best[metric_name]:
                            best = {"step": step, **scores}
                            ckpt.save_best(step, host_params, {"step": step, "metrics": scores})
                    stop = preemption.agreed()
                    if step % ckpt_every == 0 or step == steps_total or stop:
                        check_finite(pending, last_saved)
                        ckpt.save_state(step, dp.unreplicate(state), meta_for(step))
                        last_saved = step
                    if stop:
                        status = "preempted"
                        break
                    if step >= steps_total:
                        break
    finally:
        bar.close()
        ckpt.wait()
        log.close()

    final_params = dp.unreplicate(state).params
    model_dir = None
    if status == "finished":
        if ckpt.best_step() is not None:
            final_params, _ = ckpt.restore_best(final_params)
        if is_writer:
            model_dir = models.save_pretrained(module, final_params, out / "model", tokenizer=tokenizer)
            (out / "summary.json").write_text(json.dumps(
                {"step": step, "status": status, "best": best, "model_dir": str(model_dir),
                 "selected": "best dev checkpoint" if best else "final parameters"}, indent=2) + "\n")
    ckpt.close()
    return FitResult(step=step, status=status, best=best, model_dir=model_dir, params=final_params)
