"""The fused bf16 dense kernel (cascade_jax/dense.py, kernels/dense.cc) against float64 numpy, its gradients and
vmap, where it is (not) used, the CPUs it is built for, and the bf16 model with and without it."""

import dataclasses
import subprocess
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from cascade_jax import dense, kernels, models
from tests.kernel_support import needs_kernel


def bf16(x):
    return jnp.asarray(x, jnp.bfloat16)


def reference(x, w, b, activation):
    """float64 of the bf16 inputs: x @ w + b, then GELU with scipy's erf."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    return 0.5 * y * (1 + erf(y / np.sqrt(2))) if activation == "gelu" else y


def to_bf16(y):
    return np.asarray(jnp.asarray(y, jnp.float32).astype(jnp.bfloat16), np.float64)


def uses_kernel(fn, *args) -> bool:
    return "cascade_dense" in jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize("shape", [(37, 5, 33), (1, 384, 2), (14, 64, 32), (3, 7, 16, 48), (2, 100, 384, 100),
                                   (29, 1536, 40), (384, 40), (4, 0, 16), (140, 384, 1536), (141, 7, 1536)])
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("bias_dtype", [jnp.bfloat16, jnp.float32])
def test_matches_float64(shape, activation, bias_dtype):
    """Odd K, N not a multiple of the 32-column panels or of 16, row counts below and not a multiple of the 14-row
    tile, leading dimensions, a 1-D x, K = 0 (the bias alone), several tasks of row tiles read in place and several
    L2 chunks of weight panels (N = 1536), several tasks with odd K: every element within float32 summation error of float64 plus one bf16 rounding, and
    nearly all exactly float64's value rounded to bf16."""
    needs_kernel("dense")
    rng = np.random.default_rng(sum(shape))
    *lead, k, n = shape
    x = bf16(rng.standard_normal((*lead, k)))
    w = bf16(rng.standard_normal((k, n)) / np.sqrt(k))
    b = jnp.asarray(rng.standard_normal(n), bias_dtype)
    fn = lambda x, w, b: dense.dense(x, w, b, activation)  # noqa: E731
    assert uses_kernel(fn, x, w, b)
    got = np.asarray(jax.jit(fn)(x, w, b), np.float64)
    assert got.shape == (*lead, n)
    ref = reference(x, w, b, activation)
    scale = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(w, np.float64)) + np.abs(np.asarray(b, np.float64))
    np.testing.assert_array_less(np.abs(got - ref), 2.0 ** -8 * np.abs(ref) + 1e-6 * scale + 1e-6)
    assert np.mean(got == to_bf16(ref)) > 0.97


def test_gelu_over_its_range():
    """With an identity weight the kernel is bf16(GELU(x)): against float64 GELU from -12 to 12, within 1e-6 on the
    far negative side where 1 + erf is tiny (as PyTorch's formula in float32) and exact where GELU(x) = x."""
    needs_kernel("dense")
    n = 64
    x = np.linspace(-12, 12, 96 * n).reshape(96, n)
    xb = bf16(x)
    got = np.asarray(dense.dense(xb, bf16(np.eye(n)), bf16(np.zeros(n)), "gelu"), np.float64)
    ref = reference(xb, np.eye(n), np.zeros(n), "gelu")
    np.testing.assert_array_less(np.abs(got - ref), 2.0 ** -8 * np.abs(ref) + 1e-6)
    # Exact rounding where float32's 1 + erf keeps the relative precision (PyTorch's formula loses it below).
    visible = np.abs(ref) > 1e-3
    assert np.mean(got[visible] == to_bf16(ref)[visible]) > 0.99
    assert np.all(got[np.asarray(xb, np.float64) <= -6] <= 0)


