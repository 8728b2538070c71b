"""The inputs of `launch.py predict`, read by Ray Data as raw bytes (never decoded here, so a
corrupt file cannot stop the read): one Dataset of ``key``, ``path``, ``data`` and ``error``.

  shard set   (a folder with index.json)  `read_webdataset` over its tars (members as bytes,
              no decoder: nothing is unpickled); key = the sample key, path = the tar
  image folder (recursive) or one image   `read_binary_files`; key = the path below the folder
  manifest    (.csv / .jsonl / .parquet with a ``path`` column, optional ``key``)
              `read_csv` / `read_json` / `read_parquet`, then each file fetched through
              edge_ray.storage (relative paths: against the manifest's folder); a missing
              file is an error row, not a failed run
"""
from __future__ import annotations

import csv
import json

import numpy as np

from edge_ray import storage
from edge_ray.data.records import IMAGE_EXTS

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet", ".pq")


def _rows(key, path, data, error) -> dict:
    return {"key": np.asarray(key, dtype=object), "path": np.asarray(path, dtype=object),
            "data": np.asarray(data, dtype=object), "error": np.asarray(error, dtype=object)}


def _from_webdataset(batch: dict, shard_locations: dict) -> dict:
    """read_webdataset rows (`__key__`, `__url__`, one column per member type) -> key, path, data."""
    n = len(batch["__key__"])
    exts = [e for e in sorted(IMAGE_EXTS) if e in batch]
    data, error = [], []
    for i in range(n):
        found = [batch[e][i] for e in exts if batch[e][i] is not None and not _is_nan(batch[e][i])]
        data.append(found[0] if len(found) == 1 else b"")
        error.append("" if len(found) == 1 else f"sample has {len(found)} images (expected one)")
    paths = [shard_locations.get(str(u), str(u)) for u in batch["__url__"]]
    return _rows([str(k) for k in batch["__key__"]], paths, data, error)


def _is_nan(v) -> bool:
    return isinstance(v, float) and v != v


def _from_files(batch: dict, root_path: str, root_location: str) -> dict:
    """read_binary_files rows (`bytes`, `path`) -> key (relative to the root), path (location)."""
    keys, paths = [], []
    for p in batch["path"]:
        rel = str(p)[len(root_path):].lstrip("/") if str(p).startswith(root_path) else storage.basename(str(p))
        keys.append(rel or storage.basename(str(p)))
        paths.append(storage.join(root_location, rel) if rel else root_location)
    return _rows(keys, paths, list(batch["bytes"]), [""] * len(keys))


def _fetch(batch: dict, base: str) -> dict:
    """Manifest rows (`path`, optional `key`) -> the bytes of each file through edge_ray.storage."""
    keys, paths, data, error = [], [], [], []
    for i, raw in enumerate(batch["path"]):
        text = "" if raw is None else str(raw).strip()
        location = text if storage.is_uri(text) or text.startswith("/") else storage.join(base, text)
        keys.append(str(batch["key"][i]) if "key" in batch else text)
        paths.append(location)
        try:
            if not text:
                raise ValueError("empty path")
            data.append(storage.read_bytes(location))
            error.append("")
        except (OSError, ValueError) as err:
            data.append(b"")
            error.append(f"cannot read the file ({str(err).splitlines()[0][:200]})")
    return _rows(keys, paths, data, error)



def input_kind(location: str) -> str:
    """"shards" (a folder with index.json), "folder", "manifest" or "file" (one image)."""
    kind = storage.file_type(location)
    if kind == storage.FileType.File:
        return "manifest" if location.lower().endswith(MANIFEST_SUFFIXES) else "file"
    if storage.is_dir(location):
        return "shards" if "index.json" in storage.listdir(location) else "folder"
    raise FileNotFoundError(f"--input {location} does not exist; give an image folder, a shard set, a "
                            "manifest (.csv/.jsonl/.parquet with a path column) or an image file")


def manifest_columns(location: str) -> list[str]:
    """The column names of a manifest, from its header alone (no Ray)."""
    import pyarrow.parquet as pq

    if location.lower().endswith((".parquet", ".pq")):
        fs, path = storage.resolve(location)
        return list(pq.read_schema(path, filesystem=fs).names)
    with storage.open_input_stream(location) as f:
        head = f.read(1 << 16).decode("utf-8", errors="replace")
    first = head.splitlines()[0] if head.strip() else ""
    if location.lower().endswith(".csv"):
        return next(csv.reader([first]), [])
    try:
        row = json.loads(first)
    except ValueError:
        raise ValueError(f"manifest {location}: the first line is not a JSON object; write one object per "
                         'line, e.g. {"path": "images/a.jpg"}') from None
    return list(row) if isinstance(row, dict) else []


def check_input(location: str) -> str:
    """The input's kind, after the checks that need no Ray (a missing location, a manifest
    without a path column, a shard set whose index is broken)."""
    kind = input_kind(location)
    if kind == "shards":
        from edge_ray.data import load_index
        load_index(location)
    if kind == "manifest":
        columns = manifest_columns(location)
        if "path" not in columns:
            raise ValueError(f"manifest {location} has no 'path' column (columns: {', '.join(columns) or 'none'}); "
                             "give one path per row, relative to the manifest's folder or absolute")
    return kind


def read_input(location: str, kind: str, *, cpus: float):
    """A Ray Dataset of key, path, data (bytes), error ("" or why the file could not be read)."""
    import ray.data

    fs, path = storage.resolve(location)
    if kind == "shards":
        from edge_ray.data import load_index

        index = load_index(location)
        shard_paths = {storage.resolve(u)[1]: u for u, _ in index.shards}
        ds = ray.data.read_webdataset(list(shard_paths), filesystem=fs, decoder=None, num_cpus=cpus,
                                      suffixes=sorted(IMAGE_EXTS) + ["json"])
        return ds.map_batches(_from_webdataset, fn_kwargs={"shard_locations": shard_paths},
                              batch_format="numpy", num_cpus=cpus)
    if kind in ("folder", "file"):
        ds = ray.data.read_binary_files(path, filesystem=fs, include_paths=True, num_cpus=cpus)
        root = path if kind == "folder" else storage.parent(path)
        root_location = location if kind == "folder" else storage.parent(location)
        return ds.map_batches(_from_files, fn_kwargs={"root_path": root, "root_location": root_location},
                              batch_format="numpy", num_cpus=cpus)
    suffix = location.lower().rsplit(".", 1)[-1]
    reader = {"csv": ray.data.read_csv, "parquet": ray.data.read_parquet, "pq": ray.data.read_parquet}.get(
        suffix, ray.data.read_json)
    keep = ["path"] + (["key"] if "key" in manifest_columns(location) else [])
    ds = reader(path, filesystem=fs, num_cpus=cpus).select_columns(keep)
    return ds.map_batches(_fetch, fn_kwargs={"base": storage.parent(location)}, batch_format="numpy", num_cpus=cpus)
