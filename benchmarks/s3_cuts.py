"""What a dropped object-store connection costs the reader (issue 31, item 4).

    python benchmarks/s3_cuts.py                          # print the table
    python benchmarks/s3_cuts.py --json s3_cuts.json --fraction 0.3

A real S3 API server (moto, on 127.0.0.1) holds the quick embedded benchmark's id_train
shards; the reader (``edge_ray.data.records.read_positions``, what every training rank and
evaluation runs) reads every sample of the set through a loopback TCP proxy
(tests/s3_faults.py), first passing everything, then cutting a ``--fraction`` of the
connections after a random number of response bytes. Both passes must return the same
samples in the same order; the added wall time divided by the cuts is the cost of one
cut. The table also counts the reader's own retries (the rest are the S3 client's) and
splits the added time into the reader's backoff sleeps and the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def read_all(url_of_set: str) -> tuple[list, float, int, float]:
    """Every sample of a set, the wall seconds, the reader's retries and its backoff sleeps."""
    import numpy as np

    from edge_ray.data import load_index, records

    index = load_index(url_of_set)
    urls, sizes = [u for u, _ in index.shards], [n for _, n in index.shards]
    slept = []
    real_sleep = records.time.sleep

    def sleep(s):
        slept.append(s)
        real_sleep(s)

    records.time.sleep = sleep
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            got = [(r.key, r.data) for r in records.read_positions(urls, sizes, np.arange(sum(sizes)))]
            wall = time.perf_counter() - t
    finally:
        records.time.sleep = real_sleep
    retries = sum("retrying" in str(w.message) or "reading it again" in str(w.message) for w in caught)
    return got, wall, retries, sum(slept)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=0.3, help="share of connections cut (default 0.3)")
    p.add_argument("--repeats", type=int, default=3, help="passes of each kind (default 3)")
    p.add_argument("--cut-below", type=int, default=300_000,
                   help="a cut connection ends after a random number of response bytes below this (default 300000)")
    p.add_argument("--stall", action="store_true",
                   help="instead of closing, a cut connection goes silent and stays open (a peer that vanished)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    from edge_ray import storage
    from shards.demo import build_demo
    from tests.s3_faults import CuttingProxy

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
    boto3.client("s3").create_bucket(Bucket="edge-cuts")
    with tempfile.TemporaryDirectory() as tmp:
        build_demo(tmp, seed=0, quick=True)  # written locally, then only id_train goes to the bucket
        storage.upload_tree(str(Path(tmp) / "id_train"), "s3://edge-cuts/demo/id_train")
    where = "s3://edge-cuts/demo/id_train"
    n_shards = len(json.loads(storage.read_text(f"{where}/index.json"))["shards"])

    rows, reference = [], None
    for kind, fraction in (("no cuts", None), (f"{args.fraction:.0%} {'stalled' if args.stall else 'cut'}", args.fraction)):
        for rep in range(args.repeats):
            proxy = CuttingProxy(f"http://{host}:{port}", cut_after=args.cut_below, cuts=0,
                                 fraction=fraction if fraction is not None else 0.0, seed=rep, stall=args.stall)
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            storage.forget_filesystems()
            try:
                got, wall, retries, slept = read_all(where)
            finally:
                proxy.close()
                storage.forget_filesystems()
            reference = reference or got
            ref = dict(reference)
            differ = sum(1 for k, v in got if ref.get(k) != v) + abs(len(got) - len(reference))
            rows.append({"kind": kind, "repeat": rep, "samples": len(got), "same_samples": got == reference,
                         "samples_differing": differ,
                         "wall_s": round(wall, 3), "connections": proxy.connections, "cuts": proxy.cut_done,
                         "reader_retries": retries, "reader_sleep_s": round(slept, 3)})
    server.stop()

    base = sorted(r["wall_s"] for r in rows if r["cuts"] == 0)[len([r for r in rows if r["cuts"] == 0]) // 2]
    print(f"\n{n_shards} shards, {rows[0]['samples']} samples, read through a loopback proxy")
    print(f"{'pass':<28} {'wall s':>7} {'conns':>6} {'cuts':>5} {'reader retries':>15} {'reader sleep s':>15} "
          f"{'s per cut':>10} {'same':>5} {'differ':>6}")
    for r in rows:
        per_cut = (r["wall_s"] - base) / r["cuts"] if r["cuts"] else None
        r["seconds_per_cut"] = round(per_cut, 3) if per_cut is not None else None
        print(f"{r['kind']:<28} {r['wall_s']:>7.2f} {r['connections']:>6} {r['cuts']:>5} {r['reader_retries']:>15} "
              f"{r['reader_sleep_s']:>15.2f} {'' if per_cut is None else f'{per_cut:.2f}':>10} "
              f"{str(r['same_samples']):>5} {r['samples_differing']:>6}")
    cut = [r for r in rows if r["cuts"]]
    summary = {"median_no_cut_s": base,
               "seconds_per_cut": round(sum(r["wall_s"] - base for r in cut) / max(1, sum(r["cuts"] for r in cut)), 3),
               "all_same": all(r["same_samples"] for r in rows)}
    print(f"\nadded wall time per cut (all cut passes): {summary['seconds_per_cut']:.2f} s; "
          f"every pass returned the same samples: {summary['all_same']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform()}}, indent=1))
        print(f"wrote {args.json}")
    return 0 if summary["all_same"] else 1


if __name__ == "__main__":
    sys.exit(main())
