"""The task registry: one frozen :class:`Task` per dataset.

A task fixes the text fields every loaded split has (``sentence``, or a pair such as ``premise``/``hypothesis``),
the label names (empty for regression), the metric *name* (metrics are computed elsewhere), the split names and
where the data come from (the Hugging Face hub, a built-in asset, and how the official GLUE TSV files are laid
out). Adding a task is one more ``Task(...)`` entry in :data:`TASKS`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from cascade_jax.data.errors import UnknownSplitError, UnknownTaskError

_STANDARD_SPLITS = ("train", "validation", "test")
_STANDARD_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def _frozen(mapping: Mapping | None) -> Mapping:
    """A read-only copy of ``mapping`` (so a frozen task cannot be changed through its dict fields)."""
    return types.MappingProxyType(dict(mapping or {}))


@dataclasses.dataclass(frozen=True)
class Task:
    """One dataset and what is needed to load it.

    Attributes:
      name: registry key (``sst2``, ``mnli``, ``rotten_tomatoes``, ...).
      text_fields: the text columns of a loaded split: one (``("sentence",)``) or two for a pair task.
      label_names: class names, index = label; empty for a regression task (float label).
      metric: name of the evaluation metric (``accuracy``, ``f1+accuracy``, ``matthews``, ``pearson+spearman``).
      splits: the split names (Hugging Face style: ``train``, ``validation``, ``test``; MNLI has
        ``validation_matched`` and ``validation_mismatched``).
      dev_split: the split ``"dev"`` and ``"validation"`` resolve to; None for an evaluation-only task.
      hub: ``(repository, config)`` for :func:`datasets.load_dataset`, or None.
      builtin: name of the built-in loader used when ``source`` is None (``rotten_tomatoes``, ``vader:<file>``).
      glue_dir: folder name of the task inside an official GLUE download (``SST-2``, ``MNLI``, ...).
      glue_files: ``{split: file name}`` in the official GLUE layout.
      glue_columns: ``{official column: our field}`` for the official GLUE TSV files; the label's target is
        ``"label"``.
      glue_headerless: column names for official files that have no header row (CoLA train/dev), else ``()``.
      label_aliases: extra label spellings accepted in files, ``{spelling: index}`` (e.g. ``fresh`` -> 1).
      test_labelled: False when the test split's labels are withheld (GLUE): evaluation then holds out part of dev.
    """

    name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    metric: str
    splits: tuple[str, ...] = _STANDARD_SPLITS
    dev_split: str | None = "validation"
    hub: tuple[str, str] | None = None
    builtin: str | None = None
    glue_dir: str | None = None
    glue_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    glue_columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    glue_headerless: tuple[str, ...] = ()
    label_aliases: Mapping[str, int] = dataclasses.field(default_factory=dict)
    test_labelled: bool = True

    def __post_init__(self) -> None:
        for name in ("glue_files", "glue_columns", "label_aliases"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if len(self.text_fields) not in (1, 2):
            raise ValueError(f"task {self.name!r}: text_fields must have one or two names, got {self.text_fields}")
        if self.dev_split is not None and self.dev_split not in self.splits:
            raise ValueError(f"task {self.name!r}: dev_split {self.dev_split!r} is not one of {self.splits}")

    @property
    def is_regression(self) -> bool:
        """True when the label is a float score (no label names)."""
        return not self.label_names

    @property
    def is_pair(self) -> bool:
        """True when each example has two text segments."""
        return len(self.text_fields) == 2

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression: one output)."""
        return len(self.label_names) or 1


def _glue(name: str, glue_dir: str, text_fields: tuple[str, ...], label_names: tuple[str, ...], metric: str,
          glue_columns: Mapping[str, str], **kw) -> Task:
    """A GLUE task with the standard train/validation/test splits and hub config ``name``."""
    kw.setdefault("glue_files", _STANDARD_FILES)
    kw.setdefault("test_labelled", False)
    return Task(name=name, text_fields=text_fields, label_names=label_names, metric=metric,
                hub=("nyu-mll/glue", name), glue_dir=glue_dir, glue_columns=glue_columns, **kw)


_POLARITY = ("negative", "positive")
_VADER_FILES = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets", "nyt": "nytEditorialSnippets",
                "tweets": "tweets"}

TASKS: Mapping[str, Task] = types.MappingProxyType({t.name: t for t in [
    _glue("sst2", "SST-2", ("sentence",), _POLARITY, "accuracy", {"sentence": "sentence", "label": "label"}),
    _glue("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), "matthews",
          {"sentence": "sentence", "label": "label"},
          glue_headerless=("source", "label", "original_label", "sentence")),
    _glue("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1+accuracy",
          {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
    _glue("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1+accuracy",
          {"question1": "question1", "question2": "question2", "is_duplicate": "label"}),
    _glue("stsb", "STS-B", ("sentence1", "sentence2"), (), "pearson+spearman",
          {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"}),
    _glue("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy",
          {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
          splits=("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
          dev_split="validation_matched",
          glue_files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                      "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                      "test_mismatched": "test_mismatched.tsv"}),
    _glue("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy",
          {"question": "question", "sentence": "sentence", "label": "label"}),
    _glue("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy",
          {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    Task("rotten_tomatoes", ("sentence",), _POLARITY, "accuracy", builtin="rotten_tomatoes",
         label_aliases={"rotten": 0, "fresh": 1}),
    *[Task(f"vader_{short}", ("sentence",), _POLARITY, "accuracy", splits=("test",), dev_split=None,
           builtin=f"vader:{stem}") for short, stem in _VADER_FILES.items()],
]})


def get_task(task: str | Task) -> Task:
    """The registered :class:`Task` called ``task`` (a :class:`Task` is returned unchanged).

    Raises:
      UnknownTaskError: ``task`` is not registered; the message lists the known tasks.
    """
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UnknownTaskError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def resolve_split(task: Task, split: str) -> str:
    """The canonical split name: ``dev*`` means ``validation*``; ``validation`` means the task's dev split.

    >>> resolve_split(get_task("mnli"), "dev_mismatched")
    'validation_mismatched'

    Raises:
      UnknownSplitError: the task has no such split; the message lists its splits.
    """
    name = "validation" + split[3:] if split.startswith("dev") else split
    if name == "validation" and name not in task.splits and task.dev_split:
        name = task.dev_split
    if name == "test" and name not in task.splits:
        name = next((s for s in task.splits if s.startswith("test")), name)
    if name not in task.splits:
        raise UnknownSplitError(f"task {task.name!r} has no split {split!r}; its splits: {', '.join(task.splits)}")
    return name
