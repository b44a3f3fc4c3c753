"""Cascade exiting (the paper's Algorithm 1), run for real and simulated, with speed-up accounting.

  Stage(apply_fn, params, num_layers, config=None, name="")          # apply_fn(params, batch) -> logits [B, C]
  run(stages, inputs, threshold, batch_size, ...) -> CascadeResult   # only the survivors of a stage run on
  simulate_all(stages, inputs, batch_size, ...) -> CascadeSimulation # every stage on every example, once
  CascadeSimulation.result(threshold, rule) / .result_at(exit_stage) / .from_logits(...) / .stack(...)
  exits(max_prob, entropy, rule, threshold) -> bool [N]              # the exit rule, in one place
  warmup(...), compile_count(), default_buckets(...), batch_pieces(...), stage_flops(...), measure_wallclock(...)

A multi-exit model (DeeBERT) is a cascade whose stages are its layers (each costs one layer, and the reference is
all of them); a static model is a one-stage cascade. The exit rules, batching, compilation and accounting are
described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import flops as flops_lib
from cascade_jax import xla
from cascade_jax.metrics import normalized_entropy, softmax

__all__ = [
    "Stage",
    "CascadeResult",
    "CascadeSimulation",
    "WallClock",
    "run",
    "simulate",
    "simulate_all",
    "warmup",
    "compile_count",
    "default_buckets",
    "batch_pieces",
    "exits",
    "patience_exits",
    "stage_flops",
    "measure_wallclock",
    "EXIT_RULES",
    "TAIL_RULES",
]

EXIT_RULES = ("max_prob", "entropy")
EXIT_METHOD_RULES = ("entropy", "max_prob", "patience")  # Rules of a multi-exit model (each layer a stage).
TAIL_RULES = ("split", "pad")
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_MIN_BUCKET = 8

_TRACES = 0  # Module-wide count of step-function traces (each one is a compilation).


def compile_count() -> int:
    """How many times any stage's step function has been traced (and so compiled) in this process."""
    return _TRACES


# ----------------------------------------------------------------------------------------------------------------
# Stages.


def _step_impl(apply_fn: Callable, params, batch):
    global _TRACES
    _TRACES += 1  # Python side effect: runs only when jit traces (and then compiles) a new signature.
    logits = apply_fn(params, batch).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    max_prob = jnp.max(probs, axis=-1)
    num_classes = logits.shape[-1]
    entropy = jnp.sum(jax.scipy.special.entr(probs), axis=-1)
    if num_classes > 1:
        entropy = entropy / np.float32(math.log(num_classes))
    else:
        entropy = jnp.zeros_like(entropy)
    return probs, max_prob, entropy


# The step of every stage: jit of apply_fn + softmax + exit statistics. apply_fn is static (part of the cache key,
# so each distinct apply_fn is its own compiled program); params and batch are traced arguments.
_step = xla.jit(_step_impl, static_argnums=0)  # Inference: the library's CPU compile options (xla.py).


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """One complete model of the cascade.

    Args:
      apply_fn: pure ``fn(params, batch) -> logits [B, C]``; batch is a dict of int32 [B, T] arrays
        ``input_ids``, ``attention_mask``, ``token_type_ids`` (e.g. ``models.logits_fn(module)``).
      params: its parameters (passed to the jitted function as an argument).
      num_layers: encoder layers, for the layer speed-up.
      config: optional ``models.BertConfig``, for :func:`stage_flops`.
      name: optional label.
    """

    apply_fn: Callable[[Any, dict], jax.Array]
    params: Any = dataclasses.field(repr=False)
    num_layers: int
    config: Any = dataclasses.field(default=None, repr=False)
    name: str = ""

    def __post_init__(self):
        if not callable(self.apply_fn):
            raise TypeError(f"Stage {self.name!r}: apply_fn must be callable, got {type(self.apply_fn).__name__}")
        if int(self.num_layers) != self.num_layers or self.num_layers < 1:
            raise ValueError(f"Stage {self.name!r}: num_layers must be a positive integer, got {self.num_layers!r}")
        try:
            hash(self.apply_fn)
        except TypeError as e:
            raise TypeError(f"Stage {self.name!r}: apply_fn must be hashable (it is a static jit argument)") from e
        object.__setattr__(self, "num_layers", int(self.num_layers))

    def step(self, params, batch):
        """The jitted ``(probs, max_prob, normalised entropy)`` of ``apply_fn`` on one batch."""
        return _step(self.apply_fn, params, batch)

    def flops(self, seq_len) -> Any:
        """:func:`bert_flops` of this stage's config (needs ``config``)."""
        if self.config is None:
            raise ValueError(f"Stage {self.name!r} has no config; pass config= to count its FLOPs")
        return flops_lib.bert_flops(self.config, seq_len)


