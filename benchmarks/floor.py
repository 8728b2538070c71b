"""The training and the whole demo against plain PyTorch's floor (issue 31, item 1).

    python benchmarks/floor.py                               # the demo against its floor (~10 min, 2 cores)
    python benchmarks/floor.py --part layers --method oe     # the step alone, layer by layer
    python benchmarks/floor.py --part layers --backbone resnet50 --image-size 224 --batch 8 --steps 4
    python benchmarks/floor.py --smoke                       # layers, 6 steps (seconds)

--part demo (default): the floor is the demo's work as bare PyTorch on in-memory tensors
(channels-last, as the loaders give them), on the Train worker's two torch threads: per
method one timed epoch (its 125 steps of 32 ID + 32 OE images, AdamW one-cycle, the loss written inline, the validation forward) times the
epochs, plus the evaluation's and the OE ranking's forwards (ODIN's input-gradient pass
included) from a per-image rate. Then `python launch.py demo` runs as a user runs it (its
own process, a local Ray, MLflow into a temporary SQLite file) on the same shards, and its
own output gives each training's wall time, its epochs' worker seconds, their data wait and
the start and stop around them. The table gives each phase against its floor.

--part layers: the demo's model and batches timed as three layers, side by side in one run
and in alternating order (so a loaded machine weighs on every layer alike), one torch
thread, CPU time per step:

  floor    a bare PyTorch loop on in-memory tensors, the loss written inline (BCE, the OE
           confidence term, EDGE's bottom-k hinge): what the work costs at least;
  engine   the project's step (train/loop.py: the loss registry, per-step metrics, EDGE's gap
           diagnostics) on the same in-memory tensors;
  reader   the engine fed by the project's reader (shards, PNG decode, crops, the decoded
           cache after the first epoch) instead of tensors.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
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


def setup(method: str, data: Path, steps: int, seed: int = 0, backbone: str = "smallcnn", image_size: int = 32):
    import torch

    from edge_ray.config import load_config
    from edge_ray.models.networks import build_model
    from edge_ray.train import builders
    from edge_ray.train.recipes import resolve_run

    cfg = resolve_run(load_config(ROOT / "configs" / "demo.yaml", [
        f"loss.method={method}", f"data.id_train={data / 'id_train'}", f"data.oe={data / 'oe_letters'}", "loss.tau=0"]))
    torch.manual_seed(seed)
    model = build_model(backbone, 7, width=cfg.model.width, image_size=image_size)
    opt = builders.make_optimizer(model, cfg.train, method)
    sched = builders.make_scheduler(opt, cfg.train, steps, method)
    return cfg, model, opt, sched


def tensors(steps: int, seed: int = 0, batch: int = 32, image_size: int = 32):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(_fast(torch.randn(batch, 3, image_size, image_size, generator=g)),
             (torch.rand(batch, 7, generator=g) < 0.3).float(),
             _fast(torch.randn(batch, 3, image_size, image_size, generator=g))) for _ in range(steps)]


def _fast(x):
    """Images in channels-last memory: the layout the project's loaders hand the model, and the
    faster one for a CPU conv net (the small CNN's step ~15% faster): the floor is the best case."""
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def shape_of(batches) -> dict:
    """`setup`'s image size for the layers' batches."""
    return {"image_size": batches[0][0].shape[-1]}


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def layer_floor(method, data, batches, backbone="smallcnn"):
    cfg, model, opt, sched = setup(method, data, len(batches), backbone=backbone, **shape_of(batches))
    step = floor_step_fn(method, cfg.loss.alpha, cfg.loss.beta, cfg.loss.k, cfg.loss.m)
    model.train()

    def run():
        for x_id, y, x_oe in batches:
            step(model, opt, sched, x_id, y, x_oe)
    return timed(run)


def layer_engine(method, data, batches, backbone="smallcnn"):
    import torch

    from edge_ray.train import builders, loop

    cfg, model, opt, sched = setup(method, data, len(batches), backbone=backbone, **shape_of(batches))
    loss_fn = builders.make_loss_fn(cfg.loss)
    opts = loop.StepOptions(device=torch.device("cpu"), **loop.gap_diag_options(cfg.loss))
    feed = [(x, y, o if method != "bce" else None) for x, y, o in batches]
    return timed(lambda: loop.train_epoch(model, feed, loss_fn, opt, sched, epoch=0, opts=opts))


def layer_reader(method, data, batches, epoch: int, backbone="smallcnn"):
    import torch

    from edge_ray.data import load_index, train_loader
    from edge_ray.train import builders, loop

    cfg, model, opt, sched = setup(method, data, len(batches), backbone=backbone, **shape_of(batches))
    batch, size = batches[0][0].shape[0], batches[0][0].shape[-1]
    loss_fn = builders.make_loss_fn(cfg.loss)
    opts = loop.StepOptions(device=torch.device("cpu"), **loop.gap_diag_options(cfg.loss))
    id_index = load_index(cfg.data.id_train)
    oe_index = load_index(cfg.data.oe) if method != "bce" else None
    loader = train_loader(id_index, oe_index, batch_size=batch, oe_batch_size=batch, image_size=size, epoch=epoch, seed=0,
                          rank=0, world_size=1, num_workers=0, hflip=False, crop_scale=cfg.data.crop_scale,
                          mean=cfg.data.mean, std=cfg.data.std, decoded_cache_mb=cfg.data.decoded_cache_mb)
    stats = {}

    def run():
        stats.update(loop.train_epoch(model, itertools.islice(loader, len(batches)), loss_fn, opt, sched,
                                      epoch=0, opts=opts))
    cpu, wall = timed(run)
    return cpu, wall, int(stats["steps"])  # the loader may hold fewer batches than asked for


# ---------------------------------------------------------------------------------------------
# --part demo: `launch.py demo` against the floor of the same work

def demo_floor(data: Path, preset: dict, threads: int, repeats: int = 2) -> dict:
    """Seconds the demo's work costs as bare PyTorch on in-memory tensors, on `threads` torch
    threads (the Train worker's CPUs): per method one timed epoch (configs/demo.yaml's batches
    and image size, the validation forward; the fastest of `repeats`) times the epochs;
    EnergyOE's floor step is OE's (its energy hinge costs what the confidence term does).
    Then the evaluation's forwards (BCE: the fit set, the test set, the OOD sets and ODIN's
    input-gradient pass; the others: test and OOD) and the ranking's, from a per-image rate,
    in the chunks a CPU evaluation runs (`forward.CPU_EVAL_CHUNK`)."""
    import torch

    from edge_ray.config import load_config
    from edge_ray.evaluate.forward import CPU_EVAL_CHUNK
    from edge_ray.models.networks import build_model

    torch.set_num_threads(threads)
    recipe = load_config(ROOT / "configs" / "demo.yaml").data
    size = recipe.image_size
    bench = json.loads((data / "benchmark.json").read_text())
    n = {k: v["num_samples"] for k, v in bench["sets"].items()}
    steps = n["id_train"] // recipe.batch_size
    g = torch.Generator().manual_seed(0)
    batches = tensors(steps, batch=recipe.batch_size, image_size=size)
    val = _fast(torch.randn(n["id_val"], 3, size, size, generator=g))
    out = {"threads": threads, "steps_per_epoch": steps, "epochs": preset["epochs"], "methods": {}}
    for method in preset["methods"]:
        kind = "bce" if method == "bce" else ("edge" if method == "edge" else "oe")
        cfg, model, opt, sched = setup(kind, data, steps * preset["epochs"], image_size=size)
        step = floor_step_fn(kind, cfg.loss.alpha, cfg.loss.beta, cfg.loss.k, cfg.loss.m)
        model.train()
        for x_id, y, x_oe in batches[:3]:  # warm: first-touch allocations
            step(model, opt, sched, x_id, y, x_oe)

        def epoch():
            model.train()
            for x_id, y, x_oe in batches:
                step(model, opt, sched, x_id, y, x_oe)
            model.eval()
            with torch.no_grad():
                for part in val.split(CPU_EVAL_CHUNK):
                    model(part)
        wall = min(timed(epoch)[1] for _ in range(repeats))  # a floor: the fastest of `repeats` epochs
        out["methods"][method] = {"epoch_s": round(wall, 2), "training_s": round(wall * preset["epochs"], 2)}
        print(f"  floor {method:<10} {wall:6.2f} s an epoch x {preset['epochs']}", flush=True)

    model = build_model("smallcnn", 7, width=32, image_size=size).eval()
    x = _fast(torch.randn(2048, 3, size, size, generator=g))

    def forward():
        with torch.no_grad():
            for part in x.split(CPU_EVAL_CHUNK):
                model.forward_head(model.forward_features(part))

    def odin():  # ODIN: forward, input gradient, forward again
        for part in x.split(CPU_EVAL_CHUNK):
            p = part.clone().requires_grad_(True)
            model(p).sum().backward()
            with torch.no_grad():
                model(p - 0.001 * p.grad.sign())
    forward()
    fwd, grad = timed(forward)[1] / len(x), timed(odin)[1] / len(x)
    test_ood = n["id_test"] + sum(v for k, v in n.items() if k.startswith("ood_"))
    later = len(preset["methods"]) - 1
    images = {"bce": n["id_train"] + test_ood, "later": later * test_ood,
              "rank": 64 * 8 * (1 + len(bench["oe"]))}
    out["eval"] = {"forward_ms_per_image": round(1000 * fwd, 4), "odin_ms_per_image": round(1000 * grad, 4),
                   "images": images,
                   "eval_s": round(fwd * (images["bce"] + images["later"] + images["rank"]) + grad * test_ood, 2)}
    print(f"  floor evaluation + ranking {out['eval']['eval_s']:.2f} s", flush=True)
    return out


WORKER_JSON = re.compile(r"(\{\"epoch\": .*\})\s*$")
DONE = re.compile(r"done in (\d+)s")
TRAINING = re.compile(r"training (\w+) \(")
FINISHED = re.compile(r"finished in (\d+)s")


def parse_demo_log(text: str) -> dict:
    """The demo's own timings from its output: each training's wall ("done in"), its epochs'
    worker-side seconds and data waits (rank 0's JSON lines), the whole run ("finished in")."""
    runs, current = {}, None
    for line in text.splitlines():
        if (m := TRAINING.search(line)) and "[" in line:
            current = m.group(1)
            runs[current] = {"epochs": []}
        elif (m := WORKER_JSON.search(line)) and current:
            row = json.loads(m.group(1))
            runs[current]["epochs"].append({k: row[k] for k in ("seconds", "data_wait_s", "started_at", "finished_at")})
        elif (m := DONE.search(line)) and current:
            runs[current]["wall_s"] = float(m.group(1))
    finished = FINISHED.search(text)
    for r in runs.values():
        e = r["epochs"]
        r["epoch_s"] = round(sum(x["seconds"] for x in e), 2)
        r["data_wait_s"] = round(sum(x["data_wait_s"] for x in e), 2)
        r["between_epochs_s"] = round(sum(b["started_at"] - a["finished_at"] for a, b in zip(e, e[1:])), 2)
        if "wall_s" in r:
            r["start_stop_s"] = round(r["wall_s"] - r["epoch_s"] - r["between_epochs_s"], 2)
    return {"trainings": runs, "finished_s": float(finished.group(1)) if finished else None}


def run_demo(data: Path, out: Path, quick: bool) -> tuple[dict, float]:
    """`python launch.py demo` as a user runs it (its own process and local Ray), timed."""
    import subprocess

    cmd = [sys.executable, "launch.py", "demo", "--out", str(out), "--data", str(data)] + (["--quick"] if quick else [])
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out.parent / 'mlflow.db'}", "RAY_ADDRESS": ""}
    print("  " + " ".join(cmd[1:]), flush=True)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    printed = done.stdout + done.stderr
    (out.parent / "demo.log").write_text(printed)
    if done.returncode:
        raise SystemExit(f"the demo failed (exit {done.returncode}); its output: {out.parent / 'demo.log'}\n"
                         + printed[-3000:])
    return parse_demo_log(printed), wall


