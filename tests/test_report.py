"""Curves, threshold selection and report files on hand-made inputs; the eval entry point end to end on tiny
trained models."""

import json
import math
import struct

import numpy as np
import pytest

from cascade_jax import cascade, configs, metrics, report, trainer
from eval import evaluate_cascade
from tests import tiny

# ---------------------------------------------------------------------------------------------------------------
# Hand-made cascade outputs.

LABELS = np.array([0, 1, 0, 1])
STAGE1 = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]  # right, wrong, wrong, right; max .9 .6 .7 .8
STAGE2 = [[0.8, 0.2], [0.1, 0.9], [0.9, 0.1], [0.6, 0.4]]  # right, right, right, wrong


def _sim(stage1=STAGE1, stage2=STAGE2, layers=(1, 3)):
    probs = np.array([stage1, stage2], np.float32)
    entropy = -(probs * np.log(probs)).sum(-1) / np.log(2)
    return cascade.CascadeSimulation(probs=probs, max_prob=probs.max(-1), entropy=entropy.astype(np.float32),
                                     num_layers=layers)


def _curve(**kw):
    return report.Curve.cascade(_sim(), LABELS, "accuracy", flops_per_stage=[1.0, 3.0], split="dev", **kw)


def test_cascade_points_by_hand():
    curve = _curve()
    mid = curve.point(0.75)  # Examples 0 and 3 exit at stage 1 (both right); 1 and 2 go on (both right there).
    assert mid.metrics == {"accuracy": 1.0} and mid.metric == 1.0
    assert mid.mean_layers == 2.5 and mid.layer_speedup == pytest.approx(3 / 2.5)
    assert mid.flops_speedup == pytest.approx(3 / 2.5)
    assert mid.exit_shares == (0.5, 0.5) and mid.exit_unit == "stage"
    conf = np.array([0.9, 0.9, 0.9, 0.8])
    assert mid.ece == pytest.approx(metrics.expected_calibration_error(conf, [True] * 4))
    first, last = curve.point(0.0), curve.point(1.0)
    assert (first.metric, first.layer_speedup, first.exit_shares) == (0.5, 3.0, (1.0, 0.0))
    assert (last.metric, last.layer_speedup, last.exit_shares) == (0.75, 0.75, (0.0, 1.0))
    # A common reference model: the speed-ups divide its layers / FLOPs instead.
    ref = _curve(reference_layers=6, reference_flops=6.0).point(0.75)
    assert ref.layer_speedup == pytest.approx(6 / 2.5) and ref.flops_speedup == pytest.approx(6 / 2.5)


def test_cascade_grid_and_sweep_span_both_extremes():
    curve = _curve()
    grid = curve.grid(3)
    assert grid == sorted(set(grid)) and grid[0] == 0.0 and grid[-1] == 1.0
    assert {float(np.float32(0.6)), float(np.float32(0.9))} <= set(grid)  # Quantiles 0 and 1 of stage 1.
    assert len(grid) == 5
    points = report.sweep(curve, num=3)
    assert len(points) == len(grid)
    assert points[0].layer_speedup == 3.0 and points[-1].layer_speedup == 0.75
    assert [p.param for p in report.sweep(curve, [0.1, 0.95])] == [0.1, 0.95]
    entropy_grid = report.Curve.cascade(_sim(), LABELS, exit_rule="entropy").grid(2)
    assert entropy_grid[0] == 0.0 and entropy_grid[-1] > 1.0


def test_members_have_ece_and_dis():
    members = _curve(names=["small", "large"]).members(difficulty=np.array([0, 1, 1, 0]))
    assert [m["name"] for m in members] == ["small", "large"]
    assert members[0]["metrics"]["accuracy"] == 0.5
    # Easy (0, 3): conf .9, .8; hard (1, 2): .6, .7 -> every pair ranked right.
    assert members[0]["dis"] == 1.0
    conf = np.array(STAGE1, np.float32).max(-1).astype(np.float64)
    assert members[0]["ece"] == pytest.approx(metrics.expected_calibration_error(conf, [1, 0, 0, 1]))
    assert _curve().members()[0]["dis"] is None


def test_early_exit_and_static_curves_by_hand():
    # 3 layers, 2 examples. Example 0 predicts 0,0,1 ; example 1 predicts 1,1,1 (label 1 for both).
    logits = np.array([[[2, 0], [0, 2]], [[2, 0], [0, 3]], [[0, 2], [0, 4]]], np.float32)
    labels = np.array([1, 1])
    pabee = report.Curve.early_exit(logits, labels, rule="patience", name="PABEE")
    assert pabee.grid() == [0, 1, 2] and pabee.param_name == "patience"
    p1 = pabee.point(1)  # Example 0 agrees at layer 2 (wrong, 0); example 1 at layer 2 (right).
    assert p1.mean_layers == 2.0 and p1.layer_speedup == 1.5 and p1.metric == 0.5
    assert p1.exit_shares == (0.0, 1.0, 0.0) and p1.flops_speedup is None
    p2 = pabee.point(2)
    assert p2.layer_speedup == 1.0 and p2.metric == 1.0
    deebert = report.Curve.early_exit(logits, labels, rule="max_prob", exit_costs=[1.0, 2.0, 3.0],
                                    reference_flops=2.5, name="DeeBERT")
    d = deebert.point(0.95)  # Max probs: 2 vs 0 -> .881, 3 vs 0 -> .953: example 1 exits at layer 2, example 0 last.
    assert d.exit_shares == (0.0, 0.5, 0.5) and d.flops_speedup == pytest.approx(2.5 / 2.5)
    static = report.Curve.static(logits[0], labels, num_layers=1, reference_layers=3, flops=1.0, reference_flops=3.0)
    s = static.point()
    assert (s.param, s.layer_speedup, s.flops_speedup, s.metric) == (1, 3.0, 3.0, 0.5)
    assert s.exit_shares == (1.0, 0.0, 0.0) and static.grid() == [1]
    with pytest.raises(ValueError):
        static.point(2)


