"""Report files (strict JSON, Markdown with intervals, the plot) of a comparison, and the evaluation entry point end to
end on tiny trained models."""

import json
import math
import struct

import numpy as np
import pytest

from cascade_jax import configs, report, trainer
from eval import evaluate_cascade
from tests import tiny


def _strict_json(text):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _assert_png(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert width > 100 and height > 100 and len(raw) > 1000


def _table_rows(markdown, section):
    block = markdown.split(f"## {section}")[1].split("\n## ")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return rows[2:]  # Header and separator.


def test_json_safe_writes_strict_json():
    doc = report.json_safe({"a": np.float32(0.5), "b": [np.int64(3), float("nan")], "c": np.array([1.0, np.inf]),
                            "d": np.bool_(True)})
    assert doc == {"a": 0.5, "b": [3, None], "c": [1.0, None], "d": True}
    _strict_json(json.dumps(doc, allow_nan=False))


def test_tables_and_claim_lines_from_a_comparison_document():
    doc = {"targets": [1.5], "meta": {"metric": "accuracy"}, "methods": {"m": {
        "seeds": 2, "auc": {"range": [1, 2], "mean": 0.8, "sd": 0.01},
        "targets": {"1.5": {"reached": [True, False], "at_majority": False, "pooled_accuracy": 0.8,
                            "accuracy_interval": [0.78, 0.82], "test_speedup": [1.52, 1.61],
                            "dev_speedup": [1.5, 1.5], "dev_metric": [0.81, 0.79]}}}},
        "claims": [{"text": "m beats n", "a": "m", "b": "n", "rows": [
            {"target": 1.5, "difference": 0.02, "interval": [0.01, 0.03], "verdict": "reproduces"}]}]}
    table = report.target_table(doc)
    assert "| m | 2 | 80.00 [78.00, 82.00] at 1.52-1.61x (dev 1.50x, 80.00) (not reached) |" in table
    assert report.claim_lines(doc) == ["- **m beats n** (m minus n, points): 1.5x: 2.00 [1.00, 3.00] -> reproduces. "
                                       "Overall: reproduces."]
    assert "| m | 80.00 | 1.00 |" in report.auc_table(doc)


def test_overall_verdict_counts_only_targets_that_compare():
    unreached, majority = "no comparison: a target is not reached", "no comparison: a method answers the majority class"
    assert report.overall_verdict(["not distinguishable"] * 4 + [unreached]) == "not distinguishable"
    assert report.overall_verdict(["contradicted", majority, "contradicted"]) == "contradicted"
    assert report.overall_verdict([unreached, majority]) == "no comparison at any target"
    assert report.overall_verdict(["not distinguishable", "reproduces", "reproduces", unreached]) == \
        "mixed (1 not distinguishable, 2 reproduces)"


# ---------------------------------------------------------------------------------------------------------------
# The entry point, end to end.


@pytest.mark.slow
def test_entry_point_end_to_end(tmp_path, capsys):
    folder = tiny.make_sentiment_folder(tmp_path / "data", n_train=32, n_dev=16, n_test=16)
    members = []
    for name, layers in (("small", 1), ("large", 2)):
        init = tiny.make_model_dir(tmp_path / f"init-{name}", layers=layers, hidden=32)
        fit = trainer.fit(configs.create(trainer.TrainConfig, {
            "output_dir": str(tmp_path / name), "model.name": str(init), "source": str(folder), "max_length": 32,
            "buckets": (32,), "batch_size": 16, "learning_rate": 3e-3, "max_steps": 2, "eval_every": 2,
            "log_every": 2, "progress": False}))
        members.append(str(fit.model_dir))
    common = ["--source", str(folder), "--max-length", "32"]
    # One multi-exit model serves as both DeeBERT and PABEE here (PABEE's joint training is tested in
    # test_baselines; compiling it again would double this test's time).
    assert evaluate_cascade.main(["train-exits", "--model", members[1], "--mode", "deebert", "--max-steps", "2",
                                  "--batch-size", "16", "--output-dir", str(tmp_path / "exits"), "--no-progress",
                                  *common]) == 0
    assert (tmp_path / "exits" / "summary.json").exists()
    out = tmp_path / "report"
    exits = str(tmp_path / "exits" / "model")
    argv = ["evaluate", "--cascade", *members, "--static", members[0], "--deebert", exits, "--pabee", exits,
            "--split", "test", "--tune-split", "validation", "--target-speedup", "1.2", "--sweep-points", "4",
            "--batch-size", "8", "--resamples", "50", "--compare", "cascade", "DeeBERT", "--output-dir", str(out),
            *common]
    capsys.readouterr()
    assert evaluate_cascade.main(argv) == 0
    printed = capsys.readouterr().out
    doc = _strict_json((out / "results.json").read_text())
    methods = {"cascade", "static small", "DeeBERT", "PABEE"}
    assert set(doc["methods"]) == methods == set(doc["points"])
    assert doc["meta"]["examples"] == 16 and doc["meta"]["split"] == "test"
    for name in methods:
        row = doc["methods"][name]["targets"]["1.2"]
        assert 0 <= row["pooled_accuracy"] <= 1 and row["accuracy_interval"][0] <= row["pooled_accuracy"]
        assert row["test_speedup"][0] > 0 and len(row["dev_speedup"]) == 1
    assert all(p["split"] == "test" and p["num_examples"] == 16 for pts in doc["points"].values() for p in pts)
    assert all(p["reference_layers"] == 2 and math.isfinite(p["flops_speedup"]) for pts in doc["points"].values()
               for p in pts)
    (claim,) = doc["claims"]
    assert (claim["a"], claim["b"]) == ("cascade", "DeeBERT") and len(claim["rows"]) == 1
    md = (out / "results.md").read_text()
    assert len(_table_rows(md, "Matched operating points")) == len(methods)
    assert "| cascade |" in printed and "results.json" in printed
    _assert_png(out / "curve.png")
    with pytest.raises(SystemExit, match="not among the methods"):
        evaluate_cascade.main(["evaluate", "--cascade", *members, "--compare", "cascade", "nope",
                               "--output-dir", str(out), *common])
