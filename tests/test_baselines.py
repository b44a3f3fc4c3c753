"""Baselines: exit rules against per-example references, layer/FLOPs accounting, the multi-exit model and its
training (DeeBERT freezes the backbone bitwise; PABEE trains everything)."""

import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cascade_jax import baselines, configs, curves, data, flops, losses, metrics, models
from tests import tiny

# ---------------------------------------------------------------------------------------------------------------
# Exit rules against plain per-example loops.


def _reference_confidence(probs, threshold, rule):
    """For each example: walk the layers, exit at the first confident one; the last layer answers."""
    num_layers, n, c = probs.shape
    out = []
    for i in range(n):
        for j in range(num_layers):
            p = [float(x) for x in probs[j, i]]
            if rule == "entropy":
                stat = -sum(q * math.log(q) for q in p if q > 0) / math.log(c)
                confident = stat < threshold
            else:
                confident = max(p) > threshold
            if confident or j == num_layers - 1:
                out.append(j)
                break
    return np.array(out)


def _first_argmax(row):
    best = 0
    for k, v in enumerate(row):
        if v > row[best]:
            best = k
    return best


def _reference_patience(scores, patience):
    """PABEE's inference written from its paper and code, one example at a time: patience 0 runs every layer;
    otherwise a counter of consecutive agreeing layers, and exit when it reaches the patience."""
    num_layers, n, _ = scores.shape
    out = []
    for i in range(n):
        if patience == 0:
            out.append(num_layers - 1)
            continue
        counter, previous = 0, None
        for j in range(num_layers):
            pred = _first_argmax(list(scores[j, i]))
            counter = counter + 1 if previous is not None and pred == previous else 0
            previous = pred
            if counter == patience or j == num_layers - 1:
                out.append(j)
                break
    return np.array(out)


def _random_probs(rng, num_layers, n, c):
    concentration = rng.choice([0.1, 0.5, 2.0, 20.0], size=(num_layers, n, 1))
    return rng.gamma(np.broadcast_to(concentration, (num_layers, n, c))) + 1e-12


@pytest.mark.parametrize("rule", ["entropy", "max_prob"])
@pytest.mark.parametrize("c", [2, 3])
def test_confidence_rules_match_a_per_example_loop(rule, c):
    rng = np.random.default_rng(c)
    raw = _random_probs(rng, 5, 300, c)
    probs = raw / raw.sum(-1, keepdims=True)
    logits = np.log(probs)  # Each layer a cascade stage: the cascade's exit rule, from the layers' logits.
    for threshold in [0.05, 0.2, 0.5, 0.7, 0.9, 0.99]:
        got = baselines.exit_result(logits, rule, threshold).exit_stage
        np.testing.assert_array_equal(got, _reference_confidence(probs, threshold, rule))
    spread = baselines.exit_result(logits, rule, 0.5 if rule == "entropy" else 0.9).exit_stage
    assert len(np.unique(spread)) > 2  # Exits really spread out.


def test_patience_matches_the_counter_rule_with_ties_and_large_patience():
    rng = np.random.default_rng(0)
    num_layers = 6
    # Small integer logits: many ties inside a row (argmax takes the first) and many agreeing layers.
    scores = rng.integers(0, 3, size=(num_layers, 400, 3)).astype(np.float32)
    assert (np.sum(scores == scores.max(-1, keepdims=True), -1) > 1).mean() > 0.2
    for patience in range(0, num_layers + 3):
        got = baselines.patience_exit_layers(scores, patience)
        np.testing.assert_array_equal(got, _reference_patience(scores, patience), err_msg=f"patience {patience}")
    assert (baselines.patience_exit_layers(scores, 0) == num_layers - 1).all()  # PABEE: 0 = no early exit.
    assert (baselines.patience_exit_layers(scores, 1) < num_layers - 1).any()
    for patience in (num_layers - 1, num_layers, num_layers + 5):
        assert (baselines.patience_exit_layers(scores, patience) == num_layers - 1).all()