def demo_table(floor: dict, demo: dict, wall: float) -> dict:
    rows = []
    for method, f in floor["methods"].items():
        d = demo["trainings"].get(method, {})
        rows.append({"phase": f"train {method}", "floor_s": f["training_s"], "demo_s": d.get("wall_s"),
                     "epochs_s": d.get("epoch_s"), "data_wait_s": d.get("data_wait_s"),
                     "between_s": d.get("between_epochs_s"), "start_stop_s": d.get("start_stop_s")})
    train_floor = sum(r["floor_s"] for r in rows)
    train_demo = sum(r["demo_s"] or 0 for r in rows)
    trainings = {"phase": "trainings", "floor_s": round(train_floor, 2), "demo_s": train_demo,
                 **{k: round(sum(r[k] or 0 for r in rows), 2) for k in ("epochs_s", "data_wait_s", "between_s",
                                                                          "start_stop_s")}}
    whole_s = demo["finished_s"] or wall
    whole = {"phase": "whole demo", "floor_s": round(train_floor + floor["eval"]["eval_s"], 2), "demo_s": whole_s}
    rows += [trainings, {"phase": "ranking + evaluation + Ray start", "floor_s": floor["eval"]["eval_s"],
                         "demo_s": round(whole_s - train_demo, 1)}, whole]
    for r in rows:
        r["x_floor"] = round(r["demo_s"] / r["floor_s"], 2) if r["demo_s"] and r["floor_s"] else None
    print(f"\n{'phase':<34} {'floor s':>8} {'demo s':>7} {'x floor':>8} {'epochs s':>9} {'data wait':>10} "
          f"{'between':>8} {'start+stop':>11}")
    for r in rows:
        cells = [f"{r.get(k):>{w}.1f}" if isinstance(r.get(k), (int, float)) else f"{'':>{w}}"
                 for k, w in (("epochs_s", 9), ("data_wait_s", 10), ("between_s", 8), ("start_stop_s", 11))]
        print(f"{r['phase']:<34} {r['floor_s']:>8.1f} {r['demo_s'] or 0:>7.1f} {r['x_floor'] or 0:>8.2f} "
              + " ".join(cells))
    return {"rows": rows, "training_x_floor": trainings["x_floor"], "demo_x_floor": whole["x_floor"]}


