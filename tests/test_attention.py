"""The fused CPU attention kernel (cascade_jax/attention.py, kernels/attention.cc) against a float64 numpy loop, its
gradients and vmap, where it is (not) used, and the fallback when it cannot be built."""

import dataclasses
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascade_jax import attention, kernels
from tests.kernel_support import needs_kernel

NEG = np.finfo(np.float32).min


def reference(q, k, v, bias):
    """float64, one (batch row, head) at a time, softmax with the running maximum taken out."""
    q, k, v, bias = (np.asarray(x, np.float64) for x in (q, k, v, bias))
    b, lq, h, d = q.shape
    out = np.zeros((b, lq, h, v.shape[-1]))
    for n in range(b):
        for j in range(h):
            s = q[n, :, j] @ k[n, :, j].T / np.sqrt(d) + bias[n][None, :]
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[n, :, j] = (p / p.sum(axis=1, keepdims=True)) @ v[n, :, j]
    return out


def inputs(rng, b, lq, h, d, lk=None, scale=1.0, dtype=jnp.float32):
    lk = lq if lk is None else lk
    q = jnp.asarray(scale * rng.standard_normal((b, lq, h, d)), dtype)
    k = jnp.asarray(scale * rng.standard_normal((b, lk, h, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, lk, h, d)), dtype)
    mask = (rng.random((b, lk)) < 0.7).astype(np.int32)
    mask[:, 0] = 1
    if b > 1:
        mask[-1] = 0  # a fully masked row: uniform over its keys, as in transformers
    return q, k, v, attention.bias_from_mask(jnp.asarray(mask))


def uses_kernel(fn, *args) -> bool:
    return "cascade_attention" in jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize("b,lq,lk,h,d", [(3, 13, 13, 4, 32), (1, 1, 1, 1, 16), (2, 40, 40, 2, 64), (2, 17, 33, 3, 48),
                                         (1, 9, 5, 2, 128), (4, 128, 128, 2, 32)])
def test_kernel_matches_float64(b, lq, lk, h, d):
    needs_kernel("attention")
    rng = np.random.default_rng(lq * 100 + d)
    q, k, v, bias = inputs(rng, b, lq, h, d, lk)
    assert uses_kernel(attention.attention, q, k, v, bias)
    got = np.asarray(jax.jit(attention.attention)(q, k, v, bias))
    np.testing.assert_allclose(got, reference(q, k, v, bias), atol=2e-6, rtol=1e-5)


def test_large_scores_and_underflow():
    """Scores ~ +-900: the softmax is nearly one-hot and most exponentials underflow to exactly 0."""
    needs_kernel("attention")
    q, k, v, bias = inputs(np.random.default_rng(1), 2, 24, 2, 32, scale=12.0)
    got = np.asarray(jax.jit(attention.attention)(q, k, v, bias))
    np.testing.assert_allclose(got, reference(q, k, v, bias), atol=2e-5, rtol=1e-5)
    assert np.isfinite(got).all()


def test_bfloat16_inputs():
    needs_kernel("attention")
    q, k, v, bias = inputs(np.random.default_rng(2), 2, 20, 3, 32, dtype=jnp.bfloat16)
    got = jax.jit(attention.attention)(q, k, v, bias)
    assert got.dtype == jnp.bfloat16
    # float32 arithmetic on the bf16 inputs; only the output is rounded to bf16 (relative step 2^-8).
    want = reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), bias)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=1e-2, rtol=8e-3)


