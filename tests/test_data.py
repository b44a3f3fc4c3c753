"""Tests of the data layer (cascade_jax.data): registry, sources, errors, tokenisation cache, side data, batching."""

from __future__ import annotations

import bz2
import csv
import dataclasses
import io
import json
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_jax import assets, configs, data
from cascade_jax.data import batching

# ------------------------------------------------------------------------------------------------ helpers / fixtures

SST_ROWS = [("a gripping, \"well-made\" film", 1), ("dull and 'lifeless", 0), ("it's fine, I guess", 1)]
PAIR_ROWS = [("A man is eating.", "Someone eats.", 0), ("The cat sat.", "A dog ran \"fast\".", 1),
             ("It rains.", "It is dry, sunny.", 1)]


def write_tsv(path, header, rows):
    """A TSV written the GLUE way: tab-joined, no quoting (``header=None`` writes no header row)."""
    lines = ([] if header is None else ["\t".join(header)]) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_records(path, records):
    """``records`` (list of dicts) in the format given by ``path``'s suffix."""
    fmt = path.suffix.lstrip(".")
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    elif fmt == "tsv":
        write_tsv(path, list(records[0]), [list(r.values()) for r in records])
    elif fmt == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    try:
        return data.load_tokenizer("minilm-l6")
    except assets.AssetMissingError as e:
        pytest.skip(str(e))


