"""Tokenisation of a split into compact numpy arrays, cached on disk.

:class:`Encoded` holds one split's examples tokenised without padding (ragged): the token ids of all examples
concatenated in ``input_ids`` and ``token_type_ids``, with example ``i`` at ``offsets[i]:offsets[i + 1]``; plus
``ids`` and ``labels``. Pair tasks are tokenised as a pair (``[CLS] a [SEP] b [SEP]``, token types 0 then 1).
Truncation is the tokenizer's ``longest_first`` to ``max_length`` tokens.

:func:`encode_split` caches the arrays in ``<cache>/tokenized/<task>-<split>-<key>.npz`` where ``<cache>`` is
:func:`cascade_jax.assets.cache_dir` (``$CASCADE_JAX_CACHE`` or ``~/.cache/cascade_jax``) and ``<key>`` hashes the
task, split, source fingerprint (path, size, mtime), loading options, tokenizer identity (hash of its full
serialised definition, which includes the vocabulary) and ``max_length``. A second call with the same inputs reads
the file and does not tokenise (``Encoded.from_cache`` is then True).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import tempfile
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cascade_jax.data.errors import DataError, UnknownSplitError
from cascade_jax.data.sources import load_split, source_fingerprint
from cascade_jax.data.tasks import Task, get_task, resolve_split

CACHE_FORMAT_VERSION = 1
DEFAULT_TOKENIZER = "minilm-l6"
_CHUNK = 2048


@dataclasses.dataclass(frozen=True, eq=False)
class Encoded:
    """One tokenised split (ragged token arrays; see the module docstring).

    Attributes:
      task: task name.
      split: canonical split name.
      ids: int64 [N] stable example ids.
      labels: int32 [N] (float32 for regression; -1 when unlabelled).
      input_ids: int32 [T] all examples' token ids, concatenated.
      token_type_ids: int8 [T] segment ids (0 first segment, 1 second), aligned with ``input_ids``.
      offsets: int64 [N + 1]; example ``i`` is ``input_ids[offsets[i]:offsets[i + 1]]``.
      max_length: truncation length used; every example has at most this many tokens.
      pad_id: the tokenizer's padding id.
      extras: per-example side columns joined by id (``{name: float32 [N]}``), see ``join_by_id``.
      from_cache: True when the arrays were read from the on-disk cache instead of being tokenised.
    """

    task: str
    split: str
    ids: np.ndarray
    labels: np.ndarray
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    max_length: int
    pad_id: int = 0
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    from_cache: bool = False

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.offsets.shape != (n + 1,) or self.labels.shape != (n,):
            raise DataError(f"Encoded({self.task}/{self.split}): {n} ids but offsets {self.offsets.shape} and "
                            f"labels {self.labels.shape}")
        if len(self.input_ids) != self.offsets[-1] or len(self.token_type_ids) != len(self.input_ids):
            raise DataError(f"Encoded({self.task}/{self.split}): token arrays do not match offsets")
        for name, column in self.extras.items():
            if np.shape(column) != (n,):
                raise DataError(f"Encoded({self.task}/{self.split}): extra column {name!r} has shape "
                                f"{np.shape(column)}, expected ({n},)")
        object.__setattr__(self, "extras", types.MappingProxyType(dict(self.extras)))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N] number of tokens of each example."""
        return np.diff(self.offsets)

    def tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and token type ids of example ``i`` (unpadded)."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.input_ids[lo:hi], self.token_type_ids[lo:hi]


