"""OE candidate ranking: Ray task-pool wall time, and the per-batch cost of the spectrum.

    python benchmarks/rank_oe.py                          # default sizes, under 2 min on 2 cores
    python benchmarks/rank_oe.py --workers 1 2 4 --candidates 8 --json rank_oe.json
    python benchmarks/rank_oe.py --data data/demo         # real demo sets: id_train vs oe_*
    python benchmarks/rank_oe.py --smoke                  # tiny, seconds

Pool: the same candidates ranked by `rank_parallel` with at most W candidate tasks in flight
(1 CPU and 1 torch thread each; Ray is started with max(W) CPUs). max(W) workers are started
first, outside the timings ("start" row: worker start-up, imports included); each size then
runs --pool-repeats times and the fastest counts. The in-process `rank_serial` on one thread
is the no-Ray reference. The ID features are one task that runs before the
candidates, so the speed-up is bounded by (1 + C) / (1 + C / W) even on idle cores.
Synthetic sets are the embedded benchmark's generators (32 px grayscale canvases, PNG),
model: the small CNN with random weights (the cost does not depend on the weights).

Spectrum: top-k singular values of one [B, D] float64 batch, `gram` (eigenvalues of the
smaller Gram matrix) against `svd` (`torch.linalg.svdvals`), median of repeated runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_ray.oe.ray_rank import RankOptions, rank_parallel, rank_serial  # noqa: E402
from edge_ray.models.networks import build_model  # noqa: E402
from edge_ray.oe.dilation import top_singular_values  # noqa: E402

OE_GENERATORS = ("oe_letters", "oe_digit7", "oe_china", "oe_stripes")


def synthetic_sets(root: Path, n_images: int, n_candidates: int) -> tuple[str, list[str]]:
    """ID canvases and `n_candidates` OE sets from the embedded benchmark's generators."""
    from shards.demo import CLASSES, set_items
    from shards.writer import convert

    def write(items, name, role):
        convert(items, root / name, name=name, role=role, classes=CLASSES if role == "id" else (),
                shard_size=256, overwrite=True, progress=False)
        return str(root / name)

    id_dir = write(set_items("id_train", n_images), "id", "id")
    cands = [write(set_items(OE_GENERATORS[i % len(OE_GENERATORS)], n_images, seed=i), f"oe{i}", "oe")
             for i in range(n_candidates)]
    return id_dir, cands


def _warm() -> None:
    import edge_ray.oe.ray_rank  # noqa: F401  torch, torchvision: the slow part of a start
    time.sleep(1.0)  # keep this worker busy so that every warm-up task gets its own


def time_pool(model, id_dir: str, cands: list[str], opts: RankOptions, workers: list[int],
              repeats: int) -> list[dict]:
    import ray

    owned = not ray.is_initialized()  # under pytest: the session's Ray, left running
    if owned:
        ray.init(address="local", num_cpus=max(workers), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        def timed(w):
            start = time.perf_counter()
            rank_parallel(model, "smallcnn", id_dir, cands, opts, num_cpus=1, max_in_flight=w,
                          progress=False)
            return time.perf_counter() - start

        start = time.perf_counter()  # start every worker once, outside the timings
        ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(max(workers))])
        startup = time.perf_counter() - start
        rows = [{"workers": w, "wall_s": min(timed(w) for _ in range(repeats))} for w in workers]
    finally:
        if owned:
            ray.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    serial = []
    for _ in range(repeats):
        start = time.perf_counter()
        rank_serial(model, id_dir, cands, opts)
        serial.append(time.perf_counter() - start)
    serial = min(serial)
    torch.set_num_threads(threads)
    base = next((r["wall_s"] for r in rows if r["workers"] == 1), rows[0]["wall_s"])
    for r in rows:
        r.update(speedup=base / r["wall_s"], candidates_per_s=len(cands) / r["wall_s"])
    return [{"workers": "serial", "wall_s": serial, "speedup": base / serial,
             "candidates_per_s": len(cands) / serial},
            {"workers": f"start {max(workers)}", "wall_s": startup, "speedup": float("nan"),
             "candidates_per_s": float("nan")}] + rows


