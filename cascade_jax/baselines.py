"""The paper's early-exit baselines, DeeBERT, PABEE and FastBERT: a classifier after every layer, trained and
evaluated.

  MultiExitBert(config, head="pooler" | "shared_pooler" | "fastbert")     # apply(...) -> logits [num_layers, B, C]
  load_multi_exit(model_dir, head=None, seed=0) / save_multi_exit(module, params, directory)
  train_exits(ExitTrainConfig(output_dir, model=ModelConfig(fine-tuned dir), mode="deebert" | "pabee" | "fastbert"))
  predict_exit_logits(module, params, enc) -> [num_layers, N, C]
  fit_input_stats(module, params, enc) -> params    # DeeBERT's/PABEE's head inputs standardised (docs/design.md)
  exit_result(logits, rule, param) -> cascade.CascadeResult     # rule: "entropy", "max_prob" or "patience"
  patience_exit_layers(logits, patience) -> [N]                 # PABEE's own rule (cascade.patience_exits)

A multi-exit model is evaluated as a cascade whose stages are its layers (:meth:`cascade.CascadeSimulation.
from_logits`), so DeeBERT's confidence exits are the cascade's exit rule; only PABEE's patience needs its own code.
Heads, losses and the exit rules are described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import cascade, configs, data, losses, models, parallel, trainer, xla
from cascade_jax.configs import DataConfig, ModelConfig, OptimConfig, RunConfig, section

HEAD_KINDS = ("pooler", "shared_pooler", "fastbert")
EXIT_RULES = cascade.EXIT_METHOD_RULES
TRAIN_MODES = ("deebert", "pabee", "fastbert")
DEFAULT_HEAD = {"deebert": "pooler", "pabee": "shared_pooler", "fastbert": "fastbert"}
FASTBERT_HIDDEN = 128  # FastBERT's student classifier width and attention heads (its code: 128 and 2).
FASTBERT_HEADS = 2
CONFIG_FILE = "exit_config.json"
INPUT_STATS = configs.INPUT_STATS  # The fixed standardisation of DeeBERT's and PABEE's head inputs.

_HEADS_FILE = "internal_classifiers.safetensors"
_META_FILE = "multi_exit.json"


# ----------------------------------------------------------------------------------------------------------------
# The model.


def _classifier(config: models.BertConfig, dtype, name: str) -> nn.Dense:
    """A dense layer to the classes, initialised like BERT's own classifier."""
    return nn.Dense(config.num_labels, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(config.initializer_range), name=name)


def _dropout_rate(c: models.BertConfig) -> float:
    return c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout


class _FastBertHead(nn.Module):
    """FastBERT's student classifier (its code's ``Classifier``): ``tanh(W_0 h)`` to 128 dimensions at every
    position, one multi-head self-attention over the positions (keys masked by ``attention_mask``; query, key and
    value projections, softmax, dropout on the probabilities, output projection), then at [CLS]
    ``W_2 tanh(W_1 a_[CLS])``. Only the [CLS] query is computed, since only its output is read (the same output
    as attending from every position)."""

    config: models.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state, attention_mask, deterministic: bool):
        c, width, heads = self.config, FASTBERT_HIDDEN, FASTBERT_HEADS
        head_dim = width // heads

        def dense(features, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=nn.initializers.normal(c.initializer_range), name=name)

        h = jnp.tanh(dense(width, "reduce")(state))  # [B, L, 128]
        q = dense(width, "query")(h[:, :1]).reshape(h.shape[0], 1, heads, head_dim)
        k = dense(width, "key")(h).reshape(h.shape[:2] + (heads, head_dim))
        v = dense(width, "value")(h).reshape(h.shape[:2] + (heads, head_dim))
        additive = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(head_dim)
        probs = nn.Dropout(c.attention_probs_dropout_prob)(jax.nn.softmax(scores + additive, axis=-1),
                                                          deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v).reshape(h.shape[0], width)
        x = jnp.tanh(dense(width, "dense")(dense(width, "attention_output")(context)))
        return dense(c.num_labels, "classifier")(x).astype(jnp.float32)


