"""What produced a result: package versions, the CPU and the repository's commit, for results files and benchmark pages.

    provenance() -> {"python": "3.11.7", "packages": {"jax": "0.10.2", ...}, "cpu": "AMD EPYC ...",
                     "git_commit": "0c41869...-dirty" | None, "malloc": "tuned"}

Versions come from the installed distributions' metadata (nothing is imported), so this is cheap and works before
JAX is initialised.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
import subprocess

from cascade_jax import host_memory

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "numpy")
_REPO = pathlib.Path(__file__).resolve().parent.parent


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``; ``platform.processor()`` elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit(repo: str | pathlib.Path = _REPO) -> str | None:
    """``git rev-parse HEAD`` of ``repo`` (default: the checkout holding this package), with ``-dirty`` appended
    when tracked files have uncommitted changes; None when ``repo`` is not the top of a git checkout (e.g. the
    package was installed into a site-packages folder, even one inside some checkout) or git is unavailable."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or pathlib.Path(top).resolve() != pathlib.Path(repo).resolve():
        return None
    head = git("rev-parse", "HEAD")
    if not head:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if status else head


def provenance() -> dict:
    """The versions of Python and of :data:`PACKAGES` (None when not installed), the CPU model and the git commit
    of the repository (``<sha>`` or ``<sha>-dirty``; None outside a git checkout) and the malloc settings
    (:func:`host_memory.configure`, :func:`host_memory.huge_pages`), as a JSON-able dict."""
    return {
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "cpu": cpu_model(),
        "git_commit": git_commit(),
        "malloc": f"{host_memory.configure()}; huge pages {host_memory.huge_pages()}",
    }
