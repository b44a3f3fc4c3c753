"""Evaluation metrics, computed on the host in numpy float64.

Every function accepts numpy or JAX arrays (anything ``np.asarray`` takes) and, where it makes sense, an optional
``valid`` ``[N]`` bool/0-1 array selecting the rows that count (e.g. to drop padding of the last eval batch).
Nothing here depends on scipy or scikit-learn; the conventions for degenerate inputs are given per function.

* Task metrics: :func:`accuracy`, :func:`f1_binary`, :func:`matthews_corrcoef`, :func:`pearson`, :func:`spearman`,
  and :func:`task_metrics`, which maps a GLUE-style metric name to a dict of them.
* Exit-quality metrics of the paper: :func:`expected_calibration_error` (Guo et al., 2017; paper Table 5) and
  :func:`difficulty_inversion_score` (DIS, paper Eq. 1-3).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = [
    "softmax",
    "normalized_entropy",
    "majority_accuracy",
    "accuracy",
    "f1_binary",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "expected_calibration_error",
    "difficulty_inversion_score",
    "task_metrics",
    "TASK_METRICS",
]


def _select(valid, *arrays) -> tuple[np.ndarray, ...]:
    """Arrays as flat numpy arrays of equal length, restricted to ``valid`` rows when given."""
    out = [np.asarray(a).reshape(-1) for a in arrays]
    n = out[0].shape[0]
    for a in out[1:]:
        if a.shape[0] != n:
            raise ValueError(f"arrays must have the same number of elements, got {[x.shape[0] for x in out]}")
    if valid is not None:
        keep = np.asarray(valid).reshape(-1) != 0
        if keep.shape[0] != n:
            raise ValueError(f"valid has {keep.shape[0]} elements, the arrays {n}")
        out = [a[keep] for a in out]
    return tuple(out)


def _as_float64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _require_nonempty(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"{what} of an empty input is undefined")


# ----------------------------------------------------------------------------------------------------------------
# probabilities


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis, in numpy float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def normalized_entropy(probs) -> np.ndarray:
    """``H(p) / log C`` over the last axis, float64, in [0, 1] (0 for C = 1); ``0 log 0 = 0``."""
    p = np.asarray(probs, np.float64)
    c = p.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return h / math.log(c) if c > 1 else np.zeros_like(h)


def majority_accuracy(labels) -> float:
    """Accuracy of always answering the most frequent label: what a model that learned nothing scores."""
    counts = np.bincount(np.asarray(labels, np.int64))
    return float(counts.max() / counts.sum())


# ----------------------------------------------------------------------------------------------------------------
# task metrics


def accuracy(predictions, labels, valid=None) -> float:
    """Share of rows with ``prediction == label``. Empty input -> ``ValueError``."""
    predictions, labels = _select(valid, predictions, labels)
    _require_nonempty(predictions.shape[0], "accuracy")
    return float(np.mean(predictions == labels))


def f1_binary(predictions, labels, positive=1, valid=None) -> float:
    """F1 of the class ``positive``: ``2 TP / (2 TP + FP + FN)``.

    When there is no true and no predicted positive (the denominator is 0) the F1 is 0.0, as scikit-learn's
    default. Empty input -> ``ValueError``.
    """
    predictions, labels = _select(valid, predictions, labels)
    _require_nonempty(predictions.shape[0], "F1")
    pred_pos = predictions == positive
    true_pos = labels == positive
    tp = np.sum(pred_pos & true_pos)
    fp = np.sum(pred_pos & ~true_pos)
    fn = np.sum(~pred_pos & true_pos)
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else 0.0


def matthews_corrcoef(predictions, labels, valid=None) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K) form.

    From the confusion matrix with ``s`` rows, ``c`` correct rows, ``t_k`` true and ``p_k`` predicted counts of
    class ``k``::

        MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)),

    which for two classes is ``(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``. A zero denominator (all
    predictions or all labels one class) gives 0.0, as scikit-learn. Empty input -> ``ValueError``.
    """
    predictions, labels = _select(valid, predictions, labels)
    _require_nonempty(predictions.shape[0], "MCC")
    classes, inverse = np.unique(np.concatenate([predictions, labels]), return_inverse=True)
    n = predictions.shape[0]
    p_idx, t_idx = inverse[:n], inverse[n:]
    k = classes.shape[0]
    p_counts = np.bincount(p_idx, minlength=k).astype(np.float64)
    t_counts = np.bincount(t_idx, minlength=k).astype(np.float64)
    correct = float(np.sum(p_idx == t_idx))
    s = float(n)
    cov_pt = correct * s - float(p_counts @ t_counts)
    cov_pp = s * s - float(p_counts @ p_counts)
    cov_tt = s * s - float(t_counts @ t_counts)
    if cov_pp == 0.0 or cov_tt == 0.0:
        return 0.0
    return float(cov_pt / math.sqrt(cov_pp * cov_tt))


