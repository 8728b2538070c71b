"""Rank OE candidate sets by the dilation distance (paper Eq. 9; Alg. 1, line 1) on a Ray task pool.

Every set's penultimate features are one Ray task: the ID set's and each candidate's, all
submitted at once, so the ID task does not hold the others back (each task process's first
task also imports torch and the model: on 2 cores that start-up was most of the ranking).
The driver computes `dilation_distance` of each candidate as its features arrive (a few
SVDs of [batch, D] matrices, cheap beside the forward passes; smaller = more informative OE
set). Features come from the model in eval mode, with the deterministic eval transform and no grad
(the released code used train mode and augmentation, so its distances changed from run to run).

Which images each set contributes, and how a candidate that cannot be measured is
reported, is `edge_ray.oe.rank`'s (the Ray-free half, which `rank_serial` runs in one
process); here the same measurement runs as a task pool, and the command line lives.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from edge_ray import storage
from edge_ray.data import ShardIndex, load_index
from edge_ray.models import BACKBONES, normalization
from edge_ray.models.networks import MultiLabelNet, build_model, load_state_file
from edge_ray.oe.rank import (RankOptions, _positions, _require_ranked, format_table, inspect_candidate,
                              measure, model_blob, model_from_blob, open_id_set, rank_candidates,
                              rank_serial, rank_table, result_row, sample_positions, set_features)

# The Ray-free names live in edge_ray.oe.rank; they are importable from here as well.
__all__ = ["RankOptions", "rank_parallel", "rank_serial", "rank_candidates", "rank_table", "result_row",
           "sample_positions", "set_features", "measure", "format_table", "run"]


# ---- Ray task pool -------------------------------------------------------------------------

def _features_task(blob: dict, index: ShardIndex, opts: RankOptions, device: str, threads: int):
    if device == "cpu":
        torch.set_num_threads(threads)
    return set_features(model_from_blob(blob), index, _positions(index, opts), opts, device=device)


def rank_parallel(model: MultiLabelNet, model_name: str, id_dir: str, candidates: list[str],
                  opts: RankOptions, *, num_cpus: float = 1, num_gpus: float = 0,
                  max_in_flight: int | None = None, progress: bool = True) -> list[dict]:
    """`rank_serial` as Ray tasks: one for the ID features, one per candidate, all at once.

    Each task asks for `num_cpus` / `num_gpus` (fractions allowed; a GPU task runs on cuda);
    `max_in_flight` caps the candidate tasks running at once (None: as resources allow).
    No task waits on another: the distances are measured here, from the features.
    """
    opts = opts.check()
    _check_resources(num_cpus, num_gpus)
    id_index = open_id_set(id_dir, opts)
    rows, todo = {}, []
    for i, path in enumerate(candidates):
        index, rows[i] = inspect_candidate(path, opts)
        if index is not None:
            todo.append((i, index))
    if not todo:
        _require_ranked(list(rows.values()))  # raises, listing every reason
    device, threads = ("cuda" if num_gpus > 0 else "cpu"), max(1, int(num_cpus))
    # One retry covers a lost worker or node; an exception raised by the task is never retried.
    task = ray.remote(_features_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)
    blob = ray.put(model_blob(model, model_name))
    id_ref = task.remote(blob, id_index, opts, device, threads)
    pending, cap, id_features = {}, max_in_flight or len(todo), None
    with tqdm(total=len(todo), desc="rank-oe", unit="set", disable=not progress) as bar:
        while todo or pending:
            while todo and len(pending) < cap:
                i, index = todo.pop(0)
                pending[task.remote(blob, index, opts, device, threads)] = i
            if id_features is None:
                # an unreadable ID set stops everything, with its own message
                id_features = _get_id(id_ref, list(pending))
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            rows[i] = _finish(rows[i], done[0], id_features, opts)
            bar.update(1)
            bar.set_postfix_str(f"{storage.basename(rows[i]['candidate'])}: {rows[i]['status']}")
    return _require_ranked(rank_table([rows[i] for i in range(len(candidates))]))


def _check_resources(num_cpus: float, num_gpus: float) -> None:
    if num_cpus <= 0 or num_gpus < 0:
        raise ValueError(f"--num-cpus must be > 0 and --num-gpus >= 0, got {num_cpus} and {num_gpus}")
    have = ray.cluster_resources()
    for kind, want in (("CPU", num_cpus), ("GPU", num_gpus)):
        if want > have.get(kind, 0):
            raise ValueError(f"each task asks for {want} {kind} but the Ray cluster has "
                             f"{have.get(kind, 0)}; lower --num-{kind.lower()}s")


def _get_id(ref, others: list):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        for other in others:  # the candidates' features would not be measured against anything
            ray.cancel(other)
        cause = getattr(err, "cause", None)
        raise cause if isinstance(cause, (ValueError, OSError)) else err


def _finish(row: dict, ref, id_features, opts: RankOptions) -> dict:
    """The candidate's row with its distance, or with the reason its task or its measure failed."""
    try:
        return {**row, **measure(id_features, ray.get(ref), opts)}
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None)
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    except ValueError as err:
        reason = f"{type(err).__name__}: {err}"
    return {**row, "status": "failed", "reason": reason.strip().splitlines()[0]}


