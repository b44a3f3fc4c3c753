"""Multi-head scaled dot-product attention: a fused C++ kernel on CPU, XLA's ops elsewhere.

  attention(q, k, v, key_bias, implementation="auto") -> context   # q, k, v [B, L, H, D]; key_bias [B, Lk]
  xla_attention(q, k, v, key_bias, dropout=None) # the same with XLA's einsum-softmax-einsum (and dropout on probs)
  bias_from_mask(attention_mask) -> [B, Lk]       # 0 where attended, float32's most negative value where masked
  status() -> str                                # whether attention() uses the kernel here, in words

``context[b, i, h] = sum_j softmax_j(q[b, i, h] . k[b, j, h] / sqrt(D) + key_bias[b, j]) v[b, j, h]``, with the
scores, the softmax and the sums in float32 whatever the input dtype (float32 or bfloat16); the context comes back in
the input dtype. On CPU :func:`attention` calls ``kernels/attention.cc`` (one pass per batch row and head that keeps
the scores in cache; XLA:CPU runs the three ops as separate passes over a [B, H, L, L] tensor, 3-7x slower:
docs/bench_model.md). It is chosen at lowering time (``jax.lax.platform_dependent``), so a GPU/TPU program never
contains it. Gradients (``jax.custom_vjp``) recompute the probabilities with XLA ops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import kernels

HEAD_DIMS = (16, 32, 48, 64, 128)  # head widths the kernel is compiled for
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
IMPLEMENTATIONS = ("auto", "xla")  # auto: the kernel on CPU where it applies; xla: XLA's ops everywhere


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


def _kernel_call(q, k, v, key_bias):
    # broadcast_all: under vmap every operand gains the mapped axis in front; the kernel treats all leading axes
    # as batch.
    out = jax.ShapeDtypeStruct(q.shape, q.dtype)
    return jax.ffi.ffi_call("cascade_attention", out, vmap_method="broadcast_all")(q, k, v, key_bias)


@jax.custom_vjp
def _fused(q, k, v, key_bias):
    return _kernel_call(q, k, v, key_bias)


def _fused_fwd(q, k, v, key_bias):
    out = _kernel_call(q, k, v, key_bias)
    return out, (q, k, v, key_bias, out)


def _fused_bwd(residuals, g):
    """The softmax-attention backward, probabilities recomputed: P = softmax(S), dV = P^T g, dS = P * (g V^T -
    rowsum(g * out)), dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D), d key_bias = sum over heads and queries of dS.
    (From the softmax, not a saved log-sum-exp: with float32's most negative bias on every key of a row, the
    log-sum-exp rounds to the bias and would give each key probability 1.)"""
    q, k, v, bias, out = residuals
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    scale = 1.0 / np.sqrt(q.shape[-1])
    qf, kf, vf, gf = f32(q), f32(k), f32(v), f32(g)
    p = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", qf, kf) * scale + bias[:, None, None, :], axis=-1)
    dv = jnp.einsum("bhqk,bqhd->bkhd", p, gf)
    dp = jnp.einsum("bqhd,bkhd->bhqk", gf, vf)
    delta = jnp.einsum("bqhd,bqhd->bhq", gf, f32(out))
    ds = p * (dp - delta[..., None])
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, kf) * scale
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, qf) * scale
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), ds.sum((1, 2)).astype(bias.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _kernel_applies(q, k, v, key_bias, implementation) -> bool:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: use one of {', '.join(IMPLEMENTATIONS)}")
    return (implementation == "auto" and q.ndim == 4 and q.dtype in DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
            and key_bias.dtype == jnp.float32 and q.shape[-1] in HEAD_DIMS and k.shape[1] > 0
            and jax.default_backend() == "cpu" and kernels.load("attention") is not None)


def attention(q, k, v, key_bias, implementation: str = "auto"):
    """Softmax attention (module docstring): with ``implementation`` "auto" the fused kernel on CPU where it applies
    (float32 or bfloat16, head width in :data:`HEAD_DIMS`, kernel built), else :func:`xla_attention`; "xla": always
    :func:`xla_attention` (the model's ``BertConfig.attn_implementation``)."""
    if not _kernel_applies(q, k, v, key_bias, implementation):
        return xla_attention(q, k, v, key_bias)
    return jax.lax.platform_dependent(q, k, v, key_bias, cpu=_fused, default=xla_attention)


def status() -> str:
    """In words: whether :func:`attention` runs the fused kernel in this process (builds it if needed)."""
    if jax.default_backend() != "cpu":
        return f"XLA ops (backend {jax.default_backend()}; the fused kernel is for CPU)"
    kernel = kernels.load("attention")
    if kernel is None:
        return f"XLA ops ({kernels.why_not('attention')})"
    return f"fused CPU kernel ({kernel.path})"
