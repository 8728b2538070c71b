"""`launch.py rank-oe`: the parser (free of torch and Ray) and the handler; the work is in
`ray_rank.py` (one Ray task per candidate) and `rank.py`."""
from __future__ import annotations

import argparse

from edge_ray.models import BACKBONES, TIMM_PREFIX, is_timm


def _backbone(value: str) -> str:
    """--backbone: a name of BACKBONES or timm:<name> (timm checks the name when it builds it)."""
    if value in BACKBONES or (is_timm(value) and len(value) > len(TIMM_PREFIX)):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(BACKBONES)} or {TIMM_PREFIX}NAME)")


def run(args) -> int:
    from edge_ray.oe.ray_rank import run as run_rank

    return run_rank(args)


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "rank-oe", help="rank OE candidate sets by the dilation distance (paper Eq. 9)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rank candidate outlier-exposure sets by their dilation distance to the ID set\n"
                    "(paper Eq. 9; smaller = more informative), one Ray task per candidate. Each set\n"
                    "contributes the first --batches x --batch-size images of a --seed permutation,\n"
                    "with eval transforms and the model in eval mode. Sets that are not role oe, hold\n"
                    "fewer than --batch-size images or cannot be read are listed with the reason.\n"
                    "Writes <out>/ranking.json; --select writes a config with data.oe = the best set.",
        epilog="example:\n  python launch.py rank-oe --id data/demo/id_train --candidates data/demo/oe_* "
               "\\\n      --backbone smallcnn --image-size 32 --k 16 --batch-size 64 --batches 8 "
               "--seed 0 \\\n      --select configs/tiny.yaml --select-out results/rank-oe/tiny-oe.yaml")
    p.add_argument("--id", required=True, help="ID shard dir (role id), e.g. the ID training set")
    p.add_argument("--candidates", nargs="+", required=True, help="candidate OE shard dirs (role oe)")
    p.add_argument("--checkpoint", help="a trained run's checkpoint_* folder (its backbone and "
                                        "image size/normalisation)")
    p.add_argument("--backbone", type=_backbone, metavar="{" + ",".join(BACKBONES) + f",{TIMM_PREFIX}NAME}}",
                   help="backbone when no --checkpoint (default resnet50; timm:NAME any timm model)")
    p.add_argument("--weights", default="", help="torchvision weights name (e.g. IMAGENET1K_V2), for timm "
                                                 "'pretrained', or a local .pth; default: random init")
    p.add_argument("--k", type=int, default=16, help="top-k singular values (default 16)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--batches", type=int, default=10, help="batches per set at most (default 10)")
    p.add_argument("--seed", type=int, default=0, help="picks the images (and a random init)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the checkpoint's, else 256)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per task (fractions allowed)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per task, e.g. 0.25 (0: CPU)")
    p.add_argument("--out", default="results/rank-oe", help="folder for ranking.json")
    p.add_argument("--select", metavar="CONFIG", help="training config whose data.oe gets the best set")
    p.add_argument("--select-out", metavar="PATH", help="where to write it (default <out>/selected.yaml)")
    common(p)
    p.set_defaults(run=run)
