"""`launch.py compare`: methods x seeds as one Ray job, and whether EDGE beats each baseline
by more than seed noise.

Every method x seed is a Ray Train run (``compare-<method>-seed<k>`` under OUT/runs) followed
by an evaluation with every score; runs go as Ray tasks, as many at a time as the cluster's
CPUs (and GPUs) hold, with fractional CPUs allowed. The same seed gives every method the
same initial weights and ID data order, so runs are compared in pairs by seed.

OUT then holds results.json (every per-seed value, the tests, the recipes, the wall time),
table.md (mean ± std per method x OOD set for JointEnergy, the paired tests of EDGE against
each baseline, every score), table.csv and compare_jointenergy.png. Statistics and why:
edge_ray/study.py. Running again with more seeds reuses every finished run.

By default the runs use the embedded benchmark with the demo's recipe and OE set
(oe_letters, which `demo` ranks first); --config runs any config instead.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import ray

from edge_ray import storage
from edge_ray.config import Config, ConfigError, apply_overrides, load_config
from edge_ray.recipes import describe_recipe, recipe_record
from edge_ray.distributed.compare_runs import drive, edge_params_from_study, parse_methods, plan
from edge_ray.distributed.trainer import check_inputs
from edge_ray.distributed.tune_settings import runs_at_once

EPILOG = """examples:
  python launch.py compare --methods bce oe energyoe edge --seeds 5     # the README's study
  python launch.py compare --quick --methods oe edge --seeds 2          # a few minutes on 2 cores
  # EDGE's values from the best Pareto trial of a finished `launch.py tune ... --multi-objective --name demo-search`:
  python launch.py compare --methods oe edge --seeds 5 --edge-from-study results/tune/demo-search
  # on a GPU cluster with the VOC shards (configs/voc.yaml), one Train worker per run, two runs per GPU:
  python launch.py compare --config configs/voc.yaml --methods bce oe edge --seeds 3 --gpus-per-run 0.5 \\
      train.num_workers=1 --out s3://my-edge-bucket/results/compare/voc

Running it again with a larger --seeds trains only the new seeds."""


def add_parser(sub, common) -> None:
    from edge_ray.distributed.demo import NAMES

    p = sub.add_parser("compare", help="methods x seeds on Ray: mean ± std and paired tests of EDGE "
                       "against each baseline", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=__doc__, epilog=EPILOG)
    p.add_argument("--methods", nargs="+", default=["bce", "oe", "energyoe", "edge"],
                   help=f"training methods (loss.method; energyoe = energy_oe), default: {' '.join(NAMES)}")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per method (default 5)")
    p.add_argument("--out", default=None, help="output folder, the runs included (default results/compare or "
                   "results/compare-quick; on several nodes a shared folder, e.g. NFS)")
    p.add_argument("--data", default=None, help="embedded-benchmark shards (default data/demo or data/demo-quick; "
                   "built there when missing)")
    p.add_argument("--quick", action="store_true", help="the quick benchmark and 4 epochs (a smoke study)")
    p.add_argument("--oe", default=None, help="OE set of the embedded benchmark (default oe_letters)")
    p.add_argument("--config", default=None, help="a training config to compare on instead of the embedded benchmark")
    p.add_argument("--edge-from-study", default=None, metavar="TUNE_OUT",
                   help="take EDGE's tuned values from a `launch.py tune` output folder (best Pareto trial)")
    p.add_argument("--scores", nargs="+", default=None, help="scores to evaluate (default: all ten)")
    p.add_argument("--cpus-per-run", type=float, default=None, help="CPUs of one run's Train workers together "
                   "(fractions allowed; default from the config)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="GPUs of one run (0.25 = four runs per GPU)")
    p.add_argument("--max-concurrent", type=int, default=0, help="runs at once (default: as many as fit)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for every run, e.g. train.epochs=3 (anywhere on the line)")
    common(p)
    p.set_defaults(run=run)


def _resources(cfg: Config, cpus: float | None, gpus: float | None) -> Config:
    """Spread --cpus-per-run / --gpus-per-run over the run's Train workers."""
    workers, over = cfg.train.num_workers, []
    if cpus is not None:
        if cpus <= 0:
            raise ConfigError(f"--cpus-per-run must be > 0, got {cpus}")
        over.append(f"train.cpus_per_worker={cpus / workers}")
    if gpus is not None:
        if gpus < 0:
            raise ConfigError(f"--gpus-per-run must be >= 0 (0 = CPU only), got {gpus}")
        over += [f"train.use_gpu={str(gpus > 0).lower()}", f"train.gpus_per_worker={gpus / workers}"]
    cfg = apply_overrides(cfg, over)
    if cfg.train.use_gpu and cfg.train.num_workers > 1 and cfg.train.gpus_per_worker < 1:
        raise ConfigError("a fraction of a GPU per worker needs train.num_workers=1 (NCCL cannot put two "
                          "ranks of one run on the same GPU); raise --gpus-per-run or add train.num_workers=1")
    return cfg