def test_gradients_match_autodiff_of_xla_ops():
    needs_kernel("attention")
    q, k, v, bias = inputs(np.random.default_rng(3), 3, 11, 2, 16)
    w = jnp.asarray(np.random.default_rng(4).standard_normal(q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v, bias: jnp.sum(jnp.tanh(fn(q, k, v, bias)) * w)

    got = jax.grad(loss(attention.attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = jax.grad(loss(attention.xla_attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for name, g, r in zip("q k v bias".split(), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-5, rtol=1e-4, err_msg=name)
    # And the fully masked row really sees uniform weights (its gradient w.r.t. v is spread evenly).
    assert np.allclose(np.asarray(got[2])[-1], np.asarray(got[2])[-1].mean(axis=0, keepdims=True), atol=1e-6)


def keep_mask(rng, shape, rate=0.25):
    return jnp.asarray(np.where(rng.random(shape) < rate, 0.0, 1.0 / (1 - rate)), jnp.float32)


def reference_dropout(q, k, v, bias, keep):
    """float64 loop: softmax, times the keep multipliers, times v."""
    q, k, v, bias, keep = (np.asarray(x, np.float64) for x in (q, k, v, bias, keep))
    b, lq, h, d = q.shape
    out = np.zeros_like(q)
    for n in range(b):
        for j in range(h):
            s = q[n, :, j] @ k[n, :, j].T / np.sqrt(d) + bias[n][None, :]
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[n, :, j] = (p / p.sum(axis=1, keepdims=True) * keep[n, j]) @ v[n, :, j]
    return out


@pytest.mark.parametrize("b,lq,lk,h,d", [(2, 13, 13, 3, 32), (2, 9, 21, 2, 64), (1, 5, 5, 2, 16)])
def test_dropout_forward_and_gradients(b, lq, lk, h, d):
    needs_kernel("attention")
    rng = np.random.default_rng(b * 10 + d)
    q, k, v, bias = inputs(rng, b, lq, h, d, lk)
    keep = keep_mask(rng, (b, h, lq, lk))
    f = lambda q, k, v, bias: attention.attention(q, k, v, bias, keep=keep)  # noqa: E731
    assert "cascade_attention_dropout" in jax.jit(f).lower(q, k, v, bias).as_text()
    np.testing.assert_allclose(np.asarray(jax.jit(f)(q, k, v, bias)), reference_dropout(q, k, v, bias, keep),
                               atol=3e-6, rtol=1e-5)
    w = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    xla = lambda q, k, v, bias: attention.xla_attention(q, k, v, bias, lambda p: p * keep)  # noqa: E731
    got = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2, 3)))(q, k, v, bias)
    want = jax.grad(lambda *a: jnp.sum(xla(*a) * w), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for name, g, r in zip("q k v bias".split(), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=3e-5, rtol=1e-4, err_msg=name)


def test_bfloat16_gradients():
    needs_kernel("attention")
    rng = np.random.default_rng(11)
    q, k, v, bias = inputs(rng, 2, 12, 2, 32, dtype=jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v, bias).astype(jnp.float32) * w))  # noqa: E731
    got = jax.grad(loss(attention.attention), argnums=(0, 1, 2))(q, k, v)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want = jax.grad(loss(attention.xla_attention), argnums=(0, 1, 2))(*f32)
    for g, r in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), atol=3e-2, rtol=2e-2)


def test_vmap_over_stacked_members():
    needs_kernel("attention")
    rng = np.random.default_rng(5)
    q, k, v, bias = inputs(rng, 2, 10, 2, 32)
    qs, ks, vs = (jnp.stack([x, 2 * x]) for x in (q, k, v))
    shared = jax.jit(jax.vmap(attention.attention, in_axes=(0, 0, 0, None)))(qs, ks, vs, bias)
    mapped = jax.jit(jax.vmap(attention.attention))(qs, ks, vs, jnp.stack([bias, bias]))
    for i in range(2):
        want = reference(qs[i], ks[i], vs[i], bias)
        np.testing.assert_allclose(np.asarray(shared[i]), want, atol=2e-6, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(mapped[i]), want, atol=2e-6, rtol=1e-5)


def test_kernel_only_where_it_applies():
    needs_kernel("attention")
    q, k, v, bias = inputs(np.random.default_rng(6), 2, 8, 2, 32)
    assert uses_kernel(attention.attention, q, k, v, bias)
    assert not uses_kernel(lambda *a: attention.attention(*a, "xla"), q, k, v, bias)
    with pytest.raises(ValueError, match="'flash'.*auto, xla"):
        attention.attention(q, k, v, bias, "flash")
    # Operands the kernel does not take as they are go to XLA's ops (which broadcast them).
    b1 = bias[:1]
    assert not uses_kernel(attention.attention, q, k, v, b1)
    np.testing.assert_allclose(np.asarray(jax.jit(attention.attention)(q, k, v, b1)),
                               reference(q, k, v, jnp.broadcast_to(b1, bias.shape)), atol=2e-6, rtol=1e-5)
    for keep in (jnp.ones((2, 1, 8, 8)), jnp.ones((2, 2, 8, 8), jnp.bfloat16), jnp.ones((2, 2, 1, 8))):
        assert not uses_kernel(lambda *a, keep=keep: attention.attention(*a, keep=keep), q, k, v, bias)
    q20 = jnp.ones((2, 8, 2, 20))  # a head width the kernel is not compiled for
    assert not uses_kernel(attention.attention, q20, q20, q20, bias)
    assert not uses_kernel(attention.attention, q.astype(jnp.float16), k.astype(jnp.float16),
                           v.astype(jnp.float16), bias)
    # A program lowered for a GPU never contains it (platform_dependent picks XLA's ops there).
    exported = jax.export.export(jax.jit(attention.attention), platforms=["cuda"])(q, k, v, bias)
    assert "cascade_attention" not in exported.mlir_module()


