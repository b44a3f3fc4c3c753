"""The training step and loop: data-parallel equivalence, exact resume, pre-emption, learning, errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascade_jax import configs, data, losses, models, trainer
from tests import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model = tiny.make_model_dir(root / "model", layers=1, hidden=32)
    folder = tiny.make_sentiment_folder(root / "data", n_train=96, n_dev=48)
    return root, model, folder


def write_difficulty(folder: pathlib.Path, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    ids = np.asarray(data.load_split("rotten_tomatoes", "train", folder)["id"])
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in ids:
            wrong = int(rng.integers(0, 3))
            f.write(json.dumps({"id": int(i), "difficulty": int(wrong > 0), "seeds_wrong": wrong, "num_seeds": 2}) + "\n")
    return path


def config(root, model, folder, name, **kw):
    base = {"output_dir": str(root / name), "model.name": str(model), "task": "rotten_tomatoes",
            "source": str(folder), "batch_size": 16, "learning_rate": 3e-3, "progress": False, "log_every": 2,
            "max_length": 32}
    base.update(kw)
    return configs.create(trainer.TrainConfig, base)


def assert_trees_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------------------------------------------------------
# Exact resume and pre-emption.


class Interrupt(Exception):
    pass


def test_resume_after_a_kill_gives_bitwise_the_same_parameters(workspace):
    root, model, folder = workspace
    common = dict(max_steps=9, checkpoint_every=2, eval_every=4)
    full = trainer.fit(config(root, model, folder, "full", **common))
    assert full.status == "finished" and full.step == 9

    def kill_at_5(step, _):
        if step == 5:
            raise Interrupt  # Dies after step 5: the last checkpoint is step 4.

    with pytest.raises(Interrupt):
        trainer.fit(config(root, model, folder, "killed", **common), on_step=kill_at_5)
    resumed = trainer.fit(config(root, model, folder, "killed", **common))
    assert resumed.step == 9
    assert_trees_equal(full.params, resumed.params)
    assert json.loads((root / "killed" / "summary.json").read_text())["best"] == full.best


def test_eval_only_at_the_end_still_checkpoints_every_epoch(workspace):
    root, model, folder = workspace  # 96 training rows in batches of 16: 6 steps per epoch.
    result = trainer.fit(config(root, model, folder, "eval-end", epochs=2.0, eval_every=-1))
    assert result.status == "finished" and result.step == 12
    evals = [json.loads(line)["step"] for line in (root / "eval-end" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals == [12] and result.best["step"] == 12
    saved = sorted(int(p.name) for p in (root / "eval-end" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [6, 12]


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(workspace):
    root, model, folder = workspace
    common = dict(max_steps=7, checkpoint_every=100, eval_every=100, dropout=True)
    full = trainer.fit(config(root, model, folder, "full7", **common))

    def term_at_3(step, _):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = trainer.fit(config(root, model, folder, "term", **common), on_step=term_at_3)
    assert stopped.status == "preempted" and stopped.step == 3
    assert sorted(p.name for p in (root / "term" / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The handler is removed again.
    resumed = trainer.fit(config(root, model, folder, "term", **common))
    assert resumed.status == "finished" and resumed.step == 7
    assert_trees_equal(full.params, resumed.params)


def test_sigterm_to_the_finetune_command_checkpoints_and_exits_cleanly(workspace, tmp_path):
    root, model, folder = workspace
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.finetune", "--model", str(model), "--source", str(folder),
           "--output-dir", str(out), "--epochs", "1000", "--batch-size", "16", "--log-every", "1",
           "--checkpoint-every", "100000", "--eval-every", "100000", "--no-progress", "--max-length", "32"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in err
    steps = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 2


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(workspace, tmp_path):
    root, model, folder = workspace
    difficulty = write_difficulty(folder, tmp_path / "difficulty.jsonl")
    scale = [np.float32(0.0)]  # 0 for the first 4 steps, then NaN: the DAR term reads it at every step.

    @losses.register_dar_variant("test_nan_after_step_4", overwrite=True)
    def _nan(confidence, difficulty, mask, *, margin, rng=None, soft_difficulty=None):
        factor = jax.pure_callback(lambda: np.asarray(scale[0], np.float32), jax.ShapeDtypeStruct((), jnp.float32))
        return factor * jnp.sum(confidence)

    def poison_after_4(step, _):
        if step == 4:
            scale[0] = np.float32(np.nan)

    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 5.*last good checkpoint is step 4"):
        trainer.fit(config(root, model, folder, "nan", max_steps=8, checkpoint_every=2, eval_every=100,
                           loss=trainer.LossConfig(kind="dar", dar_variant="test_nan_after_step_4"),
                           difficulty_file=str(difficulty)), on_step=poison_after_4)
    steps = sorted(int(p.name) for p in (root / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert max(steps) == 4


# ---------------------------------------------------------------------------------------------------------------
# Learning with each loss.


@pytest.mark.parametrize("kind", ["ce", "dar", "kd"])
def test_a_tiny_model_learns_with_each_loss(workspace, tmp_path, kind):
    root, model, folder = workspace
    extra = {}
    if kind == "dar":
        extra["difficulty_file"] = str(write_difficulty(folder, tmp_path / "d.jsonl"))
    if kind == "kd":
        extra["teacher"] = str(tiny.make_model_dir(tmp_path / "teacher", layers=1, hidden=32, seed=5))
    cfg = config(root, model, folder, f"learn-{kind}", epochs=8, loss=trainer.LossConfig(kind=kind), log_every=6,
                 dropout=False, **extra)
    result = trainer.fit(cfg)
    records = [json.loads(l) for l in (pathlib.Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["ce"] < 0.7 * train[0]["ce"], [r["ce"] for r in train]
    if kind == "dar":
        assert all(np.isfinite(r["dar"]) for r in train) and any(r["dar"] > 0 for r in train)
    if kind == "kd":
        assert all(np.isfinite(r["kd"]) for r in train)
    assert result.best["accuracy"] > 0.75  # Chance is about 0.5 on this balanced task.
    # The saved model is the best dev checkpoint, in Hugging Face layout.
    module, params = models.from_pretrained(result.model_dir, num_labels=2)
    assert_trees_equal(params, result.params)
    assert (pathlib.Path(cfg.output_dir) / "tensorboard").is_dir()
    assert json.loads((pathlib.Path(cfg.output_dir) / "config.json").read_text())["loss"]["kind"] == kind


def test_bfloat16_mixed_precision_learns_and_keeps_float32_parameters(workspace):
    # Compute in bf16 (bf16 matmuls accumulating in float32), parameters and optimiser in float32.
    root, model, folder = workspace
    cfg = config(root, model, folder, "learn-bf16", epochs=8, loss=trainer.LossConfig(kind="ce"), log_every=6,
                 dropout=False, dtype="bfloat16")
    result = trainer.fit(cfg)
    records = [json.loads(l) for l in (pathlib.Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["ce"] < 0.7 * train[0]["ce"], [r["ce"] for r in train]
    assert result.best["accuracy"] > 0.75
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(result.params))


# ---------------------------------------------------------------------------------------------------------------
# Errors and small pieces.


def test_dar_without_difficulty_labels_is_a_clear_error(workspace):
    root, model, folder = workspace
    with pytest.raises(ValueError, match="needs difficulty labels"):
        trainer.fit(config(root, model, folder, "nodiff", loss=trainer.LossConfig(kind="dar"), max_steps=1))


def test_unknown_loss_and_variant_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss kind"):
        trainer.LossConfig(kind="hinge")
    with pytest.raises(KeyError, match="unknown DAR variant 'nope'.*all_pairs"):
        trainer.LossConfig(kind="dar", dar_variant="nope")


def test_weight_decay_skips_layernorm_and_biases(workspace):
    _, model, _ = workspace
    _, params = models.from_pretrained(model, num_labels=2)
    flat = {"/".join(k): v for k, v in jax.tree_util.tree_leaves_with_path(configs.decay_mask(params))
            for k in [[getattr(p, "key", str(p)) for p in k]]}
    assert flat["bert/encoder/layer_0/attention/self/query/kernel"]
    assert not flat["bert/encoder/layer_0/attention/self/query/bias"]
    assert not flat["bert/embeddings/LayerNorm/scale"]
    assert flat["bert/embeddings/word_embeddings/embedding"]


def test_learning_rate_schedule_warms_up_and_decays_linearly():
    s = configs.linear_warmup_decay(1.0, total_steps=10, warmup_steps=2)
    np.testing.assert_allclose([float(s(i)) for i in range(11)],
                               [0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0], atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Data parallelism on 8 forced CPU devices (in a subprocess: the device count is fixed at JAX start-up).

PARALLEL_SCRIPT = r"""
import json, sys, pathlib
import jax, numpy as np
from cascade_jax import configs, parallel, trainer
root, model, folder, difficulty = map(pathlib.Path, sys.argv[1:5])
assert jax.device_count() == 8, jax.devices()
results, first = {}, {}
for name, backend, n in [("one", "shard_map", 1), ("shard_map", "shard_map", 8), ("pmap", "pmap", 8)]:
    dp = parallel.DataParallel(backend, parallel.data_mesh(jax.devices()[:n]))
    cfg = configs.create(trainer.TrainConfig, {
        "output_dir": str(root / name), "model.name": str(model), "task": "rotten_tomatoes", "source": str(folder),
        "batch_size": 24, "max_steps": 5, "learning_rate": 1e-3, "progress": False, "dropout": False,
        "max_length": 32, "eval_every": 100, "difficulty_file": str(difficulty),
        "loss": trainer.LossConfig(kind="dar", pair_scope="global", margin=0.5)})
    def record(step, m, name=name):
        if step == 1:
            first[name] = {k: float(np.ravel(v)[0]) for k, v in m.items()}
    results[name] = trainer.fit(cfg, dp=dp, on_step=record).params
