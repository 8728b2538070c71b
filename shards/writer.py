"""Write one shard set in the shard layout (ARCHITECTURE.md, "Shard format"), to a local
folder or any location `edge_ray.storage` opens (s3://, gs://, ...).

`write_shard` is the unit of parallel work (read, fully decode, write one tar as a stream
to `<name>-NNNNNN.tar.part`); `convert` plans in the driver, runs the shards in-process or
as Ray tasks, renames the parts, then writes labels.parquet and, last, index.json: a
reader only ever opens a set through its index, so it never sees a half-written one.
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from edge_ray import storage
from edge_ray.data.decode import conversion_note

from .errors import ConversionError
from .images import BadImage, load_checked
from .plan import (Item, check_labels, check_on_disk, check_unique_keys, sanitize_key,
                   sort_items, split_shards)
from .ray_pool import map_jobs

FORMAT = "edge-ray-shards/1"
_OURS = re.compile(r"^.+-\d{6}\.tar(\.part)?$")


@dataclass(frozen=True)
class ShardJob:
    """One task: write `items` into the tar at `path` (a .part location, renamed by the driver).

    `cwd` is the driver's working directory: relative sources are resolved
    against it because a Ray worker may run elsewhere."""

    index: int
    path: str
    items: list
    cwd: str
    reencode: bool = False


def write_shard(job: ShardJob) -> dict:
    """Read, decode-check and store each item; bad images become skip entries.

    The tar is streamed to its destination with webdataset's TarWriter (fixed member
    metadata, so the same input gives the same bytes); nothing is held but one image."""
    rows, skipped = [], []
    with storage.open_output_stream(job.path) as stream, \
            wds.TarWriter(stream, encoder=False, user="", group="", mode=0o644, mtime=0,
                          format="PAX_FORMAT") as tar:
        for it in job.items:
            try:
                raw = it.data if it.data is not None else Path(job.cwd, it.source).read_bytes()
                data, ext, source = load_checked(raw, job.reencode)
            except OSError as exc:
                skipped.append({"path": it.source, "reason": f"unreadable ({exc})"})
                continue
            except BadImage as bad:
                skipped.append({"path": it.source, "reason": bad.reason})
                continue
            meta = json.dumps({**it.meta, "labels": list(it.labels)}, sort_keys=True)
            tar.write({"__key__": it.key, ext: data, "json": meta.encode()})
            rows.append({"key": it.key, "labels": list(it.labels), "source": it.source, "ext": ext,
                         **source})
    return {"index": job.index, "path": job.path, "rows": rows, "skipped": skipped}


def _prepare_out_dir(out: str, overwrite: bool) -> None:
    """Refuse to mix two shard sets in one directory unless asked to replace it. When
    replacing, index.json goes first, so the old set is never readable half-deleted."""
    storage.makedirs(out)
    names = sorted(n for n in storage.listdir(out)
                   if _OURS.match(n) or n in ("index.json", "labels.parquet"))
    final = [n for n in names if not n.endswith(".part")]
    if final and not overwrite:
        raise ConversionError(f"{out} already holds a shard set ({final[0]}); "
                              "pass --overwrite or choose another --out")
    for name in sorted(names, key=lambda n: n != "index.json"):
        storage.delete(storage.join(out, name))


def _finalize(results: list[dict], out: str, name: str):
    """Rename .part files to contiguous shard names; drop shards left empty by skips."""
    shards, rows = [], []
    for res in results:
        if not res["rows"]:
            storage.delete(res["path"])
            continue
        url = f"{name}-{len(shards):06d}.tar"
        storage.move(res["path"], storage.join(out, url))
        shards.append({"url": url, "num_samples": len(res["rows"])})
        rows.extend({**row, "shard": url} for row in res["rows"])
    return shards, rows


def brace_urls(name: str, num_shards: int) -> str:
    """The shards as one brace pattern, as webdataset and `ray.data.read_webdataset` users
    write them: `name-{000000..000015}.tar`."""
    if num_shards == 1:
        return f"{name}-000000.tar"
    return f"{name}-{{000000..{num_shards - 1:06d}}}.tar"


def _write_parquet(location: str, rows: list[dict]) -> None:
    table = pa.table({
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "labels": pa.array([r["labels"] for r in rows], pa.list_(pa.int32())),
        "shard": pa.array([r["shard"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "mode": pa.array([r["mode"] for r in rows], pa.string()),
        "width": pa.array([r["width"] for r in rows], pa.int32()),
        "height": pa.array([r["height"] for r in rows], pa.int32()),
        "orientation": pa.array([r["orientation"] for r in rows], pa.int8()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(location, buf.getvalue())


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
    """Convert `items` into a shard set (ARCHITECTURE.md, "Shard format") in `out_dir` and return its index.

    `skipped` lists entries the caller already left out (e.g. --drop-empty), so
    every input appears either as a sample or in index.json `skipped`.
    `workers` > 0 runs one Ray task per shard (Ray must be initialised).
    """
    out, classes = storage.normalize(out_dir), list(classes)
    if sanitize_key(name) != name:
        raise ConversionError(f"--name {name!r} may hold only letters, digits, '_' and '-'")
    items = sort_items(list(items))
    check_labels(items, role, classes, where)
    check_unique_keys(items, where)
    items, missing = check_on_disk(items, where, skip_missing)
    if not items:
        raise ConversionError(f"{where} yields no images to convert; check the paths and split")
    _prepare_out_dir(out, overwrite)
    jobs = [ShardJob(i, storage.join(out, f"{name}-{i:06d}.tar.part"), chunk, os.getcwd(), reencode)
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
        "num_samples": len(rows), "shards": shards, "urls": brace_urls(name, len(shards)),
        "label_counts": _label_counts(rows, len(classes)),
        "extensions": {e: sum(r["ext"] == e for r in rows) for e in sorted({r["ext"] for r in rows})},
        **_mode_counts(rows),
        "num_skipped": len(skipped), "skipped": skipped,
        "seed": seed, "source": source or {}, "shard_size": shard_size,
    }
    _write_parquet(storage.join(out, "labels.parquet"), rows)
    storage.write_json(storage.join(out, "index.json"), index, indent=1)  # last: the set is complete
    return index


def _mode_counts(rows: list[dict]) -> dict:
    """What the decoder changes on read (edge_ray/data/decode.py), announced in index.json."""
    def count(values) -> dict:
        values = list(values)
        return {v: values.count(v) for v in sorted(set(values))}

    return {
        "source_modes": count(r["mode"] for r in rows),
        "num_converted_on_read": sum(r["mode"] != "RGB" for r in rows),
        "num_oriented_on_read": sum(r["orientation"] != 1 for r in rows),
        "reencoded": count(r["reencoded_from"] for r in rows if "reencoded_from" in r),
    }


def summary_line(index: dict, out_dir) -> str:
    """The line the CLI prints when a conversion ends: what was written and skipped, then
    what the decoder will change on read (per source mode) and what was re-encoded."""
    line = (f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to "
            f"{out_dir}; skipped {index['num_skipped']} (see index.json)")
    converted = {m: n for m, n in index.get("source_modes", {}).items() if m != "RGB"}
    if converted:
        line += "; converted on read: " + ", ".join(
            f"{n} {m} ({conversion_note(m)})" for m, n in sorted(converted.items(), key=lambda kv: -kv[1]))
    if index.get("num_oriented_on_read"):
        line += f"; EXIF orientation applied on read: {index['num_oriented_on_read']}"
    if index.get("reencoded"):
        line += "; re-encoded as PNG: " + ", ".join(f"{n} {m}" for m, n in index["reencoded"].items())
    return line
