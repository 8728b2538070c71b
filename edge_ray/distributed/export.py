"""`launch.py export`: a training checkpoint -> a detector folder others can load
(`edge_ray.export` does the work, in this process or, with --gpu, as a Ray task on one GPU)."""
from __future__ import annotations

import argparse

from edge_ray import storage

_EXAMPLE = "python launch.py export --checkpoint runs/tiny --score jointenergy --tpr 0.95 --out models/tiny-edge"


def _docstring(module: str) -> str:
    import ast
    import importlib.util
    from pathlib import Path

    return ast.get_docstring(ast.parse(Path(importlib.util.find_spec(module).origin).read_text())) or ""


def add_parser(sub, common) -> None:
    doc = _docstring("edge_ray.export")  # read, not imported: importing it brings in torch (~1.3 s)

    p = sub.add_parser("export", help="export a checkpoint as a detector folder (weights, score, threshold, card)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=doc,
                       epilog=f"example:\n  {_EXAMPLE}\n  python launch.py export --checkpoint "
                              "s3://my-bucket/runs/voc --score vim --out s3://my-bucket/models/voc-vim")
    p.add_argument("--checkpoint", required=True, help="a checkpoint_* folder, or a run folder (its newest "
                   "checkpoint); a local path or a URI")
    p.add_argument("--out", required=True, help="the detector folder to write (local path or URI)")
    p.add_argument("--score", default="jointenergy", help="the OOD score (default jointenergy; any of eval's "
                   "ten; odin costs a backward pass per image when predicting)")
    p.add_argument("--tpr", type=float, default=0.95, help="share of ID validation images the threshold keeps "
                   "(default 0.95)")
    p.add_argument("--label-thresholds", default="0.5", help="probability threshold of every class (default 0.5), "
                   "or val-f1: per class, the F1-best one on the ID validation set")
    p.add_argument("--id-train", help="ID training shards the score is fitted on (default: the run's)")
    p.add_argument("--id-val", help="ID validation shards the threshold is chosen on (default: the run's)")
    p.add_argument("--id-test", help="ID test shards for the model card's row (default: the run's)")
    p.add_argument("--ood", nargs="+", help="OOD shard dirs for the model card's row (default: the run's)")
    p.add_argument("--no-table", action="store_true", help="skip the Table-3 evaluation for the model card")
    p.add_argument("--overwrite", action="store_true", help="replace a detector already in --out")
    p.add_argument("--gpu", action="store_true", help="run the passes as a Ray task on one GPU")
    common(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from edge_ray.export import export_detector

    kwargs = dict(score=args.score, tpr=args.tpr, label_thresholds=args.label_thresholds,
                  id_train=args.id_train, id_val=args.id_val, id_test=args.id_test, ood=args.ood,
                  overwrite=args.overwrite, table=not args.no_table)
    if args.gpu:
        import ray

        from edge_ray.distributed.cluster import connect

        # the task runs in its own working folder (maybe on another node): every relative
        # location is made absolute here, on the driver
        for key in ("id_train", "id_val", "id_test"):
            if kwargs[key]:
                kwargs[key] = storage.normalize(kwargs[key])
        if kwargs["ood"]:
            kwargs["ood"] = [storage.normalize(o) for o in kwargs["ood"]]
        connect(args.address)
        task = ray.remote(num_cpus=1, num_gpus=1)(export_detector)
        res = ray.get(task.remote(storage.normalize(args.checkpoint), storage.normalize(args.out),
                                  device="cuda", **kwargs))
    else:
        res = export_detector(args.checkpoint, args.out, **kwargs)
    t, card = res["threshold"], res["card"]
    row = card["evaluation"]["table3_row"]
    print(f"exported {card['source']['checkpoint']} -> {res['out']}")
    print(f"  score {card['score']['name']}: unknown when score < {t['value']:.6g} (keeps "
          f"{100 * t['tpr_on_id_val']:.2f}% of {t['id_val_images']} ID validation images; target {100 * t['tpr']:g}%)")
    if row:
        print(f"  ID test mAP {100 * card['evaluation']['id_test_map']:.1f}%, mean FPR95 {100 * row['mean']['fpr95']:.1f}% "
              f"/ AUROC {100 * row['mean']['auroc']:.1f}% over {len(row) - 1} OOD set(s) (model_card.md)")
    return 0
