"""`launch.py train`: a config (YAML + key=value overrides) -> a Ray Train run, then an
evaluation with every score when the config names test sets."""
from __future__ import annotations

import argparse

from edge_ray.tracking.settings import add_flag as add_tracking_flag

EXAMPLE = ("python launch.py train --config configs/tiny.yaml "
           "loss.method=edge loss.beta=0.1 train.num_workers=2 train.run_name=tiny-2w")


def add_parser(sub, common) -> None:
    p = sub.add_parser("train", help="train with EDGE or a baseline on Ray Train",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a multi-label model with DDP on Ray Train; resumes when run "
                                   "again with the same train.run_name and train.storage_path.",
                       epilog=f"example:\n  {EXAMPLE}")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. loss.m=3")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    add_tracking_flag(p)
    common(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from edge_ray import storage
    from edge_ray.config import load_config, worker_range
    from edge_ray.evaluate.ray_evaluate import evaluate_remote
    from edge_ray.ray_cluster import connect
    from edge_ray.train.ray_trainer import check_inputs, check_resume, run_training
    from edge_ray.train.recipes import describe_recipe

    from edge_ray.tracking.commands import prepare as prepare_tracking

    prepare_tracking(args)  # MLflow's import (seconds) overlaps the checks and Ray's start
    cfg = load_config(args.config, args.overrides)
    check_inputs(cfg)  # data, storage and model problems: one line, before Ray starts
    check_resume(cfg)
    where = connect(args.address)
    low, high = worker_range(cfg)
    workers = f"{low}-{high} (elastic)" if low < high else str(high)
    print(f"training {cfg.model.name} with {cfg.loss.method} on {workers} worker(s) "
          f"({'GPU' if cfg.train.use_gpu else 'CPU'}, Ray: {where}) -> {cfg.train.storage_path}/{cfg.train.run_name}")
    print(f"  recipe: {describe_recipe(cfg)}", flush=True)
    # MLflow (edge_ray/tracking): one run for this training, its epochs logged here on the driver
    from edge_ray.tracking import commands as tracking
    from edge_ray.tracking.ray_relay import Relay
    from edge_ray.train.recipes import resolve_run

    with tracking.command(args, "train") as tracker:
        tracked = tracker.training(resolve_run(cfg), "train")
        relay = Relay(tracker)
        summary = run_training(cfg, checked=True, callbacks=relay.callbacks(tracked))
        relay.flush()
        tracked.end("FINISHED")
        last = summary.history[-1] if summary.history else {}
        print(f"finished epoch {last.get('epoch')}/{cfg.train.epochs}: loss {last.get('loss', float('nan')):.4f}, "
              f"val mAP {last.get('val_map')}, checkpoint {summary.checkpoint_dir}")
        if args.no_eval or summary.checkpoint_dir is None:
            return 0
        missing = [f"data.{key}" for key in ("id_test", "ood") if not getattr(cfg.data, key)]
        if missing:  # a tuning config (configs/study.yaml) names no test sets on purpose
            print(f"no evaluation: the config sets no {' / '.join(missing)}; evaluate with: python launch.py "
                  f"eval --checkpoint {summary.run_dir} --id-test DIR --ood DIR [DIR ...]")
            return 0
        out = cfg.eval.out or storage.join(summary.run_dir, "eval")
        res = evaluate_remote(summary.checkpoint_dir, out, use_gpu=cfg.train.use_gpu,
                              num_cpus=cfg.train.cpus_per_worker, scores=list(cfg.eval.scores),
                              training=cfg.loss.method)
        tracking.log_evaluation(tracked, res, step=last.get("epoch", 0))
        print(storage.read_text(res["paths"]["markdown"]))
        print(f"results: {out}")
    return 0


def resume_hint(args) -> str:
    from edge_ray.cli.interrupts import again
    from edge_ray.config import load_config
    from edge_ray.train.checkpoint import last_epoch_on_storage
    from edge_ray.train.ray_trainer import run_dir

    run = run_dir(load_config(args.config, args.overrides))
    last = last_epoch_on_storage(run)
    done = (f"epochs 1-{last[1]} are in {last[0]}; continue from epoch {last[1] + 1}" if last
            else "no epoch was finished; start again")
    return f"training {run} stopped; {done} with: {again(args.argv)}"
