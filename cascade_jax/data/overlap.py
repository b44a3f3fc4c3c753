"""Overlap between splits on normalised text: an out-of-domain test set must not hold training sentences.

  normalize_text(text) -> str                         # lower case, punctuation and runs of spaces folded
  drop_overlap(enc, texts_of_enc, reference_texts) -> (kept Encoded, removed count)
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from cascade_jax.data.encode import Encoded, select

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Lower case, accents and compatibility forms folded (NFKC), every run of punctuation, symbols and spaces
    replaced by one space, stripped: ``"It's  GREAT!!"`` -> ``"it s great"``."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return _NOT_WORD.sub(" ", text).strip()


def drop_overlap(enc: Encoded, texts: Sequence[str], reference: Iterable[str]) -> tuple[Encoded, int]:
    """``enc`` without the examples whose text (``texts[i]`` is example i's) equals, once normalised, a text of
    ``reference``; and how many were removed."""
    if len(texts) != len(enc):
        raise ValueError(f"{len(texts)} texts for {len(enc)} examples of {enc.task}/{enc.split}")
    seen = {normalize_text(t) for t in reference}
    keep = np.array([normalize_text(t) not in seen for t in texts], bool)
    return select(enc, np.flatnonzero(keep)), int((~keep).sum())
