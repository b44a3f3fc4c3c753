"""The paper's baselines: static BERT-kL and the early-exit models DeeBERT and PABEE, evaluated like the cascade.

Models::

  MultiExitBert(config, head="pooler" | "shared_pooler")     # apply(...) -> logits [num_layers, B, C]
  load_multi_exit(model_dir, *, head=None, seed=0) -> (module, params)
  save_multi_exit(module, params, directory, tokenizer=None) -> directory
  train_exits(module, params, train, ExitTrainConfig(mode="deebert" | "pabee", ...)) -> ExitTrainResult
  predict_exit_logits(module, params, enc, batch_size) -> np.ndarray [num_layers, N, C]

Exit rules (pure numpy over a ``[num_layers, N, C]`` array; each returns the 0-based index of the answering layer)::

  confidence_exit_layers(probs, threshold, rule="entropy" | "max_prob") -> [N]   # DeeBERT
  patience_exit_layers(scores, patience) -> [N]                                   # PABEE
  exit_result(logits, rule, param) -> ExitResult;  static_result(logits, k, full_layers) -> ExitResult
  layer_exit_macs(config, seq_len) -> [num_layers(, N)]   # cost of answering at each layer

**The multi-exit model.** :class:`MultiExitBert` has the parameter tree of
:class:`models.BertForSequenceClassification` (``bert`` with ``embeddings``/``encoder``/``pooler``, and
``classifier``), so a fine-tuned model directory loads into it unchanged, plus ``internal_classifiers`` with one
head ``layer_i`` after each encoder layer ``i = 0 .. n-2``. The last layer answers with the model's own pooler and
classifier. Two head kinds:

* ``"pooler"`` (DeeBERT's "highway", the default for DeeBERT): each internal head has its own pooler,
  ``tanh(W_p h_[CLS] + b_p)``, then dropout and a dense ``W_c`` to the classes.
* ``"shared_pooler"`` (PABEE's BERT code): the model's pooler is applied to each layer's ``[CLS]`` and each layer
  has its own dense classifier ``W_c`` (dropout before it).

Either costs ``H*H + H*C`` multiply-adds per layer passed.

**Training.** DeeBERT (Xin et al., 2020), two stages: stage 1 is an ordinary fine-tuning of the backbone with its
final classifier (``trainer.fit``); stage 2 (``mode="deebert"``) freezes the backbone *and* the final classifier and
trains only the internal heads on the sum of their cross entropies, ``sum_{j<n} CE_j``. PABEE (Zhou et al., 2020),
``mode="pabee"``: every classifier (the final one included) and the backbone are trained jointly on the weighted
average ``sum_j j * CE_j / sum_j j`` (layers counted from 1). Here PABEE starts from a fine-tuned model directory
(the paper starts from the pre-trained model; both are the same objective). Optimiser: AdamW with linear warm-up and
decay and global-norm clipping (``trainer.linear_warmup_decay``, ``trainer.decay_mask``); epochs over
``data.train_batches``; dropout on, as in both papers' training mode.

**Inference accounting.** All layers' logits are computed once (:func:`predict_exit_logits`) and the exit is
simulated per example: an example that answers at layer ``j`` (1-based) costs ``j`` layers. This is the standard
accounting for these baselines (the DeeBERT and PABEE papers count layers the same way); running the model with
real early exit is not implemented. Layer speed-up = ``num_layers / mean layers executed``; FLOPs speed-up divides
the full model's :func:`cascade.bert_flops` by the mean cost of answering, which counts every internal head passed
(so an example answering at the last layer costs slightly *more* than the plain model).

**Exit rules.** ``probs`` is the softmax of each layer's logits (float64 on the host).

* ``"entropy"`` (DeeBERT): exit at the first layer whose normalised entropy ``H(p) / log C`` is strictly below the
  threshold -- the same statistic and comparison as ``cascade``'s ``exit_rule="entropy"``. DeeBERT's published
  thresholds are on raw entropy in nats: raw ``S`` is normalised ``S / log C``.
* ``"max_prob"``: exit at the first layer with ``max p > threshold`` (the cascade's rule).
* ``"patience"`` (PABEE's counter): a counter starts at 0 at the first layer; at each later layer it is incremented
  when the prediction (argmax; the first class on ties) equals the previous layer's, else reset to 0; the example
  exits at the first layer where the counter equals ``patience``. So patience 0 exits at layer 1, and patience
  ``t`` exits once ``t + 1`` consecutive layers agree. The last layer always answers (so any ``patience >=
  num_layers - 1`` means no early exit).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cascade_jax import cascade, data, losses, models, trainer

__all__ = [
    "HEAD_KINDS",
    "EXIT_RULES",
    "TRAIN_MODES",
    "MultiExitBert",
    "load_multi_exit",
    "save_multi_exit",
    "ExitTrainConfig",
    "ExitTrainResult",
    "train_exits",
    "deebert_loss",
    "pabee_loss",
    "predict_exit_logits",
    "softmax",
    "normalized_entropy",
    "confidence_exit_layers",
    "patience_exit_layers",
    "ExitResult",
    "exit_result",
    "static_result",
    "layer_exit_macs",
]

HEAD_KINDS = ("pooler", "shared_pooler")
EXIT_RULES = ("entropy", "max_prob", "patience")
TRAIN_MODES = ("deebert", "pabee")
DEFAULT_HEAD = {"deebert": "pooler", "pabee": "shared_pooler"}

_HEADS_FILE = "internal_classifiers.safetensors"
_META_FILE = "multi_exit.json"


# ----------------------------------------------------------------------------------------------------------------
# The model.


class _Backbone(nn.Module):
    """``models.BertModel``'s parameters and computation, returning the pooler applied to *every* layer's [CLS]."""

    config: models.BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool):
        c = self.config
        x = models.BertEmbeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        additive_mask = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        states = models.BertEncoder(c, self.dtype, name="encoder")(x, additive_mask, deterministic)
        pooler = models.BertPooler(c, self.dtype, name="pooler")
        return states[1:], [pooler(s) for s in states[1:]]


def _classifier(config: models.BertConfig, dtype, name: str) -> nn.Dense:
    """A dense layer to the classes, initialised like BERT's own classifier."""
    return nn.Dense(config.num_labels, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(config.initializer_range), name=name)


