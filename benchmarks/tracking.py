"""What MLflow tracking costs a training: `launch.py train` on configs/tiny.yaml with tracking off
(EDGE_RAY_TRACKING=0) and on (the default SQLite store, in a temporary folder), interleaved.

    python benchmarks/tracking.py                       # 10 epochs, 3 runs each
    python benchmarks/tracking.py --epochs 6 --repeat 2 --json tracking.json
    python benchmarks/tracking.py --smoke               # 2 epochs, 1 run each
    python benchmarks/tracking.py --micro-only          # the parts alone (seconds): import, one epoch's log

Each run is a fresh `python launch.py train ... --no-eval` process with a local Ray of its own
(as a user runs it) on the embedded benchmark at the test suite's size (256 ID training images,
8 steps of 32 + 32 an epoch; built once in a temporary folder). Per run: the command's wall
time, and from its summary.json the epochs' own seconds (`seconds`: the steps) and the interval
between consecutive epochs' ends (steps + validation + report + checkpoint: what tracking could
slow down, since the driver logs each epoch while the next one trains). With tracking on, the
run's MLflow record is checked: one FINISHED run with val_map at every epoch. On a shared, loaded
machine the wall times drift by more than tracking costs, so the parts are also timed alone
(``micro``): MLflow's import, a run's first call, one epoch's log (wall and CPU time of the
tracking thread) and the controller's put on the relay queue.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZES = dict(n_train=256, n_val=128, n_test=160, n_oe=128, n_ood=96)  # tests/conftest.py's TINY_SIZES


def overrides(shards: Path, runs: Path, name: str, epochs: int) -> list[str]:
    return [f"data.id_train={shards / 'id_train'}", f"data.id_val={shards / 'id_val'}",
            f"data.id_test={shards / 'id_test'}", f"data.oe={shards / 'oe_letters'}",
            f"data.ood=[{shards / 'ood_letters'}]", f"train.storage_path={runs}", f"train.run_name={name}",
            f"train.epochs={epochs}"]


def one_run(shards: Path, work: Path, name: str, epochs: int, tracking: bool) -> dict:
    env = {**os.environ, "EDGE_RAY_TRACKING": "1" if tracking else "0", "RAY_ADDRESS": "local"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    cwd = work / name  # the default store: ./mlflow.db of the working directory
    cwd.mkdir(parents=True)
    cmd = [sys.executable, str(ROOT / "launch.py"), "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--no-eval", *overrides(shards, work / "runs", name, epochs)]
    for attempt in (1, 2):  # a loaded machine can time a local Ray's start out: once more
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode == 0:
            break
        if attempt == 2 or "timed out during startup" not in proc.stderr:
            raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        for leftover in (work / "runs" / name, cwd / "mlflow.db"):
            subprocess.run(["rm", "-rf", str(leftover)])
    history = json.loads((work / "runs" / name / "summary.json").read_text())["history"]
    ends = [h["finished_at"] for h in history]
    row = {"tracking": tracking, "name": name, "wall_s": round(wall, 2),
           "epoch_s": [round(h["seconds"], 3) for h in history],
           "interval_s": [round(b - a, 3) for a, b in zip(ends, ends[1:])],
           "warnings": [line for line in proc.stderr.splitlines() if "MLflow" in line]}
    if tracking:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
        [run] = client.search_runs([client.get_experiment_by_name("edge-ray").experiment_id])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_map"))
        row["mlflow"] = {"status": run.info.status, "val_map_steps": steps, "params": len(run.data.params)}
        assert run.info.status == "FINISHED" and steps == list(range(1, epochs + 1)), row["mlflow"]
    return row


REPORT = {"epoch": 1, "loss": 1.2, "id": 0.6, "conf": 0.6, "gap": 3.0, "gap_active": 1.0, "energy_oe": 4.2,
          "energy_id_bottomk": 4.2, "steps": 8.0, "images": 512.0, "seconds": 1.6, "images_per_s": 316.0,
          "data_wait_s": 0.3, "sync_wait_s": 0.0, "steps_per_rank": [8], "lr": 0.002, "beta_active": False,
          "resumes": 0, "world_size": 1, "nodes": ["d3db8ef7"], "id_batch_per_rank": [32], "amp": "off",
          "started_at": 1.0, "finished_at": 2.6, "val_map": 0.35}  # a tiny-config epoch as rank 0 reports it


def micro(epochs: int = 100) -> dict:
    """The parts, timed alone: MLflow's import (a fresh process each), the first call of a run
    (a new SQLite store: its tables), one epoch's metrics (the tracking thread's wall and CPU
    time), and the controller's side of the relay (one put on the Ray queue, from a task)."""
    code = "import time; t = time.perf_counter(); import mlflow.tracking; print(time.perf_counter() - t)"
    imports = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3)]
    import mlflow.tracking  # noqa: F401 - imported here, so that connect_s is the client and its store

    from edge_ray.tracking.client import Tracker

    out = {"import_mlflow_s": imports}
    with tempfile.TemporaryDirectory(prefix="edge-tracking-micro-") as tmp:
        created = time.perf_counter()
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        marks = []
        mark = lambda c: marks.append((time.perf_counter(), time.thread_time()))  # noqa: E731
        tracker.submit("mark", mark)
        run = tracker.run("bench", params={f"p{i}": i for i in range(60)})
        tracker.submit("mark", mark)
        for epoch in range(1, epochs + 1):
            run.log_epoch({**REPORT, "epoch": epoch})
        tracker.submit("mark", mark)
        tracker.close()
        assert tracker.failure is None, tracker.failure
        (w0, c0), (w1, c1), (w2, c2) = marks
        out.update(connect_s=w0 - created, first_run_s=w1 - w0, first_run_cpu_s=c1 - c0,
                   epoch_ms=1000 * (w2 - w1) / epochs,
                   epoch_cpu_ms=1000 * (c2 - c1) / epochs)
    import ray
    from ray.util.queue import Queue

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        queue = Queue(actor_options={"num_cpus": 0})

        @ray.remote(num_cpus=0)
        def puts(q, n):
            t = time.perf_counter()
            for i in range(n):
                q.put(("key", {**REPORT, "epoch": i}), timeout=10)
            return (time.perf_counter() - t) / n

        out["relay_put_ms"] = 1000 * ray.get(puts.remote(queue, epochs))
        assert len(queue.get_nowait_batch(queue.qsize())) == epochs
    finally:
        ray.shutdown()
    return out


