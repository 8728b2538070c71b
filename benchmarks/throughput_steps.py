"""The in-process parts of `throughput.py` (issue 9): (a) the step on a batch resident in
GPU memory, eager and compiled; (d) the compiled step fed by the GPU-decode loader, per
feeder arrangement, with CUDA-event step timing and an optional profiler trace; (e) the
loader alone. `throughput.py` runs them in a child process (`--synthetic-child`) so that
its own process holds no GPU memory while the Ray parts run.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

NUM_CLASSES = 20


def synthetic(args) -> dict:
    """(a): the step on batches already in GPU memory, eager then torch.compile in each of
    `--compile-modes`; with (d): the first mode's compiled step fed by the GPU-decode loader
    in every `--d-variants` arrangement, (e), the profile of the fastest arrangement, and
    for each further mode the fastest arrangement again."""
    import torch

    from edge_ray.train import builders, loop
    from edge_ray.config import LossConfig, TrainConfig
    from edge_ray.models.networks import build_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(args.model, NUM_CLASSES).to(device, memory_format=torch.channels_last)
    loss_cfg = LossConfig(k=min(32, args.batch_size))
    opt = builders.make_optimizer(model, TrainConfig())
    modes = compile_modes(args.compile_modes)
    # one-cycle over (a)'s steps: eager and each compile mode
    sched = builders.make_scheduler(opt, TrainConfig(epochs=1), (1 + len(modes)) * (args.warmup + args.steps))
    loss_fn = builders.make_loss_fn(loss_cfg)
    opts = loop.StepOptions(device=device, amp=cuda, channels_last=True, **loop.gap_diag_options(loss_cfg))
    s = args.image_size
    batch = (torch.randn(args.batch_size, 3, s, s, device=device),
             (torch.rand(args.batch_size, NUM_CLASSES, device=device) < 0.1).float(),
             torch.randn(args.oe_batch_size, 3, s, s, device=device))
    images = args.batch_size + args.oe_batch_size
    out = {"device": describe_device(torch, device)}
    with_d = "d" in args.parts.split(",")

    def timed(key: str, net) -> bool:
        """(a) for `net`: warm-up (compilation), then `--steps` timed steps; False if it failed."""
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:  # the worker's own epoch loop (loop.train_epoch) over the resident batch, n times
            loop.train_epoch(net, [batch] * args.warmup, loss_fn, opt, sched, epoch=1, opts=opts)
        except Exception as err:  # e.g. no C compiler for inductor: say why, go on without it
            if net is model:
                raise
            traceback.print_exc()
            out[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            return False
        warm = time.perf_counter() - start
        marks: list = []
        stats = loop.train_epoch(net, marked([batch] * args.steps, marks, cuda), loss_fn, opt, sched,
                                   epoch=1, opts=opts)
        seconds = stats["seconds"]
        out[key] = {"img_per_s": images * args.steps / seconds, "step_ms": 1e3 * seconds / args.steps,
                    "warmup_s": warm, "steps": args.steps, **gpu_spans(marks),
                    "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
                    "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None}
        print(f"(a) {key}: {out[key]['img_per_s']:.1f} img/s (warm-up {warm:.1f}s)", flush=True)
        return True

    timed("eager", model)
    for i, mode in enumerate(modes):
        key = "compiled" if i == 0 else f"compiled_{mode}"
        if i:
            torch._dynamo.reset()  # the next mode compiles afresh, not from the last one's cache
        net = torch.compile(model, backend=args.compile_backend, mode=None if mode == "default" else mode)
        if not timed(key, net):
            net = model if i == 0 else None  # the first mode's (d) falls back to eager
        if not with_d or net is None:
            continue
        out.setdefault("in_process", {})
        todo = variants(args.d_variants) if i == 0 else [f"{mode}:{best_of(out['in_process'])}"]
        for variant in todo:
            # Saved after each part: a CUDA error aborts the process and would lose them all.
            save_partial(args, out)
            try:
                out["in_process"][variant] = loader_epoch(args, net, loss_fn, opt, opts, variant)
            except Exception as err:  # a later mode's failure keeps the rest
                if i == 0:
                    raise
                traceback.print_exc()
                out["in_process"][variant] = {"error": f"{type(err).__name__}: {err}", "variant": variant}
        if i == 0:
            save_partial(args, out)
            out["decode_only"] = decode_only(args, opts)
            if args.profile_dir:  # a profiler failure loses nothing measured before it
                save_partial(args, out)
                out["profile"] = profile_steps(args, net, loss_fn, opt, opts, best_of(out["in_process"]))
    return out


def compile_modes(text: str) -> list[str]:
    """'default,reduce-overhead' -> checked torch.compile modes (`models.COMPILE_MODES`)."""
    from edge_ray.models import COMPILE_MODES

    out = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in out if m not in COMPILE_MODES]
    if bad or not out:
        raise SystemExit(f"--compile-modes {text!r}: choose from {COMPILE_MODES}")
    return out


VARIANT_FORM = "[mode:]feeder/crops[/cpu=share][/pin=0|1]"


def parse_variant(text: str) -> dict:
    """VARIANT_FORM -> {mode (None: the first --compile-modes one), feeder, crops,
    cpu_share, pin}: model.compile_mode and the data.gpu_feeder / gpu_crops /
    cpu_decode_share settings of one (d) or (c) run, e.g. 'inline/batched/cpu=0.25';
    `pin` (in-process (d) only): whether the DataLoader page-locks the packed batches,
    None = the loader's default (yes on CUDA), 'pin=0' reproduces runs 1-6."""
    from edge_ray.models import COMPILE_MODES
    from edge_ray.data.gpu import GPU_CROPS, GPU_FEEDERS

    mode, _, rest = text.strip().rpartition(":")
    parts = rest.split("/")
    ok = len(parts) >= 2 and parts[0] in GPU_FEEDERS and parts[1] in GPU_CROPS and \
        (not mode or mode in COMPILE_MODES)
    out = {"mode": mode or None, "feeder": parts[0], "crops": parts[1] if len(parts) > 1 else None,
           "cpu_share": 0.0, "pin": None}
    for field in parts[2:]:
        key, _, value = field.partition("=")
        try:
            if key == "cpu" and 0 <= float(value) <= 1:
                out["cpu_share"] = float(value)
            elif key == "pin" and value in ("0", "1"):
                out["pin"] = value == "1"
            else:
                raise ValueError(field)
        except ValueError:
            ok = False
    if not ok:
        raise SystemExit(f"variant {text!r} is not {VARIANT_FORM} with feeder in {GPU_FEEDERS}, "
                         f"crops in {GPU_CROPS}, mode in {COMPILE_MODES}, share in [0, 1]")
    return out


