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


# ----------------------------------------------------------------------------------------------------------------
# --smoke: every benchmark's tiny run (same code path, smallest settings; for scripts and tests, not measurements).

SMOKE_NOTE = ("smoke mode: smallest settings, XLA backend optimisation off, to check that the code path runs end to "
              "end; numbers are not measurements")
SMOKE_XLA_FLAG = "--xla_backend_optimization_level=0"  # Compiles about 3x faster; the programs stay the same.
REPO = pathlib.Path(__file__).resolve().parents[1]


def parse_args_with_smoke(parser, argv, smoke_defaults: dict):
    """``parser.parse_args(argv)`` after adding ``--smoke``. With ``--smoke`` the options' defaults become
    ``smoke_defaults`` (options given on the command line still win) and ``SMOKE_XLA_FLAG`` is added to
    ``XLA_FLAGS`` (inherited by subprocesses; it takes effect only if JAX has not started its backend yet)."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run of the same code path, in well under a minute (the numbers mean nothing): "
                        "smallest settings, which options given explicitly still override; writes nothing into docs/")
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke_defaults)
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {SMOKE_XLA_FLAG}".strip()
    return parser.parse_args(argv)


def inside_docs(path) -> bool:
    """Whether ``path`` lies in the repository's docs/ folder (which smoke runs must leave alone)."""
    docs = (REPO / "docs").resolve()
    p = pathlib.Path(path).resolve()
    return p == docs or docs in p.parents
