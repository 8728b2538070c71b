"""The Ray Train worker loop: one DDP rank training EDGE (or a baseline) on streamed shards.

Every rank runs the same number of steps per epoch (the reader fixes it), reports once per
epoch (``ray.train.report`` is a barrier), and rank 0 writes the checkpoint. A run restarted
by ``FailureConfig`` or rerun with the same name and storage continues from the newest
checkpoint.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from tqdm import tqdm

from edge_ray import storage
from edge_ray.train import builders, loop
from edge_ray.evaluate import forward
from edge_ray.losses import LOSSES, Shares
from edge_ray.train.checkpoint import checkpoint_folders, latest_checkpoint, load_checkpoint, save_checkpoint
from edge_ray.config import batches_for, from_dict, gap_scope
from edge_ray.data import EvalCache, load_index, train_loader
from edge_ray.losses import joint_energy
from edge_ray.metrics import mean_average_precision, ood_metrics
from edge_ray.models.networks import build_model



def _run_dir(cfg) -> str:
    return storage.join(cfg.train.storage_path, ray.train.get_context().get_experiment_name())


def _prune_orphans(run: str) -> None:
    """Delete checkpoint folders Ray does not track and never will: written by an attempt
    that failed before Ray registered them (or cut short), once Ray has registered a newer
    one. Ray's own folders follow ``train.num_to_keep``; these would stay forever. Ray's
    registry is its checkpoint manager snapshot in the run folder (Ray 2.60's format); if
    it cannot be read, nothing is deleted."""
    try:
        snapshot = storage.read_json(storage.join(run, "checkpoint_manager_snapshot.json"))
        registered = {r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}
    except (ValueError, OSError, KeyError, TypeError):
        return
    if not registered:
        return
    newest = max(registered)
    for folder in checkpoint_folders(run):
        name = storage.basename(folder)
        if name not in registered and name < newest:
            storage.delete_tree(folder)


def _load_checkpoint(model, opt, sched, cfg, scaler=None):
    """Restore the newest complete checkpoint of this run (the fp16 scaler's state too, where
    it has one); return (start_epoch, history, resumes). That is Ray's registered one
    (``ray.train.get_checkpoint()``) or a newer one on storage that Ray had not registered
    when a worker or node was lost (``checkpoint.latest_checkpoint``)."""
    found = latest_checkpoint(_run_dir(cfg))
    if found is not None:
        _, state, history, _ = found
    else:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return 0, [], 0
        with ckpt.as_directory() as d:
            state, history, _ = load_checkpoint(d)
    loop.unwrap(model).load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    builders.load_scheduler_state(sched, state["scheduler"])
    loop.restore_scaler(scaler, state)
    return int(state["epoch"]) + 1, history, int(state["resumes"]) + 1


def _gather_steps(steps: int, device) -> list[int]:
    """Steps run by every rank this epoch (the DDP equal-steps invariant, made visible)."""
    if not dist.is_initialized():
        return [steps]
    t = torch.tensor([steps], device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


# Epoch statistics that are means over OE samples, computed unweighted on each rank: their
# global mean weights each rank by its OE share. (The loss parts arrive weighted already.)
OE_DIAGNOSTICS = ("gap_active", "energy_oe")
PER_RANK_STATS = ("steps", "images", "seconds", "images_per_s", "data_wait_s", "sync_wait_s")


def _global_means(stats: dict, shares: Shares, device) -> dict:
    """The epoch's loss parts and diagnostics as means over the global batch (every rank's
    share-weighted values averaged); throughput and timings stay this rank's."""
    keys = [k for k in stats if k not in PER_RANK_STATS]
    if not dist.is_initialized() or not keys:
        return stats
    weights = [shares.oe if k in OE_DIAGNOSTICS else 1.0 for k in keys]
    t = torch.tensor([stats[k] * w for k, w in zip(keys, weights)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {**stats, **dict(zip(keys, (t / dist.get_world_size()).tolist()))}


def _gather_nodes() -> list[str]:
    """The Ray node (first 8 hex digits of its id) each rank runs on, in rank order."""
    node = ray.get_runtime_context().get_node_id()[:8]
    if not dist.is_initialized():
        return [node]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, node)
    return out


def _keys_into(loader, keys: list):
    """The loader's batches without their keys, which go to ``keys`` (train.audit_keys)."""
    for x_id, y, x_oe, batch_keys in loader:
        keys.extend(batch_keys)
        yield x_id, y, x_oe


def _validate(model, cfg, device, cache: EvalCache) -> dict:
    """Rank-0 validation that never touches the test OOD sets: ID val mAP and, when
    ``data.oe_val`` is set, JointEnergy FPR95/AUROC of ID val against held-out OE images
    (the tuning objective). `cache` keeps the decoded validation images between epochs
    when they fit (`EvalCache`)."""
    if not cfg.data.id_val:
        return {}

    def outputs(path, role):
        loader = cache.loader(load_index(path, role=role), batch_size=cfg.eval.batch_size,
                              image_size=cfg.data.image_size, num_workers=0, mean=cfg.data.mean, std=cfg.data.std)
        return forward.collect_outputs(loop.unwrap(model), loader, device=device)

    val = outputs(cfg.data.id_val, "id")
    out = {"val_map": mean_average_precision(val["logits"], val["targets"])}
    if cfg.data.oe_val:
        oe = outputs(cfg.data.oe_val, None)
        m = ood_metrics(joint_energy(torch.from_numpy(val["logits"])).numpy(),
                        joint_energy(torch.from_numpy(oe["logits"])).numpy())
        out.update(val_fpr95=m["fpr95"], val_auroc=m["auroc"])
    return out


def _save(d, model, opt, sched, epoch, history, resumes, cfg_dict, scaler=None) -> ray.train.Checkpoint:
    save_checkpoint(d, model_state=loop.unwrap(model).state_dict(), optimizer_state=opt.state_dict(),
                    scaler_state=scaler.state_dict() if scaler is not None else None,
                    scheduler_state=sched.state_dict(), epoch=epoch, resumes=resumes,
                    seed=cfg_dict["train"]["seed"], history=history, config=cfg_dict)
    return ray.train.Checkpoint.from_directory(d)


def _quiet_train_logs() -> None:
    """Ray Train logs every report at INFO (in Ray 2.60 from a logger named after its file,
    with the whole TrainingReport: ~600 characters an epoch); the rank-0 JSON line says the
    same, once."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    context = sys.modules.get("ray.train.v2._internal.execution.context")
    if isinstance(getattr(context, "logger", None), logging.Logger):
        context.logger.setLevel(logging.WARNING)


def _print_line(text: str) -> None:
    """One line to the worker's stdout. Not `print`: Ray Train replaces it in its workers by
    a function that writes the line and also logs it, and the driver showed every line twice."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def train_loop_per_worker(cfg_dict: dict) -> None:
    _quiet_train_logs()
    cfg = from_dict(cfg_dict)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)

    id_index = load_index(cfg.data.id_train, role="id")
    uses_oe = LOSSES[cfg.loss.method].uses_oe
    oe_index = load_index(cfg.data.oe, role="oe") if uses_oe else None
    model = build_model(cfg.model.name, id_index.num_classes, weights=cfg.model.weights, width=cfg.model.width,
                        image_size=cfg.data.image_size)
    on_gpu = device.type == "cuda"
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    if cfg.model.compile:
        model = torch.compile(model, mode=None if cfg.model.compile_mode == "default" else cfg.model.compile_mode)

    # The global batches are fixed; every rank's part of them at this world size, differing by
    # one image at most, and the weights that make the step the global batch's (config.batches_for)
    id_batches, oe_batches = batches_for(cfg, world)
    id_batch, oe_batch = id_batches[rank], oe_batches[rank]
    shares = Shares.of(rank, id_batches, oe_batches)

    def loader_for(epoch):
        # decode="gpu" yields batches already on `device` (nvJPEG + GPU crops); engine's
        # move to the device is then a no-op. Without CUDA it falls back to CPU decode.
        return train_loader(id_index, oe_index, batch_size=id_batch, rank_batches=id_batches,
                            return_keys=cfg.train.audit_keys,
                            oe_batch_size=oe_batch, image_size=cfg.data.image_size,
                            epoch=epoch, seed=cfg.train.seed, rank=rank, world_size=world,
                            num_workers=cfg.data.loader_workers, hflip=cfg.data.hflip,
                            crop_scale=cfg.data.crop_scale, mean=cfg.data.mean, std=cfg.data.std,
                            decode=cfg.data.decode, device=device, gpu_feeder=cfg.data.gpu_feeder,
                            gpu_crops=cfg.data.gpu_crops, cpu_decode_share=cfg.data.cpu_decode_share,
                            decoded_cache_mb=cfg.data.decoded_cache_mb,
                            # CPU-decoded batches pinned and copied to the GPU by a thread on
                            # its own stream, a batch ahead: the copy overlaps the last step;
                            # GPU decode pins its packed batches on CUDA by itself (None)
                            pin_memory=True if on_gpu and cfg.data.decode == "cpu" else None,
                            prefetch_to_device=on_gpu)

    steps = len(loader_for(0))
    opt = builders.make_optimizer(model, cfg.train, cfg.loss.method)
    sched = builders.make_scheduler(opt, cfg.train, steps, cfg.loss.method)
    loss_fn = builders.make_loss_fn(cfg.loss, class_freq=id_index.label_counts, num_train=id_index.num_samples,
                                    gap_scope=gap_scope(cfg), id_batches=id_batches, shares=shares)
    opts = loop.StepOptions(device=device, amp=cfg.train.amp and on_gpu,
                              amp_dtype=loop.device_amp_dtype(cfg.train.amp_dtype, device),
                              channels_last=cfg.model.channels_last,
                              separate_forward=cfg.train.separate_forward,
                              **loop.gap_diag_options(cfg.loss))
    scaler = loop.make_scaler(opts)  # fp16 only
    start, history, resumes = _load_checkpoint(model, opt, sched, cfg, scaler)
    run = _run_dir(cfg)
    nodes = _gather_nodes()

    stop = cfg.train.stop_after_epoch
    last = stop if 0 < stop < cfg.train.epochs else cfg.train.epochs  # epochs this run trains
    upcoming, val_cache = None, EvalCache()
    for epoch in range(start, cfg.train.epochs):
        # The fault switch fires once: only in an attempt that did not start from a checkpoint.
        fail = (epoch == cfg.train.fail_at_epoch and resumes == 0 and rank == world - 1)
        started_at = time.time()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=rank != 0,
                   mininterval=2.0, leave=False)
        loader = upcoming if upcoming is not None else loader_for(epoch)
        # The next epoch's loader workers start now and are ready when this epoch ends.
        upcoming = loader_for(epoch + 1).start() if epoch + 1 < last else None
        keys: list[str] = []
        batches = _keys_into(loader, keys) if cfg.train.audit_keys else loader
        stats = loop.train_epoch(model, batches, loss_fn, opt, sched, epoch=epoch,
                                 opts=opts, progress=bar, fail_at_step=steps // 2 if fail else None, scaler=scaler)
        stats = _global_means(stats, shares, device)
        if cfg.train.audit_keys:
            storage.write_json(storage.join(run, "sample_keys", f"epoch{epoch + 1:04d}-attempt{resumes}-rank{rank}"
                                                                f"-of{world}.json"), keys)
        bar.close()
        # Where the input thread(s) spent the epoch (host seconds): see TrainLoader.timings.
        inputs = {f"input_{k}_s": round(v, 3) for k, v in getattr(loader, "timings", {}).items()}
        metrics = {"epoch": epoch + 1, **{k: float(v) for k, v in stats.items()}, **inputs,
                   "steps_per_rank": _gather_steps(stats["steps"], device), "lr": sched.get_last_lr()[0],
                   "beta_active": cfg.loss.method == "edge" and epoch >= cfg.loss.tau,
                   "resumes": resumes, "world_size": world, "nodes": nodes, "id_batch_per_rank": id_batches,
                   "amp": opts.amp_dtype if opts.amp else "off",
                   "started_at": round(started_at, 3), "finished_at": round(time.time(), 3)}
        if rank == 0 and cfg.train.val_every and (epoch + 1) % cfg.train.val_every == 0:
            metrics.update(_validate(model, cfg, device, val_cache))
        history.append(metrics)
        if rank == 0:
            _print_line(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}))
        with tempfile.TemporaryDirectory(prefix="edge-ckpt-") as d:  # report copies it to storage
            ckpt = _save(d, model, opt, sched, epoch, history, resumes, cfg_dict, scaler) if rank == 0 else None
            ray.train.report(metrics, checkpoint=ckpt)
        if rank == 0:
            _prune_orphans(run)
        if epoch + 1 == cfg.train.stop_after_epoch:
            break
