"""The one training loop: run a step function over batches, with periodic actions, pre-emption and a NaN stop.

  run_steps(step_fn, batches, state, start=s, total=t, actions=[Every(...), ...], preemption=p) -> LoopResult

``fit`` (members), difficulty labelling and the early-exit baselines all train through it; what differs between
them (evaluation, checkpoints, logging, progress) is a list of :class:`Every` actions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

from cascade_jax.preemption import Preemption


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step (and what the caller knows)."""


# Host metrics of one step: (step number after the step, {name: numpy array}).
StepMetrics = tuple[int, dict[str, np.ndarray]]


@dataclasses.dataclass
class Every:
    """A periodic action: ``fn(step, state, metrics)`` every ``steps`` steps, after the last step (``at_last``) and,
    with ``on_stop``, at the step where pre-emption stops the loop.

    ``metrics`` is the list of :data:`StepMetrics` of every step since this action last ran, fetched to the host and
    checked to be finite first (so an action never sees, or saves, a non-finite state). ``needs_metrics=False``
    skips that (the action gets ``[]`` and the device is not waited for: a progress bar). ``steps=0``: only at the
    last step (and on stop).
    """

    steps: int
    fn: Callable[[int, Any, list[StepMetrics]], None]
    at_last: bool = True
    on_stop: bool = False
    needs_metrics: bool = True
    _seen: list = dataclasses.field(default_factory=list, repr=False)

    def due(self, step: int, total: int, stopping: bool) -> bool:
        return ((self.steps > 0 and step % self.steps == 0) or (self.at_last and step == total)
                or (self.on_stop and stopping))


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int
    status: str  # "finished" or "preempted"


def _host(metrics: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def _check_finite(history: Sequence[StepMetrics], describe: Callable[[int, np.ndarray], str] | None) -> None:
    for step, m in history:
        loss = np.atleast_1d(np.asarray(m["loss"], np.float64))
        if not np.isfinite(loss).all():
            if describe is not None:
                raise NonFiniteLossError(describe(step, loss))
            raise NonFiniteLossError(f"the training loss became {loss[~np.isfinite(loss)][0]} at step {step}")


def run_steps(
    step_fn: Callable[[Any, Any], tuple[Any, dict]],
    batches: Iterable,
    state: Any,
    *,
    start: int,
    total: int,
    actions: Sequence[Every] = (),
    preemption: Preemption | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    describe_nonfinite: Callable[[int, np.ndarray], str] | None = None,
    metrics_of: Callable[[dict], dict] = _host,
) -> LoopResult:
    """Run steps ``start + 1 .. total`` (``state, metrics = step_fn(state, batch)``), one batch each from
    ``batches`` (the batch of step ``start + 1`` first).

    After each step: ``on_step(step, host metrics)`` when given (tests interrupt runs with it), then the actions
    that are due, in order. Metrics stay on the device until an action needs them; they are then checked: a
    non-finite ``loss`` (any element, for stacked members) raises :class:`NonFiniteLossError` with
    ``describe_nonfinite(step, loss)`` as its message. When ``preemption`` agrees to stop, the ``on_stop`` actions run
    (e.g. a checkpoint) and the loop returns with status ``"preempted"``. ``metrics_of`` turns a step's metrics into
    host arrays (e.g. unreplicating them).
    """
    if start >= total:
        return LoopResult(state, start, "finished")
    pending: list[tuple[int, dict]] = []
    keep = any(a.needs_metrics for a in actions)  # Else nothing ever reads the metrics: do not hold them.
    for a in actions:
        a._seen = []
    step, status = start, "finished"
    iterator = iter(batches)
    while step < total:
        try:
            batch = next(iterator)
        except StopIteration:
            raise ValueError(f"the batches ran out after step {step}; {total} steps were planned") from None
        state, metrics = step_fn(state, batch)
        step += 1
        if keep:
            pending.append((step, metrics))
        if on_step is not None:
            on_step(step, metrics_of(metrics))
        stopping = preemption is not None and preemption.agreed()
        due = [a for a in actions if a.due(step, total, stopping)]
        if any(a.needs_metrics for a in due):
            history = [(s, metrics_of(m)) for s, m in pending]
            pending = []
            _check_finite(history, describe_nonfinite)
            for a in actions:
                if a.needs_metrics:
                    a._seen.extend(history)
        for a in due:
            seen, a._seen = a._seen, []
            a.fn(step, state, seen)
        if stopping:
            status = "preempted" if step < total else "finished"
            break
    return LoopResult(state, step, status)
