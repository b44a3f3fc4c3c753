"""The XLA compile options the library applies to its own jitted functions, chosen per backend.

  compiler_options(backend=None) -> dict      # {} off the CPU, or where an option is unknown to this jaxlib
  jit(fn, **jit_kwargs)                       # jax.jit with those options

The library's inference functions (a cascade stage, evaluation and prediction) use them; training steps keep
XLA's defaults. On CPU they turn off XLA's experimental YNNPACK fusions (``xla_cpu_experimental_ynn_fusion_type=""``):
measured in docs/bench_model.md, the BERT forward pass is 1.1-1.7x faster with them off on an AMD EPYC (AVX-512),
while the training step is about 7% slower (docs/bench_train.md), hence forward only. GPU and TPU get XLA's
defaults. ``CASCADE_JAX_XLA_DEFAULTS=1`` in the environment keeps XLA's defaults everywhere (to compare, or if an
XLA release changes the picture).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax

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


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options for ``backend`` (default: JAX's default backend)."""
    if os.environ.get(ENV_DEFAULTS, "").strip() in ("1", "true", "yes"):
        return {}
    if (backend or jax.default_backend()) != "cpu":
        return {}
    return {k: v for k, v in CPU_OPTIONS.items() if _accepted(k, v)}


class _Jitted:
    """``jax.jit`` with :func:`compiler_options`, built on first use (so importing the library does not
    initialise a backend: multi-process runs must call ``jax.distributed.initialize`` first)."""

    def __init__(self, fn: Callable, kwargs: dict):
        self._fn, self._kwargs = fn, kwargs
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def jitted(self) -> Callable:
        return jax.jit(self._fn, compiler_options=compiler_options() or None, **self._kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with :func:`compiler_options`."""
    return _Jitted(fn, kwargs)
