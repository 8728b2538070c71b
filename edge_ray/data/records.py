"""Raw samples out of tar shards, safely: the "read" stage of the input pipeline.

A `Record` is still-encoded image bytes plus labels. Decoding is a separate stage
(`decode.decode_image` on the CPU; a batched GPU decoder can take the same
records later), so splitting, shuffling and reading never depend on how images
are decoded.

Shards are untrusted input. webdataset's default decoders unpickle `.pyd`/`.pth`
members, i.e. run arbitrary code; here only image members and `.json` are ever
read, anything else is refused with the shard and key named.
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .. import storage
from .plan import group_by_shard
from .stall import GuardedStream, StalledRead, stall_limit
from .tarstream import Member, TarDamaged, TarStream

IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp"})
PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "ckpt"})
# webdataset's convention: the key is everything before the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# A failed shard read is tried this many times in all, waiting BACKOFF_S, 2*BACKOFF_S, ...
# (at most BACKOFF_MAX_S) in between.
READ_ATTEMPTS, BACKOFF_S, BACKOFF_MAX_S = 4, 0.5, 8.0


class ShardReadError(OSError):
    """A shard could not be read after every retry; the message names it."""




@dataclass(frozen=True)
class Record:
    """One sample, not yet decoded."""

    key: str
    ext: str                   # image extension, lower case: png, jpg, jpeg or webp
    data: bytes                # the encoded image, as stored
    labels: tuple[int, ...]    # class indices from <key>.json (empty for oe / ood)
    shard: str


def read_positions(urls: Sequence[str], sizes: Sequence[int],
                   positions: np.ndarray, read=None) -> Iterator[Record]:
    """Records at `positions` of the concatenation of `urls` (sizes from the index), in order;
    each shard's run through `read` (``read_shard``'s signature; default ``read_shard``)."""
    read = read or read_shard
    for shard, local in group_by_shard(positions, sizes):
        yield from read(urls[shard], local, expected=sizes[shard])


def read_shard(url: str, indices: np.ndarray, *, expected: int | None = None,
               attempts: int | None = None) -> Iterator[Record]:
    """Records number `indices` (increasing) of one shard, read as a stream.

    The shard is a location (local path or URI, `edge_ray.storage`) read sequentially
    through a buffered stream: no seeks, no download of the whole file, memory bounded by
    the stream buffer. Unwanted samples before the last wanted one are read past; after
    the last wanted one the stream is closed.

    A transient failure (an OSError: connection reset, 5xx, timeout; the object store
    checks each response's length, so a cut stream is one of these) is retried
    up to `attempts` times (default `READ_ATTEMPTS`, env `EDGE_READ_ATTEMPTS`) with
    exponential backoff: the shard is opened again and the samples already yielded are
    read past, so none is lost or doubled. Then a `ShardReadError` names the shard.
    """
    wanted = [int(i) for i in indices]
    attempts = attempts or int(os.environ.get("EDGE_READ_ATTEMPTS", READ_ATTEMPTS))
    remote = not storage.is_local(url)
    done, failures = 0, 0
    while done < len(wanted):
        try:
            for record in _scan_shard(url, wanted[done:], expected, failures if remote else None):
                done += 1
                yield record
        except FileNotFoundError:
            raise
        except (TarDamaged, EOFError) as err:
            # From a store, a connection cut inside the HTTP headers can reach here as a short or
            # shifted body without any error from the S3 client: read it again before calling the
            # shard damaged. A local file that does not parse is damaged.
            if not remote or failures + 1 >= attempts:
                raise ValueError(f"shard {url!r} is damaged after {done} of {len(wanted)} wanted samples "
                                 f"({_short(err)}){' on every read' if remote else ''}; reconvert the set") from err
            failures += 1
            warnings.warn(f"shard {url!r}: the bytes read after {done} of {len(wanted)} samples do not parse "
                          f"({_short(err)}); reading it again ({failures}/{attempts - 1})", RuntimeWarning, stacklevel=2)
            time.sleep(BACKOFF_S)
        except OSError as err:
            failures += 1
            if failures >= attempts:
                raise ShardReadError(f"shard {url!r}: reading failed {failures} times, last after "
                                     f"{done} of {len(wanted)} wanted samples ({_short(err)}); check the "
                                     "store and the network, or reconvert the shard if it is damaged") from err
            # a stall has waited its limit already; other failures back off before the next try
            delay = 0.0 if isinstance(err, StalledRead) else min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1))
            warnings.warn(f"shard {url!r}: read failed after {done} of {len(wanted)} samples "
                          f"({_short(err)}); retrying in {delay:.1f}s ({failures}/{attempts - 1})",
                          RuntimeWarning, stacklevel=2)
            time.sleep(delay)


def _scan_shard(url: str, wanted: list[int], expected: int | None, failures: int | None = None) -> Iterator[Record]:
    """One pass over the stream, yielding the samples numbered `wanted` (increasing). A remote
    shard (``failures`` given: this read's earlier failures) is read through a stall guard
    (edge_ray/data/stall.py) whose limit doubles with each failure."""
    wanted_iter = iter(wanted)
    target = next(wanted_iter, None)
    sample, key, members = -1, None, {}
    try:
        if failures is None:
            stream = storage.open_input_stream(url)
        else:
            stream = GuardedStream(lambda: storage.open_input_stream(url, buffer_size=0), chunk=storage.STREAM_BUFFER,
                                   limit_s=stall_limit(failures), where=f"shard {url!r}")
    except storage.StorageError as err:
        raise _open_failure(url, err) from err
    with stream:
        tar = TarStream(stream)
        for member in tar:
            if member.type == "dir":
                continue
            name_key, ext = _split_name(member.name, url)
            if name_key != key:
                if sample == target:
                    yield _record(url, key, members)
                    target = next(wanted_iter, None)
                    if target is None:
                        return
                sample, key, members = sample + 1, name_key, {}
            if sample == target:
                members[ext] = _member_bytes(tar, member, url, key, ext, members)
        if target is not None and sample == target:
            yield _record(url, key, members)
            target = next(wanted_iter, None)
    if target is not None:
        raise ValueError(f"shard {url!r} holds {sample + 1} samples but sample {target} was "
                         f"asked for (index.json says {expected}); reconvert the set")


def _open_failure(url: str, err: storage.StorageError) -> OSError:
    """A missing shard is final; any other failure to open it is worth another try."""
    try:
        there = storage.exists(url)
    except storage.StorageError:  # the store cannot even be asked: retry
        there = True
    if there:
        return OSError(str(err))
    return FileNotFoundError(f"shard {url!r} is missing (listed in its index.json); "
                             "reconvert the set or restore the file")


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def _split_name(name: str, url: str) -> tuple[str, str]:
    match = _KEY_EXT.match(name)
    if not match:
        raise ValueError(f"shard {url!r}: member {name!r} has no <key>.<ext> name")
    return match.group(1), match.group(2).lower()


def _member_bytes(tar: TarStream, member: Member, url: str, key: str, ext: str, members: dict) -> bytes:
    """Read one member of a wanted sample, after checking that it is safe to read at all."""
    where = f"shard {url!r}, key {key!r}"
    if ext.rsplit(".", 1)[-1] in PICKLE_EXTS:
        raise ValueError(f"{where}: member {member.name!r}: shards are untrusted: refusing to "
                         f"unpickle {ext!r} data")
    if ext not in IMAGE_EXTS and ext != "json":
        raise ValueError(f"{where}: unexpected member {member.name!r}; shards are untrusted, only "
                         f"{sorted(IMAGE_EXTS)} images and .json are read")
    if member.type != "file":
        raise ValueError(f"{where}: member {member.name!r} is not a regular file")
    if ext in members:
        raise ValueError(f"{where}: duplicate member {member.name!r}")
    return tar.read()


def _record(url: str, key: str, members: dict) -> Record:
    where = f"shard {url!r}, key {key!r}"
    images = [ext for ext in members if ext in IMAGE_EXTS]
    if len(images) != 1 or "json" not in members:
        raise ValueError(f"{where}: a sample needs exactly one image and one .json, "
                         f"found {sorted(members)}; the shard is damaged or was not written by "
                         "`launch.py shards`: reconvert the set")
    try:
        meta = json.loads(members["json"])
        labels = tuple(int(c) for c in meta.get("labels", ()))
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: bad .json ({err})") from err
    return Record(key=key, ext=images[0], data=members[images[0]], labels=labels, shard=url)
