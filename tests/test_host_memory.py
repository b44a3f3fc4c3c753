"""host_memory: with CASCADE_JAX_MALLOC=tuned a large block freed and allocated again is reused (no page faults); by
default glibc's settings are left alone, and such a block is faulted in again on every allocation."""

import os
import platform
import subprocess
import sys

import pytest

from cascade_jax import host_memory

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's")

# Allocate, touch and free a 256 MiB block (through libc itself, as XLA:CPU does) 4 times after a first time; print
# the minor page faults of those 4 rounds and what configure() said.
_PROBE = """
import ctypes, resource
import cascade_jax
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
def round_():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, cascade_jax._host_memory.configure())
"""


def _faults(env_value):
    env = {k: v for k, v in os.environ.items() if k not in (host_memory.ENV, "GLIBC_TUNABLES", "MALLOC_MMAP_MAX_",
                                                            "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")}
    if env_value is not None:
        env[host_memory.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    faults, status = out.stdout.split(maxsplit=1)
    return int(faults), status.strip()


@glibc_only
def test_with_the_opt_in_a_freed_large_block_is_reused_and_by_default_glibc_is_left_alone():
    pages = 4 * (256 << 20) // 4096
    tuned, status = _faults("tuned")
    assert status == "tuned"
    assert tuned < 0.01 * pages, f"{tuned} page faults in 4 rounds of 256 MiB: the freed block was not reused"
    default, status = _faults(None)
    assert status == "default (CASCADE_JAX_MALLOC unset)"
    # glibc's defaults: each round mmaps a fresh block, faulted in per 4 KiB page (or per 2 MiB huge page where
    # transparent huge pages are on "always": 512 faults for 4 rounds).
    assert default >= 4 * 100 and default > 10 * max(tuned, 1), (default, tuned)


def test_configure_leaves_other_c_libraries_alone(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "tuned")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert host_memory.configure.__wrapped__().startswith("not glibc")
    monkeypatch.setenv(host_memory.ENV, "off")
    assert host_memory.configure.__wrapped__() == "default (CASCADE_JAX_MALLOC=off)"


# With the tuned settings, a freed 256 MiB block below a small live one stays resident until release() gives its
# pages back; print the resident memory (MiB) after the free and after release(), and what release() returned.
_RELEASE_PROBE = """
import ctypes
import cascade_jax
from cascade_jax import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
big = libc.malloc(n)
ctypes.memset(big, 1, n)
small = libc.malloc(4096)  # Above the big block: the heap's top cannot simply shrink past it.
libc.free(big)
kept = host_memory.resident_bytes() >> 20
released = host_memory.release()
print(kept, host_memory.resident_bytes() >> 20, released)
"""


@glibc_only
def test_release_gives_a_freed_block_back_under_the_tuned_settings():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env[host_memory.ENV] = "tuned"
    out = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    kept, after, released = out.stdout.split()
    assert released == "True"
    assert int(kept) - int(after) >= 200, f"resident {kept} MiB after the free, {after} MiB after release()"


def test_release_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert host_memory.release() is False


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_malloc_env(env: dict) -> str:
    """GLIBC_TUNABLES after the ``malloc_env`` function of ``./run`` (taken out of the script and run alone)."""
    script = ('eval "$(sed -n \'/^malloc_env() {/,/^}/p\' run)"; malloc_env; printf %s "${GLIBC_TUNABLES-<unset>}"')
    out = subprocess.run(["bash", "-c", script], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_run_script_asks_glibc_for_huge_pages_and_keeps_what_the_user_set():
    assert _run_malloc_env({}) == "glibc.malloc.hugetlb=1"
    assert _run_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) == \
        "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"
    assert _run_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == "glibc.malloc.hugetlb=0"
    assert _run_malloc_env({"CASCADE_JAX_HUGEPAGES": "0"}) == "<unset>"
    assert _run_malloc_env({"CASCADE_JAX_HUGEPAGES": "0", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == \
        "glibc.malloc.arena_max=2"


def test_huge_pages_reports_the_tunable_the_process_started_with(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1")
    assert host_memory.huge_pages() == "glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    assert host_memory.huge_pages() == "off"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert host_memory.huge_pages() == "off"


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else None


# Touch a fresh 256 MiB block from libc's malloc (as XLA:CPU's buffers are) and print its minor page faults.
_TOUCH = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(n), 1, n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc_only
@pytest.mark.skipif(tuple(int(x) for x in platform.libc_ver()[1].split(".")[:2]) < (2, 35),
                    reason="glibc.malloc.hugetlb needs glibc 2.35")
@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"), reason="transparent huge pages are off on this kernel")
def test_with_the_run_scripts_tunable_a_large_block_faults_in_huge_pages():
    """What ./run's GLIBC_TUNABLES does: a 256 MiB block is faulted in 2 MiB pages (128 faults and some change)
    instead of 65,536 4 KiB ones. Under THP "always" both are huge; only the tunable's side is asserted then."""
    def faults(tunables):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        out = subprocess.run([sys.executable, "-c", _TOUCH], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    pages = (256 << 20) // 4096
    huge = faults(_run_malloc_env({}))
    assert huge < 0.05 * pages, f"{huge} faults for {pages} pages: the block was not backed by huge pages"
    if _thp_mode() == "madvise":
        assert faults(None) > 0.5 * pages