class _InputStats(nn.Module):
    """Per-feature standardisation of a head's input, batch-norm style. In training (``deterministic=False``) it uses
    the mean and standard deviation of the batch's real rows (``valid``; padding rows left out), gradients flowing
    through them; otherwise the fixed ``mean`` and ``inv_std`` parameters, which :func:`fit_input_stats` sets from the
    trained model after training (they get no gradient in training and no weight decay: :func:`configs.decay_mask`).
    A standard deviation below 1e-3 of the largest one is raised to it, so a feature that never varies is not blown
    up."""

    features: int

    @nn.compact
    def __call__(self, x, valid, deterministic: bool):
        mean = self.param("mean", nn.initializers.zeros, (self.features,), jnp.float32)
        inv_std = self.param("inv_std", nn.initializers.ones, (self.features,), jnp.float32)
        self.sow("intermediates", "head_input", x)
        x32 = x.astype(jnp.float32)
        if deterministic:
            return ((x32 - jax.lax.stop_gradient(mean)) * jax.lax.stop_gradient(inv_std)).astype(x.dtype)
        w = valid.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        count = jnp.maximum(w.sum(), 1.0)
        axes = tuple(range(x.ndim - 1))
        batch_mean = (w * x32).sum(axes) / count
        batch_std = jnp.sqrt((w * (x32 - batch_mean) ** 2).sum(axes) / count)
        return ((x32 - batch_mean) / floored_std(batch_std)).astype(x.dtype)


def floored_std(std):
    """``std`` with every entry raised to at least 1e-3 of its largest (and above 0)."""
    return jnp.maximum(std, jnp.maximum(1e-3 * std.max(), 1e-30))


class _InternalHead(nn.Module):
    """One layer's exit. ``pooler`` (DeeBERT): the layer's [CLS] vector, standardised, into the head's own pooler and
    classifier; ``shared_pooler`` (PABEE): the model's pooler applied to the layer, standardised, into the layer's
    classifier. The standardisation (:class:`_InputStats`) is there because MiniLM's [CLS] vectors at layers 1-3 vary
    across examples by about 1e-4 of their norm: unscaled, the heads learn nothing (docs/design.md)."""

    config: models.BertConfig
    head: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state, shared_pooled, deterministic: bool, attention_mask=None):
        if self.head == "fastbert":
            return _FastBertHead(self.config, self.dtype, name="fastbert")(state, attention_mask, deterministic)
        stats = _InputStats(self.config.hidden_size, name=INPUT_STATS)
        valid = attention_mask[:, 0] > 0  # Padding rows of a batch have no tokens.
        if self.head == "pooler":
            x = models.BertPooler(self.config, self.dtype, name="pooler")(stats(state[:, :1], valid, deterministic))
        else:
            x = stats(shared_pooled, valid, deterministic)
        x = nn.Dropout(_dropout_rate(self.config))(x, deterministic=deterministic)
        return _classifier(self.config, self.dtype, "classifier")(x).astype(jnp.float32)


class _InternalClassifiers(nn.Module):
    config: models.BertConfig
    head: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states, pooled, deterministic: bool, attention_mask=None):
        return [
            _InternalHead(self.config, self.head, self.dtype, name=f"layer_{i}")(states[i], pooled[i], deterministic,
                                                                                 attention_mask)
            for i in range(self.config.num_hidden_layers - 1)
        ]


class MultiExitBert(nn.Module):
    """BERT with a classifier after every layer; ``apply`` returns float32 logits ``[num_layers, B, C]``.

    The parameter tree is :class:`models.BertForSequenceClassification`'s (``bert``, ``classifier``) plus
    ``internal_classifiers/layer_i`` for layers ``0 .. n-2``. Row ``i`` is the answer after encoder layer ``i``; the
    last row is the model's own pooler + classifier. ``head="pooler"`` (DeeBERT's highway): each internal head has
    its own pooler; ``"shared_pooler"`` (PABEE): the model's pooler feeds every layer's own dense classifier;
    ``"fastbert"``: FastBERT's student classifier (:class:`_FastBertHead`: 128 wide, self-attention over the layer's
    positions masked by ``attention_mask``), ``internal_classifiers/layer_i/fastbert/...``.
    """

    config: models.BertConfig
    head: str = "pooler"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        c = self.config
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {self.head!r}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden, pooled = models.BertModel(c, self.dtype, pool_every_layer=True, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic)
        states = hidden[1:]
        final = nn.Dropout(_dropout_rate(c))(pooled[-1], deterministic=deterministic)
        final = _classifier(c, self.dtype, "classifier")(final).astype(jnp.float32)
        internal = _InternalClassifiers(c, self.head, self.dtype, name="internal_classifiers")(
            states, pooled, deterministic, attention_mask)
        return jnp.stack(internal + [final])