class CountingTokenizer:
    """Wraps a tokenizer and counts calls to it."""

    def __init__(self, tok):
        self._tok = tok
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def synthetic(lengths, max_length=128, regression=False, extras=False):
    """An Encoded with the given token lengths; example i has ids 1000+i and token ids 10_000*i + position."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    example = np.repeat(np.arange(n), lengths)
    position = np.arange(offsets[-1]) - offsets[example]
    labels = (np.arange(n) * 0.5).astype(np.float32) if regression else (np.arange(n) % 3).astype(np.int32)
    return data.Encoded(
        task="synthetic", split="train", ids=1000 + np.arange(n, dtype=np.int64), labels=labels,
        input_ids=(10_000 * example + position + 1).astype(np.int32),
        token_type_ids=(position >= lengths[example] // 2).astype(np.int8), offsets=offsets,
        max_length=max_length, pad_id=0,
        extras={"difficulty": (np.arange(n) % 2).astype(np.float32)} if extras else {},
    )


def valid_ids(batches):
    return np.concatenate([b["id"][b["valid"]] for b in batches]) if batches else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_every_task_with_fields_and_metric():
    expect = {
        "sst2": (("sentence",), "accuracy", 2), "cola": (("sentence",), "matthews", 2),
        "mrpc": (("sentence1", "sentence2"), "f1+accuracy", 2), "qqp": (("question1", "question2"), "f1+accuracy", 2),
        "stsb": (("sentence1", "sentence2"), "pearson+spearman", 0), "mnli": (("premise", "hypothesis"), "accuracy", 3),
        "qnli": (("question", "sentence"), "accuracy", 2), "rte": (("sentence1", "sentence2"), "accuracy", 2),
        "rotten_tomatoes": (("sentence",), "accuracy", 2),
        **{f"vader_{v}": (("sentence",), "accuracy", 2) for v in ("movie", "amazon", "nyt", "tweets")},
    }
    assert set(expect) <= set(data.TASKS)
    for name, (fields, metric, num_labels) in expect.items():
        t = data.get_task(name)
        assert (t.text_fields, t.metric, len(t.label_names)) == (fields, metric, num_labels), name
    assert data.get_task("stsb").is_regression and data.get_task("mnli").is_pair
    assert data.get_task("rotten_tomatoes").label_names[1] == "positive"
    assert data.get_task("vader_nyt").splits == ("test",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.get_task("sst2").metric = "f1"


def test_registry_metric_names_are_known_to_metrics():
    from cascade_jax import metrics

    assert {t.metric for t in data.TASKS.values()} <= set(metrics.TASK_METRICS)


def test_split_names_resolve():
    mnli = data.get_task("mnli")
    assert data.resolve_split(mnli, "dev") == "validation_matched"
    assert data.resolve_split(mnli, "dev_mismatched") == "validation_mismatched"
    assert data.resolve_split(data.get_task("sst2"), "dev") == "validation"
    with pytest.raises(data.UnknownSplitError, match="validation_matched"):
        data.resolve_split(mnli, "dev_other")
    with pytest.raises(data.UnknownSplitError, match="test"):
        data.resolve_split(data.get_task("vader_movie"), "train")


def test_unknown_task_lists_known_tasks():
    with pytest.raises(data.UnknownTaskError, match="known tasks: .*rotten_tomatoes.*sst2") as e:
        data.load_split("sst3", "train", source="x.csv")
    assert isinstance(e.value, ValueError)


# ------------------------------------------------------------------------------------------------ local files


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_single_sentence_task_in_every_format(tmp_path, fmt):
    file = write_records(tmp_path / f"train.{fmt}", [{"sentence": s, "label": y} for s, y in SST_ROWS])
    ds = data.load_split("sst2", "train", source=file)
    assert ds.column_names == ["id", "sentence", "label"]
    assert ds["id"] == [0, 1, 2]
    assert ds["sentence"] == [s for s, _ in SST_ROWS]
    assert ds["label"] == [y for _, y in SST_ROWS]
    # a folder with <split>.<format> works too
    assert data.load_split("sst2", "train", source=tmp_path)["sentence"] == ds["sentence"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_pair_task_in_every_format_with_text_labels(tmp_path, fmt):
    names = ("entailment", "neutral", "contradiction")
    records = [{"premise": a, "hypothesis": b, "label": names[y]} for a, b, y in PAIR_ROWS]
    ds = data.load_split("mnli", "train", source=write_records(tmp_path / f"x.{fmt}", records))
    assert ds.column_names == ["id", "premise", "hypothesis", "label"]
    assert ds["hypothesis"] == [b for _, b, _ in PAIR_ROWS]
    assert ds["label"] == [y for _, _, y in PAIR_ROWS]


def test_column_mapping_and_own_id_column(tmp_path):
    file = write_records(tmp_path / "f.csv", [{"uid": 10 + i, "text": s, "y": y} for i, (s, y) in enumerate(SST_ROWS)])
    ds = data.load_split("sst2", "train", source=file, columns={"text": "sentence", "y": "label", "uid": "id"})
    assert ds["id"] == [10, 11, 12] and ds["label"] == [1, 0, 1]
    # a file's own `id` column is used as is
    file = write_records(tmp_path / "g.jsonl", [{"id": 7 - i, "sentence": s, "label": y} for i, (s, y) in
                                                 enumerate(SST_ROWS)])
    assert data.load_split("sst2", "train", source=file)["id"] == [7, 6, 5]


def test_regression_labels_are_float(tmp_path):
    file = write_records(tmp_path / "s.jsonl", [{"sentence1": a, "sentence2": b, "label": y * 2.5}
                                                 for a, b, y in PAIR_ROWS])
    ds = data.load_split("stsb", "train", source=file)
    assert ds.features["label"].dtype == "float32"
    assert ds["label"] == [0.0, 2.5, 2.5]


def test_unlabelled_test_split_gets_minus_one(tmp_path):
    file = write_records(tmp_path / "test.csv", [{"sentence": s} for s, _ in SST_ROWS])
    assert data.load_split("sst2", "test", source=file)["label"] == [-1, -1, -1]
    with pytest.raises(data.MissingColumnError, match="no label column"):
        data.load_split("sst2", "train", source=file)


# ------------------------------------------------------------------------------------------------ GLUE layout


def test_glue_sst2_layout(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    write_tsv(folder / "train.tsv", ["sentence", "label"], SST_ROWS)
    write_tsv(folder / "dev.tsv", ["sentence", "label"], SST_ROWS[:2])
    write_tsv(folder / "test.tsv", ["index", "sentence"], [(i, s) for i, (s, _) in enumerate(SST_ROWS)])
    # the task folder itself, or the glue_data root that holds it
    for source in (folder, tmp_path):
        assert data.load_split("sst2", "train", source)["sentence"][0] == SST_ROWS[0][0]
    dev = data.load_split("sst2", "dev", tmp_path)
    assert dev["label"] == [1, 0] and dev["id"] == [0, 1]
    assert data.load_split("sst2", "test", tmp_path)["label"] == [-1, -1, -1]


def test_glue_mrpc_layout_with_bom(tmp_path):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    rows = [(y, 100 + i, 200 + i, a, b) for i, (a, b, y) in enumerate(PAIR_ROWS)]
    write_tsv(tmp_path / "train.tsv", header, rows)
    raw = (tmp_path / "train.tsv").read_bytes()
    (tmp_path / "train.tsv").write_bytes(b"\xef\xbb\xbf" + raw)  # the official MRPC files start with a BOM
    ds = data.load_split("mrpc", "train", tmp_path)
    assert ds.column_names == ["id", "sentence1", "sentence2", "label"]
    assert ds["sentence2"][1] == 'A dog ran "fast".' and ds["label"] == [0, 1, 1]


def test_glue_mnli_layout_matched_and_mismatched(tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    lead = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    names = ("entailment", "neutral", "contradiction")

    def rows(k, votes):
        return [(i, 1, f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, *[names[y]] * votes)
                for i, (a, b, y) in enumerate(PAIR_ROWS[:k])]

    write_tsv(folder / "train.tsv", lead + ["label1", "gold_label"], rows(3, 2))
    dev_header = lead + [f"label{i}" for i in range(1, 6)] + ["gold_label"]
    write_tsv(folder / "dev_matched.tsv", dev_header, rows(2, 6))
    write_tsv(folder / "dev_mismatched.tsv", dev_header, rows(1, 6))
    write_tsv(folder / "test_matched.tsv", lead, rows(3, 0))
    train = data.load_split("mnli", "train", tmp_path)
    assert train.column_names == ["id", "premise", "hypothesis", "label"]
    assert train["premise"] == [a for a, _, _ in PAIR_ROWS] and train["label"] == [0, 1, 1]
    assert len(data.load_split("mnli", "validation", tmp_path)) == 2  # dev = validation_matched
    assert len(data.load_split("mnli", "dev_mismatched", tmp_path)) == 1
    assert data.load_split("mnli", "test_matched", tmp_path)["label"] == [-1, -1, -1]


def test_glue_qqp_qnli_rte_cola_stsb_layouts(tmp_path):
    write_tsv(tmp_path / "qqp.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
              [(50 + i, 1, 2, a, b, y) for i, (a, b, y) in enumerate(PAIR_ROWS)])
    ds = data.load_split("qqp", "train", tmp_path / "qqp.tsv")
    assert ds.column_names == ["id", "question1", "question2", "label"] and ds["label"] == [0, 1, 1]
    assert ds["id"] == [0, 1, 2]  # GLUE files: id = row index
    write_tsv(tmp_path / "qnli.tsv", ["index", "question", "sentence", "label"],
              [(i, a, b, ("entailment", "not_entailment")[y]) for i, (a, b, y) in enumerate(PAIR_ROWS)])
    assert data.load_split("qnli", "train", tmp_path / "qnli.tsv")["label"] == [0, 1, 1]
    write_tsv(tmp_path / "rte.tsv", ["index", "sentence1", "sentence2", "label"],
              [(i, a, b, ("entailment", "not_entailment")[y]) for i, (a, b, y) in enumerate(PAIR_ROWS)])
    assert data.load_split("rte", "train", tmp_path / "rte.tsv")["label"] == [0, 1, 1]
    write_tsv(tmp_path / "cola.tsv", None, [("gj04", y, "", s) for s, y in SST_ROWS])  # CoLA: no header
    cola = data.load_split("cola", "train", tmp_path / "cola.tsv")
    assert cola["sentence"] == [s for s, _ in SST_ROWS] and cola["label"] == [1, 0, 1]
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    write_tsv(tmp_path / "stsb.tsv", header, [(i, "g", "f", 2012, i, "s", "s", a, b, 1.5 * y)
                                              for i, (a, b, y) in enumerate(PAIR_ROWS)])
    assert data.load_split("stsb", "train", tmp_path / "stsb.tsv")["label"] == [0.0, 1.5, 1.5]


# ------------------------------------------------------------------------------------------------ errors


def test_missing_file_and_missing_split_file(tmp_path):
    with pytest.raises(data.DataFileNotFoundError, match="nope.csv"):
        data.load_split("sst2", "train", source=tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        data.load_split("sst2", "validation", source=tmp_path)


def test_missing_column_lists_file_columns(tmp_path):
    file = write_records(tmp_path / "f.csv", [{"text": s, "label": y} for s, y in SST_ROWS])
    with pytest.raises(data.MissingColumnError, match=r"f\.csv.*'sentence'.*text, label"):
        data.load_split("sst2", "train", source=file)
    with pytest.raises(data.MissingColumnError, match="'txt'"):
        data.load_split("sst2", "train", source=file, columns={"txt": "sentence"})


@pytest.mark.parametrize("fmt,where", [("csv", "line 3"), ("jsonl", "line 2"), ("json", "record 1"),
                                       ("parquet", "row 1"), ("tsv", "line 3")])
def test_empty_text_names_the_row(tmp_path, fmt, where):
    file = write_records(tmp_path / f"f.{fmt}", [{"sentence": "ok", "label": 1}, {"sentence": "  ", "label": 0}])
    with pytest.raises(data.BadRowError, match=f"{where}.*'sentence'.*empty"):
        data.load_split("sst2", "train", source=file)
    assert len(data.load_split("sst2", "train", source=file, bad_rows="skip")) == 1


def test_missing_text_in_json_names_the_record(tmp_path):
    file = write_records(tmp_path / "f.json", [{"sentence1": "a", "sentence2": "b", "label": 1},
                                               {"sentence1": "a", "label": 0}])
    with pytest.raises(data.BadRowError, match=r"record 1: text field 'sentence2'.*missing"):
        data.load_split("rte", "train", source=file)


def test_label_outside_label_set_names_row_and_value(tmp_path):
    file = write_records(tmp_path / "f.csv", [{"sentence": "ok", "label": 1}, {"sentence": "bad", "label": 2}])
    with pytest.raises(data.LabelError, match=r"f\.csv, line 3: label '2' is not in the label set"):
        data.load_split("sst2", "train", source=file)
    file = write_tsv(tmp_path / "rte.tsv", ["index", "sentence1", "sentence2", "label"], [(0, "a", "b", "maybe")])
    with pytest.raises(data.LabelError, match="line 2: label 'maybe'"):
        data.load_split("rte", "train", source=file)
    file = write_records(tmp_path / "s.jsonl", [{"sentence1": "a", "sentence2": "b", "label": "high"}])
    with pytest.raises(data.LabelError, match="line 1: label 'high' is not a number"):
        data.load_split("stsb", "train", source=file)


def test_wrong_field_count_and_duplicate_ids(tmp_path):
    file = tmp_path / "f.tsv"
    file.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\t1\n", encoding="utf-8")
    with pytest.raises(data.BadRowError, match="line 3: 3 fields"):
        data.load_split("sst2", "train", source=file)
    assert data.load_split("sst2", "train", source=file, bad_rows="skip")["sentence"] == ["fine"]
    file = write_records(tmp_path / "d.jsonl", [{"id": 1, "sentence": "a", "label": 1}] * 2)
    with pytest.raises(data.DataError, match=r"duplicate ids, e\.g\. \[1\]"):
        data.load_split("sst2", "train", source=file)


def test_undecodable_bytes_name_file_line_and_offset(tmp_path):
    file = tmp_path / "latin.csv"
    raw = b"sentence,label\ngood,1\ncaf\xe9 noir,0\n"
    file.write_bytes(raw)
    with pytest.raises(data.DecodeError, match=rf"latin\.csv: line 3 .* byte offset {raw.index(0xE9)}\b"):
        data.load_split("sst2", "train", source=file)
    raw = b'{"sentence": "ok", "label": 1}\n{"sentence": "caf\xe9", "label": 1}\n'
    file = tmp_path / "latin.jsonl"
    file.write_bytes(raw)
    with pytest.raises(data.DecodeError, match=rf"latin\.jsonl: line 2 .* byte offset {raw.index(0xE9)}\b"):
        data.load_split("sst2", "train", source=file)
    # a user's own copy of a VADER file is read strictly too
    file = tmp_path / "movie_GroundTruth.txt"
    file.write_bytes(b"1\t1.5\tgood\r\n2\t-0.5\tna\xefve\r\n")
    with pytest.raises(data.DecodeError, match=r"movie_GroundTruth\.txt: line 2"):
        data.load_split("vader_movie", "test", source=file)


def test_local_vader_file_rules(tmp_path):
    file = tmp_path / "x_GroundTruth.txt"
    file.write_bytes(b"1\t1.5\tgood\r\n2\t0\tneutral\r\n3\t-0.5\tbad\r\n")
    ds = data.load_split("vader_tweets", "test", source=file)
    assert ds["id"] == [0, 2] and ds["label"] == [1, 0] and ds["sentence"] == ["good", "bad"]


def test_bad_rows_argument_is_checked(tmp_path):
    with pytest.raises(data.DataError, match="bad_rows"):
        data.load_split("sst2", "train", source=tmp_path, bad_rows="ignore")


# ------------------------------------------------------------------------------------------------ hub


def test_hub_offline_fails_fast_with_source_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(data.HubUnavailableError, match="source=") as e:
        data.load_split("sst2", "train")
    assert time.monotonic() - start < 10
    assert isinstance(e.value, ConnectionError) and "SST-2" in str(e.value)


def test_hub_unreachable_or_failing_is_wrapped(monkeypatch):
    import datasets

    from cascade_jax.data import sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=0: False)
    with pytest.raises(data.HubUnavailableError, match="cannot be reached.*source="):
        data.load_split("mnli", "dev")

    def failing(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=0: True)
    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(data.HubUnavailableError, match="Couldn't reach.*source="):
        data.load_split("qqp", "train")


def test_hub_dataset_is_normalised(monkeypatch):
    import datasets

    from cascade_jax.data import sources

    calls = []

    def fake(repo, config, split):
        calls.append((repo, config, split))
        return datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [5]})

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = data.load_split("mnli", "dev")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert ds.column_names == ["id", "premise", "hypothesis", "label"] and ds["id"] == [5]


def test_probe_of_unreachable_endpoint_is_fast(monkeypatch):
    from cascade_jax.data import sources

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    assert sources.hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------------------------------------ tokenisation


def test_encode_single_and_pair(tokenizer, tmp_path):
    file = write_records(tmp_path / "p.jsonl", [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in PAIR_ROWS])
    enc = data.encode_split("rte", "train", file, tokenizer=tokenizer, max_length=32, use_cache=False)
    assert len(enc) == 3 and enc.ids.tolist() == [0, 1, 2] and enc.labels.dtype == np.int32
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    for i, (a, b, _) in enumerate(PAIR_ROWS):
        ids, types = enc.tokens(i)
        assert ids[0] == cls and ids[-1] == sep
        first_sep = int(np.argmax(ids == sep))
        assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:] == 1).all()
        assert tokenizer.decode(ids[first_sep + 1:-1]) == tokenizer.decode(tokenizer(b)["input_ids"][1:-1])
    short = data.encode_split("rte", "train", file, tokenizer=tokenizer, max_length=6, use_cache=False)
    assert short.lengths.max() == 6 and (short.lengths <= 6).all()


def test_tokenised_arrays_are_cached(tokenizer, tmp_path):
    file = write_records(tmp_path / "s.csv", [{"sentence": s, "label": y} for s, y in SST_ROWS])
    counting = CountingTokenizer(tokenizer)
    root = tmp_path / "cache"
    first = data.encode_split("sst2", "train", file, tokenizer=counting, max_length=16, cache_root=root)
    assert not first.from_cache and counting.calls == 1
    second = data.encode_split("sst2", "train", file, tokenizer=counting, max_length=16, cache_root=root)
    assert second.from_cache and counting.calls == 1
    for name in ("ids", "labels", "input_ids", "token_type_ids", "offsets"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert (second.task, second.split, second.max_length) == ("sst2", "train", 16)
    # another max_length or a changed file is a new entry
    assert not data.encode_split("sst2", "train", file, tokenizer=counting, max_length=12, cache_root=root).from_cache
    write_records(file, [{"sentence": s, "label": y} for s, y in SST_ROWS[:2]])
    os.utime(file, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = data.encode_split("sst2", "train", file, tokenizer=counting, max_length=16, cache_root=root)
    assert not changed.from_cache and len(changed) == 2 and counting.calls == 3
    assert len(list(root.glob("sst2-train-*.npz"))) == 3


def test_cache_root_follows_env(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path / "c"))
    file = write_records(tmp_path / "s.jsonl", [{"sentence": s, "label": y} for s, y in SST_ROWS])
    data.encode_split("sst2", "train", file, tokenizer=tokenizer, max_length=16)
    assert len(list((tmp_path / "c" / "tokenized").glob("*.npz"))) == 1
    assert data.encode_split("sst2", "train", file, tokenizer=tokenizer, max_length=16).from_cache


def test_tokenizer_fingerprint_depends_on_vocab(tokenizer):
    fp = data.tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f"], truncation=True, max_length=5)  # leaves truncation state in the backend
    assert fp == data.tokenizer_fingerprint(tokenizer) and len(fp) == 64

    class Plain:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    assert data.tokenizer_fingerprint(Plain({"a": 0})) != data.tokenizer_fingerprint(Plain({"b": 0}))


def test_pair_batches_have_second_segment_type_one(tokenizer, tmp_path):
    file = write_records(tmp_path / "p.csv", [{"question1": a, "question2": b, "label": y} for a, b, y in PAIR_ROWS])
    enc = data.encode_split("qqp", "train", file, tokenizer=tokenizer, max_length=64, use_cache=False)
    (batch,) = list(data.eval_batches(enc, 4))
    sep = tokenizer.sep_token_id
    for row in range(3):
        ids, types, mask = batch["input_ids"][row], batch["token_type_ids"][row], batch["attention_mask"][row]
        seps = np.flatnonzero(ids == sep)
        assert len(seps) == 2 and mask.sum() == seps[1] + 1
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:seps[1] + 1] == 1).all()
        assert (types[seps[1] + 1:] == 0).all()
    assert not batch["valid"][3] and batch["attention_mask"][3].sum() == 0 and batch["id"][3] == -1


# ------------------------------------------------------------------------------------------------ side data


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_join_difficulty_by_id(tmp_path, fmt):
    enc = synthetic([3, 4, 5, 6])
    rows = [{"id": int(i), "difficulty": int(i) % 2, "seeds_wrong": 1, "num_seeds": 3, "confidence": 0.25}
            for i in reversed(enc.ids.tolist() + [9999])]
    side = write_records(tmp_path / f"difficulty.{fmt}", rows)
    joined = data.join_by_id(enc, side, ["difficulty", "confidence"], extra_ids="ignore")  # 9999: not in the split.
    assert sorted(joined.extras) == ["confidence", "difficulty"]
    np.testing.assert_array_equal(joined.extras["difficulty"], enc.ids % 2)
    (batch,) = list(data.eval_batches(joined, 6, extras=("difficulty",)))
    assert batch["difficulty"].dtype == np.float32 and batch["difficulty"].tolist() == [0, 1, 0, 1, 0, 0]
    with pytest.raises(data.DataError, match="not joined"):
        list(data.eval_batches(enc, 6, extras=("difficulty",)))


def test_join_onto_dataset(tmp_path):
    ds = data.load_split("sst2", "train", write_records(tmp_path / "t.csv", [{"sentence": s, "label": y}
                                                                             for s, y in SST_ROWS]))
    side = write_records(tmp_path / "d.jsonl", [{"id": i, "difficulty": 1 - i % 2} for i in range(3)])
    assert data.join_by_id(ds, side)["difficulty"] == [1.0, 0.0, 1.0]


def test_side_file_that_misses_examples_is_an_error(tmp_path):
    enc = synthetic([3, 3, 3])
    side = write_records(tmp_path / "difficulty.jsonl", [{"id": 1000, "difficulty": 0}])
    with pytest.raises(data.CoverageError, match=r"difficulty\.jsonl.*2 of 3.*\[1001, 1002\]"):
        data.join_by_id(enc, side)
    bad = write_records(tmp_path / "bad.csv", [{"id": 1000 + i, "difficulty": 2 * i} for i in range(3)])
    with pytest.raises(data.BadRowError, match=r"bad\.csv, line 3: column 'difficulty' must be 0 .* got '2'"):
        data.join_by_id(enc, bad)
    with pytest.raises(data.MissingColumnError, match="'confidence'"):
        data.join_by_id(enc, bad, ["confidence"])
    with pytest.raises(data.DataFileNotFoundError):
        data.join_by_id(enc, tmp_path / "none.jsonl")


# ------------------------------------------------------------------------------------------------ batching properties

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def encoded_splits(draw, min_size=1):
    max_length = draw(st.sampled_from([8, 20, 128, 200]))
    lengths = draw(st.lists(st.integers(1, max_length), min_size=min_size, max_size=70))
    return synthetic(lengths, max_length=max_length, regression=draw(st.booleans()))


def check_batch(enc, batch, batch_size, buckets=data.DEFAULT_BUCKETS):
    """Shapes, dtypes, bucket choice, padding rows and row contents of one batch."""
    width = batch["input_ids"].shape[1]
    allowed = data.bucket_set(buckets, enc.max_length)
    lengths = batch["attention_mask"].sum(1)
    assert width in allowed and width >= lengths.max()
    assert all(b < lengths.max() for b in allowed if b < width)  # the smallest bucket that fits
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (batch_size, width) and batch[key].dtype == np.int32
    assert batch["id"].dtype == np.int64 and batch["valid"].dtype == bool
    assert batch["label"].dtype == (np.float32 if enc.labels.dtype.kind == "f" else np.int32)
    pad = ~batch["valid"]
    assert (batch["attention_mask"][pad] == 0).all() and (batch["input_ids"][pad] == enc.pad_id).all()
    assert (batch["id"][pad] == -1).all()
    position = {int(i): p for p, i in enumerate(enc.ids)}
    for row in np.flatnonzero(batch["valid"]):
        p = position[int(batch["id"][row])]
        ids, types = enc.tokens(p)
        n = len(ids)
        assert lengths[row] == n and (batch["attention_mask"][row, :n] == 1).all()
        np.testing.assert_array_equal(batch["input_ids"][row, :n], ids)
        np.testing.assert_array_equal(batch["token_type_ids"][row, :n], types)
        assert batch["label"][row] == enc.labels[p]


@FAST
@given(enc=encoded_splits(), batch_size=st.integers(1, 16), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
def test_epoch_visits_every_example_once(enc, batch_size, seed, epoch):
    batches = list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch))
    assert len(batches) == data.steps_per_epoch(len(enc), batch_size)
    seen = valid_ids(batches)
    assert sorted(seen.tolist()) == enc.ids.tolist()
    for b in batches:
        check_batch(enc, b, batch_size)
    dropped = list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch, drop_last=True))
    assert len(dropped) == len(enc) // batch_size and all(b["valid"].all() for b in dropped)
    assert len(set(valid_ids(dropped).tolist())) == len(enc) // batch_size * batch_size


@FAST
@given(enc=encoded_splits(min_size=10), batch_size=st.integers(1, 8), seed=st.integers(0, 2**31),
       epoch=st.integers(0, 50))
def test_order_is_a_function_of_seed_and_epoch(enc, batch_size, seed, epoch):
    order = valid_ids(list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch)))
    again = valid_ids(list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch)))
    other = valid_ids(list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch + 1)))
    np.testing.assert_array_equal(order, again)
    assert not np.array_equal(order, other)


@FAST
@given(enc=encoded_splits(), batch_size=st.integers(1, 8), seed=st.integers(0, 1000), drop_last=st.booleans(),
       data_=st.data())
def test_resume_at_step_gives_the_remaining_batches(enc, batch_size, seed, drop_last, data_):
    full = list(data.train_batches(enc, batch_size, seed=seed, epoch=3, drop_last=drop_last))
    k = data_.draw(st.integers(0, len(full) + 1))
    resumed = list(data.train_batches(enc, batch_size, seed=seed, epoch=3, start_step=k, drop_last=drop_last))
    assert len(resumed) == max(len(full) - k, 0)
    for a, b in zip(full[k:], resumed):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def grouped_reference(n, batch_size, seed, epoch, lengths, groups, buckets):
    """Length grouping written as a plain loop: walk the epoch's shuffled order one chunk of ``groups`` batches at a
    time; fill each batch by repeatedly taking the remaining example with the smallest padded length (first in the
    order on ties); visit the chunk's full batches in chunk_batch_order, a short last batch at the very end."""
    order = list(data.epoch_permutation(n, seed, epoch))
    padded = [data.bucket_length(int(x), sorted(buckets)) for x in lengths]
    out = []
    for c, lo in enumerate(range(0, n, groups * batch_size)):
        rest = order[lo:lo + groups * batch_size]
        cut = []
        while rest:
            batch = []
            while rest and len(batch) < batch_size:
                best = min(range(len(rest)), key=lambda i: (padded[rest[i]], i))
                batch.append(rest.pop(best))
            cut.append(batch)
        full = [b for b in cut if len(b) == batch_size]
        for i in batching.chunk_batch_order(len(full), epoch, c):
            out.append(full[i])
        out += [b for b in cut if len(b) < batch_size]
    return out


