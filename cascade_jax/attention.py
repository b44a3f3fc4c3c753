"""Multi-head scaled dot-product attention: a fused C++ kernel on CPU, XLA's ops elsewhere.

  attention(q, k, v, key_bias, implementation="auto", keep=None) -> context   # q, k, v [B, L, H, D]; key_bias [B, Lk]
  xla_attention(q, k, v, key_bias, dropout=None) # the same with XLA's einsum-softmax-einsum (and dropout on probs)
  bias_from_mask(attention_mask) -> [B, Lk]       # 0 where attended, float32's most negative value where masked
  status() -> str                                # whether attention() uses the kernel here, in words

``context[b, i, h] = sum_j softmax_j(q[b, i, h] . k[b, j, h] / sqrt(D) + key_bias[b, j]) v[b, j, h]``, with the
scores, the softmax and the sums in float32 whatever the input dtype (float32 or bfloat16); the context comes back in
the input dtype. On CPU :func:`attention` calls ``kernels/attention.cc`` (one pass per batch row and head that keeps
the scores in cache; XLA:CPU runs the three ops as separate passes over a [B, H, L, L] tensor, 3-7x slower:
docs/bench_model.md). It is chosen at lowering time (``jax.lax.platform_dependent``), so a GPU/TPU program never
contains it. Dropout on the probabilities comes in as multipliers drawn by the caller; the gradients
(``jax.custom_vjp``) come from the kernel's backward, which recomputes the probabilities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import kernels

HEAD_DIMS = (16, 32, 48, 64, 128)  # head widths the kernel is compiled for
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
IMPLEMENTATIONS = kernels.IMPLEMENTATIONS  # auto: the kernel on CPU where it applies; xla: XLA's ops everywhere


def bias_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Additive key bias [B, Lk] from a 0/1 mask: as in transformers, masked keys get float32's most negative value,
    so a fully masked row stays finite (its softmax is uniform)."""
    return jnp.where(attention_mask > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def xla_attention(q, k, v, key_bias, dropout=None):
    """Attention with XLA's ops; ``dropout``: a function applied to the probabilities (training)."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
    probs = jax.nn.softmax(scores + key_bias[:, None, None, :], axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(q.dtype), v, preferred_element_type=jnp.float32).astype(q.dtype)


def _call(target, results, *args):
    # broadcast_all: under vmap every operand gains the mapped axis in front; the kernel treats all leading axes
    # as batch.
    return jax.ffi.ffi_call(target, results, vmap_method="broadcast_all")(*args)


def _forward(q, k, v, key_bias, keep):
    out = jax.ShapeDtypeStruct(q.shape, q.dtype)
    if keep.size == 0:
        return _call("cascade_attention", out, q, k, v, key_bias)
    return _call("cascade_attention_dropout", out, q, k, v, key_bias, keep)


@jax.custom_vjp
def _fused(q, k, v, key_bias, keep):
    """The kernel; ``keep``: [B, H, Lq, Lk] dropout multipliers, or an empty array for none."""
    return _forward(q, k, v, key_bias, keep)


def _fused_fwd(q, k, v, key_bias, keep):
    out = _forward(q, k, v, key_bias, keep)
    return out, (q, k, v, key_bias, keep, out)


def _fused_bwd(residuals, g):
    """The kernel's backward (probabilities recomputed per row block, not saved): dV = Pd^T g, dS = P * (g V^T * keep
    - rowsum(g * out)), dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D), d key_bias = sum over heads and queries of dS."""
    q, k, v, bias, keep, out = residuals
    like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    dbias = jax.ShapeDtypeStruct((q.shape[0], q.shape[2], k.shape[1]), jnp.float32)  # per head
    dq, dk, dv, dbias_heads = _call("cascade_attention_backward", (like(q), like(k), like(v), dbias),
                                    q, k, v, bias, keep, out, g.astype(q.dtype))
    return dq, dk, dv, dbias_heads.sum(1), jnp.zeros_like(keep)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _kernel_applies(q, k, v, key_bias, keep, implementation) -> bool:
    """Whether the kernel takes these operands exactly as they are (anything else goes to XLA's ops, which also
    broadcast): q [B, Lq, H, D], k and v [B, Lk, H, D] of one dtype, key_bias [B, Lk] and keep [B, H, Lq, Lk]
    float32."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: use one of {', '.join(IMPLEMENTATIONS)}")
    if implementation != "auto" or q.ndim != 4 or k.ndim != 4:
        return False
    (b, lq, h, d), lk = q.shape, k.shape[1]
    shapes_fit = (k.shape == v.shape == (b, lk, h, d) and key_bias.shape == (b, lk) and lk > 0
                  and (keep is None or (keep.shape == (b, h, lq, lk) and keep.dtype == jnp.float32)))
    return (shapes_fit and q.dtype in DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
            and key_bias.dtype == jnp.float32 and d in HEAD_DIMS
            and jax.default_backend() == "cpu" and kernels.load("attention") is not None)


def attention(q, k, v, key_bias, implementation: str = "auto", keep=None):
    """Softmax attention (module docstring): with ``implementation`` "auto" the fused kernel on CPU where it applies
    (float32 or bfloat16, head width in :data:`HEAD_DIMS`, kernel built), else :func:`xla_attention`; "xla": always
    :func:`xla_attention` (the model's ``BertConfig.kernels``). ``keep``: dropout on the probabilities,
    as multipliers [B, H, Lq, Lk] (0 where dropped, 1 / keep probability elsewhere), or None; on the kernel's path
    it is a constant (its gradient is zero). Which path is taken is decided when the function is traced."""
    if not _kernel_applies(q, k, v, key_bias, keep, implementation):
        return _xla_with_keep(q, k, v, key_bias, keep)
    keep = jnp.zeros((0,), jnp.float32) if keep is None else keep  # the kernel's "no dropout"
    return jax.lax.platform_dependent(q, k, v, key_bias, keep, cpu=_fused, default=_xla_with_keep)


def _xla_with_keep(q, k, v, key_bias, keep):
    """:func:`xla_attention` with the dropout multipliers ``keep`` (None or empty: no dropout)."""
    return xla_attention(q, k, v, key_bias, None if keep is None or keep.size == 0 else (lambda p: p * keep))


def status() -> str:
    """In words: whether :func:`attention` runs the fused kernel in this process (builds it if needed)."""
    return kernels.status("attention", "fused CPU kernel")