# ----------------------------------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass(frozen=True, eq=False)
class CascadeResult:
    """What a cascade answered, in input order.

    probs: [N, C] float32, the class distribution of the stage that answered.
    exit_stage: [N] int, 0-based index of that stage.
    layers: [N] int, layers executed for the example, summed over the stages it went through.
    evaluated: [S] int, how many examples each stage ran on (padding rows not counted).
    answered: [S] int, how many examples each stage answered (``bincount(exit_stage)``).
    num_layers: layers of each stage. thresholds: the per-non-final-stage thresholds. exit_rule: the rule used.
    reference_layers: layers of the model the speed-up divides (default: the largest stage).
    """

    probs: np.ndarray
    exit_stage: np.ndarray
    layers: np.ndarray
    evaluated: np.ndarray
    answered: np.ndarray
    num_layers: tuple[int, ...]
    thresholds: tuple[float, ...]
    exit_rule: str
    reference_layers: int | None = None

    def __post_init__(self):
        if self.reference_layers is None:
            object.__setattr__(self, "reference_layers", max(self.num_layers))

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.probs, axis=-1)

    @property
    def mean_layers(self) -> float:
        return float(np.mean(self.layers))

    @property
    def reference_stage(self) -> int:
        """The largest stage (most layers; the last of equals), the model whose cost the speed-ups divide."""
        return len(self.num_layers) - 1 - int(np.argmax(self.num_layers[::-1]))

    @property
    def layer_speedup(self) -> float:
        """The paper's speed-up: layers of the reference model (the largest stage) / mean layers executed."""
        return self.reference_layers / self.mean_layers

    def example_flops(self, flops_per_stage: Sequence) -> np.ndarray:
        """[N] cost of each example: the sum of ``flops_per_stage[k]`` over the stages it ran.

        ``flops_per_stage[k]`` is stage k's cost of one example: a number, or an [N] array (e.g.
        ``bert_flops(config, real_lengths)``) in input order.
        """
        n = len(self.exit_stage)
        per = _per_stage_costs(flops_per_stage, len(self.num_layers), n)
        ran = np.arange(len(self.num_layers))[:, None] <= self.exit_stage[None, :]
        return np.sum(np.where(ran, per, 0.0), axis=0)

    def flops_speedup(self, flops_per_stage: Sequence) -> float:
        """Mean cost of running the largest stage on every example / mean cost of the cascade."""
        n = len(self.exit_stage)
        per = _per_stage_costs(flops_per_stage, len(self.num_layers), n)
        return float(np.mean(per[self.reference_stage]) / np.mean(self.example_flops(flops_per_stage)))


def _per_stage_costs(flops_per_stage, num_stages: int, n: int) -> np.ndarray:
    if len(flops_per_stage) != num_stages:
        raise ValueError(f"flops_per_stage has {len(flops_per_stage)} entries for {num_stages} stages")
    rows = []
    for k, f in enumerate(flops_per_stage):
        f = np.asarray(f, dtype=np.float64)
        if f.ndim == 0:
            f = np.full(n, float(f))
        if f.shape != (n,):
            raise ValueError(f"flops_per_stage[{k}] has shape {f.shape}; expected a number or ({n},)")
        rows.append(f)
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------------------------
# Argument checking.


