"""Fixed-shape numpy batches for jit, with length buckets, deterministic shuffling and exact resume.

A batch is a dict of numpy arrays with leading dimension ``B`` (the batch size):

* ``input_ids``, ``attention_mask``, ``token_type_ids``: int32 [B, L]; ``L`` is the smallest bucket length that
  holds the batch's longest example (buckets default to (16, 32, 64, 128), capped at the split's ``max_length``,
  which is always a bucket), so a run compiles only a handful of shapes;
* ``label``: int32 [B] (float32 for regression);
* ``id``: int64 [B], the example ids (-1 on padding rows);
* ``valid``: bool [B], False on padding rows (which have all-zero ``attention_mask``, pad ``input_ids``, label 0);
* optionally the requested side columns (``extras=("difficulty",)``): float32 [B], 0 on padding rows.

Training: epoch ``e`` visits the examples in the order ``epoch_permutation(n, seed, e)``, cut into consecutive
batches; the last partial batch is padded with ``valid=False`` rows (``drop_last=False``, default, so every example
is seen exactly once per epoch) or dropped (``drop_last=True``). ``start_step=k`` starts at batch ``k`` of the
epoch, giving exactly the batches an uninterrupted run would have produced from there. With ``length_grouping=G``
that order is cut into chunks of ``G`` batches, each chunk ordered by length bucket and cut into batches, whose
order within the chunk is then shuffled by :func:`chunk_batch_order` (less padding; see :func:`length_grouped`).

Evaluation: every example exactly once, in split order; the last batch is padded with ``valid=False`` rows.

Multi-host: every process builds the same global batch and keeps its own rows with :func:`process_rows`;
:func:`device_layout` reshapes a host batch to ``[num_devices, per_device, ...]`` for ``pmap``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from cascade_jax.data.encode import Encoded
from cascade_jax.data.errors import DataError

DEFAULT_BUCKETS = (16, 32, 64, 128)
Batch = dict[str, np.ndarray]


def bucket_set(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
    """The sorted bucket lengths: each of ``buckets`` capped at ``max_length``, plus ``max_length`` itself."""
    if max_length < 1 or any(b < 1 for b in buckets):
        raise DataError(f"bucket lengths and max_length must be positive, got {tuple(buckets)} and {max_length}")
    return tuple(sorted({min(int(b), int(max_length)) for b in buckets} | {int(max_length)}))


def bucket_index(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """For each of ``lengths``, the index of the smallest of ``buckets`` (sorted) that holds it (``len(buckets)``
    where none does)."""
    return np.searchsorted(np.asarray(buckets), np.asarray(lengths), side="left")


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
    """The smallest of ``buckets`` (sorted) that is at least ``longest``."""
    i = int(bucket_index(longest, buckets))
    if i == len(buckets):
        raise DataError(f"an example of length {longest} fits no bucket in {tuple(buckets)}")
    return buckets[i]


def make_batch(enc: Encoded, indices: Sequence[int] | np.ndarray, batch_size: int, *,
               buckets: Sequence[int] = DEFAULT_BUCKETS, extras: Sequence[str] = ()) -> Batch:
    """The padded batch of examples ``enc[indices]`` (positions in ``enc``, at most ``batch_size`` of them).

    Rows past ``len(indices)`` are padding (``valid=False``). See the module docstring for the keys.
    """
    idx = np.asarray(indices, dtype=np.int64)
    k = len(idx)
    if k > batch_size:
        raise DataError(f"{k} examples do not fit a batch of {batch_size}")
    missing = [e for e in extras if e not in enc.extras]
    if missing:
        raise DataError(f"extra column(s) {missing} not joined to {enc.task}/{enc.split}; "
                        f"available: {sorted(enc.extras)} (use join_by_id)")
    lengths = enc.offsets[idx + 1] - enc.offsets[idx]
    width = bucket_length(int(lengths.max(initial=1)), bucket_set(buckets, enc.max_length))
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    src = (enc.offsets[idx][:, None] + cols[None, :])[mask]
    input_ids = np.full((batch_size, width), enc.pad_id, dtype=np.int32)
    token_type_ids = np.zeros((batch_size, width), dtype=np.int32)
    attention_mask = np.zeros((batch_size, width), dtype=np.int32)
    input_ids[:k][mask] = enc.input_ids[src]
    token_type_ids[:k][mask] = enc.token_type_ids[src]
    attention_mask[:k] = mask
    label = np.zeros(batch_size, dtype=np.float32 if enc.labels.dtype.kind == "f" else np.int32)
    label[:k] = enc.labels[idx]
    ids = np.full(batch_size, -1, dtype=np.int64)
    ids[:k] = enc.ids[idx]
    valid = np.zeros(batch_size, dtype=bool)
    valid[:k] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
             "label": label, "id": ids, "valid": valid}
    for name in extras:
        column = np.zeros(batch_size, dtype=np.float32)
        column[:k] = enc.extras[name][idx]
        batch[name] = column
    return batch


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order (int64 [n]) in which epoch ``epoch`` visits ``n`` examples; a pure function of (seed, epoch)."""
    if seed < 0 or epoch < 0:
        raise DataError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of training batches in an epoch of ``n`` examples."""
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


# Seeds the order of a chunk's batches under length grouping; deliberately not a run's seed (see chunk_batch_order).
_CHUNK_ORDER_SEED = 7919


def chunk_batch_order(num_batches: int, epoch: int, chunk: int) -> np.ndarray:
    """The order in which a length-sorted chunk's ``num_batches`` full batches are visited: a permutation that
    depends on ``(epoch, chunk)`` only, not on the run's seed, so that runs trained in lock-step (a stacked group's
    members, whose data orders differ) visit the same length rank at the same step and pad little when stacked."""
    return np.random.default_rng([_CHUNK_ORDER_SEED, int(epoch), int(chunk)]).permutation(num_batches)


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int, groups: int, epoch: int,
                   buckets: Sequence[int] = DEFAULT_BUCKETS) -> list[np.ndarray]:
    """``order`` (positions) cut into batches that mostly share a length bucket: consecutive chunks of
    ``groups * batch_size`` positions, each put in order of its examples' bucket (``bucket_length`` of their
    ``lengths`` in ``buckets``; stable, so within a bucket the random order of ``order`` is kept) and cut into
    batches; a chunk's full batches are visited in the order :func:`chunk_batch_order`, and a partial batch (the
    epoch's last) stays last.

    Each batch is a random draw from its bucket within a random chunk (not a sort by exact length, which would put
    the same examples together in every epoch of a small split), so only the padding changes: a batch is padded to
    the bucket of its longest example."""
    if groups < 1:
        raise DataError(f"length_grouping must be a positive number of batches (or 0: off), got {groups}")
    order = np.asarray(order)
    if len(lengths) != len(order):
        raise DataError(f"{len(lengths)} lengths for {len(order)} examples")
    bucket_of = bucket_index(lengths, sorted(buckets))
    size = groups * batch_size
    out: list[np.ndarray] = []
    for chunk, lo in enumerate(range(0, len(order), size)):
        part = order[lo:lo + size]
        part = part[np.argsort(bucket_of[part], kind="stable")]
        cut = [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        full = [b for b in cut if len(b) == batch_size]
        out += [full[i] for i in chunk_batch_order(len(full), epoch, chunk)] + cut[len(full):]
    return out


def train_batch_indices(n: int, batch_size: int, *, seed: int, epoch: int, start_step: int = 0,
                        drop_last: bool = False, lengths: np.ndarray | None = None,
                        length_grouping: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS) -> list[np.ndarray]:
    """The example positions of each training batch of an epoch, from batch ``start_step`` on; with
    ``length_grouping`` (needs the examples' ``lengths``), batches that share a length bucket
    (:func:`length_grouped`; ``buckets``: the padded lengths, as :func:`bucket_set` gives them)."""
    if start_step < 0:
        raise DataError(f"start_step must be non-negative, got {start_step}")
    order = epoch_permutation(n, seed, epoch)
    steps = steps_per_epoch(n, batch_size, drop_last)
    if length_grouping:
        if lengths is None:
            raise DataError("length_grouping needs the examples' lengths")
        return length_grouped(order, lengths, batch_size, length_grouping, epoch, buckets)[start_step:steps]
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(start_step, steps)]


def train_batches(enc: Encoded, batch_size: int, *, seed: int, epoch: int, start_step: int = 0,
                  drop_last: bool = False, buckets: Sequence[int] = DEFAULT_BUCKETS,
                  extras: Sequence[str] = (), length_grouping: int = 0) -> Iterator[Batch]:
    """The global training batches of epoch ``epoch`` (shuffled by ``(seed, epoch)``), from ``start_step`` on."""
    for idx in train_batch_indices(len(enc), batch_size, seed=seed, epoch=epoch, start_step=start_step,
                                   drop_last=drop_last, lengths=enc.lengths if length_grouping else None,
                                   length_grouping=length_grouping, buckets=bucket_set(buckets, enc.max_length)):
        yield make_batch(enc, idx, batch_size, buckets=buckets, extras=extras)


def batches_from_step(enc: Encoded, batch_size: int, *, seed: int, start_step: int = 0,
                      buckets: Sequence[int] = DEFAULT_BUCKETS, extras: Sequence[str] = (),
                      length_grouping: int = 0) -> Iterator[Batch]:
    """Every training batch from global step ``start_step`` on, epoch after epoch without end: the batch of step
    ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` (:func:`train_batches`), so a resumed
    run sees exactly the batches of one never interrupted."""
    spe = steps_per_epoch(len(enc), batch_size)
    epoch, in_epoch = divmod(start_step, spe)
    while True:
        yield from train_batches(enc, batch_size, seed=seed, epoch=epoch, start_step=in_epoch, buckets=buckets,
                                 extras=extras, length_grouping=length_grouping)
        epoch, in_epoch = epoch + 1, 0


def eval_batches(enc: Encoded, batch_size: int, *, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 extras: Sequence[str] = ()) -> Iterator[Batch]:
    """Every example exactly once, in order; the last batch is padded with ``valid=False`` rows."""
    for start in range(0, len(enc), batch_size):
        yield make_batch(enc, np.arange(start, min(start + batch_size, len(enc))), batch_size,
                         buckets=buckets, extras=extras)


def process_rows(batch: Mapping[str, np.ndarray], process_index: int | None = None,
                 process_count: int | None = None) -> Batch:
    """This process's contiguous share of a global batch: rows ``[i * B/P, (i + 1) * B/P)``.

    ``process_index``/``process_count`` default to ``jax.process_index()``/``jax.process_count()``. The global
    batch size must be divisible by the process count.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    size = len(next(iter(batch.values())))
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is not in [0, {process_count})")
    if size % process_count:
        raise DataError(f"global batch of {size} rows cannot be split evenly over {process_count} processes")
    per = size // process_count
    return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


def device_layout(batch: Mapping[str, np.ndarray], num_devices: int | None = None) -> Batch:
    """Reshape a host batch from ``[B, ...]`` to ``[num_devices, B / num_devices, ...]`` (for ``pmap``).

    ``num_devices`` defaults to ``jax.local_device_count()``; ``B`` must be divisible by it.
    """
    if num_devices is None:
        import jax

        num_devices = jax.local_device_count()
    size = len(next(iter(batch.values())))
    if num_devices < 1 or size % num_devices:
        raise DataError(f"host batch of {size} rows cannot be split evenly over {num_devices} devices")
    return {k: v.reshape(num_devices, size // num_devices, *v.shape[1:]) for k, v in batch.items()}