def test_patience_hand_made_example():
    # Predictions per layer for three examples: [0,0,0,1], [0,1,1,1], [1,0,1,0].
    preds = np.array([[0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 1, 0]])
    logits = np.eye(2)[preds] * 2.0  # [L, N, 2]
    np.testing.assert_array_equal(baselines.patience_exit_layers(logits, 1), [1, 2, 3])
    np.testing.assert_array_equal(baselines.patience_exit_layers(logits, 2), [2, 3, 3])
    np.testing.assert_array_equal(baselines.patience_exit_layers(logits, 3), [3, 3, 3])


def test_extreme_parameters_give_exact_layer_accounting():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 50, 3)).astype(np.float32)
    cases = [("entropy", 0.0, 4), ("entropy", 1.0 + 1e-9, 1), ("max_prob", 0.0, 1), ("max_prob", 1.0, 4),
             ("patience", 0, 4), ("patience", 3, 4), ("patience", 10, 4)]
    for rule, param, layers in cases:
        r = baselines.exit_result(logits, rule, param)
        assert (r.layers == layers).all(), (rule, param)
        assert r.layer_speedup == 4 / layers
        np.testing.assert_array_equal(r.answered, np.bincount([layers - 1] * 50, minlength=4))
        np.testing.assert_allclose(r.probs, metrics.softmax(logits[layers - 1]), atol=1e-7)


def test_exit_result_answers_with_the_exit_layers_distribution():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(3, 40, 2)).astype(np.float32)
    r = baselines.exit_result(logits, "max_prob", 0.8)
    probs = metrics.softmax(logits)
    np.testing.assert_allclose(r.probs, probs[r.exit_stage, np.arange(40)], atol=1e-7)
    np.testing.assert_array_equal(r.predictions, probs[r.exit_stage, np.arange(40)].argmax(-1))
    assert r.mean_layers == pytest.approx(np.mean(r.exit_stage + 1))


def test_rules_reject_bad_arguments():
    probs = np.full((2, 3, 2), 0.5)
    with pytest.raises(ValueError):
        baselines.patience_exit_layers(probs, -1)
    with pytest.raises(ValueError):
        baselines.exit_result(probs, "max_prob", float("nan"))
    with pytest.raises(ValueError):
        baselines.exit_result(probs[0], "max_prob", 0.5)
    with pytest.raises(ValueError):
        baselines.exit_result(probs, "nope", 1)


def test_static_and_flops_accounting():
    config = models.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=4)
    r = curves.Curve.static(np.zeros((10, 2)), np.zeros(10, int), num_layers=1, reference_layers=4).result(1)
    assert r.layer_speedup == 4.0 and (r.layers == 1).all()

    macs = flops.layer_exit_macs(config, 16)
    head = 32 * 32 + 32 * 2
    assert macs.shape == (4,)
    # Exiting at the last layer = the plain model + the (L - 1) internal heads passed on the way.
    assert macs[-1] == flops.bert_macs(config, 16) + 3 * head
    np.testing.assert_allclose(np.diff(macs), macs[0])  # Every layer adds the same.
    lengths = np.array([4, 8, 16])
    per_example = flops.layer_exit_macs(config, lengths)
    assert per_example.shape == (4, 3)
    np.testing.assert_allclose(per_example[:, 2], macs)

    logits = np.zeros((4, 3, 2))
    logits[0, 0] = [5, 0]  # Example 0 exits at layer 1 (max-prob rule), the others at layer 4.
    curve = curves.Curve.early_exit(logits, np.zeros(3, int), rule="max_prob", exit_costs=per_example,
                                    reference_flops=flops.bert_macs(config, lengths))
    full = flops.bert_macs(config, lengths)
    expected = full.mean() / np.mean([per_example[0, 0], per_example[3, 1], per_example[3, 2]])
    assert curve.point(0.9).flops_speedup == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------------
# The model and its training.


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    model_dir = tiny.make_model_dir(root / "model", layers=3, hidden=32, dropout=0.0)
    # Wider kernels than BERT's init (std 0.2, not 0.02): the random backbone's [CLS] features then depend on the
    # words enough for heads to learn something in a few steps.
    module, params = models.from_pretrained(model_dir, num_labels=2)
    params = jax.tree_util.tree_map_with_path(lambda p, x: x * 10 if p[-1].key == "kernel" else x, params)
    models.save_pretrained(module, params, model_dir)
    folder = tiny.make_sentiment_folder(root / "data", n_train=64, n_dev=16, n_test=16)
    tok = models.tokenizer_for(model_dir)
    train = data.encode_split("rotten_tomatoes", "train", folder, tokenizer=tok, max_length=32, use_cache=False)
    return root, model_dir, train


