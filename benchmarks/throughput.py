"""End-to-end training throughput against the compute limit (issue 9).

One run, one GPU, the same ResNet-50 EDGE step and epoch loop throughout (bf16 autocast,
channels_last, 128 ID + 128 OE images in one forward, SGD, the EDGE loss,
`loop.train_epoch`, which never waits for the GPU mid-epoch):

  (a) synthetic    one batch resident in GPU memory, eager and torch.compile (in each of
                   `--compile-modes`): the limit is the fastest compiled;
  (b) ray, cpu     the project's Ray Train worker (`run_training`, 1 GPU worker) on JPEG
                   shards, decoded by PIL in DataLoader workers (data.decode=cpu);
  (c) ray, gpu     the same with data.decode=gpu (nvJPEG + crops on the GPU), its GPU
                   stage arranged as `--c-variant` (default: the fastest (d));
  (d) diagnostic   (a)'s compiled model fed by `train_loader(decode="gpu")` in-process,
                   no Ray, once per `--d-variants` arrangement ('feeder/crops/cpu=share':
                   data.gpu_feeder, data.gpu_crops, data.cpu_decode_share; '/pin=0': the
                   packed batches not page-locked, as in runs 1-6) in the first compile
                   mode, the fastest again in each further mode ('mode:...');
                   where (c) loses against (a), this says whether Ray is the cause;
                   `--profile-dir` adds a torch.profiler trace of 8 steps of the fastest;
  (e) diagnostic   the GPU-decode loader alone, no training: the input path's own speed.
  (f) CPU input    the CPU-decode input path alone (no model, no GPU), as benchmarks/reader.py
                   measures it: CPU ms per image (ID + OE) of the project's reader and of the
                   plain webdataset + torchvision baseline on the same shards and sizes, and
                   the feed rate a node would reach with `--loader-workers` loader processes:
                   workers x 1000 / CPU ms per image. Beside (a)'s compiled rate (when a GPU
                   is there) it says whether that node shape can feed >= 0.95 x the compiled
                   step; on a CPU-only machine it is the prediction to check on the GPU node.

Where CUDA is there, (a) and (d) also time each step on the training stream with CUDA
events: "GPU ms/step" (median) against (a)'s says whether the step itself got slower
beside the decode work; "training stream busy" below 100% means it waited for input.

    python benchmarks/throughput.py --json throughput.json      # on a GPU host
    python benchmarks/throughput.py --smoke                     # tiny, CPU, under a minute

img/s counts ID + OE images. (a) times `--steps` steps after `--warmup` (compilation
included in the warm-up, reported apart); (d) times one epoch whose loader workers were
started two seconds ahead, as the trainer starts epoch e+1's workers when epoch e begins.
(b) and (c) read the worker's per-epoch `images_per_s`; the first epoch (compilation,
cuDNN autotuning, cold page cache) is a warm-up and only later epochs count. (a) and (d)
run in a child process so that the driver holds no GPU memory during (b) and (c); GPU
memory of (b) and (c) is the peak of `nvidia-smi` during the run. Synthetic shards
(gradient + noise JPEGs, quality 90, 4:2:0) are built in `--shards-dir`, or reused from
there when an earlier run left the same sizes.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# The Train controller polls its workers this often; 2 s (the default) adds idle seconds per run.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from benchmarks.throughput_steps import (NUM_CLASSES, VARIANT_FORM, best_of, compile_modes,  # noqa: E402
                                         parse_variant, synthetic, variants)
from shards.plan import Item  # noqa: E402
from shards.writer import convert  # noqa: E402


# (d)'s arrangements: batched crops (per-image lost 4-5% in runs 3 and 4), the serial and
# inline feeders (inline fastest in run 5), nvJPEG alone or with a share decoded by PIL
# (0.55: with the loader's pin thread staging the PIL pixels, a larger share may pay; 14
# workers decoded 3,546 img/s alone in run 2, above 55% of the limit's ~4,400);
# inline/batched/pin=0 repeats runs 1-6 (packed batches not page-locked) beside the pinned default
D_VARIANTS = ("serial/batched,inline/batched/pin=0,inline/batched,"
              "inline/batched/cpu=0.25,inline/batched/cpu=0.4,inline/batched/cpu=0.55")
SMOKE_D_VARIANTS = "serial/batched,inline/per_image/pin=0,pipelined/batched/cpu=0.25"

# ------------------------------------------------------------------ shards


def _jpeg(gen: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    ramp = np.linspace(0, 1, size, dtype=np.float32)
    a, b = gen.uniform(0, 255, 3).astype(np.float32), gen.uniform(0, 255, 3).astype(np.float32)
    base = a * ramp[:, None, None] / 2 + b * ramp[None, :, None] / 2
    noise = gen.integers(-40, 41, (size, size, 3), dtype=np.int16)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _items(job) -> list:
    """One chunk's samples (JPEG bytes generated in a pool worker; seeded by its first index)."""
    first, count, size, role, seed = job
    gen = np.random.default_rng([seed, first])
    return [Item(f"s{i:07d}", f"synthetic {i}",
                 tuple(sorted(set(gen.integers(NUM_CLASSES, size=3).tolist()))) if role == "id" else (),
                 data=_jpeg(gen, size)) for i in range(first, first + count)]