@FAST
@given(enc=encoded_splits(), batch_size=st.integers(1, 8), groups=st.integers(1, 5), seed=st.integers(0, 1000),
       epoch=st.integers(0, 20), data_=st.data())
def test_length_grouping_matches_a_loop_reference_and_visits_every_example_once(enc, batch_size, groups, seed,
                                                                              epoch, data_):
    buckets = data.bucket_set(data.DEFAULT_BUCKETS, enc.max_length)
    want = grouped_reference(len(enc), batch_size, seed, epoch, enc.lengths, groups, buckets)
    got = data.train_batch_indices(len(enc), batch_size, seed=seed, epoch=epoch, lengths=enc.lengths,
                                   length_grouping=groups, buckets=buckets)
    assert [list(map(int, b)) for b in got] == [list(map(int, b)) for b in want]
    batches = list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch, length_grouping=groups))
    assert [b["id"][b["valid"]].tolist() for b in batches] == [enc.ids[w].tolist() for w in want]
    assert len(batches) == data.steps_per_epoch(len(enc), batch_size)
    assert sorted(valid_ids(batches).tolist()) == enc.ids.tolist()
    for b in batches:
        check_batch(enc, b, batch_size)
    dropped = list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch, drop_last=True, length_grouping=groups))
    assert len(dropped) == len(enc) // batch_size and all(b["valid"].all() for b in dropped)
    k = data_.draw(st.integers(0, len(batches) + 1))
    resumed = list(data.train_batches(enc, batch_size, seed=seed, epoch=epoch, start_step=k, length_grouping=groups))
    assert len(resumed) == max(len(batches) - k, 0)
    for a, b in zip(batches[k:], resumed):
        np.testing.assert_array_equal(a["id"], b["id"])


