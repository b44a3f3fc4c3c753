"""Uncertainty of comparisons on shared examples: a paired bootstrap over examples combined with seed resampling,
verdicts on the paper's claims, and temperature scaling. Pure functions of numpy arrays.

  resample_weights(n, resamples, seed) -> [R, n]        # how often each example is drawn in each resample
  bootstrap_means(values {name: [S, n]}, weights, seed) -> {name: [R]}   # per-method means, paired over examples
  interval(samples, level=0.95) -> (low, high);  verdict(low, high, direction) -> "reproduces" | ...
  bootstrap_statistic(fn, arrays per seed, weights, seed) -> [R]        # any statistic (ECE, DIS) of resampled rows
  fit_temperature(logits, labels) -> T;  temperature_scale(logits, T) -> probabilities
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

VERDICTS = ("reproduces", "contradicted", "not distinguishable")


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[R, n]`` counts: row r says how many times each of ``n`` examples is drawn (with replacement, n draws) in
    resample r. The same matrix is used for every method, so comparisons are paired over examples."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need n >= 1 and resamples >= 1, got {n}, {resamples}")
    rng = np.random.default_rng([int(seed), 0x426F6F74])  # "Boot"
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def seed_draws(num_seeds: int, resamples: int, seed: int, stream: int) -> np.ndarray:
    """``[R, S]`` seed indices drawn with replacement (independently per method: ``stream`` tells them apart)."""
    rng = np.random.default_rng([int(seed), 0x53656564, int(stream)])  # "Seed"
    return rng.integers(0, num_seeds, size=(resamples, num_seeds))


def bootstrap_means(values: Mapping[str, np.ndarray], weights: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """For each method, ``[R]`` bootstrap replicates of its mean over seeds of the per-seed mean over examples.

    ``values[name]`` is ``[S, n]`` (e.g. 0/1 correctness of each seed's run on each test example). In replicate r the
    examples are weighted by ``weights[r]`` (shared by all methods: paired) and the seeds are drawn with
    replacement (independently per method, by name). With one seed this is the plain paired bootstrap.
    """
    out = {}
    for name, v in values.items():
        v = np.atleast_2d(np.asarray(v, np.float64))
        per_seed = v @ weights.T / weights.sum(axis=1)  # [S, R]
        draws = seed_draws(v.shape[0], weights.shape[0], seed, _stream(name))  # [R, S]
        out[name] = per_seed[draws, np.arange(weights.shape[0])[:, None]].mean(axis=1)
    return out


def _stream(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())


def bootstrap_statistic(fn: Callable[..., float], arrays: Sequence[Sequence[np.ndarray]], weights: np.ndarray,
                        seed: int, name: str) -> np.ndarray:
    """``[R]`` replicates of the mean over (resampled) seeds of ``fn(*arrays[s] at the resampled rows)``: for
    statistics that are not means of per-example values (ECE, DIS). ``arrays[s]`` holds seed s's arrays, each with
    the examples on its first axis. Row i is repeated ``weights[r, i]`` times."""
    num_seeds = len(arrays)
    draws = seed_draws(num_seeds, weights.shape[0], seed, _stream(name))
    out = np.empty(weights.shape[0])
    for r, w in enumerate(weights):
        rows = np.repeat(np.arange(len(w)), w.astype(np.int64))
        per_seed = {}
        for s in set(draws[r].tolist()):
            per_seed[s] = fn(*[np.asarray(a)[rows] for a in arrays[s]])
        out[r] = np.mean([per_seed[s] for s in draws[r]])
    return out


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (NaN replicates dropped)."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


def verdict(low: float, high: float, direction: int) -> str:
    """The paper's claim ``difference > 0`` (``direction`` +1) or ``< 0`` (-1) against a 95% interval of the
    difference: "reproduces" when the interval excludes 0 in the claimed direction, "contradicted" when it excludes
    0 the other way, else "not distinguishable"."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not distinguishable"
    if direction * low > 0 and direction * high > 0:
        return "reproduces"
    if direction * low < 0 and direction * high < 0:
        return "contradicted"
    return "not distinguishable"


# ----------------------------------------------------------------------------------------------------------------
# Temperature scaling (Guo et al., 2017): the calibration baseline the paper does not have.


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, low: float = 0.05, high: float = 20.0, tol: float = 1e-6) -> float:
    """The temperature ``T`` in ``[low, high]`` minimising the mean negative log-likelihood of
    ``softmax(logits / T)`` on ``labels`` (golden-section search on ``log T``; the NLL is unimodal in ``T``)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(logits, labels, math.exp(c)), _nll(logits, labels, math.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


def temperature_scale(probs_or_logits, temperature: float, *, from_probs: bool = True) -> np.ndarray:
    """``softmax(logits / T)`` in float64; from probabilities, the logits are their logs."""
    x = np.asarray(probs_or_logits, np.float64)
    logits = np.log(np.clip(x, 1e-300, None)) if from_probs else x
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
