"""Benchmark variants that run in this process or in a process of their own, behind one interface.

A variant is built by a *factory*, named ``"module:function"`` so that a fresh process can import it:
``function(**kwargs)`` loads what the variant needs (a framework, a model) and returns ``make``;
``make(**config)`` prepares one configuration (inputs, compilation) and returns ``(fn, info)``, where ``fn()`` is the
call to time and ``info`` a JSON-able dict (e.g. compile seconds). :class:`Runner` does this in the calling process,
:class:`Spawned` in a spawned Python process that it drives over a pipe; both offer ``make``, ``run`` (untimed
calls, optionally returning the last output as a float32 numpy array), ``timed`` (``settle`` untimed calls, then one
timed by :func:`eval.machine.timed` in the process that makes the calls), ``ready`` (wait until the variant is
built) and ``close``. :func:`interleaved` times several variants, either kind or plain callables, in rounds.

Why processes: in one process, the first call of one framework after another's re-faults memory the other gave
back to the system, on the VMs of docs/ at a large kernel-time cost (docs/bench_model.md, "session 13"). A variant
in its own process pays only for its own calls, as a user running one framework does; interleaving the processes'
calls in time still lets machine noise hit every variant alike.
"""

from __future__ import annotations

import importlib
import multiprocessing
import signal
import statistics
import traceback

from eval import machine


class WorkerError(RuntimeError):
    """A variant's worker process failed: its traceback, or how it died."""


def split_name(factory: str) -> tuple[str, str]:
    """``(module, function)`` of a factory name ``"module:function"``; ValueError if either part is missing."""
    module, _, name = factory.partition(":")
    if not module or not name:
        raise ValueError(f"factory {factory!r}: expected 'module:function'")
    return module, name


def resolve(factory: str):
    """The function named by ``"module:function"``."""
    module, name = split_name(factory)
    return getattr(importlib.import_module(module), name)


def to_numpy(out):
    """A call's output as a float32 numpy array (torch tensors through ``.float()``; JAX arrays as they are)."""
    import numpy as np

    if hasattr(out, "detach"):  # torch.Tensor, possibly bfloat16, which numpy cannot hold.
        out = out.detach().float().numpy()
    return np.asarray(out, np.float32)


class Runner:
    """A variant in this process: ``factory(**kwargs)`` is called now; or, with ``fn``, just that callable (for
    which :meth:`make` is not available). ``label`` names it in messages."""

    def __init__(self, factory: str | None = None, fn=None, label: str | None = None, **kwargs):
        self.label = label or factory or "variant"
        self._make = resolve(factory)(**kwargs) if factory else None
        self.fn = fn

    def ready(self) -> None:
        """Built already (here, the constructor does it)."""

    def make(self, **config) -> dict:
        if self._make is None:
            raise TypeError("this Runner wraps a plain callable: it has no factory to make a configuration with")
        self.fn = None  # Let the previous configuration's buffers go first.
        self.fn, info = self._make(**config)
        return dict(info)

    def run(self, n: int = 1, keep: bool = False):
        out = None
        for _ in range(n):
            out = self.fn()
        return to_numpy(out) if keep and out is not None else None

    def timed(self, settle: int = 0) -> tuple[float, float]:
        self.run(settle)
        return machine.timed(self.fn)

    def close(self) -> None:
        self.fn = self._make = None


