"""Multiply-adds and FLOPs of one example's forward pass through a BERT classifier (and its early-exit variant).

  bert_macs_breakdown(config, seq_len) -> {part: MACs};  bert_macs(config, seq_len);  bert_flops(config, seq_len)
  layer_exit_macs(config, seq_len) -> [num_layers(, N)]   # answering at each layer of a multi-exit model

``seq_len`` may be a numpy array (each example's real length): the counts then have its shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bert_macs_breakdown(config, seq_len) -> dict[str, Any]:
    """Multiply-adds of one example's forward pass through a BERT sequence classifier, by part.

    With L = seq_len, H = hidden, I = intermediate, n = layers, C = labels:
      embeddings: 0 (table lookups and sums: no multiply-adds; their LayerNorm is elementwise and not counted),
      attention_projections: n * 4 * L * H * H (query, key, value, output dense),
      attention_matmuls: n * 2 * L * L * H (scores Q K^T and context P V, over all heads),
      ffn: n * 2 * L * H * I,
      pooler: H * H (the [CLS] row only), classifier: H * C.
    Biases, LayerNorm, softmax and activations are elementwise and not counted.
    """
    length = np.asarray(seq_len, dtype=np.int64) if np.ndim(seq_len) else int(seq_len)
    h, i, n, c = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_labels
    return {
        "embeddings": 0 * length,
        "attention_projections": n * 4 * length * h * h,
        "attention_matmuls": n * 2 * length * length * h,
        "ffn": n * 2 * length * h * i,
        "pooler": h * h + 0 * length,
        "classifier": h * c + 0 * length,
    }


def bert_macs(config, seq_len) -> Any:
    """Total multiply-adds of one example (see :func:`bert_macs_breakdown`)."""
    return sum(bert_macs_breakdown(config, seq_len).values())


def bert_flops(config, seq_len) -> Any:
    """FLOPs of one example: 2 x :func:`bert_macs` (a multiply-add is a multiply and an add)."""
    return 2 * bert_macs(config, seq_len)


def encoder_layer_macs(config, seq_len) -> Any:
    """Multiply-adds of one encoder layer (attention projections, attention matmuls, feed-forward)."""
    parts = bert_macs_breakdown(config, seq_len)
    total = (np.asarray(parts["attention_projections"]) + np.asarray(parts["attention_matmuls"])
             + np.asarray(parts["ffn"]))
    return total / config.num_hidden_layers


FASTBERT_WIDTH = 128  # FastBERT's student classifiers work in 128 dimensions.


def exit_head_macs(config, seq_len=None, head: str = "pooler") -> Any:
    """Multiply-adds of one exit head. DeeBERT's (``pooler``) and PABEE's (``shared_pooler``) heads: a pooler
    (``H*H``) and a classifier (``H*C``). FastBERT's (``fastbert``), with ``d`` = 128 and ``L`` = ``seq_len``:
    ``L*H*d`` (reduce every position) + ``2*L*d*d`` (keys, values) + ``3*d*d`` (the [CLS] query, the attention
    output, the dense layer) + ``2*L*d`` (scores and context of the [CLS] query) + ``d*C``."""
    h, c = config.hidden_size, config.num_labels
    if head in ("pooler", "shared_pooler"):
        return h * h + h * c
    if head == "fastbert":
        if seq_len is None:
            raise ValueError("FastBERT's heads attend over the sequence: give seq_len")
        length = np.asarray(seq_len, dtype=np.float64) if np.ndim(seq_len) else float(seq_len)
        d = FASTBERT_WIDTH
        return length * h * d + 2 * length * d * d + 3 * d * d + 2 * length * d + d * c
    raise ValueError(f"unknown head kind {head!r}")


def layer_exit_macs(config, seq_len, head: str = "pooler") -> np.ndarray:
    """Multiply-adds of answering at each layer of a multi-exit model ``[num_layers]`` (``[num_layers, N]`` when
    ``seq_len`` is an [N] array): ``j`` encoder layers plus ``j`` heads for exit layer ``j`` (1-based). Compare with
    :func:`bert_macs`, the plain model."""
    per_layer = encoder_layer_macs(config, seq_len)
    n = config.num_hidden_layers
    j = np.arange(1, n + 1, dtype=np.float64).reshape((n,) + (1,) * np.ndim(per_layer))
    return j * (per_layer + exit_head_macs(config, seq_len, head))
