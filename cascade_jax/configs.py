"""Configuration as small frozen dataclasses, nested: what a model, its data, its optimiser and its run are.

``TrainConfig``, ``LabelConfig``, ``ExitTrainConfig`` and ``PipelineConfig`` hold these sections instead of copies of
their fields. Helpers here work on any of them:

  override(config, {"optim.learning_rate": 1e-4, "max_length": 64}) -> config   # dotted path or unique leaf name
  to_dict(config) / from_dict(cls, d)                                        # config.json <-> config
  check_resume(directory, file, config, free=...)                            # same run, or a clear error
  make_optimizer(optim, num_examples) -> (tx, total_steps)                   # the one optimiser of the project

Field metadata ``help`` (and ``flag``, a short alias) is what ``train/cli.py`` turns into command-line flags, so each
default is written once, here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import typing
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from cascade_jax.data.batching import DEFAULT_BUCKETS, steps_per_epoch

LAYOUT_VERSION = 2  # Version 1: the flat configs before the nested sections (cascade-jax 0.1).

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def field(default, help: str, *, flag: str | None = None, choices=None):
    """A dataclass field with its command-line help (and an optional short flag name)."""
    meta = {"help": help}
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


def section(cls, **overrides):
    """A nested config field whose default is ``cls(**overrides)``."""
    return dataclasses.field(default_factory=functools.partial(cls, **overrides))


class ConfigError(ValueError):
    """A configuration that cannot be built, read back or resumed; the message says which field and what to do."""


class ResumeMismatchError(ConfigError):
    """The output directory holds a run made with other settings."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model, and how it computes."""

    name: str = field("minilm-l3", "built-in name (minilm-l3, minilm-l6), local Hugging Face directory or hub id",
                      flag="model")
    num_layers: int | None = field(None, "keep only the first k encoder layers (BERT-kL); default: all")
    dtype: str = field("float32", "compute dtype (parameters stay float32)", choices=DTYPES)
    dropout: bool = field(True, "dropout while training (as in BERT)")

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"model.num_layers must be at least 1, got {self.num_layers}")

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which examples, tokenised how."""

    task: str = field("rotten_tomatoes", "task name (see cascade_jax.data.TASKS)")
    source: str | None = field(None, "local folder or file with the task's data (default: built-in, else the hub)")
    train_subset: int | None = field(None, "train on a fixed random sample of N training examples (data.subset)")
    max_length: int = field(128, "truncate inputs to this many tokens")
    buckets: tuple[int, ...] = field(DEFAULT_BUCKETS, "allowed padded lengths of a batch")
    length_grouping: int = field(0, "training batches of similar length: each chunk of N batches of the shuffled "
                                    "epoch is ordered by length bucket, cut into batches and their order shuffled "
                                    "(less padding, same examples); 0: plain random batches")
    test_from_dev: float | None = field(None, "share of the official dev split held out (seeded) as the test split; "
                                              "default: half when the task's test labels are withheld (GLUE), "
                                              "else none")
    holdout_seed: int = field(0, "seed of that held-out share")

    def __post_init__(self):
        object.__setattr__(self, "buckets", tuple(int(b) for b in self.buckets))
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"data.train_subset must be a positive number of examples, got {self.train_subset}")
        if self.length_grouping < 0:
            raise ConfigError(f"data.length_grouping must be 0 (off) or a positive number of batches, got "
                              f"{self.length_grouping}")
        if self.max_length < 2:
            raise ConfigError(f"data.max_length must be at least 2 ([CLS] and [SEP]), got {self.max_length}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """How long and how fast: AdamW with linear warm-up and decay, global-norm clipping."""

    epochs: float = field(3.0, "epochs over the training data (may be fractional)")
    max_steps: int | None = field(None, "stop after this many steps in all (a cap on epochs)")
    batch_size: int = field(32, "global batch size (rows per step)")
    learning_rate: float = field(2e-5, "peak learning rate", flag="lr")
    warmup_ratio: float = field(0.1, "share of the steps spent warming up")
    weight_decay: float = field(0.01, "AdamW weight decay (not on LayerNorm and biases)")
    max_grad_norm: float = field(1.0, "global-norm gradient clipping")

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"optim.batch_size must be positive, got {self.batch_size}")
        if not self.epochs > 0:
            raise ConfigError(f"optim.epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"optim.max_steps must be positive, got {self.max_steps}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"optim.learning_rate must be a positive number, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a run is carried out: devices, evaluation, checkpoints, logging."""

    backend: str = field("shard_map", "data-parallel mapping of the step", choices=("shard_map", "pmap"))
    eval_every: int = field(0, "evaluate on dev every N steps (0: once per epoch; -1: only after the last step, "
                               "keeping the last model)")
    eval_batch_size: int = field(128, "rows per evaluation batch")
    checkpoint_every: int = field(0, "checkpoint every N steps (0: at each evaluation, or once per epoch with "
                                     "eval_every -1)")
    keep_checkpoints: int = field(2, "how many checkpoints to keep")
    log_every: int = field(10, "write training metrics every N steps")
    progress: bool = field(True, "show a progress bar")

    def __post_init__(self):
        if self.backend not in ("shard_map", "pmap"):
            raise ConfigError(f"run.backend must be 'shard_map' or 'pmap', got {self.backend!r}")
        if self.log_every < 1 or self.eval_batch_size < 1 or self.keep_checkpoints < 1:
            raise ConfigError("run.log_every, run.eval_batch_size and run.keep_checkpoints must be positive")


