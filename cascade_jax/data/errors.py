"""Exceptions raised by the data layer.

Every error names what went wrong and where: the file, the row (data row index and, for text files, the line
number), the field or the offending value. They subclass the standard exceptions (``ValueError``,
``FileNotFoundError``, ``ConnectionError``) so callers can catch broadly.
"""

from __future__ import annotations


class DataError(ValueError):
    """Base class for bad data or bad arguments to the data layer."""


class UnknownTaskError(DataError, KeyError):
    """A task name that is not in the registry (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnknownSplitError(DataError):
    """A split name the task does not have (the message lists the known ones)."""


class DataFileNotFoundError(FileNotFoundError):
    """A data file or folder that does not exist (the message says what was looked for)."""


class MissingColumnError(DataError):
    """A required column is absent from a file (the message names the file and the columns it has)."""


class BadRowError(DataError):
    """A row that cannot be used: missing or empty text, wrong number of fields, bad id."""


class LabelError(BadRowError):
    """A label outside the task's label set (the message names the row and the value)."""


class DecodeError(DataError):
    """A file with bytes that are not valid in its encoding (the message names the file, line and byte offset)."""


class CoverageError(DataError):
    """A per-example side file (e.g. difficulty labels) that does not cover every example."""


class ForeignIdsError(DataError):
    """A per-example side file holding ids that are not examples of the split it is joined to (made for other
    data): the message gives the count and says how to allow it."""


class SingleFileDevError(DataError):
    """The dev split asked of a single-file source (the training data would be its own dev set)."""


class HubUnavailableError(ConnectionError):
    """The Hugging Face hub cannot be reached; the message says how to use a local copy (``source=``)."""