def summarise(rows: list[dict]) -> dict:
    out = {}
    for tracking in (False, True):
        mine = [r for r in rows if r["tracking"] == tracking]
        intervals = [x for r in mine for x in r["interval_s"]]
        epochs = [x for r in mine for x in r["epoch_s"]]
        out["on" if tracking else "off"] = {
            "runs": len(mine), "wall_s": [r["wall_s"] for r in mine],
            "wall_median_s": statistics.median(r["wall_s"] for r in mine),
            "interval_mean_s": statistics.mean(intervals) if intervals else None,
            "interval_median_s": statistics.median(intervals) if intervals else None,
            "epoch_mean_s": statistics.mean(epochs)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="runs with and without tracking each, interleaved")
    p.add_argument("--smoke", action="store_true", help="2 epochs, 1 run each")
    p.add_argument("--json", help="write the rows and the summary here")
    p.add_argument("--micro-only", action="store_true", help="only the parts timed alone (no trainings)")
    args = p.parse_args()
    if args.smoke:
        args.epochs, args.repeat = 2, 1
    parts = micro(10 if args.smoke else 100)
    print(f"import mlflow.tracking: {', '.join(f'{t:.2f}' for t in parts['import_mlflow_s'])} s (fresh processes); "
          f"the client on a new SQLite store: {parts['connect_s']:.2f} s; a run's start: {parts['first_run_s']:.2f} s "
          f"({parts['first_run_cpu_s']:.2f} s CPU); "
          f"one epoch's metrics: {parts['epoch_ms']:.1f} ms ({parts['epoch_cpu_ms']:.1f} ms CPU) on the tracking "
          f"thread; one relay put in the controller: {parts['relay_put_ms']:.1f} ms", flush=True)
    if args.micro_only:
        if args.json:
            Path(args.json).write_text(json.dumps({"micro": parts, "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()}}, indent=1))
        return 0
    from shards.demo import build_demo

    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-tracking-bench-") as tmp:
        work = Path(tmp)
        build_demo(work / "shards", seed=0, **SIZES)
        for i in range(args.repeat):
            for tracking in ((False, True) if i % 2 == 0 else (True, False)):
                row = one_run(work / "shards", work, f"{'on' if tracking else 'off'}-{i}", args.epochs, tracking)
                rows.append(row)
                print(f"tracking {'on ' if tracking else 'off'} run {i}: {row['wall_s']:.1f} s wall, epoch-to-epoch "
                      f"{statistics.mean(row['interval_s'] or [0]):.3f} s, steps {statistics.mean(row['epoch_s']):.3f} s"
                      + (f", MLflow warnings: {row['warnings']}" if row["warnings"] else ""), flush=True)
    s = summarise(rows)
    off, on = s["off"], s["on"]
    print(f"\n| tracking | runs | command wall s (median) | epoch-to-epoch s (mean) | epoch steps s (mean) |")
    print("|---|---:|---:|---:|---:|")
    for label, v in (("off", off), ("on", on)):
        print(f"| {label} | {v['runs']} | {v['wall_median_s']:.1f} | {v['interval_mean_s']:.3f} | {v['epoch_mean_s']:.3f} |")
    print(f"\non - off: {on['wall_median_s'] - off['wall_median_s']:+.1f} s per command, "
          f"{on['interval_mean_s'] - off['interval_mean_s']:+.3f} s per epoch")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "micro": parts, "rows": rows, "summary": s, "epochs": args.epochs, "repeat": args.repeat,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
