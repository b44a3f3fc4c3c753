"""Readers for local files: csv, tsv, json, jsonl, parquet (csv/tsv/json/jsonl may be ``.gz`` or ``.bz2``).

Each reader returns a :class:`Table`: the column names and a lazy stream of ``(where, record)`` pairs in file order,
where ``where`` locates the row for error messages (``line 17``, ``record 3``) and ``record`` maps column name to
value. Text is decoded strictly as UTF-8 (a leading byte-order mark is dropped); undecodable bytes raise
:class:`DecodeError` naming the file, the line and the byte offset, unless the caller names a fallback encoding.

TSV files are read with ``csv.QUOTE_NONE`` (GLUE text contains unbalanced quotes); CSV files use standard quoting,
so a quoted field may span several lines.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import json
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

from cascade_jax.data.errors import BadRowError, DataError, DataFileNotFoundError, DecodeError

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
# What to do about an unusable row, in the messages: ``bad_rows`` is a Python argument of ``data.load_split`` only.
BAD_ROWS_HINT = ("fix or delete that row, or drop every such row with bad_rows='skip' (a Python argument of "
                 "data.load_split / data.encode_split; the command-line tools have no flag for it)")
_COMPRESSION = {".bz2": bz2.open, ".gz": gzip.open}
_BOM = "\ufeff"


@dataclasses.dataclass(frozen=True)
class Table:
    """Columns and a stream of ``(where, record)`` rows read from ``path``."""

    path: pathlib.Path
    columns: tuple[str, ...]
    rows: Iterable[tuple[str, dict[str, Any]]]


def file_format(path: pathlib.Path) -> str:
    """The data format of ``path`` from its suffix, ignoring a ``.gz``/``.bz2`` suffix (``data.tsv.gz`` -> ``tsv``).

    Returns the suffix without its dot (which may not be one of :data:`FORMATS`).
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return suffixes[-1].lstrip(".") if suffixes else ""


def _open_binary(path: pathlib.Path):
    """Open ``path`` for binary reading, decompressing ``.gz``/``.bz2`` transparently."""
    if not path.is_file():
        raise DataFileNotFoundError(f"data file not found: {path}")
    opener = _COMPRESSION.get(path.suffix.lower(), open)
    return opener(path, "rb")


def _decode(raw: bytes, path: pathlib.Path, line_no: int, offset: int, fallback: str | None) -> str:
    """Decode one line of ``path``; on bad UTF-8 use ``fallback`` or raise :class:`DecodeError`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if fallback is not None:
            try:
                return raw.decode(fallback)
            except UnicodeDecodeError:
                pass
        raise DecodeError(
            f"{path}: line {line_no} has bytes that are not valid UTF-8 at byte offset {offset + e.start} "
            f"(byte {raw[e.start:e.start + 1]!r}); re-save the file as UTF-8"
        ) from None


def decoded_lines(path: pathlib.Path, fallback: str | None = None) -> Iterator[str]:
    """The lines of ``path`` as text (line endings kept), decoded strictly as UTF-8 unless ``fallback`` is given.

    Byte offsets in errors count from the start of the (decompressed) file; lines count from 1.
    """
    offset = 0
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            text = _decode(raw, path, line_no, offset, fallback)
            offset += len(raw)
            yield text[1:] if line_no == 1 and text.startswith(_BOM) else text


def _delimited_rows(path: pathlib.Path, delimiter: str, quoting: int, names: tuple[str, ...] | None,
                    skip_bad: bool, fallback: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a delimited file; ``names=None`` means the first row is the header (already validated)."""
    reader = csv.reader(decoded_lines(path, fallback), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = names if names is not None else tuple(next(reader, ()))
        for values in reader:
            where = f"line {reader.line_num}"
            if not values:
                continue  # blank line
            if len(values) != len(header):
                if skip_bad:
                    continue
                raise BadRowError(f"{path}, {where}: {len(values)} fields but the header has {len(header)} "
                                  f"({', '.join(header)}); {BAD_ROWS_HINT}")
            yield where, dict(zip(header, values))
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: malformed {file_format(path)} ({e})") from None


def read_delimited(path: pathlib.Path, delimiter: str, *, quoting: int = csv.QUOTE_MINIMAL,
                   headerless_names: tuple[str, ...] = (), header_must_have: tuple[str, ...] = (),
                   skip_bad: bool = False, fallback: str | None = None) -> Table:
    """Read a CSV/TSV file whose first row is its header.

    If ``headerless_names`` is given and the first row lacks any of ``header_must_have``, the file is taken to
    have no header and its columns are ``headerless_names`` (as in GLUE's CoLA train/dev files).
    """
    lines = decoded_lines(path, fallback)
    try:
        first = next(csv.reader(lines, delimiter=delimiter, quoting=quoting), [])
    except csv.Error as e:
        raise DataError(f"{path}, line 1: malformed {file_format(path)} ({e})") from None
    finally:
        lines.close()
    names = None
    if headerless_names and not set(header_must_have) <= set(first):
        names = tuple(headerless_names)
    if names is None:
        check_unique_columns(path, first, "line 1 (the header)")
    columns = names if names is not None else tuple(first)
    return Table(path, columns, _delimited_rows(path, delimiter, quoting, names, skip_bad, fallback))


def check_unique_columns(path: pathlib.Path, columns, where: str) -> None:
    """Raise :class:`DataError` naming ``path`` and the column when a column name appears twice in ``columns``
    (a reader would otherwise keep only the last one's values)."""
    seen: dict[str, int] = {}
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
    dup = [c for c, k in seen.items() if k > 1]
    if dup:
        raise DataError(f"{path}, {where}: column {dup[0]!r} appears {seen[dup[0]]} times"
                        + (f" (also duplicated: {', '.join(map(repr, dup[1:]))})" if len(dup) > 1 else "")
                        + f"; the header is: {', '.join(columns)}. Give each column its own name (only one of them "
                        f"can be a task field)")


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs):
    """``object_pairs_hook`` for :mod:`json` that refuses a key given twice in one object."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _loads(text: str):
    return json.loads(text, object_pairs_hook=_unique_pairs)


def _read_text(path: pathlib.Path) -> str:
    """The whole of ``path`` as strict UTF-8; a bad byte raises :class:`DecodeError` with line and offset."""
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DecodeError(f"{path}: line {line} has bytes that are not valid UTF-8 at byte offset {e.start} "
                          f"(byte {raw[e.start:e.start + 1]!r}); re-save the file as UTF-8") from None
    return text[1:] if text.startswith(_BOM) else text


def _columns_of(records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The union of the records' keys, in first-seen order."""
    return tuple(dict.fromkeys(k for r in records for k in r))


