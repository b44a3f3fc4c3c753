"""CascadePredictor as a product: what it refuses, the pipeline's operating points, a cascade saved as one folder
(loadable by PyTorch transformers, the same answers in a fresh process), and `python -m train.predict`."""

import csv
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cascade_jax import models
from cascade_jax.predict import CascadePredictor, PredictError
from tests import tiny

REPO = pathlib.Path(__file__).resolve().parent.parent
TEXTS = ["the film was great and moving", "dull boring plot", "a story", "superb acting", "weak and clumsy"]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return (tiny.make_model_dir(root / "small", layers=1, hidden=32, seed=1),
            tiny.make_model_dir(root / "large", layers=2, hidden=32, seed=2))


@pytest.fixture(scope="module")
def predictor(members):
    return CascadePredictor.from_members(list(members), max_length=32, batch_size=4)


@pytest.fixture(scope="module")
def run_dir(members, tmp_path_factory):
    """A finished pipeline run as far as prediction cares: its config, its members and a report that records the
    chosen cascade's thresholds per target speed-up (the contract with the pipeline)."""
    run = tmp_path_factory.mktemp("run")
    for name, src in [("small-dar-m0.5", members[0]), ("large", members[1])]:
        (run / "members" / name).mkdir(parents=True)
        os.symlink(src, run / "members" / name / "model")
    (run / "pipeline_config.json").write_text(json.dumps({"data": {"task": "rotten_tomatoes", "max_length": 32}}))
    (run / "report").mkdir()
    (run / "report" / "results.json").write_text(json.dumps({
        "meta": {"margin": 0.5},
        "cascade_thresholds": {"method": "CascadeBERT (DAR m=0.5)",
                               "members": ["members/small-dar-m0.5/model", "members/large/model"],
                               "thresholds": {"1.25": 0.5024, "1.5": 0.2, "2": 0.0}}}))
    return run


def _mid_threshold(predictor):
    """A threshold between the small member's lowest and highest confidence on TEXTS (some exit, some go on)."""
    conf = [r["confidence"] for r in predictor.predict(TEXTS, threshold=0.0)]
    return float(np.median(conf))


# ----------------------------------------------------------------------------------------------- refusals


def test_a_bare_string_is_refused(predictor):
    with pytest.raises(PredictError, match=r"list of strings, not one string.*predict\(\['excellent'\]\)"):
        predictor.predict("excellent")  # used to answer once per character: 9 results
    with pytest.raises(PredictError, match="not a string"):
        predictor.predict(["fine", 3])


@pytest.mark.parametrize("blank", ["\u200b\u200b", "\ufeff", "\u200b \u2060"])
def test_texts_that_tokenise_to_nothing_are_refused(predictor, blank):
    with pytest.raises(PredictError, match=r"texts\[1\] = .* has no tokens.*zero-width"):
        predictor.predict(["fine", blank, "ok"])
    with pytest.raises(PredictError, match=r"texts\[0\].*empty"):
        predictor.predict([" \t "])


def test_member_without_a_trained_head_is_refused(members, tmp_path):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    for f in members[1].iterdir():
        if f.name != "model.safetensors":
            (encoder / f.name).write_bytes(f.read_bytes())
    state = load_file(str(members[1] / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith(("classifier.", "bert.pooler."))},
              str(encoder / "model.safetensors"))
    with pytest.raises(models.ModelLoadError, match=r"encoder/model\.safetensors has no trained classification "
                                                    r"head \(missing classifier\.weight.*fine-tuned"):
        CascadePredictor.from_members([members[0], encoder])


def test_regression_task_is_refused(members):
    with pytest.raises(PredictError, match="'stsb' is a regression task"):
        CascadePredictor.from_members([members[0]], task="stsb")


def test_members_largest_first_are_refused(members):
    with pytest.raises(PredictError, match=r"smallest first.*large \(2 layers\), .*small \(1 layers\)"):
        CascadePredictor.from_members([members[1], members[0]])
    with pytest.raises(PredictError, match="list of model directories"):
        CascadePredictor.from_members(str(members[0]))


def test_max_length_beyond_the_position_table_is_refused(members):
    with pytest.raises(models.InputMismatchError, match="max_length 256 .* max_position_embeddings 128"):
        CascadePredictor.from_members(list(members), max_length=256)


def test_member_with_a_smaller_vocabulary_than_the_tokenizer_is_refused(members, tmp_path):
    config = models.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=65, max_position_embeddings=128)
    module = models.BertForSequenceClassification(config)
    small_vocab = models.save_pretrained(module, models.init_params(module, jax.random.PRNGKey(0)),
                                         tmp_path / "small-vocab", tokenizer=models.tokenizer_for(members[0]))
    with pytest.raises(models.InputMismatchError, match=r"small-vocab: the tokenizer has 30522 tokens but the "
                                                        r"model's vocab_size is 1000"):
        CascadePredictor.from_members([members[0], small_vocab])


# ----------------------------------------------------------------------------------------------- operating points