class _InternalHead(nn.Module):
    config: models.BertConfig
    head: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state, shared_pooled, deterministic: bool):
        c = self.config
        if self.head == "pooler":
            x = models.BertPooler(c, self.dtype, name="pooler")(state)
        else:
            x = shared_pooled
        dropout = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        x = nn.Dropout(dropout)(x, deterministic=deterministic)
        return _classifier(c, self.dtype, "classifier")(x).astype(jnp.float32)


class _InternalClassifiers(nn.Module):
    config: models.BertConfig
    head: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states, pooled, deterministic: bool):
        return [
            _InternalHead(self.config, self.head, self.dtype, name=f"layer_{i}")(states[i], pooled[i], deterministic)
            for i in range(self.config.num_hidden_layers - 1)
        ]


class MultiExitBert(nn.Module):
    """BERT with a classifier after every layer; ``apply`` returns float32 logits ``[num_layers, B, C]``.

    Row ``i`` is the answer after encoder layer ``i`` (0-based); the last row is the model's own pooler + classifier,
    identical to :class:`models.BertForSequenceClassification` with the same ``bert`` and ``classifier`` params.
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
        states, pooled = _Backbone(c, self.dtype, name="bert")(input_ids, attention_mask, token_type_ids, deterministic)
        dropout = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        final = nn.Dropout(dropout)(pooled[-1], deterministic=deterministic)
        final = _classifier(c, self.dtype, "classifier")(final).astype(jnp.float32)
        internal = _InternalClassifiers(c, self.head, self.dtype, name="internal_classifiers")(
            states, pooled, deterministic
        )
        return jnp.stack(internal + [final])


def load_multi_exit(
    model_dir, *, head: str | None = None, dtype=jnp.float32, seed: int = 0
) -> tuple[MultiExitBert, dict]:
    """A :class:`MultiExitBert` from a model directory in Hugging Face layout.

    The backbone and final classifier come from the directory (e.g. ``trainer.fit``'s ``OUTPUT/model``). If the
    directory was written by :func:`save_multi_exit` its internal heads are loaded too (and ``head`` defaults to
    the saved kind); otherwise they are freshly initialised from ``seed`` (normal(initializer_range), zero bias,
    like BERT's own heads) and ``head`` defaults to ``"pooler"``.
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
            raise models.ModelLoadError(f"{directory / _HEADS_FILE}: internal heads do not fit the model's config")
    else:
        heads = jax.jit(lambda rng: _init(module, rng)["internal_classifiers"])(jax.random.PRNGKey(seed))
    return module, {"bert": base["bert"], "classifier": base["classifier"], "internal_classifiers": heads}


def _init(module: MultiExitBert, rng) -> dict:
    ids = jnp.zeros((1, 8), jnp.int32)
    return module.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids))["params"]


