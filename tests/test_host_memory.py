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
