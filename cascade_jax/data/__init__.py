"""The data layer: task registry, loading, tokenisation with an on-disk cache, side data and batching.

Typical use::

    from cascade_jax import data

    ds = data.load_split("sst2", "validation", source="glue_data")      # datasets.Dataset: id, sentence, label
    enc = data.encode_split("rotten_tomatoes", "train", tokenizer=data.load_tokenizer("minilm-l6"),
                            max_length=128)                            # ragged token arrays, cached on disk
    enc = data.join_by_id(enc, "difficulty.jsonl", ["difficulty"])     # optional per-example side data
    for batch in data.train_batches(enc, 32, seed=0, epoch=0, extras=("difficulty",)):
        local = data.process_rows(batch)                               # this process's rows
        ...

Modules: :mod:`.tasks` (registry), :mod:`.readers` (files), :mod:`.sources` (``load_split``), :mod:`.encode`
(tokenisation and cache), :mod:`.side` (``join_by_id``), :mod:`.batching` (batches), :mod:`.errors`.
"""

from cascade_jax.data.batching import (DEFAULT_BUCKETS, batches_from_step, bucket_length, bucket_set, device_layout,
                                       epoch_permutation, length_grouped,
                                       eval_batches, make_batch, process_rows, steps_per_epoch, train_batch_indices,
                                       train_batches)
from cascade_jax.data.encode import (Encoded, cache_key, default_cache_root, encode, encode_split, load_tokenizer,
                                     select, subset, tokenizer_fingerprint)
from cascade_jax.data.errors import (BadRowError, CoverageError, DataError, DataFileNotFoundError, DecodeError,
                                     ForeignIdsError, HubUnavailableError, LabelError, MissingColumnError,
                                     SingleFileDevError, UnknownSplitError, UnknownTaskError)
from cascade_jax.data.side import SIDE_COLUMNS, join_by_id, read_side_file
from cascade_jax.data.sources import is_blank, load_split, locate_source, movie_split, source_fingerprint
from cascade_jax.data.tasks import TASKS, Task, get_task, resolve_split

__all__ = [
    "DEFAULT_BUCKETS", "SIDE_COLUMNS", "batches_from_step", "TASKS", "BadRowError", "CoverageError", "DataError",
    "DataFileNotFoundError", "DecodeError", "Encoded", "ForeignIdsError", "HubUnavailableError", "LabelError",
    "MissingColumnError", "SingleFileDevError", "is_blank",
    "Task", "UnknownSplitError", "UnknownTaskError", "bucket_length", "bucket_set", "cache_key",
    "default_cache_root", "device_layout", "encode", "encode_split", "epoch_permutation", "eval_batches", "length_grouped",
    "get_task", "join_by_id", "load_split", "load_tokenizer", "locate_source", "make_batch", "movie_split",
    "process_rows", "read_side_file", "select", "subset", "resolve_split", "source_fingerprint", "steps_per_epoch",
    "tokenizer_fingerprint", "train_batch_indices", "train_batches",
]