def test_length_grouping_cuts_padding_keeps_batches_random_and_aligns_lock_step_runs():
    rng = np.random.default_rng(0)
    n, batch_size, groups, buckets = 800, 32, 50, (16, 32, 64)
    lengths = np.clip(rng.gamma(3.0, 9.0, n).astype(int) + 3, 3, 64)  # median ~27, a third above 32
    width = lambda b: data.bucket_length(int(lengths[b].max()), buckets)  # noqa: E731

    def run(seed, epoch, grouping):
        return data.train_batch_indices(n, batch_size, seed=seed, epoch=epoch, lengths=lengths,
                                        length_grouping=grouping, buckets=buckets)

    plain, grouped = [run(s, 1, 0) for s in (0, 1)], [run(s, 1, groups) for s in (0, 1)]
    stacked = lambda runs: sum(max(width(b) for b in step) for step in zip(*runs))  # noqa: E731  (padded to max)
    assert stacked(grouped) < 0.75 * stacked(plain)
    # Lock-step runs (different seeds) mostly reach the same bucket at the same step.
    assert np.mean([width(a) == width(b) for a, b in zip(*grouped)]) > 0.85
    # A chunk covering the whole split still draws new batches each epoch (a sort by exact length would not).
    again = run(0, 2, groups)
    by_members = lambda batches: {frozenset(b.tolist()) for b in batches}  # noqa: E731
    assert len(by_members(grouped[0]) & by_members(again)) == 0
    assert grouped[0][0].tolist() != grouped[1][0].tolist()
    with pytest.raises(data.DataError, match="lengths"):
        data.train_batch_indices(n, batch_size, seed=0, epoch=0, length_grouping=2)
    with pytest.raises(configs.ConfigError, match="length_grouping"):
        configs.DataConfig(length_grouping=-1)


