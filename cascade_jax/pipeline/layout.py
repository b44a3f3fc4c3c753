"""Where a pipeline run keeps everything: the one place that knows the run folder's layout.

    OUTPUT/pipeline_config.json       the PipelineConfig
    OUTPUT/labels/                    difficulty labels (difficulty.jsonl, summary.json)
    OUTPUT/members/<name>/model       cascade members (small-ce, small-dar-m<margin>, large, large-<k>L-kd)
    OUTPUT/baselines/<name>/          bert-<k>L/model, deebert/model, pabee/model
    OUTPUT/report/                    results.json, results.md, curve.png
    OUTPUT/stages/<stage>.json        a stage's completion marker
"""

from __future__ import annotations

import dataclasses
import pathlib

CONFIG_FILE = "pipeline_config.json"


@dataclasses.dataclass(frozen=True)
class RunLayout:
    root: pathlib.Path

    def __init__(self, root):
        object.__setattr__(self, "root", pathlib.Path(root))

    @property
    def config_file(self) -> pathlib.Path:
        return self.root / CONFIG_FILE

    @property
    def labels_dir(self) -> pathlib.Path:
        return self.root / "labels"

    @property
    def labels_file(self) -> pathlib.Path:
        return self.labels_dir / "difficulty.jsonl"

    def member(self, name: str) -> pathlib.Path:
        """A member's run directory (its exported model is ``member(name) / "model"``)."""
        return self.root / "members" / name

    def member_model(self, name: str) -> pathlib.Path:
        return self.member(name) / "model"

    def baseline(self, name: str) -> pathlib.Path:
        return self.root / "baselines" / name

    def baseline_model(self, name: str) -> pathlib.Path:
        return self.baseline(name) / "model"

    @property
    def report_dir(self) -> pathlib.Path:
        return self.root / "report"

    @property
    def results_file(self) -> pathlib.Path:
        return self.report_dir / "results.json"

    def marker(self, stage: str) -> pathlib.Path:
        return self.root / "stages" / f"{stage}.json"


def dar_member(margin: float) -> str:
    """The member name of the small model trained with DAR at ``margin``."""
    return f"small-dar-m{margin:g}"


def trunc_member(layers: int) -> str:
    return f"large-{layers}L-kd"
