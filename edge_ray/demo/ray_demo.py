"""The demo's stages (`cli.py` has the command): the embedded benchmark's shards, BCE on Ray
Train, the OE ranking as Ray tasks, OE / EnergyOE / EDGE with the top-ranked set, every
score, the table and results/."""
from __future__ import annotations

import functools
import time
from dataclasses import replace
from pathlib import Path

from edge_ray import storage
from edge_ray.config import Config, load_config
from edge_ray.losses import LOSSES
from edge_ray.train.recipes import describe_recipe, recipe_record

# What each stage costs is set here so `--quick` and the default stay within their budgets
# on 2 cores (README: about 1 and 4 minutes).
PRESETS = {
    "quick": {"sizes": dict(quick=True, n_train=2000), "epochs": 4, "tau": 1, "methods": ("bce", "edge")},
    "full": {"sizes": dict(quick=False), "epochs": 7, "tau": 2, "methods": ("bce", "oe", "energy_oe", "edge")},
}
BCE_SCORES = ("maxlogit", "msp", "odin", "energy", "mahalanobis", "react", "vim", "ash", "maxenergy", "jointenergy",
              "knn")
OE_SCORES = ("maxenergy", "jointenergy")
OOD_SETS = ("ood_digits89", "ood_letters", "ood_flower_edges", "ood_scribble", "ood_blobs", "ood_flower")


def demo_config(data: str, out: str, preset: dict, seed: int) -> Config:
    """The small-CNN recipe of configs/demo.yaml with the preset's epochs and tau; `data`
    and `out` are locations (local paths or URIs)."""
    base = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    at = functools.partial(storage.join, data)
    return replace(base,
                   data=replace(base.data, id_train=at("id_train"), id_val=at("id_val"),
                                id_test=at("id_test"), ood=tuple(at(s) for s in OOD_SETS)),
                   loss=replace(base.loss, tau=preset["tau"]),
                   train=replace(base.train, epochs=preset["epochs"], seed=seed, storage_path=storage.join(out, "runs")))


def _banner(args, preset: dict, data: str, out: str) -> None:
    mode = "quick" if args.quick else "full"
    later = " / ".join(LOSSES[m].display for m in preset["methods"][1:])
    print("=" * 78)
    print(f"EDGE on Ray demo ({mode}): embedded benchmark -> BCE -> OE ranking -> {later}")
    print(f"  shards: {data}   results: {out}   seed: {args.seed}")
    print("  ID: digit canvases, 7 long-tailed classes; OOD: unseen digits, letters, photo edges,")
    print("  scribbles, blobs, photo crops. Every number below is measured by this run.")
    print("=" * 78, flush=True)


def build_shards(data: str, preset: dict, seed: int) -> dict:
    from shards.demo import build_demo, missing_sets

    stamp = storage.join(data, "benchmark.json")
    if storage.is_file(stamp):
        bench = storage.read_json(stamp)
        sizes = {s["num_samples"] for n, s in bench.get("sets", {}).items() if n == "id_train"}
        want = preset["sizes"].get("n_train")
        if bench.get("seed") == seed and bench.get("quick") == preset["sizes"]["quick"] and (want is None or sizes == {want}) \
                and not missing_sets(bench):
            print(f"[1/5] benchmark shards already in {data} (seed {seed}); reusing them")
            return bench
    t = time.perf_counter()
    bench = build_demo(data, seed=seed, progress=True, **preset["sizes"])
    print(f"[1/5] built the benchmark in {time.perf_counter() - t:.1f}s: "
          + ", ".join(f"{k} {v['num_samples']}" for k, v in bench["sets"].items()))
    return bench


def train(cfg: Config, method: str, oe: str | None, step: str, tag: str, study=None) -> str:
    """One Ray Train run; run again with the same tag and config it resumes (a finished
    run returns at once), with another config it stops with the fix. ``study``: its MLflow
    child run (edge_ray/tracking/ray_study.py)."""
    from edge_ray.train.ray_trainer import run_training

    cfg = replace(cfg, loss=replace(cfg.loss, method=method),
                  data=replace(cfg.data, oe=oe or ""),
                  train=replace(cfg.train, run_name=f"demo-{tag}-{method}"))
    t = time.perf_counter()
    print(f"{step} training {method} ({cfg.train.epochs} epochs{', OE: ' + storage.basename(oe) if oe else ''})\n"
          f"      recipe: {describe_recipe(cfg)}", flush=True)
    summary = run_training(cfg, callbacks=study.start(cfg) if study else [])
    if study:
        study.done(cfg)
    last = summary.history[-1]
    extra = f", gap active {last['gap_active']:.2f}" if method == "edge" and "gap_active" in last else ""
    print(f"      done in {time.perf_counter() - t:.0f}s: val mAP {last['val_map']:.3f}, "
          f"{last['images_per_s']:.0f} img/s{extra}", flush=True)
    return summary.checkpoint_dir


