"""`launch.py export` and `launch.py predict`: a training checkpoint -> a detector folder,
and a detector folder -> predictions for many images (Ray Data). The parsers import neither
torch nor Ray; the work is in `export.py`, `ray_export.py` and `ray_predict.py`."""
from __future__ import annotations

import argparse

from edge_ray.tracking.settings import add_flag as add_tracking_flag

PREDICT_DOC = """`launch.py predict`: batch inference with an exported detector, on Ray Data.

    read     Ray Data reads the raw bytes: `read_webdataset` for a shard set (index.json),
             `read_binary_files` for an image folder (recursive) or one image file,
             `read_csv` / `read_json` / `read_parquet` for a manifest with a `path` column
             (whose files are then fetched through edge_ray.storage);
    decode   bytes -> `edge_ray.detector.to_pixels` (the project's one decoder and the eval
             transform's resize) -> uint8 pixels, or the reason it failed; inside the model
             actors on the CPU, in tasks of their own with --gpu (`--decode-in`);
    predict  an actor pool: one Detector per actor (`--concurrency`, a GPU each with `--gpu`);
    write    the driver streams the rows into one Parquet file at --out (a local path or a URI).

Rows: key (sample key, or the path relative to the folder / as written in the manifest),
path (the file's location, the tar's for shards), labels, probabilities, score, is_unknown,
error. A file that is empty, corrupt, not an image or missing gets a row with `error` set
and nulls elsewhere, and the run goes on; the count is printed at the end.
"""
EXPORT_EXAMPLE = "python launch.py export --checkpoint runs/tiny --score jointenergy --tpr 0.95 --out models/tiny-edge"

PREDICT_EXAMPLE = ("python launch.py predict --model models/tiny-edge --input data/demo-quick/ood_letters "
                   "--out preds.parquet")


def add_predict_parser(sub, common) -> None:
    p = sub.add_parser("predict", help="run an exported detector on new images (Ray Data) into a Parquet file",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=PREDICT_DOC,
                       epilog=f"example:\n  {PREDICT_EXAMPLE}\n  python launch.py predict --model s3://my-bucket/models/voc "
                              "--input s3://my-bucket/new-images --out s3://my-bucket/preds.parquet --gpu --concurrency 4")
    p.add_argument("--model", required=True, help="a detector folder written by `launch.py export` (path or URI)")
    p.add_argument("--input", required=True, help="an image folder (recursive), a shard set (with index.json), a "
                   "manifest (.csv/.jsonl/.parquet with a path column) or one image; a path or a URI")
    p.add_argument("--out", required=True, help="the Parquet file to write (path or URI), e.g. preds.parquet")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--concurrency", type=int, default=1, help="model actors, one model each (default 1)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per model actor (default 1; "
                   "also its torch threads, rounded)")
    p.add_argument("--cpus-per-task", type=float, default=0.5, help="CPUs per read/decode task (default 0.5)")
    p.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    p.add_argument("--decode-in", choices=("auto", "tasks", "actor"), default="auto",
                   help="where images are decoded: in the model actors before their forward (actor), in tasks "
                        "of their own (tasks), or auto (default): actor on the CPU, tasks with --gpu")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    common(p)
    p.set_defaults(run=run_predict)


def run_predict(args) -> int:
    from edge_ray import storage
    from edge_ray.detector import ray_predict
    from edge_ray.ray_cluster import connect

    ray_predict.check_request(*(storage.normalize(x) for x in (args.model, args.input, args.out)),
                              overwrite=args.overwrite, batch_size=args.batch_size, concurrency=args.concurrency,
                              cpus=(args.cpus_per_actor, args.cpus_per_task))  # before Ray starts
    connect(args.address)
    c = ray_predict.run_predict(args.model, args.input, args.out, batch_size=args.batch_size,
                                concurrency=args.concurrency, cpus_per_actor=args.cpus_per_actor,
                                cpus_per_task=args.cpus_per_task, gpu=args.gpu, decode_in=args.decode_in,
                                overwrite=args.overwrite)
    rate = c["images"] / c["seconds"] if c["seconds"] > 0 else float("nan")
    print(f"predicted {c['images']} images ({c['kind']}) in {c['seconds']:.1f}s ({rate:.0f} img/s): "
          f"{c['unknown']} unknown (score < {c['threshold']:.6g}), {c['errors']} error(s) -> {c['out']} "
          f"(decoded in {'the model actors' if c['decode_in'] == 'actor' else 'tasks'})")
    for example in c["error_examples"]:
        print(f"  error: {example}")
    return 0


def _docstring(module: str) -> str:
    import ast
    import importlib.util
    from pathlib import Path

    return ast.get_docstring(ast.parse(Path(importlib.util.find_spec(module).origin).read_text())) or ""


def add_export_parser(sub, common) -> None:
    doc = _docstring("edge_ray.detector.export")  # read, not imported: importing it brings in torch

    p = sub.add_parser("export", help="export a checkpoint as a detector folder (weights, score, threshold, card)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=doc,
                       epilog=f"example:\n  {EXPORT_EXAMPLE}\n  python launch.py export --checkpoint "
                              "s3://my-bucket/runs/voc --score vim --out s3://my-bucket/models/voc-vim")
    p.add_argument("--checkpoint", required=True, help="a checkpoint_* folder, or a run folder (its newest "
                   "checkpoint); a local path or a URI")
    p.add_argument("--out", required=True, help="the detector folder to write (local path or URI)")
    p.add_argument("--score", default="jointenergy", help="the OOD score (default jointenergy; any of eval's "
                   "ten; odin costs a backward pass per image when predicting)")
    p.add_argument("--tpr", type=float, default=0.95, help="share of ID validation images the threshold keeps "
                   "(default 0.95)")
    p.add_argument("--label-thresholds", default="0.5", help="probability threshold of every class (default 0.5), "
                   "or val-f1: per class, the F1-best one on the ID validation set")
    p.add_argument("--id-train", help="ID training shards the score is fitted on (default: the run's)")
    p.add_argument("--id-val", help="ID validation shards the threshold is chosen on (default: the run's)")
    p.add_argument("--id-test", help="ID test shards for the model card's row (default: the run's)")
    p.add_argument("--ood", nargs="+", help="OOD shard dirs for the model card's row (default: the run's)")
    p.add_argument("--no-table", action="store_true", help="skip the Table-3 evaluation for the model card")
    p.add_argument("--overwrite", action="store_true", help="replace a detector already in --out")
    p.add_argument("--gpu", action="store_true", help="run the passes as a Ray task on one GPU")
    add_tracking_flag(p)
    common(p)
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    from edge_ray.detector.ray_export import run

    return run(args)
