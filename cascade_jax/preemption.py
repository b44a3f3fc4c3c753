"""Pre-emption: SIGTERM or Ctrl-C asks a training loop to checkpoint and stop after the current step."""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np


class Preemption:
    """A flag set by SIGTERM and by the first SIGINT (Ctrl-C); a second Ctrl-C raises ``KeyboardInterrupt`` at once.

    Loops call :meth:`agreed` after every step and, when it is True, save a checkpoint and return. Handlers are
    installed only on the main thread (elsewhere the flag is only set by :meth:`request`).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    def request(self, name: str = "request") -> None:
        self.requested = True
        self.signal_name = self.signal_name or name

    def agreed(self) -> bool:
        """Whether any process was asked to stop; every process calls this after every step.

        A checkpoint save is collective across processes, so all must stop at the same step even when the signal
        reached only some of them (or reached them at different steps).
        """
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested, np.int32))))

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in self.SIGNALS}

        def handler(signum, frame):
            if signum == signal.SIGINT and self.requested:
                raise KeyboardInterrupt  # A second Ctrl-C: stop now, without the checkpoint.
            self.request(signal.Signals(signum).name)

        for s in old:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
