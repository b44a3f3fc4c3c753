"""The project's C++ kernels for XLA:CPU: compiled on first use with the machine's C++ compiler, cached, registered.

  load(name) -> Kernel | None      # kernels/<name>.cc built, its FFI targets registered for CPU; or None
                                   # (no compiler, a failed build: warned; a CPU it is not for: quietly)
  why_not(name) -> str | None      # why load(name) returned None, in words
  status(name, what) -> str        # in words: "<what> (<library>)" where it runs, else "XLA ops (<why not>)"
  IMPLEMENTATIONS                  # "auto" (the kernel where it applies) or "xla" (XLA's ops everywhere)
  ENV_SWITCH                       # CASCADE_JAX_FUSED_KERNELS=0: never build or use them

The shared library lands in ``<cascade_jax.assets.cache_dir()>/kernels/<key>/`` where the key hashes the source, the
compiler and its flags, jax/jaxlib and the CPU (``-march=native``: a library built for one CPU may not run on
another). A missing compiler or a failed build is reported once (a warning naming the cause) and the callers fall
back to XLA's own ops. ``$CXX`` picks the compiler (default: the first of c++, g++, clang++ on ``PATH``). The
switch and the outcome are read once per process, when a function using a kernel is first traced: set the switch
before.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import warnings

ENV_SWITCH = "CASCADE_JAX_FUSED_KERNELS"
IMPLEMENTATIONS = ("auto", "xla")  # auto: a kernel on CPU where it applies; xla: XLA's ops everywhere
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
_SOURCES = pathlib.Path(__file__).parent
# Each kernel's FFI targets and their handler symbols in the library.
TARGETS = {"attention": {"cascade_attention": "CascadeAttention",
                         "cascade_attention_dropout": "CascadeAttentionDropout",
                         "cascade_attention_backward": "CascadeAttentionBackward"},
           "dense": {"cascade_dense": "CascadeDense"}}
# Kernels that run only on some CPUs: a function in the library giving None where it runs, else why not (then
# load() gives None without a warning: nothing failed).
UNAVAILABLE = {"dense": "CascadeDenseUnavailable"}


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # the source's stem
    path: pathlib.Path  # the shared library


_lock = threading.Lock()
_loaded: dict[str, Kernel | None] = {}
_reasons: dict[str, str] = {}
_registered: set[str] = set()  # FFI targets registered in this process (XLA keeps the first handler)


def disabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "false", "no")


def _compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((found for c in ("c++", "g++", "clang++") if (found := shutil.which(c))), None)


def _build(source: pathlib.Path, compiler: str) -> pathlib.Path:
    """Compile ``source`` into the cache (once per key); returns the library's path. Raises RuntimeError."""
    import jax
    import jaxlib

    from cascade_jax import assets, xla

    include = jax.ffi.include_dir()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot run the C++ compiler {compiler}: {e}") from e
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))  # what the source may include
    text = (source.read_bytes() + headers
            + "|".join([compiler, version, *FLAGS, jaxlib.__version__, xla._machine_key()]).encode())
    key = hashlib.sha256(text).hexdigest()[:16]
    target = assets.cache_dir() / "kernels" / key / (source.stem + ".so")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: a concurrent build or reader never sees half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = pathlib.Path(tmp) / target.name
        cmd = [compiler, *FLAGS, "-isystem", include, str(source), "-o", str(out)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"{' '.join(cmd)} failed: {e}") from e
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}:\n{tail}")
        os.replace(out, target)
    return target


def load(name: str) -> Kernel | None:
    """Kernel ``kernels/<name>.cc``, built if needed, its handlers registered with JAX as the CPU FFI targets of
    :data:`TARGETS` ``[name]``. None when turned off, without a compiler or when the build fails (warned once;
    :func:`why_not` says why)."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        kernel = None
        if disabled():
            _reasons[name] = f"turned off ({ENV_SWITCH}={os.environ[ENV_SWITCH]})"
        elif (compiler := _compiler()) is None:
            _reasons[name] = (f"the C++ compiler CXX={os.environ['CXX']} was not found" if os.environ.get("CXX")
                              else "no C++ compiler found (set CXX, or install g++ or clang++)")
        else:
            try:
                import jax

                path = _build(_SOURCES / f"{name}.cc", compiler)
                library = ctypes.cdll.LoadLibrary(str(path))
                if name in UNAVAILABLE:
                    check = getattr(library, UNAVAILABLE[name])
                    check.restype = ctypes.c_char_p
                    if (unavailable := check()) is not None:
                        _reasons[name] = unavailable.decode()
                        _loaded[name] = None
                        return None
                for target, symbol in TARGETS[name].items():
                    handler = getattr(library, symbol)  # AttributeError if the library lacks it
                    if target not in _registered:  # XLA's registry is per process and keeps the first handler
                        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
                        _registered.add(target)
                kernel = Kernel(name, path)
            except (RuntimeError, OSError, AttributeError) as e:
                _reasons[name] = f"building kernels/{name}.cc failed: {e}"
        if kernel is None and not disabled():
            warnings.warn(f"cascade_jax: {_reasons[name]}; using XLA's ops instead, slower on CPU "
                          f"(docs/bench_model.md). {ENV_SWITCH}=0 turns the kernels off without this warning.",
                          RuntimeWarning, stacklevel=3)
        _loaded[name] = kernel
        return kernel


def why_not(name: str) -> str | None:
    """Why :func:`load` gave None for ``name`` (None if it was not tried or succeeded)."""
    return _reasons.get(name)


def status(name: str, what: str) -> str:
    """In words: ``"<what> (<library path>)"`` when kernel ``name`` runs in this process (built if needed), else
    ``"XLA ops (<why not>)"``, a backend other than CPU included."""
    import jax

    if jax.default_backend() != "cpu":
        return f"XLA ops (backend {jax.default_backend()}; the fused kernels are for CPU)"
    kernel = load(name)
    return f"XLA ops ({why_not(name)})" if kernel is None else f"{what} ({kernel.path})"


def _forget() -> None:
    """Tests only: let the next :func:`load` decide again (a registered FFI target stays registered, with the
    handler of the library loaded first)."""
    with _lock:
        _loaded.clear()
        _reasons.clear()