def variants(text: str) -> list[str]:
    """'serial/batched,inline/batched/cpu=0.4' -> the checked variant names (`parse_variant`);
    a repeated name is refused: its second result would overwrite the first."""
    out = [v.strip() for v in text.split(",") if v.strip()]
    for i, v in enumerate(out):
        parse_variant(v)
        if v in out[:i]:
            raise SystemExit(f"variant {v!r} is listed twice in {text!r}: its results are keyed by name")
    return out


def best_of(in_process: dict, loader_default_pinning: bool = False) -> str | None:
    """The name of the fastest (d) run, or None when none ran; with
    `loader_default_pinning`, of those that left pinning to the loader (as the Ray worker
    does: (c) can only repeat those)."""
    rates = {v: r["img_per_s"] for v, r in in_process.items() if r.get("img_per_s")
             and not (loader_default_pinning and parse_variant(v)["pin"] is not None)}
    return max(rates, key=rates.get) if rates else None


def marked(batches, marks: list, cuda: bool, limit: int | None = None, profiler=None):
    """Yield `batches`, recording a CUDA event on the training stream when each step
    starts (its input is ready) and when the next batch is asked for (the step is
    queued): the GPU's time per step, and the gaps in which it waited for input or host."""
    import torch

    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            return
        start = None
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        yield batch
        if cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            marks.append((start, end))
        if profiler is not None:
            profiler.step()


def gpu_spans(marks: list, skip: int = 3) -> dict:
    """From `marked`'s events: median GPU ms per step (`gpu_step_ms`), mean ms between a
    step's end and the next one's start (`gpu_gap_ms`) and the share of the span the
    training stream was busy with steps (`gpu_busy`); the first `skip` steps left out."""
    import torch

    marks = marks[skip:]
    if len(marks) < 2:
        return {}
    torch.cuda.synchronize()
    steps = [s.elapsed_time(e) for s, e in marks]
    gaps = [marks[i][1].elapsed_time(marks[i + 1][0]) for i in range(len(marks) - 1)]
    span = marks[0][0].elapsed_time(marks[-1][1])
    return {"gpu_step_ms": float(np.median(steps)), "gpu_gap_ms": float(np.mean(gaps)),
            "gpu_busy": sum(steps) / span if span > 0 else None}