def save_multi_exit(module: MultiExitBert, params, directory, tokenizer=None) -> pathlib.Path:
    """Write the backbone + final classifier as a normal Hugging Face directory (``models.save_pretrained``: it stays
    loadable by ``models.from_pretrained`` and transformers) plus ``internal_classifiers.safetensors`` and
    ``multi_exit.json`` (head kind), which :func:`load_multi_exit` reads back."""
    from safetensors.numpy import save_file

    directory = models.save_pretrained(
        models.BertForSequenceClassification(module.config, dtype=module.dtype),
        {"bert": params["bert"], "classifier": params["classifier"]},
        directory,
        tokenizer=tokenizer,
    )
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params["internal_classifiers"]), sep="/")
    save_file({k: np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for k, v in flat.items()},
              str(directory / _HEADS_FILE))
    (directory / _META_FILE).write_text(
        json.dumps({"head": module.head, "num_layers": module.config.num_hidden_layers}, indent=2) + "\n"
    )
    return directory


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


@dataclasses.dataclass(frozen=True)
class ExitTrainConfig:
    """How :func:`train_exits` trains.

    mode: ``deebert`` (internal heads only, backbone and final classifier frozen) or ``pabee`` (everything).
    epochs (may be fractional) and max_steps (a cap) set the number of steps; the other fields as in
    ``trainer.TrainConfig``.
    """

    mode: str = "deebert"
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    dropout: bool = True
    buckets: tuple[int, ...] = data.DEFAULT_BUCKETS

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.batch_size < 1 or self.epochs <= 0:
            raise ValueError("batch_size and epochs must be positive")


@dataclasses.dataclass
class ExitTrainResult:
    params: Any
    losses: list[float]  # The training objective at every step.
    steps: int


def _partition(params, mode: str) -> tuple[dict, dict]:
    """(trainable, frozen) top-level parts of the parameter tree."""
    params = dict(params)
    if mode == "deebert":
        return {"internal_classifiers": params.pop("internal_classifiers")}, params
    return params, {}


def train_exits(module: MultiExitBert, params, train: data.Encoded, config: ExitTrainConfig) -> ExitTrainResult:
    """Train a multi-exit model on ``train`` as ``config.mode`` says (see the module doc).

    In ``deebert`` mode only ``params["internal_classifiers"]`` changes; the other arrays are returned as the very
    same objects (bitwise unchanged). Returns the parameters and the objective at each step.
    """
    objective_fn = deebert_loss if config.mode == "deebert" else pabee_loss
    spe = data.steps_per_epoch(len(train), config.batch_size)
    total = max(1, math.ceil(config.epochs * spe))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    tx = trainer.adamw(config.learning_rate, total, warmup_ratio=config.warmup_ratio,
                       weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm)
    trainable, frozen = _partition(params, config.mode)
    opt_state = tx.init(trainable)
    base_key = jax.random.PRNGKey(config.seed)

    @jax.jit
    def step(trainable, frozen, opt_state, batch, key):
        def objective(tr):
            logits = module.apply(
                {"params": {**frozen, **tr}}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                deterministic=not config.dropout, rngs={"dropout": key},
            )
            return objective_fn(logits, batch["label"], batch["valid"])

        value, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, value

    history = []
    done = 0
    epoch = 0
    keys = ("input_ids", "attention_mask", "token_type_ids", "label", "valid")
    while done < total:
        for batch in data.train_batches(train, config.batch_size, seed=config.seed, epoch=epoch,
                                        buckets=config.buckets):
            batch = {k: batch[k] for k in keys}
            trainable, opt_state, value = step(trainable, frozen, opt_state, batch, jax.random.fold_in(base_key, done))
            history.append(value)
            done += 1
            if done >= total:
                break
        epoch += 1
    out = {**frozen, **trainable}
    out = {k: out[k] for k in params}  # The input's key order.
    return ExitTrainResult(params=out, losses=[float(v) for v in jax.device_get(history)], steps=done)


