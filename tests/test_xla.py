"""The library's inference compile options: chosen per backend, overridable, and applied to its jitted forward."""

import jax
import jax.numpy as jnp
import numpy as np

from cascade_jax import cascade, xla


def test_cpu_gets_the_ynn_option_and_other_backends_get_xla_defaults(monkeypatch):
    monkeypatch.delenv(xla.ENV_DEFAULTS, raising=False)
    assert xla.compiler_options("cpu") == xla.CPU_OPTIONS
    assert xla.compiler_options("gpu") == {} and xla.compiler_options("tpu") == {}
    monkeypatch.setenv(xla.ENV_DEFAULTS, "1")
    assert xla.compiler_options("cpu") == {}


def test_an_option_this_xla_does_not_know_is_left_out(monkeypatch):
    monkeypatch.delenv(xla.ENV_DEFAULTS, raising=False)
    monkeypatch.setattr(xla, "CPU_OPTIONS", {"xla_cpu_not_a_real_option_zz": ""})
    assert xla.compiler_options("cpu") == {}


def test_jit_applies_the_options_and_keeps_jit_semantics():
    f = xla.jit(lambda x, n: x * n, static_argnums=1)
    np.testing.assert_array_equal(f(jnp.arange(3.0), 2), [0.0, 2.0, 4.0])
    text = f.lower(jnp.arange(3.0), 2).as_text()
    assert "multiply" in text
    # The cascade's stage step is one of them: same results as a plain jit of the same function.
    apply_fn = lambda params, batch: batch["input_ids"].astype(jnp.float32) @ params  # noqa: E731
    params = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    batch = {"input_ids": jnp.asarray(np.random.default_rng(1).integers(0, 5, (2, 4)), jnp.int32)}
    probs, max_prob, _ = cascade._step(apply_fn, params, batch)
    np.testing.assert_allclose(probs, jax.nn.softmax(jax.jit(apply_fn)(params, batch)), rtol=1e-6)
    np.testing.assert_allclose(max_prob, probs.max(-1))


def test_a_bf16_call_gets_xla_defaults_and_a_float32_call_the_cpu_options(monkeypatch):
    # XLA's defaults send bf16 dots to YNNPACK (fast); the CPU options (YNN fusions off) are for float32.
    monkeypatch.delenv(xla.ENV_DEFAULTS, raising=False)
    assert xla.compiler_options("cpu", low_precision=True) == {}
    assert xla.is_low_precision({"w": jnp.ones(2, jnp.bfloat16), "n": 3}) and xla.is_low_precision(
        [np.ones(2, jnp.float16)])
    assert not xla.is_low_precision({"w": jnp.ones(2), "ids": np.ones(2, np.int32), "dtype": jnp.bfloat16})
    chosen = []
    monkeypatch.setattr(xla, "compiler_options", lambda backend=None, low_precision=False: chosen.append(
        low_precision) or {})
    f = xla.jit(lambda params, x: (x @ params["w"]).astype(jnp.float32))
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(f({"w": jnp.ones((3, 2))}, x), 3.0)
    np.testing.assert_allclose(f({"w": jnp.ones((3, 2), jnp.bfloat16)}, x.astype(jnp.bfloat16)), 3.0)
    f({"w": jnp.ones((3, 2))}, x)  # Both variants are kept: no new choice.
    assert chosen == [False, True]
