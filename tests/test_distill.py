"""BERT-PKD and BERT-of-Theseus (cascade_jax.distill), and the losses they and FastBERT add to cascade_jax.losses:
each rule against a plain float64 loop, training on tiny models, exact resume after SIGTERM."""

import dataclasses
import json
import math
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascade_jax import configs, data, distill, losses, models, parallel, trainer
from tests import tiny

# ---------------------------------------------------------------------------------------------------------------
# The pure functions against plain loops.


def _softmax64(z):
    z = [float(v) for v in z]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _ref_self_distillation(students, teacher, mask, direction):
    """sum over students of the mean over valid rows of KL, one number at a time in float64."""
    total = 0.0
    rows = [i for i in range(teacher.shape[0]) if mask[i]]
    for layer in students:
        kls = []
        for i in rows:
            ps, pt = _softmax64(layer[i]), _softmax64(teacher[i])
            p, q = (ps, pt) if direction == "student_teacher" else (pt, ps)
            kls.append(sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0))
        total += sum(kls) / len(kls) if kls else 0.0
    return total


@pytest.mark.parametrize("direction", ["student_teacher", "teacher_student"])
@pytest.mark.parametrize("seed", [0, 1])
def test_self_distillation_loss_matches_a_float64_loop(direction, seed):
    rng = np.random.default_rng(seed)
    students = rng.normal(scale=3.0, size=(3, 9, 4)).astype(np.float32)
    teacher = rng.normal(scale=3.0, size=(9, 4)).astype(np.float32)
    mask = rng.random(9) < 0.7
    mask[0] = True
    got = losses.self_distillation_loss(students, teacher, mask, direction=direction)
    assert float(got) == pytest.approx(_ref_self_distillation(students, teacher, mask, direction), rel=1e-5)
    # Masked rows may hold garbage; no mask = every row.
    garbage = students.copy()
    garbage[:, ~mask] = np.nan
    bad_teacher = teacher.copy()
    bad_teacher[~mask] = np.inf
    assert float(losses.self_distillation_loss(garbage, bad_teacher, mask, direction=direction)) == pytest.approx(
        float(got), rel=1e-6)
    everything = _ref_self_distillation(students, teacher, np.ones(9, bool), direction)
    assert float(losses.self_distillation_loss(students, teacher, direction=direction)) == pytest.approx(
        everything, rel=1e-5)


def test_self_distillation_loss_edge_cases_and_gradients():
    rng = np.random.default_rng(2)
    teacher = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    same = jnp.stack([teacher, teacher])
    assert float(losses.self_distillation_loss(same, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.self_distillation_loss(jnp.zeros((0, 5, 3)), teacher)) == 0.0  # A 1-layer model.
    students = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    none = jnp.zeros(5, bool)
    value, grads = jax.value_and_grad(losses.self_distillation_loss, argnums=(0, 1))(students, teacher, none)
    assert float(value) == 0.0 and not np.any(np.asarray(grads[0])) and not np.any(np.asarray(grads[1]))
    g_student, g_teacher = jax.grad(losses.self_distillation_loss, argnums=(0, 1))(students, teacher)
    assert np.all(np.isfinite(g_student)) and np.any(np.asarray(g_student) != 0)
    assert not np.any(np.asarray(g_teacher))  # The teacher is a fixed target.
    with pytest.raises(ValueError, match="direction"):
        losses.self_distillation_loss(students, teacher, direction="both")


def _ref_patient(student, teacher, mask):
    per_row = []
    for i in range(student.shape[1]):
        if not mask[i]:
            continue
        total = 0.0
        for j in range(student.shape[0]):
            s = [float(v) for v in student[j, i]]
            t = [float(v) for v in teacher[j, i]]
            ns, nt = math.sqrt(sum(v * v for v in s)), math.sqrt(sum(v * v for v in t))
            total += sum((a / ns - b / nt) ** 2 for a, b in zip(s, t))
        per_row.append(total / (student.shape[0] * student.shape[2]))  # Mean over layers and hidden units.
    return sum(per_row) / len(per_row) if per_row else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_loss_matches_a_float64_loop(seed):
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(3, 7, 16)).astype(np.float32)
    teacher = rng.normal(scale=5.0, size=(3, 7, 16)).astype(np.float32)
    mask = rng.random(7) < 0.6
    mask[1] = True
    got = float(losses.patient_loss(student, teacher, mask))
    assert got == pytest.approx(_ref_patient(student, teacher, mask), rel=1e-5)
    garbage = student.copy()
    garbage[:, ~mask] = np.nan
    assert float(losses.patient_loss(garbage, teacher, mask)) == pytest.approx(got, rel=1e-6)
    # Only directions count: rescaling either side changes nothing; each term is at most 4.
    assert float(losses.patient_loss(student * 3.0, teacher / 7.0, mask)) == pytest.approx(got, rel=1e-5)
    assert 0.0 <= float(losses.patient_loss(student, -student)) == pytest.approx(4.0 / 16, rel=1e-5)


