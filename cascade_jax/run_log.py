"""Where a run's numbers go: a JSONL file (one record per line) and TensorBoard event files.

Only the process that owns the log (process 0 in a multi-host run) writes; the others get a no-op log. A resumed run
opens its log with ``after_step`` (the step it resumes from): records of later steps, written before the
interruption and about to be replayed, are dropped so that every step is recorded once.
"""

from __future__ import annotations

import json
import pathlib
import time


class RunLog:
    """Append-only metrics log of one run: ``metrics.jsonl`` and ``tensorboard/`` under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, enabled: bool = True, tensorboard: bool = True,
                 after_step: int | None = None):
        self.enabled = enabled
        self.directory = pathlib.Path(directory)
        self._writer = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "metrics.jsonl"
        if after_step is not None and path.exists():
            _drop_after(path, after_step)
        self._jsonl = open(path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if after_step is None else after_step + 1
            self._writer = SummaryWriter(str(self.directory / "tensorboard"), purge_step=purge)

    def write(self, step: int, kind: str, values: dict) -> None:
        """Record ``values`` (floats, or anything JSON can hold) at ``step`` under ``kind`` (train, eval, ...)."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._writer.add_scalar(f"{kind}/{k}", v, step)
            self._writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()


def _drop_after(path: pathlib.Path, step: int) -> None:
    """Keep only the records of ``path`` at steps ``<= step`` (and lines that are not records)."""
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # A line cut short by a kill.
        if not isinstance(record, dict) or int(record.get("step", 0)) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