def default_buckets(batch_size: int) -> tuple[int, ...]:
    """``batch_size`` halved (rounding up) until it is <= 8: 32 -> (32, 16, 8); 8 -> (8,); 100 -> (100, 50, 25, 13, 7)."""
    _check_batch_size(batch_size)
    out = [batch_size]
    while out[-1] > _MIN_BUCKET:
        out.append(-(-out[-1] // 2))
    return tuple(out)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _resolve_buckets(batch_size: int, buckets) -> tuple[int, ...]:
    _check_batch_size(batch_size)
    batch_size = int(batch_size)
    if buckets is None:
        return default_buckets(batch_size)
    out = set()
    for b in buckets:
        if isinstance(b, bool) or int(b) != b or not 1 <= b <= batch_size:
            raise ValueError(f"bucket sizes must be integers in [1, batch_size={batch_size}], got {b!r}")
        out.add(int(b))
    out.add(batch_size)
    return tuple(sorted(out, reverse=True))


def _resolve_thresholds(threshold, num_stages: int) -> tuple[float, ...]:
    if np.ndim(threshold) == 0:
        taus = (float(threshold),) * (num_stages - 1)
    else:
        taus = tuple(float(t) for t in threshold)
        if len(taus) != num_stages - 1:
            raise ValueError(
                f"threshold has {len(taus)} values; a cascade of {num_stages} stages needs one per non-final "
                f"stage ({num_stages - 1}) or a single number"
            )
    if any(math.isnan(t) for t in taus):
        raise ValueError(f"threshold must not be NaN, got {threshold!r}")
    return taus


def _check_exit_rule(exit_rule: str) -> None:
    if exit_rule not in EXIT_RULES:
        raise ValueError(f"exit_rule must be one of {EXIT_RULES}, got {exit_rule!r}")


def _check_stages(stages) -> tuple[Stage, ...]:
    stages = tuple(stages)
    if not stages:
        raise ValueError("a cascade needs at least one stage")
    for s in stages:
        if not isinstance(s, Stage):
            raise TypeError(f"stages must be Stage objects, got {type(s).__name__}")
    return stages


def _check_length_multiple(length_multiple) -> int | None:
    if length_multiple is None:
        return None
    if isinstance(length_multiple, bool) or int(length_multiple) != length_multiple or length_multiple < 1:
        raise ValueError(f"length_multiple must be a positive integer or None, got {length_multiple!r}")
    return int(length_multiple)


def _prepare_inputs(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if "input_ids" not in inputs:
        raise ValueError(f"inputs need 'input_ids'; got keys {sorted(inputs)}")
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [N, L], got shape {ids.shape}")
    if ids.shape[0] == 0:
        raise ValueError("inputs hold no examples (N = 0)")
    out = {"input_ids": ids}
    defaults = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for key in _INPUT_KEYS[1:]:
        value = inputs.get(key)
        value = defaults[key] if value is None else np.asarray(value)
        if value.shape != ids.shape:
            raise ValueError(f"{key} has shape {value.shape}, but input_ids has {ids.shape}")
        out[key] = value
    for key, value in out.items():
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.bool_)):
            raise ValueError(f"{key} must hold integers, got dtype {value.dtype}")
        out[key] = np.ascontiguousarray(value, dtype=np.int32)
    return out


def _real_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Last non-zero mask position + 1 per row (0 for an all-zero row)."""
    nonzero = attention_mask != 0
    last = attention_mask.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0)


def _length_buckets(seq_len: int, length_multiple: int | None) -> tuple[int, ...]:
    if length_multiple is None:
        return (seq_len,)
    return tuple(sorted({min(seq_len, length_multiple * j) for j in range(1, -(-seq_len // length_multiple) + 1)}))


def _trimmed_length(longest: int, seq_len: int, length_multiple: int | None) -> int:
    if length_multiple is None:
        return seq_len
    return min(seq_len, max(1, -(-int(longest) // length_multiple)) * length_multiple)


# ----------------------------------------------------------------------------------------------------------------
# Running stages.


@dataclasses.dataclass(frozen=True)
class _Plan:
    batch_size: int
    buckets: tuple[int, ...]  # Descending; buckets[0] == batch_size.
    length_multiple: int | None
    tail: str = "split"

    def pieces(self, n: int) -> list[tuple[int, int]]:
        """(real rows, padded rows) of each call for a queue of ``n`` rows, in queue order."""
        out = [(self.batch_size, self.batch_size)] * (n // self.batch_size)
        rest = n % self.batch_size
        if self.tail == "split":
            for b in self.buckets:  # Descending: largest pieces first.
                while rest >= b:
                    out.append((b, b))
                    rest -= b
        if rest:
            out.append((rest, min(b for b in self.buckets if b >= rest)))
        return out


def _make_plan(batch_size, buckets, length_multiple, tail) -> _Plan:
    if tail not in TAIL_RULES:
        raise ValueError(f"tail must be one of {TAIL_RULES}, got {tail!r}")
    return _Plan(batch_size, _resolve_buckets(batch_size, buckets), _check_length_multiple(length_multiple), tail)


def batch_pieces(n: int, batch_size: int, *, buckets: Sequence[int] | None = None, tail: str = "split"):
    """How :func:`run` batches a stage queue of ``n`` examples: one ``(real rows, padded rows)`` pair per call, in
    queue order (full batches first, then the tail as ``tail`` says; see the module doc)."""
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return tuple(_make_plan(batch_size, buckets, None, tail).pieces(int(n)))


def _evaluate(stage: Stage, params, inputs: dict, lengths: np.ndarray, idx: np.ndarray, plan: _Plan):
    """Run ``stage`` on examples ``idx``; returns (probs, max_prob, entropy) aligned with ``idx``."""
    seq_len = inputs["input_ids"].shape[1]
    if plan.length_multiple is not None:
        perm = np.argsort(lengths[idx], kind="stable")
        order = idx[perm]
    else:
        perm, order = None, idx
    pending = []
    start = 0
    for real, bucket in plan.pieces(len(order)):
        chunk = order[start : start + real]
        start += real
        rows = chunk if bucket == real else np.concatenate([chunk, np.repeat(chunk[:1], bucket - real)])
        width = _trimmed_length(lengths[chunk].max(), seq_len, plan.length_multiple)
        batch = {k: v[rows, :width] for k, v in inputs.items()}
        pending.append((real, stage.step(params, batch)))  # Dispatched asynchronously.
    fetched = jax.device_get([out for _, out in pending])
    probs, max_prob, entropy = (
        np.concatenate([np.asarray(out[i])[:real] for (real, _), out in zip(pending, fetched)]) for i in range(3)
    )
    if perm is not None:
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        probs, max_prob, entropy = probs[inverse], max_prob[inverse], entropy[inverse]
    return probs, max_prob, entropy


def exits(max_prob: np.ndarray, entropy: np.ndarray, exit_rule: str, threshold: float) -> np.ndarray:
    """Which examples exit: ``max_prob > threshold`` (``"max_prob"``, the paper) or normalised ``entropy <
    threshold`` (``"entropy"``, DeeBERT), compared in float64."""
    if exit_rule == "max_prob":
        return np.asarray(max_prob).astype(np.float64) > threshold
    if exit_rule == "entropy":
        return np.asarray(entropy).astype(np.float64) < threshold
    raise ValueError(f"exit_rule must be one of {EXIT_RULES}, got {exit_rule!r}")


def patience_exits(scores, patience: int) -> np.ndarray:
    """PABEE's exit rule (Zhou et al., 2020, as in the authors' code): the 0-based stage ``[N]`` that answers, from
    every stage's scores (logits or probabilities) ``[S, N, C]``. A counter starts at 0 at the first stage and, at
    each later stage, is incremented when the prediction (argmax; the first class on ties) equals the previous
    stage's, else reset to 0; the example exits at the first stage where the counter reaches ``patience``, so
    ``patience`` t exits once t + 1 consecutive stages agree. ``patience`` 0 means no early exit (PABEE's code then
    runs the whole model). The last stage always answers."""
    scores = np.asarray(scores)
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(f"expected a non-empty [num_stages, N, C] array, got shape {scores.shape}")
    if isinstance(patience, bool) or int(patience) != patience or patience < 0:
        raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
    pred = np.argmax(scores, axis=-1)  # [S, N]
    counter = np.zeros(pred.shape, np.int64)
    for j in range(1, pred.shape[0]):
        counter[j] = np.where(pred[j] == pred[j - 1], counter[j - 1] + 1, 0)
    hit = counter == int(patience) if patience > 0 else np.zeros(pred.shape, bool)
    hit[-1] = True
    return np.argmax(hit, axis=0)


def _cascade(n: int, num_layers, taus, exit_rule: str, evaluate: Callable,
             reference_layers: int | None = None) -> CascadeResult:
    """Algorithm 1 over a whole queue: ``evaluate(k, idx)`` gives stage k's (probs, max_prob, entropy) on ``idx``."""
    num_stages = len(num_layers)
    probs = None
    exit_stage = np.full(n, -1, dtype=np.int32)
    layers = np.zeros(n, dtype=np.int64)
    evaluated = np.zeros(num_stages, dtype=np.int64)
    remaining = np.arange(n)
    for k in range(num_stages):
        if remaining.size == 0:
            break
        p, mp, ent = evaluate(k, remaining)
        if probs is None:
            probs = np.zeros((n, p.shape[-1]), dtype=np.float32)
        evaluated[k] = remaining.size
        layers[remaining] += num_layers[k]
        done = np.ones(remaining.size, bool) if k == num_stages - 1 else exits(mp, ent, exit_rule, taus[k])
        probs[remaining[done]] = p[done]
        exit_stage[remaining[done]] = k
        remaining = remaining[~done]
    return CascadeResult(
        probs=probs,
        exit_stage=exit_stage,
        layers=layers,
        evaluated=evaluated,
        answered=np.bincount(exit_stage, minlength=num_stages).astype(np.int64),
        num_layers=tuple(num_layers),
        thresholds=tuple(taus),
        exit_rule=exit_rule,
        reference_layers=reference_layers,
    )


