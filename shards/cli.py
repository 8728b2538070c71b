"""`launch.py shards <kind> ...`: one subcommand per converter plus the demo.

`add_subparsers` adds the parsers, `run` does the work; every input problem
surfaces as a `ConversionError` whose message is one line for the user.
"""
from __future__ import annotations

import argparse
import os

from .errors import ConversionError
from .plan import sanitize_key

_EXAMPLES = {
    "voc": "python launch.py shards voc --root data/VOCdevkit/VOC2007 --split trainval "
           "--out data/shards/voc07-trainval",
    "coco": "python launch.py shards coco --images data/coco/val2017 "
            "--annotations data/coco/annotations/instances_val2017.json --out data/shards/coco-val",
    "nuswide": "python launch.py shards nuswide --root data/NUS-WIDE --split train "
               "--out data/shards/nuswide-train",
    "manifest": "python launch.py shards manifest --file data/my/train.csv --classes "
                "data/my/classes.txt --out data/shards/my-train",
    "folder": "python launch.py shards folder --root data/textures --role ood --name dtd "
              "--out data/shards/dtd",
    "demo": "python launch.py shards demo --quick --out data/demo",
}
_HELP = {
    "voc": "Pascal VOC split (20 classes from Annotations/*.xml)",
    "coco": "MS-COCO instances_*.json (80 classes, sorted by category id)",
    "nuswide": "NUS-WIDE release (81 concepts; file names in shards/README.md)",
    "manifest": "CSV/JSONL/Parquet table with path and labels columns",
    "folder": "every image under a folder, as an OE pool or an OOD test set",
    "demo": "build the embedded offline benchmark (ID, OE candidates, OOD sets)",
}


def _common(p, *, demo: bool = False) -> None:
    p.add_argument("--out", metavar="DIR", required=not demo, default="data/demo" if demo else None,
                   help="output directory" + (" (default: data/demo)" if demo else ""))
    if not demo:
        p.add_argument("--name", help="shard file prefix (default: from the input)")
        p.add_argument("--skip-missing", action="store_true",
                       help="list images absent from disk as skipped instead of stopping")
        p.add_argument("--reencode", action="store_true",
                       help="re-encode BMP/GIF/TIFF as PNG instead of skipping them")
    p.add_argument("--workers", type=int, default=0 if demo else (os.cpu_count() or 1),
                   help="Ray tasks in flight, one per shard; 0 = in-process without Ray "
                        f"(default: {'0' if demo else 'number of CPUs'})")
    p.add_argument("--shard-size", type=int, default=250 if demo else 1000,
                   help="samples per shard (default: %(default)s)")
    p.add_argument("--address", help="Ray address to connect to (default: $RAY_ADDRESS, else local Ray)")
    p.add_argument("--any-node", action="store_true",
                   help="let tasks run on any node (inputs and --out on shared storage); "
                        "default: pin them to this node")
    if not demo:
        p.add_argument("--overwrite", action="store_true", help="replace a shard set already in --out")


