"""The per-worker halves of the loaders: IterableDatasets that read records and decode them.

`_TrainStream` yields one rank-and-worker's share of an epoch's training batches,
`_EvalStream` one rank-and-worker's share of an evaluation set, in index order. Both run
inside DataLoader workers (or the main process when `num_workers=0`); the loaders
(`loaders.py`) wrap them and finish the batches in the rank's process.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import gpu, plan
from .plan import steps_per_epoch
from .records import Record, read_positions, read_shard
from .transforms import decode_image, rgb_pixels, stack_uint8

if TYPE_CHECKING:
    from .caches import DecodedCache

__all__ = ["multi_hot", "decode_batch"]


class _TrainStream(IterableDataset):
    """Per worker: its ID positions -> shuffle -> decode, zipped with an endless OE stream."""

    def __init__(self, id_index, oe_index, *, batch_size, oe_batch_size, epoch, seed, rank,
                 world_size, num_workers, transform, shuffle_buffer, return_keys, packed=False,
                 cpu_share=0.0, cache=None, rank_batches=None):
        self.id_index, self.oe_index, self.transform = id_index, oe_index, transform
        self.batch_size, self.oe_batch_size = int(batch_size), int(oe_batch_size)
        if self.oe_batch_size < 1:
            raise ValueError(f"oe_batch_size={oe_batch_size} must be >= 1")
        self.epoch, self.seed, self.rank, self.world_size = int(epoch), int(seed), rank, world_size
        self.num_workers, self.shuffle_buffer, self.return_keys = num_workers, shuffle_buffer, return_keys
        self.packed = packed  # yield `gpu.PackedBatch`es for the GPU stage instead of pixels
        self.cpu_share = cpu_share  # of each packed batch: decoded here by PIL (`gpu.pack_batch`)
        self.cache = cache  # DecodedCache: decoded images kept between epochs (in-process only)
        # every rank's ID batch (an elastic run's may differ by one): the epoch has as many
        # steps as the set fills global batches, and rank r reads after ranks 0..r-1
        self.rank_batches = tuple(int(b) for b in rank_batches) if rank_batches is not None \
            else (self.batch_size,) * world_size
        if len(self.rank_batches) != world_size or self.rank_batches[rank] != self.batch_size:
            raise ValueError(f"rank_batches={list(self.rank_batches)} must list {world_size} ranks' batches, "
                             f"rank {rank}'s being batch_size={self.batch_size}")
        self.steps = steps_per_epoch(id_index.num_samples, sum(self.rank_batches), 1) if rank_batches is not None \
            else steps_per_epoch(id_index.num_samples, self.batch_size, world_size)

    def __iter__(self):
        """The CPU decode stage over `record_batches`, or the worker half of the GPU one
        (`gpu.pack_batch`: same records, same generators, crops drawn in the same order)."""
        worker = _worker_id(self.num_workers)
        seeds = (self.seed, self.epoch)
        id_gen = plan.rng(*seeds, plan.ID_AUGMENT, self.rank, worker)
        oe_gen = plan.rng(*seeds, plan.OE_AUGMENT, self.rank, worker)
        if self.packed:
            def stage(records, transform, gen):
                return gpu.pack_batch(records, transform, gen, cpu_share=self.cpu_share)
        else:
            stage = functools.partial(decode_batch, cache=self.cache)
        for id_batch, oe_batch in self.record_batches(worker):
            x_id = stage(id_batch, self.transform, id_gen)
            x_oe = None if oe_batch is None else stage(oe_batch, self.transform, oe_gen)
            batch = (x_id, multi_hot(id_batch, self.id_index.num_classes), x_oe)
            yield (*batch, [r.key for r in id_batch]) if self.return_keys else batch

    def record_batches(self, worker: int) -> Iterator[tuple[list[Record], list[Record] | None]]:
        """This worker's quota of (ID records, OE records or None) batches, still encoded."""
        ids, oes = self._id_records(worker), self._oe_records(worker)
        for _ in range(plan.worker_quota(self.steps, worker, self.num_workers)):
            id_batch = _take(ids, self.batch_size)
            if len(id_batch) < self.batch_size:
                raise RuntimeError(f"ID set {self.id_index.name!r} ran short on rank {self.rank}")
            yield id_batch, None if oes is None else _take(oes, self.oe_batch_size)

    def _id_records(self, worker: int) -> Iterator[Record]:
        index = self.id_index
        perm, offset = plan.epoch_order(len(index.shards), index.num_samples, self.seed, self.epoch)
        shards = [index.shards[i] for i in perm]
        positions = plan.train_positions(index.num_samples, self.steps, self.batch_size, offset,
                                         self.rank, worker, self.num_workers, self.rank_batches)
        records = read_positions([u for u, _ in shards], [n for _, n in shards], positions, read=self._read_shard)
        gen = plan.rng(self.seed, self.epoch, plan.ID_SHUFFLE, self.rank, worker)
        return plan.shuffled(records, self.shuffle_buffer, gen)

    def _oe_records(self, worker: int) -> Iterator[Record] | None:
        """Resampled OE: passes over the OE shards, each in a fresh seeded order, forever."""
        if self.oe_index is None:
            return None
        seeds = (self.seed, self.epoch)
        order_gen = plan.rng(*seeds, plan.OE_ORDER, self.rank, worker)

        def endless():
            while True:
                for i in order_gen.permutation(len(self.oe_index.shards)):
                    url, n = self.oe_index.shards[i]
                    yield from self._read_shard(url, np.arange(n), expected=n)

        gen = plan.rng(*seeds, plan.OE_SHUFFLE, self.rank, worker)
        # A buffer larger than the set would only hold repeats of it.
        size = min(self.shuffle_buffer, self.oe_index.num_samples)
        return plan.shuffled(endless(), size, gen)

    def _read_shard(self, url: str, indices: np.ndarray, *, expected: int) -> Iterator[Record]:
        """`records.read_shard`; with the decoded cache (CPU decode), a shard whose wanted
        records all have their images cached is not read again: their metadata comes from
        the cache (`DecodedCache.held`), the same records in the same order."""
        if self.cache is None or self.packed:
            yield from read_shard(url, indices, expected=expected)
            return
        held = self.cache.held(url, indices, self.transform.min_decode_size)
        if held is not None:
            yield from held
            return
        for n, rec in enumerate(read_shard(url, indices, expected=expected)):
            self.cache.remember(url, indices[n], rec)
            yield rec


