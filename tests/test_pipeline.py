"""The whole pipeline in miniature (tiny models, tiny data): every stage's outputs, and resuming."""

import json
import pathlib

import numpy as np
import pytest

from cascade_jax import configs, models, pipeline, trainer
from cascade_jax.data import holdout
from tests import tiny


MINIATURE = {
    "preset": "miniature", "cuts": "everything (a test)", "task": "rotten_tomatoes", "trunc_layers": 1,
    "bert_kl_layers": (1, 2), "max_length": 32, "seeds": 2,
    "labels.folds": 2, "labels.seeds": 2, "labels.optim": configs.OptimConfig(epochs=1.0, batch_size=16,
                                                                                learning_rate=3e-3),
    "labels_shallow.folds": 2, "labels_shallow.seeds": 1,
    "labels_shallow.optim": configs.OptimConfig(epochs=2.0, batch_size=16, learning_rate=3e-3),
    "members": configs.OptimConfig(epochs=2.0, batch_size=16, learning_rate=3e-3),
    "shallow": configs.OptimConfig(epochs=3.0, batch_size=16, learning_rate=1e-3),
    "exits": configs.OptimConfig(epochs=1.0, batch_size=16, learning_rate=3e-3),
    "pabee": configs.OptimConfig(epochs=1.0, batch_size=16, learning_rate=3e-3), "dar.margins": (0.3, 0.5),
    "distill_layers": 1, "distill": configs.OptimConfig(epochs=1.0, batch_size=16, learning_rate=3e-3),
    "kd.member": True, "eval.targets": (1.2, 1.6), "eval.auc_range": (1.0, 1.5), "eval.sweep_points": 5,
    "eval.batch_size": 16, "eval.resamples": 100, "eval.ood_tasks": ("vader_nyt",),
    "eval.wallclock_batch_sizes": (16,), "eval.wallclock_repeats": 1, "progress": False,
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    small = tiny.make_model_dir(root / "small", layers=1, hidden=32, seed=1)
    large = tiny.make_model_dir(root / "large", layers=3, hidden=32, seed=2)
    folder = tiny.make_sentiment_folder(root / "data", n_train=64, n_dev=32, n_test=32)
    config = configs.create(pipeline.PipelineConfig, {**MINIATURE, "output_dir": str(root / "run"),
                                                      "source": str(folder), "small_model": str(small),
                                                      "large_model": str(large)})
    lines = []
    spent = pipeline.run(config, log=lines.append)
    return config, lines, spent


def test_every_stage_ran_and_wrote_its_outputs(finished_run):
    config, lines, spent = finished_run
    out = pathlib.Path(config.output_dir)
    layout = pipeline.RunLayout(out)
    assert list(spent) == list(pipeline.STAGE_ORDER)
    for which in ("small", "shallow"):
        assert layout.labels_file(which).exists() and (layout.labels_dir(which) / "summary.json").exists()
    for i in range(2):
        for group in ("small", "shallow"):
            for name in (pipeline.ce_member(i), pipeline.dar_member(0.3, i), pipeline.dar_member(0.5, i)):
                assert (layout.member_model(group, name) / "model.safetensors").exists(), (group, name)
        assert (layout.member_model("kd", pipeline.seed_member(i)) / "model.safetensors").exists()
        assert (layout.baseline_model("bert-2L", i) / "model.safetensors").exists()
        for mode in ("deebert", "pabee", "fastbert"):
            assert (layout.baseline_model(mode, i) / "multi_exit.json").exists(), mode
        for name in ("bert-pkd", "theseus", "bert-pd"):
            assert (layout.baseline_model(name, i) / "model.safetensors").exists(), name
    assert (layout.member_model("large", "s0") / "model.safetensors").exists()
    shallow_labels = json.loads((layout.labels_dir("shallow") / "summary.json").read_text())
    assert shallow_labels["num_layers"] == 1  # The truncated member's own labellers are truncations too.
    assert (shallow_labels["folds"], shallow_labels["seeds"], shallow_labels["epochs"]) == (2, 1, 2.0)
    doc = json.loads(layout.results_file.read_text())
    names = doc["meta"]["names"]
    assert {"DeeBERT", "PABEE", "FastBERT", "BERT-1L", "BERT-2L", names["main"], names["main_ce"], names["main_ts"],
            names["trunc"], names["trunc_ce"], names["kd"], names["three"], names["large"], names["pkd"],
            names["theseus"], names["pd"]} <= set(doc["methods"])
    assert not any(n.startswith("CascadeBERT") and "DAR" not in n for n in doc["methods"])  # No CascadeBERT w/o DAR.
    for name, m in doc["methods"].items():
        seeds = 1 if name == names["large"] else 2
        assert m["seeds"] == seeds and set(m["targets"]) == {"1.2", "1.6"}, name
        for row in m["targets"].values():
            assert len(row["dev_speedup"]) == len(row["test_metric"]) == seeds
            low, high = row["accuracy_interval"]
            assert low <= row["pooled_accuracy"] <= high
    assert doc["meta"]["margin"] in (0.3, 0.5) and set(doc["meta"]["margin_dev_scores"]) == {"0.3", "0.5"}
    assert {c["key"] for c in doc["claims"]} >= {"dar_cascade", "dar_cascade_trunc", "vs_deebert", "vs_pabee",
                                                  "vs_fastbert", "vs_bert_2l", "vs_pkd", "vs_theseus", "vs_pd",
                                                  "complete_vs_truncated", "complete_vs_truncated_kd",
                                                  "dar_vs_temperature"}
    for c in doc["claims"]:
        for r in c["rows"]:
            assert r["verdict"] in ("reproduces", "contradicted", "not distinguishable") or r["verdict"].startswith(
                "no comparison"), r
    assert all(t is not None and t > 0 for t in doc["methods"][names["main_ts"]]["temperatures"])
    assert set(doc["table5"]) == {"small/test", "small/dev", "shallow/test", "shallow/dev"}
    assert doc["ood"]["removed_as_in_train"] == {"vader_nyt": 0} and doc["ood"]["sizes"]["vader_nyt"] > 4000
    assert len(doc["wallclock"]) == 2 and set(doc["exit_layers"]) == {"DeeBERT", "PABEE", "FastBERT"}
    assert all(len(seeds) == 2 and len(seeds[0]) == 3 for seeds in doc["exit_layers"].values())
    thresholds = doc["cascade_thresholds"]
    assert thresholds["method"] == names["main"] and set(thresholds["thresholds"]) == {"1.2", "1.6"}
    assert all((out / m).is_dir() for m in thresholds["members"])
    assert (layout.report_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("running" in line for line in lines)


def test_results_page_comes_from_the_results_file(finished_run, tmp_path):
    config, _, _ = finished_run
    page = pipeline.write_results_page(config.output_dir, tmp_path / "docs" / "results.md")
    text = page.read_text()
    doc = json.loads(pipeline.RunLayout(config.output_dir).results_file.read_text())
    assert "Table 2" in text and "Table 5" in text and "findings, decided by intervals" in text
    main = doc["meta"]["names"]["main"]
    row = doc["methods"][main]["targets"]["1.2"]
    assert f"{row['pooled_accuracy'] * 100:.2f} [{row['accuracy_interval'][0] * 100:.2f}, " in text
    for claim in doc["claims"]:
        assert claim["text"] in text
    assert (tmp_path / "docs" / "results_curve.png").exists()
    # The run wrote the same page into its own report folder (README and `./run main` point there).
    assert (pipeline.RunLayout(config.output_dir).report_dir / "results.md").read_text() == text
    assert "Out of domain" in text and "vader_nyt" in text and "Internal classifiers" in text
    assert f"malloc: {doc['provenance']['malloc']}" in text and "counts its last invocation only" in text


def test_a_second_invocation_resumes_instead_of_recomputing(finished_run):
    config, _, _ = finished_run
    lines = []
    spent = pipeline.run(config, log=lines.append)
    assert spent == {}
    assert sum("skipped" in line for line in lines) == len(pipeline.STAGE_ORDER)


def test_a_training_stage_run_again_makes_the_evaluation_run_again(finished_run):
    import shutil

    config, _, _ = finished_run
    layout = pipeline.RunLayout(config.output_dir)
    assert pipeline.evaluation_stale(layout) == []
    layout.marker("deebert").unlink()
    shutil.rmtree(layout.baseline("deebert"))
    lines = []
    spent = pipeline.run(config, log=lines.append)
    assert list(spent) == ["deebert", "evaluate"]
    assert any("deebert finished after the last evaluation" in line for line in lines)
    assert pipeline.evaluation_stale(layout) == []


def test_unknown_preset_and_stage_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        pipeline.make_config("fast", str(tmp_path))
    for name in ("pkd_epochs", "large_epochs"):  # Refused up front, not when its stage starts hours later.
        with pytest.raises(ValueError, match=f"{name} must be positive"):
            pipeline.make_config("quick", str(tmp_path), {name: 0.0})
    with pytest.raises(ValueError, match="no setting 'epochz'"):
        pipeline.make_config("quick", str(tmp_path), {"epochz": 3})
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.run(pipeline.make_config("quick", str(tmp_path)), only=("labels", "nope"))


def test_a_trained_cascade_predicts_raw_texts(finished_run):
    from cascade_jax import cascade
    from cascade_jax.predict import CascadePredictor

    config, _, _ = finished_run
    predictor = CascadePredictor.from_pipeline(config.output_dir, batch_size=4)
    texts = ["the film was great and moving", "dull boring plot", "a story", "superb acting", "weak and clumsy"]
    for threshold, expect in [(0.0, {0}), (1.0, {1})]:
        out = predictor.predict(texts, threshold=threshold)
        assert len(out) == len(texts) and {o["exit_stage"] for o in out} == expect
        assert all(o["label_name"] == predictor.task.label_names[o["label"]] for o in out)
    # Same answers as the simulated cascade at an in-between threshold.
    inputs = predictor.encode(texts)
    sim = cascade.simulate(predictor.stages, inputs, 0.6, 4)
    out = predictor.predict(texts, threshold=0.6)
    assert [o["exit_stage"] for o in out] == sim.exit_stage.tolist()
    np.testing.assert_allclose([o["confidence"] for o in out], sim.probs.max(-1), atol=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        predictor.predict(["", "x"])


def _write_tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def test_a_glue_task_holds_out_part_of_dev_as_its_labelled_test_split(tmp_path):
    """SST-2 in the official GLUE layout: its test split has no labels, so the pipeline tests on a seeded half of
    dev, and the members select their checkpoints on the other half only."""
    folder = tmp_path / "SST-2"
    folder.mkdir()
    rows = tiny.sentiment_rows(96, 0)
    _write_tsv(folder / "train.tsv", ["sentence", "label"], rows[:64])
    _write_tsv(folder / "dev.tsv", ["sentence", "label"], rows[64:])
    _write_tsv(folder / "test.tsv", ["index", "sentence"], [(i, s) for i, (s, _) in enumerate(rows[64:])])
    small = tiny.make_model_dir(tmp_path / "small", layers=1, hidden=32, seed=1)
    large = tiny.make_model_dir(tmp_path / "large", layers=2, hidden=32, seed=2)
    config = configs.create(pipeline.PipelineConfig, {
        **MINIATURE, "output_dir": str(tmp_path / "run"), "task": "sst2", "source": str(tmp_path),
        "small_model": str(small), "large_model": str(large), "seeds": 1, "bert_kl_layers": (1,),
        "dar.margins": (0.5,), "kd.member": False, "eval.ood_tasks": (), "eval.wallclock_batch_sizes": (),
        "dev_eval": "epoch", "members": configs.OptimConfig(epochs=1.0, batch_size=16, learning_rate=3e-3)})
    pipeline.run(config)
    doc = json.loads(pipeline.RunLayout(config.output_dir).results_file.read_text())
    assert (doc["meta"]["dev_examples"], doc["meta"]["test_examples"]) == (16, 16)
    assert "held out as test" in doc["meta"]["test_source"] and "withheld" in doc["meta"]["test_source"]
    assert all(0 <= r["pooled_accuracy"] <= 1 for m in doc["methods"].values() for r in m["targets"].values())
    # Training selects its checkpoints on the 16 dev examples that are not the test examples.
    tokenizer = models.tokenizer_for(large)
    _, dev = trainer.load_training_data(trainer.TrainConfig(output_dir="unused", data=config.data), tokenizer)
    _, test, _ = holdout.dev_and_test("sst2", str(tmp_path), tokenizer=tokenizer, max_length=32)
    assert len(dev) == len(test) == 16 and not set(dev.ids.tolist()) & set(test.ids.tolist())
    evals = [json.loads(line) for line in (pipeline.RunLayout(config.output_dir).group("small") /
                                           "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" for r in evals)


def test_dar_variants_are_compared_with_cross_entropy_on_a_finished_run(finished_run, tmp_path, capsys):
    from eval import compare_dar

    config, _, _ = finished_run
    out = tmp_path / "variants"
    assert compare_dar.main(["--run", config.output_dir, "--variants", "all_pairs", "logistic", "--margins", "0.4",
                             "--weights", "0.5", "--seeds", "1", "--resamples", "50", "--output-dir", str(out),
                             "--no-progress"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["methods"]) == {"cross entropy", "all_pairs, margin 0.4, weight 0.5",
                                   "logistic, margin 0.4, weight 0.5"}
    assert {c["b"] for c in doc["claims"]} == {"cross entropy"} and len(doc["claims"]) == 2
    assert set(doc["small_member_test"]["logistic, margin 0.4, weight 0.5"]) == {"ece", "dis"}
    assert "minus CE" in printed and "beats cross entropy alone" in printed
    # One stacked run per DAR variant, each with the cross-entropy member and the variant's member.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["all_pairs", "logistic"]


def test_a_run_folder_refuses_other_training_settings_and_reruns_evaluation_only_for_eval_changes(finished_run,
                                                                                                    tmp_path):
    from cascade_jax.configs import ResumeMismatchError

    config, _, _ = finished_run
    layout = pipeline.RunLayout(config.output_dir)
    saved = layout.config_file.read_text()
    for change in ({"train_subset": 10}, {"small_model": "minilm-l6"}, {"dar.margins": (0.5,)}):
        with pytest.raises(ResumeMismatchError):
            pipeline.run(configs.override(config, change), only=("labels",))
        assert layout.config_file.read_text() == saved
    # An empty or broken marker is not a finished stage.
    marker = layout.marker("evaluate")
    kept = marker.read_text()
    marker.write_text("")
    assert not pipeline.stage_done(layout, "evaluate")
    marker.write_text(kept)
    assert pipeline.stage_done(layout, "evaluate")
    # Changing only the evaluation settings makes the evaluate stage run again (and nothing else).
    lines = []
    changed = configs.override(config, {"eval.resamples": 60})
    spent = pipeline.run(changed, log=lines.append, only=("labels", "evaluate"))
    assert list(spent) == ["evaluate"] and any("evaluation settings changed" in line for line in lines)
    pipeline.run(config, only=("evaluate",))  # Back to the fixture's settings for the other tests.


def test_pkd_epochs_replace_the_distilled_baselines_epochs_for_bert_pkd_only(tmp_path, monkeypatch):
    from cascade_jax.pipeline import stages

    made = {}

    def capture(config, name, train, make):
        made[name] = make(str(tmp_path / name), "minilm-l6", 0).optim

    monkeypatch.setattr(stages, "_distilled", capture)
    quick = pipeline.make_config("quick", str(tmp_path))
    stages.stage_pkd(quick)
    stages.stage_theseus(quick)
    assert made["bert-pkd"].epochs == quick.pkd_epochs == 4.0
    assert made["theseus"].epochs == quick.distill.epochs == 2.0
    assert made["bert-pkd"].learning_rate == quick.distill.learning_rate
    assert "BERT-PKD 4 epoch(s)" in quick.cuts
    standard = pipeline.make_config("standard", str(tmp_path))
    stages.stage_pkd(standard)
    assert standard.pkd_epochs is None and made["bert-pkd"].epochs == standard.distill.epochs