def run(
    stages: Sequence[Stage],
    inputs: Mapping[str, Any],
    threshold,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    exit_rule: str = "max_prob",
    length_multiple: int | None = None,
    tail: str = "split",
) -> CascadeResult:
    """Run the cascade for real: each stage only on the examples no earlier stage was confident about.

    Args:
      stages: the cascade, fewest layers first.
      inputs: dict of [N, L] integer numpy arrays (see the module doc).
      threshold: a number, or one per non-final stage.
      batch_size: rows per call; the largest bucket.
      buckets: allowed batch sizes for a stage's tail (default :func:`default_buckets`).
      exit_rule: ``"max_prob"`` (exit if > threshold) or ``"entropy"`` (normalised entropy < threshold).
      length_multiple: if set, trim each batch to its longest real row rounded up to a multiple of this.
      tail: ``"split"`` (tail cut into bucket-sized pieces) or ``"pad"`` (tail padded to one bucket).
    """
    stages = _check_stages(stages)
    _check_exit_rule(exit_rule)
    taus = _resolve_thresholds(threshold, len(stages))
    plan = _make_plan(batch_size, buckets, length_multiple, tail)
    data = _prepare_inputs(inputs)
    lengths = _real_lengths(data["attention_mask"])
    params = [jax.device_put(s.params) for s in stages]

    def evaluate(k, idx):
        return _evaluate(stages[k], params[k], data, lengths, idx, plan)

    return _cascade(len(lengths), [s.num_layers for s in stages], taus, exit_rule, evaluate)


