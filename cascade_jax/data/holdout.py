"""Dev and test splits for evaluation when a task's test labels are withheld (GLUE): a seeded part of the official
dev split is held out as the test split, and everything that selects on dev (best checkpoints, thresholds) sees
only the rest.

  dev_and_test(task, source, tokenizer=, max_length=, test_from_dev=None, seed=0) -> (dev, test, description)
  encode_dev(task, source, ...) -> the dev part alone (what training selects checkpoints on)
"""

from __future__ import annotations

import numpy as np

from cascade_jax.data.encode import Encoded, encode_split, select
from cascade_jax.data.tasks import Task, get_task

DEFAULT_SHARE = 0.5
_STREAM = 0x54657374  # "Test": keeps this shuffle apart from other uses of the same seed.


def holdout_share(task: Task, test_from_dev: float | None) -> float:
    """The share of dev held out as test: ``test_from_dev`` when given, else :data:`DEFAULT_SHARE` for a task whose
    test labels are withheld and 0 otherwise."""
    share = (DEFAULT_SHARE if not task.test_labelled else 0.0) if test_from_dev is None else float(test_from_dev)
    if not 0 <= share < 1:
        raise ValueError(f"test_from_dev must be in [0, 1), got {share}")
    return share


def split_positions(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions (kept as dev, held out as test) of a seeded ``share`` of ``n`` examples."""
    order = np.random.default_rng([int(seed), _STREAM]).permutation(n)
    cut = int(round(share * n))
    return np.sort(order[cut:]), np.sort(order[:cut])


def dev_and_test(task, source=None, *, tokenizer, max_length: int, test_from_dev: float | None = None,
                 seed: int = 0, with_test: bool = True) -> tuple[Encoded, Encoded | None, str]:
    """The encoded dev and test splits, and a sentence saying where the test split came from."""
    task = get_task(task)
    dev = encode_split(task, "dev", source, tokenizer=tokenizer, max_length=max_length)
    share = holdout_share(task, test_from_dev)
    if share == 0:
        if not with_test:
            return dev, None, ""
        test = encode_split(task, "test", source, tokenizer=tokenizer, max_length=max_length)
        return dev, test, "the task's test split"
    keep, held = split_positions(len(dev), share, seed)
    return select(dev, keep), select(dev, held), (
        f"{len(held)} examples ({share:.0%}, seed {seed}) of the official dev split held out as test"
        + ("; the task's test labels are withheld" if not task.test_labelled else "") + f"; dev keeps {len(keep)}")


def encode_dev(task, source=None, *, tokenizer, max_length: int, test_from_dev: float | None = None,
               seed: int = 0) -> Encoded:
    """The dev split training selects on: without the held-out test part, when there is one."""
    return dev_and_test(task, source, tokenizer=tokenizer, max_length=max_length, test_from_dev=test_from_dev,
                        seed=seed, with_test=False)[0]