def make_set(out: Path, name: str, role: str, n: int, size: int, *, seed: int) -> Path:
    """A shard set of n synthetic size x size JPEGs, written by the converters' own writer
    (shards.writer); kept when its index says it already has these sizes."""
    index = out / "index.json"
    if index.is_file():
        meta = json.loads(index.read_text())
        if meta.get("num_samples") == n and meta.get("source", {}).get("bench_source_size") == size:
            return out
        shutil.rmtree(out)
    per = 512 if n >= 4096 else max(1, n // 4)
    jobs = [(first, min(per, n - first), size, role, seed) for first in range(0, n, per)]
    with multiprocessing.get_context("fork").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        items = [item for chunk in pool.map(_items, jobs) for item in chunk]
    convert(items, str(out), name=name, role=role,
            classes=[f"class{c}" for c in range(NUM_CLASSES)] if role == "id" else [],
            shard_size=per, source={"bench_source_size": size}, progress=False)
    return out


def run_synthetic_child(argv: list[str], shards: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="throughput-a-") as tmp:
        out = Path(tmp) / "a.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--shards-dir", str(shards),
               "--synthetic-child", str(out)]
        proc = subprocess.run(cmd, timeout=timeout)
        if not out.is_file():
            raise RuntimeError(f"the synthetic child exited with {proc.returncode}")
        result = json.loads(out.read_text())
        if proc.returncode != 0:  # what it finished before dying is kept, and the death noted
            result["error"] = f"the synthetic child exited with {proc.returncode} after: " + \
                ", ".join(k for k in result if k not in ("device", "partial"))
        return result


# ------------------------------------------------------------------ (b), (c) Ray Train


class GpuMemoryPeak:
    """Peak `nvidia-smi` memory.used (GiB) of GPU 0 while the block runs; None without it."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self._stop = interval, None, threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                       "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                used = float(text.strip().splitlines()[0]) / 1024
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()


def ray_run(args, decode: str, id_dir: Path, oe_dir: Path, storage: Path, use_gpu: bool,
            variant: str = "serial/batched") -> dict:
    """(b) or (c): `run_training` with one Ray Train worker; img/s of the epochs after the
    first. (c) runs the GPU stage as `variant` ('[mode:]feeder/crops[/cpu=share]': the
    worker leaves pinning to the loader, so no '/pin='), (b) and (c) compile in the
    variant's mode (default: the first of --compile-modes)."""
    from edge_ray.config import from_dict
    from edge_ray.train.ray_trainer import run_training

    cpus = os.cpu_count() or 2
    v = parse_variant(variant)
    mode = v["mode"] or compile_modes(args.compile_modes)[0]
    cfg = from_dict({
        "data": {"id_train": str(id_dir), "oe": str(oe_dir), "image_size": args.image_size,
                 "batch_size": args.batch_size, "oe_batch_size": args.oe_batch_size,
                 "loader_workers": args.loader_workers, "decode": decode,
                 "gpu_feeder": v["feeder"], "gpu_crops": v["crops"], "cpu_decode_share": v["cpu_share"]},
        "model": {"name": args.model, "channels_last": True, "compile": args.compile_worker,
                  "compile_mode": mode},
        "loss": {"method": "edge", "k": min(32, args.batch_size)},
        "train": {"epochs": args.epochs, "num_workers": 1, "use_gpu": use_gpu, "amp": True,
                  "cpus_per_worker": float(max(1, cpus - 1)), "storage_path": str(storage),
                  "run_name": f"throughput-{decode}-{int(time.time())}", "val_every": 0, "num_to_keep": 1}})
    start = time.perf_counter()
    with GpuMemoryPeak() as memory:
        summary = run_training(cfg)
    epochs = [{k: v for k, v in h.items() if k in ("epoch", "steps", "images", "seconds", "images_per_s",
                                                   "data_wait_s", "sync_wait_s") or k.startswith("input_")}
              for h in summary.history]
    counted = [e for e in epochs if e["epoch"] > 1] or epochs
    seconds = sum(e["seconds"] for e in counted)
    rate = sum(e["images"] for e in counted) / seconds
    wait = sum(e["data_wait_s"] or 0.0 for e in counted) / seconds
    print(f"({'b' if decode == 'cpu' else 'c'}) ray, {decode} decode: {rate:.1f} img/s, waiting for "
          f"input {100 * wait:.1f}% of the time", flush=True)
    return {"img_per_s": rate, "decode": decode, "variant": variant if decode == "gpu" else None,
            "epochs": epochs, "wall_s": time.perf_counter() - start,
            "data_wait_fraction": wait,
            "peak_gpu_memory_gib": memory.peak, "compile": args.compile_worker,
            "compile_mode": mode if args.compile_worker else None,
            "loader_workers": args.loader_workers}


