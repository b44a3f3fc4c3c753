"""A Flax (linen) BERT that reproduces Hugging Face's PyTorch ``BertModel`` / ``BertForSequenceClassification``.

  from_pretrained(name_or_path, num_labels=, num_layers=None, dtype=jnp.float32) -> (module, params)
  logits_fn(module) -> fn(params, batch);  tokenizer_for(name_or_path);  save_pretrained(module, params, dir, tokenizer)
  check_inputs_fit(config, max_length=, vocab_size=, source=);  check_trained_head(dir)   (input validation)

Parameter names mirror Hugging Face's (``bert/encoder/layer_3/output/dense/kernel``), so checkpoints convert
mechanically; parameters are float32 whatever the compute ``dtype``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import assets, attention, dense

BUILTIN_MODELS = ("minilm-l6", "minilm-l3")

_ACTIVATIONS: dict[str, Callable] = {
    "gelu": dense.gelu_exact,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


class ModelLoadError(ValueError):
    """A checkpoint or config cannot be turned into this model; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The subset of a Hugging Face ``BertConfig`` this model uses (field names as in ``config.json``)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    classifier_dropout: float | None = None
    # Ours, not Hugging Face's (never read from or written to config.json): "auto" runs attention (and its dropout
    # and gradients) and bfloat16 dense layers on the library's CPU kernels where they apply, "xla" always with
    # XLA's ops (cascade_jax/attention.py, cascade_jax/dense.py).
    kernels: str = "auto"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ModelLoadError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ModelLoadError(f"hidden_act {self.hidden_act!r} is not supported; known: {sorted(_ACTIVATIONS)}")
        if self.kernels not in attention.IMPLEMENTATIONS:
            raise ModelLoadError(f"kernels {self.kernels!r}: use one of {', '.join(attention.IMPLEMENTATIONS)}")

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "BertConfig":
        fields = {f.name for f in dataclasses.fields(cls)} - {"kernels"}
        kwargs = {k: v for k, v in d.items() if k in fields}
        if "num_labels" not in kwargs and isinstance(d.get("id2label"), dict):
            kwargs["num_labels"] = len(d["id2label"])
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"position_embedding_type {d['position_embedding_type']!r}: only 'absolute' is supported")
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        d = dataclasses.asdict(self)
        num_labels = d.pop("num_labels")
        d.pop("kernels")
        d.update(
            model_type="bert",
            architectures=["BertForSequenceClassification"],
            position_embedding_type="absolute",
            id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
            label2id={f"LABEL_{i}": i for i in range(num_labels)},
        )
        return d


@flax.struct.dataclass
class BertOutput:
    logits: jax.Array
    pooled_output: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


class _LowPrecisionDense(nn.Module):
    """A dense layer computing in a low-precision ``dtype`` (bfloat16) through :func:`dense.dense`: the fused CPU
    kernel where it applies, else a dot with ``dtype`` operands and float32 accumulation (XLA:CPU sends it to
    YNNPACK's bf16 kernels, while a bf16 -> bf16 dot is converted to float32 first: docs/bench_model.md), the bias in
    float32, the cast back to ``dtype``. ``activation``: applied after, fused into the kernel when it is "gelu".
    Parameters as ``nn.Dense``'s ("kernel" [K, N], "bias" [N])."""

    features: int
    dtype: Any
    kernel_init: Callable
    activation: str | None = None
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        fused = self.activation if self.activation in dense.ACTIVATIONS else None
        y = dense.dense(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype), fused,
                        self.implementation)
        return y if self.activation == fused else _ACTIVATIONS[self.activation](y)


def _accumulate_f32(dtype) -> bool:
    return jnp.dtype(dtype) != jnp.float32