def test_from_pipeline_uses_the_recorded_thresholds(run_dir):
    p = CascadePredictor.from_pipeline(run_dir, target_speedup=1.5, batch_size=4)
    assert p.threshold == 0.2 and p.thresholds == {"1.25": 0.5024, "1.5": 0.2, "2": 0.0}
    assert p.method == "CascadeBERT (DAR m=0.5)" and [s.num_layers for s in p.stages] == [1, 2]
    assert CascadePredictor.from_pipeline(run_dir, batch_size=4).threshold == 0.5024  # the smallest target's
    assert p.resolve_threshold(target_speedup=2.0) == 0.0 and p.resolve_threshold(0.7) == 0.7
    assert {r["exit_stage"] for r in p.predict(TEXTS, target_speedup=2)} == {0}
    with pytest.raises(PredictError, match=r"no threshold for target speed-up 3 .*available targets: 1\.25, 1\.5, 2"):
        CascadePredictor.from_pipeline(run_dir, target_speedup=3)


def test_bfloat16_reaches_every_way_of_loading_a_cascade(run_dir, tmp_path):
    # --dtype with --run or --cascade was once ignored (float32 ran): every loader now honours it.
    from train import predict as cli

    def dtypes(p):
        return {str(x.dtype) for s in p.stages for x in jax.tree_util.tree_leaves(s.params)}

    fp32 = CascadePredictor.from_pipeline(run_dir, batch_size=4)
    bf16 = CascadePredictor.from_pipeline(run_dir, batch_size=4, dtype="bfloat16")
    assert (fp32.dtype, dtypes(fp32), bf16.dtype, dtypes(bf16)) == ("float32", {"float32"}, "bfloat16", {"bfloat16"})
    a, b = fp32.predict(TEXTS, threshold=1.0), bf16.predict(TEXTS, threshold=1.0)
    assert max(abs(x["confidence"] - y["confidence"]) for x, y in zip(a, b)) < 0.02
    fp32.save(tmp_path / "saved")
    assert CascadePredictor.load(tmp_path / "saved").dtype == "float32"
    assert dtypes(CascadePredictor.load(tmp_path / "saved", dtype="bfloat16")) == {"bfloat16"}
    parser = cli.build_parser()
    for source in (["--run", str(run_dir)], ["--cascade", str(tmp_path / "saved")]):
        args = parser.parse_args([*source, "--dtype", "bfloat16", "in.txt"])
        assert dtypes(cli.load_predictor(args)) == {"bfloat16"}, source
    assert dtypes(cli.load_predictor(parser.parse_args(["--run", str(run_dir), "in.txt"]))) == {"float32"}


def test_from_pipeline_without_recorded_thresholds_reads_the_margin(run_dir, tmp_path):
    old = tmp_path / "old-run"
    old.mkdir()
    for name in ("members", "pipeline_config.json"):
        os.symlink(run_dir / name, old / name)
    (old / "report").mkdir()
    (old / "report" / "results.json").write_text(json.dumps({"meta": {"margin": 0.5}}))
    p = CascadePredictor.from_pipeline(old, batch_size=4)
    assert p.threshold == 0.9 and p.thresholds == {} and p.stages[0].name.endswith("small-dar-m0.5/model")
    with pytest.raises(PredictError, match="no cascade_thresholds .* give a threshold"):
        CascadePredictor.from_pipeline(old, target_speedup=1.5)


# ----------------------------------------------------------------------------------------------- one folder