# Fields of a RunConfig that a resumed run may change: they do not change what is trained.
RESUME_FREE = ("run.backend", "run.eval_batch_size", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every",
               "run.progress")


# ----------------------------------------------------------------------------------------------------------------
# The optimiser.


INPUT_STATS = "input_stats"  # A module of fixed (fitted, never trained) statistics: baselines._InputStats.


def decay_mask(params) -> Any:
    """True where weight decay applies: everything but LayerNorm parameters, biases and fixed input statistics."""

    def keep(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        return not ("LayerNorm" in names or INPUT_STATS in names or names[-1] == "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def linear_warmup_decay(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """``peak * min(step / warmup, (total - step) / (total - warmup))``, floored at 0."""

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = count / warmup_steps if warmup_steps > 0 else jnp.float32(1.0)
        decay = jnp.maximum(0.0, (total_steps - count) / max(total_steps - warmup_steps, 1))
        return peak * jnp.minimum(warm, decay)

    return schedule


def total_steps(optim: OptimConfig, num_examples: int) -> int:
    """Steps of a run over ``num_examples``: ``ceil(epochs * steps_per_epoch)``, capped by ``max_steps``."""
    total = max(1, math.ceil(optim.epochs * steps_per_epoch(num_examples, optim.batch_size)))
    return total if optim.max_steps is None else min(total, optim.max_steps)


def learning_rate_schedule(optim: OptimConfig, total: int) -> optax.Schedule:
    return linear_warmup_decay(optim.learning_rate, total, int(optim.warmup_ratio * total))


def make_optimizer(optim: OptimConfig, num_examples: int) -> tuple[optax.GradientTransformation, int]:
    """The one optimiser of the project (members, difficulty labellers, exit heads) and its step count.

    AdamW with linear warm-up over ``warmup_ratio`` of the steps then linear decay to 0, global-norm clipping, no
    weight decay on LayerNorm and biases. ``num_examples`` is the training set size an epoch covers.
    """
    total = total_steps(optim, num_examples)
    tx = optax.chain(
        optax.clip_by_global_norm(optim.max_grad_norm),
        optax.adamw(learning_rate_schedule(optim, total), weight_decay=optim.weight_decay, mask=decay_mask),
    )
    return tx, total


# ----------------------------------------------------------------------------------------------------------------
# Generic helpers over nested config dataclasses.


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaves(cls, prefix: str = "") -> dict[str, tuple[dataclasses.Field, Any]]:
    """``{dotted path: (field, type)}`` of every leaf field of a config class (sections expanded)."""
    out = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_config(tp):
            out.update(leaves(tp, path + "."))
        else:
            out[path] = (f, tp)
    return out


def defaults(cls) -> dict[str, Any]:
    """``{dotted path: default}`` of every leaf of ``cls``, with each section's own default (a section declared
    ``section(OptimConfig, epochs=10.0)`` has epochs 10)."""
    out = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if _is_config(hints[f.name]):
            out.update({f"{f.name}.{k}": v for k, v in _instance_leaves(value).items()})
        else:
            out[f.name] = value
    return out


def _instance_leaves(config) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in _instance_leaves(value).items()})
        else:
            out[f.name] = value
    return out


def sections(cls, prefix: str = "") -> list[str]:
    """Dotted paths of the nested sections of ``cls``."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            out.append(prefix + f.name)
            out += sections(hints[f.name], prefix + f.name + ".")
    return out


def resolve_key(cls, key: str, value: Any = None) -> str:
    """The dotted path of ``key`` in ``cls``: a dotted path itself (of a leaf or a whole section), a leaf name that
    occurs once, or a field's short flag name (``lr``) that occurs once."""
    paths = leaves(cls)
    section_value = dataclasses.is_dataclass(value) or isinstance(value, Mapping)
    if key in paths or (key in sections(cls) and section_value):
        return key
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    if not matches:  # A short flag name (lr, model, loss) where it is unique.
        matches = [p for p, (f, _) in paths.items() if f.metadata.get("flag") == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"{cls.__name__} has no setting {key!r}; settings: {', '.join(sorted(paths))}")
    raise ConfigError(f"{key!r} is ambiguous in {cls.__name__}: say which of {', '.join(sorted(matches))}")


def get(config, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _nest(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        path = resolve_key(cls, key, value).split(".")
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return nested


def override(config, overrides: Mapping[str, Any]):
    """A copy of ``config`` with ``overrides`` applied: keys are dotted paths (``optim.learning_rate``) or leaf names
    that occur once in the config (``learning_rate``)."""
    return _apply(config, _nest(type(config), overrides))


def _apply(config, nested: Mapping[str, Any]):
    changes = {}
    for name, value in nested.items():
        changes[name] = _apply(getattr(config, name), value) if isinstance(value, Mapping) else value
    try:
        return dataclasses.replace(config, **changes)
    except TypeError as e:
        raise ConfigError(f"{type(config).__name__}: {e}") from e


def create(cls, overrides: Mapping[str, Any]):
    """``cls`` built from ``overrides`` (dotted paths or unique leaf names) and its defaults."""
    return _build(cls, _nest(cls, overrides), cls.__name__, section_defaults=True)


def to_dict(config) -> dict:
    """Plain JSON types (tuples become lists), with the layout version at the top level."""
    return {"layout": LAYOUT_VERSION, **json.loads(json.dumps(dataclasses.asdict(config)))}


def from_dict(cls, d: Mapping[str, Any], source: str = "config"):
    """The config ``to_dict`` wrote. A file of another layout gives a :class:`ConfigError` saying what to do."""
    d = dict(d)
    layout = d.pop("layout", 1)
    if layout != LAYOUT_VERSION:
        raise ConfigError(
            f"{source} was written by an older cascade-jax (configuration layout {layout}, flat fields; this version "
            f"reads layout {LAYOUT_VERSION}, nested sections). That run cannot be resumed or reused by this version: "
            f"start again in a new output directory (or delete the old one)."
        )
    return _build(cls, d, source)


def _build(cls, d: Mapping[str, Any], source: str, base=None, section_defaults: bool = False):
    """``cls(**d)`` with nested sections built too. With ``section_defaults`` a section given in part keeps its other
    values from ``base`` (an instance of ``cls``) or else from the section's own default
    (``section(DataConfig, length_grouping=50)`` keeps 50 when only ``data.max_length`` is given); without it (a
    saved config read back) a missing field takes its class default, what a run older than that field used."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {} if base is None else {name: getattr(base, name) for name, f in fields.items() if f.init}
    for name, value in d.items():
        tp = hints[name]
        if _is_config(tp) and isinstance(value, Mapping):
            f = fields[name]
            section_base = (None if not section_defaults else getattr(base, name) if base is not None else
                            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            value = _build(tp, value, source, section_base, section_defaults)
        elif isinstance(value, (list, tuple)):
            item = _tuple_item(tp)
            value = tuple(_build(item, v, source) if item is not None and isinstance(v, Mapping) else v
                          for v in value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from e


def _tuple_item(tp):
    """The config class of ``tuple[SomeConfig, ...]`` (None for other types)."""
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if args and _is_config(args[0]):
            return args[0]
    return None


def differences(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two ``to_dict`` outputs."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += differences(va, vb, path + ".")
        elif va != vb:
            out.append(path)
    return out


def read_saved(directory: str | pathlib.Path, file: str) -> Any:
    """The JSON that :func:`write` left in ``directory/file``, or None when there is none; :class:`ConfigError` when
    it is not valid JSON."""
    path = pathlib.Path(directory) / file
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); delete it or use another output directory") from e


NO_RUN = object()  # saved_choice: the folder holds no run


def saved_choice(directory: str | pathlib.Path, file: str, key: str, valid: Callable[[Any], bool],
                 expected: str) -> Any:
    """What the run saved in ``directory/file`` chose for ``key`` (None when it did not say), so that an automatic
    setting resumes the way it began; :data:`NO_RUN` when no run is there (or one in another layout, which
    :func:`check_resume` reports); :class:`ConfigError` naming the file when the saved value is not ``valid``
    (``expected`` says what is)."""
    saved = read_saved(directory, file)
    if not isinstance(saved, dict):
        return NO_RUN
    value = saved.get(key)
    if not valid(value):
        raise ConfigError(f"{pathlib.Path(directory) / file}: {key} is {value!r}, expected {expected}; correct it "
                          f"or use another output directory")
    return value


def check_resume(directory: str | pathlib.Path, file: str, config, free: tuple[str, ...] = RESUME_FREE) -> bool:
    """Whether ``directory/file`` holds this run's config (True: resume it; False: a new run).

    Raises :class:`ResumeMismatchError` when the file holds a run with other settings (besides ``free`` ones and
    ``output_dir``), and :class:`ConfigError` when it was written in another layout.
    """
    path = pathlib.Path(directory) / file
    saved = read_saved(directory, file)
    if saved is None:
        return False
    from_dict(type(config), saved, str(path))  # Raises on another layout.
    now = to_dict(config)
    diff = [p for p in differences(saved, now) if p != "output_dir" and p not in free]
    if diff:
        shown = "; ".join(f"{p}: {_value(saved, p)!r} there, {_value(now, p)!r} now" for p in diff[:8])
        raise ResumeMismatchError(
            f"{directory} holds a run with other settings ({shown}{'; ...' if len(diff) > 8 else ''}). "
            f"Use another output directory, or run again with the settings it was made with."
        )
    return True


def _value(d: Mapping, path: str):
    for part in path.split("."):
        if not isinstance(d, Mapping):
            return None
        d = d.get(part)
    return d


def write(directory: str | pathlib.Path, file: str, config) -> pathlib.Path:
    """Write ``to_dict(config)`` as ``directory/file`` (atomically)."""
    path = pathlib.Path(directory) / file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2) + "\n")
    tmp.replace(path)
    return path