@FAST
@given(enc=encoded_splits(), batch_size=st.integers(1, 16),
       buckets=st.lists(st.integers(1, 300), min_size=1, max_size=5))
def test_eval_keeps_every_example_once_in_order(enc, batch_size, buckets):
    batches = list(data.eval_batches(enc, batch_size, buckets=buckets))
    assert len(batches) == -(-len(enc) // batch_size)
    np.testing.assert_array_equal(valid_ids(batches), enc.ids)
    for b in batches:
        check_batch(enc, b, batch_size, buckets)
        k = int(b["valid"].sum())
        assert b["valid"][:k].all() and not b["valid"][k:].any()  # padding only at the end
    assert sum(int(b["valid"].sum()) for b in batches) == len(enc)


@FAST
@given(enc=encoded_splits(), per_process=st.integers(1, 4), process_count=st.integers(1, 4),
       num_devices=st.sampled_from([1, 2]), seed=st.integers(0, 100))
def test_process_shards_are_disjoint_and_cover_the_batch(enc, per_process, process_count, num_devices, seed):
    batch_size = per_process * process_count * num_devices
    batch = next(data.train_batches(enc, batch_size, seed=seed, epoch=0))
    shards = [data.process_rows(batch, i, process_count) for i in range(process_count)]
    for key in batch:
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), batch[key])
    real = [set(s["id"][s["valid"]].tolist()) for s in shards]
    assert sum(map(len, real)) == len(set().union(*real)) == int(batch["valid"].sum())
    local = data.device_layout(shards[0], num_devices)
    assert local["input_ids"].shape == (num_devices, batch_size // process_count // num_devices,
                                        batch["input_ids"].shape[1])
    np.testing.assert_array_equal(local["id"].reshape(-1), shards[0]["id"])


