"""Use a trained cascade: raw texts (or pairs) in, label, confidence and exit stage out.

    from cascade_jax.predict import CascadePredictor
    p = CascadePredictor.from_pipeline("runs/quick")          # CascadeBERT (small + DAR -> large) of a pipeline run
    p.predict(["a gripping film", "dull and long"], threshold=0.9)
    # [{"label": 1, "label_name": "positive", "confidence": 0.97, "exit_stage": 0}, ...]

``CascadePredictor.from_members([small_dir, large_dir], task=...)`` takes any fine-tuned member directories
(fewest layers first). Prediction runs the cascade for real (:func:`cascade.run`: jitted stages, survivors gathered
into full batches), so only the examples the small model is unsure about reach the large one.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from cascade_jax import cascade, data, models, report


class CascadePredictor:
    """A cascade of fine-tuned members with its tokenizer and task (label names)."""

    def __init__(self, stages: Sequence[cascade.Stage], tokenizer, task: str, max_length: int = 128,
                 batch_size: int = 64):
        self.stages = list(stages)
        self.tokenizer = tokenizer
        self.task = data.get_task(task)
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_members(cls, member_dirs: Sequence, *, task: str = "rotten_tomatoes", max_length: int = 128,
                     batch_size: int = 64) -> "CascadePredictor":
        """Members are model directories in Hugging Face layout (e.g. ``finetune``'s ``OUTPUT/model``)."""
        if not member_dirs:
            raise ValueError("a cascade needs at least one member directory")
        stages = report.load_cascade(member_dirs, data.get_task(task).num_labels)
        return cls(stages, models.tokenizer_for(member_dirs[0]), task, max_length, batch_size)

    @classmethod
    def from_pipeline(cls, output_dir, *, batch_size: int = 64) -> "CascadePredictor":
        """The main cascade (small member with DAR at the chosen margin -> large member) of a pipeline run."""
        from cascade_jax.pipeline import RunLayout, dar_member

        layout = RunLayout(output_dir)
        for f in (layout.config_file, layout.results_file):
            if not f.exists():
                raise FileNotFoundError(f"{f} is missing: {layout.root} is not a finished pipeline run (./run main)")
        data_cfg = json.loads(layout.config_file.read_text())["data"]
        margin = json.loads(layout.results_file.read_text())["meta"]["margin"]
        members = [layout.member_model(dar_member(margin)), layout.member_model("large")]
        return cls.from_members(members, task=data_cfg["task"], max_length=data_cfg["max_length"],
                                batch_size=batch_size)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        fields = self.task.text_fields
        if (pairs is None) != (len(fields) == 1):
            raise ValueError(f"task {self.task.name!r} takes {'pairs' if len(fields) == 2 else 'single texts'}")
        if not len(texts) or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("texts must be a non-empty list of non-empty strings")
        args = [list(texts)] + ([list(pairs)] if pairs is not None else [])
        enc = self.tokenizer(*args, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        return {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, threshold=0.9,
                exit_rule: str = "max_prob") -> list[dict]:
        """One dict per text: ``label``, ``label_name``, ``confidence`` (max probability) and ``exit_stage``."""
        result = cascade.run(self.stages, self.encode(texts, pairs), threshold, self.batch_size, exit_rule=exit_rule)
        names = self.task.label_names
        return [{"label": int(p.argmax()), "label_name": names[int(p.argmax())] if names else None,
                 "confidence": float(p.max()), "exit_stage": int(s)}
                for p, s in zip(result.probs, result.exit_stage)]
