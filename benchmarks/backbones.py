"""Per-epoch CPU time of each backbone on the tiny config (issue 32): the small CNN against
timm models, the worker's own epoch loop (``train/loop.py``) without Ray.

    python benchmarks/backbones.py                       # the quick embedded benchmark, built once
    python benchmarks/backbones.py --json backbones.json --epochs 3
    python benchmarks/backbones.py --smoke               # one model, 2 steps (tests/test_benchmarks.py)

For each ``model.name``: configs/tiny.yaml (32 px, EDGE, 32 ID + 32 OE images a step, 8 steps
an epoch over 256 ID training images) with that backbone, random init, one torch thread (as a
Ray Train worker on one CPU runs), ``--epochs`` epochs; an epoch's time is the CPU seconds of
the process (``time.process_time``: steady on a machine shared with other work) and its wall
seconds, data loading included. The first epoch holds one-off costs (allocator, first
kernels), so the table gives the mean of the later ones, and the feature dimension D.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["smallcnn", "timm:resnet10t", "timm:vit_tiny_patch16_224", "timm:convnext_zepto_rms"]


def epochs_of(name: str, data: Path, epochs: int, steps: int | None) -> dict:
    import torch

    from edge_ray.config import load_config
    from edge_ray.data import load_index, train_loader
    from edge_ray.models.networks import build_model
    from edge_ray.train import builders, loop
    from edge_ray.train.recipes import resolve_run

    cfg = resolve_run(load_config(ROOT / "configs" / "tiny.yaml", [
        f"model.name={name}", f"data.id_train={data / 'id_train'}", f"data.oe={data / 'oe_letters'}"]))
    torch.manual_seed(0)
    id_index, oe_index = load_index(cfg.data.id_train), load_index(cfg.data.oe)
    model = build_model(name, id_index.num_classes, image_size=cfg.data.image_size)
    per_epoch = id_index.num_samples // cfg.data.batch_size
    steps = min(steps or per_epoch, per_epoch)
    opt = builders.make_optimizer(model, cfg.train, cfg.loss.method)
    sched = builders.make_scheduler(opt, cfg.train, steps, cfg.loss.method)
    loss_fn = builders.make_loss_fn(cfg.loss)
    opts = loop.StepOptions(device=torch.device("cpu"))
    rows = []
    for epoch in range(epochs):
        loader = train_loader(id_index, oe_index, batch_size=cfg.data.batch_size, oe_batch_size=cfg.data.oe_batch_size,
                              image_size=cfg.data.image_size, epoch=epoch, seed=0, rank=0, world_size=1, num_workers=0,
                              hflip=False, mean=cfg.data.mean, std=cfg.data.std)
        cpu, wall = time.process_time(), time.perf_counter()
        stats = loop.train_epoch(model, itertools.islice(loader, steps), loss_fn, opt, sched, epoch=epoch, opts=opts)
        rows.append({"epoch": epoch + 1, "steps": stats["steps"], "cpu_s": round(time.process_time() - cpu, 3),
                     "wall_s": round(time.perf_counter() - wall, 3), "loss": stats["loss"]})
    later = rows[1:] or rows
    feature_dim = model.feature_dim if hasattr(model, "feature_dim") else None
    return {"model": name, "feature_dim": feature_dim, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "steps_per_epoch": steps, "epochs": rows,
            "cpu_s_per_epoch": round(sum(r["cpu_s"] for r in later) / len(later), 3),
            "wall_s_per_epoch": round(sum(r["wall_s"] for r in later) / len(later), 3)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, help="model.name values (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", help="the quick embedded benchmark's shards (default: built in a temp folder)")
    p.add_argument("--smoke", action="store_true", help="the first model only, 2 epochs of 2 steps")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="backbones-") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not (data / "id_train" / "index.json").is_file():
            from shards.demo import build_demo

            build_demo(data, seed=0, quick=True)
        models, epochs, steps = (args.models[:1], 2, 2) if args.smoke else (args.models, args.epochs, None)
        results = [epochs_of(name, data, epochs, steps) for name in models]
    print("| model.name | D | params (M) | steps/epoch | CPU s/epoch | wall s/epoch |\n|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| `{r['model']}` | {r['feature_dim']} | {r['params_m']} | {r['steps_per_epoch']} | "
              f"{r['cpu_s_per_epoch']} | {r['wall_s_per_epoch']} |")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": 1,
                       "load_average": os.getloadavg()}, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