def pearson(x, y, valid=None) -> float:
    """Pearson correlation ``sum (x - mx)(y - my) / sqrt(sum (x - mx)^2 sum (y - my)^2)`` in float64.

    Fewer than two rows, or a constant ``x`` or ``y``, make it undefined: returns NaN (as scipy, without a warning).
    """
    x, y = _select(valid, x, y)
    x, y = _as_float64(x), _as_float64(y)
    if x.shape[0] < 2:
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((dx @ dy) / denom, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values sharing the mean of their ranks (O(N log N))."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    # Rank of a value = (number of smaller elements) + (count + 1) / 2.
    smaller = np.cumsum(counts) - counts
    return (smaller + (counts + 1) / 2.0)[inverse.reshape(-1)]


def spearman(x, y, valid=None) -> float:
    """Spearman rank correlation: :func:`pearson` of the average ranks (ties share their mean rank).

    Undefined cases (fewer than two rows, all ``x`` or all ``y`` tied) return NaN.
    """
    x, y = _select(valid, x, y)
    if x.shape[0] < 2:
        return float("nan")
    return pearson(_average_ranks(_as_float64(x)), _average_ranks(_as_float64(y)))


# ----------------------------------------------------------------------------------------------------------------
# exit-quality metrics


def expected_calibration_error(confidence, correct, num_bins: int = 10, valid=None) -> float:
    """Expected calibration error over equal-width confidence bins (Guo et al., 2017).

    Bins are ``B_0 = [0, 1/M]`` and ``B_k = (k/M, (k+1)/M]`` for ``k = 1..M-1`` (``M = num_bins``): right-closed,
    so a confidence equal to an inner edge goes to the bin *below*, and confidence exactly 0 joins the first bin.
    Edges are ``k / M`` rounded to the confidence's own float dtype (float16/32/64; others are converted to
    float64), so e.g. ``float32(0.3)`` is treated as the edge 0.3 and lands in ``(0.2, 0.3]``. Then::

        ECE = sum_k (|B_k| / N) * |acc(B_k) - conf(B_k)|,

    with ``acc`` the share of correct rows and ``conf`` the mean confidence in the bin; empty bins contribute 0.

    Args:
      confidence: ``[N]`` values in ``[0, 1]`` (max softmax probability); outside -> ``ValueError``.
      correct: ``[N]`` bool/0-1, whether the prediction was right.
      num_bins: ``M >= 1``.
      valid: optional row mask.

    Raises ``ValueError`` on an empty input (after ``valid``).
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    confidence, correct = _select(valid, confidence, correct)
    _require_nonempty(confidence.shape[0], "ECE")
    if confidence.dtype not in (np.float16, np.float32, np.float64):
        confidence = _as_float64(confidence)
    if not np.all((confidence >= 0) & (confidence <= 1)):
        raise ValueError("confidence must lie in [0, 1] (and not be NaN)")
    edges = (np.arange(num_bins + 1, dtype=np.float64) / num_bins).astype(confidence.dtype)
    # side="left": the first edge >= c, so c == edge_k lands in bin k - 1 = (edge_{k-1}, edge_k].
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    n = confidence.shape[0]
    conf_sum = np.bincount(bins, weights=_as_float64(confidence), minlength=num_bins)
    correct_sum = np.bincount(bins, weights=_as_float64(correct != 0), minlength=num_bins)
    # sum_k |B_k|/N * |acc_k - conf_k| = sum_k |correct_sum_k - conf_sum_k| / N.
    return float(np.sum(np.abs(correct_sum - conf_sum)) / n)


_TIE_WEIGHTS = {"half": 0.5, "incorrect": 0.0, "correct": 1.0}


def difficulty_inversion_score(confidence, difficulty, ties: str = "half", valid=None) -> float:
    """Difficulty Inversion Score (paper Eq. 1-3): share of (easy, hard) pairs ranked correctly by confidence.

    With ``E`` the easy rows (difficulty 0) and ``H`` the hard rows (difficulty > 0; a soft fraction of seeds
    wrong thus follows the paper's "easy only if every seed was right")::

        DIS = (#{(e, h): c_e > c_h} + w * #{(e, h): c_e == c_h}) / (|E| |H|).

    The paper writes ``DIS = 1 - DI-Sum / K`` with ``K = |E| |H|`` and DI-Sum counting inverted pairs (the hard
    instance more confident); how it treats exact ties is not recoverable, so ``ties`` picks ``w``:

    * ``"half"`` (default): ``w = 1/2``, the AUC / Mann-Whitney convention; a constant confidence scores 0.5.
    * ``"incorrect"``: ``w = 0``, only strictly correctly ordered pairs count.
    * ``"correct"``: ``w = 1``, only strict inversions are errors (``1 - #{c_h > c_e} / K``).

    DIS is the AUC of confidence for telling easy from hard; it is computed by sorting in O(N log N), never with a
    pairwise matrix. With no (easy, hard) pair (no easy or no hard row, or empty input) the ratio is 0/0: the
    result is NaN, so that a report shows "undefined" rather than a misleading 0 or 1.
    """
    if ties not in _TIE_WEIGHTS:
        raise ValueError(f"ties must be one of {sorted(_TIE_WEIGHTS)}, got {ties!r}")
    confidence, difficulty = _select(valid, confidence, difficulty)
    confidence = _as_float64(confidence)
    hard = _as_float64(difficulty) > 0
    easy_conf = np.sort(confidence[~hard])
    hard_conf = confidence[hard]
    n_pairs = easy_conf.shape[0] * hard_conf.shape[0]
    if n_pairs == 0:
        return float("nan")
    # For each hard h: easy rows with c_e <= c_h are searchsorted(right); with c_e < c_h searchsorted(left).
    at_most = np.searchsorted(easy_conf, hard_conf, side="right")
    below = np.searchsorted(easy_conf, hard_conf, side="left")
    greater = int(np.sum(easy_conf.shape[0] - at_most))
    tied = int(np.sum(at_most - below))
    return float((greater + _TIE_WEIGHTS[ties] * tied) / n_pairs)


# ----------------------------------------------------------------------------------------------------------------
# task metric names


def _accuracy_only(predictions, labels, valid):
    return {"accuracy": accuracy(predictions, labels, valid)}


def _f1_accuracy(predictions, labels, valid):
    return {"f1": f1_binary(predictions, labels, valid=valid), "accuracy": accuracy(predictions, labels, valid)}


def _matthews(predictions, labels, valid):
    return {"matthews": matthews_corrcoef(predictions, labels, valid)}


def _pearson_spearman(predictions, labels, valid):
    return {"pearson": pearson(predictions, labels, valid), "spearman": spearman(predictions, labels, valid)}


TASK_METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "accuracy": _accuracy_only,
    "f1+accuracy": _f1_accuracy,
    "matthews": _matthews,
    "pearson+spearman": _pearson_spearman,
}
"""GLUE-style metric names: SST-2/MNLI/QNLI/RTE "accuracy", MRPC/QQP "f1+accuracy" (F1 of class 1), CoLA
"matthews", STS-B "pearson+spearman" (predictions are then real-valued scores)."""


def task_metrics(metric_name: str, predictions, labels, valid=None) -> dict[str, float]:
    """The metrics named ``metric_name`` (a key of :data:`TASK_METRICS`) as a dict of floats.

    ``"accuracy"`` -> ``{"accuracy"}``; ``"f1+accuracy"`` -> ``{"f1", "accuracy"}``; ``"matthews"`` ->
    ``{"matthews"}``; ``"pearson+spearman"`` -> ``{"pearson", "spearman"}``. Unknown names raise ``KeyError``.
    """
    try:
        fn = TASK_METRICS[metric_name]
    except KeyError:
        raise KeyError(f"unknown metric {metric_name!r}; known: {', '.join(TASK_METRICS)}") from None
    return fn(predictions, labels, valid)
