"""Training and evaluation loaders over WebDataset-format shards (DESIGN.md §2, §4).

Three stages, kept apart so the GPU decoder replaces only the last:
  1. plan   (`plan.py`)    which positions each rank / DataLoader worker reads;
  2. read   (`records.py`) raw `Record`s (encoded bytes + labels), shuffled;
  3. decode `decode="cpu"`: PIL decode + transforms + batching in the workers (here);
            `decode="gpu"`: the workers only parse headers and draw crops, the rank
            decodes with nvJPEG and augments on the GPU (`gpu.py`); same samples,
            labels, crops and steps; the CPU path when there is no CUDA.

DDP contract: `len(train_loader(...))` is the same on every rank and iterating yields
exactly that many batches, each ID sample at most once per epoch across all ranks,
while the OE stream is endless and never ends an epoch early (the released code's
`zip(ID, OE)` did). See `plan.py` for why ranks get contiguous ranges of a
per-epoch shuffled, rotated shard order.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DECODERS, GPU_CROPS, GPU_FEEDERS
from . import gpu, plan
from .index import ShardIndex, read_labels
from .plan import steps_per_epoch
from .records import Record, read_positions, read_shard
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, decode_image, eval_transform,
                         normalize_batch, rgb_pixels, stack_uint8, train_transform)

__all__ = ["TrainLoader", "EvalLoader", "EvalCache", "train_loader", "eval_loader", "steps_per_epoch",
           "read_labels", "multi_hot", "decode_batch"]
# The feeder threads' CUDA streams: high priority, so their small kernels take the next
# free SMs rather than queue behind the training step's (no measurable effect on an H100,
# benchmarks/README.md run 4, and no cost).
FEEDER_PRIORITY = -1


def train_loader(id_index: ShardIndex, oe_index: ShardIndex | None, *, batch_size: int,
                 oe_batch_size: int, image_size: int, epoch: int, seed: int, rank: int,
                 world_size: int, num_workers: int, hflip: bool = True,
                 crop_scale=(0.5, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 shuffle_buffer: int = 1000, decode: str = "cpu", return_keys: bool = False,
                 pin_memory: bool | None = None, device=None, gpu_feeder: str = "serial",
                 gpu_crops: str = "batched", prefetch_to_device: bool = False,
                 cpu_decode_share: float = 0.0, decoded_cache_mb: float = 0) -> "TrainLoader":
    """One rank's training batches for `epoch`: iterate to get exactly `len(loader)` tuples
    `(x_id float[B,3,S,S], y_id float[B,C] multi-hot, x_oe float[B_oe,3,S,S])`
    (plus `keys_id: list[str]` when `return_keys`). Call `set_epoch` to reuse it.

    `oe_index=None` (methods without outlier exposure) yields `x_oe = None`.
    `decode="gpu"` decodes on `device` (default: the current CUDA device) and yields
    tensors already there; without CUDA it warns once and decodes on the CPU.
    `gpu_feeder` (`config.GPU_FEEDERS`) and `gpu_crops` (`config.GPU_CROPS`) choose how
    that GPU stage runs.
    `prefetch_to_device` (CPU decode, CUDA `device`): a thread copies each batch to the
    GPU on its own stream a batch ahead, so the copy overlaps the previous step.
    `cpu_decode_share` (decode="gpu", 0..1): that share of each batch is decoded by PIL in
    the DataLoader workers, as the CPU path does, instead of by nvJPEG (then cropped on the
    GPU with the rest): the workers' cores take part of the decoding off the GPU.
    `decoded_cache_mb` (CPU decode, `num_workers=0`): decoded images (RGB, before the random
    crop) are kept in this process, up to that many MB in all, and later epochs crop them
    instead of decoding the bytes again: the same pixels, the same batches. For sets whose
    decoded images fit in memory (the embedded benchmark's 32 px canvases: 18 MB); worker
    processes end with their epoch, so with `num_workers > 0` it does nothing.
    `pin_memory`: the DataLoader's pin thread page-locks each batch. None (the default):
    only the packed batches of a GPU decode stage on CUDA (`PackedBatch.pin_memory`).
    """
    _check_role(id_index, "id")
    if oe_index is not None:
        _check_role(oe_index, "oe")
    if oe_index is not None and id_index.dir == oe_index.dir:
        raise ValueError(f"the OE set and the ID set are the same directory {str(id_index.dir)!r}")
    if not id_index.classes:
        raise ValueError(f"ID set {id_index.name!r} lists no classes in its index.json")
    if decode not in DECODERS:
        raise ValueError(f"decode={decode!r}: choose one of {DECODERS}")
    if gpu_feeder not in GPU_FEEDERS:
        raise ValueError(f"gpu_feeder={gpu_feeder!r}: choose one of {GPU_FEEDERS}")
    if gpu_crops not in GPU_CROPS:
        raise ValueError(f"gpu_crops={gpu_crops!r}: choose one of {GPU_CROPS}")
    if not 0 <= cpu_decode_share <= 1:
        raise ValueError(f"cpu_decode_share={cpu_decode_share!r} must lie in [0, 1]")
    _check_ranks(rank, world_size, num_workers)
    decode_on = gpu.resolve_device(device) if decode == "gpu" else None
    stream = _TrainStream(
        id_index, oe_index, batch_size=batch_size, oe_batch_size=oe_batch_size, epoch=epoch,
        seed=seed, rank=rank, world_size=world_size, num_workers=max(1, num_workers),
        transform=train_transform(image_size, hflip=hflip, crop_scale=crop_scale, mean=mean, std=std),
        shuffle_buffer=shuffle_buffer, return_keys=return_keys, packed=decode_on is not None,
        cpu_share=cpu_decode_share,
        cache=DECODED.sized(decoded_cache_mb) if decoded_cache_mb > 0 and num_workers == 0 else None)
    decoder = None if decode_on is None else gpu.BatchDecoder(image_size, mean, std, decode_on,
                                                              batched=gpu_crops == "batched")
    if pin_memory is None:
        # Packed batches on CUDA are page-locked by the DataLoader's pin thread, off the
        # feeder thread, which took ~20 ms a step to stage 20-30 MB of PIL-decoded pixels
        # itself (benchmarks/README.md, run 6); nvJPEG then copies each file by DMA (run 5's
        # trace: one pageable copy per image, each beside the training kernels).
        pin_memory = decoder is not None and decoder.device.type == "cuda"
    upload_to = None
    if decoder is None and prefetch_to_device and device is not None and torch.device(device).type == "cuda":
        upload_to = torch.device(device)
        if upload_to.index is None:  # the prefetch thread sets this device: it needs an index
            upload_to = torch.device("cuda", torch.cuda.current_device())
    return TrainLoader(stream, num_workers, pin_memory, decoder, feeder=gpu_feeder, upload_to=upload_to)


def eval_loader(index: ShardIndex, *, batch_size: int, image_size: int, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, pin_memory: bool = False) -> "EvalLoader":
    """One rank's evaluation batches `(x float[B,3,S,S], y float[B,C], keys list[str])`.

    C = len(index.classes) (0 for oe / ood sets). Rank r gets a contiguous slice of
    the set in index order, the last batch may be short; concatenating the ranks'
    outputs in rank order gives every sample exactly once, in index order.
    """
    _check_ranks(rank, world_size, num_workers)
    stream = _EvalStream(index, batch_size=batch_size, rank=rank, world_size=world_size,
                         num_workers=max(1, num_workers),
                         transform=eval_transform(image_size, mean=mean, std=std))
    return EvalLoader(stream, num_workers, pin_memory)


# What an EvalCache keeps by default: the decoded pixels of small sets (the embedded
# benchmark's eight evaluation sets are 24 MB), not of a full-size test set.
EVAL_CACHE_BYTES = 512 << 20


class EvalCache:
    """Evaluation sets decoded once and replayed: `loader(index, ...)` is `eval_loader`'s
    batches, the same values, but a set read to the end before is not read or decoded again.

    The eval transform is deterministic, so a set's uint8 batches never change: keeping
    them lets one process evaluate several checkpoints on the same sets (the demo's four
    models), let ODIN's gradient pass reuse the features pass's images, and a training run
    validate every epoch without decoding its validation set again. Only sets whose pixels
    fit in `max_bytes` (all of them together, uint8) are kept; larger ones stream as before.
    """

    def __init__(self, max_bytes: int = EVAL_CACHE_BYTES):
        self.max_bytes, self.used = int(max_bytes), 0
        self._sets: dict[tuple, list[tuple]] = {}

    def loader(self, index: ShardIndex, *, batch_size: int, image_size: int, num_workers: int = 0,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Iterator[tuple]:
        """`(x float[B,3,S,S], y float[B,C], keys)` batches of the whole set, as `eval_loader`."""
        key = (str(index.dir), int(batch_size), int(image_size))
        if key in self._sets:
            return ((normalize_batch(x, mean, std), y, keys) for x, y, keys in self._sets[key])
        loader = eval_loader(index, batch_size=batch_size, image_size=image_size, num_workers=num_workers,
                             mean=mean, std=std)
        size = index.num_samples * 3 * int(image_size) ** 2
        if self.used + size > self.max_bytes:
            return iter(loader)
        return self._record(loader, key, size, mean, std)

    def _record(self, loader: "EvalLoader", key: tuple, size: int, mean, std) -> Iterator[tuple]:
        kept = []
        for x, y, keys in loader._batches():
            kept.append((x, y, keys))
            yield normalize_batch(x, mean, std), y, keys
        if key not in self._sets:  # a pass stopped early (or a second one under way) keeps nothing
            self._sets[key] = kept
            self.used += size


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


class _Loader:
    """Wraps a fresh DataLoader per iteration (workers see the current epoch)."""

    def _normalize(self, batch: tuple) -> tuple:
        """The images of a CPU-decoded batch (its uint8 entries: x_id and x_oe, or x) as
        normalised float32, where they are (main process or GPU)."""
        t = self.stream.transform
        return tuple(normalize_batch(v, t.mean, t.std) if isinstance(v, torch.Tensor) and v.dtype == torch.uint8
                     else v for v in batch)

    def __init__(self, stream: IterableDataset, num_workers: int, pin_memory: bool):
        self.stream, self.num_workers, self.pin_memory = stream, num_workers, pin_memory
        self._started = None

    def start(self):
        """Start the DataLoader workers now; the next iteration uses them. The trainer calls
        this for epoch e+1 when epoch e begins, so the workers' start-up and first batches
        (forking, filling shuffle buffers) overlap training instead of stalling the GPU at
        every epoch boundary. Returns self."""
        if self._started is None:
            self._started = self._new_iterator()
        return self

    def _new_iterator(self) -> Iterator:
        return iter(DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                               pin_memory=self.pin_memory))

    def _batches(self) -> Iterator:
        started, self._started = self._started, None
        return started if started is not None else self._new_iterator()


class TrainLoader(_Loader):
    """Iterating yields exactly `len(self)` batches, the same number on every rank."""

    def __init__(self, stream: IterableDataset, num_workers: int, pin_memory: bool,
                 decoder: "gpu.BatchDecoder | None" = None, feeder: str = "serial",
                 upload_to: torch.device | None = None):
        super().__init__(stream, num_workers, pin_memory)
        self.decoder, self.feeder, self.upload_to = decoder, feeder, upload_to
        # Host seconds per part of the input work, summed over epochs (`prefetch`, `BatchDecoder`).
        self.timings: dict[str, float] = decoder.timings if decoder is not None else {}

    def _batches(self) -> Iterator:
        batches = super()._batches()
        d = self.decoder
        if d is None:
            if self.upload_to is None:
                return (self._normalize(b) for b in batches)
            return gpu.prefetch(batches, self._upload, self.upload_to, priority=FEEDER_PRIORITY, timings=self.timings)
        if self.feeder == "serial":
            return gpu.prefetch(batches, self._decode_packed, d.device, priority=FEEDER_PRIORITY,
                                timings=self.timings)
        decoded = gpu.prefetch(batches, self._decode_step, d.device, priority=FEEDER_PRIORITY,
                               timings=self.timings, name="decoder")
        if self.feeder == "pipelined":
            return gpu.prefetch(decoded, self._finish_step, d.device, priority=FEEDER_PRIORITY,
                                timings=self.timings, name="cropper")
        return (self._finish_step(b) for b in decoded)  # inline: on the training stream

    def _decode_packed(self, batch: tuple) -> tuple:
        """The GPU stage of one step: ID and OE through one nvJPEG call, labels moved along."""
        return self._finish_step(self._decode_step(batch))

    def _decode_step(self, batch: tuple) -> tuple:
        packed_id, y, packed_oe, *keys = batch
        return (packed_id, self.decoder.upload(y), packed_oe, keys, self.decoder.decode(packed_id, packed_oe))

    def _finish_step(self, item: tuple) -> tuple:
        packed_id, y, packed_oe, keys, images = item
        x_id, x_oe = self.decoder.finish((packed_id, packed_oe), images)
        return (x_id, y, x_oe, *keys)

    def _upload(self, batch: tuple) -> tuple:
        """Copy a CPU-decoded batch (uint8 images) to the GPU and normalise it there."""
        moved = tuple(t.to(self.upload_to, non_blocking=True) if isinstance(t, torch.Tensor) else t
                      for t in batch)
        return self._normalize(moved)

    def __len__(self) -> int:
        return self.stream.steps

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = int(epoch)
        self._started = None  # workers started for another epoch would replay it

    def __iter__(self) -> Iterator[tuple]:
        count = 0
        for count, batch in enumerate(self._batches(), start=1):
            yield batch
        if count != len(self):
            raise RuntimeError(f"rank {self.stream.rank} produced {count} of {len(self)} "
                               f"batches; DDP would hang (shards disagree with index.json?)")


class EvalLoader(_Loader):
    def __len__(self) -> int:
        s = self.stream
        return plan.eval_batches(s.index.num_samples, s.batch_size, s.rank, s.world_size)

    def __iter__(self) -> Iterator[tuple]:
        return (self._normalize(b) for b in self._batches())


class _TrainStream(IterableDataset):
    """Per worker: its ID positions -> shuffle -> decode, zipped with an endless OE stream."""

    def __init__(self, id_index, oe_index, *, batch_size, oe_batch_size, epoch, seed, rank,
                 world_size, num_workers, transform, shuffle_buffer, return_keys, packed=False,
                 cpu_share=0.0, cache=None):
        self.id_index, self.oe_index, self.transform = id_index, oe_index, transform
        self.batch_size, self.oe_batch_size = int(batch_size), int(oe_batch_size)
        if self.oe_batch_size < 1:
            raise ValueError(f"oe_batch_size={oe_batch_size} must be >= 1")
        self.epoch, self.seed, self.rank, self.world_size = int(epoch), int(seed), rank, world_size
        self.num_workers, self.shuffle_buffer, self.return_keys = num_workers, shuffle_buffer, return_keys
        self.packed = packed  # yield `gpu.PackedBatch`es for the GPU stage instead of pixels
        self.cpu_share = cpu_share  # of each packed batch: decoded here by PIL (`gpu.pack_batch`)
        self.cache = cache  # DecodedCache: decoded images kept between epochs (in-process only)
        self.steps = steps_per_epoch(id_index.num_samples, self.batch_size, world_size)

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
                                         self.rank, worker, self.num_workers)
        records = read_positions([u for u, _ in shards], [n for _, n in shards], positions)
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
                    yield from read_shard(url, np.arange(n), expected=n)

        gen = plan.rng(*seeds, plan.OE_SHUFFLE, self.rank, worker)
        # A buffer larger than the set would only hold repeats of it.
        size = min(self.shuffle_buffer, self.oe_index.num_samples)
        return plan.shuffled(endless(), size, gen)


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


class DecodedCache:
    """Decoded RGB images of this process, by (shard, key, decode size), up to a byte budget
    (no eviction: once full, further images are decoded every time)."""

    def __init__(self):
        self.max_bytes, self.used = 0, 0
        self._images: dict[tuple, np.ndarray] = {}

    def sized(self, mb: float) -> "DecodedCache":
        """This cache, its budget raised to `mb` MiB if that is more."""
        self.max_bytes = max(self.max_bytes, int(mb * (1 << 20)))
        return self

    def get(self, rec: Record, min_size: int) -> np.ndarray | None:
        return self._images.get((rec.shard, rec.key, min_size))

    def put(self, rec: Record, min_size: int, pixels: np.ndarray) -> None:
        if self.used + pixels.nbytes <= self.max_bytes:
            self._images[(rec.shard, rec.key, min_size)] = pixels
            self.used += pixels.nbytes

    def clear(self) -> None:
        self._images.clear()
        self.used = self.max_bytes = 0


# The training process's decoded images (`train_loader(decoded_cache_mb=...)`): one per
# process, so every epoch's loader finds what the epochs before it decoded.
DECODED = DecodedCache()


def _take(items: Iterator, n: int) -> list:
    return [item for _, item in zip(range(n), items)]


def _worker_id(num_workers: int) -> int:
    info = get_worker_info()
    if info is None:
        return 0
    if info.num_workers != num_workers:
        raise RuntimeError(f"stream planned for {num_workers} workers runs in {info.num_workers}")
    return info.id


def _check_role(index: ShardIndex, role: str) -> None:
    if index.role != role:
        raise ValueError(f"shard set {index.name!r} in {str(index.dir)!r} has role "
                         f"{index.role!r} but an {role!r} set was expected")


def _check_ranks(rank: int, world_size: int, num_workers: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} must be >= 0")
