"""Members that differ only in numbers (seed, DAR margin and weight) trained as one vmapped run equal separate runs;
the stacked run resumes exactly and keeps each member's own best dev checkpoint."""

import dataclasses
import json
import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from cascade_jax import configs, data, models, parallel, stacked, trainer
from tests import tiny


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacked")
    model = tiny.make_model_dir(root / "model", layers=1, hidden=32)
    folder = tiny.make_sentiment_folder(root / "data", n_train=40, n_dev=24)
    ids = np.asarray(data.load_split("rotten_tomatoes", "train", folder)["id"])
    rng = np.random.default_rng(0)
    labels = root / "difficulty.jsonl"
    labels.write_text("".join(json.dumps({"id": int(i), "difficulty": int(rng.random() < 0.4)}) + "\n" for i in ids))
    return root, model, folder, labels


COMMON = {"task": "rotten_tomatoes", "batch_size": 8, "epochs": 2, "lr": 5e-3, "max_length": 16, "progress": False,
          "log_every": 1, "eval_batch_size": 8}
VARIANTS = (stacked.Variant(name="ce-s0", seed=0, dar_weight=0.0),
            stacked.Variant(name="dar-m0.3-s1", seed=1, margin=0.3, dar_weight=0.5),
            stacked.Variant(name="dar-m0.5-s2", seed=2, margin=0.5, dar_weight=1.0))


def set_config(workspace, name, **kw):
    root, model, folder, labels = workspace
    return configs.create(stacked.MemberSetConfig, {
        **COMMON, "output_dir": str(root / name), "model.name": str(model), "source": str(folder),
        "loss.kind": "dar", "difficulty_file": str(labels), "variants": VARIANTS, **kw})


def single_config(workspace, name, variant, **kw):
    root, model, folder, labels = workspace
    loss = trainer.LossConfig(kind="ce") if variant.dar_weight == 0 else trainer.LossConfig(
        kind="dar", margin=variant.margin, dar_weight=variant.dar_weight)
    return configs.create(trainer.TrainConfig, {
        **COMMON, "output_dir": str(root / name), "model.name": str(model), "source": str(folder), "loss": loss,
        "seed": variant.seed, "difficulty_file": str(labels), **kw})


@pytest.fixture(scope="module")
def together(workspace):
    return stacked.fit_members(set_config(workspace, "together", chunk=3))  # One vmapped group of all three.


def test_stacked_members_equal_separate_runs(workspace, together):
    """Three members (a cross-entropy one as DAR with weight 0, two DAR margins/weights, three seeds) as one vmapped
    run against three trainer.fit runs: the same seeds, data order and dropout keys; each keeps its best dev epoch.
    Only float rounding differs (batched matmuls; batches padded to the longest member's length)."""
    assert_equal_to_separate_runs(workspace, together, VARIANTS, "alone")


def test_stacked_members_with_length_grouping_equal_separate_runs(workspace):
    # The stacked run draws each member's batches through the same grouping as trainer.fit.
    grouped = stacked.fit_members(set_config(workspace, "together-grouped", variants=VARIANTS[1:], length_grouping=2,
                                             chunk=2))
    assert_equal_to_separate_runs(workspace, grouped, VARIANTS[1:], "alone-grouped", length_grouping=2)


def assert_equal_to_separate_runs(workspace, together, variants, prefix, **kw):
    assert together.status == "finished" and set(together.model_dirs) == {v.name for v in variants}
    for v in variants:
        alone = trainer.fit(single_config(workspace, f"{prefix}-{v.name}", v, **kw))
        _, params = models.from_pretrained(together.model_dirs[v.name], num_labels=2)
        assert together.best[v.name]["step"] == alone.best["step"], v.name
        assert together.best[v.name]["accuracy"] == pytest.approx(alone.best["accuracy"], abs=1e-9)
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(alone.params),
            jax.tree_util.tree_leaves(models.from_pretrained(workspace[1], num_labels=2, seed=v.seed)[1])))
        assert moved > 1e-3
        assert_params_close(params, alone.params, v.name)