def test_rounding_and_special_values():
    """One rounding, to nearest even: a sum half-way between two bf16 values goes to the even one (truncation would
    keep the odd one), three quarters of a step rounds up; zero rows give the bias; huge values stay finite where
    float32 holds them; a NaN input gives NaN in its row only."""
    needs_kernel("dense")
    k, n = 4, 20
    w = np.zeros((k, n))
    w[0] = 1.0
    x = np.zeros((6, k))
    x[1, 0] = 1.0 + 2.0 ** -7  # odd last mantissa bit; the bf16 step at 1 is 2^-7
    x[2, 0] = 3.0e38
    x[3, 0] = np.nan
    x[5, 0] = 1.0
    b = np.full(n, 2.0 ** -8)  # half a step
    b[10:] = 3 * 2.0 ** -9  # three quarters of a step
    got = np.asarray(dense.dense(bf16(x), bf16(w), bf16(b)), np.float64)
    assert np.all(got[0] == b) and np.all(got[4] == b)
    assert np.all(got[1, :10] == 1.0 + 2.0 ** -6) and np.all(got[1, 10:] == 1.0 + 2.0 ** -6)
    assert np.all(got[5, :10] == 1.0) and np.all(got[5, 10:] == 1.0 + 2.0 ** -7)  # 1 + half a step: even is 1
    assert np.all(np.isfinite(got[2])) and np.all(np.isnan(got[3]))


def test_gradients_match_float32_formula():
    """The kernel's gradients (custom_vjp through XLA's ops) against the formula's derivatives in float64."""
    needs_kernel("dense")
    rng = np.random.default_rng(3)
    x, w, b = bf16(rng.standard_normal((2, 9, 24))), bf16(rng.standard_normal((24, 40)) / 5), bf16(rng.standard_normal(40))
    g = rng.standard_normal((2, 9, 40))

    def loss(x, w, b):
        return jnp.sum(dense.dense(x, w, b, "gelu").astype(jnp.float32) * g)

    assert uses_kernel(loss, x, w, b)
    grads = jax.grad(loss, argnums=(0, 1, 2))(x, w, b)
    # float64 by hand: GELU'(y) = Phi(y) + y phi(y).
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y = x64 @ w64 + np.asarray(b, np.float64)
    gy = g * (0.5 * (1 + erf(y / np.sqrt(2))) + y * np.exp(-y * y / 2) / np.sqrt(2 * np.pi))
    want = [gy @ w64.T, np.einsum("abk,abn->kn", x64, gy), gy.sum(axis=(0, 1))]
    for got, ref in zip(grads, want):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def test_vmap_over_inputs_and_weights():
    """vmap over x only and over x, w and b (stacked members): each member's call."""
    needs_kernel("dense")
    rng = np.random.default_rng(4)
    x, w, b = bf16(rng.standard_normal((3, 5, 16))), bf16(rng.standard_normal((3, 16, 24))), bf16(rng.standard_normal((3, 24)))
    fn = lambda x, w, b: dense.dense(x, w, b, "gelu")  # noqa: E731
    one = np.stack([np.asarray(fn(x[i], w[0], b[0]), np.float32) for i in range(3)])
    np.testing.assert_array_equal(np.asarray(jax.vmap(fn, (0, None, None))(x, w[0], b[0]), np.float32), one)
    each = np.stack([np.asarray(fn(x[i], w[i], b[i]), np.float32) for i in range(3)])
    np.testing.assert_array_equal(np.asarray(jax.vmap(fn)(x, w, b), np.float32), each)


def test_where_it_applies():
    """bf16 operands on CPU only: float32, implementation "xla", an unknown activation, or a CUDA export give
    XLA's ops; bad names are rejected."""
    needs_kernel("dense")
    x, w, b = bf16(np.ones((4, 8))), bf16(np.ones((8, 16))), bf16(np.ones(16))
    assert uses_kernel(lambda x, w, b: dense.dense(x, w, b), x, w, b)
    f32 = [a.astype(jnp.float32) for a in (x, w, b)]
    assert not uses_kernel(lambda x, w, b: dense.dense(x, w, b), *f32)
    assert not uses_kernel(lambda x, w, b: dense.dense(x, w, b, implementation="xla"), x, w, b)
    exported = jax.export.export(jax.jit(lambda x, w, b: dense.dense(x, w, b, "gelu")), platforms=["cuda"])(x, w, b)
    assert "cascade_dense" not in exported.mlir_module()
    with pytest.raises(ValueError, match="activation 'relu'"):
        dense.dense(x, w, b, "relu")
    with pytest.raises(ValueError, match="implementation 'onednn'"):
        dense.dense(x, w, b, implementation="onednn")


