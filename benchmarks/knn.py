"""Exact k-nearest-neighbour search for the KNN score: faiss-cpu against scikit-learn.

    python benchmarks/knn.py                         # 50,000 x 2048 bank, 10,000 queries, k 50
    python benchmarks/knn.py --repeat 3 --json knn.json
    python benchmarks/knn.py --smoke                 # tiny, seconds

The KNN score (``edge_ray/scores/knn.py``, Sun et al. 2022) needs, for every query, the
distance to its k-th nearest ID training feature, all features L2-normalised, float32. Both
libraries search exhaustively (exact):

  faiss    ``faiss.IndexFlatL2`` (add the bank, ``search(queries, k)``; squared L2 distances)
  sklearn  ``NearestNeighbors(n_neighbors=k, algorithm="brute")`` (``fit`` the bank,
           ``kneighbors(queries)``; L2 distances, computed in chunks of ``working_memory``)

Both use every core this process may use (faiss: OpenMP; scikit-learn: its BLAS, and
``n_jobs=-1`` for the chunked pairwise distances); their thread counts are recorded. Each
method runs ``--repeat`` times, interleaved, the run with the least CPU time counts; the
build (add / fit) and the search are timed apart, in wall seconds and in CPU seconds of the
process (all threads: the number that holds on a machine shared with other work). The features are a Gaussian
mixture (``--clusters`` centres, like classes), so neighbours are not all equidistant.
Accuracy: the k-th distance of the first ``--check`` queries against a float64 numpy
brute force.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def features(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """L2-normalised float32 rows: a Gaussian mixture, non-negative (post-ReLU-like)."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(0, 1, (clusters, dim))).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + rng.normal(0, 0.6, (n, dim)).astype(np.float32)
    np.maximum(x, 0, out=x)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-10
    return np.ascontiguousarray(x, dtype=np.float32)


def reference_kth(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest L2 distance of each query, float64 brute force."""
    b, q = bank.astype(np.float64), queries.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T
    return np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: every thread, user + system)."""
    return time.perf_counter(), time.process_time()


def _timing(start, built, done) -> dict:
    return {"build_s": built[0] - start[0], "search_s": done[0] - built[0],
            "build_cpu_s": built[1] - start[1], "search_cpu_s": done[1] - built[1]}


def run_faiss(bank, queries, k) -> tuple[dict, np.ndarray]:
    import faiss

    start = _clock()
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    built = _clock()
    d2, _ = index.search(queries, k)
    done = _clock()
    return _timing(start, built, done), np.sqrt(np.maximum(d2[:, -1], 0.0))


def run_sklearn(bank, queries, k) -> tuple[dict, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    start = _clock()
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=-1).fit(bank)
    built = _clock()
    dist, _ = nn.kneighbors(queries)
    done = _clock()
    return _timing(start, built, done), dist[:, -1].astype(np.float64)


METHODS = {"faiss": run_faiss, "sklearn": run_sklearn}


def versions() -> dict:
    out = {"numpy": np.__version__, "python": platform.python_version()}
    try:
        import faiss
        out["faiss"] = faiss.__version__
        out["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        out["faiss"] = None
    import sklearn
    out["scikit-learn"] = sklearn.__version__
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", type=int, default=50_000, help="ID training features (default 50,000)")
    p.add_argument("--queries", type=int, default=10_000, help="query features (default 10,000)")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048, ResNet-50)")
    p.add_argument("--k", type=int, default=50, help="neighbours (default 50, the KNN score's default)")
    p.add_argument("--clusters", type=int, default=20, help="mixture centres (default 20)")
    p.add_argument("--repeat", type=int, default=2, help="runs per method, interleaved; the fastest counts")
    p.add_argument("--check", type=int, default=500, help="queries checked against float64 numpy (default 500)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = p.parse_args(argv)
    if args.smoke:
        args.bank, args.queries, args.dim, args.k, args.repeat, args.check = 2000, 300, 64, 10, 1, 100

    bank = features(args.bank, args.dim, args.clusters, seed=0)
    queries = features(args.queries, args.dim, args.clusters, seed=1)
    check = min(args.check, args.queries)
    want = reference_kth(bank, queries[:check], args.k)
    print(f"bank {args.bank} x {args.dim} float32, {args.queries} queries, k {args.k}, "
          f"{os.cpu_count()} CPU(s) seen, repeat {args.repeat}", flush=True)
    runs = {m: [] for m in args.methods}
    errors = {}
    for _ in range(args.repeat):
        for m in args.methods:
            timing, kth = METHODS[m](bank, queries, args.k)
            runs[m].append(timing)
            errors[m] = float(np.abs(kth[:check] - want).max())
            print(f"  {m}: build {timing['build_s']:.2f}s, search {timing['search_s']:.2f}s "
                  f"(CPU {timing['search_cpu_s']:.1f}s), load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for m, timings in runs.items():
        best = min(timings, key=lambda t: t["build_cpu_s"] + t["search_cpu_s"])
        rows.append({"method": m, **{k: round(v, 3) for k, v in best.items()},
                     "total_s": round(best["build_s"] + best["search_s"], 3),
                     "queries_per_s": round(args.queries / best["search_s"], 1),
                     "max_abs_error_vs_float64": errors[m], "runs": timings})
    print()
    print("| method | build s | search s (wall) | search CPU s | total s | queries/s | max abs error of the k-th "
          "distance vs float64 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['build_s']:.2f} | {r['search_s']:.2f} | {r['search_cpu_s']:.1f} | "
              f"{r['total_s']:.2f} | {r['queries_per_s']:.0f} | {r['max_abs_error_vs_float64']:.1e} |")
    result = {"bank": args.bank, "queries": args.queries, "dim": args.dim, "k": args.k, "clusters": args.clusters,
              "repeat": args.repeat, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "versions": versions(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
