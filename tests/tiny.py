"""Tiny models and tiny data that tests build for themselves (real vocabulary, random small weights)."""

from __future__ import annotations

import csv
import pathlib
import shutil

import jax
import numpy as np

from cascade_jax import assets, models

POSITIVE = ["good", "great", "wonderful", "moving", "funny", "superb", "charming", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "tedious", "clumsy", "weak", "terrible"]
FILLER = ["the", "film", "movie", "plot", "acting", "story", "was", "is", "really", "quite", "and", "a"]


def make_model_dir(path: pathlib.Path, *, layers: int = 1, hidden: int = 32, heads: int = 4, seed: int = 0,
                   num_labels: int = 2, dropout: float = 0.1) -> pathlib.Path:
    """A random BERT in Hugging Face layout with minilm's real vocabulary and tokenizer files."""
    config = models.BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden + 1, max_position_embeddings=128, num_labels=num_labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    module = models.BertForSequenceClassification(config)
    params = models.init_params(module, jax.random.PRNGKey(seed))
    models.save_pretrained(module, params, path)
    for f in ["vocab.txt", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(assets.path("minilm-l6") / "hf" / f, path / f)
    return path


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Short reviews whose label is given by which cue words they hold; a few are mixed (harder)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        cues = POSITIVE if label else NEGATIVE
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 8))))
        words += list(rng.choice(cues, size=int(rng.integers(1, 3))))
        if rng.random() < 0.2:
            words.append(str(rng.choice(NEGATIVE if label else POSITIVE)))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def make_sentiment_folder(path: pathlib.Path, n_train: int = 96, n_dev: int = 48, n_test: int = 48,
                          seed: int = 0) -> pathlib.Path:
    """A folder with train.csv, validation.csv and test.csv (columns sentence, label)."""
    path.mkdir(parents=True, exist_ok=True)
    for split, n, s in [("train", n_train, seed), ("validation", n_dev, seed + 1), ("test", n_test, seed + 2)]:
        with open(path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows(sentiment_rows(n, s))
    return path