def test_patient_loss_edge_cases_and_gradients():
    rng = np.random.default_rng(3)
    student = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
    assert float(losses.patient_loss(jnp.zeros((0, 4, 8)), jnp.zeros((0, 4, 8)))) == 0.0  # A 1-layer student.
    assert float(losses.patient_loss(student, student * 2.0)) == pytest.approx(0.0, abs=1e-6)
    value, (gs, gt) = jax.value_and_grad(losses.patient_loss, argnums=(0, 1))(student, teacher, jnp.zeros(4, bool))
    assert float(value) == 0.0 and not np.any(np.asarray(gs)) and not np.any(np.asarray(gt))
    gs, gt = jax.grad(losses.patient_loss, argnums=(0, 1))(student, teacher, jnp.asarray([1, 0, 1, 0]))
    assert np.all(np.isfinite(gs)) and np.any(np.asarray(gs[:, 0]) != 0) and not np.any(np.asarray(gs[:, 1]))
    assert not np.any(np.asarray(gt))
    with pytest.raises(ValueError, match="shape"):
        losses.patient_loss(student, teacher[:1])


def test_pkd_layer_map():
    assert distill.pkd_layer_map(3, 6) == (2, 4)  # Student layers 1, 2 <- teacher layers 2, 4.
    assert distill.pkd_layer_map(6, 12) == (2, 4, 6, 8, 10)
    assert distill.pkd_layer_map(4, 12) == (3, 6, 9)
    assert distill.pkd_layer_map(1, 12) == ()
    assert distill.pkd_layer_map(5, 5) == (1, 2, 3, 4)
    for n in range(1, 13):
        for k in range(1, n + 1):
            ref = []
            for j in range(1, k):  # Student layer j reads every (n // k)-th teacher layer.
                ref.append(j * (n // k))
            assert distill.pkd_layer_map(k, n) == tuple(ref)
            assert all(1 <= m < n for m in ref)
    for k, n in [(0, 6), (7, 6)]:
        with pytest.raises(ValueError):
            distill.pkd_layer_map(k, n)


def _scheduler_loop(total, base, k):
    """Theseus's LinearReplacementScheduler: the rate in force at each step, stepped after every update."""
    rates, counter, current = [], 0, base
    for _ in range(total):
        rates.append(current)
        counter += 1
        current = min(k * counter + base, 1.0)
    return rates


@pytest.mark.parametrize("total,base,slope", [(100, 0.3, None), (37, 0.0, None), (50, 0.3, 1e-3), (20, 0.5, 0.2),
                                              (10, 1.0, None)])
def test_replacement_rate_matches_the_scheduler_loop(total, base, slope):
    k = (1.0 - base) / (0.8 * total) if slope is None else slope
    ref = _scheduler_loop(total, base, k)
    got = distill.replacement_rate(np.arange(total), total, base, slope)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    traced = jax.jit(lambda s: distill.replacement_rate(s, total, base, slope))(jnp.arange(total, dtype=jnp.float32))
    np.testing.assert_allclose(traced, ref, rtol=1e-6)
    for step in range(total):
        assert distill.replacement_rate(step, total, base, slope) == pytest.approx(ref[step])
    if slope is None and base < 1:
        assert distill.replacement_rate(0.8 * total, total, base) == pytest.approx(1.0)  # Full at 80% of phase 1.
        assert distill.replacement_rate(0.8 * total - 1, total, base) < 1.0


def test_replacement_draws():
    keys = [jax.random.PRNGKey(i) for i in range(50)]
    assert not any(np.asarray(distill.replacement_draws(key, 0.0, 6)).any() for key in keys)
    assert all(np.asarray(distill.replacement_draws(key, 1.0, 6)).all() for key in keys)
    draws = np.stack([np.asarray(distill.replacement_draws(key, 0.3, 6)) for key in keys])
    assert 0.15 < draws.mean() < 0.45 and draws.dtype == bool


# ---------------------------------------------------------------------------------------------------------------
# Tiny models and training.


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    large = tiny.make_model_dir(root / "large", layers=4, hidden=32, dropout=0.1)
    module, params = models.from_pretrained(large, num_labels=2)
    # Wider kernels (as in test_baselines): the random model's outputs then depend on the words.
    params = jax.tree_util.tree_map_with_path(lambda p, x: x * 10 if p[-1].key == "kernel" else x, params)
    models.save_pretrained(module, params, large)
    tiny.make_sentiment_folder(root / "data", n_train=64, n_dev=16, n_test=16)
    return root, large


def _common(root, name, **kw):
    return {"output_dir": str(root / name), "model.name": str(root / "large"), "model.num_layers": 2,
            "data.source": str(root / "data"), "data.max_length": 32, "run.progress": False, "run.log_every": 1,
            **kw}


def _pkd_config(root, name, **kw):
    return configs.create(distill.PKDConfig, _common(root, name, **{
        "optim.batch_size": 16, "optim.warmup_ratio": 0.0, "optim.epochs": 100, **kw}))


def _theseus_config(root, name, **kw):
    return configs.create(distill.TheseusConfig, _common(root, name, **{
        "optim.batch_size": 16, "optim.warmup_ratio": 0.0, "optim.epochs": 100, "optim.max_steps": 4,
        "successor_optim.batch_size": 16, "successor_optim.warmup_ratio": 0.0, "successor_optim.epochs": 100,
        "successor_optim.max_steps": 3, **kw}))


def _train_batch(root, model_dir):
    enc = data.encode_split("rotten_tomatoes", "train", root / "data", tokenizer=models.tokenizer_for(model_dir),
                            max_length=32, use_cache=False)
    return data.make_batch(enc, np.arange(len(enc)), len(enc))


def _pkd_objective(student, params, teacher, teacher_params, batch, layer_map, alpha, temperature, beta):
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    s = student.apply({"params": params}, *inputs, output_hidden_states=True)
    t = teacher.apply({"params": teacher_params}, *inputs, output_hidden_states=True)
    ce = losses.cross_entropy(s.logits, batch["label"])
    kd = losses.distillation_loss(s.logits, t.logits, temperature)
    pt = losses.patient_loss(jnp.stack([s.hidden_states[j][:, 0] for j in range(1, len(layer_map) + 1)]),
                             jnp.stack([t.hidden_states[m][:, 0] for m in layer_map]))
    return float((1 - alpha) * ce + alpha * kd + beta * pt)


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def _term_at(step_to_stop):
    def hook(step, _):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def test_pkd_training_lowers_its_loss_and_saves_a_k_layer_student(workspace):
    root, large = workspace
    config = _pkd_config(root, "pkd", **{"optim.max_steps": 12, "optim.learning_rate": 3e-3, "beta": 1.0,
                                         "model.dropout": False})
    teacher, teacher_params = models.from_pretrained(large, num_labels=2)
    student, params = models.from_pretrained(large, num_labels=2, num_layers=2)
    batch = _train_batch(root, large)
    layer_map = distill.pkd_layer_map(2, 4)
    assert layer_map == (2,)
    before = _pkd_objective(student, params, teacher, teacher_params, batch, layer_map, 0.5, 2.0, 1.0)
    result = distill.train_pkd(config)
    assert result.status == "finished" and result.step == 12 and len(_losses(root / "pkd")) == 12
    after = _pkd_objective(student, result.params, teacher, teacher_params, batch, layer_map, 0.5, 2.0, 1.0)
    assert after < 0.8 * before, (before, after)  # 1.86 -> 0.48 here.
    loaded_module, loaded = models.from_pretrained(result.model_dir, num_labels=2)
    assert loaded_module.config.num_hidden_layers == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, result.params)
    models.tokenizer_for(result.model_dir)  # Saved with its tokenizer.
    summary = json.loads((root / "pkd" / "summary.json").read_text())
    assert summary["layer_map"] == [2] and summary["student_layers"] == 2 and summary["teacher_layers"] == 4


def test_pkd_resumes_after_sigterm_to_bitwise_the_same_parameters(workspace):
    root, _ = workspace
    common = {"optim.max_steps": 7, "optim.learning_rate": 1e-3, "run.checkpoint_every": 100}
    full = distill.train_pkd(_pkd_config(root, "pkd-full", **common))
    stopped = distill.train_pkd(_pkd_config(root, "pkd-term", **common), on_step=_term_at(3))
    assert stopped.status == "preempted" and stopped.step == 3 and stopped.model_dir is None
    out = root / "pkd-term"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    resumed = distill.train_pkd(_pkd_config(root, "pkd-term", **common))
    assert resumed.status == "finished" and resumed.step == 7
    jax.tree_util.tree_map(np.testing.assert_array_equal, full.params, resumed.params)
    assert _losses(out) == _losses(root / "pkd-full")
    with pytest.raises(configs.ResumeMismatchError, match="beta"):
        distill.train_pkd(_pkd_config(root, "pkd-term", **common, beta=5.0))


def _perturbed(tree, seed, scale=0.05):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_theseus_replacing_with_p0_is_the_predecessor_and_with_p1_the_successor(workspace):
    root, large = workspace
    pred_module, predecessor = models.from_pretrained(large, num_labels=2)
    config = pred_module.config
    succ = _perturbed(models.from_pretrained(large, num_labels=2, num_layers=2)[1]["bert"]["encoder"], 0)
    batch = _train_batch(root, large)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    @jax.jit
    def phase1(key, p):
        use = distill.replacement_draws(key, p, 2)
        return distill.theseus_logits(config, predecessor, succ, *inputs, use), use

    def plain(num_layers, params):
        module = models.BertForSequenceClassification(dataclasses.replace(config, num_hidden_layers=num_layers))
        return np.asarray(jax.jit(lambda p: module.apply({"params": p}, *inputs).logits)(params))

    want_pred = np.asarray(jax.jit(lambda p: pred_module.apply({"params": p}, *inputs).logits)(predecessor))
    want_succ = plain(2, distill.successor_params(predecessor, succ))
    assert np.abs(want_pred - want_succ).max() > 1e-2  # The two really differ.
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        got0, use0 = phase1(key, 0.0)
        got1, use1 = phase1(key, 1.0)
        assert not np.asarray(use0).any() and np.asarray(use1).all()
        # Different programs (the replacement loop vs the plain model) sum in another order: float32 rounding
        # reached 1.2e-6 on an AVX2-only Zen 1 EPYC; a wrong layer choice moves logits by > 1e-2 (above).
        np.testing.assert_allclose(np.asarray(got0), want_pred, rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got1), want_succ, rtol=0, atol=1e-5)
    # A mixed draw is the 3-layer model: successor layer 0 in place of predecessor layers 0-1, then layers 2, 3.
    mixed = distill.theseus_logits(config, predecessor, succ, *inputs, jnp.asarray([True, False]))
    enc = predecessor["bert"]["encoder"]
    three = {"bert": {**predecessor["bert"], "encoder": {"layer_0": succ["layer_0"], "layer_1": enc["layer_2"],
                                                         "layer_2": enc["layer_3"]}},
             "classifier": predecessor["classifier"]}
    np.testing.assert_allclose(np.asarray(mixed), plain(3, three), rtol=0, atol=1e-5)

    # Through the training step: with p = 0 the successor layers get no gradient at all; with p = 1 they do.
    dp = parallel.DataParallel()
    for base, moved in [(0.0, False), (1.0, True)]:
        tx, _ = configs.make_optimizer(configs.OptimConfig(warmup_ratio=0.0, weight_decay=0.0), 64)
        step = dp.map_step(distill.make_theseus_step(config, tx, 10, base=base, slope=0.0, dropout=False),
                           num_extra=1)
        state = dp.replicate(trainer.new_state(succ, tx, 0), donated=True)
        rows = {k: v for k, v in batch.items() if k != "id"}
        _, metrics = step(state, dp.shard_batch(rows), dp.replicate(jax.device_get(predecessor)))
        metrics = dp.unreplicate(metrics)
        assert float(metrics["replaced"]) == float(moved) and float(metrics["replacing_rate"]) == base
        assert (float(metrics["grad_norm"]) > 0) == moved