def _leaves_equal(a, b):
    return jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x, y: bool(np.array_equal(x, y)), a, b))


def _objective(module, params, enc, mode):
    batch = data.make_batch(enc, np.arange(len(enc)), len(enc))
    logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    fn = baselines.deebert_loss if mode == "deebert" else baselines.pabee_loss
    return float(fn(logits, batch["label"], batch["valid"]))


@pytest.mark.parametrize("head", baselines.HEAD_KINDS)
def test_multi_exit_model_loads_a_fine_tuned_directory_and_round_trips(workspace, head, tmp_path):
    _, model_dir, train = workspace
    module, params = baselines.load_multi_exit(model_dir, head=head)
    base, base_params = models.from_pretrained(model_dir, num_labels=2)
    assert _leaves_equal({k: params[k] for k in ("bert", "classifier")}, base_params)
    assert sorted(params["internal_classifiers"]) == ["layer_0", "layer_1"]

    logits = baselines.predict_exit_logits(module, params, train, batch_size=16)
    assert logits.shape == (3, len(train), 2) and logits.dtype == np.float32
    batch = data.make_batch(train, np.arange(len(train)), len(train))
    plain = base.apply({"params": base_params}, batch["input_ids"], batch["attention_mask"]).logits
    np.testing.assert_allclose(logits[-1], np.asarray(plain), atol=1e-5)  # Last row = the plain model.

    saved = baselines.save_multi_exit(module, params, tmp_path / "saved")
    module2, params2 = baselines.load_multi_exit(saved)
    assert module2.head == head and _leaves_equal(params, params2)
    _, plain_params = models.from_pretrained(saved, num_labels=2)  # Still an ordinary model directory.
    assert _leaves_equal(plain_params, base_params)


def _exit_config(root, model_dir, name, **kw):
    return configs.create(baselines.ExitTrainConfig, {
        "output_dir": str(root / name), "model.name": str(model_dir), "source": str(root / "data"),
        "max_length": 32, "epochs": 100, "batch_size": 16, "warmup_ratio": 0.0, "dropout": False,
        "progress": False, "log_every": 1, **kw})


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_deebert_training_lowers_the_internal_loss_and_freezes_the_rest(workspace):
    root, model_dir, train = workspace
    module, params = baselines.load_multi_exit(model_dir, head="pooler")
    before = _objective(module, params, train, "deebert")
    config = _exit_config(root, model_dir, "deebert", mode="deebert", max_steps=40, learning_rate=1e-2)
    result = baselines.train_exits(config)
    assert result.step == 40 and len(_losses(root / "deebert")) == 40
    after = _objective(module, result.params, train, "deebert")
    assert after < before - 0.08, (before, after)  # 1.386 -> 1.217 here.
    frozen = {k: params[k] for k in ("bert", "classifier")}
    assert _leaves_equal(frozen, {k: result.params[k] for k in ("bert", "classifier")})  # Bitwise unchanged.
    changed = jax.tree_util.tree_map(lambda x, y: not np.array_equal(x, y), params["internal_classifiers"],
                                     result.params["internal_classifiers"])
    assert all(jax.tree_util.tree_leaves(changed))


def test_pabee_training_trains_everything_jointly(workspace):
    root, model_dir, train = workspace
    module, params = baselines.load_multi_exit(model_dir, head="shared_pooler")
    before = _objective(module, params, train, "pabee")
    result = baselines.train_exits(_exit_config(root, model_dir, "pabee", mode="pabee", max_steps=20,
                                                learning_rate=1e-2))
    after = _objective(module, result.params, train, "pabee")
    assert after < before - 0.02, (before, after)  # 0.702 -> 0.655 here.
    for part in ("bert", "classifier", "internal_classifiers"):
        assert not _leaves_equal(params[part], result.params[part]), part
    saved_module, saved = baselines.load_multi_exit(result.model_dir)
    assert saved_module.head == "shared_pooler" and _leaves_equal(saved, result.params)


