"""The library's inference compile options: chosen per backend, overridable, and applied to its jitted forward; the
on-disk compilation cache."""

import os
import subprocess
import sys

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


# Two separately built jitted closures of the same computation (as a baseline's step, rebuilt for each seed), with
# every program stored (no one-second threshold); prints what enable_compilation_cache said, the persistent-cache
# hits JAX reported, and the result.
_CACHE_PROBE = """
import jax, jax.numpy as jnp
from cascade_jax import xla
said = xla.enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
def build():
    return jax.jit(lambda w, x: jnp.tanh(x @ w).sum(axis=0) * 3.0)
w, x = jnp.full((16, 16), 0.1), jnp.ones((4, 16))
hits.clear()  # Count the two closures' programs only.
out = [build()(w, x) for _ in range(2)]
print(jax.config.jax_compilation_cache_max_size, said, len(hits), float(out[0][0]), float(out[1][0]))
"""


def _cache_probe(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", xla.CACHE_ENV)}
    full.update(CASCADE_JAX_CACHE=str(tmp_path), **env)
    out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=full, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    size, rest = out.stdout.split("\n")[-2].split(maxsplit=1)
    said, hits, a, b = rest.rsplit(maxsplit=3)
    if said.startswith(str(tmp_path / "xla")):
        assert int(size) == xla.CACHE_MAX_BYTES  # Bounded (transformers brings filelock).
    return said, int(hits), float(a), float(b)


def test_the_compilation_cache_serves_a_rebuilt_function_and_a_later_process(tmp_path):
    said, hits, a, b = _cache_probe(tmp_path)
    folder = tmp_path / "xla" / xla._machine_key()
    assert said == str(folder) and any(folder.iterdir()), said
    assert hits == 1 and a == b  # The second closure's program came from the cache, with the same result.
    entries = sorted(p.name for p in folder.iterdir())
    said, hits, a2, _ = _cache_probe(tmp_path)  # A new process: both closures load, nothing new is written.
    assert hits == 2 and a2 == a and sorted(p.name for p in folder.iterdir()) == entries


def test_the_compilation_cache_can_be_turned_off_and_a_users_folder_is_kept(tmp_path):
    said, hits, _, _ = _cache_probe(tmp_path, **{xla.CACHE_ENV: "0"})
    assert said == f"off ({xla.CACHE_ENV}=0)" and hits == 0 and not (tmp_path / "xla").exists()
    mine = tmp_path / "mine"
    said, hits, _, _ = _cache_probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine))
    assert said == f"{mine} (set by the user)" and hits == 1 and not (tmp_path / "xla").exists()


def test_machine_key_tells_cpus_apart_on_x86_and_arm(monkeypatch):
    """The key of compiled programs (and of the C++ kernels built with -march=native) follows the CPU: x86's model
    name and flags, ARM's implementer, part and features."""
    import builtins
    import io

    real_open = builtins.open

    def keys(*cpuinfos):
        out = []
        for text in cpuinfos:
            monkeypatch.setattr(builtins, "open", lambda f, *a, **k: io.StringIO(text) if f == "/proc/cpuinfo"
                                else real_open(f, *a, **k))
            out.append(xla._machine_key())
        monkeypatch.setattr(builtins, "open", real_open)
        return out

    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd40\n"
    a, b, c, d, e = keys(x86, x86.replace(" avx512f", ""), arm, arm.replace("0xd40", "0xd0c"), arm.replace(" sve", ""))
    assert len({a, b, c, d, e}) == 5
    assert keys(x86) == [a]
