"""Batched prediction over a tokenised split, and the task metric of those predictions."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from cascade_jax import data, metrics


def predict_logits(
    logits_fn: Callable[[Any, dict], jax.Array],
    params: Any,
    enc: data.Encoded,
    batch_size: int = 128,
    *,
    buckets: Sequence[int] = data.DEFAULT_BUCKETS,
) -> np.ndarray:
    """Logits ``[N, C]`` (float32, split order) of ``logits_fn(params, batch)`` on every example of ``enc``.

    ``logits_fn`` should be jitted by the caller (it is called once per batch; a handful of bucket shapes).
    Padding rows of the last batch are dropped.
    """
    out = []
    for batch in data.eval_batches(enc, batch_size, buckets=buckets):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append(np.asarray(logits_fn(params, inputs), np.float32)[batch["valid"]])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def primary_metric(metric_name: str) -> str:
    """The metric a run selects its best checkpoint by (F1 for f1+accuracy, Pearson for STS-B)."""
    return {"f1+accuracy": "f1", "pearson+spearman": "pearson"}.get(metric_name, metric_name)


def evaluate_logits(logits: np.ndarray, enc: data.Encoded) -> dict[str, float]:
    """The task metric(s) of ``logits`` against ``enc``'s labels, plus the mean loss-free confidence."""
    task = data.get_task(enc.task)
    if not task.label_names:  # Regression: a single output is the score.
        return metrics.task_metrics(task.metric, logits[:, 0], enc.labels)
    predictions = logits.argmax(-1)
    probs = jax.nn.softmax(logits, axis=-1)
    result = metrics.task_metrics(task.metric, predictions, enc.labels)
    result["mean_confidence"] = float(np.asarray(probs).max(-1).mean())
    return result