def time_spectrum(batch_sizes, dims, k: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in batch_sizes:
        for d in dims:
            x = torch.randn(b, d, generator=gen, dtype=torch.float64)
            row = {"batch": b, "dim": d, "k": min(k, b)}
            for method in ("gram", "svd"):
                top_singular_values(x, row["k"], method)  # warm-up (LAPACK workspace)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    s = top_singular_values(x, row["k"], method)
                    times.append(time.perf_counter() - start)
                row[f"{method}_ms"] = 1e3 * sorted(times)[len(times) // 2]
                row[f"{method}_top"] = s
            row["svd_over_gram"] = row["svd_ms"] / row["gram_ms"]
            row["max_rel_diff"] = float(((row.pop("gram_top") - row.pop("svd_top")).abs().max()
                                         / torch.linalg.svdvals(x)[0]))
            rows.append(row)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an embedded-benchmark folder (id_train, oe_*); default: build sets")
    p.add_argument("--candidates", type=int, default=6, help="synthetic OE candidate sets")
    p.add_argument("--images", type=int, default=256, help="images per synthetic set")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="candidate tasks in flight")
    p.add_argument("--pool-repeats", type=int, default=2, help="runs per pool size (the fastest counts)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--spectrum-batches", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--spectrum-dims", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the spectrum timing")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny run, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.candidates, args.images, args.workers, args.image_size = 2, 128, [1, 2], 32
        args.spectrum_batches, args.spectrum_dims, args.repeats = [32, 64], [128, 512], 3
        args.pool_repeats = 1
    opts = RankOptions(k=args.k, batch_size=args.batch_size, batches=args.images // args.batch_size,
                       seed=0, image_size=args.image_size)
    torch.manual_seed(0)
    model = build_model("smallcnn", 1)

    with tempfile.TemporaryDirectory(prefix="rank-oe-bench-") as tmp:
        start = time.perf_counter()
        if args.data:
            id_dir, cands = str(Path(args.data, "id_train")), sorted(map(str, Path(args.data).glob("oe_*")))
        else:
            id_dir, cands = synthetic_sets(Path(tmp), args.images, args.candidates)
        print(f"{len(cands)} candidates, up to {opts.batches * opts.batch_size} images each, "
              f"{args.image_size}px, smallcnn (prepared in {time.perf_counter() - start:.1f}s)")
        pool = time_pool(model, id_dir, cands, opts, args.workers, args.pool_repeats)

    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow every row)")
    print(f"{'workers':>9} {'wall s':>7} {'speed-up':>8} {'cand/s':>7}")
    for r in pool:
        print(f"{r['workers']!s:>9} {r['wall_s']:>7.2f} {r['speedup']:>8.2f} {r['candidates_per_s']:>7.2f}")

    torch.set_num_threads(args.threads)
    spectrum = time_spectrum(args.spectrum_batches, args.spectrum_dims, args.k, args.repeats)
    print(f"\nspectrum of one batch, float64, k={args.k}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'B':>5} {'D':>5} {'gram ms':>8} {'svd ms':>8} {'svd/gram':>8} {'max rel diff':>12}")
    for r in spectrum:
        print(f"{r['batch']:>5} {r['dim']:>5} {r['gram_ms']:>8.3f} {r['svd_ms']:>8.3f} "
              f"{r['svd_over_gram']:>8.1f} {r['max_rel_diff']:>12.1e}")

    result = {"meta": {"machine": platform.platform(), "processor": platform.processor(),
                       "cpus": os.cpu_count(), "torch": torch.__version__, "args": vars(args),
                       "load_average_1m": os.getloadavg()[0]},
              "pool": pool, "spectrum": spectrum}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
