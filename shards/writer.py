"""Write one shard set in the DESIGN.md §4 layout.

`write_shard` is the unit of parallel work (read, fully decode, write one tar);
`convert` plans in the driver, runs the shards in-process or as Ray tasks and
merges their results into index.json and labels.parquet.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConversionError
from .images import BadImage, load_checked
from .plan import (Item, check_labels, check_on_disk, check_unique_keys, sanitize_key,
                   sort_items, split_shards)
from .ray_pool import map_jobs

FORMAT = "edge-ray-shards/1"
_OURS = re.compile(r"^.+-\d{6}\.tar(\.part)?$")


@dataclass(frozen=True)
class ShardJob:
    """One task: write `items` into the tar at `path` (a .part, renamed by the driver).

    `cwd` is the driver's working directory: relative sources are resolved
    against it because a Ray worker may run elsewhere."""

    index: int
    path: str
    items: list
    cwd: str
    reencode: bool = False


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a member with fixed metadata so the same input gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(job: ShardJob) -> dict:
    """Read, decode-check and store each item; bad images become skip entries."""
    rows, skipped = [], []
    with tarfile.open(job.path, "w", format=tarfile.PAX_FORMAT) as tar:
        for it in job.items:
            try:
                raw = it.data if it.data is not None else Path(job.cwd, it.source).read_bytes()
                data, ext = load_checked(raw, job.reencode)
            except OSError as exc:
                skipped.append({"path": it.source, "reason": f"unreadable ({exc})"})
                continue
            except BadImage as bad:
                skipped.append({"path": it.source, "reason": bad.reason})
                continue
            _add(tar, f"{it.key}.{ext}", data)
            meta = json.dumps({**it.meta, "labels": list(it.labels)}, sort_keys=True)
            _add(tar, f"{it.key}.json", meta.encode())
            rows.append({"key": it.key, "labels": list(it.labels), "source": it.source, "ext": ext})
    return {"index": job.index, "path": job.path, "rows": rows, "skipped": skipped}


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix two shard sets in one directory unless asked to replace it."""
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in out.iterdir()
                 if _OURS.match(p.name) or p.name in ("index.json", "labels.parquet"))
    if any(not p.name.endswith(".part") for p in old) and not overwrite:
        first = next(p.name for p in old if not p.name.endswith(".part"))
        raise ConversionError(f"{out} already holds a shard set ({first}); "
                              "pass --overwrite or choose another --out")
    for p in old:
        p.unlink()


def _finalize(results: list[dict], out: Path, name: str):
    """Rename .part files to contiguous shard names; drop shards left empty by skips."""
    shards, rows = [], []
    for res in results:
        part = Path(res["path"])
        if not res["rows"]:
            part.unlink()
            continue
        url = f"{name}-{len(shards):06d}.tar"
        os.replace(part, out / url)
        shards.append({"url": url, "num_samples": len(res["rows"])})
        rows.extend({**row, "shard": url} for row in res["rows"])
    return shards, rows


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _write_parquet(path: Path, rows: list[dict]) -> None:
    table = pa.table({
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "labels": pa.array([r["labels"] for r in rows], pa.list_(pa.int32())),
        "shard": pa.array([r["shard"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
    })
    pq.write_table(table, path)


def _label_counts(rows: list[dict], n_classes: int) -> list[int]:
    counts = [0] * n_classes
    for row in rows:
        for c in row["labels"]:
            counts[c] += 1
    return counts


def convert(items: Iterable[Item], out_dir, *, name: str, role: str, classes=(),
            shard_size: int = 1000, workers: int = 0, seed=None, source: dict | None = None,
            where: str = "the input", skipped=(), reencode: bool = False,
            overwrite: bool = False, skip_missing: bool = False, spread: bool = False,
            progress: bool = True) -> dict:
    """Convert `items` into a §4 shard set in `out_dir` and return its index.

    `skipped` lists entries the caller already left out (e.g. --drop-empty), so
    every input appears either as a sample or in index.json `skipped`.
    `workers` > 0 runs one Ray task per shard (Ray must be initialised).
    """
    out, classes = Path(out_dir), list(classes)
    if sanitize_key(name) != name:
        raise ConversionError(f"--name {name!r} may hold only letters, digits, '_' and '-'")
    items = sort_items(list(items))
    check_labels(items, role, classes, where)
    check_unique_keys(items, where)
    items, missing = check_on_disk(items, where, skip_missing)
    if not items:
        raise ConversionError(f"{where} yields no images to convert; check the paths and split")
    _prepare_out_dir(out, overwrite)
    jobs = [ShardJob(i, str(out.resolve() / f"{name}-{i:06d}.tar.part"), chunk, os.getcwd(),
                     reencode)
            for i, chunk in enumerate(split_shards(items, shard_size))]
    results = map_jobs(write_shard, jobs, workers, desc=name, spread=spread, progress=progress)
    skipped = list(skipped) + missing + [s for r in results for s in r["skipped"]]
    shards, rows = _finalize(results, out, name)
    if not rows:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise ConversionError(f"no samples written from {where}: all {len(skipped)} images "
                              f"were skipped ({reasons}); fix or replace those files")
    index = {
        "format": FORMAT, "name": name, "role": role, "classes": classes,
        "num_samples": len(rows), "shards": shards,
        "label_counts": _label_counts(rows, len(classes)),
        "extensions": {e: sum(r["ext"] == e for r in rows) for e in sorted({r["ext"] for r in rows})},
        "num_skipped": len(skipped), "skipped": skipped,
        "seed": seed, "source": source or {}, "shard_size": shard_size,
    }
    _write_parquet(out / "labels.parquet", rows)
    _write_json(out / "index.json", index)
    return index


def summary_line(index: dict, out_dir) -> str:
    """The line the CLI prints when a conversion ends."""
    return (f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to "
            f"{out_dir}; skipped {index['num_skipped']} (see index.json)")