def load_multi_exit(model_dir, *, head: str | None = None, dtype=jnp.float32, seed: int = 0
                    ) -> tuple[MultiExitBert, dict]:
    """A :class:`MultiExitBert` from a model directory in Hugging Face layout.

    The backbone and final classifier come from the directory (e.g. ``fit``'s ``OUTPUT/model``). A directory
    written by :func:`save_multi_exit` also holds the internal heads (and ``head`` defaults to the saved kind);
    otherwise they are initialised from ``seed`` like BERT's own heads and ``head`` defaults to ``"pooler"``.
    """
    directory = models.resolve_model_dir(model_dir)
    meta_file = directory / _META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if meta is not None and head is not None and head != meta["head"]:
        raise ValueError(f"{directory} holds {meta['head']!r} internal heads, but head={head!r} was asked for")
    head = head or (meta["head"] if meta else "pooler")
    config = models.load_config(directory)
    base_module, base = models.from_pretrained(directory, num_labels=config.num_labels, dtype=dtype, seed=seed)
    module = MultiExitBert(base_module.config, head=head, dtype=dtype)
    if meta is not None:
        from safetensors.numpy import load_file

        flat = load_file(str(directory / _HEADS_FILE))
        heads = flax.traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
        expected = jax.eval_shape(lambda: _init(module, jax.random.PRNGKey(0))["internal_classifiers"])
        got = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), heads)
        want = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), expected)
        if got != want:
            missing = sorted(set(flax.traverse_util.flatten_dict(want, sep="/")) -
                             set(flax.traverse_util.flatten_dict(got, sep="/")))
            hint = (f"; it lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (heads saved before "
                    f"the {INPUT_STATS} standardisation existed: train the exits again)" if missing else "")
            raise models.ModelLoadError(f"{directory / _HEADS_FILE}: internal heads do not fit the model's config"
                                        f"{hint}")
    else:
        heads = jax.jit(lambda rng: _init(module, rng)["internal_classifiers"])(jax.random.PRNGKey(seed))
    return module, {"bert": base["bert"], "classifier": base["classifier"], "internal_classifiers": heads}


def _init(module: MultiExitBert, rng) -> dict:
    ids = jnp.zeros((1, 8), jnp.int32)
    return module.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids))["params"]


def save_multi_exit(module: MultiExitBert, params, directory, tokenizer=None) -> pathlib.Path:
    """The backbone + final classifier as a normal Hugging Face directory (``models.save_pretrained``), plus
    ``internal_classifiers.safetensors`` and ``multi_exit.json`` (head kind) for :func:`load_multi_exit`."""
    from safetensors.numpy import save_file

    directory = models.save_pretrained(
        models.BertForSequenceClassification(module.config, dtype=module.dtype),
        {"bert": params["bert"], "classifier": params["classifier"]}, directory, tokenizer=tokenizer)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params["internal_classifiers"]), sep="/")
    save_file({k: np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for k, v in flat.items()},
              str(directory / _HEADS_FILE))
    (directory / _META_FILE).write_text(
        json.dumps({"head": module.head, "num_layers": module.config.num_hidden_layers}, indent=2) + "\n")
    return directory


def fit_input_stats(module: MultiExitBert, params, enc: data.Encoded, *, max_examples: int = 2048,
                    batch_size: int = 128, buckets: Sequence[int] = data.DEFAULT_BUCKETS) -> dict:
    """``params`` with every internal head's :class:`_InputStats` set to the per-feature mean and ``1 / std`` of
    that head's input over up to ``max_examples`` examples of ``enc`` (evenly spaced in split order, so a split
    sorted by label is sampled across its labels), the standard deviation floored as in training
    (:func:`floored_std`). FastBERT heads have no statistics: ``params`` unchanged."""
    if module.head == "fastbert":
        return params
    n = min(len(enc), max_examples)
    if n < 2:
        raise data.DataError(f"{enc.task}/{enc.split}: at least 2 examples are needed to fit the exit heads' input "
                             f"statistics, got {len(enc)}")
    chosen = np.unique(np.linspace(0, len(enc) - 1, n).round().astype(np.int64))
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    for start in range(0, len(chosen), batch_size):
        batch = data.make_batch(enc, chosen[start:start + batch_size], batch_size, buckets=buckets)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        captured = flax.traverse_util.flatten_dict(_head_inputs(module, params, inputs), sep="/")
        for key, (value,) in captured.items():
            layer = key.split("/")[1]
            x = np.asarray(value, np.float64).reshape(batch_size, -1)[batch["valid"]]
            sums[layer] = sums.get(layer, 0.0) + x.sum(0)
            squares[layer] = squares.get(layer, 0.0) + (x * x).sum(0)
    heads = flax.core.unfreeze(params["internal_classifiers"])
    for layer, total in sums.items():
        mean = total / len(chosen)
        std = np.asarray(floored_std(np.sqrt(np.maximum(squares[layer] / len(chosen) - mean * mean, 0.0))))
        heads[layer][INPUT_STATS] = {"mean": jnp.asarray(mean, jnp.float32),
                                     "inv_std": jnp.asarray(1 / std, jnp.float32)}
    return {**params, "internal_classifiers": heads}