# ---- command line -------------------------------------------------------------------------

def load_ranking_model(args) -> tuple[MultiLabelNet, str, dict]:
    """(model, backbone name, data defaults) from --checkpoint or --backbone/--weights."""
    if args.checkpoint:
        if args.backbone or args.weights:
            raise ValueError("give either --checkpoint or --backbone/--weights, not both")
        from edge_ray.train.checkpoint import load_trained
        model, cfg, _ = load_trained(storage.normalize(args.checkpoint))
        return model, cfg.model.name, {"image_size": cfg.data.image_size,
                                       "mean": tuple(cfg.data.mean), "std": tuple(cfg.data.std)}
    name, weights = args.backbone or "resnet50", args.weights or ""
    torch.manual_seed(args.seed)  # a random-init backbone is then the same for the same seed
    if not weights:
        print(f"note: {name} has random weights; pass --weights or --checkpoint for learned features")
    num_classes = 1  # the head is unused; a full MultiLabelNet file brings its own
    if Path(weights).is_file():
        num_classes = int(load_state_file(Path(weights)).get("head.weight", torch.empty(1)).shape[0])
    image_size = args.image_size or RankOptions.image_size  # a ViT / Swin is built for it
    mean, std = normalization(name)  # the backbone's own (timm's pretrained_cfg; ImageNet's)
    return build_model(name, num_classes, weights=weights, image_size=image_size), name, {"mean": mean, "std": std}


def run(args) -> int:
    from edge_ray.config import load_config
    from edge_ray.ray_cluster import connect

    if args.select_out and not args.select:
        raise ValueError("--select-out needs --select CONFIG (the training config to update)")
    if args.select and not storage.is_file(args.select):
        raise FileNotFoundError(f"--select {args.select}: no such training config (YAML)")
    cfg = load_config(args.select) if args.select else None  # fail before any work
    # Locations: relative paths against this directory (Ray tasks run elsewhere); a shell
    # pattern in a URI (s3://bucket/demo/oe_*) is expanded here, as the shell does for paths.
    id_dir = storage.normalize(args.id)
    candidates = [storage.normalize(c) for pattern in args.candidates for c in storage.glob(pattern)]
    if not candidates:
        raise FileNotFoundError(f"--candidates {' '.join(args.candidates)}: no shard set matches; pass OE shard folders (each with an index.json) or a pattern such as data/oe/*")
    out = storage.normalize(args.out)
    storage.check_writable(out)
    RankOptions(k=args.k, batch_size=args.batch_size, batches=args.batches).check()
    connect(args.address)
    model, name, defaults = load_ranking_model(args)
    if args.image_size:
        defaults["image_size"] = args.image_size
    opts = RankOptions(k=args.k, batch_size=args.batch_size, batches=args.batches, seed=args.seed,
                       **defaults)
    rows = rank_parallel(model, name, id_dir, candidates, opts, num_cpus=args.num_cpus,
                         num_gpus=args.num_gpus)
    print(format_table(rows))
    best = rows[0]["candidate"]
    id_images = len(_positions(load_index(id_dir), opts))
    report = {"id": id_dir, "id_images": id_images,
              "model": {"backbone": name, "checkpoint": args.checkpoint or "",
                                       "weights": args.weights or ""},
              "options": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(opts).items()},
              "best": best, "candidates": rows}
    storage.write_json(storage.join(out, "ranking.json"), report, indent=1)
    print(f"best OE candidate: {best}; ranking: {storage.join(out, 'ranking.json')}")
    if cfg is not None:
        target = storage.normalize(args.select_out) if args.select_out else storage.join(out, "selected.yaml")
        storage.write_text(target, replace(cfg, data=replace(cfg.data, oe=best)).to_yaml())
        print(f"wrote {target} (data.oe = {best})")
    return 0
