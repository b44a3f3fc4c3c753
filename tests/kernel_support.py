"""Shared by the tests of the C++ kernels (cascade_jax/kernels/): when a test of one can run here."""

import jax
import pytest

from cascade_jax import kernels


def needs_kernel(name: str) -> kernels.Kernel:
    """Kernel ``name`` built and registered in this process. Skipped off the CPU, without a C++ compiler, or, for a
    kernel that runs only on some CPUs (``kernels.UNAVAILABLE``), on a CPU it is not for; a failed build fails."""
    kernels._forget()
    if jax.default_backend() != "cpu":
        pytest.skip(f"backend {jax.default_backend()}: the fused kernel is for CPU")
    if kernels._compiler() is None:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    kernel = kernels.load(name)
    if kernel is None:
        reason = kernels.why_not(name)
        assert name in kernels.UNAVAILABLE and "failed" not in reason, reason
        pytest.skip(reason)
    return kernel