leaves = {k: jax.tree_util.tree_leaves(v) for k, v in results.items()}
diff = {k: max(float(np.max(np.abs(a - b))) for a, b in zip(leaves["one"], leaves[k])) for k in leaves}
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves["one"], jax.tree_util.tree_leaves(
    __import__("cascade_jax.models", fromlist=["x"]).from_pretrained(str(model), num_labels=2)[1])))
print(json.dumps({"diff": diff, "moved": moved, "first": first}))
"""


def test_shard_map_pmap_and_one_device_give_the_same_parameters(workspace, tmp_path):
    root, model, folder = workspace
    difficulty = write_difficulty(folder, tmp_path / "difficulty.jsonl", seed=1)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT, str(tmp_path), str(model), str(folder),
                           str(difficulty)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["moved"] > 1e-3  # Training changed the parameters, so equality below means something.
    # Five AdamW steps at lr 1e-3 over the same global batches (24 rows = 3 per device; the last batch of the
    # epoch is padded): only float32 summation order differs between layouts.
    assert out["diff"]["shard_map"] < 1e-5 and out["diff"]["pmap"] < 1e-5, out
    # The first step's loss, DAR term and gradient norm (before clipping) agree too: a gradient scaled by the
    # device count would hide behind Adam's scale invariance in the parameters, but not here.
    for name in ("shard_map", "pmap"):
        for key in ("loss", "dar", "ce", "grad_norm", "accuracy", "examples"):
            np.testing.assert_allclose(out["first"][name][key], out["first"]["one"][key], rtol=1e-5, err_msg=key)


def test_replicated_state_is_reused_in_place_by_a_donating_step(monkeypatch):
    """DataParallel.replicate(donated=True) gives each host leaf a buffer of its own: a donating step writes its
    output into it. A read-only view of a device buffer (what jax.device_get returns on CPU) was aliased before, and
    the step then allocated and copied a second state. A device array passes uncopied, in the step's sharding (else
    a step would compile again when its outputs come back). Inputs only read (donated=False) are not copied."""
    from cascade_jax import parallel

    copied = []
    owned = parallel._owned_copies
    monkeypatch.setattr(parallel, "_owned_copies", lambda arrays: copied.append(len(arrays)) or owned(arrays))
    dp = parallel.DataParallel()
    made = jax.jit(lambda: jnp.arange(4096, dtype=jnp.float32))()
    view = jax.device_get(made)
    tree = {"view": view, "fresh": np.ones(4096, np.float32)}
    read_only = dp.replicate(tree)
    assert copied == []
    np.testing.assert_array_equal(np.asarray(read_only["view"]), view)
    placed = dp.replicate(tree, donated=True)
    assert copied == [2]
    before = {k: v.addressable_data(0).unsafe_buffer_pointer() for k, v in placed.items()}
    step = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x * 2 + 1, t), donate_argnums=0)
    out = step(placed)
    for k in tree:
        np.testing.assert_array_equal(np.asarray(out[k]), tree[k] * 2 + 1)
        assert out[k].addressable_data(0).unsafe_buffer_pointer() == before[k], k
        assert placed[k].is_deleted()
    np.testing.assert_array_equal(view, np.arange(4096, dtype=np.float32))  # The host view is untouched.
    made = jax.jit(lambda: jnp.ones(8))()  # A single device's array: kept, in the step's sharding.
    again = dp.replicate({"made": made}, donated=True)["made"]
    assert again.unsafe_buffer_pointer() == made.unsafe_buffer_pointer()
    assert again.sharding == jax.tree_util.tree_leaves(placed)[0].sharding


# ---------------------------------------------------------------------------------------------------------------
# A run folder is one run.


def test_a_finished_folder_refuses_other_settings_and_keeps_its_config(workspace, tmp_path):
    root, model, folder = workspace
    done = trainer.fit(config(root, model, folder, "refuse", max_steps=2, eval_every=2))
    assert done.status == "finished"
    saved = (root / "refuse" / "config.json").read_text()
    for change, field in [({"loss": trainer.LossConfig(kind="kd"), "teacher": str(model)}, "loss.kind"),
                          ({"learning_rate": 0.5}, "optim.learning_rate"), ({"seed": 3}, "seed"),
                          ({"max_steps": 5}, "optim.max_steps"), ({"train_subset": 10}, "data.train_subset")]:
        with pytest.raises(configs.ResumeMismatchError, match=field.replace(".", r"\.")):
            trainer.fit(config(root, model, folder, "refuse", **{"max_steps": 2, "eval_every": 2, **change}))
        assert (root / "refuse" / "config.json").read_text() == saved  # Nothing claims the new settings.
    other = tiny.make_model_dir(tmp_path / "other", layers=2, hidden=32)
    with pytest.raises(configs.ResumeMismatchError, match="model.name"):
        trainer.fit(config(root, model, folder, "refuse", max_steps=2, eval_every=2, **{"model.name": str(other)}))
    cmd = [sys.executable, "-m", "train.finetune", "--model", str(model), "--source", str(folder), "--output-dir",
           str(root / "refuse"), "--max-steps", "2", "--loss", "kd", "--lr", "0.5", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "other settings" in proc.stderr and "Traceback" not in proc.stderr


def test_all_easy_labels_warn_that_dar_cannot_act(workspace, tmp_path):
    root, model, folder = workspace
    ids = np.asarray(data.load_split("rotten_tomatoes", "train", folder)["id"])
    easy = tmp_path / "easy.jsonl"
    easy.write_text("".join(json.dumps({"id": int(i), "difficulty": 0}) + "\n" for i in ids))
    with pytest.warns(trainer.DarInactiveWarning, match="labelled easy"):
        trainer.fit(config(root, model, folder, "all-easy", max_steps=1, eval_every=1,
                           loss=trainer.LossConfig(kind="dar"), difficulty_file=str(easy)))


def test_a_resumed_run_logs_each_step_once(workspace):
    root, model, folder = workspace
    common = dict(max_steps=8, checkpoint_every=2, eval_every=100, log_every=1)

    def kill_at_6(step, _):
        if step == 6:
            raise Interrupt  # Dies before step 6's log and checkpoint: step 5 was logged, the last checkpoint is 4.

    with pytest.raises(Interrupt):
        trainer.fit(config(root, model, folder, "relog", **common), on_step=kill_at_6)
    logged = [json.loads(line)["step"] for line in (root / "relog" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == 5
    trainer.fit(config(root, model, folder, "relog", **common))  # Resumes at 4: steps 5 and 6 run again.
    steps = [json.loads(line)["step"] for line in (root / "relog" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 9))
