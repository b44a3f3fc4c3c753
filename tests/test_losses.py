"""Tests for cascade_jax.losses: references are plain Python loops / torch, written independently of the code."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_jax import losses


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------------------------------
# plain-loop references


def ref_all_pairs(c, d, margin, m=None):
    """Mean hinge over (easy i, hard j) pairs, by listing the easy and hard rows first."""
    n = len(c)
    m = [True] * n if m is None else [bool(x) for x in m]
    easy = [c[i] for i in range(n) if m[i] and d[i] == 0]
    hard = [c[j] for j in range(n) if m[j] and d[j] != 0]
    terms = [max(0.0, margin - (ce - ch)) for ce in easy for ch in hard]
    return sum(terms) / len(terms) if terms else 0.0


def ref_logistic(c, d, margin, m, tau):
    terms = []
    for i in range(len(c)):
        for j in range(len(c)):
            if m[i] and m[j] and d[i] == 0 and d[j] == 1:
                z = (margin - (c[i] - c[j])) / tau
                terms.append(tau * (max(z, 0.0) + math.log1p(math.exp(-abs(z)))))
    return sum(terms) / len(terms) if terms else 0.0


def ref_soft(c, s, margin, m):
    num = den = 0.0
    for i in range(len(c)):
        for j in range(len(c)):
            if m[i] and m[j] and s[j] > s[i]:
                w = s[j] - s[i]
                num += w * max(0.0, margin - (c[i] - c[j]))
                den += w
    return num / den if den > 0 else 0.0


batches = st.integers(1, 9).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.floats(0.0, 1.0),
    )
)

EDGE_CASES = [
    # (confidence, difficulty, mask)
    ([0.9, 0.8, 0.4], [0, 0, 0], [1, 1, 1]),  # all easy
    ([0.9, 0.8, 0.4], [1, 1, 1], [1, 1, 1]),  # all hard
    ([0.7, 0.6], [0, 1], [1, 1]),  # one of each
    ([0.2, 0.6], [1, 0], [1, 1]),  # one of each, hard first
    ([0.5], [0], [1]),  # batch of one
    ([0.5], [1], [1]),
    ([0.9, 0.1, 0.5, 0.3, 0.8], [0, 1, 1, 0, 1], [1, 0, 1, 1, 0]),  # masked rows
    ([0.9, 0.1, 0.5], [0, 1, 0], [0, 0, 0]),  # everything masked
    ([0.9, 0.1, 0.5], [0, 1, 0], [1, 0, 1]),  # the only hard row is masked
]


# ---------------------------------------------------------------------------------------------------------------
# dar_loss


PAD = 10


def _padded(c, d, m, fill=np.nan):
    """Pad a batch to PAD rows with masked garbage, so that one jit compile serves every hypothesis example."""
    k = PAD - len(c)
    return (
        jnp.array(list(c) + [fill] * k, jnp.float64),
        jnp.array(list(d) + [1, 0] * (k // 2) + [1] * (k % 2)),
        jnp.array(list(m) + [False] * k),
    )


_jit_dar = jax.jit(losses.dar_loss)


@settings(max_examples=40, deadline=None)
@given(batches)
def test_dar_loss_matches_double_loop(batch):
    c, d, m, margin = batch
    with jax.enable_x64(True):
        got = _jit_dar(*_padded(c, d, m)[:2], margin, _padded(c, d, m)[2])
        got_unmasked = _jit_dar(*_padded(c, d, [True] * len(c))[:2], margin, _padded(c, d, [True] * len(c))[2])
    assert float(got) == pytest.approx(ref_all_pairs(c, d, margin, m), abs=1e-12)
    assert float(got_unmasked) == pytest.approx(ref_all_pairs(c, d, margin), abs=1e-12)


_jit_dar_value_and_grad = jax.jit(jax.value_and_grad(losses.dar_loss))


@pytest.mark.parametrize("c,d,m", EDGE_CASES)
def test_dar_loss_edge_cases(c, d, m):
    margin = 0.3
    value, grad = _jit_dar_value_and_grad(jnp.array(c), jnp.array(d), margin, jnp.array(m, bool))
    assert value.dtype == jnp.float32
    assert float(value) == pytest.approx(ref_all_pairs(c, d, margin, m), abs=1e-6)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_dar_loss_jit_equals_eager():
    rng = np.random.default_rng(3)
    c = jnp.array(rng.uniform(size=6), jnp.float32)
    d = jnp.array([0, 1, 1, 0, 0, 1])
    m = jnp.array([True, True, False, True, True, True])
    eager = losses.dar_loss(c, d, 0.3, m)
    assert float(jax.jit(losses.dar_loss)(c, d, 0.3, m)) == pytest.approx(float(eager), abs=1e-7)
    assert float(eager) == pytest.approx(ref_all_pairs(np.asarray(c, float), d, 0.3, m), abs=1e-6)


def test_dar_loss_float_mask_and_difficulty():
    c = jnp.array([0.9, 0.1, 0.5, 0.3])
    want = losses.dar_loss(c, jnp.array([0, 1, 1, 0]), 0.5, jnp.array([True, True, False, True]))
    got = losses.dar_loss(c, jnp.array([0.0, 1.0, 1.0, 0.0]), 0.5, jnp.array([1.0, 1.0, 0.0, 1.0]))
    assert float(got) == float(want)


def test_dar_loss_no_pairs_is_zero_with_zero_gradient():
    c = jnp.array([0.9, 0.2, 0.5])
    for d, m in [([0, 0, 0], None), ([1, 1, 1], None), ([0, 1, 1], [False, True, True])]:
        mask = None if m is None else jnp.array(m)
        value, grad = jax.value_and_grad(losses.dar_loss)(c, jnp.array(d), 0.5, mask)
        assert float(value) == 0.0
        assert np.array_equal(np.asarray(grad), np.zeros(3))


def test_dar_loss_masked_garbage_does_not_leak():
    c = jnp.array([0.9, jnp.nan, 0.2, jnp.inf])
    d = jnp.array([0, 1, 1, 0])
    m = jnp.array([True, False, True, False])
    value, grad = jax.value_and_grad(losses.dar_loss)(c, d, 0.8, m)
    assert float(value) == pytest.approx(0.1, abs=1e-6)
    assert np.array_equal(np.asarray(grad), np.array([-1.0, 0.0, 1.0, 0.0], np.float32))


def test_dar_loss_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(0)
    c = rng.uniform(0.05, 0.95, size=8)
    d = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    m = np.array([1, 1, 1, 1, 0, 1, 1, 1], bool)
    margin = 0.3
    # Keep clear of the hinge kinks so the central difference is exact up to rounding.
    gaps = margin - (c[:, None] - c[None, :])
    assert np.min(np.abs(gaps)) > 1e-4

    @jax.jit
    def f(x):
        return losses.dar_loss(x, jnp.array(d), margin, jnp.array(m))

    grad = np.asarray(jax.grad(f)(jnp.array(c)))
    h = 1e-6
    fd = np.array([(float(f(jnp.array(c + h * e))) - float(f(jnp.array(c - h * e)))) / (2 * h) for e in np.eye(8)])
    np.testing.assert_allclose(grad, fd, atol=1e-8)
    assert grad[4] == 0.0  # masked row


def test_dar_loss_no_gradient_into_difficulty():
    c = jnp.array([0.3, 0.8, 0.5])
    grad_d = jax.grad(lambda d: losses.dar_loss(c, d, 0.5), argnums=0)(jnp.array([0.0, 1.0, 1.0]))
    assert np.array_equal(np.asarray(grad_d), np.zeros(3))


def test_confidence_from_logits():
    logits = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32) * 3
    want = torch.softmax(torch.tensor(logits), -1).max(-1).values.numpy()
    got = losses.confidence_from_logits(jnp.array(logits))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    bf16 = losses.confidence_from_logits(jnp.array(logits, jnp.bfloat16))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), want, atol=2e-2)


# ---------------------------------------------------------------------------------------------------------------
# cross entropy and distillation against torch


def _random_logits(seed, b=7, c=5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, c)).astype(np.float32) * 4
    labels = rng.integers(0, c, size=b)
    mask = rng.random(b) < 0.6
    mask[0] = True
    return logits, labels, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_matches_torch(seed):
    logits, labels, mask = _random_logits(seed)
    per_row = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="none").numpy()
    got = losses.cross_entropy(jnp.array(logits), jnp.array(labels), jnp.array(mask))
    assert float(got) == pytest.approx(float(per_row[mask].mean()), rel=1e-5)
    full = losses.cross_entropy(jnp.array(logits), jnp.array(labels))
    assert float(full) == pytest.approx(float(per_row.mean()), rel=1e-5)
    # Labels of masked rows are ignored, even out of range.
    bad = np.where(mask, labels, -100)
    assert float(losses.cross_entropy(jnp.array(logits), jnp.array(bad), jnp.array(mask))) == pytest.approx(
        float(got), rel=1e-6
    )


def test_cross_entropy_all_masked_and_extreme_logits():
    logits = jnp.array([[1000.0, -1000.0], [0.0, 0.0]])
    value, grad = jax.value_and_grad(losses.cross_entropy)(logits, jnp.array([1, 0]), jnp.array([False, False]))
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)
    assert float(losses.cross_entropy(logits, jnp.array([1, 0]), jnp.array([True, False]))) == pytest.approx(2000.0)
    assert losses.cross_entropy(logits.astype(jnp.bfloat16), jnp.array([0, 0])).dtype == jnp.float32


@pytest.mark.parametrize("seed,temperature", [(0, 1.0), (1, 2.0), (2, 4.0)])
def test_distillation_matches_torch(seed, temperature):
    student, labels, mask = _random_logits(seed)
    teacher = _random_logits(seed + 10)[0]
    s, t = torch.tensor(student), torch.tensor(teacher)
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="none").sum(-1)
    want = float((kl.numpy() * temperature**2)[mask].mean())
    got = losses.distillation_loss(jnp.array(student), jnp.array(teacher), temperature, jnp.array(mask))
    assert float(got) == pytest.approx(want, rel=1e-5)

    ce = float(F.cross_entropy(s, torch.tensor(labels), reduction="none").numpy()[mask].mean())
    combined = losses.distillation_objective(
        jnp.array(student), jnp.array(teacher), jnp.array(labels), temperature=temperature, alpha=0.7,
        mask=jnp.array(mask),
    )
    assert float(combined) == pytest.approx(0.7 * want + 0.3 * ce, rel=1e-5)


def test_distillation_self_is_zero_and_teacher_gets_no_gradient():
    logits, _, mask = _random_logits(3)
    x = jnp.array(logits)
    assert float(losses.distillation_loss(x, x, 2.0)) == pytest.approx(0.0, abs=1e-6)
    g_teacher = jax.grad(lambda t: losses.distillation_loss(x + 1.0 * jnp.arange(5.0), t, 2.0), argnums=0)(x)
    assert np.array_equal(np.asarray(g_teacher), np.zeros_like(logits))
    value, g = jax.value_and_grad(losses.distillation_loss)(x, x[::-1], 2.0, jnp.zeros(7, bool))
    assert float(value) == 0.0 and np.all(np.asarray(g) == 0)


# ---------------------------------------------------------------------------------------------------------------
# DAR variants


@functools.partial(jax.jit, static_argnums=0)
def _jit_variant(name, c, d, m, margin, tau, soft):
    options = {"tau": tau} if name == "logistic" else {}
    return losses.get_dar_variant(name)(c, d, m, margin=margin, soft_difficulty=soft, **options)


@settings(max_examples=25, deadline=None)
@given(batches, st.sampled_from([0.05, 0.3, 1.0]))
def test_variants_match_loops(batch, tau):
    c, d, m, margin = batch
    soft = [x * 0.2 + 0.8 * y for x, y in zip(np.linspace(0, 1, len(c)), d)]
    with jax.enable_x64(True):
        args = _padded(c, d, m)
        padded_soft = _padded(soft, d, m, fill=0.5)[0]
        all_pairs = _jit_variant("all_pairs", *args, margin, 0.0, None)
        logistic = _jit_variant("logistic", *args, margin, tau, None)
        soft_bin = _jit_variant("soft", *args, margin, 0.0, None)
        soft_val = _jit_variant("soft", *args, margin, 0.0, padded_soft)
    assert float(all_pairs) == pytest.approx(ref_all_pairs(c, d, margin, m), abs=1e-12)
    assert float(logistic) == pytest.approx(ref_logistic(c, d, margin, m, tau), abs=1e-10)
    assert float(soft_bin) == pytest.approx(ref_all_pairs(c, d, margin, m), abs=1e-12)
    assert float(soft_val) == pytest.approx(ref_soft(c, soft, margin, m), abs=1e-12)


def test_logistic_bounds_the_hinge():
    c = jnp.array([0.9, 0.3, 0.6, 0.5, 0.1])
    d = jnp.array([0, 1, 0, 1, 1])
    hinge = float(losses.dar_loss(c, d, 0.3))
    for tau in [0.3, 0.1, 0.01]:
        smooth = float(losses.get_dar_variant("logistic")(c, d, margin=0.3, tau=tau))
        assert hinge <= smooth <= hinge + tau * math.log(2) + 1e-6
    grad = jax.grad(lambda x: losses.get_dar_variant("logistic")(x, jnp.array([1, 1, 1, 1, 1]), margin=0.3))(c)
    assert np.array_equal(np.asarray(grad), np.zeros(5))


_authors_grad = jax.jit(
    jax.grad(lambda c, d, m, margin, rng: losses.get_dar_variant("authors")(c, d, m, margin=margin, rng=rng))
)


def _authors_partners(d, m, rng, margin=0.05):
    """Recover the partner of every valid easy row from gradients, one probe per easy row.

    Probe for row i: c_i = 0 and every other easy row at 1, hard rows at 0.5; with a small margin only row i's
    hinge is active, so the gradient is +1/|E| on its partner. Valid because partners do not depend on c.
    """
    d, m = np.asarray(d), np.asarray(m, bool)
    easy = np.flatnonzero(m & (d == 0))
    partners = {}
    for i in easy:
        c = np.where(d == 0, 1.0, 0.5)
        c[i] = 0.0
        g = np.asarray(_authors_grad(jnp.array(c, jnp.float32), jnp.array(d), jnp.array(m), margin, rng))
        (hit,) = np.flatnonzero(g > 0)
        assert g[hit] == pytest.approx(1.0 / len(easy))
        partners[int(i)] = int(hit)
    return partners


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_authors_variant_samples_valid_partners_and_matches_loop(seed):
    d = np.array([0, 1, 0, 1, 0, 1, 0, 0, 1, 0])
    m = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
    rng = jax.random.key(seed)
    partners = _authors_partners(d, m, rng)
    valid_hard = set(np.flatnonzero(m & (d == 1)).tolist())
    assert set(partners) == set(np.flatnonzero(m & (d == 0)).tolist())
    assert set(partners.values()) <= valid_hard

    c = np.random.default_rng(seed).uniform(size=10)
    margin = 0.3
    want = sum(max(0.0, margin - (c[i] - c[j])) for i, j in partners.items()) / len(partners)
    got = losses.get_dar_variant("authors")(jnp.array(c), jnp.array(d), jnp.array(m), margin=margin, rng=rng)
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_authors_variant_expectation_is_the_all_pairs_loss():
    # Every easy row always gets a partner, uniform over the valid hard rows, so
    # E[loss] = (1/|E|) sum_i (1/|H|) sum_j hinge_ij = the all-pairs mean, exactly.
    c = jnp.array([0.9, 0.55, 0.4, 0.7, 0.65, 0.2, 0.8])
    d = jnp.array([0, 1, 0, 1, 0, 1, 1])
    m = jnp.array([True, True, True, True, True, True, False])
    loss = losses.get_dar_variant("authors")
    keys = jax.random.split(jax.random.key(42), 4000)
    samples = np.asarray(jax.jit(jax.vmap(lambda k: loss(c, d, m, margin=0.3, rng=k)))(keys), np.float64)
    want = ref_all_pairs(np.asarray(c, np.float64), np.asarray(d), 0.3, np.asarray(m))
    stderr = samples.std() / math.sqrt(len(samples))
    assert abs(samples.mean() - want) < 4 * stderr + 1e-6


def test_authors_variant_degenerate_cases():
    loss = losses.get_dar_variant("authors")
    c = jnp.array([0.9, 0.2, 0.5])
    for d, m in [([0, 0, 0], [1, 1, 1]), ([1, 1, 1], [1, 1, 1]), ([0, 1, 0], [1, 0, 1])]:
        value, grad = jax.value_and_grad(
            lambda x: loss(x, jnp.array(d), jnp.array(m, bool), margin=0.5, rng=jax.random.key(0))
        )(c)
        assert float(value) == 0.0 and np.array_equal(np.asarray(grad), np.zeros(3))
    with pytest.raises(ValueError, match="rng"):
        loss(c, jnp.array([0, 1, 0]), margin=0.5)


def test_register_custom_variant_and_errors():
    name = "test_mean_gap"

    @losses.register_dar_variant(name)
    def mean_gap(confidence, difficulty, mask, *, margin, rng, soft_difficulty=None, scale=1.0):
        """Hinge on the gap between the mean easy and mean hard confidence."""
        easy = (mask & ~difficulty).astype(confidence.dtype)
        hard = (mask & difficulty).astype(confidence.dtype)
        gap = jnp.sum(easy * confidence) / jnp.maximum(easy.sum(), 1) - jnp.sum(hard * confidence) / jnp.maximum(
            hard.sum(), 1
        )
        return scale * jax.nn.relu(margin - gap)

    try:
        assert name in losses.dar_variant_names()
        loss = losses.get_dar_variant(name)
        c = jnp.array([0.9, 0.5, 0.6, 0.8])
        d = jnp.array([0, 1, 0, 1])
        m = jnp.array([True, True, True, False])
        value = jax.jit(lambda c: loss(c, d, m, margin=0.5, scale=2.0))(c)
        assert float(value) == pytest.approx(2.0 * (0.5 - (0.75 - 0.5)), abs=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            losses.register_dar_variant(name, mean_gap)
        losses.register_dar_variant(name, mean_gap, overwrite=True)
    finally:
        losses._DAR_VARIANTS.pop(name, None)
    with pytest.raises(KeyError) as err:
        losses.get_dar_variant(name)
    for known in ("all_pairs", "authors", "logistic", "soft"):
        assert known in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# cross-device pairing


def _sharded_batch(seed, devices=3, per_device=4):
    rng = np.random.default_rng(seed)
    n = devices * per_device
    c = rng.uniform(size=n).astype(np.float32)
    d = rng.integers(0, 2, size=n)
    m = rng.random(n) < 0.8
    return c, d, m, (devices, per_device)


@pytest.mark.parametrize("seed", [0, 1])
def test_dar_gather_equals_global_batch(seed):
    c, d, m, shape = _sharded_batch(seed)
    margin = 0.4

    def local(c, d, m):
        return losses.dar_loss(c, d, margin, m, axis_name="data")

    def global_loss(c):
        return losses.dar_loss(c, jnp.array(d), margin, jnp.array(m))

    ds, ms = d.reshape(shape), m.reshape(shape)

    @jax.jit
    def mapped(x):
        per_device = jax.vmap(local, axis_name="data")(x, ds, ms)
        # The loss as a function of all confidences.
        grad_all = jax.grad(lambda x: jnp.mean(jax.vmap(local, axis_name="data")(x, ds, ms)))(x)
        # Per-device differentiation, as in a data-parallel step.
        grad_local = jax.vmap(jax.grad(local), axis_name="data")(x, ds, ms)
        return per_device, grad_all, grad_local

    per_device, grad_all, grad_local = mapped(jnp.array(c).reshape(shape))
    want, grad_global = jax.jit(jax.value_and_grad(global_loss))(jnp.array(c))
    np.testing.assert_allclose(np.asarray(per_device), float(want), rtol=1e-6)
    # Same gradient as on the concatenated batch.
    np.testing.assert_allclose(np.asarray(grad_all).reshape(-1), np.asarray(grad_global), atol=1e-6)
    # Device k gets n * dL/dc_k for its rows, so that averaging parameter gradients over devices (pmean)
    # reproduces the global gradient.
    np.testing.assert_allclose(np.asarray(grad_local).reshape(-1), shape[0] * np.asarray(grad_global), atol=1e-6)


def test_dar_gather_data_parallel_parameter_gradient():
    c, d, m, shape = _sharded_batch(2)
    features = np.random.default_rng(5).normal(size=(c.size, 3)).astype(np.float32)
    w = jnp.array([0.3, -0.2, 0.5])

    def conf(w, x):
        return jax.nn.sigmoid(x @ w)

    def device_step(w, x, d, m):
        g = jax.grad(lambda w: losses.dar_loss(conf(w, x), d, 0.5, m, axis_name="data"))(w)
        return jax.lax.pmean(g, "data")

    step = jax.jit(jax.vmap(device_step, in_axes=(None, 0, 0, 0), axis_name="data"))
    got = step(w, features.reshape(*shape, 3), d.reshape(shape), m.reshape(shape))
    want = jax.grad(lambda w: losses.dar_loss(conf(w, jnp.array(features)), jnp.array(d), 0.5, jnp.array(m)))(w)
    np.testing.assert_allclose(np.asarray(got), np.broadcast_to(np.asarray(want), got.shape), atol=1e-6)


@pytest.mark.parametrize("name", ["all_pairs", "authors", "logistic", "soft"])
def test_variants_gather_equals_global_batch(name):
    c, d, m, shape = _sharded_batch(3)
    soft = np.clip(d * 0.6 + np.linspace(0, 0.4, d.size), 0, 1).astype(np.float32)
    loss = losses.get_dar_variant(name)
    rng = jax.random.key(7)  # the same key on every device

    def local(c, d, m, s):
        return loss(c, d, m, margin=0.3, rng=rng, soft_difficulty=s, axis_name="data")

    def global_loss(c):
        return loss(c, jnp.array(d), jnp.array(m), margin=0.3, rng=rng, soft_difficulty=jnp.array(soft))

    args = (d.reshape(shape), m.reshape(shape), soft.reshape(shape))

    @jax.jit
    def mapped(x):
        per_device = jax.vmap(local, axis_name="data")(x, *args)
        return per_device, jax.grad(lambda x: jnp.mean(jax.vmap(local, axis_name="data")(x, *args)))(x)

    per_device, grad_mapped = mapped(jnp.array(c).reshape(shape))
    want, grad_global = jax.jit(jax.value_and_grad(global_loss))(jnp.array(c))
    np.testing.assert_allclose(np.asarray(per_device), float(want), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_mapped).reshape(-1), np.asarray(grad_global), atol=1e-6)