@dataclasses.dataclass(frozen=True, eq=False)
class CascadeSimulation:
    """Every stage's output on every example; derives the cascade's result for any threshold without the models.

    probs: [S, N, C]; max_prob, entropy: [S, N] (entropy normalised by log C); float32 from the models' jitted
    steps, float64 from :meth:`from_logits`. reference_layers: what the layer speed-up divides (default: the
    largest stage; a multi-exit model's is all its layers).
    """

    probs: np.ndarray
    max_prob: np.ndarray
    entropy: np.ndarray
    num_layers: tuple[int, ...]
    reference_layers: int | None = None

    @classmethod
    def from_logits(cls, logits, num_layers: Sequence[int] | None = None,
                    reference_layers: int | None = None) -> "CascadeSimulation":
        """A simulation from stages' logits ``[S, N, C]`` (softmax and exit statistics in numpy float64).
        ``num_layers`` defaults to one layer per stage: a multi-exit model whose stages are its layers (then
        ``reference_layers`` defaults to all of them)."""
        logits = np.asarray(logits)
        if logits.ndim != 3 or 0 in logits.shape:
            raise ValueError(f"expected a non-empty [num_stages, N, C] array of logits, got shape {logits.shape}")
        if num_layers is None:
            num_layers = (1,) * logits.shape[0]
            reference_layers = reference_layers or logits.shape[0]
        if len(num_layers) != logits.shape[0]:
            raise ValueError(f"num_layers has {len(num_layers)} entries for {logits.shape[0]} stages")
        probs = softmax(logits)
        return cls(probs=probs, max_prob=probs.max(-1), entropy=normalized_entropy(probs),
                   num_layers=tuple(int(n) for n in num_layers), reference_layers=reference_layers)

    @classmethod
    def stack(cls, parts: Sequence["CascadeSimulation"]) -> "CascadeSimulation":
        """One simulation from several, stages in order: e.g. each member simulated alone once and shared by
        every cascade that uses it (the same numbers :func:`simulate_all` of all the stages gives)."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to stack")
        if len({p.probs.shape[1:] for p in parts}) != 1:
            raise ValueError(f"simulations cover different examples/classes: {[p.probs.shape for p in parts]}")
        return cls(probs=np.concatenate([p.probs for p in parts]),
                   max_prob=np.concatenate([p.max_prob for p in parts]),
                   entropy=np.concatenate([p.entropy for p in parts]),
                   num_layers=tuple(n for p in parts for n in p.num_layers))

    def result(self, threshold, exit_rule: str = "max_prob") -> CascadeResult:
        """What :func:`run` would answer at ``threshold`` (one number, or one per non-final stage)."""
        _check_exit_rule(exit_rule)
        taus = _resolve_thresholds(threshold, len(self.num_layers))

        def evaluate(k, idx):
            return self.probs[k, idx], self.max_prob[k, idx], self.entropy[k, idx]

        return _cascade(self.probs.shape[1], self.num_layers, taus, exit_rule, evaluate, self.reference_layers)

    def result_at(self, exit_stage, rule: str = "given") -> CascadeResult:
        """The result when each example answers at the given stage ``[N]`` (an exit rule decided elsewhere, e.g.
        PABEE's patience): it ran every stage up to that one."""
        n, num_stages = self.probs.shape[1], len(self.num_layers)
        exit_stage = np.asarray(exit_stage, np.int64)
        if exit_stage.shape != (n,) or exit_stage.min() < 0 or exit_stage.max() >= num_stages:
            raise ValueError(f"exit_stage must be [N={n}] stage indices in [0, {num_stages}), got {exit_stage!r}")
        cumulative = np.cumsum(self.num_layers)
        answered = np.bincount(exit_stage, minlength=num_stages).astype(np.int64)
        return CascadeResult(
            probs=self.probs[exit_stage, np.arange(n)].astype(np.float32), exit_stage=exit_stage.astype(np.int32),
            layers=cumulative[exit_stage].astype(np.int64), evaluated=n - np.concatenate([[0], np.cumsum(answered)[:-1]]),
            answered=answered, num_layers=self.num_layers, thresholds=(), exit_rule=rule,
            reference_layers=self.reference_layers,
        )


def simulate_all(
    stages: Sequence[Stage],
    inputs: Mapping[str, Any],
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    length_multiple: int | None = None,
    tail: str = "split",
) -> CascadeSimulation:
    """Run every stage on every example once (same jitted steps and batching as :func:`run`)."""
    stages = _check_stages(stages)
    plan = _make_plan(batch_size, buckets, length_multiple, tail)
    data = _prepare_inputs(inputs)
    lengths = _real_lengths(data["attention_mask"])
    idx = np.arange(len(lengths))
    outs = [_evaluate(s, jax.device_put(s.params), data, lengths, idx, plan) for s in stages]
    return CascadeSimulation(
        probs=np.stack([o[0] for o in outs]),
        max_prob=np.stack([o[1] for o in outs]),
        entropy=np.stack([o[2] for o in outs]),
        num_layers=tuple(s.num_layers for s in stages),
    )


def simulate(
    stages: Sequence[Stage],
    inputs: Mapping[str, Any],
    threshold,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    exit_rule: str = "max_prob",
    length_multiple: int | None = None,
    tail: str = "split",
) -> CascadeResult:
    """``simulate_all(...).result(threshold, exit_rule)``: what :func:`run` returns, by running every stage on all."""
    sim = simulate_all(stages, inputs, batch_size, buckets=buckets, length_multiple=length_multiple, tail=tail)
    return sim.result(threshold, exit_rule)


def warmup(
    stages: Sequence[Stage],
    batch_size: int,
    seq_len: int,
    *,
    buckets: Sequence[int] | None = None,
    length_multiple: int | None = None,
) -> int:
    """Compile every (bucket, length) shape :func:`run` can use for padded length ``seq_len``; returns how many
    new compilations that took (0 if all were compiled before)."""
    stages = _check_stages(stages)
    plan = _make_plan(batch_size, buckets, length_multiple, "pad")  # Every bucket is compiled: tail is moot.
    if int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    before = compile_count()
    for stage in stages:
        params = jax.device_put(stage.params)
        outs = []
        for rows in plan.buckets:
            for width in _length_buckets(int(seq_len), plan.length_multiple):
                ids = np.zeros((rows, width), np.int32)
                batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids}
                outs.append(stage.step(params, batch))
        jax.block_until_ready(outs)
    return compile_count() - before


