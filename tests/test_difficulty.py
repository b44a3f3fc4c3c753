"""Difficulty labelling: folds, vmapped members = separate runs, labels file, chunking, resume, devices, CLI.

Every run here uses one tiny configuration (1-layer BERT, K=3 folds x S=2 seeds, 61 examples, max_length 16 so a
single length bucket) so that the compiled steps are shared between tests (see stacked._mapped_functions).
Most runs train without dropout: with dropout, each device draws its own masks (keys fold in the device index, as
in the trainer), so only dropout-free runs can be compared across device counts; and the threefry code of dropout
doubles compile time. The vmapped = separate test runs with dropout.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cascade_jax import configs, data, difficulty, metrics, models, parallel, stacked
from tests import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDS, SEEDS, N_TRAIN = 3, 2, 61  # Folds of 21, 20, 20: members train on 40 or 41 examples (5 or 6 steps of 8).


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("difficulty")
    model = tiny.make_model_dir(root / "model", layers=1, hidden=32)
    folder = tiny.make_sentiment_folder(root / "data", n_train=N_TRAIN, n_dev=8, n_test=8)
    return root, model, folder


def config(workspace, name, **kw):
    root, model, folder = workspace
    base = {"output_dir": str(root / name), "model.name": str(model), "task": "rotten_tomatoes",
            "source": str(folder), "folds": FOLDS, "seeds": SEEDS, "epochs": 4, "batch_size": 8,
            "learning_rate": 1e-2, "max_length": 16, "eval_batch_size": 16, "progress": False, "log_every": 3,
            "dropout": False, "sequential": False}  # The vmapped path, unless a test asks otherwise.
    base.update(kw)
    return configs.create(difficulty.LabelConfig, base)


@pytest.fixture(scope="module")
def full_run(workspace):
    """All 6 members at once, without dropout."""
    return difficulty.label_difficulty(config(workspace, "full"))


def read_jsonl(path) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


# ---------------------------------------------------------------------------------------------------------------
# Folds and members.


def test_folds_partition_the_training_set_into_near_equal_deterministic_folds():
    for n, k in [(61, 3), (100, 8), (8, 8), (1001, 7)]:
        fold = difficulty.assign_folds(n, k, seed=3)
        sizes = np.bincount(fold, minlength=k)
        assert fold.shape == (n,) and sizes.sum() == n and sizes.max() - sizes.min() <= 1 and sizes.min() >= 1
        np.testing.assert_array_equal(fold, difficulty.assign_folds(n, k, seed=3))
    assert not np.array_equal(difficulty.assign_folds(100, 4, 0), difficulty.assign_folds(100, 4, 1))
    with pytest.raises(ValueError, match="cannot split 3 examples into 4"):
        difficulty.assign_folds(3, 4, 0)

    members = difficulty.plan_members(61, FOLDS, SEEDS, seed=5)
    assert [(m.index, m.fold, m.seed_index, m.seed) for m in members] == [
        (k * SEEDS + s, k, s, 5 + s) for k in range(FOLDS) for s in range(SEEDS)]
    held = np.zeros(61, int)
    for m in members:
        assert np.intersect1d(m.train_positions, m.heldout_positions).size == 0
        np.testing.assert_array_equal(np.union1d(m.train_positions, m.heldout_positions), np.arange(61))
        held[m.heldout_positions] += 1
    assert (held == SEEDS).all()  # Every example is held out by exactly the S members of its fold.
    assert [len(g) for g in stacked.groups_of(members, 4)] == [4, 2]
    assert [len(g) for g in stacked.groups_of(members, None)] == [6]


def test_bad_settings_are_clear_errors(workspace):
    with pytest.raises(ValueError, match="folds must be at least 2"):
        config(workspace, "x", folds=1)
    with pytest.raises(ValueError, match="chunk must be a positive"):
        config(workspace, "x", chunk=0)
    with pytest.raises(ValueError, match="regression task"):
        difficulty.make_plan(config(workspace, "x", task="stsb"))


# ---------------------------------------------------------------------------------------------------------------
# Vmapped members equal separate runs.


def test_vmapped_members_equal_separate_runs_of_the_same_step(workspace, full_run):
    """Members trained as one vmapped step vs each trained alone with the un-vmapped step: same seeds, folds,
    data order and dropout keys (dropout on). Only float rounding may differ (batched vs single matmuls, and the
    vmapped batches are padded to the longest member's length): float32 over 24 AdamW steps, within 1e-5 (seen:
    1.2e-6) while the parameters move by ~0.05-0.09. One exception: the attention *key bias* has an exactly zero
    gradient (it adds the same q.b to every key's score, which softmax ignores), so its "gradient" is rounding
    noise that Adam normalises into lr-sized steps; it only has to stay at noise level in both runs."""
    plan = difficulty.make_plan(config(workspace, "full", dropout=True))
    group = plan.members[::SEEDS]  # One member of each fold: training sets of 40 and 41 examples (5 or 6 steps).
    assert {data.steps_per_epoch(len(m.train_positions), 8) for m in group} == {5, 6}
    dp = parallel.DataParallel()
    together, status, _ = stacked.train_group(plan, group, dp, stacked=True)
    assert status == "finished"
    initial = leaves(plan.init_params(group[0].seed))
    moved = max(float(np.max(np.abs(a[0] - b))) for a, b in zip(leaves(together.params), initial))
    assert moved > 1e-3  # Training changed the parameters, so the equality below means something.
    for i, member in enumerate(group):
        alone, _, _ = stacked.train_group(plan, [member], dp, stacked=False)
        for (path, a), b, c in zip(jax.tree_util.tree_leaves_with_path(together.params), leaves(alone.params),
                                   leaves(plan.init_params(member.seed))):
            name = jax.tree_util.keystr(path)
            if "['key']['bias']" in name:
                assert np.abs(a[i] - c).max() < 1e-3 and np.abs(b - c).max() < 1e-3, name
            else:
                np.testing.assert_allclose(a[i], b, rtol=0, atol=1e-5, err_msg=name)
        # Lock-step padding: a member with fewer examples skipped its all-padding steps (step counter unchanged).
        own = data.steps_per_epoch(len(member.train_positions), plan.optim.batch_size)
        assert int(together.step[i]) == int(alone.step) == own * plan.total_steps // plan.steps_per_epoch

    # The same through the whole pipeline (without dropout): --sequential labels equal the vmapped run's.
    seq = difficulty.label_difficulty(config(workspace, "sequential", sequential=True))
    a, b = read_jsonl(full_run.labels_path), read_jsonl(seq.labels_path)
    for k in ("id", "difficulty", "seeds_wrong", "num_seeds", "fold"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(a["confidence"], b["confidence"], atol=1e-5)
    assert seq.summary["groups"] == 6 and full_run.summary["groups"] == 1


def test_the_automatic_mode_is_one_member_at_a_time_on_cpu_and_a_run_folder_keeps_its_mode(workspace, tmp_path):
    def mode(platform, folder=tmp_path / "new", **kw):
        cfg = configs.create(difficulty.LabelConfig, {"output_dir": str(folder), **kw})
        return difficulty.resolve_mode(cfg, platform).sequential

    assert configs.create(difficulty.LabelConfig, {"output_dir": "x"}).sequential is None
    assert mode("cpu") is True and mode("gpu") is False and mode("tpu") is False
    assert mode("cpu", chunk=3) is False  # --chunk asks for vmapped groups.
    assert mode("gpu", sequential=True) is True and mode("cpu", sequential=False) is False  # Explicit wins.
    for saved in (True, False):  # A folder made in one mode resumes in it, on any platform.
        folder = tmp_path / f"saved-{saved}"
        configs.write(folder, difficulty.CONFIG_FILE, configs.create(
            difficulty.LabelConfig, {"output_dir": str(folder), "sequential": saved}))
        assert mode("cpu", folder) is saved and mode("gpu", folder) is saved
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / difficulty.CONFIG_FILE).write_text("{not json")
    with pytest.raises(configs.ConfigError, match=r"broken/config.json is not valid JSON"):
        mode("cpu", broken)
    (broken / difficulty.CONFIG_FILE).write_text(json.dumps({"sequential": "yes"}))
    with pytest.raises(configs.ConfigError, match=r"broken/config.json: sequential is 'yes', expected true, false"):
        mode("cpu", broken)
    (broken / difficulty.CONFIG_FILE).write_text(json.dumps({"sequential": None}))  # Undecided: the platform's.
    assert mode("cpu", broken) is True and mode("gpu", broken) is False
    # End to end on this CPU: the automatic mode trains one member per group and says so in the summary.
    auto = difficulty.label_difficulty(config(workspace, "auto", sequential=None, epochs=1))
    assert auto.summary["sequential"] is True and auto.summary["groups"] == FOLDS * SEEDS
    saved = json.loads((auto.output_dir / difficulty.CONFIG_FILE).read_text())
    assert saved["sequential"] is True


# ---------------------------------------------------------------------------------------------------------------
# The labels file and summary.


def test_every_example_gets_one_label_from_exactly_its_s_held_out_members(workspace, full_run):
    root, model, folder = workspace
    labels = read_jsonl(full_run.labels_path)
    enc = data.encode_split("rotten_tomatoes", "train", str(folder), tokenizer=models.tokenizer_for(model),
                            max_length=16)
    np.testing.assert_array_equal(np.sort(labels["id"]), np.sort(enc.ids))
    assert len(np.unique(labels["id"])) == N_TRAIN
    assert (labels["num_seeds"] == SEEDS).all()
    np.testing.assert_array_equal(labels["difficulty"], (labels["seeds_wrong"] > 0).astype(int))  # Strict = soft>0.
    assert ((0 <= labels["seeds_wrong"]) & (labels["seeds_wrong"] <= SEEDS)).all()
    assert ((labels["confidence"] >= 0.5) & (labels["confidence"] <= 1.0)).all()  # Two classes.
    np.testing.assert_array_equal(labels["fold"], difficulty.assign_folds(N_TRAIN, FOLDS, 0))

    summary = json.loads((full_run.output_dir / "summary.json").read_text())
    assert summary["folds"] == FOLDS and summary["seeds"] == SEEDS and summary["epochs"] == 4
    assert 0 < summary["share_hard"] < 1, summary  # Both kinds occur, so DIS is defined.
    assert summary["share_hard"] == pytest.approx(labels["difficulty"].mean())
    # The members' held-out errors add up to the seeds_wrong column.
    wrong = sum((1 - p["heldout_accuracy"]) * p["heldout_examples"] for p in summary["per_member"])
    assert wrong == pytest.approx(labels["seeds_wrong"].sum())
    assert len(summary["per_member"]) == FOLDS * SEEDS and summary["train_seconds"] > 0

    # DIS in the summary is metrics.difficulty_inversion_score of the written file, exactly.
    assert summary["dis"] == metrics.difficulty_inversion_score(labels["confidence"], labels["difficulty"])

    # The data layer reads the labels back, JSONL and CSV alike, and they match.
    for path in (full_run.labels_path, full_run.output_dir / "difficulty.csv"):
        joined = data.join_by_id(enc, path)
        order = np.argsort(labels["id"])
        pos = order[np.searchsorted(labels["id"][order], enc.ids)]
        for c in ("difficulty", "seeds_wrong", "num_seeds"):
            np.testing.assert_array_equal(joined.extras[c], labels[c][pos])
        np.testing.assert_array_equal(joined.extras["confidence"], labels["confidence"][pos].astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Chunks, resume, CLI.


@pytest.fixture(scope="module")
def chunked(workspace):
    """All members in groups of 3, through the command line (default checkpointing)."""
    from train import label_difficulty as cli

    root, model, folder = workspace
    out = root / "chunked"
    rc = cli.main(["--model", str(model), "--source", str(folder), "--output-dir", str(out), "--folds", str(FOLDS),
                   "--seeds", str(SEEDS), "--epochs", "4", "--batch-size", "8", "--lr", "1e-2", "--max-length", "16",
                   "--eval-batch-size", "16", "--log-every", "3", "--chunk", "3", "--no-progress", "--no-dropout"])
    assert rc == 0
    return out


def test_chunks_give_the_same_labels_as_all_at_once(full_run, chunked):
    summary = json.loads((chunked / "summary.json").read_text())
    assert summary["groups"] == 2 and summary["chunk"] == 3
    a, b = read_jsonl(full_run.labels_path), read_jsonl(chunked / "difficulty.jsonl")
    for k in ("id", "difficulty", "seeds_wrong", "num_seeds", "fold"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(a["confidence"], b["confidence"], atol=1e-5)  # Other batch shapes: rounding only.
    assert not (chunked / "groups" / "000" / "checkpoints").exists()  # Finished groups keep only predictions.


class Interrupt(Exception):
    pass


def assert_same_run(out: pathlib.Path, reference: pathlib.Path, summary: dict) -> None:
    """Byte-identical labels, and the same summary but for times."""
    for name in ("difficulty.jsonl", "difficulty.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    timeless = lambda s: {k: v for k, v in s.items() if "seconds" not in k}  # noqa: E731
    assert timeless(summary) == timeless(json.loads((reference / "summary.json").read_text()))


def test_resume_after_a_kill_gives_identical_labels(workspace, chunked):
    """Killed in the second group (the first finished, the second checkpointed at step 4 of 24), then resumed:
    the same output as the uninterrupted run with the same settings."""

    def kill(group, step, per_member):
        assert per_member["loss"].shape == (3,)
        if group == 1 and step == 5:
            raise Interrupt

    cfg = config(workspace, "killed", chunk=3, checkpoint_every=2)
    with pytest.raises(Interrupt):
        difficulty.label_difficulty(cfg, on_step=kill)
    out = pathlib.Path(cfg.output_dir)
    assert (out / "groups" / "000" / "predictions.npz").exists()
    assert not (out / "groups" / "001" / "predictions.npz").exists()
    assert max(int(p.name) for p in (out / "groups" / "001" / "checkpoints").iterdir() if p.name.isdigit()) == 4
    assert not (out / "difficulty.jsonl").exists()

    resumed = difficulty.label_difficulty(cfg)
    assert resumed.status == "finished"
    assert_same_run(out, chunked, resumed.summary)

    with pytest.raises(difficulty.ResumeMismatchError, match="seeds"):
        difficulty.label_difficulty(config(workspace, "killed", chunk=3, seeds=3))


def test_sigterm_checkpoints_the_current_group_and_resume_is_identical(workspace, chunked):
    def term(group, step, per_member):
        if group == 0 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = config(workspace, "term", chunk=3, checkpoint_every=100)
    stopped = difficulty.label_difficulty(cfg, on_step=term)
    assert stopped.status == "preempted" and stopped.summary is None
    out = pathlib.Path(cfg.output_dir)
    assert sorted(p.name for p in (out / "groups" / "000" / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The handler is removed again.
    resumed = difficulty.label_difficulty(cfg)
    assert resumed.status == "finished"
    assert_same_run(out, chunked, resumed.summary)


def test_cli_help_explains_the_options():
    proc = subprocess.run([sys.executable, "-m", "train.label_difficulty", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--model", "--num-layers", "--task", "--source", "--folds", "--seeds", "--epochs", "--lr",
                   "--batch-size", "--max-length", "--chunk", "--output-dir", "--backend", "--train-subset",
                   "--no-progress"):
        assert option in proc.stdout, option


# ---------------------------------------------------------------------------------------------------------------
# Devices: each member's batch split over 2 forced CPU devices (shard_map and pmap) gives the 1-device result.

DEVICES_SCRIPT = r"""
import json, sys
import jax, numpy as np
from cascade_jax import configs, difficulty, parallel
assert jax.device_count() == 2, jax.devices()
base = configs.from_dict(difficulty.LabelConfig, json.loads(sys.argv[1]))
out = {}
for backend in ("shard_map", "pmap"):
    cfg = configs.override(base, {"output_dir": base.output_dir + "-" + backend, "backend": backend})
    result = difficulty.label_difficulty(cfg, dp=parallel.DataParallel(backend))
    with np.load(result.output_dir / "groups" / "000" / "predictions.npz") as f:
        out[backend] = f["logits"].tolist()
print(json.dumps(out))
"""


def test_members_split_over_devices_match_one_device(workspace, full_run):
    cfg = configs.to_dict(config(workspace, "devices"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, json.dumps(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(full_run.output_dir / "groups" / "000" / "predictions.npz") as f:
        one = f["logits"]
    # 4 rows of each member's batch per device; per-member gradients all-reduced inside the vmapped step (no
    # dropout, so the same function as on one device). A gradient summed over members, or not averaged over
    # devices, would show here at once; summation order over devices is all that may differ.
    for backend in ("shard_map", "pmap"):
        np.testing.assert_allclose(np.asarray(out[backend]), one, atol=2e-5, err_msg=backend)
