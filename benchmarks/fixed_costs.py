"""The fixed cost of a Ray Train run and of a Ray Tune trial (issue 31, item 3).

    python benchmarks/fixed_costs.py                      # 4 Train runs, then a 3-trial search
    python benchmarks/fixed_costs.py --runs 3 --trials 0 --json fixed.json

Every run is configs/tiny.yaml on a small embedded benchmark (256 training images: 8 steps
of 32 + 32, one epoch), one after another in one local Ray (2 CPUs). For each run the table
splits the wall time of ``run_training`` into: start (the call to the first step of epoch 1:
the TrainController, the worker's process and imports, the process group, the data index),
training (the epoch's own seconds, from the worker's clock) and end (the epoch's last step to
the call's return: validation, the checkpoint, shutting the worker group down). Runs after
the first show what every later training of a demo, a `compare` or a search pays again.
A search of ``--trials`` one-epoch trials, one at a time, gives the fixed cost per trial:
(search wall - the trials' epoch seconds) / trials.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(n_train=256, n_val=128, n_test=160, n_oe=128, n_ood=96)


def overrides(data: Path, runs: Path, **extra) -> list[str]:
    base = {"data.id_train": data / "id_train", "data.id_val": data / "id_val", "data.id_test": data / "id_test",
            "data.oe": data / "oe_letters", "data.ood": f"[{data / 'ood_letters'}]", "train.storage_path": runs,
            "train.epochs": 1, "loss.tau": 0, **extra}
    return [f"{k}={v}" for k, v in base.items()]


def train_runs(data: Path, tmp: Path, n: int) -> list[dict]:
    from edge_ray.config import load_config
    from edge_ray.train.ray_trainer import run_training

    rows = []
    for i in range(n):
        cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides(data, tmp / "runs", **{"train.run_name": f"fixed-{i}"}))
        call = time.time()
        summary = run_training(cfg)
        back = time.time()
        first, last = summary.history[0], summary.history[-1]
        rows.append({"run": i + 1, "wall_s": round(back - call, 2), "start_s": round(first["started_at"] - call, 2),
                     "train_s": round(sum(h["seconds"] for h in summary.history), 2),
                     "end_s": round(back - last["finished_at"], 2)})
        rows[-1]["fixed_s"] = round(rows[-1]["start_s"] + rows[-1]["end_s"], 2)
        print(f"  run {i + 1}: {rows[-1]}", flush=True)
    return rows


def search(data: Path, tmp: Path, trials: int) -> dict:
    from edge_ray.tune.ray_tune import make_settings, run_search

    s = make_settings(str(ROOT / "configs" / "tiny.yaml"), str(ROOT / "tuning" / "continuous.yaml"), trials,
                      overrides=overrides(data, tmp / "tune-runs", **{"data.oe_val": data / "oe_letters_val"}),
                      name="fixed", out=str(tmp / "tune"), max_concurrent=1, cpus_per_trial=1.0)
    call = time.perf_counter()
    res = run_search(s)
    wall = time.perf_counter() - call
    epochs = sum(float(r.get("seconds") or 0.0) for r in res.rows)
    return {"trials": trials, "wall_s": round(wall, 2), "epoch_s": round(epochs, 2),
            "fixed_per_trial_s": round((wall - epochs) / trials, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=4, help="Train runs one after another (default 4)")
    p.add_argument("--trials", type=int, default=3, help="one-epoch trials of a search, one at a time (default 3; 0: none)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    import ray

    from shards.demo import build_demo

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_demo(tmp / "data", seed=0, **SIZES)
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        import launch  # noqa: F401  - the CLI's Ray settings (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, ...)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        ray_start = time.perf_counter() - t
        print(f"ray.init: {ray_start:.1f}s", flush=True)
        runs = train_runs(tmp / "data", tmp, args.runs)
        trial = search(tmp / "data", tmp, args.trials) if args.trials else None
        ray.shutdown()

    print(f"\n{'run':>4} {'wall s':>7} {'start s':>8} {'train s':>8} {'end s':>6} {'fixed s':>8}")
    for r in runs:
        print(f"{r['run']:>4} {r['wall_s']:>7.2f} {r['start_s']:>8.2f} {r['train_s']:>8.2f} {r['end_s']:>6.2f} "
              f"{r['fixed_s']:>8.2f}")
    later = [r["fixed_s"] for r in runs[1:]]
    summary = {"ray_init_s": round(ray_start, 2), "first_fixed_s": runs[0]["fixed_s"],
               "later_fixed_mean_s": round(sum(later) / len(later), 2) if later else None, "trial": trial}
    print(f"\nfixed cost: first run {summary['first_fixed_s']:.2f}s, later runs {summary['later_fixed_mean_s']}s each")
    if trial:
        print(f"search of {trial['trials']} trials: {trial['wall_s']:.1f}s wall, {trial['epoch_s']:.1f}s of epochs: "
              f"{trial['fixed_per_trial_s']:.2f}s fixed per trial")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary, "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform()}}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
