"""The XLA compile options the library applies to its own jitted functions, chosen per backend.

  compiler_options(backend=None, low_precision=False) -> dict   # {} off the CPU, for bf16, or options unknown here
  jit(fn, **jit_kwargs)                       # jax.jit with those options, chosen per call by the arguments' dtypes
  enable_compilation_cache() -> str           # JAX's on-disk cache of compiled programs, one folder per machine

The library's inference functions (a cascade stage, evaluation and prediction) use them; training steps keep
XLA's defaults. On CPU they turn off XLA's experimental YNNPACK fusions (``xla_cpu_experimental_ynn_fusion_type=""``):
measured in docs/bench_model.md, the BERT forward pass is 1.1-1.7x faster with them off on an AMD EPYC (AVX-512),
while the training step is about 7% slower (docs/bench_train.md), hence forward only. A call whose arguments hold
bfloat16 or float16 arrays (a bf16 model's parameters) keeps XLA's defaults instead: they send the model's bf16 dots
(float32 accumulation) to YNNPACK's bf16 kernels, 1.4x faster than with the fusions off (docs/bench_model.md). GPU
and TPU get XLA's defaults. ``CASCADE_JAX_XLA_DEFAULTS=1`` in the environment keeps XLA's defaults everywhere (to compare, or if an
XLA release changes the picture).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import platform
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
ENV_DEFAULTS = "CASCADE_JAX_XLA_DEFAULTS"


@functools.lru_cache(maxsize=None)
def _accepted(option: str, value: str) -> bool:
    """Whether this jaxlib's XLA knows ``option`` (an unknown one fails compilation)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(1.0).compile()
        return True
    except Exception:  # noqa: BLE001 - any failure means: do not use it.
        return False


LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def compiler_options(backend: str | None = None, low_precision: bool = False) -> dict[str, Any]:
    """The options for ``backend`` (default: JAX's default backend); ``low_precision``: for a bf16/f16 program."""
    if os.environ.get(ENV_DEFAULTS, "").strip() in ("1", "true", "yes") or low_precision:
        return {}
    if (backend or jax.default_backend()) != "cpu":
        return {}
    return {k: v for k, v in CPU_OPTIONS.items() if _accepted(k, v)}


def is_low_precision(tree) -> bool:
    """Whether any array leaf of ``tree`` is bfloat16 or float16."""
    return any(isinstance(leaf, (jax.Array, np.ndarray)) and leaf.dtype in LOW_PRECISION
               for leaf in jax.tree_util.tree_leaves(tree))


class _Jitted:
    """``jax.jit`` with :func:`compiler_options`, built on first use (so importing the library does not
    initialise a backend: multi-process runs must call ``jax.distributed.initialize`` first); one jitted function
    for float32 calls and one for low-precision calls."""

    def __init__(self, fn: Callable, kwargs: dict):
        self._fn, self._kwargs = fn, kwargs
        self._jitted: dict[bool, Callable] = {}
        functools.update_wrapper(self, fn)

    def jitted_for(self, low_precision: bool) -> Callable:
        if low_precision not in self._jitted:
            options = compiler_options(low_precision=low_precision) or None
            self._jitted[low_precision] = jax.jit(self._fn, compiler_options=options, **self._kwargs)
        return self._jitted[low_precision]

    @property
    def jitted(self) -> Callable:
        """The float32 variant."""
        return self.jitted_for(False)

    def __call__(self, *args, **kwargs):
        return self.jitted_for(is_low_precision((args, kwargs)))(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted_for(is_low_precision((args, kwargs))).lower(*args, **kwargs)


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with :func:`compiler_options` (float32 or low-precision, by the arguments)."""
    return _Jitted(fn, kwargs)


CACHE_ENV = "CASCADE_JAX_COMPILATION_CACHE"
CACHE_MAX_BYTES = 4 << 30  # Least recently used programs are deleted beyond this (needs the filelock package).


ARM_CPUINFO = ("CPU implementer", "CPU architecture", "CPU part", "Features")


def _machine_key() -> str:
    """A short hash of what a compiled CPU program depends on: jax and jaxlib versions, the architecture and the
    CPU's model and feature flags (an executable compiled for one CPU's features may not run on another; on ARM the
    implementer, part and features)."""
    import jaxlib

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = "|".join(next((ln for ln in lines if ln.startswith(k)), "") for k in ("model name", "flags"))
        # ARM has neither line; its CPU is told by these (x86 has none of them, so its key is as before).
        arm = [next((ln for ln in lines if ln.startswith(k)), "") for k in ARM_CPUINFO]
        if any(arm):
            cpu += "|" + "|".join(arm)
    except OSError:
        cpu = platform.processor()
    text = f"{jax.__version__}|{getattr(jaxlib, '__version__', '')}|{platform.machine()}|{cpu}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache, so that a program compiled once is loaded, not compiled again:
    by a later command, and within one process where the same step is built anew (a baseline trained in each seed
    builds its step afresh; JAX's in-memory cache is per function object). Returns what is in effect, in words.

    The folder is ``directory`` or ``<cascade_jax.assets.cache_dir()>/xla/<machine key>`` (one per jax version and
    CPU, see :func:`_machine_key`), at most :data:`CACHE_MAX_BYTES` (least recently used programs go first; unbounded
    without the ``filelock`` package, which transformers brings). A cache folder the user set (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config``) is kept; ``CASCADE_JAX_COMPILATION_CACHE=0`` leaves the cache off. Programs that compile in
    under a second are not stored (JAX's default threshold). Call it before the first compilation: the command-line
    entry points do (``train.cli.run_cli``).
    """
    value = os.environ.get(CACHE_ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return f"off ({CACHE_ENV}={value})"
    if jax.config.jax_compilation_cache_dir:
        return f"{jax.config.jax_compilation_cache_dir} (set by the user)"
    if directory is None:
        from cascade_jax import assets

        directory = assets.cache_dir() / "xla" / _machine_key()
    path = pathlib.Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"off (cannot create {path}: {e})"
    jax.config.update("jax_compilation_cache_dir", str(path))
    if jax.config.jax_compilation_cache_max_size == -1:
        try:
            import filelock  # noqa: F401 - JAX's eviction locks the folder with it.
        except ImportError:
            return f"{path} (unbounded: no filelock package)"
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return str(path)
