"""Reader throughput: images/s through `train_loader` (tar read + JPEG decode + transforms).

    python benchmarks/reader.py                       # 2000 synthetic 256px JPEGs, workers 1 2
    python benchmarks/reader.py --workers 0 1 2 4 --image-sizes 224 32 --json reader.json
    python benchmarks/reader.py --shards DIR --oe-shards DIR2   # measure a real converted set
    python benchmarks/reader.py --stores local s3 --repeat 3    # local disk vs an S3 server
    python benchmarks/reader.py --smoke               # tiny, seconds

`--stores local s3` copies the sets into a bucket of an S3 API server (moto, started in a
separate process on 127.0.0.1, so its CPU is not the client's) and reads them through
s3:// URIs, as a rank streams from object storage; the stores are measured interleaved,
`--repeat` times each, and the best (lowest CPU ms/img) of each is reported, with the
client CPU cost of streaming relative to local disk.

Synthetic images are real JPEG bytes (noise over gradients, so they neither compress
to nothing nor decode unrealistically fast). Each configuration runs one epoch on
rank 0 of world_size 1; "img/s" counts every decoded image (ID + OE), "id/s" only
ID ones. The first batch (worker start-up, shuffle-buffer fill) is timed separately;
"CPU ms/img" (all processes) is the number to compare on a busy shared machine.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import reader_baseline  # noqa: E402
from edge_ray import storage  # noqa: E402
from shards.plan import Item  # noqa: E402
from shards.writer import convert  # noqa: E402
from edge_ray.data import load_index, train_loader  # noqa: E402


def synthetic_jpeg(gen: np.random.Generator, size) -> bytes:
    """A JPEG of `size` (side, or (width, height)): a random colour gradient plus noise, quality 90."""
    width, height = (size, size) if isinstance(size, int) else size
    a, b = gen.uniform(0, 255, 3), gen.uniform(0, 255, 3)
    base = (a * np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
            + b * np.linspace(0, 1, width, dtype=np.float32)[None, :, None])
    pixels = np.clip(base / 2 + gen.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_synthetic(out: Path, name: str, role: str, n: int, size: int, *,
                    shard_size: int, num_classes: int = 20, seed: int = 0) -> Path:
    """A shard set of n synthetic JPEGs, written by the converters' own writer (shards.writer)."""
    gen = np.random.default_rng(seed)
    items = [Item(f"{name}_{i:07d}", f"synthetic {name} {i}",
                  tuple(sorted(set(gen.integers(num_classes, size=2).tolist()))) if role == "id" else (),
                  data=synthetic_jpeg(gen, size)) for i in range(n)]
    convert(items, str(out), name=name, role=role, classes=[f"class{c}" for c in range(num_classes)] if role == "id" else [],
            shard_size=shard_size, progress=False)
    return out


def batches(arrangement: str, id_index, oe_index, *, workers: int, image_size: int, batch_size: int,
            oe_batch_size: int):
    """(x_id, x_oe) float batches of one ID epoch: the project's `train_loader`, or the plain
    webdataset + torchvision baseline (reader_baseline.py) on the same shards."""
    if arrangement == "baseline":
        return reader_baseline.epoch([u for u, _ in id_index.shards], [u for u, _ in oe_index.shards],
                                     image_size=image_size, batch_size=batch_size,
                                     oe_batch_size=oe_batch_size, workers=workers)
    loader = train_loader(id_index, oe_index, batch_size=batch_size, oe_batch_size=oe_batch_size,
                          image_size=image_size, epoch=0, seed=0, rank=0, world_size=1,
                          num_workers=workers)
    return ((x_id, x_oe) for x_id, _, x_oe in loader)