# ----------------------------------------------------------------------------------------------------------------
# Inference.


def predict_exit_logits(
    module: MultiExitBert, params, enc: data.Encoded, batch_size: int = 128, *,
    buckets: Sequence[int] = data.DEFAULT_BUCKETS,
) -> np.ndarray:
    """float32 logits ``[num_layers, N, C]`` of every classifier on every example of ``enc`` (split order).

    Compiled once per (module config, batch shape) in a process, whatever the parameters."""
    out = []
    for batch in data.eval_batches(enc, batch_size, buckets=buckets):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append(np.asarray(_exit_logits(module, params, inputs), np.float32)[:, batch["valid"]])
    return np.concatenate(out, axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _exit_logits(module: MultiExitBert, params, batch):
    return module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


# ----------------------------------------------------------------------------------------------------------------
# Exit rules.


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def normalized_entropy(probs) -> np.ndarray:
    """``H(p) / log C`` over the last axis, float64, in [0, 1] (0 for C = 1); ``0 log 0 = 0``."""
    p = np.asarray(probs, np.float64)
    c = p.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return h / math.log(c) if c > 1 else np.zeros_like(h)


def _first_exit(exits: np.ndarray) -> np.ndarray:
    """Index of the first True per column of ``exits`` [L, N], the last row counting as True."""
    exits = np.asarray(exits, bool).copy()
    exits[-1] = True
    return np.argmax(exits, axis=0)


def _check_scores(scores) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(f"expected a non-empty [num_layers, N, C] array, got shape {scores.shape}")
    return scores


def confidence_exit_layers(probs, threshold: float, rule: str = "entropy") -> np.ndarray:
    """0-based answering layer ``[N]`` of DeeBERT-style exiting from ``probs`` ``[num_layers, N, C]``.

    ``"entropy"``: first layer with normalised entropy ``< threshold``; ``"max_prob"``: first with ``max p >
    threshold``; the last layer always answers.
    """
    probs = _check_scores(probs)
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    if rule == "entropy":
        exits = normalized_entropy(probs) < threshold
    elif rule == "max_prob":
        exits = np.asarray(probs, np.float64).max(axis=-1) > threshold
    else:
        raise ValueError(f"rule must be 'entropy' or 'max_prob', got {rule!r}")
    return _first_exit(exits)


def patience_exit_layers(scores, patience: int) -> np.ndarray:
    """0-based answering layer ``[N]`` of PABEE's patience counter over ``scores`` (logits or probs)
    ``[num_layers, N, C]``: see the module doc. Predictions are ``argmax`` (first class on ties)."""
    scores = _check_scores(scores)
    if isinstance(patience, bool) or int(patience) != patience or patience < 0:
        raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
    pred = np.argmax(scores, axis=-1)  # [L, N]
    counter = np.zeros(pred.shape, np.int64)
    for j in range(1, pred.shape[0]):
        counter[j] = np.where(pred[j] == pred[j - 1], counter[j - 1] + 1, 0)
    return _first_exit(counter == int(patience))


@dataclasses.dataclass(frozen=True, eq=False)
class ExitResult:
    """What a single-model exit method answered, in input order.

    probs: [N, C] the answering classifier's distribution; exit_layer: [N] its 0-based layer index (an example
    costs ``exit_layer + 1`` layers); num_layers: layers of the full model (the speed-up reference); rule, param.
    """

    probs: np.ndarray
    exit_layer: np.ndarray
    num_layers: int
    rule: str
    param: float

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.probs, axis=-1)

    @property
    def layers(self) -> np.ndarray:
        return self.exit_layer + 1

    @property
    def mean_layers(self) -> float:
        return float(np.mean(self.layers))

    @property
    def layer_speedup(self) -> float:
        return self.num_layers / self.mean_layers

    @property
    def answered(self) -> np.ndarray:
        """[num_layers] examples answered at each layer."""
        return np.bincount(self.exit_layer, minlength=self.num_layers).astype(np.int64)

    def example_cost(self, exit_costs) -> np.ndarray:
        """[N] cost of each example: ``exit_costs[exit_layer]``, with ``exit_costs`` [num_layers] (one number per
        answering layer) or [num_layers, N] (per example, e.g. from real lengths)."""
        costs = np.asarray(exit_costs, np.float64)
        n = len(self.exit_layer)
        if costs.ndim == 1:
            costs = np.repeat(costs[:, None], n, axis=1)
        if costs.shape != (self.num_layers, n):
            raise ValueError(f"exit_costs has shape {costs.shape}; expected ({self.num_layers},) or "
                             f"({self.num_layers}, {n})")
        return costs[self.exit_layer, np.arange(n)]

    def flops_speedup(self, exit_costs, full_cost) -> float:
        """``mean(full_cost) / mean(example_cost(exit_costs))``; ``full_cost`` a number or [N]."""
        full = np.broadcast_to(np.asarray(full_cost, np.float64), self.exit_layer.shape)
        return float(np.mean(full) / np.mean(self.example_cost(exit_costs)))


