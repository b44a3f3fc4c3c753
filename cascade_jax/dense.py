"""Dense layers for low-precision inference: a fused bfloat16 C++ kernel on CPUs with AVX512-BF16, XLA's ops elsewhere.

  dense(x, w, b, activation=None, implementation="auto") -> y   # x [..., K], w [K, N], b [N]; y [..., N], x's dtype
  xla_dense(x, w, b, activation=None)   # the same with XLA's ops: dot (float32 accumulation), bias, cast, activation
  gelu_exact(x)                         # 0.5 x (1 + erf(x / sqrt 2)), as PyTorch computes GELU
  status() -> str                       # whether dense() uses the kernel here, in words

``y = act(x @ w + b)`` with ``act`` None (identity) or "gelu". For bfloat16 ``x`` and ``w`` on a CPU with AVX512-BF16
(and without AMX, whose tiles XLA's own bf16 route can reach), :func:`dense` calls ``kernels/dense.cc``: products
summed in float32, bias and GELU in float32 on the sums while they are in registers, one rounding to bf16. XLA:CPU
writes the float32 product, reads it back to add the bias and round, and computes the GELU in a pass of its own
(docs/bench_model.md). Chosen at lowering time (``jax.lax.platform_dependent``), so a GPU/TPU program never contains
it. Under differentiation (bf16 training) the kernel gives the pre-activation, kept for the backward pass, and
XLA's ops apply the GELU; gradients (``jax.custom_vjp``) come from XLA's ops. Forward-mode differentiation
(``jax.jvp``) of the kernel's path is not defined (as for the attention kernel): use ``implementation="xla"``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import kernels

ACTIVATIONS = (None, "gelu")  # what the kernel fuses
IMPLEMENTATIONS = kernels.IMPLEMENTATIONS  # auto: the kernel where it applies; xla: XLA's ops everywhere
_CODES = {None: 0, "gelu": 1}  # the kernel's activation attribute


def gelu_exact(x):
    """GELU with the error function, as PyTorch computes it: ``0.5 x (1 + erf(x / sqrt(2)))``. In float32 this form
    runs about 1.8x faster on XLA:CPU than ``jax.nn.gelu``'s erfc form (docs/bench_model.md, session 15) at an
    absolute error within ~1e-6 of float64; other dtypes keep ``jax.nn.gelu`` (in bfloat16, ``1 + erf`` cancels for
    negative inputs)."""
    if x.dtype == jnp.float32:
        return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0))))
    return jax.nn.gelu(x, approximate=False)


def xla_dense(x, w, b, activation=None):
    """:func:`dense` with XLA's ops: the dot accumulates in float32 (bf16 operands go to YNNPACK's bf16 GEMM on
    CPU), the bias is added in float32, the sum is cast to ``x.dtype`` and the activation applied in that dtype."""
    y = _linear(x, w, b).astype(x.dtype)
    return y if activation is None else gelu_exact(y)


def _linear(x, w, b):
    """``x @ w + b`` in float32 (bf16 operands, float32 accumulation)."""
    y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y + b.astype(jnp.float32)


def _call(x, w, b, activation):
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (w.shape[1],), x.dtype)
    # sequential: under vmap each member's call gets its own x, w and b (the kernel takes one weight).
    return jax.ffi.ffi_call("cascade_dense", out, vmap_method="sequential")(
        x, w, b, activation=np.int64(_CODES[activation]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(x, w, b, activation):
    return _call(x, w, b, activation)


def _fused_fwd(x, w, b, activation):
    """Under differentiation (training in bf16): the kernel without the activation, whose input is kept for the
    backward pass (so no matmul is recomputed); GELU in float32 by XLA's ops."""
    if activation is None:
        return _call(x, w, b, None), (x, w, b, None)
    pre = _call(x, w, b, None)
    return gelu_exact(pre.astype(jnp.float32)).astype(x.dtype), (x, w, b, pre)


def _fused_bwd(activation, residuals, g):
    x, w, b, pre = residuals
    if activation is not None:
        _, activation_pullback = jax.vjp(lambda y: gelu_exact(y.astype(jnp.float32)).astype(y.dtype), pre)
        (g,) = activation_pullback(g)
    _, pullback = jax.vjp(lambda x, w, b: _linear(x, w, b).astype(x.dtype), x, w, b)  # linear: no primal needed
    return pullback(g)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _kernel_applies(x, w, b, activation, implementation) -> bool:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"dense implementation {implementation!r}: use one of {', '.join(IMPLEMENTATIONS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"dense activation {activation!r}: use one of {ACTIVATIONS}")
    bf16 = jnp.dtype(jnp.bfloat16)
    return (implementation == "auto" and x.ndim >= 1 and w.ndim == 2 and b.shape == (w.shape[1],)
            and x.shape[-1] == w.shape[0] and x.dtype == bf16 and w.dtype == bf16
            and b.dtype in (bf16, jnp.dtype(jnp.float32))
            and jax.default_backend() == "cpu" and kernels.load("dense") is not None)


def dense(x, w, b, activation: str | None = None, implementation: str = "auto"):
    """``activation(x @ w + b)`` in ``x.dtype`` (module docstring). With ``implementation`` "auto", bfloat16 ``x``
    and ``w`` on a CPU with AVX512-BF16: the fused kernel (GELU in float32 before the one rounding); otherwise, or
    with "xla": :func:`xla_dense`. Which path is taken is decided when the function is traced."""
    if not _kernel_applies(x, w, b, activation, implementation):
        return xla_dense(x, w, b, activation)
    return jax.lax.platform_dependent(
        x, w, b, cpu=lambda x, w, b: _fused(x, w, b, activation),
        default=lambda x, w, b: xla_dense(x, w, b, activation))


def status() -> str:
    """In words: whether :func:`dense` runs the fused kernel for bfloat16 in this process (builds it if needed)."""
    return kernels.status("dense", "fused bf16 CPU kernel")