def select(enc: Encoded, positions: Sequence[int] | np.ndarray) -> Encoded:
    """The examples at ``positions`` of ``enc`` (in that order) as a new :class:`Encoded`, side columns included."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= len(enc)):
        raise DataError(f"positions must lie in [0, {len(enc)}) for {enc.task}/{enc.split}")
    lengths = enc.lengths[pos]
    offsets = np.zeros(len(pos) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    take = np.concatenate([np.arange(enc.offsets[i], enc.offsets[i + 1]) for i in pos]) if pos.size else pos
    return dataclasses.replace(
        enc, ids=enc.ids[pos], labels=enc.labels[pos], input_ids=enc.input_ids[take],
        token_type_ids=enc.token_type_ids[take], offsets=offsets,
        extras={k: v[pos] for k, v in enc.extras.items()}, from_cache=False,
    )


def subset(enc: Encoded, n: int | None, seed: int = 0) -> Encoded:
    """A fixed random sample of ``n`` examples (kept in split order); ``n=None`` or ``n >= len`` keeps all.

    The sample depends only on ``(len(enc), n, seed)``, so a difficulty labeller and a trainer that both take
    ``subset(train, n)`` see the same examples.
    """
    if n is None or n >= len(enc):
        return enc
    if n < 1:
        raise DataError(f"a subset needs at least one example, got n={n}")
    chosen = np.sort(np.random.default_rng([int(seed), 7]).permutation(len(enc))[:n])
    return select(enc, chosen)


# ----------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_TOKENIZER):
    """A fast Hugging Face tokenizer for a built-in model name (``minilm-l6``, ``minilm-l3``) or a local directory,
    via :func:`cascade_jax.models.tokenizer_for` (which loads from the model *directory*: in transformers 5,
    ``BertTokenizer(vocab_file=...)`` silently yields ``[UNK]``)."""
    from cascade_jax.models import tokenizer_for

    return tokenizer_for(name_or_path)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's identity: its full serialised definition (vocabulary, normaliser, special tokens;
    without the truncation/padding state left by the last call) for a fast tokenizer, else its class and sorted
    vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # call-time settings the last call left behind, not identity
            definition.pop(state, None)
        material = json.dumps(definition, sort_keys=True)
    else:
        material = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------- tokenisation


def encode(dataset, task: str | Task, tokenizer, max_length: int, *, split: str = "") -> Encoded:
    """Tokenise a loaded split (``load_split``'s dataset) into an :class:`Encoded`; no caching.

    Pair tasks pass both text fields to the tokenizer, so ``token_type_ids`` are 1 on the second segment.
    """
    t = get_task(task)
    if max_length < 2 + len(t.text_fields):
        raise DataError(f"max_length={max_length} is too small for task {t.name!r}")
    n = len(dataset)
    pieces_ids, pieces_types, lengths = [], [], np.zeros(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        rows = dataset[start:start + _CHUNK]
        out = tokenizer(*[rows[f] for f in t.text_fields], truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=True)
        chunk_lengths = [len(ids) for ids in out["input_ids"]]
        lengths[start:start + len(chunk_lengths)] = chunk_lengths
        total = sum(chunk_lengths)
        pieces_ids.append(np.fromiter(itertools.chain.from_iterable(out["input_ids"]), np.int32, total))
        pieces_types.append(np.fromiter(itertools.chain.from_iterable(out["token_type_ids"]), np.int8, total))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    label_dtype = np.float32 if t.is_regression else np.int32
    return Encoded(
        task=t.name, split=split, ids=np.asarray(dataset["id"], dtype=np.int64),
        labels=np.asarray(dataset["label"], dtype=label_dtype),
        input_ids=np.concatenate(pieces_ids) if pieces_ids else np.zeros(0, np.int32),
        token_type_ids=np.concatenate(pieces_types) if pieces_types else np.zeros(0, np.int8),
        offsets=offsets, max_length=int(max_length), pad_id=int(tokenizer.pad_token_id or 0),
    )


def cache_key(task: str | Task, split: str, source=None, *, tokenizer, max_length: int,
              columns: Mapping[str, str] | None = None, bad_rows: str = "error") -> str:
    """The hex key of :func:`encode_split`'s cache entry (see the module docstring)."""
    t = get_task(task)
    material = {
        "version": CACHE_FORMAT_VERSION, "task": t.name, "split": split,
        "source": source_fingerprint(t, split, source), "columns": dict(columns or {}), "bad_rows": bad_rows,
        "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": int(max_length),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def default_cache_root() -> pathlib.Path:
    """``cascade_jax.assets.cache_dir() / "tokenized"`` (honours ``$CASCADE_JAX_CACHE``)."""
    from cascade_jax import assets

    return assets.cache_dir() / "tokenized"


def _save(file: pathlib.Path, enc: Encoded) -> None:
    """Write ``enc``'s arrays to ``file`` atomically (temporary file + rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"task": enc.task, "split": enc.split, "max_length": enc.max_length, "pad_id": enc.pad_id})
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ids=enc.ids, labels=enc.labels, input_ids=enc.input_ids,
                     token_type_ids=enc.token_type_ids, offsets=enc.offsets, meta=np.array(meta))
        os.replace(tmp, file)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _load(file: pathlib.Path) -> Encoded | None:
    """The :class:`Encoded` stored in ``file``, or None if it is missing or unreadable."""
    try:
        with np.load(file, allow_pickle=False) as z:
            meta: dict[str, Any] = json.loads(str(z["meta"]))
            return Encoded(ids=z["ids"], labels=z["labels"], input_ids=z["input_ids"],
                           token_type_ids=z["token_type_ids"], offsets=z["offsets"], from_cache=True, **meta)
    except (OSError, ValueError, KeyError, DataError):
        return None


def encode_split(task: str | Task, split: str, source=None, *, tokenizer, max_length: int = 128,
                 columns: Mapping[str, str] | None = None, bad_rows: str = "error", use_cache: bool = True,
                 cache_root: str | os.PathLike | None = None) -> Encoded:
    """Load (:func:`load_split`) and tokenise one split, served from the on-disk cache when possible.

    Args:
      task, split, source, columns, bad_rows: as for :func:`load_split`.
      tokenizer: a fast tokenizer object, or a name/directory for :func:`load_tokenizer`.
      max_length: truncation length (tokens, special tokens included).
      use_cache: False tokenises and writes nothing.
      cache_root: cache folder; default :func:`default_cache_root`.

    Returns:
      The :class:`Encoded` split; ``from_cache`` says whether it came from the cache.
    """
    t = get_task(task)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    try:
        split = resolve_split(t, split)
    except UnknownSplitError:
        if source is None or pathlib.Path(source).is_dir():
            raise
    file = None
    if use_cache:
        key = cache_key(t, split, source, tokenizer=tokenizer, max_length=max_length, columns=columns,
                        bad_rows=bad_rows)
        root = pathlib.Path(cache_root) if cache_root is not None else default_cache_root()
        file = root / f"{t.name}-{split}-{key}.npz"
        cached = _load(file) if file.exists() else None
        if cached is not None:
            return cached
    dataset = load_split(t, split, source, columns=columns, bad_rows=bad_rows)
    enc = encode(dataset, t, tokenizer, max_length, split=split)
    if file is not None:
        _save(file, enc)
    return enc
