"""Where a run's numbers go: a JSONL file (one record per line) and TensorBoard event files.

Only the process that owns the log (process 0 in a multi-host run) writes; the others get a no-op log.
"""

from __future__ import annotations

import json
import pathlib
import time


class RunLog:
    """Append-only metrics log of one run: ``metrics.jsonl`` and ``tensorboard/`` under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.directory = pathlib.Path(directory)
        self._writer = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.directory / "tensorboard"))

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