def _dense(config: BertConfig, features: int, dtype, name: str, activation: str | None = None) -> nn.Module:
    """A dense layer computing in ``dtype``, followed by ``activation`` (a ``hidden_act`` name, or None). float32
    keeps ``nn.Dense`` exactly; below it (bfloat16), :class:`_LowPrecisionDense`."""
    init = nn.initializers.normal(config.initializer_range)
    if _accumulate_f32(dtype):
        return _LowPrecisionDense(features, dtype, init, activation, config.kernels, name=name)
    layer = nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name)
    return layer if activation is None else lambda x: _ACTIVATIONS[activation](layer(x))


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # Statistics in float32 whatever the compute dtype; output cast back by the caller's dtype below.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)

        def embed(n, name):
            return nn.Embed(n, c.hidden_size, embedding_init=init, param_dtype=jnp.float32, name=name)

        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (
            embed(c.vocab_size, "word_embeddings")(input_ids)
            + embed(c.max_position_embeddings, "position_embeddings")(positions)
            + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        x = _layer_norm(c, "LayerNorm")(x)
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        return x.astype(self.dtype)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_bias, deterministic: bool):
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def project(name):
            y = _dense(c, c.hidden_size, self.dtype, name)(x)
            return y.reshape(y.shape[:-1] + (heads, head_dim))  # [B, L, H, D]

        q, k, v = project("query"), project("key"), project("value")
        # Scores, softmax and context in float32 whatever the compute dtype (see _dense); the fused kernel on CPU
        # (cascade_jax/attention.py).
        keep = None
        if not deterministic and c.attention_probs_dropout_prob > 0:  # dropout multipliers on the probabilities
            shape = (q.shape[0], heads, q.shape[1], k.shape[1])
            keep = nn.Dropout(c.attention_probs_dropout_prob)(jnp.ones(shape, jnp.float32), deterministic=False)
        context = attention.attention(q, k, v, key_bias, c.kernels, keep)
        return context.reshape(context.shape[:2] + (c.hidden_size,))


class BertResidualOutput(nn.Module):
    """``LayerNorm(residual + Dropout(Dense(x)))``: HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        c = self.config
        y = _dense(c, c.hidden_size, self.dtype, "dense")(x)
        y = nn.Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
        return _layer_norm(c, "LayerNorm")(y + residual).astype(self.dtype)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_bias, deterministic: bool):
        context = BertSelfAttention(self.config, self.dtype, name="self")(x, key_bias, deterministic)
        return BertResidualOutput(self.config, self.dtype, name="output")(context, x, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        return _dense(c, c.intermediate_size, self.dtype, "dense", c.hidden_act)(x)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_bias, deterministic: bool):
        h = BertAttention(self.config, self.dtype, name="attention")(x, key_bias, deterministic)
        y = BertIntermediate(self.config, self.dtype, name="intermediate")(h)
        return BertResidualOutput(self.config, self.dtype, name="output")(y, h, deterministic)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_bias, deterministic: bool):
        states = [x]
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, key_bias, deterministic)
            states.append(x)
        return tuple(states)


class BertModel(nn.Module):
    """The encoder with pooler; returns (all hidden states, pooled output).

    With ``pool_every_layer`` the pooled output is a list: the pooler applied to each encoder layer's [CLS] (the
    early-exit baselines' heads read them); the parameters are the same.
    """

    config: BertConfig
    dtype: Any = jnp.float32
    pool_every_layer: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool):
        c = self.config
        x = BertEmbeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        key_bias = attention.bias_from_mask(attention_mask)
        states = BertEncoder(c, self.dtype, name="encoder")(x, key_bias, deterministic)
        pooler = BertPooler(c, self.dtype, name="pooler")
        if self.pool_every_layer:
            return states, [pooler(s) for s in states[1:]]
        return states, pooler(states[-1])


class BertPooler(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, last_hidden_state):
        return jnp.tanh(_dense(self.config, self.config.hidden_size, self.dtype, "dense")(last_hidden_state[:, 0]))


class BertForSequenceClassification(nn.Module):
    """BERT + pooler + (dropout, dense) classifier. ``apply`` returns a :class:`BertOutput`."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> BertOutput:
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        states, pooled = BertModel(c, self.dtype, name="bert")(input_ids, attention_mask, token_type_ids, deterministic)
        dropout = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        x = nn.Dropout(dropout)(pooled, deterministic=deterministic)
        logits = _dense(c, c.num_labels, self.dtype, "classifier")(x).astype(jnp.float32)
        return BertOutput(
            logits=logits,
            pooled_output=pooled,
            last_hidden_state=states[-1],
            hidden_states=states if output_hidden_states else None,
        )


