"""The work of `launch.py compare` (what it does, its outputs and its arguments: compare_cli.py,
which builds the parser without importing this module's Ray Train and torch)."""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import replace

import ray

from edge_ray import storage
from edge_ray.config import Config, ConfigError, apply_overrides, load_config
from edge_ray.train.recipes import describe_recipe, recipe_record
from edge_ray.compare.ray_runs import drive, params_from_study, parse_methods, parse_studies, plan
from edge_ray.train.ray_trainer import check_inputs
from edge_ray.tune.settings import runs_at_once


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
        from edge_ray.demo.ray_demo import PRESETS, demo_config
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


def _header(runs, methods, seeds, n_slots, out, tuned) -> None:
    print("=" * 78)
    print(f"compare: {' / '.join(methods)} x {seeds} seeds = {len(runs)} runs, {n_slots} at a time -> {out}")
    for method in methods:
        cfg = next(r.cfg for r in runs if r.method == method)
        print(f"  {method:<10} {cfg.train.epochs} epochs; {describe_recipe(cfg)}")
    edge = next((r.cfg.loss for r in runs if r.method == "edge"), None)
    if edge:
        print(f"  edge: alpha {edge.alpha:g}, beta {edge.beta:g}, k {edge.k}, m {edge.m:g}, tau {edge.tau}, "
              f"gap {edge.gap}" + (f"  <- {tuned['edge'][1]}" if "edge" in tuned else ""))
    for method, (_, source) in tuned.items():
        if method != "edge":
            print(f"  {method}: {source}")
    print("=" * 78, flush=True)


def _gather_overrides(args) -> None:
    """key=value words caught by --methods or --scores (both take several words) are
    overrides: no method or score name has an '='."""
    for attr in ("methods", "scores"):
        words = getattr(args, attr) or []
        args.overrides = list(args.overrides) + [w for w in words if "=" in w]
        setattr(args, attr, [w for w in words if "=" not in w] or (None if attr == "scores" else []))


def _payload(args, methods, scores, runs, records, reused, oe, tuned, start) -> dict:
    """Everything results.json keeps: the setup, each run, the statistics, the machine."""
    from edge_ray.compare.stats import cells, map_rows, paired_map_tests, paired_tests

    done = [records[r.name] for r in runs]
    keep = ("method", "seed", "name", "train_seconds", "eval_seconds", "last_epoch")
    edge_params, edge_source = tuned.get("edge", ({}, ""))
    return {"command": "python launch.py " + " ".join(sys.argv[1:]), "methods": methods,
            "seeds": list(range(args.seeds)), "scores": scores, "oe": oe,
            "edge_params": edge_params, "edge_params_source": edge_source,
            "tuned": {m: {"params": values, "source": source} for m, (values, source) in tuned.items()},
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
    from edge_ray.compare.report import headline, map_tests_table, tests_table

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
    from edge_ray.ray_cluster import connect
    from edge_ray.evaluate.pipeline import check_score_names
    from edge_ray.scores import SCORES
    from edge_ray.compare.report import write_study

    start = time.perf_counter()
    _gather_overrides(args)
    methods = parse_methods(args.methods)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (2 or more for a std and a test), got {args.seeds}")
    scores = check_score_names(args.scores or list(SCORES))
    out = storage.normalize(args.out or ("results/compare-quick" if args.quick else "results/compare"))
    studies, more = parse_studies(args.from_study, args.edge_from_study, methods)
    args.overrides = list(args.overrides) + more
    tuned = {m: params_from_study(where, m) for m, where in studies.items()}  # method -> (values, source)
    base, oe = base_config(args, out)
    runs = plan(base, methods, range(args.seeds), oe, {m: values for m, (values, _) in tuned.items()})
    for method in methods:  # input problems surface now, not in the middle of the study
        check_inputs(next(r.cfg for r in runs if r.method == method))
    connect(args.address)
    n_slots = slots(base, ray.cluster_resources(), args.max_concurrent, len(runs))
    _header(runs, methods, args.seeds, n_slots, out, tuned)
    t = base.train
    # MLflow (edge_ray/tracking): a parent run for the study, a child per method x seed, from this driver
    from edge_ray.tracking import commands as tracking
    from edge_ray.tracking.content import config_params
    from edge_ray.tracking.ray_study import StudyTracking

    with tracking.command(args, "compare") as tracker:
        study = StudyTracking(tracker, storage.basename(out), command="compare", out=out, params={
            "compare.methods": methods, "compare.seeds": args.seeds, "compare.scores": scores, "compare.oe": oe,
            "compare.edge_params": tuned.get("edge", ({}, ""))[0], **{f"base.{k}": v for k, v in config_params(base).items()}})
        records, reused = drive(runs, scores, slots=n_slots, eval_cpus=t.num_workers * t.cpus_per_worker,
                                eval_gpus=min(1.0, t.num_workers * t.gpus_per_worker) if t.use_gpu else 0.0,
                                tracking=study)
        payload = _payload(args, methods, scores, runs, records, reused, oe, tuned, start)
        score = "jointenergy" if "jointenergy" in scores else scores[0]
        paths = write_study(out, payload, (score,))
        _report(payload, score, paths, len(reused))
        study.finish([paths["json"], paths["markdown"], paths["csv"], *paths["plots"]])
    return 0
