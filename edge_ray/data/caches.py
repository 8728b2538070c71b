"""Decoded images kept in this process: evaluation sets replayed (`EvalCache`) and the
training set's decoded images between epochs (`DecodedCache`, the process-wide `DECODED`)."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .index import ShardIndex
from .records import Record
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_batch

if TYPE_CHECKING:
    from .loaders import EvalLoader

__all__ = ["EvalCache", "EVAL_CACHE_BYTES", "DecodedCache", "DECODED"]

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
        from .loaders import eval_loader  # here: loaders imports DECODED from this module

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


class DecodedCache:
    """Decoded RGB images of this process, by (shard, key, decode size), up to a byte budget
    (no eviction: once full, further images are decoded every time).

    It also keeps, while the budget is not spent, each read record's place in its shard and
    its metadata (key, labels; not its bytes): an epoch whose records of a shard all have
    their images here takes them from `held` instead of reading the shard again (the tar
    parse cost a third of a cached epoch's input time)."""

    def __init__(self):
        self.max_bytes, self.used = 0, 0
        self._images: dict[tuple, np.ndarray] = {}
        self._places: dict[str, dict[int, Record]] = {}

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

    def remember(self, url: str, index: int, rec: Record) -> None:
        """Record number `index` of shard `url` was read: keep its metadata (not its bytes)
        while the image budget is not spent."""
        if self.used < self.max_bytes:
            self._places.setdefault(url, {})[int(index)] = replace(rec, data=b"")

    def held(self, url: str, indices, min_size: int) -> list[Record] | None:
        """Records `indices` of shard `url`, without their bytes, when every one was read
        before and its image (decoded for `min_size`) is here; None otherwise."""
        places = self._places.get(url)
        if places is None:
            return None
        out = []
        for i in indices:
            rec = places.get(int(i))
            if rec is None or (rec.shard, rec.key, min_size) not in self._images:
                return None
            out.append(rec)
        return out

    def clear(self) -> None:
        self._images.clear()
        self._places.clear()
        self.used = self.max_bytes = 0


# The training process's decoded images (`train_loader(decoded_cache_mb=...)`): one per
# process, so every epoch's loader finds what the epochs before it decoded.
DECODED = DecodedCache()