def assert_params_close(params, reference, label):
    """Equal up to float rounding, leaf by leaf."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(reference)):
        name = jax.tree_util.keystr(path)
        tol = 1e-3 if "['key']['bias']" in name else 1e-5  # See test_difficulty: a gradient that is pure noise.
        np.testing.assert_allclose(a, b, rtol=0, atol=tol, err_msg=f"{label} {name}")


def test_a_stopped_stacked_run_resumes_to_the_same_members(workspace, together):
    def term_at_4(step, _):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = stacked.fit_members(set_config(workspace, "term", chunk=3), on_step=term_at_4)
    assert stopped.status == "preempted" and stopped.model_dirs == {}
    resumed = stacked.fit_members(set_config(workspace, "term", chunk=3))
    assert resumed.status == "finished"
    for v in VARIANTS:
        a = models.from_pretrained(resumed.model_dirs[v.name], num_labels=2)[1]
        b = models.from_pretrained(together.model_dirs[v.name], num_labels=2)[1]
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
        assert resumed.best[v.name] == together.best[v.name]
    with pytest.raises(configs.ResumeMismatchError, match="variants"):
        stacked.fit_members(set_config(workspace, "term", variants=VARIANTS[:2], chunk=3))


def test_on_cpu_members_train_one_at_a_time_by_default_and_equal_the_vmapped_group(workspace, together):
    root = workspace[0]
    auto = stacked.fit_members(set_config(workspace, "auto"))
    assert auto.status == "finished"
    assert configs.read_saved(root / "auto", trainer.CONFIG_FILE)["chunk"] == 1  # Resolved, then saved.
    assert sorted(p.name for p in (root / "auto" / "groups").iterdir()) == ["000", "001", "002"]
    for v in VARIANTS:  # The same members as the vmapped group of three, up to float rounding.
        assert auto.best[v.name]["step"] == together.best[v.name]["step"]
        assert_params_close(models.from_pretrained(auto.model_dirs[v.name], num_labels=2)[1],
                            models.from_pretrained(together.model_dirs[v.name], num_labels=2)[1], v.name)


def test_chunk_is_resolved_per_platform_and_a_folder_keeps_the_grouping_it_was_made_with(tmp_path):
    new = stacked.MemberSetConfig(output_dir=str(tmp_path / "new"), variants=VARIANTS)
    assert stacked.resolve_chunk(new, "cpu").chunk == 1
    assert stacked.resolve_chunk(new, "gpu").chunk is None  # All at once.
    assert stacked.resolve_chunk(dataclasses.replace(new, chunk=2), "cpu").chunk == 2
    for saved, platform in ((None, "cpu"), (1, "gpu"), (2, "tpu")):
        folder = tmp_path / f"saved-{saved}-{platform}"
        configs.write(folder, trainer.CONFIG_FILE, dataclasses.replace(new, output_dir=str(folder), chunk=saved))
        assert stacked.resolve_chunk(dataclasses.replace(new, output_dir=str(folder)), platform).chunk == saved
    with pytest.raises(configs.ConfigError, match="chunk"):
        stacked.MemberSetConfig(output_dir="x", variants=VARIANTS, chunk=0)
    for bad in (0, -2, 1.5, True, "2"):  # A hand-edited folder: the error names its file and the value.
        folder = tmp_path / f"bad-{bad}"
        configs.write(folder, trainer.CONFIG_FILE, dataclasses.replace(new, output_dir=str(folder)))
        saved = json.loads((folder / trainer.CONFIG_FILE).read_text())
        (folder / trainer.CONFIG_FILE).write_text(json.dumps({**saved, "chunk": bad}))
        with pytest.raises(configs.ConfigError, match=rf"bad-{bad}/{trainer.CONFIG_FILE}: chunk is "):
            stacked.resolve_chunk(dataclasses.replace(new, output_dir=str(folder)), "cpu")


def test_variant_names_must_be_distinct():
    with pytest.raises(configs.ConfigError, match="distinct"):
        stacked.MemberSetConfig(output_dir="x", variants=(stacked.Variant(name="a"), stacked.Variant(name="a")))


def test_config_with_variants_round_trips(workspace, tmp_path):
    c = set_config(workspace, "rt")
    assert configs.from_dict(stacked.MemberSetConfig, json.loads(json.dumps(configs.to_dict(c)))) == c
    assert pathlib.Path(c.output_dir).name == "rt"


@pytest.mark.parametrize("is_stacked", [True, False])
def test_predict_group_returns_each_members_logits_in_the_order_of_its_positions(workspace, is_stacked):
    """predict_group batches each member's positions in order of length and puts the logits back: against each
    example run alone, unpadded, through its member's own parameters, for shuffled positions with repeats and
    members with different numbers of positions (so some batches of the stack are empty for one member)."""
    root, model, folder, _ = workspace
    config = set_config(workspace, "predict-order")
    tokenizer = models.tokenizer_for(str(model))
    train = data.encode_split("rotten_tomatoes", "train", str(folder), tokenizer=tokenizer, max_length=16)
    rng = np.random.default_rng(3)
    positions = [rng.permutation(len(train)), rng.integers(0, len(train), size=13)][:2 if is_stacked else 1]
    members = [stacked.Member(index=i, seed=i, train_positions=np.arange(len(train))) for i in range(len(positions))]
    plan = stacked.make_plan(config.model, config.data, config.optim,
                             dataclasses.replace(config.run, eval_batch_size=8), trainer.LossConfig(kind="ce"), train,
                             members)
    params = [jax.tree_util.tree_map(lambda x, k=i: x + 0.01 * k, plan.init_params(i)) for i in range(len(members))]
    host = stacked.stack_trees(params) if is_stacked else params[0]
    got = stacked.predict_group(plan, members, host, parallel.DataParallel(config.run.backend), positions, enc=train,
                                stacked=is_stacked)
    for member_params, pos, logits in zip(params, positions, got):
        assert logits.shape == (len(pos), plan.num_labels)
        for row, p in enumerate(pos):
            ids = train.input_ids[train.offsets[p]:train.offsets[p + 1]][None]
            want = plan.module.apply({"params": member_params}, ids, np.ones_like(ids),
                                     train.token_type_ids[train.offsets[p]:train.offsets[p + 1]][None]).logits
            np.testing.assert_allclose(logits[row], np.asarray(want)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("varied", [False, True])
def test_stacked_initial_state_equals_the_members_states_stacked(workspace, varied):
    """Plan.init_stacked_state (built on the device from each distinct seed's parameters) against the members' own
    initial states stacked on the host: same structure, dtypes, shapes and values, for repeated seeds in an order
    that is not sorted, with and without per-member loss numbers."""
    root, model, folder, _ = workspace
    config = set_config(workspace, "init-stacked")
    tokenizer = models.tokenizer_for(str(model))
    train = data.encode_split("rotten_tomatoes", "train", str(folder), tokenizer=tokenizer, max_length=16)
    seeds = [2, 0, 2, 1, 0]
    members = [stacked.Member(index=i, seed=s, train_positions=np.arange(len(train)),
                              hparams={"margin": 0.1 * i} if varied else {}) for i, s in enumerate(seeds)]
    plan = stacked.make_plan(config.model, config.data, config.optim, config.run, trainer.LossConfig(kind="dar"),
                             train, members)
    base = plan.init_params(0)
    for s in set(seeds):  # Distinct parameters per seed, so that a member given another seed's would show.
        plan._init_params[s] = jax.tree_util.tree_map(lambda x, k=s: x + 0.01 * k, base)
    got = plan.init_stacked_state(members)
    want = stacked.stack_trees([plan.init_state(m) for m in members])
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    assert (got.hparams is not None) == varied
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape and g.shape[0] == len(members)
        np.testing.assert_array_equal(g, w)
    heads = np.asarray(got.params["classifier"]["kernel"])
    assert not np.array_equal(heads[0], heads[1]) and np.array_equal(heads[0], heads[2])
