"""What each `launch.py` subcommand does, once its arguments are parsed."""
from __future__ import annotations

import json
from pathlib import Path

from edge_ray.config import ConfigError, load_config
from edge_ray.recipes import describe_recipe
from edge_ray.distributed.cluster import ClusterError, connect


def is_user_error(err: Exception) -> bool:
    """Errors that come from input (files, configs, addresses): shown as one line."""
    return isinstance(err, (ValueError, FileNotFoundError, ClusterError, ConfigError, NotImplementedError))


def cmd_train(args) -> int:
    from edge_ray.distributed.evaluate import evaluate_remote
    from edge_ray.distributed.trainer import run_training

    cfg = load_config(args.config, args.overrides)
    where = connect(args.address)
    print(f"training {cfg.model.name} with {cfg.loss.method} on {cfg.train.num_workers} worker(s) "
          f"({'GPU' if cfg.train.use_gpu else 'CPU'}, Ray: {where}) -> {cfg.train.storage_path}/{cfg.train.run_name}")
    print(f"  recipe: {describe_recipe(cfg)}", flush=True)
    summary = run_training(cfg)
    last = summary.history[-1] if summary.history else {}
    print(f"finished epoch {last.get('epoch')}/{cfg.train.epochs}: loss {last.get('loss', float('nan')):.4f}, "
          f"val mAP {last.get('val_map')}, checkpoint {summary.checkpoint_dir}")
    if args.no_eval or not (cfg.data.id_test and cfg.data.ood) or summary.checkpoint_dir is None:
        return 0
    out = cfg.eval.out or str(Path(summary.run_dir) / "eval")
    res = evaluate_remote(summary.checkpoint_dir, out, use_gpu=cfg.train.use_gpu,
                          num_cpus=cfg.train.cpus_per_worker, scores=list(cfg.eval.scores),
                          training=cfg.loss.method)
    print((Path(res["paths"]["markdown"])).read_text())
    print(f"results: {out}")
    return 0


def cmd_eval(args) -> int:
    from edge_ray.distributed.evaluate import evaluate_checkpoint, evaluate_remote
    from edge_ray.evaluation import check_score_names
    from edge_ray.scores import SCORES

    scores = check_score_names(args.scores or list(SCORES))
    kwargs = dict(scores=scores, id_train=args.id_train, id_test=args.id_test, ood=args.ood, training=args.name)
    if args.gpu:
        connect(args.address)
        res = evaluate_remote(args.checkpoint, args.out, use_gpu=True, **kwargs)
    else:
        res = evaluate_checkpoint(args.checkpoint, args.out, **kwargs)
    print(Path(res["paths"]["markdown"]).read_text())
    print(f"results: {args.out} ({', '.join(Path(p).name for p in res['paths']['plots'])})")
    return 0


def cmd_shards(args) -> int:
    from shards.cli import run
    return run(args)


def add_demo(sub, common) -> None:
    from edge_ray.distributed.demo import add_parser
    add_parser(sub, common)


def add_rank_oe(sub, common) -> None:
    from edge_ray.distributed.rank_oe import add_parser
    add_parser(sub, common)


def add_compare(sub, common) -> None:
    from edge_ray.distributed.compare import add_parser
    add_parser(sub, common)


def add_tune(sub, common) -> None:
    from edge_ray.distributed.tune import add_parser
    add_parser(sub, common)


def dispatch(args) -> int:
    if args.command == "train":
        return cmd_train(args)
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "shards":
        return cmd_shards(args)
    return args.run(args)  # demo, rank-oe, tune, compare set their own handler


def print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))
