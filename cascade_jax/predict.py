"""Use a trained cascade: raw texts (or pairs) in, label, confidence and exit stage out.

    from cascade_jax.predict import CascadePredictor
    p = CascadePredictor.from_pipeline("runs/quick", target_speedup=1.5)   # the run's cascade at a chosen point
    p.predict(["a gripping film", "dull and long"])
    # [{"label": 1, "label_name": "positive", "confidence": 0.97, "exit_stage": 0}, ...]
    p.save("my-cascade")                                  # one folder; CascadePredictor.load("my-cascade")

``CascadePredictor.from_members([small_dir, large_dir], task=...)`` takes any fine-tuned member directories
(fewest layers first). Prediction runs the cascade for real (:func:`cascade.run`: jitted stages, survivors gathered
into full batches), so only the examples the small model is unsure about reach the large one.

The operating point: ``predict(texts, threshold=T)``, or ``target_speedup=S`` for the threshold the pipeline chose
on dev for that layer speed-up (``thresholds``: ``{"1.5": T, ...}``, keys formatted with ``:g``), else the
predictor's ``threshold``.

A saved cascade (:meth:`CascadePredictor.save`) is one folder::

    DIR/cascade.json          task, label names, max length, dtype, exit rule, thresholds per target speed-up,
                              the default threshold, the members (and the provenance of the saving process)
    DIR/tokenizer.json, ...   the tokenizer files (the first member's tokenizer serves every member)
    DIR/members/0, 1, ...     the members, smallest first, in Hugging Face layout (config.json + model.safetensors,
                              loadable by transformers' BertForSequenceClassification, id2label = the task's names)
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence

import numpy as np

from cascade_jax import cascade, configs, data, models

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = "cascade-jax cascade"
CASCADE_VERSION = 1
DEFAULT_THRESHOLD = 0.9
# A pipeline run folder's config and report (cascade_jax.pipeline.layout); read here without importing the pipeline,
# whose import pulls in all of training.
RUN_CONFIG_FILE = "pipeline_config.json"
RUN_RESULTS_FILE = "report/results.json"
# Inputs are padded to a multiple of this (at most max_length) and each batch is trimmed to its longest row rounded
# up to it, so a stream of texts compiles at most (buckets x max_length / 16) shapes per stage.
LENGTH_MULTIPLE = 16


class PredictError(ValueError):
    """Inputs or a cascade the predictor cannot use; the message says which and what to do."""


def target_key(target_speedup: float) -> str:
    """The key of a target layer speed-up in ``thresholds`` (``1.5`` -> ``"1.5"``, ``2.0`` -> ``"2"``)."""
    return f"{float(target_speedup):g}"


def _check_member_dirs(member_dirs) -> list[pathlib.Path]:
    if isinstance(member_dirs, (str, os.PathLike)):
        raise PredictError(f"member_dirs must be a list of model directories, smallest first, not one path "
                           f"({member_dirs!r}): pass [{str(member_dirs)!r}] for a one-member cascade")
    dirs = [pathlib.Path(d) for d in member_dirs]
    if not dirs:
        raise PredictError("a cascade needs at least one member directory")
    return dirs


def _check_order(layers: Sequence[int], names: Sequence[str]) -> None:
    """Members must come smallest first (num_layers non-decreasing): the layer speed-up and the exit order rest on it."""
    for i in range(1, len(layers)):
        if layers[i] < layers[i - 1]:
            listing = ", ".join(f"{n} ({k} layers)" for n, k in zip(names, layers))
            raise PredictError(f"cascade members must be given smallest first (num_hidden_layers non-decreasing), "
                               f"but member {i} has fewer layers than member {i - 1}: {listing}. Reorder them, "
                               f"fewest layers first")


def _load_stages(member_dirs: Sequence[pathlib.Path], num_labels: int, dtype: str) -> list[cascade.Stage]:
    """The members as stages, after checking each holds a trained head and that they come smallest first."""
    if dtype not in configs.DTYPES:
        raise PredictError(f"dtype must be one of {sorted(configs.DTYPES)}, got {dtype!r}")
    dirs = [models.resolve_model_dir(d) for d in member_dirs]
    layers = [models.load_config(d).num_hidden_layers for d in dirs]
    _check_order(layers, [str(d) for d in member_dirs])
    stages = []
    for given, d in zip(member_dirs, dirs):
        models.check_trained_head(d)
        module, params = models.from_pretrained(d, num_labels=num_labels, dtype=configs.DTYPES[dtype])
        if dtype != "float32":  # Inference in bf16: the weights stored in bf16 too (see models.cast_params).
            params = models.cast_params(params, configs.DTYPES[dtype])
        stages.append(cascade.Stage(models.logits_fn(module), params, module.config.num_hidden_layers,
                                    config=module.config, name=str(given)))
    return stages


class CascadePredictor:
    """A cascade of fine-tuned members with its tokenizer, task (label names) and operating points.

    Args:
      stages: the members as :class:`cascade.Stage` s, fewest layers first (each with its ``config``).
      tokenizer: the tokenizer every member was trained with.
      task: a classification task name (its label names name the answers).
      max_length: inputs are truncated to this many tokens.
      batch_size: rows per model call.
      thresholds: ``{target speed-up (":g" key): threshold}`` chosen on dev (empty: none known).
      threshold: the default threshold (``predict`` without ``threshold``/``target_speedup``).
      exit_rule: ``"max_prob"`` or ``"entropy"`` (see :mod:`cascade_jax.cascade`).
      dtype: the members' compute dtype name (recorded by :meth:`save`).
      method: what the cascade is (e.g. the pipeline's method name), for the record.
    """

    def __init__(self, stages: Sequence[cascade.Stage], tokenizer, task: str, max_length: int = 128,
                 batch_size: int = 64, *, thresholds: Mapping[str, float] | None = None,
                 threshold: float = DEFAULT_THRESHOLD, exit_rule: str = "max_prob", dtype: str = "float32",
                 method: str = ""):
        self.task = data.get_task(task)
        if self.task.is_regression:
            raise PredictError(f"task {self.task.name!r} is a regression task: a cascade exits on the confidence of "
                               f"a class distribution, so CascadePredictor needs a classification task")
        self.stages = list(stages)
        if not self.stages:
            raise PredictError("a cascade needs at least one member")
        _check_order([s.num_layers for s in self.stages], [s.name or f"member {i}" for i, s in enumerate(self.stages)])
        if exit_rule not in cascade.EXIT_RULES:
            raise PredictError(f"exit_rule must be one of {cascade.EXIT_RULES}, got {exit_rule!r}")
        if int(max_length) < 2 + len(self.task.text_fields):
            raise PredictError(f"max_length={max_length} is too small for task {self.task.name!r}")
        if int(batch_size) < 1:
            raise PredictError(f"batch_size must be positive, got {batch_size}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        for s in self.stages:
            if s.config is not None:
                models.check_inputs_fit(s.config, max_length=self.max_length, vocab_size=len(tokenizer),
                                        source=s.name or "a cascade member")
                if s.config.num_labels != self.task.num_labels:
                    raise PredictError(f"{s.name}: the member has {s.config.num_labels} classes, task "
                                       f"{self.task.name!r} has {self.task.num_labels}")
        self.thresholds = {target_key(float(k)): self._check_threshold(v, f"thresholds[{k!r}]")
                           for k, v in (thresholds or {}).items()}
        self.threshold = self._check_threshold(threshold, "threshold")
        self.exit_rule = exit_rule
        self.dtype = dtype
        self.method = method

    @staticmethod
    def _check_threshold(value, what: str) -> float:
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise PredictError(f"{what} must be a number, got {value!r}") from None
        if math.isnan(t):
            raise PredictError(f"{what} must not be NaN")
        return t

    # ---------------------------------------------------------------------------------------------- constructors

    @classmethod
    def from_members(cls, member_dirs: Sequence, *, task: str = "rotten_tomatoes", max_length: int = 128,
                     batch_size: int = 64, dtype: str = "float32", thresholds: Mapping[str, float] | None = None,
                     threshold: float = DEFAULT_THRESHOLD, exit_rule: str = "max_prob",
                     method: str = "") -> "CascadePredictor":
        """Members are fine-tuned model directories in Hugging Face layout (e.g. ``finetune``'s ``OUTPUT/model``),
        fewest layers first; the first member's tokenizer serves all.

        Raises :class:`PredictError` (members out of order, a regression task) and
        :class:`models.ModelLoadError` (a member without a trained classification head, without tokenizer files,
        or whose vocabulary or position table the inputs would overrun).
        """
        dirs = _check_member_dirs(member_dirs)
        t = data.get_task(task)
        if t.is_regression:
            raise PredictError(f"task {t.name!r} is a regression task: a cascade exits on the confidence of a class "
                               f"distribution, so CascadePredictor needs a classification task")
        stages = _load_stages(dirs, t.num_labels, dtype)
        return cls(stages, models.tokenizer_for(dirs[0]), t.name, max_length, batch_size, thresholds=thresholds,
                   threshold=threshold, exit_rule=exit_rule, dtype=dtype, method=method)

    @classmethod
    def from_pipeline(cls, output_dir, *, target_speedup: float | None = None, batch_size: int = 64,
                      dtype: str = "float32") -> "CascadePredictor":
        """The cascade a pipeline run chose (its report's ``cascade_thresholds``: members and the threshold per
        target speed-up), at ``target_speedup`` (default: the smallest target, the most accurate point). A run
        whose report has no ``cascade_thresholds`` gives the small member with DAR at the chosen margin -> the large
        member, with the default threshold (and no target speed-ups). ``dtype``: the members' compute dtype
        ("bfloat16": bf16 weights and activations, float32 accumulation; the thresholds were chosen in float32).
        """
        root = pathlib.Path(output_dir)
        config_file, results_file = root / RUN_CONFIG_FILE, root / RUN_RESULTS_FILE
        for f in (config_file, results_file):
            if not f.exists():
                raise FileNotFoundError(f"{f} is missing: {root} is not a finished pipeline run (./run main)")
        try:
            data_cfg = json.loads(config_file.read_text())["data"]
            results = json.loads(results_file.read_text())
        except (ValueError, KeyError) as e:
            raise PredictError(f"{root}: cannot read the run's config or results ({type(e).__name__}: {e})") from None
        chosen = results.get("cascade_thresholds")
        if chosen:
            try:
                members = [root / m for m in chosen["members"]]
                thresholds = {target_key(float(k)): float(v) for k, v in chosen["thresholds"].items()}
                method = str(chosen.get("method", ""))
                exit_rule = str(chosen.get("exit_rule", "max_prob"))
            except (KeyError, TypeError, ValueError) as e:
                raise PredictError(f"{results_file}: malformed cascade_thresholds ({type(e).__name__}: {e}); "
                                   f"expected {{'method': str, 'members': [dirs], 'thresholds': {{'1.5': T}}}}")
            if not thresholds:
                raise PredictError(f"{results_file}: cascade_thresholds lists no thresholds")
            if target_speedup is None:
                threshold = thresholds[min(thresholds, key=float)]
            else:
                threshold = _threshold_for(thresholds, target_speedup, str(results_file))
        else:
            if target_speedup is not None:
                raise PredictError(f"{results_file} has no cascade_thresholds (a run made before they were "
                                   f"recorded): no threshold is known for target speed-up {target_speedup:g}; give a "
                                   f"threshold instead (threshold=, or --threshold on the command line)")
            margin = results["meta"]["margin"]
            # Runs that predate cascade_thresholds have the first pipeline's layout: members/<name>/model.
            members = [root / "members" / f"small-dar-m{margin:g}" / "model", root / "members" / "large" / "model"]
            thresholds, threshold, method, exit_rule = {}, DEFAULT_THRESHOLD, f"CascadeBERT (DAR m={margin:g})", \
                "max_prob"
        return cls.from_members(members, task=data_cfg["task"], max_length=data_cfg["max_length"],
                                batch_size=batch_size, thresholds=thresholds, threshold=threshold,
                                exit_rule=exit_rule, method=method, dtype=dtype)

    # ---------------------------------------------------------------------------------------------- save / load

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Write the cascade as one folder (see the module docstring); an existing saved cascade there is replaced,
        any other non-empty folder is refused. Returns the folder."""
        directory = pathlib.Path(directory)
        if directory.exists() and (not directory.is_dir() or
                                   (any(directory.iterdir()) and not (directory / CASCADE_FILE).exists())):
            raise PredictError(f"{directory} exists and is not a saved cascade: choose a new or empty folder")
        part = directory.with_name(directory.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        id2label = {str(i): n for i, n in enumerate(self.task.label_names)}
        members = []
        for i, stage in enumerate(self.stages):
            if stage.config is None:
                raise PredictError(f"member {i} ({stage.name}) has no config: only BERT members can be saved")
            sub = part / "members" / str(i)
            module = models.BertForSequenceClassification(stage.config)
            models.save_pretrained(module, stage.params, sub)
            hf = json.loads((sub / "config.json").read_text())
            hf.update(id2label=id2label, label2id={n: int(i) for i, n in id2label.items()})
            (sub / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
            members.append({"dir": f"members/{i}", "num_layers": stage.num_layers, "source": stage.name})
        self.tokenizer.save_pretrained(str(part))
        from cascade_jax import provenance

        doc = {
            "format": CASCADE_FORMAT, "version": CASCADE_VERSION, "task": self.task.name,
            "label_names": list(self.task.label_names), "text_fields": list(self.task.text_fields),
            "max_length": self.max_length, "batch_size": self.batch_size, "dtype": self.dtype,
            "exit_rule": self.exit_rule, "thresholds": dict(self.thresholds), "default_threshold": self.threshold,
            "method": self.method, "members": members, "provenance": provenance.provenance(),
        }
        (part / CASCADE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        part.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, batch_size: int | None = None,
             dtype: str | None = None) -> "CascadePredictor":
        """A cascade written by :meth:`save`; ``dtype`` overrides the compute dtype it was saved with."""
        directory = pathlib.Path(directory)
        file = directory / CASCADE_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: {directory} is not a saved cascade "
                                    f"(CascadePredictor.save, or `./run predict ... --save DIR`)")
        try:
            doc = json.loads(file.read_text())
        except ValueError as e:
            raise PredictError(f"{file}: not valid JSON ({e})") from None
        if doc.get("format") != CASCADE_FORMAT or doc.get("version") != CASCADE_VERSION:
            raise PredictError(f"{file}: format {doc.get('format')!r} version {doc.get('version')!r}; this "
                               f"cascade-jax reads {CASCADE_FORMAT!r} version {CASCADE_VERSION}")
        task = data.get_task(doc["task"])
        if list(task.label_names) != list(doc["label_names"]):
            raise PredictError(f"{file}: label names {doc['label_names']} differ from task {task.name!r}'s "
                               f"{list(task.label_names)}")
        dtype = dtype or doc["dtype"]
        stages = _load_stages([directory / m["dir"] for m in doc["members"]], task.num_labels, dtype)
        return cls(stages, models.tokenizer_for(directory), task.name, doc["max_length"],
                   batch_size or doc.get("batch_size", 64), thresholds=doc["thresholds"],
                   threshold=doc["default_threshold"], exit_rule=doc["exit_rule"], dtype=dtype,
                   method=doc.get("method", ""))

    # ---------------------------------------------------------------------------------------------- prediction

    def resolve_threshold(self, threshold: float | None = None, target_speedup: float | None = None) -> float:
        """The threshold to use: ``threshold``, else the one chosen for ``target_speedup``, else the default."""
        if threshold is not None and target_speedup is not None:
            raise PredictError("give a threshold or a target speed-up, not both")
        if threshold is not None:
            return self._check_threshold(threshold, "threshold")
        if target_speedup is not None:
            return _threshold_for(self.thresholds, target_speedup, "this cascade")
        return self.threshold

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Tokenise ``texts`` (and ``pairs`` for a pair task) into int32 [N, L] arrays, L a multiple of 16 (at most
        ``max_length``); :class:`PredictError` for a bare string, non-strings, or a text with no tokens."""
        fields = self.task.text_fields
        if (pairs is None) != (len(fields) == 1):
            raise PredictError(f"task {self.task.name!r} takes {'pairs (texts and pairs=)' if len(fields) == 2 else 'single texts'}")
        columns = [_check_texts(texts, "texts")]
        if pairs is not None:
            columns.append(_check_texts(pairs, "pairs"))
            if len(columns[1]) != len(columns[0]):
                raise PredictError(f"{len(columns[0])} texts but {len(columns[1])} pairs")
        enc = self.tokenizer(*columns, truncation=True, max_length=self.max_length, padding=True,
                             return_special_tokens_mask=True, return_tensors="np")
        mask = enc["attention_mask"].astype(bool)
        content = mask & ~enc["special_tokens_mask"].astype(bool)
        types = enc["token_type_ids"]
        for col, (name, values) in enumerate(zip(("texts", "pairs"), columns)):
            has = (content & (types == col)).any(axis=1)
            if not has.all():
                i = int(np.flatnonzero(~has)[0])
                raise PredictError(f"{name}[{i}] = {values[i]!r} has no tokens: it holds nothing but whitespace, "
                                   f"invisible characters (e.g. zero-width spaces) or characters the tokenizer "
                                   f"drops ({int((~has).sum())} such {name} in all); remove or fix them")
        out = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
        width = out["input_ids"].shape[1]
        target = min(-(-width // LENGTH_MULTIPLE) * LENGTH_MULTIPLE, max(self.max_length, width))
        if target > width:
            pad_id = int(self.tokenizer.pad_token_id or 0)
            fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
            out = {k: np.pad(v, ((0, 0), (0, target - width)), constant_values=fill[k]) for k, v in out.items()}
        return out

    def run(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, threshold: float | None = None,
            target_speedup: float | None = None) -> cascade.CascadeResult:
        """The cascade's :class:`cascade.CascadeResult` on ``texts`` (probabilities, exit stages, layers run)."""
        tau = self.resolve_threshold(threshold, target_speedup)
        return cascade.run(self.stages, self.encode(texts, pairs), tau, self.batch_size, exit_rule=self.exit_rule,
                           length_multiple=LENGTH_MULTIPLE)

    def rows(self, result: cascade.CascadeResult) -> list[dict]:
        """One dict per example of ``result``: ``label``, ``label_name``, ``confidence``, ``exit_stage``."""
        names = self.task.label_names
        labels = result.probs.argmax(-1)
        return [{"label": int(y), "label_name": names[int(y)], "confidence": float(p.max()), "exit_stage": int(s)}
                for y, p, s in zip(labels, result.probs, result.exit_stage)]

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, threshold: float | None = None,
                target_speedup: float | None = None, exit_rule: str | None = None) -> list[dict]:
        """One dict per text: ``label``, ``label_name``, ``confidence`` (max probability) and ``exit_stage``.

        ``texts`` must be a list of strings (a bare string is refused: it is not a list of its characters).
        The operating point: ``threshold``, or ``target_speedup`` (a key of ``thresholds``), else ``threshold``
        given at construction. ``exit_rule`` overrides the predictor's for this call.
        """
        if exit_rule is not None and exit_rule != self.exit_rule:
            if exit_rule not in cascade.EXIT_RULES:
                raise PredictError(f"exit_rule must be one of {cascade.EXIT_RULES}, got {exit_rule!r}")
            tau = self.resolve_threshold(threshold, target_speedup)
            result = cascade.run(self.stages, self.encode(texts, pairs), tau, self.batch_size, exit_rule=exit_rule,
                                 length_multiple=LENGTH_MULTIPLE)
        else:
            result = self.run(texts, pairs, threshold=threshold, target_speedup=target_speedup)
        return self.rows(result)


def _threshold_for(thresholds: Mapping[str, float], target_speedup: float, where: str) -> float:
    try:
        key = target_key(float(target_speedup))
    except (TypeError, ValueError):
        raise PredictError(f"target speed-up must be a number, got {target_speedup!r}") from None
    if key not in thresholds:
        available = ", ".join(sorted(thresholds, key=float)) or "none"
        raise PredictError(f"no threshold for target speed-up {key} in {where}; available targets: {available} "
                           f"(or give a threshold)")
    return float(thresholds[key])


def _check_texts(texts, name: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise PredictError(f"{name} must be a list of strings, not one string: predict([{texts[:40]!r}]), not "
                           f"predict({texts[:40]!r}) (a string would be read as a list of its characters)")
    try:
        values = list(texts)
    except TypeError:
        raise PredictError(f"{name} must be a list of strings, got {type(texts).__name__}") from None
    if not values:
        raise PredictError(f"{name} must be a non-empty list of non-empty strings, got an empty list")
    for i, t in enumerate(values):
        if not isinstance(t, str):
            raise PredictError(f"{name}[{i}] is {type(t).__name__} {t!r}, not a string")
        if not t.strip():
            raise PredictError(f"{name} must be a non-empty list of non-empty strings: {name}[{i}] = {t!r} is empty")
    return values