def cast_params(params, dtype) -> Any:
    """``params`` with every floating leaf stored in ``dtype`` (e.g. bfloat16 for inference: the weights are then
    read at half the bytes and fed to bf16 matmuls without a cast per call; LayerNorm and softmax still compute in
    float32, and logits come out float32)."""
    dtype = jnp.dtype(dtype)
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, params)


@functools.lru_cache(maxsize=64)
def logits_fn(module: BertForSequenceClassification) -> Callable[[Any, dict], jax.Array]:
    """A pure ``fn(params, batch) -> logits`` (batch: dict with input_ids, attention_mask, token_type_ids).

    The same function object for equal modules (same config and dtype), so that jitted code keyed on it (a cascade
    stage's step) is compiled once per architecture and shape, not once per loaded model."""

    def fn(params, batch):
        return module.apply(
            {"params": params}, batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        ).logits

    return fn


def init_params(module: BertForSequenceClassification, rng: jax.Array, seq_len: int = 8) -> dict:
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return module.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids))["params"]


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face state dicts <-> Flax params.


def _flax_path(hf_name: str) -> tuple[str, ...] | None:
    """``bert.encoder.layer.0.attention.self.query.weight`` -> ``(bert, encoder, layer_0, attention, self, query,
    kernel)``; None for buffers we do not keep (``position_ids``)."""
    if hf_name.endswith("position_ids"):
        return None
    parts = hf_name.split(".")
    if parts[0] != "classifier" and parts[0] != "bert":
        parts = ["bert"] + parts  # A bare BertModel checkpoint.
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out and out[-1] == "layer":
            out[-1] = f"layer_{p}"
        else:
            out.append(p)
    leaf = out[-1]
    if leaf in ("gamma", "beta"):  # Old TF-converted checkpoints.
        leaf = "weight" if leaf == "gamma" else "bias"
    if leaf == "weight":
        owner = out[-2]
        leaf = "scale" if owner == "LayerNorm" else "embedding" if owner.endswith("_embeddings") else "kernel"
    out[-1] = leaf
    return tuple(out)


def params_from_state_dict(state: dict[str, np.ndarray], shapes: dict, source: str) -> tuple[dict, set[str]]:
    """Convert a HF state dict to a Flax param tree shaped like ``shapes`` (from ``jax.eval_shape``).

    Returns the (partial) tree and the set of flax paths ('/'-joined) found. Layers beyond the model's depth are
    dropped (truncation); unknown names raise; shapes are checked against ``shapes``.
    """
    flat_shapes = {"/".join(k): v.shape for k, v in flax.traverse_util.flatten_dict(shapes).items()}
    flat: dict[tuple, np.ndarray] = {}
    for name, value in state.items():
        path = _flax_path(name)
        if path is None:
            continue
        key = "/".join(path)
        if key not in flat_shapes:
            if re.match(r"bert/encoder/layer_\d+/", key):
                continue  # A layer beyond num_layers: truncated away.
            raise ModelLoadError(f"{source}: parameter {name!r} has no place in a BERT sequence classifier")
        value = np.asarray(value, dtype=np.float32)
        expected = tuple(flat_shapes[key])
        if path[-1] == "kernel":
            expected = expected[::-1]  # Report in the checkpoint's (torch) layout.
        if value.shape != expected:
            raise ModelLoadError(
                f"{source}: parameter {name!r} has shape {value.shape}, but the config asks for {expected}"
            )
        flat[path] = value.T if path[-1] == "kernel" else value
    return flax.traverse_util.unflatten_dict(flat), {"/".join(p) for p in flat}