def exit_result(logits, rule: str, param) -> ExitResult:
    """Simulated early exit over all layers' ``logits`` [num_layers, N, C] with ``rule`` in :data:`EXIT_RULES`
    (``param`` the threshold, or the patience)."""
    logits = _check_scores(logits)
    probs = softmax(logits)
    if rule == "patience":
        layer = patience_exit_layers(logits, param)
    elif rule in ("entropy", "max_prob"):
        layer = confidence_exit_layers(probs, float(param), rule)
    else:
        raise ValueError(f"rule must be one of {EXIT_RULES}, got {rule!r}")
    n = probs.shape[1]
    return ExitResult(
        probs=probs[layer, np.arange(n)].astype(np.float32), exit_layer=layer.astype(np.int64),
        num_layers=probs.shape[0], rule=rule, param=param,
    )


def static_result(logits, num_layers: int, full_layers: int) -> ExitResult:
    """BERT-kL: ``logits`` [N, C] of a ``num_layers``-layer model; every example costs ``num_layers`` of the full
    model's ``full_layers``."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or not 1 <= num_layers <= full_layers:
        raise ValueError(f"need logits [N, C] and 1 <= num_layers <= full_layers, got {logits.shape}, "
                         f"{num_layers}, {full_layers}")
    return ExitResult(
        probs=softmax(logits).astype(np.float32), exit_layer=np.full(len(logits), num_layers - 1, np.int64),
        num_layers=int(full_layers), rule="static", param=num_layers,
    )


def layer_exit_macs(config: models.BertConfig, seq_len) -> np.ndarray:
    """Multiply-adds of answering at each layer of a :class:`MultiExitBert` ``[num_layers]`` (``[num_layers, N]``
    when ``seq_len`` is an [N] array): ``j`` encoder layers plus ``j`` heads (``H*H + H*C`` each) for exit layer
    ``j`` (1-based). Compare with ``cascade.bert_macs(config, seq_len)``, the plain model."""
    parts = cascade.bert_macs_breakdown(config, seq_len)
    n = config.num_hidden_layers
    per_layer = (np.asarray(parts["attention_projections"]) + np.asarray(parts["attention_matmuls"])
                 + np.asarray(parts["ffn"])) / n
    head = config.hidden_size * config.hidden_size + config.hidden_size * config.num_labels
    j = np.arange(1, n + 1, dtype=np.float64).reshape((n,) + (1,) * np.ndim(per_layer))
    return j * (per_layer + head)
