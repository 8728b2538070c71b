"""Which samples each (rank, DataLoader worker) reads, as pure position arithmetic.

A set is the concatenation of its shards in some order; a *position* is an index
into that concatenation. Planning works on positions only (shard sizes come from
`index.json`), so every rank computes the same plan without talking to the others.

Training split (why contiguous ranges, not shards and not `i % world`):
  * Shard-level splitting (`wds.split_by_node`) gives ranks unequal sample counts
    when shards are few or unequal, and with 1 shard and 2 ranks one rank starves.
  * Sample-level `i % (world * workers)` is balanced but makes every reader scan
    every shard: I/O grows with world_size * num_workers.
  * A contiguous range of positions per (rank, worker) over the per-epoch shuffled
    shard order is both: balanced to the sample, and each reader opens only the
    shards its range overlaps (≈ 1/(world*workers) of the bytes, plus at most two
    partial shards). A seeded per-epoch rotation moves the range boundaries, so
    with few shards the ranks still see different samples every epoch.
Every rank takes exactly `steps * batch_size` positions (its own batch size: ranks of an
elastic run may differ by one, `config.split_batch`), disjoint from the others', so each sample is
read at most once per epoch and every rank runs `steps` steps, `steps` = samples // the
global batch; which samples a rank gets does not depend on its number of DataLoader workers.
This replaces webdataset's `split_by_node` + `with_epoch` recipe (ARCHITECTURE.md, "Ray 2.60 facts"):
same guarantees, without the starved-rank case.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

# Stream tags keep the random streams of one (seed, epoch, rank, worker) independent.
ORDER, ID_SHUFFLE, ID_AUGMENT, OE_ORDER, OE_SHUFFLE, OE_AUGMENT = range(6)


def rng(seed: int, epoch: int, *parts: int) -> np.random.Generator:
    """A generator determined only by its arguments (never by global RNG state)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), *map(int, parts)]))


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Full global batches in one epoch: every rank runs exactly this many steps."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size={batch_size} and world_size={world_size} must be >= 1")
    steps = num_samples // (batch_size * world_size)
    if steps == 0:
        raise ValueError(f"{num_samples} training samples cannot fill one batch of {batch_size} "
                         f"on each of {world_size} workers; reduce the batch size or the "
                         f"number of workers")
    return steps


def epoch_order(num_shards: int, num_samples: int, seed: int, epoch: int) -> tuple[np.ndarray, int]:
    """(shard permutation, rotation offset) for one epoch, identical on every rank."""
    gen = rng(seed, epoch, ORDER)
    return gen.permutation(num_shards), int(gen.integers(num_samples))


def worker_quota(steps: int, worker: int, num_workers: int) -> int:
    """Batches worker `worker` must produce: the DataLoader takes batch i from worker i % N."""
    return len(range(worker, steps, num_workers))


def train_positions(num_samples: int, steps: int, batch_size: int, offset: int,
                    rank: int, worker: int, num_workers: int, rank_batches=None) -> np.ndarray:
    """Positions (in the shuffled shard order) read by one training worker, in order.

    With every rank's batch ``rank_batches`` (default: ``batch_size`` on each), rank r owns
    the rotated range starting at ``steps * sum(rank_batches[:r])``, ``steps * B_r`` long;
    inside it each worker gets a contiguous block of exactly quota*B_r positions, so every
    worker can fill its quota and the rank's worker quotas add up to `steps`.
    """
    before_ranks = rank * batch_size if rank_batches is None else int(sum(rank_batches[:rank]))
    before = sum(worker_quota(steps, w, num_workers) for w in range(worker))
    start = steps * before_ranks + before * batch_size
    count = worker_quota(steps, worker, num_workers) * batch_size
    return (offset + start + np.arange(count, dtype=np.int64)) % num_samples


def eval_positions(num_samples: int, batch_size: int, rank: int, world_size: int,
                   worker: int, num_workers: int) -> np.ndarray:
    """Positions (index order) read by one evaluation worker.

    Rank r owns the contiguous range [r*n//W, (r+1)*n//W): concatenating the ranks'
    outputs in rank order gives the set in index order, each sample exactly once.
    Inside the rank, worker w takes local batches w, w+N, ...: the DataLoader's
    round-robin then returns the rank's batches in order, whatever N is.
    """
    lo, hi = rank * num_samples // world_size, (rank + 1) * num_samples // world_size
    local = np.arange(hi - lo, dtype=np.int64)
    return lo + local[(local // batch_size) % num_workers == worker]


def eval_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> int:
    """Number of (possibly partial last) batches rank `rank` yields in evaluation."""
    lo, hi = rank * num_samples // world_size, (rank + 1) * num_samples // world_size
    return -(-(hi - lo) // batch_size)


def group_by_shard(positions: np.ndarray, sizes: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Split positions into runs that stay in one shard: (shard i in `sizes` order, local indices).

    Order is preserved; a run ends whenever the shard changes or the local index
    goes backwards (a rotated range wraps around into the same shard again).
    """
    if len(positions) == 0:
        return
    ends = np.cumsum(sizes)
    shard = np.searchsorted(ends, positions, side="right")
    local = positions - (ends[shard] - np.asarray(sizes)[shard])
    cut = np.flatnonzero((np.diff(shard) != 0) | (np.diff(local) <= 0)) + 1
    for idx in np.split(np.arange(len(positions)), cut):
        yield int(shard[idx[0]]), local[idx]


def shuffled(items: Iterator, size: int, gen: np.random.Generator) -> Iterator:
    """A shuffle buffer: yields `items` in a seeded random order, holding `size` at most.

    It mixes samples across the few shards a worker reads; the shard-order shuffle
    and the rotation do the epoch-wide mixing.
    """
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(gen.integers(size))
        buffer[i], item = item, buffer[i]
        yield item
    gen.shuffle(buffer)
    yield from buffer