def test_process_and_device_defaults_and_errors():
    batch = next(data.eval_batches(synthetic([2, 3, 4]), 4))
    assert data.process_rows(batch)["id"].tolist() == batch["id"].tolist()  # one process here
    assert data.device_layout(batch, 2)["valid"].shape == (2, 2)
    with pytest.raises(data.DataError, match="3 processes"):
        data.process_rows(batch, 0, 3)
    with pytest.raises(data.DataError, match="3 devices"):
        data.device_layout(batch, 3)
    with pytest.raises(data.DataError, match="not in"):
        data.process_rows(batch, 2, 2)


def test_buckets_are_capped_at_max_length():
    assert data.bucket_set((16, 32, 64, 128), 100) == (16, 32, 64, 100)
    assert data.bucket_set((16, 32), 512) == (16, 32, 512)
    enc = synthetic([5, 17, 40], max_length=48)
    widths = [b["input_ids"].shape[1] for b in data.eval_batches(enc, 1)]
    assert widths == [16, 32, 48]


def test_bucket_of_a_length_is_the_smallest_that_holds_it():
    rng = np.random.default_rng(0)
    buckets = (3, 8, 16, 17, 64)
    for length in list(rng.integers(1, 65, 200)) + [1, 3, 4, 8, 9, 16, 17, 18, 64]:
        expected = None
        for b in reversed(buckets):  # Walk down from the largest: the last bucket still >= length.
            if b >= length:
                expected = b
        assert data.bucket_length(int(length), buckets) == expected
    with pytest.raises(data.DataError, match="length 65 fits no bucket"):
        data.bucket_length(65, buckets)


