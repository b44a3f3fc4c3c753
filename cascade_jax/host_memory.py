"""glibc malloc settings that keep XLA:CPU's large per-call buffers in the process: opt-in, with
``CASCADE_JAX_MALLOC=tuned`` in the environment (``import cascade_jax`` then applies them), because they raise peak
memory.

    configure() -> str        # what was done: "tuned", "default (CASCADE_JAX_MALLOC unset)", "not glibc (...)"
    huge_pages() -> str       # whether this process's malloc asks for transparent huge pages (set by ./run)
    release() -> bool          # give the heap's free pages back to the system (malloc_trim); between stages
    SETTINGS                   # (mallopt parameter, name, value)

Why: an XLA:CPU executable gets its temporary buffer (about 0.8 GB for a minilm-l6 training step at batch 32 x 64
tokens) from malloc and frees it when the call ends. glibc serves a block that large with a fresh ``mmap`` (or from
a thread's arena that it trims back), so every call faults its whole working set in again: about 200,000 page
faults and 15% of the CPU time of that training step (docs/design.md, "Host memory"). With one arena, no ``mmap``
for large blocks and freed memory kept (trimmed only above 2 GiB, down to 1 GiB), the memory is reused.
The price: freed blocks inside the heap are not given back, so peak memory grows (the quick pipeline: 7.2 GB of
resident memory with glibc's defaults, 15.5 GB with these settings); hence not the default.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

ENV = "CASCADE_JAX_MALLOC"
# mallopt(3) parameters (malloc.h): M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_MAX -4, M_ARENA_MAX -8.
SETTINGS = (
    (-8, "M_ARENA_MAX", 1),                 # every thread allocates from the main (brk) heap, which is reused
    (-4, "M_MMAP_MAX", 0),                  # large blocks come from that heap too, not from a fresh mmap each
    (-1, "M_TRIM_THRESHOLD", 2**31 - 1),    # the heap's free top is given back only above 2 GiB ...
    (-2, "M_TOP_PAD", 2**30),               # ... and then down to 1 GiB
)


def _is_glibc() -> bool:
    """Whether this process runs on Linux with glibc (the only C library whose malloc these functions know)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@functools.lru_cache(maxsize=None)
def configure() -> str:
    """Apply :data:`SETTINGS` with ``mallopt`` once per process (glibc only); returns what was done.

    Settings made after other threads already have their own arenas still help the main heap, but not those
    threads: hence on import, before JAX starts its thread pools.
    """
    value = os.environ.get(ENV, "").strip()
    if value.lower() not in ("tuned", "1", "on", "yes"):
        return f"default ({ENV}={value})" if value else f"default ({ENV} unset)"
    if not _is_glibc():
        return f"not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'}): malloc left as it is"
    try:
        libc = ctypes.CDLL("libc.so.6")
        failed = [name for param, name, value in SETTINGS if libc.mallopt(param, value) != 1]
    except (OSError, AttributeError) as e:
        return f"default (mallopt unavailable: {e})"
    return "tuned" if not failed else f"tuned except {', '.join(failed)}"


def huge_pages() -> str:
    """``"glibc.malloc.hugetlb=V"`` as this process was started with it (``./run`` sets ``V=1``: glibc >= 2.35 then
    backs large malloc blocks with transparent huge pages, so XLA:CPU's per-call buffers fault ~200x less), or
    ``"off"``. glibc reads it at start-up only, so a process cannot turn it on for itself."""
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        if item.startswith("glibc.malloc.hugetlb="):
            return item
    return "off"


def release() -> bool:
    """Give the free memory of the heap back to the system (glibc's ``malloc_trim(0)``, which also returns whole free
    pages inside the heap); True when some was. With the tuned settings freed blocks otherwise stay resident, so a
    long job calls this between its parts (the pipeline does after each stage): each part then faults its own
    working set in once, and the peak is a part's, not the sum of the fragments every part left. A no-op (False)
    off glibc."""
    if not _is_glibc():
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