def test_model_logits_and_training_gradients():
    """The model with the kernel and with XLA's ops (kernels="xla"): the same logits, and in training
    (dropout on, same dropout key, so the same dropout masks) the same logits and parameter gradients."""
    needs_kernel("attention")
    from cascade_jax import models

    config = models.BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=65, max_position_embeddings=16)  # head width 32
    module = models.BertForSequenceClassification(config)
    xla_module = module.clone(config=dataclasses.replace(config, kernels="xla"))
    params = models.init_params(module, jax.random.PRNGKey(0))
    rng = np.random.default_rng(8)
    mask = np.ones((4, 12), np.int32)
    mask[1, 7:] = 0
    batch = {"input_ids": jnp.asarray(rng.integers(0, 50, (4, 12)), jnp.int32), "attention_mask": jnp.asarray(mask),
             "token_type_ids": jnp.zeros((4, 12), jnp.int32)}
    fn = models.logits_fn(module)
    assert uses_kernel(fn, params, batch)
    assert not uses_kernel(models.logits_fn(xla_module), params, batch)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(params, batch)),
                               np.asarray(jax.jit(models.logits_fn(xla_module))(params, batch)), atol=1e-5, rtol=1e-5)

    def train_loss(m):
        def loss(p, b):
            logits = m.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"],
                             deterministic=False, rngs={"dropout": jax.random.key(3)}).logits
            return jnp.sum(jnp.sin(logits)), logits
        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    assert "cascade_attention_backward" in train_loss(module).lower(params, batch).as_text()
    (_, got_logits), got = train_loss(module)(params, batch)
    (_, want_logits), want = train_loss(xla_module)(params, batch)
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), atol=1e-5, rtol=1e-5)
    flat_got, flat_want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    for g, w in zip(flat_got, flat_want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-4)


def test_fallback_without_compiler(monkeypatch):
    q, k, v, bias = inputs(np.random.default_rng(7), 2, 9, 2, 32)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("PATH", "/nonexistent")  # and none on PATH either
    kernels._forget()
    try:
        with pytest.warns(RuntimeWarning, match="CXX=/nonexistent/c\\+\\+ was not found.*XLA's ops"):
            assert kernels.load("attention") is None
        assert "/nonexistent/c++ was not found" in attention.status()
        monkeypatch.delenv("CXX")
        kernels._forget()
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
            assert kernels.load("attention") is None
        assert not uses_kernel(attention.attention, q, k, v, bias)
        np.testing.assert_allclose(np.asarray(jax.jit(attention.attention)(q, k, v, bias)),
                                   reference(q, k, v, bias), atol=2e-6, rtol=1e-5)
    finally:
        kernels._forget()


def test_turned_off_quietly(monkeypatch):
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    kernels._forget()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert kernels.load("attention") is None
        assert "turned off" in attention.status()
    finally:
        kernels._forget()


def test_failed_build_is_reported(monkeypatch, tmp_path):
    if kernels._compiler() is None:
        pytest.skip("no C++ compiler")
    (tmp_path / "attention.cc").write_text("this is not C++;\n")
    monkeypatch.setattr(kernels, "_SOURCES", tmp_path)
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path / "cache"))
    kernels._forget()
    try:
        with pytest.warns(RuntimeWarning, match="building kernels/attention.cc failed.*exited with"):
            assert kernels.load("attention") is None
        assert not list((tmp_path / "cache").rglob("*.so")), "a failed build left a library behind"
    finally:
        kernels._forget()


def test_builds_into_an_empty_cache(monkeypatch, tmp_path):
    """What a fresh machine does: compile the kernel into an empty cache, register it, use it."""
    if kernels._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path))
    kernels._forget()
    try:
        kernel = kernels.load("attention")
        assert kernel is not None, kernels.why_not("attention")
        assert kernel.path.is_file() and tmp_path in kernel.path.parents
        assert [p.name for p in kernel.path.parent.iterdir()] == ["attention.so"]  # no temporary left behind
        q, k, v, bias = inputs(np.random.default_rng(12), 2, 6, 2, 16)
        np.testing.assert_allclose(np.asarray(jax.jit(attention.attention)(q, k, v, bias)),
                                   reference(q, k, v, bias), atol=2e-6, rtol=1e-5)
    finally:
        kernels._forget()


def test_persistent_compilation_cache_round_trip(tmp_path):
    """A program with the kernel stored in JAX's compilation cache runs when a new process loads it."""
    if kernels._compiler() is None:
        pytest.skip("no C++ compiler")
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_compilation_cache_dir", {str(tmp_path / 'xla')!r})
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        from cascade_jax import attention
        q = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 2, 32)), jnp.float32)
        bias = jnp.zeros((2, 8))
        text = jax.jit(attention.attention).lower(q, q, q, bias).as_text()
        assert "cascade_attention" in text
        print(float(jax.jit(attention.attention)(q, q, q, bias).sum()))
    """)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           env=os.environ | {"JAX_PLATFORMS": "cpu"}) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path / "xla").iterdir()), "nothing was cached"
    assert runs[0].stdout == runs[1].stdout


def test_kernels_config(tmp_path):
    from cascade_jax import models

    with pytest.raises(models.ModelLoadError, match="kernels 'sdpa'"):
        models.BertConfig(kernels="sdpa")
    config = models.BertConfig(kernels="xla")
    assert "kernels" not in config.to_hf_dict()  # not Hugging Face's: never written to config.json
    assert models.BertConfig.from_dict({"kernels": "sdpa"}).kernels == "auto"
