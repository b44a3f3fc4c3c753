"""Tests for cascade_jax.cascade: the batched cascade against a plain per-example loop of Algorithm 1.

Compilations dominate the cost on a shared CPU, so the tiny BERT stages share two apply_fns (a 1-layer and a
2-layer model) and a small, fixed set of batch shapes; the property test uses a cheap synthetic model.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cascade_jax import cascade, flops, models

SEQ_LEN = 12
N_EXAMPLES = 33
# Two batching plans shared by the tests below: (batch_size, buckets, length_multiple).
PLAN_FULL = (8, None, None)  # One shape per apply_fn: (8, 12).
PLAN_TRIM = (5, (5, 2), 6)  # Tails padded to 2 or 5 rows, batches cut to length 6 or 12.


# ---------------------------------------------------------------------------------------------------------------
# Tiny models and data.


def _tiny_config(layers, labels=3):
    return models.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=16, num_labels=labels,
    )


def _random_params(module, seed):
    """Random parameters shaped like ``init_params`` (filled with numpy: no eager init), spread wide enough that
    the stages' confidences vary a lot between examples."""
    shapes = jax.eval_shape(lambda: models.init_params(module, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "scale":
            return jnp.asarray(1.0 + 0.1 * rng.standard_normal(s.shape), jnp.float32)
        scale = 0.1 if leaf == "bias" else 0.3
        return jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def bert_stages():
    """Three tiny BERT stages: two 1-layer models sharing one apply_fn, and a 2-layer model."""
    out = []
    fns = {}
    for name, layers, seed in (("a", 1, 0), ("b", 1, 1), ("c", 2, 2)):
        cfg = _tiny_config(layers)
        if layers not in fns:
            module = models.BertForSequenceClassification(cfg)
            fns[layers] = (module, models.logits_fn(module))
        module, fn = fns[layers]
        out.append(cascade.Stage(fn, _random_params(module, seed), layers, config=cfg, name=name))
    return {"2": [out[0], out[2]], "3": out}


def _make_inputs(n, seq_len=SEQ_LEN, seed=0, vocab=50, min_len=1):
    """Right-padded random examples of varying real length, with a second segment in some."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, seq_len + 1, n)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, (n, seq_len)) * mask
    split = rng.integers(1, seq_len + 1, n)
    token_types = ((np.arange(seq_len)[None, :] >= split[:, None]) * mask).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}


@pytest.fixture(scope="module")
def data():
    return _make_inputs(N_EXAMPLES, seed=1)


# ---------------------------------------------------------------------------------------------------------------
# The plain reference: Algorithm 1, one example at a time.

_SINGLE = {}


def _single_example_logits(stage, example):
    fn = _SINGLE.setdefault(stage.apply_fn, jax.jit(stage.apply_fn))
    return np.asarray(fn(stage.params, example), np.float64)[0]


def reference_cascade(stages, inputs, thresholds, exit_rule):
    """For each example, for each stage: run the stage on that example alone; exit if confident; the last answers."""
    n = len(inputs["input_ids"])
    probs, exit_stage, layers = [], [], []
    for i in range(n):
        example = {k: np.asarray(v[i : i + 1], np.int32) for k, v in inputs.items()}
        spent = 0
        for k, stage in enumerate(stages):
            logits = _single_example_logits(stage, example)
            p = np.exp(logits - logits.max())
            p = p / p.sum()
            spent += stage.num_layers
            if k == len(stages) - 1:
                break
            if exit_rule == "max_prob":
                confident = p.max() > thresholds[k]
            else:
                entropy = -sum(q * math.log(q) for q in p if q > 0) / math.log(len(p))
                confident = entropy < thresholds[k]
            if confident:
                break
        probs.append(p)
        exit_stage.append(k)
        layers.append(spent)
    return np.array(probs), np.array(exit_stage), np.array(layers)


def _assert_same(result, other, tol=1e-6):
    np.testing.assert_allclose(result.probs, other.probs, rtol=0, atol=tol)
    np.testing.assert_array_equal(result.exit_stage, other.exit_stage)
    np.testing.assert_array_equal(result.layers, other.layers)
    np.testing.assert_array_equal(result.evaluated, other.evaluated)
    np.testing.assert_array_equal(result.answered, other.answered)


def _assert_matches_reference(result, stages, inputs, thresholds, exit_rule, tol=1e-6):
    probs, exit_stage, layers = reference_cascade(stages, inputs, thresholds, exit_rule)
    assert result.probs.dtype == np.float32 and result.probs.shape == probs.shape
    np.testing.assert_allclose(result.probs, probs, rtol=0, atol=tol)
    np.testing.assert_array_equal(result.exit_stage, exit_stage)
    np.testing.assert_array_equal(result.layers, layers)
    n_stages = len(stages)
    np.testing.assert_array_equal(result.answered, np.bincount(exit_stage, minlength=n_stages))
    np.testing.assert_array_equal(result.evaluated, [(exit_stage >= k).sum() for k in range(n_stages)])


def _safe_threshold(scores, q, margin=1e-4):
    """A threshold near the q-quantile of ``scores`` that lies in a gap wider than 2 * margin, so float rounding
    between batch shapes cannot flip a decision."""
    s = np.unique(np.asarray(scores, np.float64).ravel())
    gaps = np.diff(s)
    mids = (s[:-1] + s[1:]) / 2
    ok = gaps > 2 * margin
    assert ok.any()
    target = np.quantile(s, q)
    return float(mids[ok][np.argmin(np.abs(mids[ok] - target))])


def _threshold_cases(sim, exit_rule):
    """Scalar thresholds (extremes and two inside the data) and a per-stage sequence."""
    stat = sim.max_prob if exit_rule == "max_prob" else sim.entropy
    non_final = stat[:-1]
    cases = [_safe_threshold(non_final, 0.3), _safe_threshold(non_final, 0.7)]
    cases += [0.0, 1.5] if exit_rule == "max_prob" else [0.0, 1.01]
    per_stage = [_safe_threshold(stat[k], q) for k, q in zip(range(len(stat) - 1), (0.8, 0.4))]
    cases.append(tuple(per_stage))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# run == simulate == the per-example loop.


@pytest.mark.parametrize("exit_rule", ["max_prob", "entropy"])
@pytest.mark.parametrize("plan", [PLAN_FULL, PLAN_TRIM], ids=["batch8", "batch5-trim"])
@pytest.mark.parametrize("depth", ["2", "3"])
@pytest.mark.parametrize("tail", cascade.TAIL_RULES)
def test_run_equals_simulate_and_reference(bert_stages, data, depth, plan, exit_rule, tail):
    stages = bert_stages[depth]
    batch_size, buckets, length_multiple = plan
    kw = dict(buckets=buckets, length_multiple=length_multiple, tail=tail)
    sim = cascade.simulate_all(stages, data, batch_size, **kw)
    assert sim.probs.shape == (len(stages), N_EXAMPLES, 3)
    for threshold in _threshold_cases(sim, exit_rule):
        taus = threshold if isinstance(threshold, tuple) else (threshold,) * (len(stages) - 1)
        result = cascade.run(stages, data, threshold, batch_size, exit_rule=exit_rule, **kw)
        _assert_same(result, sim.result(threshold, exit_rule))
        _assert_matches_reference(result, stages, data, taus, exit_rule)
        assert result.thresholds == taus and result.exit_rule == exit_rule
    # The interior thresholds really split the examples over the stages.
    middle = cascade.run(stages, data, _threshold_cases(sim, exit_rule)[1], batch_size, exit_rule=exit_rule, **kw)
    assert 0 < middle.answered[0] < N_EXAMPLES


def test_stacked_simulations_equal_the_joint_one(bert_stages, data):
    stages = bert_stages["3"]
    joint = cascade.simulate_all(stages, data, 5, buckets=(5, 2), length_multiple=6)
    apart = [cascade.simulate_all([s], data, 5, buckets=(5, 2), length_multiple=6) for s in stages]
    stacked = cascade.CascadeSimulation.stack(apart)
    for field in ("probs", "max_prob", "entropy"):
        np.testing.assert_array_equal(getattr(stacked, field), getattr(joint, field))
    assert stacked.num_layers == joint.num_layers
    _assert_same(stacked.result(0.6), joint.result(0.6))
    with pytest.raises(ValueError, match="different examples"):
        cascade.CascadeSimulation.stack([apart[0], cascade.simulate_all(stages[:1], {k: v[:5] for k, v in data.items()}, 5)])


def test_simulate_returns_the_result(bert_stages, data):
    stages = bert_stages["3"]
    direct = cascade.simulate(stages, data, 0.6, 8)
    _assert_same(direct, cascade.simulate_all(stages, data, 8).result(0.6))
    _assert_same(direct, cascade.run(stages, data, 0.6, 8))


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping with a cheap synthetic model whose output identifies the example.


def _synthetic_fn(params, batch):
    """Logits from the example's first token (its id) and the sum of its real tokens: distinct per example, and
    unchanged by cutting padding columns."""
    ids = batch["input_ids"].astype(jnp.float32)
    first = ids[:, 0]
    total = jnp.sum(ids * batch["attention_mask"], axis=-1)
    # Only exactly rounded operations (no sin/exp), so the logits do not depend on the batch shape.
    z = params["scale"] * (jnp.mod(first * params["freq"] + total * 0.013 + params["phase"], 2.0) - 1.0)
    return jnp.stack([z, -z, 0.5 * z + params["bias"]], axis=-1)


def _synthetic_stages(layers=(2, 4, 6)):
    out = []
    for k, nl in enumerate(layers):
        params = {"scale": np.float32(2.0 + k), "freq": np.float32(0.7 + 0.3 * k), "phase": np.float32(k),
                  "bias": np.float32(0.1 * k)}
        out.append(cascade.Stage(_synthetic_fn, params, nl, config=_tiny_config(nl), name=f"s{k}"))
    return out


def _identified_inputs(n, seq_len=6, seed=0):
    inputs = _make_inputs(n, seq_len=seq_len, seed=seed, vocab=9, min_len=2)
    inputs["input_ids"][:, 0] = np.arange(n) + 1  # Token 0 names the example.
    return inputs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.one_of(st.sampled_from([1, 7, 33]), st.integers(1, 40)),
    batch_size=st.integers(1, 9),
    bucket_picks=st.lists(st.integers(1, 9), max_size=3),
    length_multiple=st.sampled_from([None, 4]),
    depth=st.integers(1, 3),
    exit_rule=st.sampled_from(cascade.EXIT_RULES),
    taus=st.lists(st.floats(0.0, 1.05), min_size=2, max_size=2),
    per_stage=st.booleans(),
    seed=st.integers(0, 3),
    tail=st.sampled_from(cascade.TAIL_RULES),
)
def test_no_example_lost_duplicated_or_reordered(
    n, batch_size, bucket_picks, length_multiple, depth, exit_rule, taus, per_stage, seed, tail
):
    stages = _synthetic_stages()[:depth]
    inputs = _identified_inputs(n, seed=seed)
    buckets = sorted({b for b in bucket_picks if b <= batch_size}) or None
    threshold = tuple(taus[: depth - 1]) if per_stage else taus[0]
    kw = dict(buckets=buckets, length_multiple=length_multiple, tail=tail)
    sim = cascade.simulate_all(stages, inputs, batch_size, **kw)
    stat = sim.max_prob if exit_rule == "max_prob" else sim.entropy
    per = threshold if per_stage else (threshold,) * (depth - 1)
    for k, tau in enumerate(per):  # Keep clear of exact ties, which float rounding may break either way.
        assume(np.min(np.abs(stat[k].astype(np.float64) - tau)) > 1e-5)

    result = cascade.run(stages, inputs, threshold, batch_size, exit_rule=exit_rule, **kw)
    _assert_matches_reference(result, stages, inputs, per, exit_rule, tol=1e-6)
    _assert_same(result, sim.result(threshold, exit_rule))
    assert result.probs.shape == (n, 3) and result.exit_stage.shape == (n,) and result.layers.shape == (n,)
    assert result.answered.sum() == n  # Every example answered exactly once; padding rows answer nothing.
    # Each stage ran on exactly the examples that reached it (padding rows are not counted).
    assert [int(e) for e in result.evaluated] == [int((result.exit_stage >= k).sum()) for k in range(depth)]


@pytest.mark.parametrize("n", [1, 7, 33])
def test_threshold_extremes_and_exact_speedups(n):
    stages = _synthetic_stages(layers=(2, 4))
    inputs = _identified_inputs(n)
    f2, f4 = cascade.stage_flops(stages, 6)
    assert f2 < f4

    everyone_exits = cascade.run(stages, inputs, 0.0, 8)
    assert (everyone_exits.exit_stage == 0).all() and (everyone_exits.layers == 2).all()
    assert list(everyone_exits.answered) == [n, 0] and list(everyone_exits.evaluated) == [n, 0]
    assert everyone_exits.layer_speedup == 2.0  # 4 / 2
    assert everyone_exits.flops_speedup([f2, f4]) == f4 / f2

    nobody_exits = cascade.run(stages, inputs, 1.5, 8)
    assert (nobody_exits.exit_stage == 1).all() and (nobody_exits.layers == 6).all()
    assert list(nobody_exits.answered) == [0, n] and list(nobody_exits.evaluated) == [n, n]
    assert nobody_exits.layer_speedup == 4 / 6
    assert nobody_exits.flops_speedup([f2, f4]) == f4 / (f2 + f4)
    # The last stage answers with its own distribution.
    last_only = cascade.run(stages[1:], inputs, (), 8)
    np.testing.assert_allclose(nobody_exits.probs, last_only.probs, rtol=0, atol=1e-6)

    # Entropy: nothing is below 0, everything is below 1.01 (normalised entropy is at most 1).
    assert (cascade.run(stages, inputs, 0.0, 8, exit_rule="entropy").exit_stage == 1).all()
    assert (cascade.run(stages, inputs, 1.01, 8, exit_rule="entropy").exit_stage == 0).all()


def test_speedups_on_a_mixed_result():
    stages = _synthetic_stages(layers=(2, 4, 6))
    inputs = _identified_inputs(20)
    result = cascade.run(stages, inputs, (0.5, 0.5), 8)
    counts = result.answered
    assert counts.sum() == 20
    mean_layers = (counts[0] * 2 + counts[1] * 6 + counts[2] * 12) / 20
    assert result.layer_speedup == pytest.approx(6 / mean_layers, rel=1e-12)
    # Per-example FLOPs (here, each example's real length) summed over the stages each went through.
    lengths = inputs["attention_mask"].sum(1)
    per_stage = cascade.stage_flops(stages, lengths)
    cost = np.array([sum(per_stage[k][i] for k in range(result.exit_stage[i] + 1)) for i in range(20)])
    np.testing.assert_array_equal(result.example_flops(per_stage), cost)
    assert result.flops_speedup(per_stage) == pytest.approx(per_stage[2].mean() / cost.mean(), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Compilation.


def test_no_compilation_after_warmup(bert_stages):
    stages = bert_stages["3"]
    batch_size, buckets, length_multiple = PLAN_TRIM
    kw = dict(buckets=buckets, length_multiple=length_multiple)
    cascade.warmup(stages, batch_size, SEQ_LEN, **kw)
    assert cascade.warmup(stages, batch_size, SEQ_LEN, **kw) == 0  # Everything is compiled now.
    before = cascade.compile_count()
    first = cascade.run(stages, _make_inputs(N_EXAMPLES, seed=5), 0.55, batch_size, **kw)
    # Different data (other lengths), threshold, rule: other tails and bucket choices, and still no compilation.
    second = cascade.run(stages, _make_inputs(N_EXAMPLES, seed=6), (0.9, 0.3), batch_size, **kw)
    third = cascade.run(stages, _make_inputs(N_EXAMPLES, seed=7), 0.8, batch_size, exit_rule="entropy", **kw)
    assert cascade.compile_count() == before
    assert len({tuple(r.evaluated) for r in (first, second, third)}) > 1
    # New Stage objects with the same apply_fns reuse the compiled programs too.
    again = [cascade.Stage(s.apply_fn, s.params, s.num_layers) for s in stages]
    cascade.run(again, _make_inputs(N_EXAMPLES, seed=8), 0.55, batch_size, **kw)
    assert cascade.compile_count() == before


def test_compile_counter_counts_new_shapes():
    fresh_fn = functools.partial(_synthetic_fn)  # A new apply_fn: nothing compiled for it yet.
    stages = [cascade.Stage(fresh_fn, s.params, 3) for s in _synthetic_stages(layers=(3,))]
    before = cascade.compile_count()
    assert cascade.warmup(stages, 3, 7, buckets=(1, 2)) == 3  # Three bucket sizes, one length.
    assert cascade.warmup(stages, 3, 7, buckets=(1, 2)) == 0
    assert cascade.warmup(stages, 3, 7, buckets=(1, 2), length_multiple=4) == 3  # Lengths 4 and 7; 7 is done.
    assert cascade.compile_count() == before + 6


# ---------------------------------------------------------------------------------------------------------------
# FLOPs.


def test_macs_against_a_hand_count():
    cfg = models.BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=12, num_labels=3)
    seq = 5
    per_layer = (
        3 * seq * 8 * 8  # query, key, value: [5, 8] x [8, 8]
        + seq * 8 * 8  # attention output dense
        + 2 * (seq * seq * 4)  # scores, 2 heads x [5, 4] x [4, 5]
        + 2 * (seq * seq * 4)  # context, 2 heads x [5, 5] x [5, 4]
        + seq * 8 * 12  # intermediate dense
        + seq * 12 * 8  # output dense
    )
    assert per_layer == 1280 + 400 + 960
    heads = 8 * 8 + 8 * 3  # pooler on [CLS], classifier
    assert flops.bert_macs(cfg, seq) == 2 * per_layer + heads == 5368
    assert flops.bert_flops(cfg, seq) == 2 * 5368
    parts = flops.bert_macs_breakdown(cfg, seq)
    assert parts["embeddings"] == 0 and parts["pooler"] == 64 and parts["classifier"] == 24
    np.testing.assert_array_equal(flops.bert_macs(cfg, np.array([5, 9])), [5368, flops.bert_macs(cfg, 9)])


def _dot_general_macs(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract_lhs, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract_lhs)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _dot_general_macs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _dot_general_macs(sub)
    return total


@pytest.mark.parametrize("layers,seq", [(1, 7), (2, 12)])
def test_macs_match_the_model_matmuls(layers, seq):
    """The analytic count equals the multiply-adds of every matmul in the real model's program (batch 1)."""
    cfg = _tiny_config(layers)
    module = models.BertForSequenceClassification(cfg)
    params = jax.eval_shape(lambda: models.init_params(module, jax.random.PRNGKey(0)))
    ids = jax.ShapeDtypeStruct((1, seq), jnp.int32)
    jaxpr = jax.make_jaxpr(models.logits_fn(module))(params, {"input_ids": ids, "attention_mask": ids,
                                                               "token_type_ids": ids})
    assert _dot_general_macs(jaxpr.jaxpr) == flops.bert_macs(cfg, seq)


# ---------------------------------------------------------------------------------------------------------------
# Wall clock and argument checks.


def test_measure_wallclock(bert_stages, data):
    stages = bert_stages["2"]
    clock = iter(range(1000)).__next__  # A fake clock: each call advances by one "second".
    timing = cascade.measure_wallclock(stages, data, 0.6, 8, repeats=2, clock=clock)
    assert timing.cascade_s == (1, 1) and timing.baseline_s == (1, 1) and timing.speedup == 1.0
    assert timing.compiles_during_timing == 0 and timing.num_examples == N_EXAMPLES
    _assert_same(timing.result, cascade.run(stages, data, 0.6, 8))
    assert timing.layer_speedup == timing.result.layer_speedup
    real = cascade.measure_wallclock(stages, data, 0.6, 8, repeats=1)
    assert real.cascade_s[0] > 0 and real.baseline_s[0] > 0 and real.compiles_during_timing == 0


def test_default_buckets():
    assert cascade.default_buckets(32) == (32, 16, 8)
    assert cascade.default_buckets(8) == (8,)
    assert cascade.default_buckets(5) == (5,)
    assert cascade.default_buckets(100) == (100, 50, 25, 13, 7)


def _pieces_reference(n, batch_size, buckets, tail):
    """Batching written as a plain loop over rows still to place: a full batch while one fits; then, for "split",
    the largest bucket that the rest fills completely; whatever is left goes into the smallest bucket holding it."""
    sizes = sorted(set(buckets) | {batch_size})
    out, left = [], n
    while left:
        if left >= batch_size:
            take = batch_size
        elif tail == "split" and any(b <= left for b in sizes):
            take = max(b for b in sizes if b <= left)
        else:
            out.append((left, min(b for b in sizes if b >= left)))
            break
        out.append((take, take))
        left -= take
    return tuple(out)


def test_batch_pieces_examples():
    # The benchmark's case: 200 survivors at batch 256.
    assert cascade.batch_pieces(200, 256) == ((128, 128), (64, 64), (8, 8))
    assert cascade.batch_pieces(200, 256, tail="pad") == ((200, 256),)
    assert cascade.batch_pieces(1200, 256) == ((256, 256),) * 4 + ((128, 128), (32, 32), (16, 16))
    assert cascade.batch_pieces(13, 8) == ((8, 8), (5, 8))
    assert cascade.batch_pieces(0, 8) == ()
    assert cascade.batch_pieces(30, 100) == ((25, 25), (5, 7))
    assert cascade.batch_pieces(7, 4, buckets=(4,)) == ((4, 4), (3, 4))  # One bucket: both rules agree.
    with pytest.raises(ValueError, match="tail"):
        cascade.batch_pieces(5, 4, tail="drop")
    with pytest.raises(ValueError, match="tail"):
        cascade.run(_synthetic_stages(layers=(1,)), _identified_inputs(3), (), 4, tail="drop")


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 300),
    batch_size=st.integers(1, 64),
    bucket_picks=st.lists(st.integers(1, 64), max_size=4),
    tail=st.sampled_from(cascade.TAIL_RULES),
)
def test_batch_pieces_against_reference(n, batch_size, bucket_picks, tail):
    buckets = sorted({b for b in bucket_picks if b <= batch_size}) or None
    sizes = cascade.default_buckets(batch_size) if buckets is None else tuple(buckets)
    pieces = cascade.batch_pieces(n, batch_size, buckets=buckets, tail=tail)
    assert pieces == _pieces_reference(n, batch_size, sizes, tail)
    assert sum(real for real, _ in pieces) == n
    allowed = set(sizes) | {batch_size}
    assert all(padded in allowed and 1 <= real <= padded for real, padded in pieces)
    assert all(real == padded for real, padded in pieces[:-1])  # Only the last call is padded...
    if pieces and tail == "split":  # ... and with "split" by fewer rows than the smallest bucket.
        assert pieces[-1][1] - pieces[-1][0] < min(allowed)


def test_bad_arguments_are_rejected():
    stages = _synthetic_stages(layers=(1, 2, 3))
    inputs = _identified_inputs(4)
    with pytest.raises(ValueError, match="one per non-final"):
        cascade.run(stages, inputs, (0.5,), 4)
    with pytest.raises(ValueError, match="exit_rule"):
        cascade.run(stages, inputs, 0.5, 4, exit_rule="margin")
    with pytest.raises(ValueError, match="bucket"):
        cascade.run(stages, inputs, 0.5, 4, buckets=(8,))
    with pytest.raises(ValueError, match="batch_size"):
        cascade.run(stages, inputs, 0.5, 0)
    with pytest.raises(ValueError, match="no examples"):
        cascade.run(stages, {k: v[:0] for k, v in inputs.items()}, 0.5, 4)
    with pytest.raises(ValueError, match="attention_mask"):
        cascade.run(stages, {**inputs, "attention_mask": inputs["attention_mask"][:, :3]}, 0.5, 4)
    with pytest.raises(ValueError, match="at least one stage"):
        cascade.run([], inputs, 0.5, 4)
    with pytest.raises(ValueError, match="num_layers"):
        cascade.Stage(_synthetic_fn, {}, 0)
