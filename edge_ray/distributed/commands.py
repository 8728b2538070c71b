"""What each `launch.py` subcommand does, once its arguments are parsed."""
from __future__ import annotations

import json

from edge_ray import storage
from edge_ray.config import ConfigError, load_config, worker_range
from edge_ray.recipes import describe_recipe
from edge_ray.distributed.cluster import ClusterError, connect


def is_user_error(err: Exception) -> bool:
    """Errors that come from input (files, configs, addresses): shown as one line."""
    return isinstance(err, (ValueError, FileNotFoundError, FileExistsError, ClusterError, ConfigError,
                            NotImplementedError))


def root_cause(err: BaseException) -> BaseException:
    """The exception a Ray wrapper carries: a Train worker's (lowest failing rank), a Train
    controller's, a task's or an actor's. A problem in a shard or a config found inside
    Ray then reaches the user as the same one line it would be on the driver."""
    import ray.exceptions
    from ray.train import ControllerError, WorkerGroupError

    for _ in range(10):
        if isinstance(err, WorkerGroupError) and err.worker_failures:
            err = err.worker_failures[min(err.worker_failures)]
        elif isinstance(err, ControllerError):
            err = err.controller_failure
        elif isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None:
            err = err.cause
        else:
            break
    return err


# Commands that run long enough to be interrupted, and what to tell the user then.
def resume_hint(args) -> str:
    """One line: what an interrupted command left and the command that continues it."""
    from edge_ray.distributed.interrupts import again

    argv = args.argv
    if args.command == "train":
        from edge_ray.checkpoint import last_epoch_on_storage
        from edge_ray.distributed.trainer import run_dir

        run = run_dir(load_config(args.config, args.overrides))
        last = last_epoch_on_storage(run)
        done = (f"epochs 1-{last[1]} are in {last[0]}; continue from epoch {last[1] + 1}" if last
                else "no epoch was finished; start again")
        return f"training {run} stopped; {done} with: {again(argv)}"
    if args.command == "demo":
        return f"the shards and the finished trainings are kept and reused; continue with: {again(argv)}"
    if args.command == "compare":
        return f"finished runs are kept and reused, unfinished ones resume; continue with: {again(argv)}"
    if args.command == "shards":
        return (f"the set in {args.out} is incomplete (index.json is written last, so no reader will open "
                f"it); convert again with: {again(argv, ('--overwrite',) if args.shards_kind != 'demo' else ())}")
    if args.command == "tune":
        from edge_ray.distributed.tune import resume_command, settings_from_args, started

        s = settings_from_args(args)
        if started(s):
            return f"finished trials are kept, unfinished ones continue; continue the search with: {resume_command(s)}"
        return f"the search had not started (nothing was kept); start it again with: {again(argv)}"
    return f"nothing was written (results are written at the end); run it again with: {again(argv)}"


INTERRUPTIBLE = {"train", "eval", "rank-oe", "demo", "shards", "compare", "export", "predict"}


def cmd_train(args) -> int:
    from edge_ray.distributed.evaluate import evaluate_remote
    from edge_ray.distributed.trainer import check_inputs, check_resume, run_training

    cfg = load_config(args.config, args.overrides)
    check_inputs(cfg)  # data, storage and model problems: one line, before Ray starts
    check_resume(cfg)
    where = connect(args.address)
    low, high = worker_range(cfg)
    workers = f"{low}-{high} (elastic)" if low < high else str(high)
    print(f"training {cfg.model.name} with {cfg.loss.method} on {workers} worker(s) "
          f"({'GPU' if cfg.train.use_gpu else 'CPU'}, Ray: {where}) -> {cfg.train.storage_path}/{cfg.train.run_name}")
    print(f"  recipe: {describe_recipe(cfg)}", flush=True)
    summary = run_training(cfg, checked=True)
    last = summary.history[-1] if summary.history else {}
    print(f"finished epoch {last.get('epoch')}/{cfg.train.epochs}: loss {last.get('loss', float('nan')):.4f}, "
          f"val mAP {last.get('val_map')}, checkpoint {summary.checkpoint_dir}")
    if args.no_eval or not (cfg.data.id_test and cfg.data.ood) or summary.checkpoint_dir is None:
        return 0
    out = cfg.eval.out or storage.join(summary.run_dir, "eval")
    res = evaluate_remote(summary.checkpoint_dir, out, use_gpu=cfg.train.use_gpu,
                          num_cpus=cfg.train.cpus_per_worker, scores=list(cfg.eval.scores),
                          training=cfg.loss.method)
    print(storage.read_text(res["paths"]["markdown"]))
    print(f"results: {out}")
    return 0


def cmd_eval(args) -> int:
    from edge_ray.checkpoint import find_checkpoint
    from edge_ray.distributed.evaluate import evaluate_checkpoint, evaluate_remote
    from edge_ray.evaluation import check_score_names
    from edge_ray.scores import SCORES

    scores = check_score_names(args.scores or list(SCORES))
    checkpoint = find_checkpoint(args.checkpoint)  # a run folder means its newest complete checkpoint
    # Default: beside the run the checkpoint belongs to (<run>/eval), wherever that lives.
    out = storage.normalize(args.out) if args.out else storage.join(storage.parent(checkpoint), "eval")
    kwargs = dict(scores=scores, training=args.name, ood=[storage.normalize(p) for p in args.ood] if args.ood else None,
                  **{k: storage.normalize(v) if v else None for k, v in (("id_train", args.id_train), ("id_test", args.id_test))})
    if args.gpu:
        connect(args.address)
        res = evaluate_remote(checkpoint, out, use_gpu=True, **kwargs)
    else:
        res = evaluate_checkpoint(checkpoint, out, **kwargs)
    print(storage.read_text(res["paths"]["markdown"]))
    print(f"results: {out} ({', '.join(storage.basename(p) for p in res['paths']['plots'])})")
    return 0


def cmd_shards(args) -> int:
    from shards.cli import run
    return run(args)


def add_demo(sub, common) -> None:
    from edge_ray.distributed.demo import add_parser
    add_parser(sub, common)


def add_rank_oe(sub, common) -> None:
    from edge_ray.distributed.rank_oe_cli import add_parser
    add_parser(sub, common)


def add_compare(sub, common) -> None:
    from edge_ray.distributed.compare_cli import add_parser
    add_parser(sub, common)


def add_export(sub, common) -> None:
    from edge_ray.distributed.export import add_parser
    add_parser(sub, common)


def add_predict(sub, common) -> None:
    from edge_ray.distributed.predict_cli import add_parser
    add_parser(sub, common)


def add_tune(sub, common) -> None:
    from edge_ray.distributed.tune_cli import add_parser
    add_parser(sub, common)


def dispatch(args) -> int:
    if args.command == "train":
        return cmd_train(args)
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "shards":
        return cmd_shards(args)
    return args.run(args)  # demo, rank-oe, tune, compare, export, predict set their own handler


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))
