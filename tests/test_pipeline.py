"""The whole pipeline in miniature (tiny models, tiny data): every stage's outputs, and resuming."""

import json
import pathlib

import numpy as np
import pytest

from cascade_jax import configs, pipeline
from tests import tiny


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    small = tiny.make_model_dir(root / "small", layers=1, hidden=32, seed=1)
    large = tiny.make_model_dir(root / "large", layers=2, hidden=32, seed=2)
    folder = tiny.make_sentiment_folder(root / "data", n_train=64, n_dev=32, n_test=32)
    config = configs.create(pipeline.PipelineConfig, {
        "output_dir": str(root / "run"), "preset": "miniature", "cuts": "everything (a test)",
        "task": "rotten_tomatoes", "source": str(folder), "small_model": str(small), "large_model": str(large),
        "trunc_layers": 1, "bert_kl_layers": (1,), "max_length": 32,
        "labels.folds": 2, "labels.seeds": 2, "labels.optim": configs.OptimConfig(epochs=1.0, batch_size=16,
                                                                                    learning_rate=3e-3),
        "members": configs.OptimConfig(epochs=2.0, batch_size=16, learning_rate=3e-3),
        "shallow": configs.OptimConfig(epochs=3.0, batch_size=16, learning_rate=1e-3),
        "exits": configs.OptimConfig(epochs=1.0, batch_size=16, learning_rate=3e-3), "dar.margins": (0.3, 0.5),
        "eval.targets": (1.2, 1.6), "eval.sweep_points": 5, "eval.batch_size": 16,
        "eval.wallclock_batch_sizes": (16,), "eval.wallclock_repeats": 1, "progress": False,
    })
    lines = []
    spent = pipeline.run(config, log=lines.append)
    return config, lines, spent


def test_every_stage_ran_and_wrote_its_outputs(finished_run):
    config, lines, spent = finished_run
    out = pathlib.Path(config.output_dir)
    assert list(spent) == list(pipeline.STAGE_ORDER)
    assert (out / "labels" / "difficulty.jsonl").exists() and (out / "labels" / "summary.json").exists()
    for name in ["small-ce", "small-dar-m0.3", "small-dar-m0.5", "large", "large-1L-kd"]:
        assert (out / "members" / name / "model" / "model.safetensors").exists(), name
    assert (out / "baselines" / "bert-1L" / "model" / "model.safetensors").exists()
    for name in ["deebert", "pabee"]:
        assert (out / "baselines" / name / "model" / "config.json").exists(), name
    doc = json.loads((out / "report" / "results.json").read_text())
    methods = {s["method"] for s in doc["selected"]}
    assert {"DeeBERT", "PABEE", "BERT-1L", "BERT-2L (large member)"} <= methods
    assert sum(m.startswith("CascadeBERT") for m in methods) == 3 and any(m.startswith("Cascade w/o") for m in methods)
    assert doc["meta"]["margin"] in (0.3, 0.5) and set(doc["meta"]["margin_dev_scores"]) == {"0.3", "0.5"}
    assert len(doc["table5"]) == 2 and len(doc["wallclock"]) == 2
    assert (out / "report" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(doc["exit_layers"]) == {"DeeBERT", "PABEE"} and all(len(v) == 2 for v in doc["exit_layers"].values())
    # The truncated models train with the shallow settings, the complete members with the members' settings.
    for run_dir, epochs, lr in [(out / "baselines" / "bert-1L", 3.0, 1e-3), (out / "members" / "large-1L-kd", 3.0, 1e-3),
                                (out / "members" / "large", 2.0, 3e-3)]:
        saved = json.loads((run_dir / "config.json").read_text())["optim"]
        assert (saved["epochs"], saved["learning_rate"]) == (epochs, lr), run_dir
    assert any("rest ~" in line or "running" in line for line in lines)


def test_results_page_comes_from_the_results_file(finished_run, tmp_path):
    config, _, _ = finished_run
    page = pipeline.write_results_page(config.output_dir, tmp_path / "docs" / "results.md")
    text = page.read_text()
    doc = json.loads((pathlib.Path(config.output_dir) / "report" / "results.json").read_text())
    assert "Table 2" in text and "Table 5" in text and "What reproduces" in text
    se = 100 * np.sqrt(0.75 * 0.25 / doc["meta"]["test_examples"])
    assert f"standard error of {se:.1f} points" in text
    first = doc["selected"][0]
    assert f"{first['test']['metrics'][doc['meta']['metric']] * 100:.2f}" in text
    assert (tmp_path / "docs" / "results_curve.png").exists()
    # Each member alone, once, with the cascades it is used in; each exit layer of DeeBERT and PABEE.
    members = text.split("## The cascade members alone (dev)")[1].split("##")[0]
    assert sum(line.startswith("| large |") for line in members.splitlines()) == 1
    assert "small-ce" in members and "large-1L-kd" in members
    exits = text.split("## Internal classifiers")[1].split("##")[0]
    for name, layers in doc["exit_layers"].items():
        row = f"| {name} | " + " | ".join(f"{m['metrics']['accuracy'] * 100:.2f}" for m in layers) + " |"
        assert row in exits


def test_a_second_invocation_resumes_instead_of_recomputing(finished_run):
    config, _, _ = finished_run
    lines = []
    spent = pipeline.run(config, log=lines.append)
    assert spent == {}
    assert sum("skipped" in line for line in lines) == len(pipeline.STAGE_ORDER)


def test_unknown_preset_and_stage_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        pipeline.make_config("fast", str(tmp_path))
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