def run(args) -> int:
    from edge_ray.ray_cluster import connect

    preset = PRESETS["quick" if args.quick else "full"]
    out = storage.normalize(args.out)
    data = storage.normalize(args.data or ("data/demo-quick" if args.quick else "data/demo"))
    _banner(args, preset, data, out)
    start = time.perf_counter()
    bench = build_shards(data, preset, args.seed)
    connect(args.address)
    cfg = demo_config(data, out, preset, args.seed)
    tag = f"{'quick' if args.quick else 'full'}-seed{args.seed}"
    # MLflow (edge_ray/tracking): a run for the demo, a child per training, from this driver
    from edge_ray.tracking import commands as tracking
    from edge_ray.tracking.ray_study import StudyTracking

    with tracking.command(args, "demo", quiet=True) as tracker:
        study = StudyTracking(tracker, f"demo-{tag}", command="demo", out=out,
                              params={"demo.quick": args.quick, "demo.seed": args.seed, "demo.oe": args.oe})
        checkpoints = {"bce": train(cfg, "bce", None, "[2/5]", tag, study)}
        ranking = rank_candidates(checkpoints["bce"], data, bench, out, seed=args.seed)
        oe_name = ranking[0]["candidate"] if args.oe == "ranked" else args.oe
        print(f"      OE set for training: {oe_name}")
        for method in preset["methods"][1:]:
            checkpoints[method] = train(cfg, method, storage.join(data, oe_name), "[4/5]", tag, study)
        results = evaluate_all(checkpoints, cfg, out)
        for method, result in results.items():
            study.evaluated(replace(cfg, train=replace(cfg.train, run_name=f"demo-{tag}-{method}")), result)
        elapsed = time.perf_counter() - start
        paths = _finish(results, ranking, oe_name, out, elapsed, args)
        study.finish([paths["json"], paths["markdown"], paths["csv"], *paths["plots"],
                      storage.join(out, "rank-oe", "ranking.json")])
        if tracker.active:
            print(tracker.where())
    return 0


def rank_candidates(checkpoint: str, data: str, bench: dict, out: str, *, seed: int) -> list[dict]:
    """Dilation distance of every OE candidate to the ID training set, as Ray tasks."""
    from edge_ray.train.checkpoint import load_trained
    from edge_ray.oe.ray_rank import RankOptions, rank_parallel

    print("[3/5] ranking OE candidates by dilation distance (Eq. 9) on the BCE model's features", flush=True)
    model, cfg, _ = load_trained(checkpoint)
    opts = RankOptions(k=16, batch_size=64, batches=8, seed=seed, image_size=cfg.data.image_size,
                       mean=cfg.data.mean, std=cfg.data.std)
    rows = rank_parallel(model, cfg.model.name, storage.join(data, "id_train"),
                         [storage.join(data, n) for n in bench["oe"]], opts, num_cpus=1, progress=False)
    for r in rows:
        r["candidate"] = storage.basename(r["candidate"])
        if r["rank"]:
            print(f"      rank {r['rank']}: {r['candidate']:<12} d = {r['distance']:.3f} ± {r['distance_std']:.3f}")
        else:
            print(f"      skipped: {r['candidate']:<12} {r['status']}: {r['reason']}")
    storage.write_json(storage.join(out, "rank-oe", "ranking.json"), rows, indent=1)
    return [r for r in rows if r.get("rank")]


def evaluate_all(checkpoints: dict, cfg: Config, out: str) -> dict:
    from edge_ray.data import EvalCache
    from edge_ray.evaluate.pipeline import eval_options
    from edge_ray.train.checkpoint import load_trained
    from edge_ray.evaluate.pipeline import evaluate, open_sets

    later = " / ".join(LOSSES[m].display for m in checkpoints if m != "bce")
    print(f"[5/5] evaluating: BCE with all {len(BCE_SCORES)} scores, {later} with MaxEnergy and JointEnergy", flush=True)
    sets = open_sets(cfg.data.id_train, cfg.data.id_test, list(cfg.data.ood))
    opts = eval_options(cfg)
    cache = EvalCache()  # every model sees the same test and OOD images: decode them once
    results = {}
    for method, ckpt in checkpoints.items():
        model, cfg_of_run, _ = load_trained(ckpt)
        scores = BCE_SCORES if method == "bce" else OE_SCORES
        results[method] = evaluate(model, sets, scores, opts, training=method, cache=cache)
        results[method]["recipe"] = recipe_record(cfg_of_run)
    return results


def _finish(results: dict, ranking: list, oe_name: str, out: str, elapsed: float, args) -> dict:
    from edge_ray.evaluate.report import compact_table, write_results

    paths = write_results(results, out, extra={"oe_ranking": ranking, "oe_used": oe_name,
                                               "seed": args.seed, "quick": args.quick,
                                               "wall_seconds": round(elapsed, 1)})
    print("\nFPR95 / AUROC (%) per OOD set, all ID test images (full table with AUPR and every score: table.md)")
    print(compact_table(results, ("jointenergy", "maxenergy")))
    print("\nthe same on tail-only ID test images (every label a minority class)")
    print(compact_table(results, ("jointenergy", "maxenergy"), part="tail"))
    if "bce" in results:
        print("\npost-hoc scores on the BCE model, all ID test images")
        print(compact_table({"bce": results["bce"]}, BCE_SCORES))
    print()
    print(f"finished in {elapsed:.0f}s. results: {paths['json']}, {paths['markdown']}, {paths['csv']}")
    print("plots: " + ", ".join(str(p) for p in paths["plots"]))
    return paths