def start_ray(args, use_gpu: bool) -> bool:
    """Start a local Ray for (b) and (c); True if this call started it (and should stop
    it), False when the process already runs one (the test session's)."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's processes inherit this environment: the workers find edge_ray through it.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), num_gpus=1 if use_gpu else 0,
             include_dashboard=False, log_to_driver=not args.smoke)
    return True


# ------------------------------------------------------------------ (f) CPU input path


def cpu_input(args, id_dir: Path, oe_dir: Path) -> dict:
    """(f): CPU ms per image of the project's reader and the plain baseline, interleaved,
    best of --f-repeat; the predicted feed of --loader-workers processes at that cost."""
    from benchmarks.reader import measure
    from edge_ray.data import load_index

    id_index, oe_index = load_index(str(id_dir)), load_index(str(oe_dir))
    runs: dict = {"project": [], "baseline": []}
    for _ in range(args.f_repeat):
        for arrangement in runs:
            runs[arrangement].append(measure(id_index, oe_index, workers=args.f_workers,
                                             image_size=args.image_size, batch_size=args.batch_size,
                                             oe_batch_size=args.oe_batch_size, arrangement=arrangement))
    out: dict = {"measured_workers": args.f_workers, "node_workers": args.loader_workers}
    for arrangement, rs in runs.items():
        best = min(rs, key=lambda r: r["cpu_ms_per_img"])
        feed = args.loader_workers * 1000.0 / best["cpu_ms_per_img"]
        out[arrangement] = {**best, "cpu_ms_per_img_runs": [r["cpu_ms_per_img"] for r in rs],
                            "predicted_feed_img_s": round(feed, 1)}
        print(f"(f) {arrangement}: {best['cpu_ms_per_img']:.3f} CPU ms/img (best of {len(rs)}, "
              f"{args.f_workers} workers here) -> {args.loader_workers} loader workers feed "
              f"~{feed:,.0f} img/s", flush=True)
    out["cpu_vs_baseline"] = round(out["project"]["cpu_ms_per_img"] / out["baseline"]["cpu_ms_per_img"], 3)
    out["img_per_s"] = out["project"]["predicted_feed_img_s"]
    return out


def feed_verdict(results: dict, loader_workers: int) -> str | None:
    """(f)'s predicted feed against 0.95 x (a)'s compiled rate, when both are there."""
    f = results.get("f_cpu_input", {})
    if "project" not in f:
        return None
    feed, ms = f["project"]["predicted_feed_img_s"], f["project"]["cpu_ms_per_img"]
    compiled = max((r.get("img_per_s") or 0 for k, r in results.get("a_synthetic", {}).items()
                    if k.startswith("compiled") and isinstance(r, dict)), default=0)
    line = (f"predicted CPU-decode feed: {loader_workers} loader workers x 1000 / {ms:.3f} ms = {feed:,.0f} img/s "
            f"(project reader, {f['cpu_vs_baseline']:.2f}x the baseline's CPU per image)")
    if compiled:
        need = 0.95 * compiled
        workers = int(np.ceil(need * ms / 1000.0))
        line += (f"; 0.95 x (a) compiled = {need:,.0f} img/s needs {workers} loader workers: "
                 f"{'reached' if feed >= need else 'NOT reached'} with {loader_workers}")
    else:
        line += "; no (a) here: compare it with 0.95 x the compiled step measured on the GPU node"
    return line


# ------------------------------------------------------------------ report


def rows(results: dict) -> list[tuple[str, str, dict]]:
    """(key, label, result) per measured row, (d) variants in the order they ran."""
    a = results.get("a_synthetic", {})
    out = [("a_eager", "(a) synthetic, eager", a.get("eager", {})),
           ("a_compiled", "(a) synthetic, torch.compile", a.get("compiled", {}))]
    out += [(f"a_{key}", f"(a) synthetic, torch.compile {key.partition('_')[2]}", r)
            for key, r in a.items() if key.startswith("compiled_")]
    if "b_ray_cpu_decode" in results:  # the parts that ran (--parts): (b) may not have
        out.append(("b_ray_cpu_decode", "(b) Ray Train worker, CPU decode", results["b_ray_cpu_decode"]))
    c = results.get("c_ray_gpu_decode", {})
    out.append(("c_ray_gpu_decode", "(c) Ray Train worker, GPU decode" + (f", {c['variant']}" if c.get("variant") else ""),
                c))
    for variant, r in a.get("in_process", {}).items():
        out.append((f"d_{variant}", f"(d) no Ray: compiled step + GPU-decode loader, {variant}", r))
    if "decode_only" in a:
        out.append(("e_decode_only", "(e) GPU-decode loader alone, no training", a["decode_only"]))
    f = results.get("f_cpu_input", {})
    if f:
        out.append(("f_cpu_input", f"(f) CPU-decode input alone, predicted for {f.get('node_workers')} loader "
                                   "workers (img/s = feed)", f))
    return out


def best_variant(results: dict, loader_default_pinning: bool = False) -> str | None:
    """The (d) variant that trained fastest, or None when (d) did not run (`best_of`)."""
    return best_of(results.get("a_synthetic", {}).get("in_process", {}), loader_default_pinning)


def summarise(results: dict, smoke: bool = False) -> dict:
    table_rows = rows(results)
    rates = {k: r.get("img_per_s") for k, _, r in table_rows}
    # the limit: the fastest compiled step, whichever --compile-modes mode gave it
    compiled = max((v for k, v in rates.items() if k.startswith("a_compiled") and v), default=None)
    ratio = {k: (v / compiled if v and compiled else None) for k, v in rates.items()}
    memory = {k: r.get("peak_gpu_memory_gib", r.get("peak_reserved_gib")) for k, _, r in table_rows}
    wait = {k: r.get("data_wait_fraction") for k, _, r in table_rows}
    busy = {k: r.get("gpu_busy") for k, _, r in table_rows}
    step = {k: r.get("gpu_step_ms") for k, _, r in table_rows}
    c = ratio["c_ray_gpu_decode"]
    known = [m for m in memory.values() if m is not None]
    return {"img_per_s": rates, "ratio_to_a_compiled": ratio, "gpu_memory_gib": memory, "data_wait": wait,
            "gpu_busy": busy, "gpu_step_ms": step, "labels": {k: label for k, label, _ in table_rows},
            "best_d_variant": best_variant(results),
            "target": {"c_over_a_compiled_min": 0.95, "memory_max_gib": 60,
                       "met": None if c is None or smoke else bool(c >= 0.95 and all(m < 60 for m in known))}}


def table(summary: dict, meta: dict) -> str:
    dev = meta.get("device", {})
    lines = [f"card: {dev.get('card', '?')} | torch {dev.get('torch', '?')} | torchvision "
             f"{dev.get('torchvision', '?')} | CUDA {dev.get('cuda', '?')} | ray {meta.get('ray', '?')} | "
             f"Python {meta.get('python')} | {meta.get('cpus')} CPUs",
             f"model {meta['model']}, {meta['image_size']}px, batch {meta['batch_size']} ID + "
             f"{meta['oe_batch_size']} OE, {meta['id_images']} ID / {meta['oe_images']} OE JPEGs of "
             f"{meta['source_size']}px, {meta['loader_workers']} loader workers", "",
             "| measurement | img/s | × (a) compiled | GPU memory GiB | waiting for input | GPU ms/step | training stream busy |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(value, spec: str, scale: float = 1.0) -> str:
        return "—" if value is None else format(value * scale, spec)

    for key, label in summary["labels"].items():
        lines.append(f"| {label} | {fmt(summary['img_per_s'][key], ',.0f')} | "
                     f"{fmt(summary['ratio_to_a_compiled'][key], '.2f')} | {fmt(summary['gpu_memory_gib'][key], '.1f')} | "
                     f"{fmt(summary['data_wait'][key], '.1f', 100)}{'' if summary['data_wait'][key] is None else '%'} | "
                     f"{fmt(summary['gpu_step_ms'][key], '.1f')} | "
                     f"{fmt(summary['gpu_busy'][key], '.1f', 100)}{'' if summary['gpu_busy'][key] is None else '%'} |")
    met = summary["target"]["met"]
    verdict = "n/a" if met is None else "met" if met else "NOT met"
    lines += ["", f"target (c) >= 0.95 x (a) compiled and < 60 GiB: {verdict}"]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, smallcnn, CPU-friendly")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--shards-dir", help="build (or reuse) the JPEG shard sets here (default: a temp dir)")
    p.add_argument("--parts", default="f,a,d,c,b", help="which of a, b, c, d, f to run; b and c in this order "
                   "(f alone on a CPU-only machine: the predicted feed rate)")
    p.add_argument("--f-workers", type=int, default=2, help="(f): loader workers measured on this machine "
                   "(CPU ms per image, which is what the prediction scales by --loader-workers)")
    p.add_argument("--f-repeat", type=int, default=3, help="(f): runs per arrangement, best (lowest CPU) kept")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--id-images", type=int, default=32768)
    p.add_argument("--oe-images", type=int, default=4096)
    p.add_argument("--source-size", type=int, default=320, help="side of the synthetic JPEGs")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--oe-batch-size", type=int, default=128)
    p.add_argument("--loader-workers", type=int, default=14)
    p.add_argument("--epochs", type=int, default=2, help="Ray runs: the first is a warm-up")
    p.add_argument("--warmup", type=int, default=15, help="(a): steps before timing")
    p.add_argument("--steps", type=int, default=40, help="(a): timed steps")
    p.add_argument("--compile-backend", default="inductor", help="(a) compiled: torch.compile backend")
    p.add_argument("--compile-modes", default="default",
                   help="torch.compile modes (model.compile_mode), comma-separated: (a) runs each; (d) runs "
                        "every --d-variants arrangement in the first and the fastest one again in each "
                        "other, e.g. 'default,reduce-overhead' (CUDA graphs: less host work per step)")
    p.add_argument("--no-compile-worker", dest="compile_worker", action="store_false",
                   help="(b), (c): run the worker's model eager (model.compile=false)")
    p.add_argument("--d-variants", default=None,
                   help="(d): GPU-stage arrangements to time, " + VARIANT_FORM + " (data.gpu_feeder / "
                        "data.gpu_crops / data.cpu_decode_share, decoded by PIL in the loader workers; pin=0: "
                        "packed batches not page-locked); the fastest is profiled with --profile-dir (default: " + D_VARIANTS +
                        "; with --smoke: " + SMOKE_D_VARIANTS + ")")
    p.add_argument("--c-variant", default="best",
                   help="(c): [mode:]feeder/crops[/cpu=share] for the Ray worker, or 'best': the fastest (d) "
                        "run without /pin= (the worker leaves pinning to the loader), its compile mode included")
    p.add_argument("--profile-dir", help="(d): write a torch.profiler trace of 8 steps and its kernel table here")
    p.add_argument("--synthetic-timeout", type=float, default=400)
    p.add_argument("--synthetic-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.id_images, args.oe_images, args.source_size, args.image_size = "smallcnn", 48, 24, 40, 32
        args.batch_size = args.oe_batch_size = 8
        args.loader_workers, args.warmup, args.steps, args.epochs = 1, 2, 3, 1
        args.f_workers, args.f_repeat = 1, 1
        args.compile_backend, args.compile_worker = "eager", False  # dynamo only: no C++ build on CI
    if args.d_variants is None:
        args.d_variants = SMOKE_D_VARIANTS if args.smoke else D_VARIANTS
    return args


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.synthetic_child:
        if args.smoke:  # a busy 2-core CI box makes 2-thread CPU kernels erratic
            __import__("torch").set_num_threads(1)
        Path(args.synthetic_child).write_text(json.dumps(synthetic(args)))
        return {}
    import torch

    compile_modes(args.compile_modes), variants(args.d_variants)  # checked before any work
    if args.c_variant != "best" and parse_variant(args.c_variant)["pin"] is not None:
        raise SystemExit(f"--c-variant {args.c_variant!r}: the Ray worker leaves pinning to the loader; "
                         "drop '/pin='")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - {"a", "b", "c", "d", "f"}:
        raise SystemExit(f"--parts {args.parts!r}: choose from a, b, c, d, f")
    use_gpu = torch.cuda.is_available()  # no CUDA context in this process: (a) runs in a child
    meta = {k: getattr(args, k) for k in ("model", "image_size", "batch_size", "oe_batch_size", "id_images",
                                          "oe_images", "source_size", "loader_workers", "epochs", "smoke")}
    meta.update(python=platform.python_version(), cpus=os.cpu_count(), machine=platform.platform(),
                device={"card": "cpu", "torch": torch.__version__}, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    results: dict = {}

    def save() -> dict:
        report = {"meta": meta, "results": results, "summary": summarise(results, args.smoke)}
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
        return report

    def attempt(key: str, fn) -> None:
        start = time.perf_counter()
        try:
            results[key] = fn()
        except Exception as err:  # one failed part must not lose the others
            traceback.print_exc()
            results[key] = {"error": f"{type(err).__name__}: {err}"}
        results[key]["part_s"] = round(time.perf_counter() - start, 1)
        print(f"{key}: {results[key]['part_s']}s", flush=True)
        save()

    tmp = Path(tempfile.mkdtemp(prefix="throughput-"))
    shards = Path(args.shards_dir) if args.shards_dir else tmp / "shards"
    try:
        if {"b", "c", "d", "f"} & set(parts):
            start = time.perf_counter()
            id_dir = make_set(shards / "id", "bench-id", "id", args.id_images, args.source_size, seed=0)
            oe_dir = make_set(shards / "oe", "bench-oe", "oe", args.oe_images, args.source_size, seed=1)
            meta["shards_s"] = round(time.perf_counter() - start, 1)
            print(f"shards ready in {meta['shards_s']}s: {shards}", flush=True)
        if "f" in parts:
            attempt("f_cpu_input", lambda: cpu_input(args, id_dir, oe_dir))
        if {"a", "d"} & set(parts):  # d needs a's compiled model
            attempt("a_synthetic", lambda: run_synthetic_child(argv, shards, args.synthetic_timeout))
            meta["device"] = results["a_synthetic"].get("device", meta["device"])
            if "error" in results["a_synthetic"].get("compiled", {}) and args.compile_worker:
                print("(a) could not compile: (b) and (c) run the model eager", flush=True)
                args.compile_worker = False
        ray_parts = [p for p in parts if p in ("b", "c")]  # in the order asked for
        if ray_parts:
            import ray

            meta["ray"] = ray.__version__
            owned = start_ray(args, use_gpu)
            variant = args.c_variant
            if variant == "best":
                best = best_variant(results, loader_default_pinning=True)
                variant = best or "serial/batched"
                print(f"(c) runs the GPU stage as {variant}" + (
                    " (the fastest (d) with the loader's own pinning)" if best
                    else " (the default; (d) did not run)"), flush=True)
            variants(variant)  # checked
            try:
                for part in ray_parts:
                    decode = "cpu" if part == "b" else "gpu"
                    attempt(f"{part}_ray_{decode}_decode",
                            lambda: ray_run(args, decode, id_dir, oe_dir, tmp / "runs", use_gpu, variant))
            finally:
                if owned:
                    ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = save()
    print(table(report["summary"], meta), flush=True)
    verdict = feed_verdict(results, args.loader_workers)
    if verdict:
        print(verdict, flush=True)
        report["summary"]["feed_verdict"] = verdict
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()
