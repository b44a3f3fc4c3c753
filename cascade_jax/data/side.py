"""Per-example side data keyed by example id (e.g. difficulty labels), joined onto a split.

A side file is CSV/TSV or JSON/JSONL with an ``id`` column and numeric columns, typically
``difficulty`` (0 easy / 1 hard), ``seeds_wrong``, ``num_seeds`` and ``confidence``. It may hold more ids than the
split (e.g. train and dev together) but must cover every example of the split it is joined to.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from cascade_jax.data.encode import Encoded
from cascade_jax.data.errors import BadRowError, CoverageError, DataError, DataFileNotFoundError, MissingColumnError
from cascade_jax.data.readers import read_table
from cascade_jax.data.sources import parse_id

SIDE_COLUMNS = ("difficulty", "seeds_wrong", "num_seeds", "confidence")
_BINARY = {"difficulty"}


def _number(value, loc: str, column: str) -> float:
    """A finite float from a side-file cell, else :class:`BadRowError` naming the row and column."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BadRowError(f"{loc}: column {column!r} value {value!r} is not a number") from None
    if not math.isfinite(x):
        raise BadRowError(f"{loc}: column {column!r} value {value!r} is not finite")
    if column in _BINARY and x not in (0.0, 1.0):
        raise BadRowError(f"{loc}: column {column!r} must be 0 (easy) or 1 (hard), got {value!r}")
    return x


def read_side_file(path: str | os.PathLike, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read a side file into ``{"id": int64 [M], column: float32 [M], ...}``.

    Args:
      path: a ``.csv``, ``.tsv``, ``.json`` or ``.jsonl`` file with an ``id`` column.
      columns: the columns to read; default every column but ``id``.

    Raises:
      DataFileNotFoundError, MissingColumnError, BadRowError (bad id or value, naming the row), DataError
      (duplicate ids).
    """
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise DataFileNotFoundError(f"side-data file not found: {file}")
    table = read_table(file)
    wanted = [c for c in table.columns if c != "id"] if columns is None else list(columns)
    missing = [c for c in ["id", *wanted] if c not in table.columns]
    if missing:
        raise MissingColumnError(f"{file}: no column {', '.join(map(repr, missing))}; "
                                 f"the file has: {', '.join(table.columns)}")
    ids, values = [], {c: [] for c in wanted}
    for where, record in table.rows:
        loc = f"{file}, {where}"
        ids.append(parse_id(record.get("id"), loc))
        for c in wanted:
            values[c].append(_number(record.get(c), loc, c))
    out = {"id": np.asarray(ids, dtype=np.int64), **{c: np.asarray(v, dtype=np.float32) for c, v in values.items()}}
    unique, counts = np.unique(out["id"], return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{file}: duplicate ids, e.g. {unique[counts > 1][:10].tolist()}")
    return out


def lookup_by_id(ids: np.ndarray, side: dict[str, np.ndarray], source: str = "side data") -> np.ndarray:
    """Row positions in ``side`` of each of ``ids``; :class:`CoverageError` naming ``source`` and missing ids."""
    order = np.argsort(side["id"], kind="stable")
    sorted_ids = side["id"][order]
    pos = np.searchsorted(sorted_ids, ids)
    pos_clipped = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    if not found.all():
        missing = np.asarray(ids)[~found]
        raise CoverageError(f"{source} does not cover {len(missing)} of {len(ids)} examples; missing ids, e.g. "
                            f"{missing[:10].tolist()}")
    return order[pos]


def join_by_id(examples, path: str | os.PathLike, columns: Sequence[str] | None = None):
    """Attach side-file columns to ``examples`` by example id.

    Args:
      examples: an :class:`Encoded` split (columns go to ``extras``, float32 [N], and can be put into batches) or a
        :class:`datasets.Dataset` from ``load_split`` (columns are added as float32 columns, replacing any
        existing column of the same name).
      path: the side file (see :func:`read_side_file`).
      columns: which columns to join; default every column but ``id``.

    Raises:
      CoverageError: the file lacks some example ids (the message names the file and some missing ids).
    """
    side = read_side_file(path, columns)
    names = [c for c in side if c != "id"]
    is_encoded = isinstance(examples, Encoded)
    ids = examples.ids if is_encoded else np.asarray(examples["id"], dtype=np.int64)
    what = f"{pathlib.Path(path)} (task {examples.task!r}, split {examples.split!r})" if is_encoded else str(path)
    pos = lookup_by_id(ids, side, what)
    if is_encoded:
        return dataclasses.replace(examples, extras={**examples.extras, **{c: side[c][pos] for c in names}})
    for c in names:
        if c in examples.column_names:
            examples = examples.remove_columns(c)
        examples = examples.add_column(c, side[c][pos].tolist())
    return examples