# ------------------------------------------------------------------------------------------------ built-in data


@pytest.fixture(scope="module")
def rotten_tomatoes_movies():
    """{id: movie_name} for the fresh/rotten rows of the built-in corpus, read independently with csv."""
    try:
        file = assets.path("rotten_tomatoes") / "rotten_tomatoes_corpus_full.csv.bz2"
    except assets.AssetMissingError as e:
        pytest.skip(str(e))
    with bz2.open(file, "rb") as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    return {i: r["movie_name"] for i, r in enumerate(rows) if r["category"] in ("fresh", "rotten")}


@pytest.mark.real
def test_rotten_tomatoes_split_by_movie(rotten_tomatoes_movies):
    splits = {s: data.load_split("rotten_tomatoes", s) for s in ("train", "validation", "test")}
    sizes = {s: len(ds) for s, ds in splits.items()}
    assert sum(sizes.values()) == 12_808 == len(rotten_tomatoes_movies)
    assert sizes["train"] > 0.7 * 12_808 and min(sizes.values()) > 0.05 * 12_808
    labels = np.concatenate([np.asarray(ds["label"]) for ds in splits.values()])
    assert (labels == 1).sum() == 7403 and (labels == 0).sum() == 5405
    for ds in splits.values():  # each split is near the overall balance
        assert 0.45 < np.mean(ds["label"]) < 0.7
    movies = {s: {rotten_tomatoes_movies[i] for i in ds["id"]} for s, ds in splits.items()}
    assert not movies["train"] & movies["validation"] and not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert all(data.movie_split(m) == s for s, names in movies.items() for m in names)
    again = data.load_split("rotten_tomatoes", "dev")
    assert again["id"] == splits["validation"]["id"] and again["sentence"] == splits["validation"]["sentence"]