def _jsonl_records(path: pathlib.Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse JSON lines: one object per non-blank line."""
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = _loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
        except _DuplicateKey as e:
            raise DataError(f"{path}, line {line_no}: key {e.key!r} appears twice in one object; give each column "
                            f"its own name") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
        out.append((f"line {line_no}", record))
    return out


def _json_records(path: pathlib.Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse a JSON document: a list of objects, or an object of equal-length column lists; else JSON lines."""
    try:
        doc = _loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several documents: JSON lines saved as .json
            return _jsonl_records(path, text)
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except _DuplicateKey as e:
        raise DataError(f"{path}: key {e.key!r} appears twice in one object; give each column its own "
                        f"name") from None
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        lengths = {k: len(v) for k, v in doc.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{path}: column lists have different lengths {lengths}")
        doc = [dict(zip(doc, values)) for values in zip(*doc.values())]
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a list of objects or an object of column lists")
    for i, record in enumerate(doc):
        if not isinstance(record, dict):
            raise DataError(f"{path}, record {i}: expected a JSON object, got {type(record).__name__}")
    return [(f"record {i}", r) for i, r in enumerate(doc)]


def read_json(path: pathlib.Path) -> Table:
    """Read ``.json`` (list of objects, object of column lists, or JSON lines) or ``.jsonl``."""
    text = _read_text(path)
    parse = _jsonl_records if file_format(path) == "jsonl" else _json_records
    rows = parse(path, text)
    return Table(path, _columns_of([r for _, r in rows]), rows)


def read_parquet(path: pathlib.Path) -> Table:
    """Read a parquet file (all columns)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataFileNotFoundError(f"data file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({e})") from None
    check_unique_columns(path, table.column_names, "schema")
    columns = table.to_pydict()
    names = tuple(columns)
    rows = [(f"row {i}", dict(zip(names, values))) for i, values in enumerate(zip(*columns.values()))]
    return Table(path, names, rows)


def read_table(path: pathlib.Path, *, headerless_names: tuple[str, ...] = (), header_must_have: tuple[str, ...] = (),
               skip_bad: bool = False) -> Table:
    """Read ``path`` with the reader its suffix calls for (see :data:`FORMATS`).

    Raises:
      DataFileNotFoundError: no such file.
      DataError: an unsupported suffix, or a malformed file (the message names the file and line).
    """
    if not path.is_file():
        raise DataFileNotFoundError(f"data file not found: {path}")
    fmt = file_format(path)
    if fmt in ("csv", "tsv"):
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
        return read_delimited(path, delimiter, quoting=quoting, headerless_names=headerless_names,
                              header_must_have=header_must_have, skip_bad=skip_bad)
    if fmt in ("json", "jsonl"):
        return read_json(path)
    if fmt == "parquet":
        return read_parquet(path)
    raise DataError(f"{path}: unsupported file type {fmt!r}; use one of {', '.join(FORMATS)}")