def _serve(conn, factory: str, kwargs: dict) -> None:
    """A :class:`Spawned` worker's loop: answers each ``(method, args, kwargs)`` with ``("ok", result)`` or
    ``("error", traceback)``; ``("close", ...)`` ends it. Ctrl-C is left to the parent, which ends its workers
    (:meth:`Spawned.close`, or the pipe's end when it dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner, failure = Runner(factory, **kwargs), None
    except BaseException:  # Reported on the first request, which the parent is waiting to make.
        runner, failure = None, traceback.format_exc()
    while True:
        try:
            method, args, kw = conn.recv()
        except EOFError:  # The parent went away.
            return
        if method == "close":
            conn.send(("ok", None))
            return
        if failure is not None:
            conn.send(("error", f"building the variant failed:\n{failure}"))
            continue
        try:
            conn.send(("ok", getattr(runner, method)(*args, **kw)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


DEFAULT_TIMEOUT_S = 1800.0  # a worker silent this long on one request is taken as hung (a full bench_model: ~13 min)


class Spawned:
    """A variant in a spawned Python process of its own (a fresh interpreter: it imports only what the factory
    does; environment, working directory, ``sys.path`` and CPU affinity are inherited). The process starts now; the
    methods block until it answers, at most ``timeout_s`` seconds per request (None: no limit); a worker that does not
    answer in time is killed and reported as a :class:`WorkerError`. Use as a context manager, or call
    :meth:`close`."""

    def __init__(self, factory: str, label: str | None = None, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 **kwargs):
        split_name(factory)  # A malformed name fails here, not in the child.
        ctx = multiprocessing.get_context("spawn")
        self.label = label or factory
        self.timeout_s = timeout_s
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, factory, kwargs), name=self.label, daemon=True)
        try:
            self._proc.start()
        except BaseException:
            self._conn.close()
            raise
        finally:
            child.close()

    def _ask(self, method: str, *args, **kw):
        try:
            self._conn.send((method, args, kw))
            if self.timeout_s is not None and not self._conn.poll(self.timeout_s):
                self._proc.kill()
                self._proc.join()
                raise WorkerError(f"variant {self.label!r}: its worker did not answer within {self.timeout_s:g} s while "
                                  f"asked to {method}; killed (a hung call? raise timeout_s for slower machines)")
            status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as e:
            self._proc.join(5)
            raise WorkerError(f"variant {self.label!r}: its worker process ended (exit code {self._proc.exitcode}; "
                              f"killed for memory?) while asked to {method}") from e
        if status == "error":
            raise WorkerError(f"variant {self.label!r}, {method}: the worker raised:\n{value}")
        return value

    def ready(self) -> None:
        """Wait until the process has built the variant (imported its framework, loaded its model)."""
        self._ask("run", 0)

    def make(self, **config) -> dict:
        return self._ask("make", **config)

    def run(self, n: int = 1, keep: bool = False):
        return self._ask("run", n, keep)

    def timed(self, settle: int = 0) -> tuple[float, float]:
        return self._ask("timed", settle)

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._ask("close")
            except WorkerError:
                pass
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def interleaved(fns: dict, repeats: int, warmup: int, settle: int = 0) -> dict:
    """Warm each of ``fns`` (name -> a no-argument callable, or a :class:`Runner` or :class:`Spawned`, which may
    live in a process of its own and times its calls there) up, then ``repeats`` rounds calling all of them,
    rotating which goes first, each call timed by :func:`eval.machine.timed`. In every round each runs ``settle``
    untimed calls right before its timed one (:data:`eval.machine.SETTLE_HELP`). Per name: ``times`` (wall s per
    round), ``cpu`` (total process CPU s), ``median``, ``cpu_per_wall``, ``cpu_per_step`` and ``spread``
    ((max - min) / median)."""
    variants = {n: Runner(fn=v) if callable(v) else v for n, v in fns.items()}
    for v in variants.values():
        v.run(warmup)
    names = list(variants)
    out = {n: {"times": [], "cpu": 0.0} for n in names}
    for i in range(repeats):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            wall, cpu = variants[n].timed(settle)
            out[n]["times"].append(wall)
            out[n]["cpu"] += cpu
    for n, r in out.items():
        r["median"] = statistics.median(r["times"])
        r["cpu_per_wall"] = r["cpu"] / sum(r["times"])
        r["cpu_per_step"] = r["cpu"] / repeats
        r["spread"] = (max(r["times"]) - min(r["times"])) / r["median"]
    return out