def test_theseus_rejects_a_successor_that_does_not_divide_the_predecessor(workspace):
    root, _ = workspace
    with pytest.raises(configs.ConfigError, match="multiple of model.num_layers = 3"):
        distill.train_theseus(_theseus_config(root, "theseus-bad", **{"model.num_layers": 3}))
    with pytest.raises(configs.ConfigError, match="num_layers"):
        configs.create(distill.TheseusConfig, {"output_dir": str(root / "x"), "model.name": str(root / "large")})


THESEUS_RUN = {"optim.learning_rate": 1e-3, "successor_optim.learning_rate": 1e-3, "run.checkpoint_every": 100}


@pytest.fixture(scope="module")
def theseus_full(workspace):
    """An uninterrupted Theseus run: 4 steps of module replacing, then 3 of successor fine-tuning."""
    root, _ = workspace
    return distill.train_theseus(_theseus_config(root, "theseus-full", **THESEUS_RUN))


def test_theseus_finishes_and_saves_a_k_layer_model(workspace, theseus_full):
    root, large = workspace
    full = theseus_full
    assert full.status == "finished" and full.step == 7
    module, loaded = models.from_pretrained(full.model_dir, num_labels=2)
    assert module.config.num_hidden_layers == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, full.params)
    models.tokenizer_for(full.model_dir)  # Saved with its tokenizer.
    summary = json.loads((root / "theseus-full" / "summary.json").read_text())
    assert (summary["phase1_steps"], summary["phase2_steps"], summary["successor_layers"]) == (4, 3, 2)
    assert summary["replacing_slope"] == pytest.approx(0.7 / 3.2)
    rates = [json.loads(line)["replacing_rate"] for line in
             (root / "theseus-full" / "phase1" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(rates, distill.replacement_rate(np.arange(4), 4, 0.3), rtol=1e-6)
    _, predecessor = models.from_pretrained(large, num_labels=2)
    # Phase 2 trained every part of the successor (phase 1 only its layers).
    assert not np.array_equal(loaded["bert"]["embeddings"]["LayerNorm"]["bias"],
                              predecessor["bert"]["embeddings"]["LayerNorm"]["bias"])
    assert not np.array_equal(loaded["classifier"]["kernel"], predecessor["classifier"]["kernel"])


def test_theseus_resumes_after_sigterm_in_phase_1_across_the_phase_change(workspace, theseus_full):
    root, _ = workspace
    out = root / "theseus-term1"
    stopped = distill.train_theseus(_theseus_config(root, out.name, **THESEUS_RUN), on_step=_term_at(2))
    assert stopped.status == "preempted" and stopped.step == 2 and stopped.model_dir is None
    assert sorted(p.name for p in (out / "phase1" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert not (out / "phase2").exists()
    resumed = distill.train_theseus(_theseus_config(root, out.name, **THESEUS_RUN))
    assert resumed.status == "finished" and resumed.step == 7
    jax.tree_util.tree_map(np.testing.assert_array_equal, theseus_full.params, resumed.params)
    for phase in ("phase1", "phase2"):
        assert _losses(out / phase) == _losses(root / "theseus-full" / phase)
    with pytest.raises(configs.ResumeMismatchError, match="replacing_rate"):
        distill.train_theseus(_theseus_config(root, out.name, **THESEUS_RUN, replacing_rate=0.5))


def test_theseus_resumes_after_sigterm_in_phase_2(workspace, theseus_full):
    root, _ = workspace
    out = root / "theseus-term2"
    stopped = distill.train_theseus(_theseus_config(root, out.name, **THESEUS_RUN), on_step=_term_at(5))
    assert stopped.status == "preempted" and stopped.step == 5  # Phase 1 done, phase 2 stopped after its step 1.
    assert sorted(p.name for p in (out / "phase2" / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    resumed = distill.train_theseus(_theseus_config(root, out.name, **THESEUS_RUN))
    assert resumed.status == "finished" and resumed.step == 7
    jax.tree_util.tree_map(np.testing.assert_array_equal, theseus_full.params, resumed.params)
    assert _losses(out / "phase2") == _losses(root / "theseus-full" / "phase2")


def test_the_distill_command_explains_itself_and_refuses_missing_flags():
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    for method in ("pkd", "theseus"):
        proc = subprocess.run([sys.executable, "-m", "train.distill", method, "--help"], cwd=root,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--num-layers" in proc.stdout and "--output-dir" in proc.stdout
        proc = subprocess.run([sys.executable, "-m", "train.distill", method, "--output-dir", "x"], cwd=root,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "--model is required" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "train.distill"], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "pkd" in proc.stderr