class _EvalStream(IterableDataset):
    """Per worker: its batches of the rank's slice, in index order, eval transform only."""

    def __init__(self, index, *, batch_size, rank, world_size, num_workers, transform):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.index, self.batch_size, self.transform = index, int(batch_size), transform
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers

    def __iter__(self):
        worker = _worker_id(self.num_workers)
        positions = plan.eval_positions(self.index.num_samples, self.batch_size, self.rank,
                                        self.world_size, worker, self.num_workers)
        records = read_positions([u for u, _ in self.index.shards], self.index.shard_sizes, positions)
        while batch := _take(records, self.batch_size):
            x = decode_batch(batch, self.transform, None)
            yield x, multi_hot(batch, self.index.num_classes), [r.key for r in batch]


def multi_hot(records: list[Record], num_classes: int) -> torch.Tensor:
    """float32 [len(records), num_classes] targets from the records' class indices."""
    y = np.zeros((len(records), num_classes), dtype=np.float32)
    for row, rec in enumerate(records):
        bad = [c for c in rec.labels if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"shard {rec.shard!r}, key {rec.key!r}: labels {bad} outside the "
                             f"{num_classes} classes")
        y[row, list(rec.labels)] = 1.0
    return torch.from_numpy(y)


def decode_batch(records: list[Record], transform, gen, cache: "DecodedCache | None" = None) -> torch.Tensor:
    """The CPU decode stage, in a DataLoader worker: bytes -> RGB -> crop/resize/flip ->
    uint8 [B, 3, S, S] channels-last. The loader normalises it in the main process (or on
    the GPU): a worker's float32 batch was four times the bytes to hand over, and the
    normalising pass cost as much as a tenth of the decode. With a `cache`, decoded images
    are taken from it or put in it (the crop is drawn from `gen` either way)."""
    images = []
    for rec in records:
        pixels = None if cache is None else cache.get(rec, transform.min_decode_size)
        if pixels is None:
            pixels = rgb_pixels(_decode(rec, transform))
            if cache is not None:
                cache.put(rec, transform.min_decode_size, pixels)
        images.append(transform.geometric_pixels(pixels, gen))
    return stack_uint8(images)


def _decode(rec: Record, transform):
    try:
        return decode_image(rec.data, min_size=transform.min_decode_size)
    except Exception as err:  # PIL raises several types for corrupt or hostile bytes
        raise ValueError(f"shard {rec.shard!r}, key {rec.key!r}: cannot decode the "
                         f".{rec.ext} image ({err})") from err


def _take(items: Iterator, n: int) -> list:
    return [item for _, item in zip(range(n), items)]


def _worker_id(num_workers: int) -> int:
    info = get_worker_info()
    if info is None:
        return 0
    if info.num_workers != num_workers:
        raise RuntimeError(f"stream planned for {num_workers} workers runs in {info.num_workers}")
    return info.id
