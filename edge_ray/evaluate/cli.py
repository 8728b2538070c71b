"""`launch.py eval`: a checkpoint -> Table 3 (every score x OOD set, mAP, head/tail) in
results.json, table.md, table.csv and PNG figures."""
from __future__ import annotations

import argparse

from edge_ray.tracking.settings import add_flag as add_tracking_flag


def add_parser(sub, common) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint with the post-hoc scores",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="One pass over the ID test set and every OOD set; writes results.json, "
                                   "table.md, table.csv and PNG figures.",
                       epilog="example:\n  python launch.py eval --checkpoint runs/tiny "
                              "--ood data/demo/ood_letters data/demo/ood_scribble --scores jointenergy maxlogit")
    p.add_argument("--checkpoint", required=True, help="a checkpoint_* folder, or a run folder (its newest complete checkpoint) "
                                                        "(a local path or a URI such as s3://bucket/runs/...)")
    p.add_argument("--id-train", help="ID training shards (fits Mahalanobis/ReAct/ViM/ASH/KNN; default: from the run)")
    p.add_argument("--id-test", help="ID test shards (default: from the run's config)")
    p.add_argument("--ood", nargs="+", help="OOD shard dirs (default: from the run's config)")
    p.add_argument("--scores", nargs="+", default=None, help="subset of scores (default: all eleven)")
    p.add_argument("--name", default="model", help="training name shown in the table rows")
    p.add_argument("--out", default=None, help="results folder, a local path or a URI (default: "
                                               "<the checkpoint's run folder>/eval)")
    p.add_argument("--gpu", action="store_true", help="evaluate as a Ray task on one GPU")
    add_tracking_flag(p)
    common(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from edge_ray import storage
    from edge_ray.evaluate.pipeline import check_score_names, evaluate_checkpoint
    from edge_ray.scores import SCORES
    from edge_ray.tracking.commands import prepare as prepare_tracking
    from edge_ray.train.checkpoint import find_checkpoint

    prepare_tracking(args)  # MLflow's import (seconds) overlaps the evaluation

    scores = check_score_names(args.scores or list(SCORES))
    checkpoint = find_checkpoint(args.checkpoint)  # a run folder means its newest complete checkpoint
    # Default: beside the run the checkpoint belongs to (<run>/eval), wherever that lives.
    out = storage.normalize(args.out) if args.out else storage.join(storage.parent(checkpoint), "eval")
    kwargs = dict(scores=scores, training=args.name, ood=[storage.normalize(p) for p in args.ood] if args.ood else None,
                  **{k: storage.normalize(v) if v else None for k, v in (("id_train", args.id_train), ("id_test", args.id_test))})
    if args.gpu:
        from edge_ray.evaluate.ray_evaluate import evaluate_remote
        from edge_ray.ray_cluster import connect

        connect(args.address)
        res = evaluate_remote(checkpoint, out, use_gpu=True, **kwargs)
    else:
        res = evaluate_checkpoint(checkpoint, out, **kwargs)
    print(storage.read_text(res["paths"]["markdown"]))
    print(f"results: {out} ({', '.join(storage.basename(p) for p in res['paths']['plots'])})")
    # MLflow (edge_ray/tracking): Table 3 and its files on the run of the evaluated training
    from edge_ray.tracking import commands as tracking

    tracking.log_to_training(args, "eval", checkpoint, lambda run: tracking.log_evaluation(
        run, res, step=tracking.checkpoint_step(checkpoint)))
    return 0