def profile_steps(args, net, loss_fn, opt, opts, variant: str) -> dict:
    """A torch.profiler trace of 8 steps of (d) with `variant`, after 30 steps of warm-up
    (fewer of both on a short epoch):
    a gzipped Chrome trace (open in Perfetto: one row per CUDA stream and host thread) and
    the kernel table, in `--profile-dir`."""
    import gzip

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    out_dir = Path(args.profile_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = make_loader(args, opts, variant)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if opts.device.type == "cuda" else [])
    steps = len(loader)
    wait = min(30, max(0, steps - 12))
    active = max(1, min(8, steps - wait - 2))
    marks: list = []
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=1, active=active, repeat=1)) as prof:
        engine_epoch(net, marked(loader, marks, opts.device.type == "cuda", limit=wait + active + 2,
                                 profiler=prof), loss_fn, opt, opts)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        trace = out_dir / "trace_d.json.gz"
        with open(raw, "rb") as src, gzip.open(trace, "wb") as dst:
            shutil.copyfileobj(src, dst)
    sort = "self_cuda_time_total" if opts.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=45)
    (out_dir / "profile_d.txt").write_text(f"(d) {variant}, {active} steps after {wait + 1}\n\n{table}\n")
    del loader
    torch.cuda.empty_cache() if opts.device.type == "cuda" else None
    print(f"(d) {variant}: profile of {active} steps in {out_dir}", flush=True)
    return {"variant": variant, "trace": str(trace), "table": str(out_dir / "profile_d.txt"),
            "trace_mib": round(trace.stat().st_size / 2**20, 2), **gpu_spans(marks, skip=wait)}


def save_partial(args, out: dict) -> None:
    if args.synthetic_child:
        Path(args.synthetic_child).write_text(json.dumps({**out, "partial": True}))


def make_loader(args, opts, variant: str = "serial/batched"):
    """The GPU-decode loader of `variant` (`parse_variant`), its workers started two seconds
    ago, as the trainer starts epoch e+1's workers when epoch e begins."""
    from edge_ray.data import load_index, train_loader

    v = parse_variant(variant)
    shards = Path(args.shards_dir)
    loader = train_loader(load_index(shards / "id", role="id"), load_index(shards / "oe", role="oe"),
                          batch_size=args.batch_size, oe_batch_size=args.oe_batch_size,
                          image_size=args.image_size, epoch=0, seed=0, rank=0, world_size=1,
                          num_workers=args.loader_workers, decode="gpu", device=opts.device,
                          gpu_feeder=v["feeder"], gpu_crops=v["crops"], cpu_decode_share=v["cpu_share"],
                          pin_memory=v["pin"])
    loader.start()
    time.sleep(2.0)
    return loader


def engine_epoch(net, batches, loss_fn, opt, opts) -> dict:
    from edge_ray.train import builders, loop
    return loop.train_epoch(net, batches, loss_fn, opt, None, epoch=1, opts=opts)


def decode_only(args, opts) -> dict:
    """(e): one epoch of the GPU-decode loader with no training step: how fast the input
    path runs with the GPU to itself (its GPU cost: (e) far above (a) leaves room)."""
    import torch

    loader = make_loader(args, opts)
    start, images, steps = time.perf_counter(), 0, 0
    for batch in loader:
        images += batch[0].shape[0] + (batch[2].shape[0] if batch[2] is not None else 0)
        steps += 1
    if opts.device.type == "cuda":
        torch.cuda.synchronize(opts.device)
    seconds = time.perf_counter() - start
    rate = images / max(seconds, 1e-9)
    print(f"(e) GPU-decode loader alone: {rate:.1f} img/s", flush=True)
    return {"img_per_s": rate, "steps": steps, "seconds": seconds,
            "input_s": {k: round(v, 3) for k, v in loader.timings.items()}}


def loader_epoch(args, net, loss_fn, opt, opts, variant: str) -> dict:
    """(d): one epoch of the GPU-decode loader feeding the compiled step, in this process,
    with the feeder arrangement and crop resize of `variant` ('feeder/crops')."""
    import torch

    cuda = opts.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(opts.device)
    start = time.perf_counter()
    loader = make_loader(args, opts, variant)
    marks: list = []
    stats = engine_epoch(net, marked(loader, marks, cuda), loss_fn, opt, opts)
    rate, wait = stats["images_per_s"], stats["data_wait_s"] / stats["seconds"]
    spans = gpu_spans(marks) if cuda else {}
    busy = f", training stream busy {100 * spans['gpu_busy']:.1f}%" if spans.get("gpu_busy") else ""
    print(f"(d) {variant}: {rate:.1f} img/s, waiting for input {100 * wait:.1f}% of the time{busy}",
          flush=True)
    return {"img_per_s": rate, "steps": stats["steps"], "variant": variant,
            "data_wait_s": stats["data_wait_s"], "data_wait_fraction": wait, "sync_wait_s": stats["sync_wait_s"],
            "wall_s_incl_worker_start": time.perf_counter() - start, **spans,
            "input_s": {k: round(v, 3) for k, v in loader.timings.items()},
            "decoded_on": "cpu (fallback)" if loader.decoder is None else str(loader.decoder.device),
            "peak_reserved_gib": torch.cuda.max_memory_reserved(opts.device) / 2**30 if cuda else None}


def describe_device(torch, device) -> dict:
    import torchvision

    info = {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    else:
        info["card"] = "cpu"
    return info


