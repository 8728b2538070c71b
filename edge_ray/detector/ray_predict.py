"""The work of `launch.py predict` (what it does, the rows it writes and its arguments:
`cli.py`, which builds the parser without importing torch), on Ray Data.

Inputs are read as raw bytes (never decoded while reading, so a corrupt file cannot stop
the read): one Dataset of ``key``, ``path``, ``data`` and ``error``.

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
import time

import numpy as np
import pyarrow as pa

from edge_ray import storage
from edge_ray.data.records import IMAGE_EXTS
from edge_ray.detector.folder import read_manifest

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


# ---- prediction ------------------------------------------------------------------------------
SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("labels", pa.list_(pa.string())),
                    ("probabilities", pa.list_(pa.float32())), ("score", pa.float64()),
                    ("is_unknown", pa.bool_()), ("error", pa.string())])


# ---- stages (run in Ray tasks and actors) ---------------------------------------------------

def _decode(batch: dict, image_size: int, mean, std) -> dict:
    """key, path, data, error -> key, path, pixels uint8 [N, S, S, 3], error ("" when decoded)."""
    from edge_ray.data.transforms import eval_transform, to_pixels

    transform = eval_transform(image_size, mean=mean, std=std)
    n = len(batch["key"])
    pixels = np.zeros((n, image_size, image_size, 3), np.uint8)
    error = [str(e or "") for e in batch["error"]]
    for i in range(n):
        if error[i]:
            continue
        try:
            pixels[i] = to_pixels(bytes(batch["data"][i] or b""), transform)
        except ValueError as err:
            error[i] = str(err)
    return {"key": batch["key"], "path": batch["path"], "pixels": pixels, "error": np.asarray(error, dtype=object)}


class Predictor:
    """One Detector per actor; a batch of pixels -> the output rows as an Arrow table."""

    def __init__(self, model: str, device: str = "cpu", threads: int = 1, batch_size: int = 64,
                 decode: dict | None = None):
        import torch

        from edge_ray.detector.runtime import Detector

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.detector = Detector.load(model, device=device)
        self.batch_size = batch_size
        self.decode = decode  # _decode's arguments: the actor decodes its batches itself (decode_in="actor")

    def __call__(self, batch: dict) -> pa.Table:
        if self.decode is not None:
            batch = _decode(batch, **self.decode)
        det = self.detector
        errors = [str(e) or None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        probs = np.full((len(errors), len(det.classes)), np.nan)
        scores = np.full(len(errors), np.nan)
        if ok.any():
            probs[ok], scores[ok] = det.predict_pixels(batch["pixels"][ok], batch_size=self.batch_size)
        out = det.decide(probs, scores, errors)
        rows = out.rows()
        return pa.table({"key": [str(k) for k in batch["key"]], "path": [str(p) for p in batch["path"]],
                         "labels": [r["labels"] for r in rows], "probabilities": [r["probabilities"] for r in rows],
                         "score": [r["score"] for r in rows], "is_unknown": [r["is_unknown"] for r in rows],
                         "error": [r["error"] for r in rows]}, schema=SCHEMA)


# ---- the run --------------------------------------------------------------------------------

def check_resources(concurrency: int, cpus_per_actor: float, cpus_per_task: float, gpu: bool) -> None:
    """Refuse, in one line, an actor pool that leaves no CPU for the read/decode tasks (on a
    Ray started here it would wait forever) or asks for GPUs a started-here Ray lacks."""
    import ray

    from edge_ray import ray_cluster as cluster

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need = concurrency * cpus_per_actor + cpus_per_task
    problem = None
    if need > cpus + 1e-9:
        problem = (f"{concurrency} actor(s) x {cpus_per_actor:g} CPU + {cpus_per_task:g} CPU for the read/decode "
                   f"tasks is {need:g} CPUs, more than the {cpus:g} this Ray has; lower --concurrency, "
                   "--cpus-per-actor or --cpus-per-task")
    elif gpu and concurrency > gpus:
        problem = (f"--gpu with {concurrency} actor(s) needs {concurrency} GPUs; this Ray has {gpus:g} "
                   "(lower --concurrency, or leave out --gpu)")
    if problem and cluster.STARTED_HERE:
        raise ValueError(problem)
    if problem:
        print(f"note: {problem}; the run waits until nodes with room join", flush=True)


def check_request(model: str, input_location: str, out: str, *, overwrite: bool, batch_size: int,
                  concurrency: int, cpus: tuple) -> tuple[dict, str]:
    """(detector.json, input kind) after every check that needs no Ray: a wrong or old detector
    folder, a missing input, a bad --out, bad numbers stop here in one line."""
    manifest = read_manifest(model)
    if not out.lower().endswith((".parquet", ".pq")):
        raise ValueError(f"--out {out}: give a Parquet file name ending in .parquet, e.g. preds.parquet")
    if storage.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if batch_size < 1 or concurrency < 1 or min(cpus) <= 0:
        raise ValueError("--batch-size and --concurrency must be >= 1, --cpus-per-actor and --cpus-per-task > 0")
    return manifest, check_input(input_location)


# Where images are decoded (`--decode-in`): "tasks" (a Ray Data stage of its own, beside the
# model actors), "actor" (inside each model actor, before its forward: one stage fewer to
# start and to hand pixels through), "auto": the actor on the CPU (224 px JPEG on 2 cores:
# 1.13x eval's per-core rate against 0.93x in tasks, start-up halved; tiny 32 px images go
# faster in tasks, benchmarks/README.md "Batch inference"), tasks with --gpu, where the GPU
# should not wait for a CPU decode.
DECODE_IN = ("auto", "tasks", "actor")


def decode_place(decode_in: str, gpu: bool) -> str:
    if decode_in not in DECODE_IN:
        raise ValueError(f"--decode-in must be one of {', '.join(DECODE_IN)}, got {decode_in!r}")
    return ("tasks" if gpu else "actor") if decode_in == "auto" else decode_in


def run_predict(model: str, input_location: str, out: str, *, batch_size: int = 64, concurrency: int = 1,
                cpus_per_actor: float = 1.0, cpus_per_task: float = 0.5, gpu: bool = False,
                decode_in: str = "auto", overwrite: bool = False, progress: bool = True) -> dict:
    """Predict every image of ``input_location`` into the Parquet file ``out``; returns counts."""
    import ray.data

    model, input_location, out = (storage.normalize(x) for x in (model, input_location, out))
    manifest, kind = check_request(model, input_location, out, overwrite=overwrite, batch_size=batch_size,
                                   concurrency=concurrency, cpus=(cpus_per_actor, cpus_per_task))
    check_resources(concurrency, cpus_per_actor, cpus_per_task, gpu)
    place = decode_place(decode_in, gpu)
    pre = manifest["preprocess"]
    decode = {"image_size": pre["image_size"], "mean": pre["mean"], "std": pre["std"]}
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, progress
    try:
        ds = read_input(input_location, kind, cpus=cpus_per_task)
        if place == "tasks":
            ds = ds.map_batches(_decode, fn_kwargs=decode, batch_format="numpy", batch_size=batch_size,
                                num_cpus=cpus_per_task)
        ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model": model, "device": "cuda" if gpu else "cpu",
                                                              "threads": max(1, round(cpus_per_actor)),
                                                              "batch_size": batch_size,
                                                              "decode": decode if place == "actor" else None},
                            batch_format="numpy", batch_size=batch_size,
                            compute=ray.data.ActorPoolStrategy(size=concurrency),
                            num_cpus=cpus_per_actor, num_gpus=1 if gpu else 0)
        start = time.perf_counter()
        counts = write_parquet(ds, out)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    counts.update(kind=kind, seconds=time.perf_counter() - start, out=out, threshold=manifest["threshold"]["value"],
                  decode_in=place)
    return counts


def write_parquet(ds, out: str) -> dict:
    """Stream the dataset's rows into one Parquet file at ``out`` (edge_ray.storage): on a local
    disk under a temporary name renamed at the end, on an object store as one upload."""
    import pyarrow.parquet as pq

    target = f"{out}.part" if storage.is_local(out) else out
    counts = {"images": 0, "errors": 0, "unknown": 0, "error_examples": []}
    start = time.perf_counter()
    try:
        with storage.open_output_stream(target) as sink:
            with pq.ParquetWriter(sink, SCHEMA) as writer:
                for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    table = table.select(SCHEMA.names).cast(SCHEMA)
                    writer.write_table(table)
                    if not counts["images"]:  # start-up (actors, first reads) ends here
                        counts.update(first_rows=table.num_rows, first_seconds=time.perf_counter() - start)
                    _count(table, counts)
        if target != out:
            storage.move(target, out)
    except BaseException:
        if target != out:
            storage.delete(target)
        raise
    return counts


def _count(table: pa.Table, counts: dict) -> None:
    errors = table.column("error").to_pylist()
    counts["images"] += table.num_rows
    counts["errors"] += sum(e is not None for e in errors)
    counts["unknown"] += sum(bool(u) for u in table.column("is_unknown").to_pylist())
    for key, err in zip(table.column("key").to_pylist(), errors):
        if err is not None and len(counts["error_examples"]) < 3:
            counts["error_examples"].append(f"{key}: {err}")
