"""The one training loop: periodic actions, the NaN stop, pre-emption, and Ctrl-C."""

import os
import signal

import numpy as np
import pytest

from cascade_jax.loop import Every, NonFiniteLossError, run_steps
from cascade_jax.preemption import Preemption


def counting_step(state, batch):
    return state + batch, {"loss": np.float32(batch), "examples": np.float32(1)}


def test_actions_run_at_their_steps_with_the_metrics_since_their_last_call():
    calls = []
    actions = [Every(3, lambda s, st, seen: calls.append(("log", s, [m[0] for m in seen]))),
               Every(0, lambda s, st, seen: calls.append(("end", s, st))),
               Every(1, lambda s, st, seen: calls.append(("bar", s, seen)), needs_metrics=False)]
    result = run_steps(counting_step, iter(range(100)), 0, start=0, total=7, actions=actions)
    assert (result.step, result.state, result.status) == (7, sum(range(7)), "finished")
    logs = [c for c in calls if c[0] == "log"]
    assert logs == [("log", 3, [1, 2, 3]), ("log", 6, [4, 5, 6]), ("log", 7, [7])]
    assert [c for c in calls if c[0] == "end"] == [("end", 7, 21)]
    assert [c[1] for c in calls if c[0] == "bar"] == list(range(1, 8)) and all(c[2] == [] for c in calls
                                                                               if c[0] == "bar")


def test_a_resumed_loop_starts_after_start_and_runs_nothing_when_done():
    seen = []
    result = run_steps(counting_step, iter([10, 20]), 5, start=5, total=7,
                       actions=[Every(1, lambda s, st, m: seen.append(s))])
    assert (result.step, result.state, seen) == (7, 35, [6, 7])
    assert run_steps(counting_step, iter([]), 1, start=7, total=7).status == "finished"
    with pytest.raises(ValueError, match="ran out after step 6"):
        run_steps(counting_step, iter([1]), 0, start=5, total=7)


def test_a_non_finite_loss_stops_before_any_action_sees_it():
    saved = []

    def step(state, batch):
        return state + 1, {"loss": np.array([0.5, np.nan if state + 1 == 5 else 0.1])}

    with pytest.raises(NonFiniteLossError, match="member 1 at step 5"):
        run_steps(step, iter(range(10)), 0, start=0, total=10,
                  actions=[Every(2, lambda s, st, m: saved.append(s))],
                  describe_nonfinite=lambda s, loss: f"member {int(np.flatnonzero(~np.isfinite(loss))[0])} at step {s}")
    assert saved == [2, 4]  # The NaN of step 5 was found at step 6, before the action of step 6.


def test_preemption_runs_the_on_stop_actions_and_returns_preempted():
    p = Preemption()
    saved = []

    def step(state, batch):
        if state == 2:
            p.request()
        return state + 1, {"loss": np.float32(0)}

    result = run_steps(step, iter(range(10)), 0, start=0, total=10, preemption=p,
                       actions=[Every(100, lambda s, st, m: saved.append(s), on_stop=True)])
    assert (result.status, result.step, saved) == ("preempted", 3, [3])


def test_sigint_is_a_preemption_and_a_second_one_interrupts():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job (nohup, &)
    p = Preemption()
    with p.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert p.requested and p.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
