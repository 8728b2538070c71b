"""`launch.py export`'s work: `edge_ray.detector.export` in this process or, with --gpu, as
a Ray task on one GPU."""
from __future__ import annotations

from edge_ray import storage


def run(args) -> int:
    from edge_ray.detector.export import export_detector
    from edge_ray.tracking.commands import prepare as prepare_tracking

    prepare_tracking(args)  # MLflow's import (seconds) overlaps the export

    kwargs = dict(score=args.score, tpr=args.tpr, label_thresholds=args.label_thresholds,
                  id_train=args.id_train, id_val=args.id_val, id_test=args.id_test, ood=args.ood,
                  overwrite=args.overwrite, table=not args.no_table)
    if args.gpu:
        import ray

        from edge_ray.ray_cluster import connect

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
    # MLflow (edge_ray/tracking): the detector folder as an artifact of the exported training's run
    from edge_ray.tracking import commands as tracking

    def log(run):
        run.log_folder(res["out"], "detector")
        run.set_tags({"edge.detector": res["out"], "edge.detector.score": card["score"]["name"],
                      "edge.detector.threshold": f"{t['value']:.6g}"})

    tracking.log_to_training(args, "export", card["source"]["checkpoint"], log)
    return 0