# ----------------------------------------------------------------------------------------------------------------
# FLOPs.


def stage_flops(stages: Sequence[Stage], seq_len) -> list:
    """``[stage.flops(seq_len) for stage in stages]``, ready for :meth:`CascadeResult.flops_speedup`."""
    return [s.flops(seq_len) for s in _check_stages(stages)]


# ----------------------------------------------------------------------------------------------------------------
# Wall clock.


@dataclasses.dataclass(frozen=True, eq=False)
class WallClock:
    """Seconds per timed repeat of the cascade and of the largest stage alone, and the derived speed-ups.

    speedup = min(baseline_s) / min(cascade_s). compiles_during_timing counts compilations inside the timed
    repeats (0 after a proper warm-up).
    """

    cascade_s: tuple[float, ...]
    baseline_s: tuple[float, ...]
    speedup: float
    layer_speedup: float
    num_examples: int
    compiles_during_timing: int
    result: CascadeResult


def measure_wallclock(
    stages: Sequence[Stage],
    inputs: Mapping[str, Any],
    threshold,
    batch_size: int,
    *,
    repeats: int = 3,
    buckets: Sequence[int] | None = None,
    exit_rule: str = "max_prob",
    length_multiple: int | None = None,
    tail: str = "split",
    clock: Callable[[], float] = time.perf_counter,
) -> WallClock:
    """Time :func:`run` against the largest stage alone (a one-stage :func:`run`: same data, batching and length
    rule). Both are warmed up first (every shape compiled and one untimed call each); then the two are timed
    alternately ``repeats`` times. :func:`run` returns host numpy arrays, so each timing includes the device work.
    """
    stages = _check_stages(stages)
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    largest = max(range(len(stages)), key=lambda k: (stages[k].num_layers, k))
    seq_len = np.asarray(inputs["input_ids"]).shape[1]
    kw = dict(buckets=buckets, length_multiple=length_multiple)
    warmup(stages, batch_size, seq_len, **kw)

    def cascade():
        return run(stages, inputs, threshold, batch_size, exit_rule=exit_rule, tail=tail, **kw)

    def baseline():
        return run([stages[largest]], inputs, (), batch_size, exit_rule=exit_rule, tail=tail, **kw)

    result = cascade()
    baseline()
    before = compile_count()
    cascade_s, baseline_s = [], []
    for _ in range(int(repeats)):
        t0 = clock()
        cascade()
        t1 = clock()
        baseline()
        t2 = clock()
        cascade_s.append(t1 - t0)
        baseline_s.append(t2 - t1)
    return WallClock(
        cascade_s=tuple(cascade_s),
        baseline_s=tuple(baseline_s),
        speedup=min(baseline_s) / min(cascade_s),
        layer_speedup=result.layer_speedup,
        num_examples=len(result.exit_stage),
        compiles_during_timing=compile_count() - before,
        result=result,
    )