# ---------------------------------------------------------------------------------------------------------------
# Choosing an operating point.


def _p(speedup, metric, param=0.0, method="m"):
    return report.Point(method=method, param_name="threshold", param=param, split="dev", num_examples=1,
                        metric_name="accuracy", metrics={"accuracy": metric}, layer_speedup=speedup,
                        mean_layers=1.0, reference_layers=1, flops_speedup=None, exit_unit="stage",
                        exit_shares=(1.0,), ece=0.0)


def test_select_point_rules():
    points = [_p(1.0, 0.90, 1), _p(1.4, 0.89, 2), _p(1.6, 0.85, 3), _p(2.0, 0.85, 4), _p(2.5, 0.70, 5)]
    assert report.select_point(points, 1.5).param == 4  # Best metric >= 1.5x; the tie goes to the faster.
    assert report.select_point(points, 1.0).param == 1
    assert report.select_point(points, 2.2).param == 5
    assert report.select_point(points, 3.0).param == 5  # Unreachable: the closest from below.
    assert report.select_point([_p(2.0, 0.8, 7), _p(2.0, 0.8, 8)], 1.5).param == 7  # Full tie: the first.
    assert report.select_point([_p(2.0, float("nan"), 7), _p(1.8, 0.1, 8)], 1.5).param == 8  # NaN never wins.
    with pytest.raises(ValueError):
        report.select_point([], 1.0)


def test_operating_points_choose_on_dev_and_apply_on_test():
    dev = _curve()
    test = report.Curve.cascade(_sim(stage1=STAGE2, stage2=STAGE1), LABELS, "accuracy", split="test")
    chosen = report.operating_points(dev, test, [1.2, 5.0], num=3)
    assert [s.target for s in chosen] == [1.2, 5.0]
    assert chosen[0].reached and chosen[0].dev.metric == 1.0 and chosen[0].dev.layer_speedup >= 1.2
    assert not chosen[1].reached and chosen[1].dev.layer_speedup == 3.0
    for s in chosen:
        assert s.test.param == s.dev.param and s.test.split == "test"
        assert s.test == test.point(s.dev.param)


# ---------------------------------------------------------------------------------------------------------------
# Files.


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


def test_write_report_files(tmp_path):
    curve = _curve()
    points = report.sweep(curve, num=3) + [_p(2.0, 0.6, 1, method="other")]
    members = {"cascade": curve.members()}  # DIS None; add a NaN too.
    members["cascade"][0]["ece"] = float("nan")
    selected = report.operating_points(curve, curve, [1.5])
    paths = report.write_report(tmp_path / "out", points, members=members, selected=selected,
                                meta={"task": "t", "split": "dev"}, title="hand-made")
    doc = _strict_json(paths["json"].read_text())
    assert len(doc["points"]) == len(points) and doc["points"][0]["metrics"]["accuracy"] == points[0].metric
    assert doc["members"]["cascade"][0]["ece"] is None and doc["selected"][0]["target"] == 1.5
    md = paths["markdown"].read_text()
    assert len(_table_rows(md, "Points")) == len(points)
    assert len(_table_rows(md, "Operating points")) == 1 and len(_table_rows(md, "Members")) == 2
    assert report.markdown_table(points).count("\n") == len(points) + 2
    _assert_png(paths["plot"])


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
    argv = ["evaluate", "--cascade", *members, "--static", members[0], "--deebert", exits, "--pabee", exits, "--split", "test", "--tune-split", "validation",
            "--target-speedup", "1.2", "--sweep-points", "4", "--batch-size", "8", "--output-dir", str(out), *common]
    capsys.readouterr()
    assert evaluate_cascade.main(argv) == 0
    printed = capsys.readouterr().out
    doc = _strict_json((out / "results.json").read_text())
    methods = {p["method"] for p in doc["points"]}
    assert methods == {"cascade", "BERT-kL", "DeeBERT", "PABEE"}
    assert {s["method"] for s in doc["selected"]} == methods
    assert all(p["split"] == "test" and p["num_examples"] == 16 for p in doc["points"])
    assert all(p["reference_layers"] == 2 and math.isfinite(p["flops_speedup"]) for p in doc["points"])
    md = (out / "results.md").read_text()
    assert len(_table_rows(md, "Points")) == len(doc["points"])
    assert "| cascade |" in printed and "results.json" in printed
    _assert_png(out / "curve.png")
