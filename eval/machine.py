"""What the benchmarks print about the machine they ran on, and how they time one call."""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
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


SETTLE_HELP = (
    "untimed calls each variant makes in every round right before its timed {what} (default: 1). On the 2-core VMs "
    "of docs/, the first JAX call after torch's re-faults memory at a high kernel-time cost (a training step: 0.97 s "
    "instead of 0.53, 0.8 CPU s of it in the kernel; a bf16 forward: up to 2x), a cost that a loop of one "
    "framework's calls never pays; 0 times that first call, as sessions up to 12 did")


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


# ----------------------------------------------------------------------------------------------------------------
# The machine's achievable matmul rate: one large square GEMM, the yardstick for a model's achieved FLOP/s.

GEMM_START, GEMM_CAP, GEMM_MIN_SECONDS = 512, 8192, 0.1


def gemm_flops(n: int) -> int:
    """FLOPs of an ``n x n`` by ``n x n`` matmul: ``2 n^3`` (a multiply-add counts two, as in ``flops.bert_flops``)."""
    return 2 * n ** 3


def gemm(dtype, n: int, jit=None, seed: int = 0):
    """``run()``: one ``[n, n] @ [n, n]`` matmul in ``dtype`` (output in ``dtype``, as the model's dense layers:
    below float32 it accumulates in float32, ``preferred_element_type``), compiled ahead of time by ``jit`` (default
    ``cascade_jax.xla.jit``, the library's compile options), waited for."""
    import jax
    import jax.numpy as jnp

    if jit is None:
        from cascade_jax import xla

        jit = xla.jit
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        compiled = jit(lambda x, y: x @ y).lower(a, b).compile()
    else:
        compiled = jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(dtype)).lower(a, b).compile()
    return lambda: compiled(a, b).block_until_ready()


def size_gemm(dtype, jit=None, min_seconds: float = GEMM_MIN_SECONDS, start: int = GEMM_START,
              cap: int = GEMM_CAP) -> int:
    """The smallest ``n`` in ``start, 2 start, ...`` (at most ``cap``) whose GEMM takes at least ``min_seconds``
    (one call after a warm-up call): big enough to run at the machine's full matmul rate, small enough to be quick."""
    n = start
    while True:
        run = gemm(dtype, n, jit)
        run()
        t0 = time.perf_counter()
        run()
        if time.perf_counter() - t0 >= min_seconds or n >= cap:
            return n
        n *= 2


def torch_gemm(dtype: str, n: int, seed: int = 0):
    """``run()``: the same GEMM in PyTorch (``dtype`` "fp32" or "bf16"), for the machine's best matmul rate."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(n, n, generator=gen).to(tdtype)
    b = torch.randn(n, n, generator=gen).to(tdtype)
    return lambda: a @ b


def gemm_rate(run, n: int, repeats: int = 5) -> dict:
    """FLOP/s of ``run()``, an ``n``-GEMM (:func:`gemm` or :func:`torch_gemm`): median of ``repeats`` timed calls
    after one warm-up call. Returns ``{"n", "seconds" (median), "flops_per_s", "cpu_per_wall"}``."""
    run()
    times, cpu = [], 0.0
    for _ in range(max(1, repeats)):
        wall, c = timed(run)
        times.append(wall)
        cpu += c
    med = statistics.median(times)
    return {"n": n, "seconds": med, "flops_per_s": gemm_flops(n) / med, "cpu_per_wall": cpu / sum(times)}


def gemm_rates(dtypes: dict, sizes: dict, jits: dict, torch_too: bool, repeats: int) -> dict:
    """``{dtype name: {way: gemm_rate}}`` for ``dtypes`` ({"fp32": jnp.float32, ...}), each of ``sizes[name]``, by
    every JAX ``jits`` ({"xla.jit": xla.jit, "jax.jit": jax.jit}) and, with ``torch_too``, by PyTorch."""
    out = {}
    for name, dtype in dtypes.items():
        n = sizes[name]
        out[name] = {way: gemm_rate(gemm(dtype, n, jit), n, repeats) for way, jit in jits.items()}
        if torch_too:
            out[name]["torch"] = gemm_rate(torch_gemm(name, n), n, repeats)
    return out


def best_gemm(measured: dict) -> dict:
    """``{dtype name: (flops_per_s, "way, when")}``: the best median over ``measured`` = ``{when: gemm_rates(...)}``
    (e.g. at the start and at the end of a run): the machine's achievable matmul rate for that dtype."""
    best: dict = {}
    for when, by_dtype in measured.items():
        for d, by_way in by_dtype.items():
            for way, r in by_way.items():
                if r["flops_per_s"] > best.get(d, (0.0, ""))[0]:
                    best[d] = (r["flops_per_s"], f"{way}, {when}")
    return best


def describe_gemms(measured: dict, best: dict) -> list[str]:
    """One line per dtype: every measured rate and the best."""
    lines = []
    for d in best:
        n = next(iter(next(iter(measured.values()))[d].values()))["n"]
        lines.append(f"  {d:<4} n={n}: " + "; ".join(
            f"{when} " + ", ".join(f"{way} {r['flops_per_s'] / 1e9:.1f}" for way, r in by_dtype[d].items())
            for when, by_dtype in measured.items()) + f"  -> GEMM rate {best[d][0] / 1e9:.1f} GFLOP/s ({best[d][1]})")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# The cost of memory the process has not touched yet: what every call pays for a fresh temporary buffer.

PAGE = 4096


def fresh_memory_seconds(nbytes: int, huge_pages: bool, pause_s: float = 0.0) -> float:
    """Seconds to touch ``nbytes`` of freshly mapped anonymous memory once (one write per 4 KB page: the kernel
    finds, zeroes and maps each page), after sleeping ``pause_s`` seconds right after an equal block was unmapped.

    With ``huge_pages`` the block is ``madvise``d for transparent huge pages, as glibc's ``malloc`` does for its
    own large blocks under ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (what ``./run`` sets). A pause shows what a
    virtual machine costs when its host takes freed memory back (free page reporting): memory unmapped and mapped
    again at once is cheap, memory left free for a few seconds can cost many times more."""
    import mmap

    import numpy as np

    def touch() -> float:
        block = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            if huge_pages and hasattr(block, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
                block.madvise(mmap.MADV_HUGEPAGE)
            view = np.frombuffer(block, dtype=np.uint8)
            t0 = time.perf_counter()
            view[::PAGE] = 1
            seconds = time.perf_counter() - t0
            del view
            return seconds
        finally:
            block.close()

    touch()  # An equal block, unmapped right before the pause.
    time.sleep(pause_s)
    return touch()


def fresh_memory_rates(nbytes: int, pause_s: float) -> dict[tuple[str, str], float]:
    """Seconds per GiB of :func:`fresh_memory_seconds`, ``{(pages, when): s/GiB}`` for pages "huge" and "4 KB",
    when "at once" (no pause) and "after a pause" (``pause_s``)."""
    out = {}
    for pages, huge in (("huge", True), ("4 KB", False)):
        for when, pause in (("at once", 0.0), ("after a pause", pause_s)):
            out[(pages, when)] = fresh_memory_seconds(nbytes, huge, pause) / (nbytes / 2**30)
    return out