@pytest.mark.real
def test_vader_sets():
    expect = {"vader_movie": (5242, 5326), "vader_amazon": (2128, 1482), "vader_nyt": (2204, 2742),
              "vader_tweets": (2897, 1299)}
    for name, (pos, neg) in expect.items():
        labels = np.asarray(data.load_split(name, "test")["label"])
        assert ((labels == 1).sum(), (labels == 0).sum()) == (pos, neg), name
    ds = data.load_split("vader_movie", "test")
    assert ds["id"][:2] == [0, 1] and ds["sentence"][0].startswith("The Rock is destined")


def test_select_and_subset_keep_examples_whole_and_deterministic(tmp_path):
    from cascade_jax import data as D
    import numpy as np

    tok = D.load_tokenizer("minilm-l6")
    ds = D.load_split("rotten_tomatoes", "train", _subset_folder(tmp_path))
    enc = D.encode(ds, "rotten_tomatoes", tok, 32, split="train")
    picked = D.select(enc, [3, 0, 5])
    assert list(picked.ids) == [enc.ids[3], enc.ids[0], enc.ids[5]]
    for j, i in enumerate([3, 0, 5]):
        np.testing.assert_array_equal(picked.tokens(j)[0], enc.tokens(i)[0])
    a, b = D.subset(enc, 7), D.subset(enc, 7)
    assert len(a) == 7 and list(a.ids) == list(b.ids) and list(a.ids) == sorted(a.ids)
    assert set(a.ids) <= set(enc.ids) and list(D.subset(enc, 7, seed=1).ids) != list(a.ids)
    assert D.subset(enc, None) is enc and D.subset(enc, 10**6) is enc


def _subset_folder(tmp_path):
    import csv

    folder = tmp_path / "subset"
    folder.mkdir()
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows([(f"review number {i} was {'good' if i % 2 else 'bad'}", i % 2) for i in range(20)])
    return folder