@pytest.mark.parametrize("mode", baselines.TRAIN_MODES)
def test_exit_training_resumes_after_sigterm_to_bitwise_the_same_parameters(workspace, mode):
    root, model_dir, _ = workspace
    common = dict(mode=mode, max_steps=7, learning_rate=1e-2, dropout=True, checkpoint_every=100)
    full = baselines.train_exits(_exit_config(root, model_dir, f"{mode}-full", **common))

    def term_at_3(step, _):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = baselines.train_exits(_exit_config(root, model_dir, f"{mode}-term", **common), on_step=term_at_3)
    assert stopped.status == "preempted" and stopped.step == 3 and stopped.model_dir is None
    out = root / f"{mode}-term"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    resumed = baselines.train_exits(_exit_config(root, model_dir, f"{mode}-term", **common))
    assert resumed.status == "finished" and resumed.step == 7
    jax.tree_util.tree_map(np.testing.assert_array_equal, full.params, resumed.params)
    assert [r for r in _losses(out)] == _losses(root / f"{mode}-full")  # Each step logged once, as uninterrupted.
    with pytest.raises(configs.ResumeMismatchError, match="max_steps"):
        baselines.train_exits(_exit_config(root, model_dir, f"{mode}-term", **{**common, "max_steps": 9}))


