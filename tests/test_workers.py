"""eval/workers.py: a benchmark variant behaves the same in this process (Runner) and in a spawned one (Spawned),
times its calls where they run, and reports failures with their cause."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from eval import workers

HERE = __name__  # How the child process imports this module's factories (pytest's import name).


def busy(burn_s: float = 0.02, fail_at_build: bool = False):
    """A factory: ``make(scale)`` returns a call that burns ``burn_s`` of CPU and returns [pid, scale, calls]."""
    if fail_at_build:
        raise RuntimeError("no model here (raised on purpose)")
    calls = [0]

    def make(scale, fail: bool = False, exit_code: int | None = None, hang_s: float = 0.0):
        if fail:
            raise ValueError(f"bad configuration scale={scale}")

        def call():
            if exit_code is not None:
                os._exit(exit_code)
            time.sleep(hang_s)
            calls[0] += 1
            end = time.process_time() + burn_s
            while time.process_time() < end:
                pass
            return np.array([os.getpid(), scale, calls[0]], np.float64)

        return call, {"scale": scale}

    return make


@pytest.fixture(params=["Runner", "Spawned"])
def variant(request):
    v = getattr(workers, request.param)(f"{HERE}:busy", label="busy", burn_s=0.02)
    yield request.param, v
    v.close()


def test_a_variant_makes_runs_and_times_its_call_where_it_lives(variant):
    kind, v = variant
    assert v.make(scale=3) == {"scale": 3}
    out = v.run(2, keep=True)
    assert out.dtype == np.float32 and out[1] == 3 and out[2] == 2  # The last of two calls.
    assert (out[0] == os.getpid()) == (kind == "Runner")  # Spawned: another process made the call.
    assert v.run(1) is None  # keep=False returns nothing (nothing pickled back).

    cpu0 = time.thread_time()  # This thread only: other threads of the test process may be busy.
    wall, cpu = v.timed(settle=2)
    parent_cpu = time.thread_time() - cpu0
    assert cpu >= 0.015 and wall >= cpu / 4  # One timed call of 20 ms CPU (on at most a few cores).
    assert v.run(1, keep=True)[2] == 7  # Calls 1-3 above, then settle 2 + 1 timed: this is the 7th.
    if kind == "Spawned":  # Timed in the child: the parent only waited.
        assert parent_cpu < 0.01

    v.make(scale=5)  # A new configuration replaces the call; the factory's state stays.
    assert v.run(1, keep=True)[1:].tolist() == [5, 8]


def test_interleaved_times_spawned_variants_in_their_processes():
    with workers.Spawned(f"{HERE}:busy", burn_s=0.01) as a, workers.Spawned(f"{HERE}:busy", burn_s=0.03) as b:
        a.make(scale=1)
        b.make(scale=2)
        out = workers.interleaved({"a": a, "b": b}, repeats=3, warmup=1, settle=1)
        assert [len(r["times"]) for r in out.values()] == [3, 3]
        assert out["b"]["cpu_per_step"] > out["a"]["cpu_per_step"] + 0.01  # Each one's own CPU time.
        assert a.run(1, keep=True)[2] == 1 + 3 * 2 + 1  # Warm-up, 3 rounds of settle + timed, this call.


def test_a_failing_factory_or_configuration_is_reported_with_its_cause():
    with workers.Spawned(f"{HERE}:busy", label="broken", fail_at_build=True) as v:
        with pytest.raises(workers.WorkerError, match="(?s)broken.*no model here"):
            v.make(scale=1)
    with pytest.raises(RuntimeError, match="no model here"):
        workers.Runner(f"{HERE}:busy", fail_at_build=True)

    with workers.Spawned(f"{HERE}:busy") as v:
        with pytest.raises(workers.WorkerError, match="bad configuration scale=9"):
            v.make(scale=9, fail=True)
        v.make(scale=1)  # The worker survives a failed request.
        assert v.run(1, keep=True)[1] == 1


def test_ready_waits_for_the_variant_to_be_built():
    with workers.Spawned(f"{HERE}:busy", label="broken", fail_at_build=True) as v:
        with pytest.raises(workers.WorkerError, match="(?s)broken.*no model here"):
            v.ready()
    with workers.Spawned(f"{HERE}:busy") as v:
        v.ready()
        v.make(scale=2)
        assert v.run(1, keep=True)[1] == 2
    workers.Runner(f"{HERE}:busy").ready()


def test_a_worker_that_dies_is_reported_with_its_exit_code():
    with workers.Spawned(f"{HERE}:busy", label="doomed") as v:
        v.make(scale=1, exit_code=7)
        with pytest.raises(workers.WorkerError, match=r"(?s)doomed.*exit code 7"):
            v.run(1)


def test_a_worker_that_does_not_answer_in_time_is_killed_and_reported():
    with workers.Spawned(f"{HERE}:busy", label="stuck", timeout_s=20) as v:
        v.make(scale=1, hang_s=600)  # make itself answers; the call then hangs
        v.timeout_s = 1
        started = time.perf_counter()
        with pytest.raises(workers.WorkerError, match=r"stuck.*did not answer within 1 s while asked to run"):
            v.run(1)
        assert time.perf_counter() - started < 15 and not v._proc.is_alive()


@pytest.mark.parametrize("factory", ["no_colon", ":busy", f"{HERE}:"])
def test_a_malformed_factory_name_is_rejected_before_spawning(factory):
    with pytest.raises(ValueError, match="module:function"):
        workers.Spawned(factory)
    with pytest.raises(ValueError, match="module:function"):
        workers.Runner(factory)


def test_a_runner_around_a_plain_callable_has_no_factory():
    r = workers.Runner(fn=lambda: 1.5)
    assert r.run(3, keep=True) == np.float32(1.5)
    with pytest.raises(TypeError, match="plain callable"):
        r.make(scale=1)