def layers(args) -> dict:
    import torch

    torch.set_num_threads(1)
    from shards.demo import build_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        build_demo(data, seed=0, quick=True)
        batches = tensors(args.steps, batch=args.batch, image_size=args.image_size)
        layer_reader(args.method, data, batches[:2], epoch=0, backbone=args.backbone)  # warm: allocations, imports
        for rnd in range(args.rounds):
            order = ["floor", "engine", "reader"] if rnd % 2 == 0 else ["reader", "engine", "floor"]
            for layer in order:
                steps = args.steps
                if layer == "floor":
                    cpu, wall = layer_floor(args.method, data, batches, args.backbone)
                elif layer == "engine":
                    cpu, wall = layer_engine(args.method, data, batches, args.backbone)
                else:
                    cpu, wall, steps = layer_reader(args.method, data, batches, epoch=rnd, backbone=args.backbone)
                rows.append({"round": rnd, "layer": layer, "steps": steps, "cpu_ms_per_step": 1000 * cpu / steps,
                             "wall_ms_per_step": 1000 * wall / steps})
                print(f"  round {rnd} {layer:<7} {rows[-1]['cpu_ms_per_step']:.1f} CPU-ms/step ({steps} steps)",
                      flush=True)

    def median(layer, key):
        v = sorted(r[key] for r in rows if r["layer"] == layer)
        return v[len(v) // 2]

    base = median("floor", "cpu_ms_per_step")
    print(f"\n{args.method}, {args.backbone}, up to {args.steps} steps of {args.batch} ID + {args.batch} OE images "
          f"({args.image_size} px), 1 torch thread, median of {args.rounds} rounds")
    print(f"{'layer':<8} {'CPU ms/step':>12} {'wall ms/step':>13} {'x floor (CPU)':>14}")
    summary = {}
    for layer in ("floor", "engine", "reader"):
        c, w = median(layer, "cpu_ms_per_step"), median(layer, "wall_ms_per_step")
        summary[layer] = {"cpu_ms_per_step": round(c, 2), "wall_ms_per_step": round(w, 2), "x_floor": round(c / base, 2)}
        print(f"{layer:<8} {c:>12.1f} {w:>13.1f} {c / base:>14.2f}")
    return {"method": args.method, "backbone": args.backbone, "batch": args.batch, "image_size": args.image_size,
            "steps": args.steps, "rows": rows, "summary": summary}


def demo(args) -> dict:
    from edge_ray.demo.ray_demo import PRESETS
    from shards.demo import build_demo

    preset = PRESETS["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = Path(args.data) if args.data else tmp / "data"
        if not (data / "benchmark.json").exists():
            build_demo(data, seed=0, **preset["sizes"])
        print(f"floor: the demo's {'quick' if args.quick else 'full'} preset as bare PyTorch", flush=True)
        floor = demo_floor(data, preset, threads=args.threads, repeats=args.floor_repeats)
        print("the demo itself", flush=True)
        measured, wall = run_demo(data, tmp / "out", args.quick)
        if args.keep_log:
            Path(args.keep_log).write_text((tmp / "demo.log").read_text())
    table = demo_table(floor, measured, wall)
    print(f"\ntrainings {table['training_x_floor']}x the floor, the whole demo {table['demo_x_floor']}x "
          f"(demo process wall {wall:.0f} s)")
    return {"floor": floor, "demo": measured, "demo_process_wall_s": round(wall, 1), **table}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="demo", choices=("demo", "layers", "both"),
                   help="demo: `launch.py demo` against its floor (default, ~10 min on 2 cores); layers: the step "
                        "as floor / engine / reader in one process")
    p.add_argument("--quick", action="store_true", help="demo part: the demo's --quick preset")
    p.add_argument("--data", help="demo part: reuse these demo shards (built if missing)")
    p.add_argument("--threads", type=int, default=2,
                   help="demo part: torch threads of the floor (default 2: configs/demo.yaml's train.cpus_per_worker)")
    p.add_argument("--keep-log", help="demo part: keep the demo's output here")
    p.add_argument("--floor-repeats", type=int, default=2,
                   help="demo part: epochs timed per method for the floor, the fastest counts (default 2)")
    p.add_argument("--method", default="edge", choices=("bce", "oe", "edge"), help="layers part: the method")
    p.add_argument("--steps", type=int, default=125, help="layers part: steps per layer (default 125: one demo epoch)")
    p.add_argument("--rounds", type=int, default=3, help="layers part: rounds, alternating (default 3)")
    p.add_argument("--backbone", default="smallcnn", help="layers part: the network (default the demo's smallcnn; "
                   "e.g. resnet50 with --image-size 224 --batch 8 --steps 4)")
    p.add_argument("--image-size", type=int, default=32, help="layers part: input size (default 32)")
    p.add_argument("--batch", type=int, default=32, help="layers part: ID and OE images per step, each (default 32)")
    p.add_argument("--smoke", action="store_true", help="layers part, 6 steps, 1 round (seconds)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.smoke:
        args.part, args.steps, args.rounds = "layers", 6, 1

    result = {}
    if args.part in ("layers", "both"):
        result["layers"] = layers(args)
    if args.part in ("demo", "both"):
        result["demo"] = demo(args)
    if args.json:
        result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
