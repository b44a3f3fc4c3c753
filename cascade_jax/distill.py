"""Static compression baselines of the CascadeBERT paper: BERT-PKD and BERT-of-Theseus, each a k-layer BERT.

  train_pkd(PKDConfig(output_dir, model=ModelConfig(large fine-tuned dir, num_layers=k), ...)) -> DistillResult
  train_theseus(TheseusConfig(output_dir, model=ModelConfig(large fine-tuned dir, num_layers=k), ...)) -> ...
  pkd_layer_map(k, n) -> teacher layer of student layers 1 .. k-1        # PKD-Skip: m(j) = j * (n // k)
  replacement_rate(step, total, base, slope) -> p                        # Theseus's linear curriculum
  theseus_logits(config, predecessor, successor_layers, ..., use_successor) -> logits   # phase 1's model

Both produce a plain k-layer BERT in ``OUTPUT/model`` (Hugging Face layout with the tokenizer, loadable by
``models.from_pretrained``), so they are evaluated as static baselines (``curves.Curve.static``), like BERT-kL.
Both train through the project's loop (``trainer.run_mapped``: checkpoints every epoch or ``run.checkpoint_every``
steps, SIGTERM / Ctrl-C checkpoint and stop, exact resume from ``OUTPUT``; the data order, dropout keys, Theseus's
replacement draws and the updates are pure functions of the step) with data-parallel exact steps
(``trainer.make_step``). Neither evaluates on dev while training: the last parameters are saved.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import attention, configs, data, losses, models, parallel, trainer
from cascade_jax.configs import DataConfig, ModelConfig, OptimConfig, RunConfig, section
from cascade_jax.preemption import Preemption

__all__ = ["PKDConfig", "TheseusConfig", "DistillResult", "pkd_layer_map", "make_pkd_step", "train_pkd",
           "replacement_rate", "replacement_draws", "theseus_logits", "successor_params", "make_theseus_step",
           "train_theseus", "PKD_CONFIG_FILE", "THESEUS_CONFIG_FILE"]

PKD_CONFIG_FILE = "pkd_config.json"
THESEUS_CONFIG_FILE = "theseus_config.json"
_REPLACE_TAG = 0x7E5E  # fold_in tag of Theseus's replacement draws (apart from the dropout keys).


@dataclasses.dataclass
class DistillResult:
    status: str  # "finished" or "preempted"
    step: int  # For Theseus: phase-1 steps + phase-2 steps done.
    params: Any  # The k-layer student / successor (models.BertForSequenceClassification's tree).
    model_dir: pathlib.Path | None  # OUTPUT/model once finished (process 0).


def _check_common(name: str, output_dir: str, model: ModelConfig) -> None:
    if not output_dir or not model.name:
        raise configs.ConfigError(f"{name} needs an output_dir and model.name (the fine-tuned large model)")
    if model.num_layers is None:
        raise configs.ConfigError(f"{name} needs model.num_layers: the k layers of the compressed model")


def _fine_tuned(name: str) -> None:
    """A teacher / predecessor must be a fine-tuned classifier, not a pre-trained encoder with a random head."""
    models.check_trained_head(models.resolve_model_dir(name))


def _train_split(d: DataConfig, tokenizer) -> data.Encoded:
    return data.subset(data.encode_split(d.task, "train", d.source, tokenizer=tokenizer, max_length=d.max_length),
                       d.train_subset)


@dataclasses.dataclass
class _Setup:
    out: pathlib.Path
    dp: parallel.DataParallel
    is_writer: bool
    task: data.Task
    tokenizer: Any
    train: data.Encoded
    teacher: models.BertForSequenceClassification
    teacher_params: Any


def _setup(config, config_file: str, teacher_dir: str, dp: parallel.DataParallel | None) -> _Setup:
    """What PKD and Theseus share before training: the resume check, the data, the fine-tuned teacher."""
    out = pathlib.Path(config.output_dir)
    dp = dp or parallel.DataParallel(config.run.backend)
    configs.check_resume(out, config_file, config)
    _fine_tuned(teacher_dir)
    task = data.get_task(config.data.task)
    tokenizer = models.tokenizer_for(config.model.name)
    train = _train_split(config.data, tokenizer)
    teacher, teacher_params = models.from_pretrained(teacher_dir, num_labels=task.num_labels,
                                                     dtype=config.model.jnp_dtype)
    models.check_inputs_fit(teacher.config, max_length=config.data.max_length, vocab_size=len(tokenizer),
                            source=teacher_dir)
    return _Setup(out, dp, jax.process_index() == 0, task, tokenizer, train, teacher, teacher_params)


def _write_summary(out: pathlib.Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# BERT-PKD (Sun et al., 2019), PKD-Skip.


def pkd_layer_map(k: int, n: int) -> tuple[int, ...]:
    """PKD-Skip's teacher layer for each student layer ``j = 1 .. k-1`` (1-based; the last student layer is left to
    the KD term): ``m(j) = j * (n // k)``. E.g. 12 -> 6: (2, 4, 6, 8, 10); 6 -> 3: (2, 4)."""
    if not 1 <= k <= n:
        raise ValueError(f"a {k}-layer student of a {n}-layer teacher: need 1 <= k <= n")
    return tuple(j * (n // k) for j in range(1, k))


@dataclasses.dataclass(frozen=True)
class PKDConfig:
    """A BERT-PKD run (saved as ``pkd_config.json``): the student is the first ``model.num_layers`` layers of
    ``model.name`` (embeddings, pooler and classifier included), distilled from ``teacher`` with

        (1 - alpha) * CE + alpha * KD(student, teacher, temperature) + beta * PT

    (KD: ``losses.distillation_loss``, T^2 * KL as in the authors' code; PT: ``losses.patient_loss`` over PKD-Skip's
    mapped layers). PKD's search space: alpha in {0.2, 0.5, 0.7}, T in {5, 10, 20}, beta in {10, 100, 500, 1000},
    lr in {1e-5, 2e-5, 5e-5}. The defaults here: alpha 0.5, T 2.0 (the project's KD temperature), beta 100. PT is
    on the scale of the authors' code (a mean over layers and hidden units), so their beta carries over.
    """

    output_dir: str = configs.field("", "where checkpoints, logs and the student go; reused to resume")
    model: ModelConfig = section(ModelConfig, name="")
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    run: RunConfig = section(RunConfig, eval_every=-1)
    teacher: str | None = configs.field(None, "fine-tuned teacher directory (default: model.name)")
    alpha: float = configs.field(0.5, "weight of the KD term (1 - alpha on CE); PKD searched 0.2, 0.5, 0.7")
    temperature: float = configs.field(2.0, "KD temperature; PKD searched 5, 10, 20")
    beta: float = configs.field(100.0, "weight of the patient loss; PKD searched 10, 100, 500, 1000")
    seed: int = configs.field(0, "data order and dropout")

    def __post_init__(self):
        _check_common("PKDConfig", self.output_dir, self.model)
        if not 0.0 <= self.alpha <= 1.0:
            raise configs.ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise configs.ConfigError(f"temperature must be positive, got {self.temperature}")
        if not self.beta >= 0:
            raise configs.ConfigError(f"beta must be non-negative, got {self.beta}")

    @property
    def teacher_dir(self) -> str:
        return self.teacher or self.model.name


def make_pkd_step(student: models.BertForSequenceClassification, teacher: models.BertForSequenceClassification,
                  tx, layer_map: tuple[int, ...], *, alpha: float, temperature: float, beta: float,
                  dropout: bool = True) -> Callable:
    """PKD's per-device step ``step(state, batch, teacher_params)``: every term is a mean over rows, so the step is
    exact under data parallelism (``trainer.make_step``)."""

    def objective(params, batch, dropout_key, step_key, hparams, teacher_params):
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        valid = batch["valid"]
        out = student.apply({"params": params}, *inputs, deterministic=not dropout, output_hidden_states=True,
                            rngs={"dropout": dropout_key})
        target = teacher.apply({"params": teacher_params}, *inputs, output_hidden_states=True)
        ce = losses.cross_entropy(out.logits, batch["label"], valid)
        kd = losses.distillation_loss(out.logits, target.logits, temperature, valid)
        if layer_map:
            s_cls = jnp.stack([out.hidden_states[j][:, 0] for j in range(1, len(layer_map) + 1)])
            t_cls = jnp.stack([target.hidden_states[m][:, 0] for m in layer_map])
            pt = losses.patient_loss(s_cls, t_cls, valid)
        else:
            pt = jnp.zeros((), jnp.float32)
        row = (1.0 - alpha) * ce + alpha * kd + beta * pt
        return trainer.Terms(row, 0.0, {"ce": ce, "kd": kd, "pt": pt}, {}, out.logits)

    return trainer.make_step(objective, tx)


def train_pkd(config: PKDConfig, *, dp: parallel.DataParallel | None = None,
              on_step: Callable[[int, dict], None] | None = None) -> DistillResult:
    """Distil ``config.teacher_dir`` into a ``model.num_layers``-layer student (BERT-PKD, PKD-Skip); resumes from
    ``config.output_dir``. The student lands in ``OUTPUT/model`` with ``summary.json`` beside it."""
    run = _setup(config, PKD_CONFIG_FILE, config.teacher_dir, dp)
    out, dp, is_writer, task, tokenizer, train = run.out, run.dp, run.is_writer, run.task, run.tokenizer, run.train
    teacher, teacher_params, dtype = run.teacher, run.teacher_params, config.model.jnp_dtype
    k, n = config.model.num_layers, teacher.config.num_hidden_layers
    layer_map = pkd_layer_map(k, n)
    student, params = models.from_pretrained(config.model.name, num_labels=task.num_labels, num_layers=k,
                                             dtype=dtype, seed=config.seed)
    tx, total = configs.make_optimizer(config.optim, len(train))
    trainer.check_batch_size(config.optim.batch_size, dp)
    state = trainer.new_state(params, tx, config.seed)
    if is_writer:
        configs.write(out, PKD_CONFIG_FILE, config)
    step = make_pkd_step(student, teacher, tx, layer_map, alpha=config.alpha, temperature=config.temperature,
                         beta=config.beta, dropout=config.model.dropout)
    result = trainer.run_resumable(out, step, (teacher_params,), state, train, config.optim, config.run,
                                   seed=config.seed, data_cfg=config.data, total=total, dp=dp,
                                   is_writer=is_writer, on_step=on_step)
    final = dp.unreplicate(result.state).params
    model_dir = None
    if result.status == "finished" and is_writer:
        model_dir = models.save_pretrained(student, final, out / "model", tokenizer=tokenizer)
        _write_summary(out, {"method": "bert-pkd", "status": result.status, "step": result.step,
                             "student_layers": k, "teacher_layers": n, "teacher": config.teacher_dir,
                             "layer_map": list(layer_map), "alpha": config.alpha,
                             "temperature": config.temperature, "beta": config.beta, "model_dir": str(model_dir)})
    return DistillResult(status=result.status, step=result.step, params=final, model_dir=model_dir)


# ----------------------------------------------------------------------------------------------------------------
# BERT-of-Theseus (Xu et al., 2020).


def replacement_rate(step, total: int, base: float = 0.3, slope: float | None = None):
    """Theseus's linear curriculum: the probability that a module uses its successor at (0-based) step ``step``,
    ``p = min(1, slope * step + base)`` (its ``LinearReplacementScheduler``: the base rate at the first step).
    ``slope=None``: ``(1 - base) / (0.8 * total)``, so that ``p`` reaches 1 at 80% of phase 1's ``total`` steps.
    Works on Python numbers, numpy and traced jax values."""
    if slope is None:
        slope = (1.0 - base) / (0.8 * total)
    value = slope * step + base
    if isinstance(value, jax.Array):
        return jnp.minimum(1.0, value)
    return np.minimum(1.0, value)


def replacement_draws(step_key: jax.Array, p, num_modules: int) -> jax.Array:
    """Which modules use their successor at a step: ``[num_modules]`` Bernoulli(``p``) draws from the step's key
    (``fold_in(fold_in(state.rng, step), tag)``), one per module shared by the whole batch. ``p = 0``: none;
    ``p = 1``: all."""
    return jax.random.bernoulli(jax.random.fold_in(step_key, _REPLACE_TAG), p, (num_modules,))


def successor_params(predecessor: dict, successor_layers: dict) -> dict:
    """The successor as a plain k-layer BERT's parameter tree: the predecessor's embeddings, pooler and classifier
    around the successor layers ``{"layer_0": ..., "layer_{k-1}": ...}``."""
    bert = predecessor["bert"]
    return {"bert": {"embeddings": bert["embeddings"], "encoder": dict(successor_layers), "pooler": bert["pooler"]},
            "classifier": predecessor["classifier"]}


def theseus_logits(config: models.BertConfig, predecessor: dict, successor_layers: dict, input_ids, attention_mask,
                   token_type_ids, use_successor, *, deterministic: bool = True, dropout_key=None,
                   dtype=jnp.float32) -> jax.Array:
    """Phase 1's model: the predecessor (``config``, ``n`` layers) whose module ``i`` (predecessor layers
    ``i*r .. i*r + r-1``, ``r = n // k``) is replaced by successor layer ``i`` where ``use_successor[i]``.

    The choice is a ``jax.lax.cond`` per module: only the chosen branch runs (a ``where`` over both would run the
    predecessor block and the successor layer at every step; the draw is one scalar per module shared by the batch
    and by every device, so cond never becomes a select), and gradients reach only the branch taken. With every
    ``use_successor`` False this is the predecessor; with all True, the successor (:func:`successor_params`).
    Dropout keys: ``fold_in(dropout_key, part)``, one per embedding, layer and classifier.
    """
    k = len(successor_layers)
    n = config.num_hidden_layers
    if n % k:
        raise ValueError(f"{k} successor layers cannot replace blocks of a {n}-layer predecessor evenly")
    ratio = n // k
    rngs = (lambda part: {}) if deterministic else (lambda part: {"dropout": jax.random.fold_in(dropout_key, part)})
    bert = predecessor["bert"]
    layer = models.BertLayer(config, dtype)
    x = models.BertEmbeddings(config, dtype).apply({"params": bert["embeddings"]}, input_ids, token_type_ids,
                                                   deterministic, rngs=rngs(0))
    key_bias = attention.bias_from_mask(attention_mask)

    for i in range(k):
        def successor(x, i=i):
            return layer.apply({"params": successor_layers[f"layer_{i}"]}, x, key_bias, deterministic,
                               rngs=rngs(1 + n + i))

        def block(x, i=i):
            for j in range(i * ratio, (i + 1) * ratio):
                x = layer.apply({"params": bert["encoder"][f"layer_{j}"]}, x, key_bias, deterministic,
                                rngs=rngs(1 + j))
            return x

        x = jax.lax.cond(use_successor[i], successor, block, x)

    pooled = models.BertPooler(config, dtype).apply({"params": bert["pooler"]}, x)
    rate = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
    pooled = nn.Dropout(rate).apply({}, pooled, deterministic=deterministic, rngs=rngs(1 + n + k))
    classifier = nn.Dense(config.num_labels, dtype=dtype, param_dtype=jnp.float32)
    return classifier.apply({"params": predecessor["classifier"]}, pooled).astype(jnp.float32)


def make_theseus_step(config: models.BertConfig, tx, total: int, *, base: float, slope: float | None,
                      dropout: bool = True, dtype=jnp.float32) -> Callable:
    """Phase 1's per-device step ``step(state, batch, predecessor)``: the state's parameters are the successor layers
    only (the predecessor, embeddings, pooler and classifier are frozen, as in Theseus's code); each module uses its
    successor with probability ``replacement_rate(state.step, total, base, slope)``."""

    def objective(params, batch, dropout_key, step_key, hparams, predecessor, step):
        p = replacement_rate(step.astype(jnp.float32), total, base, slope)
        use = replacement_draws(step_key, p, len(params))
        logits = theseus_logits(config, predecessor, params, batch["input_ids"], batch["attention_mask"],
                                batch["token_type_ids"], use, deterministic=not dropout, dropout_key=dropout_key,
                                dtype=dtype)
        ce = losses.cross_entropy(logits, batch["label"], batch["valid"])
        return trainer.Terms(ce, 0.0, {"ce": ce}, {"replacing_rate": p, "replaced": jnp.mean(use)}, logits)

    inner = trainer.make_step(objective, tx)

    def step(state, batch, predecessor):
        return inner(state, batch, predecessor, state.step)

    return step


@dataclasses.dataclass(frozen=True)
class TheseusConfig:
    """A BERT-of-Theseus run (saved as ``theseus_config.json``). ``predecessor`` (default ``model.name``) is the
    fine-tuned ``n``-layer model; its ``k = model.num_layers`` successor layers start as the first ``k`` layers of
    ``model.name`` (Theseus's initialisation) and each replaces a block of ``n // k`` consecutive predecessor layers.

    Phase 1, module replacing (``optim``, in ``OUTPUT/phase1``): only the successor layers train, on CE, each module
    replaced with probability ``min(1, replacing_slope * t + replacing_rate)`` (Theseus's linear scheduler, base 0.3;
    ``replacing_slope`` None reaches 1 at 80% of phase 1). Phase 2, successor fine-tuning (``successor_optim``, in
    ``OUTPUT/phase2``, data order and dropout from ``seed + 1``): the k-layer successor alone (embeddings, layers,
    pooler, classifier; all trainable) on CE.
    """

    output_dir: str = configs.field("", "where checkpoints, logs and the successor go; reused to resume")
    model: ModelConfig = section(ModelConfig, name="")
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    successor_optim: OptimConfig = section(OptimConfig)
    run: RunConfig = section(RunConfig, eval_every=-1)
    predecessor: str | None = configs.field(None, "fine-tuned predecessor directory (default: model.name)")
    replacing_rate: float = configs.field(0.3, "base replacement probability at phase 1's first step (Theseus: 0.3)")
    replacing_slope: float | None = configs.field(None, "replacement probability added per step (default: reach 1 "
                                                        "at 80% of phase 1)")
    seed: int = configs.field(0, "data order, dropout and replacement draws")

    def __post_init__(self):
        _check_common("TheseusConfig", self.output_dir, self.model)
        if not 0.0 <= self.replacing_rate <= 1.0:
            raise configs.ConfigError(f"replacing_rate must be in [0, 1], got {self.replacing_rate}")
        if self.replacing_slope is not None and not self.replacing_slope >= 0:
            raise configs.ConfigError(f"replacing_slope must be non-negative, got {self.replacing_slope}")

    @property
    def predecessor_dir(self) -> str:
        return self.predecessor or self.model.name


def train_theseus(config: TheseusConfig, *, dp: parallel.DataParallel | None = None,
                  on_step: Callable[[int, dict], None] | None = None) -> DistillResult:
    """Compress ``config.predecessor_dir`` into ``model.num_layers`` layers by progressive module replacing, then
    fine-tune the successor; resumes from ``config.output_dir`` in either phase (a finished phase 1 is read back from
    its last checkpoint). ``on_step`` and the result count steps over both phases. The successor lands in
    ``OUTPUT/model`` (a plain k-layer BERT) with ``summary.json`` beside it."""
    run = _setup(config, THESEUS_CONFIG_FILE, config.predecessor_dir, dp)
    out, dp, is_writer, task, tokenizer, train = run.out, run.dp, run.is_writer, run.task, run.tokenizer, run.train
    pred_module, predecessor, dtype = run.teacher, run.teacher_params, config.model.jnp_dtype
    n, k = pred_module.config.num_hidden_layers, config.model.num_layers
    if k > n or n % k:
        raise configs.ConfigError(
            f"BERT-of-Theseus replaces blocks of n // k consecutive predecessor layers: the predecessor's {n} layers "
            f"must be a multiple of model.num_layers = {k}")
    _, init = models.from_pretrained(config.model.name, num_labels=task.num_labels, num_layers=k, dtype=dtype,
                                     seed=config.seed)
    trainer.check_batch_size(config.optim.batch_size, dp, "optim.batch_size")
    trainer.check_batch_size(config.successor_optim.batch_size, dp, "successor_optim.batch_size")
    tx1, total1 = configs.make_optimizer(config.optim, len(train))
    tx2, total2 = configs.make_optimizer(config.successor_optim, len(train))
    slope = config.replacing_slope
    if slope is None:
        slope = (1.0 - config.replacing_rate) / (0.8 * total1)
    if is_writer:
        configs.write(out, THESEUS_CONFIG_FILE, config)

    # Phase 1: module replacing; the state holds the successor layers only.
    step1 = make_theseus_step(pred_module.config, tx1, total1, base=config.replacing_rate, slope=slope,
                              dropout=config.model.dropout, dtype=dtype)
    state1 = trainer.new_state(init["bert"]["encoder"], tx1, config.seed)
    preemption = Preemption()  # Shared by both phases: a stop asked for at phase 1's last step stops phase 2.
    result1 = trainer.run_resumable(out / "phase1", step1, (predecessor,), state1, train, config.optim, config.run,
                                    seed=config.seed, data_cfg=config.data, total=total1, dp=dp,
                                    is_writer=is_writer, on_step=on_step, preemption=preemption)
    successor = successor_params(jax.device_get(predecessor), dp.unreplicate(result1.state).params)
    if result1.status != "finished":
        return DistillResult(status=result1.status, step=result1.step, params=successor, model_dir=None)

    # Phase 2: the successor alone, every parameter trained on CE.
    module = models.BertForSequenceClassification(dataclasses.replace(pred_module.config, num_hidden_layers=k),
                                                  dtype=dtype)
    step2 = trainer.make_train_step(module, tx2, trainer.LossConfig(kind="ce"), dropout=config.model.dropout)
    state2 = trainer.new_state(successor, tx2, config.seed + 1)
    result2 = trainer.run_resumable(out / "phase2", step2, (), state2, train, config.successor_optim, config.run,
                                    seed=config.seed + 1, data_cfg=config.data, total=total2, dp=dp,
                                    is_writer=is_writer, on_step=on_step, offset=total1, preemption=preemption)
    final = dp.unreplicate(result2.state).params
    step = total1 + result2.step
    model_dir = None
    if result2.status == "finished" and is_writer:
        model_dir = models.save_pretrained(module, final, out / "model", tokenizer=tokenizer)
        _write_summary(out, {"method": "bert-of-theseus", "status": result2.status, "step": step,
                             "phase1_steps": total1, "phase2_steps": total2, "predecessor": config.predecessor_dir,
                             "predecessor_layers": n, "successor_layers": k,
                             "replacing_rate": config.replacing_rate, "replacing_slope": slope,
                             "full_replacement_step": int(np.ceil((1.0 - config.replacing_rate) / slope))
                             if slope > 0 else None, "model_dir": str(model_dir)})
    return DistillResult(status=result2.status, step=step, params=final, model_dir=model_dir)
