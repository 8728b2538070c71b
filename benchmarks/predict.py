"""Batch inference: `launch.py predict` in img/s with 1 and 2 model actors, decoding in tasks
or in the actors, beside `eval`'s rate on the same images, at 32 px PNG and 224 px JPEG.

    python benchmarks/predict.py                     # both kinds, best of 2 runs each
    python benchmarks/predict.py --kinds 32png --images 8000 --small 4000 --actors 1 --json predict.json
    python benchmarks/predict.py --smoke             # tiny, seconds (tests/test_benchmarks.py)

Images: the embedded benchmark's ID canvases (32 px grayscale PNG in tar shards, as
`shards demo` writes them; `--images` of them, 250 per shard), and (224jpeg) the same canvases
scaled to 224 px, tinted and noised as colour JPEGs of quality 90 (~10 kB, a photo dataset's
size). Model: the demo's small CNN (width 32, 128-d features; random weights: the cost does
not depend on them) at the images' size, saved as a JointEnergy detector folder: a cheap
model, so the per-image work around it shows.

- predict: `run_predict` on the shard set, as `launch.py predict --input <set>` runs it
  (read_webdataset -> decode tasks -> an actor pool -> one Parquet file), with each actor
  count, timed from the first read to the last row written: Ray Data's planning, the start of
  its worker processes and of the actors (each imports torch and loads the model) included,
  as a user waits for them ("first row s": until the first rows came back). The same runs on a
  --small set give the marginal rate, (N - n) / (T_N - T_n): predict's rate once it runs, and
  the start-up it implies, T_N - N / rate; "x eval/core" = that rate / eval's on one torch
  thread (issue 31's goal: >= 0.8).
  Ray: a local instance with --ray-cpus logical CPUs (4 by default, as the test session:
  2 actors x 1 CPU + the decode tasks' 0.5 must fit); each actor runs 1 torch thread.
- eval: `evaluation.score_set` on the same set -- the path `launch.py eval` takes per set:
  tar read, decode, resize and normalise in this process (no loader workers), the forward
  pass and the score -- with each torch thread count.
predict's scores are checked against eval's (max relative difference in the table).
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_ray.data import load_index  # noqa: E402
from edge_ray.detector import Detector  # noqa: E402
from edge_ray.evaluate.pipeline import EvalOptions, score_set  # noqa: E402
from edge_ray.models.networks import build_model  # noqa: E402
from edge_ray.scores import build_scorer  # noqa: E402


# The two image kinds: the embedded benchmark's canvases as `shards demo` writes them, and the
# same canvases as a photo-sized dataset stores them (224 px colour JPEG, quality 90).
KINDS = {"32png": {"image_size": 32, "images": 20000, "small": 4000},
         "224jpeg": {"image_size": 224, "images": 2000, "small": 500}}


def _as_jpeg224(item, rng):
    from dataclasses import replace
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(item.data)).convert("RGB").resize((224, 224), Image.BILINEAR)
    tint = rng.uniform(0.6, 1.0, size=3)
    pixels = np.clip(np.asarray(img, np.float32) * tint + rng.normal(0, 8, (224, 224, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return replace(item, data=out.getvalue())


def make_images(root: Path, n: int, kind: str = "32png") -> str:
    from shards.demo import CLASSES, set_items
    from shards.writer import convert

    items = set_items("id_test", n)
    if kind == "224jpeg":
        rng = np.random.default_rng(0)
        items = [_as_jpeg224(it, rng) for it in items]
    convert(items, root / "images", name="images", role="id", classes=CLASSES,
            shard_size=250, overwrite=True, progress=False)
    return str(root / "images")


def make_detector(root: Path, image_size: int = 32) -> tuple[str, Detector]:
    torch.manual_seed(0)
    model = build_model("smallcnn", 7, width=32)
    det = Detector(model, arch={"name": "smallcnn", "width": 32}, classes=[f"digit{i}" for i in range(7)],
                   image_size=image_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   scorer=build_scorer("jointenergy"), threshold=0.0)
    return det.save(str(root / "detector")), det


def time_predict(model: str, sets: dict, out: Path, runs_of: list[tuple[int, str]], args) -> tuple[list[dict], dict]:
    """Each actor count on the small and the full set, best of --repeats each; the marginal
    rate (full - small images over the time difference) is the rate once everything runs,
    and full time - full images / marginal rate the start-up it implies."""
    import ray
    import pyarrow.parquet as pq

    from edge_ray.detector.ray_predict import run_predict

    owned = not ray.is_initialized()  # under pytest: the session's Ray, left running
    if owned:
        ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # after init, which configures it
    # An older commit's run_predict has no decode_in (it decoded in tasks): the same script
    # times it for a before/after table (run from a worktree of that commit).
    placed = "decode_in" in inspect.signature(run_predict).parameters
    rows, scores = [], {}
    try:
        for n, place in runs_of:
            if not placed and place != "tasks":
                continue
            best = {}
            for size, images in sets.items():
                runs = [run_predict(model, images, str(out), batch_size=args.batch_size, concurrency=n,
                                    cpus_per_actor=args.cpus_per_actor, cpus_per_task=args.cpus_per_task,
                                    overwrite=True, progress=False, **({"decode_in": place} if placed else {}))
                        for _ in range(args.repeats)]
                best[size] = min(runs, key=lambda c: c["seconds"])
                best[size]["runs_s"] = [c["seconds"] for c in runs]
            full, small = best["full"], best["small"]
            extra = full["seconds"] - small["seconds"]  # noise can make it <= 0 on tiny sets: not measured
            marginal = (full["images"] - small["images"]) / extra if extra > 0 else None
            rows.append({"run": f"predict, {n} actor{'s' if n > 1 else ''}, decode in {place}", "images": full["images"],
                         "actors": n, "decode_in": place,
                         "seconds": full["seconds"], "img_per_s": full["images"] / full["seconds"],
                         "marginal_img_per_s": marginal,
                         "startup_s": full["seconds"] - full["images"] / marginal if marginal else None,
                         "first_row_s": full["first_seconds"], "small_images": small["images"],
                         "small_seconds": small["seconds"], "runs_s": full["runs_s"], "small_runs_s": small["runs_s"]})
            table = pq.read_table(out, columns=["key", "score"])
            scores[(n, place)] = dict(zip(table.column("key").to_pylist(), table.column("score").to_pylist()))
    finally:
        if owned:
            ray.shutdown()
    return rows, scores


def time_eval(det: Detector, images: str, threads: list[int], args) -> tuple[list[dict], dict]:
    index = load_index(images)
    opts = EvalOptions(image_size=det.transform.image_size, mean=det.transform.mean, std=det.transform.std,
                       batch_size=args.batch_size)
    before, rows, out = torch.get_num_threads(), [], None
    try:
        for t in threads:
            torch.set_num_threads(t)
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = score_set(det.scorer, det.model, index, opts, progress=False)
                runs.append(time.perf_counter() - start)
            best = min(runs)
            rows.append({"run": f"eval, {t} torch thread{'s' if t > 1 else ''}", "seconds": best,
                         "images": len(out["keys"]), "img_per_s": len(out["keys"]) / best, "runs_s": runs})
    finally:
        torch.set_num_threads(before)
    return rows, dict(zip(out["keys"], out["scores"]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=["32png", "224jpeg"],
                   help="image kinds: 32 px PNG canvases, 224 px JPEG photos-sized (default both)")
    p.add_argument("--images", type=int, help="images of the full set (default 20000 at 32 px, 2000 at 224 px)")
    p.add_argument("--small", type=int, help="images of the second, smaller set (marginal rate; default 4000 / 500)")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="model actor counts to time")
    p.add_argument("--decode-in", nargs="+", choices=("tasks", "actor"), default=["tasks", "actor"],
                   help="where predict decodes (launch.py predict --decode-in), each timed")
    p.add_argument("--eval-threads", type=int, nargs="+", default=[1, 2], help="torch threads for eval")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration (the fastest counts)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--cpus-per-task", type=float, default=0.5)
    p.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the Ray started here")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny run, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.small, args.repeats, args.cpus_per_actor, args.cpus_per_task = 96, 32, 1, 0.5, 0.25
        args.eval_threads, args.kinds, args.actors = [1], ["32png"], [1]

    rows, diffs = [], {}
    for kind in args.kinds:
        k_rows, k_diffs = run_kind(kind, args)
        rows += k_rows
        diffs[kind] = k_diffs

    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow every row)")
    print(f"{'images':<8} {'run':<34} {'images':>6} {'wall s':>7} {'img/s':>6} {'marginal img/s':>14} "
          f"{'x eval/core':>11} {'start-up s':>10} {'first row s':>11} {'max rel diff':>12}  runs (s)")
    for r in rows:
        cells = [f"{r[k]:.{d}f}" if r.get(k) is not None else "" for k, d in
                 (("marginal_img_per_s", 0), ("x_eval_per_core", 2), ("startup_s", 1), ("first_row_s", 1))]
        diff = f"{r['max_rel_diff_vs_eval']:.1e}" if "max_rel_diff_vs_eval" in r else ""
        runs = ", ".join(f"{x:.1f}" for x in r["runs_s"])
        print(f"{r['kind']:<8} {r['run']:<34} {r['images']:>6} {r['seconds']:>7.2f} {r['img_per_s']:>6.0f} "
              f"{cells[0]:>14} {cells[1]:>11} {cells[2]:>10} {cells[3]:>11} {diff:>12}  {runs}")
    result = {"meta": {"machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "torch": torch.__version__, "args": vars(args), "load_average_1m": os.getloadavg()[0]},
              "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    bad = {kind: d for kind, d in diffs.items() if not all(np.isfinite(x) and x < 1e-5 for x in d.values())}
    if bad:
        raise SystemExit(f"predict's scores differ from eval's (max relative difference per run): {bad}")
    return result


def run_kind(kind: str, args) -> tuple[list[dict], dict]:
    """Predict and eval on one image kind; rows with the marginal rate / eval's per-core rate."""
    spec = KINDS[kind]
    n_full, n_small = args.images or spec["images"], args.small or spec["small"]
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        start = time.perf_counter()
        sets = {"small": make_images(Path(tmp) / "small", n_small, kind),
                "full": make_images(Path(tmp), n_full, kind)}
        images = sets["full"]
        model, det = make_detector(Path(tmp), spec["image_size"])
        print(f"{kind}: {n_full} and {n_small} images in {len(load_index(images).shards)} and "
              f"{len(load_index(sets['small']).shards)} shard(s), smallcnn at {spec['image_size']} px "
              f"(prepared in {time.perf_counter() - start:.1f}s)", flush=True)
        runs_of = [(n, place) for n in args.actors for place in args.decode_in]
        predict_rows, predict_scores = time_predict(model, sets, Path(tmp) / "preds.parquet", runs_of, args)
        eval_rows, eval_scores = time_eval(det, images, args.eval_threads, args)
    diffs = {f"{n} actors, {place}": max(abs(s[k] - eval_scores[k]) / max(abs(eval_scores[k]), 1e-12)
                                         for k in eval_scores) for (n, place), s in predict_scores.items()}
    per_core = next((r["img_per_s"] for r in eval_rows if r["run"].startswith("eval, 1 ")), None)
    for row in predict_rows:
        row["max_rel_diff_vs_eval"] = diffs[f"{row['actors']} actors, {row['decode_in']}"]
        if row["marginal_img_per_s"] and per_core:
            row["x_eval_per_core"] = row["marginal_img_per_s"] / per_core
    for row in predict_rows + eval_rows:
        row["kind"] = kind
    return predict_rows + eval_rows, diffs


if __name__ == "__main__":
    main()
