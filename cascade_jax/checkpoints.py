"""orbax checkpoints of a training run: the full state for exact resume, and the best parameters so far.

Layout under a run directory::

    checkpoints/<step>/   state (params, optimiser state, step, RNG) + meta (data position, best metric, ...)
    best/<step>/          params of the best evaluation so far + meta (its metrics)

States are saved as host (numpy) pytrees, unreplicated, so a run can resume under another backend or device
count. Saves are asynchronous; :meth:`Checkpoints.wait` blocks until they are on disk.
"""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    """Distinct multi-process barrier keys per manager.

    orbax names its save barriers after the step (``_async_write_complete.<step>``); with two managers saving the
    same step (state and best at step N) in a multi-process run, the second save fails with "Barrier
    _async_write_complete.N is already ongoing". A prefix per manager keeps their barriers apart.
    """
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class Checkpoints:
    """The two checkpoint managers of a run directory."""

    def __init__(self, run_dir: str | pathlib.Path, max_to_keep: int = 2):
        run_dir = pathlib.Path(run_dir).absolute()
        self.latest = ocp.CheckpointManager(
            run_dir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, multiprocessing_options=_barrier_prefix("latest")
            ),
        )
        self.best = ocp.CheckpointManager(
            run_dir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, multiprocessing_options=_barrier_prefix("best")
            ),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save_state(self, step: int, state: Any, meta: dict) -> None:
        self.latest.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore_state(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore the state (shaped like ``target``) and meta of ``step`` (default: latest)."""
        step = self.latest.latest_step() if step is None else step
        out = self.latest.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
        return out.state, out.meta

    def restore_meta(self, step: int | None = None) -> dict:
        """The meta of the state checkpoint ``step`` (default: latest), without its arrays."""
        step = self.latest.latest_step() if step is None else step
        return self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def save_best(self, step: int, params: Any, meta: dict) -> None:
        self.best.save(
            step, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def best_step(self) -> int | None:
        return self.best.latest_step()

    def restore_best(self, target: Any) -> tuple[Any, dict]:
        out = self.best.restore(
            self.best.latest_step(),
            args=ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
        return out.params, out.meta

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()
