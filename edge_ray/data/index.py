"""The shard index of one converted dataset (ARCHITECTURE.md, "Shard format").

`index.json` is the contract between the converter (`shards/`) and every reader:
the readers never list or count tar files themselves, they trust the per-shard
sample counts here to give every Ray Train rank the same number of steps. So the
index is validated up front, with errors that say what to run to fix it, instead
of failing later inside a DataLoader worker or, worse, hanging DDP.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from .. import storage

ROLES = ("id", "oe", "ood")
_HINT = "convert it first with `python launch.py shards ...`"


@dataclass(frozen=True)
class ShardIndex:
    """One dataset directory: what `index.json` says, with shard locations made absolute
    (local paths or URIs, `edge_ray.storage`)."""

    dir: str
    name: str
    role: str                                  # "id", "oe" or "ood"
    classes: tuple[str, ...]                   # empty for oe / ood sets
    num_samples: int
    shards: tuple[tuple[str, int], ...]        # (absolute tar path, samples in it), index order
    label_counts: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shard_sizes(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.shards)


def load_index(path, *, role: str | None = None) -> ShardIndex:
    """Read and check `<path>/index.json` (`path` may also be the json file itself).

    `path` is a location: a local path (relative ones against the working directory) or a
    URI such as `s3://bucket/prefix/id_train`. Every shard the index lists must exist (one
    listing of the directory checks them all).
    `role`, when given, must match the set's role: a test OOD set passed where
    the OE training set belongs is test leakage, so it is refused, not warned.
    """
    path = storage.normalize(path)
    if storage.basename(path) == "index.json":
        path = storage.parent(path)
    kind = storage.file_type(path)
    listing = storage.listdir(path) if kind == storage.FileType.Directory else {}
    if kind != storage.FileType.Directory:
        bucket = storage.missing_bucket(path)
        raise FileNotFoundError(f"{path!r}: bucket {bucket!r} does not exist; create it or fix the URI"
                                if bucket else f"shard directory {path!r} does not exist; {_HINT}")
    meta = _read_json(path, listing)
    index = _build(path, meta, listing)
    if role is not None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        if index.role != role:
            raise ValueError(f"shard set {index.name!r} in {path!r} has role {index.role!r} "
                             f"but an {role!r} set was expected")
    return index


def read_labels(index: ShardIndex) -> tuple[list[str], np.ndarray]:
    """(keys, multi-hot float32 [N, C]) from `labels.parquet`, in file order.

    For class statistics and head/tail splits without opening a single tar.
    """
    import pyarrow.parquet as pq

    file = storage.join(index.dir, "labels.parquet")
    if not storage.is_file(file):
        raise FileNotFoundError(f"{file!r} is missing; {_HINT}")
    table = pq.read_table(io.BytesIO(storage.read_bytes(file)), columns=["key", "labels"])
    keys = [str(k) for k in table.column("key").to_pylist()]
    targets = np.zeros((len(keys), index.num_classes), dtype=np.float32)
    for row, labels in enumerate(table.column("labels").to_pylist()):
        for c in labels or ():
            if not 0 <= c < index.num_classes:
                raise ValueError(f"{file!r}: key {keys[row]!r} has label {c}, "
                                 f"outside the {index.num_classes} classes")
            targets[row, c] = 1.0
    return keys, targets


def _read_json(path: str, listing: dict) -> dict:
    file = storage.join(path, "index.json")
    if "index.json" not in listing:
        raise FileNotFoundError(f"{file!r} is missing: not a converted shard set; {_HINT}")
    try:
        meta = json.loads(storage.read_bytes(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file!r} is not valid JSON ({err}); {_HINT}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{file!r} must hold a JSON object")
    return meta


def _build(path: str, meta: dict, listing: dict) -> ShardIndex:
    where = storage.join(path, "index.json")
    missing = [k for k in ("name", "role", "num_samples", "shards") if k not in meta]
    if missing:
        raise ValueError(f"{where!r} lacks {missing}; {_HINT}")
    if meta["role"] not in ROLES:
        raise ValueError(f"{where!r}: role {meta['role']!r} is not one of {ROLES}")
    shards = []
    for entry in meta["shards"]:
        try:
            url, n = str(entry["url"]), int(entry["num_samples"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where!r}: bad shard entry {entry!r}") from err
        if storage.is_uri(url) or url.startswith("/") or ".." in url.split("/"):
            raise ValueError(f"{where!r}: shard url {url!r} must be a path relative to the set's "
                             "directory; reconvert the set")
        top = url.split("/", 1)[0]
        if top not in listing or ("/" in url and not storage.is_file(storage.join(path, url))):
            raise FileNotFoundError(f"shard {storage.join(path, url)!r} listed in {where!r} is missing")
        shards.append((storage.join(path, url), n))
    num_samples = int(meta["num_samples"])
    if num_samples <= 0 or not shards:
        raise ValueError(f"shard set {meta['name']!r} in {path!r} is an empty set "
                         f"(num_samples={num_samples}, {len(shards)} shards)")
    if sum(n for _, n in shards) != num_samples:
        raise ValueError(f"{where!r}: shard sample counts add up to {sum(n for _, n in shards)}, "
                         f"not num_samples={num_samples}")
    classes = tuple(str(c) for c in meta.get("classes") or ())
    counts = _label_counts(meta.get("label_counts"), classes)
    return ShardIndex(dir=path, name=str(meta["name"]), role=meta["role"],
                      classes=classes, num_samples=num_samples, shards=tuple(shards),
                      label_counts=counts)


def _label_counts(raw, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Per-class counts in class order; the converter may write a list or a name -> count map."""
    if isinstance(raw, dict):
        return tuple(int(raw.get(name, raw.get(str(i), 0))) for i, name in enumerate(classes))
    return tuple(int(c) for c in raw or ())