def test_losses_are_the_documented_weighted_sums():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 2)), jnp.float32)
    labels = jnp.asarray([0, 1, 1, 0, 1])
    ce = [float(-jnp.mean(jax.nn.log_softmax(logits[j])[jnp.arange(5), labels])) for j in range(3)]
    assert float(baselines.deebert_loss(logits, labels)) == pytest.approx(ce[0] + ce[1], rel=1e-6)
    assert float(baselines.pabee_loss(logits, labels)) == pytest.approx((ce[0] + 2 * ce[1] + 3 * ce[2]) / 6, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# FastBERT: its student classifier, self-distillation and exit rule.


def _fastbert_head_reference(state, mask, p):
    """FastBERT's Classifier in float64, one example at a time, attending from every position (as its code does)
    before taking [CLS]."""
    f64 = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in p.items()}

    def dense(name, x):
        return x @ f64[name]["kernel"] + f64[name]["bias"]

    out = []
    for b in range(state.shape[0]):
        h = np.tanh(dense("reduce", np.asarray(state[b], np.float64)))  # [L, 128]
        q, k, v = dense("query", h), dense("key", h), dense("value", h)
        heads = []
        for head in range(baselines.FASTBERT_HEADS):
            cols = slice(head * 64, (head + 1) * 64)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(64)
            scores = np.where(np.asarray(mask[b])[None, :] > 0, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((probs / probs.sum(-1, keepdims=True)) @ v[:, cols])
        attended = dense("attention_output", np.concatenate(heads, -1))  # [L, 128]
        out.append(dense("classifier", np.tanh(dense("dense", attended[0]))))
    return np.stack(out)


def test_fastbert_heads_match_a_float64_reference_and_ignore_padding(workspace):
    _, model_dir, train = workspace
    module, params = baselines.load_multi_exit(model_dir, head="fastbert")
    assert module.head == "fastbert" and sorted(params["internal_classifiers"]) == ["layer_0", "layer_1"]
    batch = data.make_batch(train, np.arange(12), 12)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    logits = np.asarray(module.apply({"params": params}, *inputs))
    base, _ = models.from_pretrained(model_dir, num_labels=2)
    states = base.apply({"params": {k: params[k] for k in ("bert", "classifier")}}, *inputs,
                        output_hidden_states=True).hidden_states
    for i in range(2):
        want = _fastbert_head_reference(np.asarray(states[i + 1]), batch["attention_mask"],
                                        params["internal_classifiers"][f"layer_{i}"]["fastbert"])
        np.testing.assert_allclose(logits[i], want, rtol=1e-4, atol=1e-5)
    padded = {k: np.pad(v, ((0, 0), (0, 8))) for k, v in zip(("ids", "mask", "types"), inputs)}
    wider = np.asarray(module.apply({"params": params}, padded["ids"], padded["mask"], padded["types"]))
    np.testing.assert_allclose(wider, logits, atol=1e-5)  # Padding positions are masked out of the attention.


def test_fastbert_self_distillation_trains_the_heads_only_and_exits_on_entropy(workspace):
    root, model_dir, train = workspace
    module, params = baselines.load_multi_exit(model_dir, head="fastbert")

    def objective(p):
        batch = data.make_batch(train, np.arange(len(train)), len(train))
        logits = module.apply({"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return float(baselines.fastbert_loss(logits, batch["label"], batch["valid"]))

    before = objective(params)
    result = baselines.train_exits(_exit_config(root, model_dir, "fastbert", mode="fastbert", max_steps=30,
                                                learning_rate=3e-3))
    after = objective(result.params)
    assert result.step == 30 and after < 0.7 * before, (before, after)
    frozen = {k: params[k] for k in ("bert", "classifier")}
    assert _leaves_equal(frozen, {k: result.params[k] for k in ("bert", "classifier")})  # Bitwise unchanged.
    changed = jax.tree_util.tree_map(lambda x, y: not np.array_equal(x, y), params["internal_classifiers"],
                                     result.params["internal_classifiers"])
    assert all(jax.tree_util.tree_leaves(changed))
    saved_module, saved = baselines.load_multi_exit(result.model_dir)  # DEFAULT_HEAD["fastbert"] was saved.
    assert saved_module.head == "fastbert" and _leaves_equal(saved, result.params)

    # FastBERT's exit: normalised entropy ("uncertainty") below the speed, the cascade's entropy rule.
    logits = baselines.predict_exit_logits(saved_module, saved, train, batch_size=16)
    assert logits.shape == (3, len(train), 2)
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    uncertainty = -np.sum(probs * np.log(probs), -1) / math.log(2)  # FastBERT's "uncertainty", [L, N].
    spread = 1
    for speed in (0.0, *np.quantile(uncertainty[:-1], [0.25, 0.5, 0.75]), 1.0 + 1e-9):
        confident = uncertainty < speed
        confident[-1] = True  # The last layer always answers.
        got = baselines.exit_result(logits, "entropy", speed).exit_stage
        np.testing.assert_array_equal(got, np.argmax(confident, axis=0))
        spread = max(spread, len(np.unique(got))) if speed else 1
    assert spread > 1  # Some speed really splits the examples between layers.
    assert (baselines.exit_result(logits, "entropy", 0.0).layers == 3).all()
    assert (baselines.exit_result(logits, "entropy", 1.0 + 1e-9).layers == 1).all()


# ---------------------------------------------------------------------------------------------------------------
# The fixed standardisation of DeeBERT's and PABEE's head inputs.


def _np_floored_std(x):
    std = x.std(0)
    return np.maximum(std, 1e-3 * std.max())


def test_input_stats_use_the_valid_rows_of_the_batch_in_training_and_the_fitted_values_otherwise():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(10, 6)) * [1, 2, 3, 1e-9, 0.5, 1] + 7).astype(np.float32)  # Feature 3 barely varies.
    valid = np.array([True] * 7 + [False] * 3)
    x[~valid] = 1e4  # Padding rows hold garbage that must not move the statistics.
    layer = baselines._InputStats(6)
    params = layer.init(jax.random.PRNGKey(0), x, valid, True)["params"]
    train_out = np.asarray(layer.apply({"params": params}, x, valid, False), np.float64)
    real = x[valid].astype(np.float64)
    np.testing.assert_allclose(train_out[valid], (real - real.mean(0)) / _np_floored_std(real), rtol=2e-4, atol=1e-3)
    assert np.abs(train_out[valid][:, 3]).max() < 1e-2  # Floored: 1e-3 of the largest std, not 1e-9.

    fitted = {"mean": jnp.arange(6.0), "inv_std": jnp.full(6, 0.5)}
    np.testing.assert_allclose(np.asarray(layer.apply({"params": fitted}, x, valid, True)),
                               (x - np.arange(6.0)) * 0.5, rtol=1e-6)
    grads = jax.grad(lambda p: layer.apply({"params": p}, x, valid, False).sum() +
                     layer.apply({"params": p}, x, valid, True).sum())(fitted)
    assert not any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads))  # Never trained.
    assert not any(jax.tree_util.tree_leaves(configs.decay_mask({"input_stats": fitted})))  # Never decayed.