def _add_kind_args(kind: str, p) -> None:
    if kind == "voc":
        p.add_argument("--root", required=True, help="VOCdevkit/VOC20xx folder")
        p.add_argument("--split", required=True, choices=["train", "val", "trainval", "test"])
        p.add_argument("--skip-difficult", action="store_true", help="ignore objects marked difficult")
    elif kind == "coco":
        p.add_argument("--images", required=True, help="folder of the split's images")
        p.add_argument("--annotations", required=True, help="instances_<split>.json")
        p.add_argument("--drop-empty", action="store_true", help="leave out images without annotation")
    elif kind == "nuswide":
        p.add_argument("--root", required=True, help="folder with Concepts81.txt, ImageList/, TrainTestLabels/")
        p.add_argument("--split", required=True, choices=["train", "test"])
        p.add_argument("--images", help="image folder (default: ROOT/Flickr)")
        p.add_argument("--drop-empty", action="store_true", help="leave out images with no concept")
    elif kind == "manifest":
        p.add_argument("--file", required=True, help=".csv, .jsonl or .parquet with path and labels columns")
        p.add_argument("--classes", help="class list file (one per line) or comma-separated names")
        p.add_argument("--role", default="id", choices=["id", "oe", "ood"])
    elif kind == "folder":
        p.add_argument("--root", required=True, help="image folder (searched recursively)")
        p.add_argument("--role", required=True, choices=["oe", "ood"])
    elif kind == "demo":
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quick", action="store_true", help="4x smaller sets (tests, smoke runs)")
        for n in ("train", "val", "test", "oe", "ood"):
            p.add_argument(f"--n-{n}", type=int, help=f"images per {n} set (default: preset)")


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    """Add the `shards` command and its kinds to a top-level `add_subparsers()` object."""
    top = subparsers.add_parser("shards", help="convert datasets to WebDataset shards",
                                description="Convert a dataset into the shard layout of ARCHITECTURE.md ('Shard format').",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n" + "\n".join(f"  {e}" for e in _EXAMPLES.values()))
    kinds = top.add_subparsers(dest="shards_kind", metavar="KIND", required=True)
    for kind, text in _HELP.items():
        p = kinds.add_parser(kind, help=text, description=text, epilog=f"example:\n  {_EXAMPLES[kind]}",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_kind_args(kind, p)
        _common(p, demo=kind == "demo")
    return top


def _options(args) -> dict:
    return {"shard_size": args.shard_size, "workers": args.workers, "overwrite": args.overwrite,
            "skip_missing": args.skip_missing, "reencode": args.reencode, "spread": args.any_node,
            "progress": True}


def _convert(args) -> dict:
    from . import coco, folder, manifest, nuswide, voc

    opts, kind = _options(args), args.shards_kind
    if kind == "voc":
        return voc.convert_voc(args.root, args.split, args.out, skip_difficult=args.skip_difficult,
                               name=args.name, **opts)
    if kind == "coco":
        return coco.convert_coco(args.images, args.annotations, args.out, drop_empty=args.drop_empty,
                                 name=args.name, **opts)
    if kind == "nuswide":
        return nuswide.convert_nuswide(args.root, args.split, args.out, images=args.images,
                                       drop_empty=args.drop_empty, name=args.name, **opts)
    if kind == "manifest":
        if args.role == "id" and not args.classes:
            raise ConversionError("manifest --role id needs --classes FILE_OR_LIST")
        return manifest.convert_manifest(args.file, args.classes, args.out, role=args.role,
                                         name=args.name, **opts)
    if kind == "folder":
        name = args.name or sanitize_key(os.path.basename(os.path.abspath(args.root)))
        return folder.convert_folder(args.root, args.out, role=args.role, name=name, **opts)
    raise ConversionError(f"unknown shards kind {kind!r}")


def _demo(args) -> None:
    from .demo import build_demo

    bench = build_demo(args.out, seed=args.seed, quick=args.quick, n_train=args.n_train,
                       n_val=args.n_val, n_test=args.n_test, n_oe=args.n_oe, n_ood=args.n_ood,
                       workers=args.workers, shard_size=args.shard_size, progress=True)
    total = sum(s["num_samples"] for s in bench["sets"].values())
    print(f"wrote demo benchmark: {len(bench['sets'])} sets, {total} samples to {args.out}; "
          f"see {os.path.join(args.out, 'benchmark.json')}")


def run(args) -> int:
    """Run one `shards` subcommand; input problems raise ConversionError."""
    from . import ray_pool
    from .writer import summary_line

    try:
        ray_pool.ADDRESS = args.address  # Ray starts with the first conversion task, after the input checks
        if args.shards_kind == "demo":
            _demo(args)
        else:
            print(summary_line(_convert(args), args.out))
        return 0
    except ConversionError:
        raise
    except (OSError, ValueError) as exc:  # e.g. an unwritable --out: still a one-line message
        raise ConversionError(f"{type(exc).__name__}: {exc}") from exc


def add_parser(subparsers, common=None) -> argparse.ArgumentParser:
    """`launch.py shards` (its command table, `edge_ray.cli.commands`): the parsers with `run`
    as the handler. The kinds carry their own --address (`common` is not used)."""
    top = add_subparsers(subparsers)
    top.set_defaults(run=run)
    return top


def resume_hint(args) -> str:
    from edge_ray.cli.interrupts import again

    return (f"the set in {args.out} is incomplete (index.json is written last, so no reader will open "
            f"it); convert again with: {again(args.argv, ('--overwrite',) if args.shards_kind != 'demo' else ())}")
