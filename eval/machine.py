"""What the benchmarks print about the machine they ran on, and how they time one call."""

from __future__ import annotations

import os
import pathlib
import platform
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def schedulable_cores() -> int:
    """Cores this process may run on (the affinity mask), which can be fewer than the machine has online."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe() -> str:
    """One line: CPU model, schedulable / online cores, Python version."""
    return (f"{cpu_model()}; {schedulable_cores()} schedulable cores (of {os.cpu_count()} online); "
            f"python {platform.python_version()}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ("n/a" where the OS has none)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def info() -> dict:
    """The machine as a JSON-able dict, for benchmarks that write their results to a file."""
    return {"cpu": cpu_model(), "nproc": schedulable_cores(), "cpus_online": os.cpu_count(),
            "platform": platform.platform(), "load": load_average()}


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0