def base_config(args, out: str) -> tuple[Config, str]:
    """The config every run starts from and the OE set's path, runs stored under OUT/runs."""
    if args.config:
        given = [flag for flag, v in (("--data", args.data), ("--oe", args.oe), ("--quick", args.quick)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} choose the embedded benchmark; with --config the data "
                              "come from the config (set data.oe there, or override it: data.oe=DIR)")
        cfg = load_config(args.config, args.overrides)
        oe = cfg.data.oe
    else:
        from edge_ray.distributed.demo import PRESETS, demo_config
        from shards.demo import build_demo

        preset = PRESETS["quick" if args.quick else "full"]
        data = storage.normalize(args.data or ("data/demo-quick" if args.quick else "data/demo"))
        if not storage.is_file(storage.join(data, "benchmark.json")):  # any benchmark there is used as it is
            print(f"building the embedded benchmark in {data}", flush=True)
            build_demo(data, seed=0, progress=True, **preset["sizes"])
        cfg = apply_overrides(demo_config(data, out, preset, seed=0), args.overrides)
        name = args.oe or "oe_letters"
        oe = storage.join(data, name)
        if not storage.is_file(storage.join(oe, "index.json")):
            have = sorted(n for n in storage.listdir(data) if n.startswith("oe_"))
            raise ConfigError(f"--oe {name}: no such set in {data}; choose one of {', '.join(have)}")
    if not (cfg.data.id_test and cfg.data.ood):
        raise ConfigError("compare evaluates every run: set data.id_test and data.ood in the config")
    cfg = replace(cfg, train=replace(cfg.train, storage_path=storage.join(out, "runs")))
    return _resources(cfg, args.cpus_per_run, args.gpus_per_run), oe