def test_saved_cascade_is_one_folder_loadable_by_torch_and_a_fresh_process(predictor, tmp_path):
    import torch
    import transformers

    tau = _mid_threshold(predictor)
    predictor.thresholds, predictor.threshold = {"1.5": tau}, tau
    expected = predictor.predict(TEXTS)
    assert len({r["exit_stage"] for r in expected}) == 2  # both stages answer some
    saved = predictor.save(tmp_path / "cascade")
    doc = json.loads((saved / "cascade.json").read_text())
    assert (doc["task"], doc["label_names"], doc["max_length"], doc["dtype"], doc["exit_rule"]) == (
        "rotten_tomatoes", ["negative", "positive"], 32, "float32", "max_prob")
    assert doc["thresholds"] == {"1.5": tau} and doc["default_threshold"] == tau
    assert [m["dir"] for m in doc["members"]] == ["members/0", "members/1"] and "git_commit" in doc["provenance"]
    assert (saved / "tokenizer.json").is_file()

    # Each member is an ordinary Hugging Face directory: PyTorch BERT gives the same logits.
    tok = transformers.AutoTokenizer.from_pretrained(str(saved))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    for i, stage in enumerate(predictor.stages):
        hf = transformers.BertForSequenceClassification.from_pretrained(str(saved / "members" / str(i))).eval()
        assert hf.config.id2label == {0: "negative", 1: "positive"}
        with torch.no_grad():
            theirs = hf(**enc).logits.numpy()
        ours = np.asarray(stage.apply_fn(stage.params, {k: v.numpy() for k, v in enc.items()}))
        np.testing.assert_allclose(ours, theirs, atol=1e-4)

    # A fresh process loads the folder and answers the same.
    code = ("import json, sys; from cascade_jax.predict import CascadePredictor; "
            "p = CascadePredictor.load(sys.argv[1]); print(json.dumps(p.predict(json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(saved), json.dumps(TEXTS)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["label"], r["exit_stage"]) for r in again] == [(r["label"], r["exit_stage"]) for r in expected]
    np.testing.assert_allclose([r["confidence"] for r in again], [r["confidence"] for r in expected], atol=1e-6)

    # Saving over a folder that is not a saved cascade is refused; over a saved cascade it replaces it.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PredictError, match="not a saved cascade"):
        predictor.save(tmp_path / "other")
    assert predictor.save(saved) == saved and CascadePredictor.load(saved).threshold == tau


# ----------------------------------------------------------------------------------------------- the command line


def _predict_cli(*args, stdin=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "train.predict", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, input=stdin, timeout=300)


def test_cli_predicts_a_text_file_stdin_and_a_csv(run_dir, tmp_path):
    lines = TEXTS * 60  # 300 texts: more than one chunk, so the progress bar shows
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = _predict_cli("--run", run_dir, "--target-speedup", 1.25, "--batch-size", 4, tmp_path / "in.txt")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(lines) and set(rows[0]) == {"label", "label_name", "confidence", "exit_stage"}
    assert rows[:5] == rows[5:10]  # same text, same answer
    summary = out.stderr.strip().splitlines()[-1]
    assert "300 examples" in summary and "examples/s" in summary and "layer speed-up" in summary
    assert "stage 0 (1 layers)" in summary and "stage 1 (2 layers)" in summary and "threshold 0.5024" in summary
    assert "ex/s" in out.stderr or "%|" in out.stderr  # the tqdm bar
    assert "Traceback" not in out.stderr

    # stdin, a fixed threshold, no bar
    out = _predict_cli("--members", *[run_dir / "members" / n / "model" for n in ("small-dar-m0.5", "large")],
                       "--max-length", 32, "--threshold", 0, "--no-progress", "-", stdin="superb acting\ndull\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["exit_stage"] for line in out.stdout.splitlines()] == [0, 0]
    assert "%|" not in out.stderr

    # CSV in (with --column), CSV out to a file
    with open(tmp_path / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "review"])
        w.writerows(enumerate(TEXTS))
    out = _predict_cli("--run", run_dir, "--threshold", 1.0, "--column", "review", "--format", "csv", "--output",
                       tmp_path / "out.csv", tmp_path / "in.csv")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    table = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert len(table) == len(TEXTS) and {r["exit_stage"] for r in table} == {"1"}
    assert set(table[0]) == {"label", "label_name", "confidence", "exit_stage"}


def test_cli_errors_are_one_line(run_dir, tmp_path):
    (tmp_path / "in.csv").write_text("id,review\n0,good\n")
    (tmp_path / "blank.txt").write_text("good\n\u200b\u200b\nbad\n")
    for args, message in [
        (["--run", run_dir, tmp_path / "in.csv"], r"in\.csv is a table: name the text column with --column"),
        (["--run", run_dir, "--column", "text", tmp_path / "in.csv"], r"no column 'text'; its columns: id, review"),
        (["--run", run_dir, tmp_path / "blank.txt"], r"blank\.txt, line 2: empty text"),
        (["--run", run_dir, "--target-speedup", 4, tmp_path / "in.csv", "--column", "review"],
         r"no threshold for target speed-up 4 .*available targets: 1\.25, 1\.5, 2"),
        (["--run", tmp_path / "nope", "-"], r"pipeline_config\.json is missing"),
    ]:
        out = _predict_cli(*args, stdin="good\n")
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("predict: error: "), out.stderr
        assert re.search(message, lines[0]), lines[0]


@pytest.mark.real
def test_bf16_quality_tool_on_a_run(run_dir, tmp_path, capsys):
    """`python -m eval.bf16_quality` on a run (tiny members, the real rotten_tomatoes test split): one row per
    recorded target; at threshold 0 both precisions exit every example at the first member; the summary lines last.
    (The quality itself, with trained members, is measured on the quick run: docs/bench_model.md.)"""
    import shutil

    from cascade_jax import configs
    from cascade_jax.pipeline import make_config
    from eval import bf16_quality

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    config = make_config("quick", str(run), {"data.max_length": 32})
    (run / "pipeline_config.json").write_text(json.dumps(configs.to_dict(config)))
    run_dir = run
    rows = bf16_quality.compare(str(run_dir), "test", batch_size=64)
    assert [r["target"] for r in rows] == [1.25, 1.5, 2.0]
    last = rows[-1]
    assert last["threshold"] == 0.0 and last["same_exits"] == 1.0 and last["fp32_speedup"] == last["bf16_speedup"]
    for r in rows:
        assert 0.5 <= r["same_predictions"] <= 1.0 and abs(r["difference"]) <= 0.1
    assert bf16_quality.main(["--run", str(run_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("bf16 - fp32 accuracy, worst case: ") and out[-1].startswith("same exit decisions")
