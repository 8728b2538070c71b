"""The training step against plain PyTorch's floor, layer by layer (issue 31, item 1).

    python benchmarks/floor.py                               # EDGE, demo batches, 125 steps
    python benchmarks/floor.py --method oe --steps 60 --json floor.json

The demo's model (small CNN, width 32), batches (32 ID + 32 OE images of 32 px), AdamW with
the one-cycle schedule and the method's loss, timed as four layers, side by side in one run
and in alternating order (so a loaded machine weighs on every layer alike):

  floor    a bare PyTorch loop on in-memory tensors, the loss written inline (BCE, the OE
           confidence term, EDGE's bottom-k hinge): what the work costs at least;
  engine   the project's step (train/loop.py: the loss registry, per-step metrics, EDGE's gap
           diagnostics) on the same in-memory tensors;
  reader   the engine fed by the project's reader (shards, PNG decode, crops, the decoded
           cache after the first epoch) instead of tensors;
  (Ray Train adds its start and stop around this: benchmarks/fixed_costs.py.)

One torch thread (a Ray Train worker on one CPU), CPU time of the process per step and
wall time; the ratio of each layer to the floor is the table's last column.
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


def floor_step_fn(method: str, alpha: float, beta: float, k: int, m: float):
    import torch
    import torch.nn.functional as F

    def step(model, opt, sched, x_id, y, x_oe):
        logits = model(torch.cat([x_id, x_oe]) if method != "bce" else x_id)
        l_id = logits[: len(x_id)]
        loss = F.binary_cross_entropy_with_logits(l_id, y)
        if method != "bce":
            l_oe = logits[len(x_id):]
            loss = loss + alpha * F.binary_cross_entropy_with_logits(l_oe, torch.zeros_like(l_oe))
            if method == "edge":
                e_id, e_oe = F.softplus(l_id).sum(1), F.softplus(l_oe).sum(1)
                low = torch.topk(e_id, k, largest=False).values.mean()
                loss = loss + beta * F.relu(e_oe - low + m).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    return step


def setup(method: str, data: Path, steps: int, seed: int = 0):
    import torch

    from edge_ray.config import load_config
    from edge_ray.models.networks import build_model
    from edge_ray.train import builders
    from edge_ray.train.recipes import resolve_run

    cfg = resolve_run(load_config(ROOT / "configs" / "demo.yaml", [
        f"loss.method={method}", f"data.id_train={data / 'id_train'}", f"data.oe={data / 'oe_letters'}", "loss.tau=0"]))
    torch.manual_seed(seed)
    model = build_model("smallcnn", 7, width=cfg.model.width, image_size=32)
    opt = builders.make_optimizer(model, cfg.train, method)
    sched = builders.make_scheduler(opt, cfg.train, steps, method)
    return cfg, model, opt, sched


def tensors(steps: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 3, 32, 32, generator=g), (torch.rand(32, 7, generator=g) < 0.3).float(),
             torch.randn(32, 3, 32, 32, generator=g)) for _ in range(steps)]


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def layer_floor(method, data, batches):
    cfg, model, opt, sched = setup(method, data, len(batches))
    step = floor_step_fn(method, cfg.loss.alpha, cfg.loss.beta, cfg.loss.k, cfg.loss.m)
    model.train()

    def run():
        for x_id, y, x_oe in batches:
            step(model, opt, sched, x_id, y, x_oe)
    return timed(run)


def layer_engine(method, data, batches):
    import torch

    from edge_ray.train import builders, loop

    cfg, model, opt, sched = setup(method, data, len(batches))
    loss_fn = builders.make_loss_fn(cfg.loss)
    opts = loop.StepOptions(device=torch.device("cpu"), **loop.gap_diag_options(cfg.loss))
    feed = [(x, y, o if method != "bce" else None) for x, y, o in batches]
    return timed(lambda: loop.train_epoch(model, feed, loss_fn, opt, sched, epoch=0, opts=opts))


def layer_reader(method, data, batches, epoch: int):
    import torch

    from edge_ray.data import load_index, train_loader
    from edge_ray.train import builders, loop

    cfg, model, opt, sched = setup(method, data, len(batches))
    loss_fn = builders.make_loss_fn(cfg.loss)
    opts = loop.StepOptions(device=torch.device("cpu"), **loop.gap_diag_options(cfg.loss))
    id_index = load_index(cfg.data.id_train)
    oe_index = load_index(cfg.data.oe) if method != "bce" else None
    loader = train_loader(id_index, oe_index, batch_size=32, oe_batch_size=32, image_size=32, epoch=epoch, seed=0,
                          rank=0, world_size=1, num_workers=0, hflip=False, crop_scale=cfg.data.crop_scale,
                          mean=cfg.data.mean, std=cfg.data.std, decoded_cache_mb=cfg.data.decoded_cache_mb)
    return timed(lambda: loop.train_epoch(model, itertools.islice(loader, len(batches)), loss_fn, opt, sched,
                                          epoch=0, opts=opts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="edge", choices=("bce", "oe", "edge"))
    p.add_argument("--steps", type=int, default=125, help="steps per layer (default 125: one demo epoch)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the layers, alternating (default 3)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from shards.demo import build_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        build_demo(data, seed=0, quick=True)
        batches = tensors(args.steps)
        layer_reader(args.method, data, batches[:4], epoch=0)  # warm: first-touch allocations, imports
        for rnd in range(args.rounds):
            order = ["floor", "engine", "reader"] if rnd % 2 == 0 else ["reader", "engine", "floor"]
            for layer in order:
                if layer == "floor":
                    cpu, wall = layer_floor(args.method, data, batches)
                elif layer == "engine":
                    cpu, wall = layer_engine(args.method, data, batches)
                else:
                    cpu, wall = layer_reader(args.method, data, batches, epoch=rnd)
                rows.append({"round": rnd, "layer": layer, "cpu_ms_per_step": 1000 * cpu / args.steps,
                             "wall_ms_per_step": 1000 * wall / args.steps})
                print(f"  round {rnd} {layer:<7} {rows[-1]['cpu_ms_per_step']:.1f} CPU-ms/step", flush=True)

    def median(layer, key):
        v = sorted(r[key] for r in rows if r["layer"] == layer)
        return v[len(v) // 2]

    base = median("floor", "cpu_ms_per_step")
    print(f"\n{args.method}, {args.steps} steps of 32 ID + 32 OE images (32 px), 1 torch thread, median of "
          f"{args.rounds} rounds")
    print(f"{'layer':<8} {'CPU ms/step':>12} {'wall ms/step':>13} {'x floor (CPU)':>14}")
    summary = {}
    for layer in ("floor", "engine", "reader"):
        c, w = median(layer, "cpu_ms_per_step"), median(layer, "wall_ms_per_step")
        summary[layer] = {"cpu_ms_per_step": round(c, 2), "wall_ms_per_step": round(w, 2), "x_floor": round(c / base, 2)}
        print(f"{layer:<8} {c:>12.1f} {w:>13.1f} {c / base:>14.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"method": args.method, "steps": args.steps, "rows": rows,
                                               "summary": summary, "machine": {"cpus": os.cpu_count(),
                                                                               "platform": platform.platform()}},
                                              indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
