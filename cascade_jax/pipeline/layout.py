"""Where a pipeline run keeps everything: the one place that knows the run folder's layout.

    OUTPUT/pipeline_config.json           the PipelineConfig
    OUTPUT/labels/<small|shallow>/        difficulty labels of each small member (difficulty.jsonl, summary.json)
    OUTPUT/members/<group>/<name>/model   cascade members: groups small, shallow (ce-s<i>, dar-m<margin>-s<i>),
                                          large and kd (s<i>); each group is one stacked run
    OUTPUT/baselines/<name>/s<i>/model    bert-<k>L, deebert, pabee, ... in seed i
    OUTPUT/report/                        results.json, results.md, curve.png
    OUTPUT/stages/<stage>.json            a stage's completion marker
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

    def labels_dir(self, small: str = "small") -> pathlib.Path:
        return self.root / "labels" / small

    def labels_file(self, small: str = "small") -> pathlib.Path:
        return self.labels_dir(small) / "difficulty.jsonl"

    def group(self, group: str) -> pathlib.Path:
        """A stacked run of members (``small``, ``shallow``, ``large``, ``kd``)."""
        return self.root / "members" / group

    def member_model(self, group: str, name: str) -> pathlib.Path:
        return self.group(group) / name / "model"

    def baseline(self, name: str) -> pathlib.Path:
        return self.root / "baselines" / name

    def baseline_run(self, name: str, seed_index: int) -> pathlib.Path:
        return self.baseline(name) / f"s{seed_index}"

    def baseline_model(self, name: str, seed_index: int) -> pathlib.Path:
        return self.baseline_run(name, seed_index) / "model"

    @property
    def report_dir(self) -> pathlib.Path:
        return self.root / "report"

    @property
    def results_file(self) -> pathlib.Path:
        return self.report_dir / "results.json"

    def marker(self, stage: str) -> pathlib.Path:
        return self.root / "stages" / f"{stage}.json"


def ce_member(seed_index: int) -> str:
    """A small member trained with cross entropy alone, in seed ``seed_index``."""
    return f"ce-s{seed_index}"


def dar_member(margin: float, seed_index: int) -> str:
    """A small member trained with DAR at ``margin``, in seed ``seed_index``."""
    return f"dar-m{margin:g}-s{seed_index}"


def seed_member(seed_index: int) -> str:
    """A member of a group that varies only its seed (large, kd)."""
    return f"s{seed_index}"