@functools.partial(xla.jit, static_argnums=0)
def _head_inputs(module: MultiExitBert, params, batch):
    _, state = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                            mutable=["intermediates"])
    return state["intermediates"]


# ----------------------------------------------------------------------------------------------------------------
# Training.


def deebert_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """DeeBERT stage 2: ``sum_{j < n} CE_j`` over the internal classifiers (the last row, the final classifier, is
    left out). ``logits``: ``[n, B, C]``."""
    return sum(losses.cross_entropy(logits[j], labels, valid) for j in range(logits.shape[0] - 1))


def pabee_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """PABEE: ``sum_j j * CE_j / sum_j j`` over all ``n`` classifiers, layers counted from 1."""
    n = logits.shape[0]
    return sum((j + 1) * losses.cross_entropy(logits[j], labels, valid) for j in range(n)) / (n * (n + 1) / 2)


def fastbert_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """FastBERT's self-distillation: ``sum_{j < n} KL(p_j || p_n)`` with ``p_n`` the softmax of the model's own final
    classifier (the last row, a fixed target); see :func:`losses.self_distillation_loss`. ``labels`` are unused
    (FastBERT distils on unlabelled data)."""
    return losses.self_distillation_loss(logits[:-1], logits[-1], valid)


LOSSES = {"deebert": deebert_loss, "pabee": pabee_loss, "fastbert": fastbert_loss}


@dataclasses.dataclass(frozen=True)
class ExitTrainConfig:
    """A DeeBERT, PABEE or FastBERT training run (saved as ``exit_config.json``): ``model.name`` is the fine-tuned
    model directory the exits are added to. ``deebert`` trains the internal heads only (backbone and final classifier
    frozen), ``pabee`` everything on the weighted loss, ``fastbert`` the internal heads only (as ``deebert``) by
    self-distillation from the final classifier. FastBERT's exit rule ("uncertainty" < speed) is the normalised
    entropy rule, ``exit_result(logits, "entropy", speed)``."""

    output_dir: str = configs.field("", "where checkpoints, logs and the multi-exit model go; reused to resume")
    model: ModelConfig = section(ModelConfig, name="")
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig, epochs=2.0)
    run: RunConfig = section(RunConfig, eval_every=-1)
    mode: str = configs.field("deebert", "deebert: internal heads only, backbone frozen; pabee: everything, weighted "
                                         "loss; fastbert: internal heads only, self-distilled from the final "
                                         "classifier", choices=TRAIN_MODES)
    head: str | None = configs.field(None, "internal head kind (default: pooler for deebert, shared_pooler for "
                                           "pabee, fastbert for fastbert)", choices=HEAD_KINDS)
    seed: int = configs.field(0, "data order, dropout and the new heads' initialisation")

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise configs.ConfigError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.head is not None and self.head not in HEAD_KINDS:
            raise configs.ConfigError(f"head must be one of {HEAD_KINDS}, got {self.head!r}")
        if not self.output_dir or not self.model.name:
            raise configs.ConfigError("ExitTrainConfig needs an output_dir and model.name (a fine-tuned model)")


@dataclasses.dataclass
class ExitTrainResult:
    status: str  # "finished" or "preempted"
    step: int
    params: Any
    model_dir: pathlib.Path | None


def _partition(params, mode: str) -> tuple[dict, dict]:
    """(trainable, frozen) top-level parts of the parameter tree."""
    params = dict(params)
    if mode in ("deebert", "fastbert"):
        return {"internal_classifiers": params.pop("internal_classifiers")}, params
    return params, {}