def state_dict_from_params(params) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_from_state_dict`: HF ``BertForSequenceClassification`` names, torch layouts."""
    out = {}
    for path, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items():
        parts = []
        for p in path:
            m = re.fullmatch(r"layer_(\d+)", p)
            parts.extend(["layer", m.group(1)] if m else [p])
        value = np.asarray(jax.device_get(value), dtype=np.float32)
        leaf = parts[-1]
        if leaf == "kernel":
            value = value.T
        if leaf in ("kernel", "scale", "embedding"):
            parts[-1] = "weight"
        out[".".join(parts)] = np.ascontiguousarray(value)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Finding and loading checkpoints.

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_dir(name_or_path: str | os.PathLike) -> pathlib.Path:
    """A local directory in Hugging Face layout for a built-in name, a path or a hub id.

    Built-in names (``minilm-l6``, ``minilm-l3``) come from the asset cache. A string that names an existing
    directory, or looks like a path (starts with ``/``, ``.`` or ``~``), is a local directory. Anything else is a
    hub id, fetched with ``huggingface_hub`` (which fails at once when the hub cannot be reached).
    """
    s = str(name_or_path)
    if s in BUILTIN_MODELS:
        return assets.path(s) / "hf"
    p = pathlib.Path(s).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ModelLoadError(f"{p} is a file; pass the model directory (with config.json and model.safetensors)")
    if s.startswith(("/", ".", "~")) or os.sep in s and s.count("/") > 1:
        raise FileNotFoundError(f"no model directory at {p}")
    return _download_from_hub(s)


def _download_from_hub(repo_id: str) -> pathlib.Path:
    import huggingface_hub

    try:
        return pathlib.Path(
            huggingface_hub.snapshot_download(
                repo_id,
                allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer*",
                                "special_tokens_map.json"],
            )
        )
    except Exception as e:  # Offline, unknown repo, auth: all end the same way for the user.
        raise FileNotFoundError(
            f"{repo_id!r} is neither a built-in model {BUILTIN_MODELS} nor a local directory, and fetching it "
            f"from the Hugging Face hub failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Without hub access, download it elsewhere and pass its local directory (config.json + "
            f"model.safetensors, or pytorch_model.bin with torch installed)."
        ) from e


def _repair_hint(model_dir: pathlib.Path) -> str:
    """What to do about a damaged file in ``model_dir``: reinstall the built-in asset it belongs to, or re-save it."""
    try:
        rel = pathlib.Path(model_dir).resolve().relative_to((assets.cache_dir() / "assets").resolve())
    except ValueError:
        rel = None
    if rel is not None and rel.parts and rel.parts[0] in assets.ASSETS:
        return (f"it belongs to the built-in asset {rel.parts[0]!r}: reinstall it with "
                f"`{assets.INSTALL_COMMAND} --force {rel.parts[0]}`")
    return "copy or save the model directory again (models.save_pretrained, or the run that wrote it)"


def _read_state_dict(model_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    st = model_dir / "model.safetensors"
    if st.exists():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st)), str(st)
        except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for a damaged file
            raise ModelLoadError(
                f"{st} cannot be read ({type(e).__name__}: {e}; {st.stat().st_size} bytes): the file is damaged or "
                f"cut short; {_repair_hint(model_dir)}") from e
    binfile = model_dir / "pytorch_model.bin"
    if binfile.exists():
        try:
            import torch
        except ImportError as e:
            raise ModelLoadError(f"{binfile} needs PyTorch to read; install torch or convert it to safetensors") from e
        try:
            sd = torch.load(str(binfile), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"{binfile} cannot be read ({type(e).__name__}: {e}): the file is damaged or cut "
                                 f"short; {_repair_hint(model_dir)}") from e
        return {k: v.float().numpy() for k, v in sd.items()}, str(binfile)
    raise FileNotFoundError(f"{model_dir} has no weights: expected one of {_WEIGHT_FILES}")


def weight_names(model_dir: str | os.PathLike) -> tuple[set[str], str]:
    """The parameter names stored in ``model_dir``'s weights file (read from the safetensors header only, so cheap)
    and the file's path. A ``pytorch_model.bin`` is loaded whole (needs torch)."""
    model_dir = pathlib.Path(model_dir)
    st = model_dir / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(st), "np") as f:
                return set(f.keys()), str(st)
        except Exception as e:
            raise ModelLoadError(f"{st} cannot be read ({type(e).__name__}: {e}): the file is damaged or cut short; "
                                 f"{_repair_hint(model_dir)}") from e
    state, source = _read_state_dict(model_dir)
    return set(state), source


# The parameters a fine-tuned sequence classifier has and a pre-trained encoder lacks (from_pretrained initialises
# them at random when they are missing).
HEAD_PARAMETERS = ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias")


def check_trained_head(model_dir: str | os.PathLike) -> None:
    """Raise :class:`ModelLoadError` unless ``model_dir`` holds a trained classification head (classifier and pooler
    weights), i.e. it is a fine-tuned model and not a pre-trained encoder whose head :func:`from_pretrained` would
    initialise at random."""
    names, source = weight_names(model_dir)
    found = {".".join(_flax_path(n) or ()) for n in names}
    wanted = {n: ".".join(_flax_path(n)) for n in HEAD_PARAMETERS}
    missing = [n for n, flax_name in wanted.items() if flax_name not in found]
    if missing:
        raise ModelLoadError(
            f"{source} has no trained classification head (missing {', '.join(missing)}): it is a pre-trained "
            f"encoder, not a fine-tuned model, and its classifier would be random. Use a fine-tuned member's "
            f"directory (train.finetune writes OUTPUT_DIR/model; a pipeline run keeps its members under members/)")


class InputMismatchError(ModelLoadError):
    """Inputs a model cannot embed: longer than its position table, or token ids beyond its vocabulary."""


def check_inputs_fit(config: BertConfig, *, max_length: int | None = None, vocab_size: int | None = None,
                     max_token_id: int | None = None, source: str = "the model") -> None:
    """Raise :class:`InputMismatchError` when inputs made with these settings would index past an embedding table.

    An out-of-range lookup is not an error inside a jitted model (JAX's gather fills out-of-range rows with NaN, so
    the logits come out NaN), so this check runs where inputs are made.

    Args:
      config: the model's :class:`BertConfig`.
      max_length: the padded/truncated sequence length inputs are made with (must be <= max_position_embeddings).
      vocab_size: the size of the tokenizer's vocabulary, ``len(tokenizer)`` (must be <= the model's vocab_size:
        every id the tokenizer can produce needs an embedding).
      max_token_id: the largest token id actually present in already-made inputs (must be < vocab_size).
      source: names the model in the message (its directory).
    """
    if max_length is not None and max_length > config.max_position_embeddings:
        raise InputMismatchError(
            f"{source}: max_length {max_length} is longer than the model's max_position_embeddings "
            f"{config.max_position_embeddings} (its config.json): positions beyond it have no embedding. Use "
            f"max_length <= {config.max_position_embeddings} (--max-length on the command line)")
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise InputMismatchError(
            f"{source}: the tokenizer has {vocab_size} tokens but the model's vocab_size is {config.vocab_size} (its "
            f"config.json): token ids >= {config.vocab_size} have no embedding. Use the tokenizer saved with this "
            f"model; the members of a cascade must share one vocabulary (the first member's tokenizer serves all)")
    if max_token_id is not None and max_token_id >= config.vocab_size:
        raise InputMismatchError(
            f"{source}: inputs hold token id {max_token_id}, but the model's vocab_size is {config.vocab_size}: "
            f"encode them with this model's tokenizer")


def load_config(model_dir: pathlib.Path, **overrides) -> BertConfig:
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{model_dir} has no config.json")
    try:
        d = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file}: not valid JSON ({e})") from e
    if d.get("model_type", "bert") != "bert":
        raise ModelLoadError(f"{cfg_file}: model_type {d.get('model_type')!r} is not 'bert'")
    try:
        return BertConfig.from_dict(d, **overrides)
    except TypeError as e:
        raise ModelLoadError(f"{cfg_file}: {e}") from e


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    num_labels: int,
    num_layers: int | None = None,
    dtype=jnp.float32,
    seed: int = 0,
) -> tuple[BertForSequenceClassification, dict]:
    """Load a BERT checkpoint as ``(module, params)``.

    Args:
      name_or_path: ``minilm-l6`` / ``minilm-l3`` (built-in), a local Hugging Face directory, or a hub id.
      num_labels: classifier outputs.
      num_layers: keep only the first k encoder layers (the paper's BERT-kL); must not exceed the checkpoint's.
      dtype: compute dtype (parameters stay float32).
      seed: initialises whatever the checkpoint lacks (pooler, classifier).
    """
    model_dir = resolve_model_dir(name_or_path)
    base = load_config(model_dir)
    if num_layers is not None and not 1 <= num_layers <= base.num_hidden_layers:
        raise ModelLoadError(
            f"num_layers={num_layers}, but {name_or_path} has {base.num_hidden_layers} layers (allowed 1..{base.num_hidden_layers})"
        )
    config = dataclasses.replace(base, num_labels=num_labels, num_hidden_layers=num_layers or base.num_hidden_layers)
    module = BertForSequenceClassification(config, dtype=dtype)
    state, source = _read_state_dict(model_dir)

    fresh = init_params(module, jax.random.PRNGKey(seed))
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
    loaded, found = params_from_state_dict(state, shapes, source)
    flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
    missing = [k for k in flat_fresh if k not in found and not k.startswith(("bert/pooler/", "classifier/"))]
    if missing:
        raise ModelLoadError(f"{source}: missing encoder parameters, e.g. {missing[:5]} ({len(missing)} in all)")
    flat_loaded = flax.traverse_util.flatten_dict(loaded, sep="/")
    params = {k: jnp.asarray(flat_loaded[k]) if k in flat_loaded else v for k, v in flat_fresh.items()}
    return module, flax.traverse_util.unflatten_dict(params, sep="/")


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def tokenizer_for(name_or_path: str | os.PathLike):
    """The transformers fast tokenizer of a built-in name, local directory or hub id.

    Raises :class:`ModelLoadError` when the directory has no tokenizer files (``tokenizer.json`` or ``vocab.txt``):
    transformers 5 would then build a vocabulary of the five special tokens alone, and every word would become
    ``[UNK]``.
    """
    model_dir = resolve_model_dir(name_or_path)
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        present = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
        raise ModelLoadError(
            f"{model_dir} has no tokenizer files (neither {' nor '.join(TOKENIZER_FILES)}; it holds: "
            f"{', '.join(present) or 'nothing'}). Copy vocab.txt, tokenizer.json and tokenizer_config.json from "
            f"the base model's directory into it, or save it with "
            f"models.save_pretrained(module, params, directory, tokenizer=models.tokenizer_for(base_model))")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ModelLoadError(
            f"{model_dir}: its tokenizer files give a vocabulary of only {len(tokenizer)} special tokens, so every "
            f"word would become {tokenizer.unk_token}. Copy vocab.txt and tokenizer.json from the base model")
    return tokenizer


def save_pretrained(module: BertForSequenceClassification, params, directory: str | os.PathLike, tokenizer=None):
    """Write ``model.safetensors`` + ``config.json`` that ``transformers.BertForSequenceClassification`` loads, and
    the tokenizer's files when ``tokenizer`` is given. Without them the directory cannot be used on texts
    (:func:`tokenizer_for` refuses it): pass the tokenizer the model was trained with."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_from_params(params), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(module.config.to_hf_dict(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
