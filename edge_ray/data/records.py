"""Raw samples out of tar shards, safely: the "read" stage of the input pipeline.

A `Record` is still-encoded image bytes plus labels. Decoding is a separate stage
(`transforms.decode_image` on the CPU today; a batched GPU decoder can take the same
records later), so splitting, shuffling and reading never depend on how images
are decoded.

Shards are untrusted input. webdataset's default decoders unpickle `.pyd`/`.pth`
members, i.e. run arbitrary code; here only image members and `.json` are ever
read, anything else is refused with the shard and key named.
"""
from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .plan import group_by_shard

IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp"})
PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "ckpt"})
# webdataset's convention: the key is everything before the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class Record:
    """One sample, not yet decoded."""

    key: str
    ext: str                   # image extension, lower case: png, jpg, jpeg or webp
    data: bytes                # the encoded image, as stored
    labels: tuple[int, ...]    # class indices from <key>.json (empty for oe / ood)
    shard: str


def read_positions(urls: Sequence[str], sizes: Sequence[int],
                   positions: np.ndarray) -> Iterator[Record]:
    """Records at `positions` of the concatenation of `urls` (sizes from the index), in order."""
    for shard, local in group_by_shard(positions, sizes):
        yield from read_shard(urls[shard], local, expected=sizes[shard])


def read_shard(url: str, indices: np.ndarray, *, expected: int | None = None) -> Iterator[Record]:
    """Records number `indices` (increasing) of one shard.

    Unwanted samples are skipped by seeking past their data, so a reader that owns
    a slice of a shard pays for the tar headers only, not for the other images.
    """
    wanted = iter(int(i) for i in indices)
    target = next(wanted, None)
    sample, key, members = -1, None, {}
    with tarfile.open(url, mode="r:*") as tar:
        for member in tar:
            if member.isdir():
                continue
            name_key, ext = _split_name(member.name, url)
            if name_key != key:
                if sample == target:
                    yield _record(url, key, members)
                    target = next(wanted, None)
                    if target is None:
                        return
                sample, key, members = sample + 1, name_key, {}
            if sample == target:
                members[ext] = _member_bytes(tar, member, url, key, ext, members)
        if target is not None and sample == target:
            yield _record(url, key, members)
            target = next(wanted, None)
    if target is not None:
        raise ValueError(f"shard {url!r} holds {sample + 1} samples but sample {target} was "
                         f"asked for (index.json says {expected}); reconvert the set")


def _split_name(name: str, url: str) -> tuple[str, str]:
    match = _KEY_EXT.match(name)
    if not match:
        raise ValueError(f"shard {url!r}: member {name!r} has no <key>.<ext> name")
    return match.group(1), match.group(2).lower()


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, url: str, key: str,
                  ext: str, members: dict) -> bytes:
    """Read one member of a wanted sample, after checking that it is safe to read at all."""
    where = f"shard {url!r}, key {key!r}"
    if ext.rsplit(".", 1)[-1] in PICKLE_EXTS:
        raise ValueError(f"{where}: member {member.name!r}: shards are untrusted: refusing to "
                         f"unpickle {ext!r} data")
    if ext not in IMAGE_EXTS and ext != "json":
        raise ValueError(f"{where}: unexpected member {member.name!r}; shards are untrusted, only "
                         f"{sorted(IMAGE_EXTS)} images and .json are read")
    if not member.isfile():
        raise ValueError(f"{where}: member {member.name!r} is not a regular file")
    if ext in members:
        raise ValueError(f"{where}: duplicate member {member.name!r}")
    return tar.extractfile(member).read()


def _record(url: str, key: str, members: dict) -> Record:
    where = f"shard {url!r}, key {key!r}"
    images = [ext for ext in members if ext in IMAGE_EXTS]
    if len(images) != 1 or "json" not in members:
        raise ValueError(f"{where}: a sample needs exactly one image and one .json, "
                         f"found {sorted(members)}")
    try:
        meta = json.loads(members["json"])
        labels = tuple(int(c) for c in meta.get("labels", ()))
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: bad .json ({err})") from err
    return Record(key=key, ext=images[0], data=members[images[0]], labels=labels, shard=url)