def make_exit_step(module: MultiExitBert, tx, mode: str, dropout: bool = True) -> Callable:
    """The per-device step of ``mode``'s objective; the frozen parameters are its extra argument."""
    objective_fn = LOSSES[mode]

    def objective(params, batch, dropout_key, step_key, hparams, frozen):
        logits = module.apply({"params": {**frozen, **params}}, batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"], deterministic=not dropout, rngs={"dropout": dropout_key})
        value = objective_fn(logits, batch["label"], batch["valid"])
        return trainer.Terms(value, 0.0, {mode: value}, {}, logits)

    return trainer.make_step(objective, tx)


def train_exits(config: ExitTrainConfig, *, dp: parallel.DataParallel | None = None,
                on_step: Callable[[int, dict], None] | None = None) -> ExitTrainResult:
    """Train the exits as ``config`` says; resumes from ``config.output_dir`` (SIGTERM or Ctrl-C checkpoint and
    stop). In ``deebert`` and ``fastbert`` modes the backbone and final classifier come back bitwise unchanged. The
    multi-exit model lands in ``OUTPUT/model`` (loadable by :func:`load_multi_exit`)."""
    out = pathlib.Path(config.output_dir)
    dp = dp or parallel.DataParallel(config.run.backend)
    is_writer = jax.process_index() == 0
    configs.check_resume(out, CONFIG_FILE, config)
    head = config.head or DEFAULT_HEAD[config.mode]
    tokenizer = models.tokenizer_for(config.model.name)
    d = config.data
    train = data.subset(data.encode_split(d.task, "train", d.source, tokenizer=tokenizer, max_length=d.max_length),
                        d.train_subset)
    module, params = load_multi_exit(config.model.name, head=head, dtype=config.model.jnp_dtype, seed=config.seed)
    models.check_inputs_fit(module.config, max_length=d.max_length, vocab_size=len(tokenizer),
                            source=config.model.name)
    trainable, frozen = _partition(params, config.mode)
    tx, total = configs.make_optimizer(config.optim, len(train))
    trainer.check_batch_size(config.optim.batch_size, dp)
    state = trainer.new_state(trainable, tx, config.seed)
    if is_writer:
        configs.write(out, CONFIG_FILE, config)
    step = make_exit_step(module, tx, config.mode, config.model.dropout)
    result = trainer.run_resumable(out, step, (frozen,), state, train, config.optim, config.run, seed=config.seed,
                                   data_cfg=d, total=total, dp=dp, is_writer=is_writer, on_step=on_step)
    trained = dp.unreplicate(result.state).params
    final = {**frozen, **trained}
    final = {k: final[k] for k in params}  # The input's key order.
    model_dir = None
    if result.status == "finished":
        final = fit_input_stats(module, final, train, batch_size=config.run.eval_batch_size, buckets=d.buckets)
    if result.status == "finished" and is_writer:
        model_dir = save_multi_exit(module, final, out / "model", tokenizer=tokenizer)
        (out / "summary.json").write_text(json.dumps(
            {"mode": config.mode, "head": head, "step": result.step, "model_dir": str(model_dir)}, indent=2) + "\n")
    return ExitTrainResult(status=result.status, step=result.step, params=final, model_dir=model_dir)


# ----------------------------------------------------------------------------------------------------------------
# Inference and exit rules.


def predict_exit_logits(module: MultiExitBert, params, enc: data.Encoded, batch_size: int = 128, *,
                        buckets: Sequence[int] = data.DEFAULT_BUCKETS) -> np.ndarray:
    """float32 logits ``[num_layers, N, C]`` of every classifier on every example of ``enc`` (split order).

    The examples are batched in order of length (each batch padded to its own length bucket) and put back in split
    order. Compiled once per (module config, batch shape) in a process, whatever the parameters."""
    order = np.argsort(enc.lengths, kind="stable")
    pending = []
    for start in range(0, len(enc), batch_size):
        idx = order[start:start + batch_size]
        batch = data.make_batch(enc, idx, batch_size, buckets=buckets)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        pending.append((_exit_logits(module, params, inputs), batch["valid"]))  # Fetch after dispatching all.
    out = np.concatenate([np.asarray(lg, np.float32)[:, v] for lg, v in pending], axis=1)
    result = np.empty_like(out)
    result[:, order] = out
    return result


@functools.partial(xla.jit, static_argnums=0)
def _exit_logits(module: MultiExitBert, params, batch):
    return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


patience_exit_layers = cascade.patience_exits  # PABEE's rule (0: no early exit); see cascade.patience_exits.


def exit_result(logits, rule: str, param, *, reference_layers: int | None = None) -> cascade.CascadeResult:
    """Early exit over all layers' ``logits`` [num_layers, N, C]: ``"entropy"`` / ``"max_prob"`` (the cascade's
    exit rule with ``param`` the threshold, each layer a stage) or ``"patience"`` (PABEE)."""
    sim = cascade.CascadeSimulation.from_logits(logits, reference_layers=reference_layers)
    if rule == "patience":
        return sim.result_at(patience_exit_layers(logits, param), rule="patience")
    if rule not in EXIT_RULES:
        raise ValueError(f"rule must be one of {EXIT_RULES}, got {rule!r}")
    return sim.result(float(param), rule)