def test_xla_path_matches_kernel_within_rounding():
    """xla_dense (XLA's route: the bf16 sum rounded before its GELU) and the kernel (GELU on the float32 sum) agree
    within two bf16 roundings."""
    needs_kernel("dense")
    rng = np.random.default_rng(5)
    x, w, b = bf16(rng.standard_normal((40, 64))), bf16(rng.standard_normal((64, 48)) / 8), bf16(rng.standard_normal(48))
    got = np.asarray(dense.dense(x, w, b, "gelu"), np.float64)
    xla = np.asarray(dense.dense(x, w, b, "gelu", implementation="xla"), np.float64)
    np.testing.assert_allclose(got, xla, rtol=2.0 ** -6, atol=1e-3)


@pytest.mark.parametrize("march, says", [("x86-64-v3", "lacks AVX512-BF16"), ("sapphirerapids", "has AMX")])
def test_cpus_it_is_not_for(monkeypatch, tmp_path, march, says):
    """Built for a CPU without AVX512-BF16, or with AMX, the library says so, and load() gives None quietly (nothing
    failed; XLA's route is used)."""
    if kernels._compiler() is None:
        pytest.skip("no C++ compiler")
    check = [kernels._compiler(), f"-march={march}", "-x", "c++", "-fsyntax-only", "-"]
    if subprocess.run(check, input="int main() {}", capture_output=True, text=True).returncode != 0:
        pytest.skip(f"this compiler cannot target {march}")
    monkeypatch.setattr(kernels, "FLAGS", tuple(f"-march={march}" if f == "-march=native" else f for f in kernels.FLAGS))
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path))
    kernels._forget()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert kernels.load("dense") is None
        assert says in kernels.why_not("dense")
        x = bf16(np.ones((2, 4)))
        assert not uses_kernel(lambda x: dense.dense(x, x.T, x[0, :2]), x) and says in dense.status()
    finally:
        kernels._forget()


def test_bf16_model_with_and_without_kernel():
    """The tiny model in bf16: the kernel in its program, logits within bf16 error of the XLA route's and of
    float32's; float32 programs never contain it."""
    needs_kernel("dense")
    config = models.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    module = models.BertForSequenceClassification(config, dtype=jnp.bfloat16)
    params = models.init_params(module, jax.random.PRNGKey(0))
    params16 = models.cast_params(params, jnp.bfloat16)
    ids = np.random.default_rng(0).integers(1, 100, (4, 12)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    fn = models.logits_fn(module)
    assert uses_kernel(fn, params16, batch)
    xla_module = module.clone(config=dataclasses.replace(module.config, kernels="xla"))
    assert not uses_kernel(models.logits_fn(xla_module), params16, batch)
    f32_module = module.clone(dtype=jnp.float32)
    assert not uses_kernel(models.logits_fn(f32_module), params, batch)
    got = np.asarray(jax.jit(fn)(params16, batch))
    xla = np.asarray(jax.jit(models.logits_fn(xla_module))(params16, batch))
    full = np.asarray(jax.jit(models.logits_fn(f32_module))(params, batch))
    spread = np.abs(full).max()
    assert np.abs(got - full).max() < 0.05 * spread and np.abs(xla - full).max() < 0.05 * spread
    assert np.abs(got - full).max() <= 2 * np.abs(xla - full).max() + 1e-3


def test_status_in_words():
    kernels._forget()
    text = dense.status()
    assert text.startswith("fused bf16 CPU kernel") or text.startswith("XLA ops (")


def test_training_keeps_the_pre_activation():
    """Under differentiation the kernel runs once, without the activation, and the backward pass takes two dots (dx
    and dw): no matmul recomputed. Its value is the inference value within two bf16 roundings."""
    needs_kernel("dense")
    rng = np.random.default_rng(6)
    x, w, b = bf16(rng.standard_normal((8, 32))), bf16(rng.standard_normal((32, 48)) / 6), bf16(rng.standard_normal(48))

    def loss(x, w, b):
        return jnp.sum(dense.dense(x, w, b, "gelu").astype(jnp.float32) ** 2)

    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, w, b).as_text()
    assert text.count("cascade_dense") == 1 and text.count("stablehlo.dot_general") == 2
    (value, _), inference = jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, b), loss(x, w, b)
    assert abs(float(value) - float(inference)) <= 2.0 ** -6 * abs(float(inference))
