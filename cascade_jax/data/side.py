"""Per-example side data keyed by example id (e.g. difficulty labels), joined onto a split.

A side file is CSV/TSV or JSON/JSONL with an ``id`` column and numeric columns, typically
``difficulty`` (0 easy / 1 hard), ``seeds_wrong``, ``num_seeds`` and ``confidence``. It must cover every example it
is joined to, and by default hold no id that is not an example of that split: ids are row indices of the split's
file (or its own id column), so a file made for other data would line up with the wrong examples without any
missing id. ``split_ids`` widens the allowed ids to a whole split when joining onto a sample of it (``data.subset``),
and ``extra_ids="ignore"`` allows any (e.g. one file for the built-in train and dev splits, whose ids are
distinct).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from cascade_jax.data.encode import Encoded
from cascade_jax.data.errors import (BadRowError, CoverageError, DataError, DataFileNotFoundError, ForeignIdsError,
                                     MissingColumnError)
from cascade_jax.data.readers import read_table
from cascade_jax.data.sources import parse_id

SIDE_COLUMNS = ("difficulty", "seeds_wrong", "num_seeds", "confidence")
EXTRA_IDS = ("error", "ignore")
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


def _check_foreign_ids(side_ids: np.ndarray, allowed: np.ndarray, what: str, n_examples: int) -> None:
    """:class:`ForeignIdsError` when ``side_ids`` holds ids outside ``allowed``, with the count and what to do."""
    foreign = side_ids[~np.isin(side_ids, allowed)]
    if not len(foreign):
        return
    span = f"ids {int(allowed.min())}..{int(allowed.max())}" if len(allowed) else "no ids"
    raise ForeignIdsError(
        f"{what} holds {len(side_ids)} ids, {len(foreign)} of which are not examples of the split "
        f"({len(allowed)} allowed ids, {span}; {n_examples} examples joined), e.g. "
        f"{np.sort(foreign)[:10].tolist()}: it was made for other data (ids are row indices of the split's file, or "
        f"its id column), so its values would land on the wrong examples. Make it for this data (python -m "
        f"train.label_difficulty with the same --task, --source and --train-subset as the run that uses it); in "
        f"Python, data.join_by_id(..., split_ids=<ids of the whole split>) allows the rest of a split a sample was "
        f"drawn from, and extra_ids='ignore' allows any id")


def join_by_id(examples, path: str | os.PathLike, columns: Sequence[str] | None = None, *,
               split_ids: Sequence[int] | np.ndarray | None = None, extra_ids: str = "error"):
    """Attach side-file columns to ``examples`` by example id.

    Args:
      examples: an :class:`Encoded` split (columns go to ``extras``, float32 [N], and can be put into batches) or a
        :class:`datasets.Dataset` from ``load_split`` (columns are added as float32 columns, replacing any
        existing column of the same name).
      path: the side file (see :func:`read_side_file`).
      columns: which columns to join; default every column but ``id``.
      split_ids: the ids the side file may hold: those of the whole split ``examples`` was drawn from (e.g. the
        split before :func:`data.subset`). Default: the ids of ``examples``.
      extra_ids: ``"error"`` (default): ids outside ``split_ids`` raise :class:`ForeignIdsError`; ``"ignore"``:
        they are allowed and unused.

    Raises:
      CoverageError: the file lacks some example ids (the message names the file and some missing ids).
      ForeignIdsError: the file holds ids that are not in the split (the message gives their count).
    """
    if extra_ids not in EXTRA_IDS:
        raise DataError(f"extra_ids must be one of {EXTRA_IDS}, got {extra_ids!r}")
    side = read_side_file(path, columns)
    names = [c for c in side if c != "id"]
    is_encoded = isinstance(examples, Encoded)
    ids = examples.ids if is_encoded else np.asarray(examples["id"], dtype=np.int64)
    what = f"{pathlib.Path(path)} (task {examples.task!r}, split {examples.split!r})" if is_encoded else str(path)
    pos = lookup_by_id(ids, side, what)
    if extra_ids == "error":
        allowed = ids if split_ids is None else np.asarray(split_ids, dtype=np.int64)
        if split_ids is not None and not np.isin(ids, allowed).all():
            raise DataError(f"split_ids does not hold every id of the examples joined to {what}")
        _check_foreign_ids(side["id"], allowed, what, len(ids))
    if is_encoded:
        return dataclasses.replace(examples, extras={**examples.extras, **{c: side[c][pos] for c in names}})
    for c in names:
        if c in examples.column_names:
            examples = examples.remove_columns(c)
        examples = examples.add_column(c, side[c][pos].tolist())
    return examples