@pytest.mark.parametrize("head", ["pooler", "shared_pooler"])
def test_fitted_input_stats_are_the_float64_statistics_of_each_layers_head_input(workspace, head):
    _, model_dir, train = workspace
    module, params = baselines.load_multi_exit(model_dir, head=head)
    fitted = baselines.fit_input_stats(module, params, train, batch_size=16)
    base, _ = models.from_pretrained(model_dir, num_labels=2)
    batch = data.make_batch(train, np.arange(len(train)), len(train))
    states = base.apply({"params": {k: params[k] for k in ("bert", "classifier")}}, batch["input_ids"],
                        batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True).hidden_states
    pooler = params["bert"]["pooler"]["dense"]
    for i in range(2):
        cls = np.asarray(states[i + 1][:, 0], np.float64)
        x = cls if head == "pooler" else np.tanh(cls @ np.asarray(pooler["kernel"], np.float64) + pooler["bias"])
        got = fitted["internal_classifiers"][f"layer_{i}"]["input_stats"]
        np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["inv_std"], 1 / _np_floored_std(x), rtol=1e-3)
    assert _leaves_equal({k: params[k] for k in ("bert", "classifier")},
                         {k: fitted[k] for k in ("bert", "classifier")})

    fast_module, fast = baselines.load_multi_exit(model_dir, head="fastbert")
    assert baselines.fit_input_stats(fast_module, fast, train) is fast  # FastBERT's heads have no statistics.


def test_standardised_heads_learn_from_a_cls_vector_that_barely_varies():
    """The failure the standardisation fixes: a [CLS] vector whose variation across examples is 1e-4 of its norm
    (MiniLM's layers 1-3). The same DeeBERT head and optimiser learn it with the standardisation in training mode."""
    config = models.BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, num_labels=2, hidden_dropout_prob=0.0)
    head = baselines._InternalHead(config, "pooler")
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(256, 16))
    labels = (signal[:, 0] + signal[:, 1] > 0).astype(np.int32)
    state = (5.0 + 1e-4 * signal)[:, None, :].astype(np.float32)  # [B, 1, H]: the [CLS] position only.
    mask = np.ones((256, 1), np.int32)
    params = head.init(jax.random.PRNGKey(0), state, None, True, mask)["params"]
    tx = configs.make_optimizer(configs.OptimConfig(epochs=1.0, batch_size=256, learning_rate=5e-3,
                                                    warmup_ratio=0.0), 256 * 150)[0]

    def loss(p):
        logits = head.apply({"params": p}, state, None, False, mask)
        return losses.cross_entropy(logits, labels, None)

    @jax.jit
    def step(p, opt):
        g = jax.grad(loss)(p)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt

    opt = tx.init(params)
    for _ in range(150):
        params, opt = step(params, opt)
    fitted = {**params, "input_stats": {"mean": jnp.asarray(state[:, 0].mean(0)),
                                        "inv_std": jnp.asarray(1 / _np_floored_std(state[:, 0].astype(np.float64)))}}
    accuracy = np.mean(np.asarray(head.apply({"params": fitted}, state, None, True, mask)).argmax(-1) == labels)
    assert accuracy > 0.9, accuracy


def test_heads_saved_without_input_statistics_are_refused_with_what_to_do(workspace, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, model_dir, _ = workspace
    module, params = baselines.load_multi_exit(model_dir, head="pooler")
    saved = baselines.save_multi_exit(module, params, tmp_path / "saved")
    heads = saved / "internal_classifiers.safetensors"
    save_file({k: v for k, v in load_file(str(heads)).items() if "input_stats" not in k}, str(heads))
    with pytest.raises(models.ModelLoadError, match="input_stats standardisation existed: train the exits again"):
        baselines.load_multi_exit(saved)
