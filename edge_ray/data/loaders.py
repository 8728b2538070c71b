"""Training and evaluation loaders over WebDataset-format shards (ARCHITECTURE.md, "Shard format").

Three stages, kept apart so the GPU decoder replaces only the last:
  1. plan   (`plan.py`)    which positions each rank / DataLoader worker reads;
  2. read   (`records.py`) raw `Record`s (encoded bytes + labels), shuffled;
  3. decode `decode="cpu"`: PIL decode + transforms + batching in the workers
            (`streams.py`); `decode="gpu"`: the workers only parse headers and draw
            crops, the rank decodes with nvJPEG and augments on the GPU (`gpu.py`); same
            samples, labels, crops and steps; the CPU path when there is no CUDA.

DDP contract: `len(train_loader(...))` is the same on every rank and iterating yields
exactly that many batches, each ID sample at most once per epoch across all ranks,
while the OE stream is endless and never ends an epoch early (the released code's
`zip(ID, OE)` did). See `plan.py` for why ranks get contiguous ranges of a
per-epoch shuffled, rotated shard order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from . import gpu, plan
from .caches import DECODED
from .gpu import DECODERS, GPU_CROPS, GPU_FEEDERS
from .index import ShardIndex
from .streams import _EvalStream, _TrainStream
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize_batch, train_transform

__all__ = ["Augment", "DeviceInput", "TrainLoader", "EvalLoader", "train_loader", "eval_loader"]
# The feeder threads' CUDA streams: high priority, so their small kernels take the next
# free SMs rather than queue behind the training step's (no measurable effect on an H100,
# benchmarks/README.md run 4, and no cost).
FEEDER_PRIORITY = -1


@dataclass(frozen=True)
class Augment:
    """The training transform (`transforms.train_transform`): a random resized crop whose
    area is a `crop_scale` fraction of the image's, to `image_size` x `image_size`, mirrored
    with probability 1/2 when `hflip`, normalised per channel with `mean` and `std`."""

    image_size: int
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


@dataclass(frozen=True)
class DeviceInput:
    """Where a rank's training batches are decoded and how they reach the device.

    `decode` (`gpu.DECODERS`): "gpu" decodes on `device` (default: the current CUDA device)
    and yields tensors already there; without CUDA it warns once and decodes on the CPU.
    `gpu_feeder` (`gpu.GPU_FEEDERS`) and `gpu_crops` (`gpu.GPU_CROPS`) choose how that GPU
    stage runs.
    `cpu_decode_share` (decode="gpu", 0..1): that share of each batch is decoded by PIL in
    the DataLoader workers, as the CPU path does, instead of by nvJPEG (then cropped on the
    GPU with the rest): the workers' cores take part of the decoding off the GPU.
    `prefetch_to_device` (CPU decode, CUDA `device`): a thread copies each batch to the
    GPU on its own stream a batch ahead, so the copy overlaps the previous step.
    `pin_memory`: the DataLoader's pin thread page-locks each batch. None (the default):
    only the packed batches of a GPU decode stage on CUDA (`PackedBatch.pin_memory`).
    """

    decode: str = "cpu"
    device: Any = None
    gpu_feeder: str = "serial"
    gpu_crops: str = "batched"
    cpu_decode_share: float = 0.0
    prefetch_to_device: bool = False
    pin_memory: bool | None = None


def train_loader(id_index: ShardIndex, oe_index: ShardIndex | None, *, batch_size: int,
                 oe_batch_size: int, epoch: int, seed: int, rank: int, world_size: int,
                 num_workers: int, augment: Augment | None = None,
                 device_input: DeviceInput | None = None, shuffle_buffer: int = 1000,
                 return_keys: bool = False, decoded_cache_mb: float = 0, rank_batches=None,
                 **fields) -> "TrainLoader":
    """One rank's training batches for `epoch`: iterate to get exactly `len(loader)` tuples
    `(x_id float[B,3,S,S], y_id float[B,C] multi-hot, x_oe float[B_oe,3,S,S])`
    (plus `keys_id: list[str]` when `return_keys`). Call `set_epoch` to reuse it.

    `oe_index=None` (methods without outlier exposure) yields `x_oe = None`.
    `augment` (`Augment`, S = its image_size) and `device_input` (`DeviceInput`; default:
    CPU decode) may instead be given as their fields, e.g. `image_size=32, decode="gpu"`;
    an object and its fields together are a TypeError.
    `decoded_cache_mb` (CPU decode, `num_workers=0`): decoded images (RGB, before the random
    crop) are kept in this process, up to that many MB in all, and later epochs crop them
    instead of decoding the bytes again: the same pixels, the same batches. For sets whose
    decoded images fit in memory (the embedded benchmark's 32 px canvases: 18 MB); worker
    processes end with their epoch, so with `num_workers > 0` it does nothing.
    `rank_batches`: every rank's ID batch when they differ (an elastic run's global batch
    split over a world size that does not divide it, `config.split_batch`); `batch_size` is
    this rank's. Steps per epoch are then the set's samples // their sum on every rank.
    """
    aug, inp = _options(augment, device_input, fields)
    _check_role(id_index, "id")
    if oe_index is not None:
        _check_role(oe_index, "oe")
    if oe_index is not None and id_index.dir == oe_index.dir:
        raise ValueError(f"the OE set and the ID set are the same directory {str(id_index.dir)!r}")
    if not id_index.classes:
        raise ValueError(f"ID set {id_index.name!r} lists no classes in its index.json")
    _check_input(inp)
    _check_ranks(rank, world_size, num_workers)
    decode_on = gpu.resolve_device(inp.device) if inp.decode == "gpu" else None
    stream = _TrainStream(
        id_index, oe_index, batch_size=batch_size, oe_batch_size=oe_batch_size, epoch=epoch,
        seed=seed, rank=rank, world_size=world_size, num_workers=max(1, num_workers),
        transform=train_transform(aug.image_size, hflip=aug.hflip, crop_scale=aug.crop_scale,
                                  mean=aug.mean, std=aug.std),
        shuffle_buffer=shuffle_buffer, return_keys=return_keys, packed=decode_on is not None,
        cpu_share=inp.cpu_decode_share,
        cache=DECODED.sized(decoded_cache_mb) if decoded_cache_mb > 0 and num_workers == 0 else None,
        rank_batches=rank_batches)
    decoder = None if decode_on is None else gpu.BatchDecoder(aug.image_size, aug.mean, aug.std, decode_on,
                                                              batched=inp.gpu_crops == "batched")
    pin_memory = inp.pin_memory
    if pin_memory is None:
        # Packed batches on CUDA are page-locked by the DataLoader's pin thread, not by the
        # feeder thread, and nvJPEG then copies each file by DMA instead of one pageable
        # copy per image beside the training kernels (benchmarks/README.md).
        pin_memory = decoder is not None and decoder.device.type == "cuda"
    upload_to = None
    if decoder is None and inp.prefetch_to_device and inp.device is not None \
            and torch.device(inp.device).type == "cuda":
        upload_to = torch.device(inp.device)
        if upload_to.index is None:  # the prefetch thread sets this device: it needs an index
            upload_to = torch.device("cuda", torch.cuda.current_device())
    return TrainLoader(stream, num_workers, pin_memory, decoder, feeder=inp.gpu_feeder, upload_to=upload_to)


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


def _options(augment: Augment | None, device_input: DeviceInput | None,
             fields: dict) -> tuple[Augment, DeviceInput]:
    """`train_loader`'s option objects: those given, or made of the keyword arguments
    `fields` that are their fields. Raises TypeError as Python does for a call that does
    not fit the signature (an unknown keyword, a required field missing), and for an
    object given together with one of its fields."""
    unknown = [k for k in fields if k not in _OPTION_FIELDS]
    if unknown:
        raise TypeError(f"train_loader() got an unexpected keyword argument {unknown[0]!r}")
    return (_option(Augment, augment, "augment", fields),
            _option(DeviceInput, device_input, "device_input", fields))


def _option(cls: type, given, name: str, fields: dict):
    """`given` (a `cls`), or a `cls` of the entries of `fields` that are its fields."""
    mine = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
    if given is not None:
        if not isinstance(given, cls):
            raise TypeError(f"train_loader(): {name} must be {cls.__name__}, not {type(given).__name__}")
        if mine:
            raise TypeError(f"train_loader() got {name}= and its field {next(iter(mine))!r}: give one or the other")
        return given
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in mine]
    if missing:
        raise TypeError(f"train_loader() missing 1 required keyword-only argument: {missing[0]!r}")
    return cls(**mine)


# Every keyword `train_loader` takes in place of its option objects.
_OPTION_FIELDS = frozenset(f.name for cls in (Augment, DeviceInput) for f in dataclasses.fields(cls))


def _check_input(inp: DeviceInput) -> None:
    if inp.decode not in DECODERS:
        raise ValueError(f"decode={inp.decode!r}: choose one of {DECODERS}")
    if inp.gpu_feeder not in GPU_FEEDERS:
        raise ValueError(f"gpu_feeder={inp.gpu_feeder!r}: choose one of {GPU_FEEDERS}")
    if inp.gpu_crops not in GPU_CROPS:
        raise ValueError(f"gpu_crops={inp.gpu_crops!r}: choose one of {GPU_CROPS}")
    if not 0 <= inp.cpu_decode_share <= 1:
        raise ValueError(f"cpu_decode_share={inp.cpu_decode_share!r} must lie in [0, 1]")


def _check_role(index: ShardIndex, role: str) -> None:
    if index.role != role:
        raise ValueError(f"shard set {index.name!r} in {str(index.dir)!r} has role "
                         f"{index.role!r} but an {role!r} set was expected")


def _check_ranks(rank: int, world_size: int, num_workers: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} must be >= 0")