def slots(cfg: Config, resources: dict, max_concurrent: int, n: int) -> int:
    """Runs at once: --max-concurrent, else as many as the cluster's CPUs and GPUs hold."""
    if max_concurrent > 0:
        return min(max_concurrent, n)
    need = {"CPU": cfg.train.num_workers * cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        need["GPU"] = cfg.train.num_workers * cfg.train.gpus_per_worker
    return runs_at_once(need, n, resources, what="run", fix="--{kind}s-per-run")


def _header(runs, methods, seeds, n_slots, out, edge_source) -> None:
    print("=" * 78)
    print(f"compare: {' / '.join(methods)} x {seeds} seeds = {len(runs)} runs, {n_slots} at a time -> {out}")
    for method in methods:
        cfg = next(r.cfg for r in runs if r.method == method)
        print(f"  {method:<10} {cfg.train.epochs} epochs; {describe_recipe(cfg)}")
    edge = next((r.cfg.loss for r in runs if r.method == "edge"), None)
    if edge:
        print(f"  edge: alpha {edge.alpha:g}, beta {edge.beta:g}, k {edge.k}, m {edge.m:g}, tau {edge.tau}, "
              f"gap {edge.gap}" + (f"  <- {edge_source}" if edge_source else ""))
    print("=" * 78, flush=True)


def _gather_overrides(args) -> None:
    """key=value words caught by --methods or --scores (both take several words) are
    overrides: no method or score name has an '='."""
    for attr in ("methods", "scores"):
        words = getattr(args, attr) or []
        args.overrides = list(args.overrides) + [w for w in words if "=" in w]
        setattr(args, attr, [w for w in words if "=" not in w] or (None if attr == "scores" else []))


def _payload(args, methods, scores, runs, records, reused, oe, edge_params, edge_source, start) -> dict:
    """Everything results.json keeps: the setup, each run, the statistics, the machine."""
    from edge_ray.study import cells, map_rows, paired_map_tests, paired_tests

    done = [records[r.name] for r in runs]
    keep = ("method", "seed", "name", "train_seconds", "eval_seconds", "last_epoch")
    return {"command": "python launch.py " + " ".join(sys.argv[1:]), "methods": methods,
            "seeds": list(range(args.seeds)), "scores": scores, "oe": oe, "edge_params": edge_params,
            "edge_params_source": edge_source,
            "recipes": {m: recipe_record(next(r.cfg for r in runs if r.method == m)) for m in methods},
            "runs": [{k: rec[k] for k in keep} | {"results": str(r.results_path), "reused": r.name in reused}
                     for r, rec in zip(runs, done)],
            "run_seconds": round(sum(rec["train_seconds"] + rec["eval_seconds"] for rec in done), 1),
            "summary": cells(done), "map": map_rows(done),
            "tests": paired_tests(done) if "edge" in methods else [],
            "map_tests": paired_map_tests(done) if "edge" in methods else [],
            "wall_seconds": round(time.perf_counter() - start, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "ray": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}}


def _report(payload: dict, score: str, paths: dict, n_reused: int) -> None:
    from edge_ray.study_report import headline, map_tests_table, tests_table

    print(f"\n{score}: FPR95 (%) mean ± std over {len(payload['seeds'])} seeds, all ID test images")
    print(headline(payload["summary"], payload["map"], score, "fpr95"))
    if payload["tests"]:
        print(f"\nEDGE - baseline, paired by seed ({score}); verdict at Holm-adjusted p < 0.05")
        print(tests_table(payload["tests"], score))
        print(f"\nEDGE - baseline in ID test mAP, paired by seed\n{map_tests_table(payload['map_tests'])}")
    print(f"\nfinished in {payload['wall_seconds']:.0f}s ({n_reused} of {len(payload['runs'])} runs reused; "
          f"{payload['run_seconds']:.0f}s of training and evaluation in all runs). results: {paths['json']}, "
          f"{paths['markdown']}, {paths['csv']}, {', '.join(str(p) for p in paths['plots'])}")


def run(args) -> int:
    from edge_ray.distributed.cluster import connect
    from edge_ray.evaluation import check_score_names
    from edge_ray.scores import SCORES
    from edge_ray.study_report import write_study

    start = time.perf_counter()
    _gather_overrides(args)
    methods = parse_methods(args.methods)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (2 or more for a std and a test), got {args.seeds}")
    scores = check_score_names(args.scores or list(SCORES))
    out = storage.normalize(args.out or ("results/compare-quick" if args.quick else "results/compare"))
    edge_params, edge_source = edge_params_from_study(args.edge_from_study) if args.edge_from_study else ({}, "")
    base, oe = base_config(args, out)
    runs = plan(base, methods, range(args.seeds), oe, edge_params)
    for method in methods:  # input problems surface now, not in the middle of the study
        check_inputs(next(r.cfg for r in runs if r.method == method))
    connect(args.address)
    n_slots = slots(base, ray.cluster_resources(), args.max_concurrent, len(runs))
    _header(runs, methods, args.seeds, n_slots, out, edge_source)
    t = base.train
    records, reused = drive(runs, scores, slots=n_slots, eval_cpus=t.num_workers * t.cpus_per_worker,
                            eval_gpus=min(1.0, t.num_workers * t.gpus_per_worker) if t.use_gpu else 0.0)
    payload = _payload(args, methods, scores, runs, records, reused, oe, edge_params, edge_source, start)
    score = "jointenergy" if "jointenergy" in scores else scores[0]
    _report(payload, score, write_study(out, payload, (score,)), len(reused))
    return 0