def measure(id_index, oe_index, *, workers: int, image_size: int, batch_size: int,
            oe_batch_size: int, arrangement: str = "project") -> dict:
    cpu0, start = cpu_seconds(), time.perf_counter()
    first, steps = None, 0
    for steps, (x_id, x_oe) in enumerate(batches(arrangement, id_index, oe_index, workers=workers,
                                                 image_size=image_size, batch_size=batch_size,
                                                 oe_batch_size=oe_batch_size), start=1):
        if steps == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    cpu = cpu_seconds() - cpu0  # includes the workers: they are joined when the epoch ends
    per_step = batch_size + oe_batch_size
    steady = (steps - 1) * per_step / (end - first) if steps > 1 else float("nan")
    return {"arrangement": arrangement, "workers": workers, "image_size": image_size, "steps": steps,
            "first_batch_s": round(first - start, 3), "epoch_s": round(end - start, 3),
            "img_per_s": round(steady, 1),
            "id_img_per_s": round(steady * batch_size / per_step, 1),
            "img_per_s_incl_startup": round(steps * per_step / (end - start), 1),
            "cpu_ms_per_img": round(1e3 * cpu / (steps * per_step), 3)}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (DataLoader workers).

    On a shared machine wall-clock rates move with the load; CPU time per image
    shows whether a change made the work itself cheaper."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def s3_server():
    """An S3 API server (moto) in its own process on a free local port; the AWS_* variables
    of this process point at it while the block runs. Yields a bucket URI."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage.forget_filesystems()
    try:
        import pyarrow.fs as pafs

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir("reader-bench")
        yield "s3://reader-bench"
    finally:
        proc.terminate()
        proc.wait()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        storage.forget_filesystems()


def copy_set(local_dir, location: str) -> str:
    storage.upload_tree(str(local_dir), location)
    return location


KEY = ("arrangement", "store", "image_size", "workers")


def best_rows(runs: list[dict]) -> list[dict]:
    """The lowest-CPU run of each (arrangement, store, size, workers), with the CPU ratio to
    local disk (same arrangement) and to the baseline (same store), and the img/s ratio."""
    best: dict = {}
    for r in runs:
        key = tuple(r[k] for k in KEY)
        if key not in best or r["cpu_ms_per_img"] < best[key]["cpu_ms_per_img"]:
            best[key] = r
    out = []
    for (arrangement, store, size, workers), r in best.items():
        local = best.get((arrangement, "local", size, workers))
        base = best.get(("baseline", store, size, workers)) or best.get(("baseline", "local", size, workers))
        out.append({**r, "runs": sum(1 for x in runs if tuple(x[k] for k in KEY) == (arrangement, store, size, workers)),
                    "cpu_vs_local": round(r["cpu_ms_per_img"] / local["cpu_ms_per_img"], 3) if local else None,
                    "cpu_vs_baseline": round(r["cpu_ms_per_img"] / base["cpu_ms_per_img"], 3) if base else None,
                    "img_s_vs_baseline": round(r["img_per_s"] / base["img_per_s"], 3) if base else None})
    return out


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="ID shard set to read (default: build a synthetic one)")
    p.add_argument("--oe-shards", help="OE shard set (default: build a synthetic one)")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--source-size", type=_size, default=(256, 256), help="synthetic JPEG size: 256 or 640x480")
    p.add_argument("--image-sizes", type=int, nargs="+", default=[256, 32])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--oe-batch-size", type=int, default=64)
    p.add_argument("--arrangements", nargs="+", default=["project", "baseline"], choices=["project", "baseline"],
                   help="the project's reader and/or the plain webdataset + torchvision baseline (default: both)")
    p.add_argument("--stores", nargs="+", default=["local"], choices=["local", "s3"],
                   help="read from local disk and/or a local S3 API server (separate process)")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration, interleaved; best kept "
                   "(default 3: one configuration's CPU ms/img moves up to 1.8x between runs on a shared machine)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny run, a few seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.num_images, args.source_size, args.batch_size, args.oe_batch_size = 96, (64, 64), 8, 8
        args.image_sizes, args.repeat = [32], 1

    with tempfile.TemporaryDirectory(prefix="reader-bench-") as tmp, contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        id_dir = args.shards or write_synthetic(Path(tmp, "id"), "synth", "id", args.num_images,
                                                args.source_size, shard_size=max(1, args.num_images // 8))
        oe_dir = args.oe_shards or write_synthetic(Path(tmp, "oe"), "synthoe", "oe",
                                                   max(args.num_images // 4, 1), args.source_size,
                                                   shard_size=max(1, args.num_images // 16), seed=1)
        sets = {"local": (id_dir, oe_dir)}
        if "s3" in args.stores:
            bucket = stack.enter_context(s3_server())
            sets["s3"] = (copy_set(id_dir, f"{bucket}/id"), copy_set(oe_dir, f"{bucket}/oe"))
        indexes = {store: (load_index(sets[store][0], role="id"), load_index(sets[store][1], role="oe"))
                   for store in args.stores}
        id_index, oe_index = indexes[args.stores[0]]
        print(f"sets: {id_index.num_samples} ID / {oe_index.num_samples} OE images in "
              f"{', '.join(args.stores)} (prepared in {time.perf_counter() - t0:.1f}s)")
        # The baseline reads local files only (webdataset opens URLs with its own gopen).
        plan = [(a, store) for a in args.arrangements for store in args.stores if a == "project" or store == "local"]
        runs = [{"store": store, **measure(*indexes[store], workers=w, image_size=s, batch_size=args.batch_size,
                                           oe_batch_size=args.oe_batch_size, arrangement=a)}
                for _ in range(args.repeat) for s in args.image_sizes for w in args.workers for a, store in plan]
        rows = best_rows(runs)

    print(f"best of {args.repeat} interleaved run(s) per row (lowest CPU ms/img); source "
          f"{'x'.join(map(str, args.source_size)) if not args.shards else 'as converted'}")
    print(f"{'arrangement':>11} {'store':>6} {'size':>5} {'workers':>7} {'steps':>5} {'img/s':>8} "
          f"{'1st batch s':>11} {'CPU ms/img':>10} {'vs local':>8} {'vs baseline':>11} {'img/s vs b.':>11}")
    for r in rows:
        print(f"{r['arrangement']:>11} {r['store']:>6} {r['image_size']:>5} {r['workers']:>7} {r['steps']:>5} "
              f"{r['img_per_s']:>8} {r['first_batch_s']:>11} {r['cpu_ms_per_img']:>10} "
              + " ".join(f"{'-' if r[k] is None else r[k]:>{w}}" for k, w in
                         (("cpu_vs_local", 8), ("cpu_vs_baseline", 11), ("img_s_vs_baseline", 11))))
    if args.json:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "batch_size": args.batch_size,
                "oe_batch_size": args.oe_batch_size, "repeat": args.repeat,
                "source_size": None if args.shards else list(args.source_size)}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows, "runs": runs}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
