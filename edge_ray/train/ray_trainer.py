"""The training driver: check inputs, build a ``TorchTrainer``, fit, summarise.

All input problems (missing shard dirs, wrong roles, class lists that disagree, a batch
too large for the set, images the backbone cannot take) are found here, before any worker
starts, so they surface as one clear error instead of a crash inside a rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from edge_ray import storage
from edge_ray.losses import LOSSES
from edge_ray.config import Config, ConfigError, is_elastic, worker_range
from edge_ray.train.recipes import resolve_run
from edge_ray.data import eval_loader, load_index, steps_per_epoch
from edge_ray.train.checkpoint import checkpoint_folders, last_epoch_on_storage, load_checkpoint
from edge_ray.ray_cluster import check_request
from edge_ray.train.ray_worker import train_loop_per_worker
from edge_ray.models.networks import build_model

# What each worker asks of train.node_pool's custom resource (cluster/aws-gpu.yaml marks a node type
# with {ondemand: 4} or {spot: 4}): enough to exclude every node without it, never what limits a node.
NODE_POOL_SHARE = 0.001


def storage_root(cfg: Config) -> str:
    """Ray wants an absolute path or a URI (``s3://``, ``gs://``) for storage."""
    return storage.normalize(cfg.train.storage_path)


def run_dir(cfg: Config, run_name: str | None = None) -> str:
    return storage.join(storage_root(cfg), run_name or cfg.train.run_name)


def checkpoint_location(ckpt, cfg: Config) -> str:
    """A Ray ``Checkpoint`` as a location: its path is relative to the storage filesystem
    (``bucket/runs/...`` without the scheme on S3)."""
    root = storage_root(cfg)
    if storage.is_uri(root):
        return f"{root.split('://', 1)[0]}://{ckpt.path.lstrip('/')}"
    return ckpt.path


def _probe_forward(cfg: Config, index, num_classes: int, model=None) -> torch.nn.Module:
    """Push one real sample of a set through the eval transform and the backbone; return the
    model so the next probe reuses it."""
    loader = eval_loader(index, batch_size=1, image_size=cfg.data.image_size, mean=cfg.data.mean, std=cfg.data.std)
    x, _, keys = next(iter(loader))
    model = model or build_model(cfg.model.name, num_classes, width=cfg.model.width,
                                 image_size=cfg.data.image_size).eval()
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, AssertionError) as err:  # timm asserts a fixed input size
        raise ConfigError(f"{index.dir}: sample {keys[0]} at data.image_size={cfg.data.image_size} "
                          f"does not fit model {cfg.model.name} ({(str(err) or type(err).__name__).splitlines()[0]}); "
                          "raise data.image_size or pick another backbone") from None
    return model


def check_inputs(cfg: Config) -> dict:
    """Open every configured shard set and check roles, classes, sizes and steps.

    Returns ``{"num_classes", "steps_per_epoch", "classes"}``.
    """
    cfg = resolve_run(cfg)  # the backbone's mean / std where unset, as the run will use them
    if not cfg.data.id_train:
        raise ConfigError("data.id_train is empty; set it to a shard dir made by `launch.py shards`")
    storage.check_writable(storage_root(cfg))  # a wrong bucket or credentials: fail now, not in Ray
    id_train = load_index(cfg.data.id_train, role="id")
    for name in ("id_val", "id_test"):
        path = getattr(cfg.data, name)
        if path and load_index(path, role="id").classes != id_train.classes:
            raise ConfigError(f"data.{name} ({path}) has a different class list than data.id_train "
                              f"({cfg.data.id_train}); convert both with the same classes")
    uses_oe = LOSSES[cfg.loss.method].uses_oe
    if uses_oe and not cfg.data.oe:
        raise ConfigError(f"loss.method={cfg.loss.method} needs outliers: set data.oe to an OE shard dir")
    oe = load_index(cfg.data.oe, role="oe") if uses_oe else None
    for path in cfg.data.ood:
        load_index(path, role="ood")
    steps = steps_per_epoch(id_train.num_samples, cfg.data.batch_size, cfg.train.num_workers)
    model = _probe_forward(cfg, id_train, id_train.num_classes)
    if oe is not None:
        _probe_forward(cfg, oe, id_train.num_classes, model)
    return {"num_classes": id_train.num_classes, "classes": list(id_train.classes), "steps_per_epoch": steps}


def build_trainer(cfg: Config, *, run_name: str | None = None, callbacks=()) -> TorchTrainer:
    """The TorchTrainer of one run; its config (what the checkpoints record) has the
    method's training recipe resolved, so a rerun compares what was actually trained."""
    # Read by Ray Train from the driver's environment (it passes it to its controller): how
    # long a worker group may take to start before Ray Train tries again.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{cfg.train.start_timeout_s:g}"
    cfg = resolve_run(cfg)
    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    if cfg.train.node_pool:  # a sliver of the pool's custom resource: only nodes marked with it qualify
        resources[cfg.train.node_pool] = NODE_POOL_SHARE
    return _Trainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=worker_range(cfg) if is_elastic(cfg) else cfg.train.num_workers,
                                     use_gpu=cfg.train.use_gpu, resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=cfg.train.resize_interval_s,
                                     placement_strategy=cfg.train.placement.upper()),
        run_config=RunConfig(
            name=run_name or cfg.train.run_name, storage_path=storage_root(cfg),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
            callbacks=list(callbacks)),
    )


class _Trainer(TorchTrainer):
    """Ray Train's TorchTrainer with an elastic group sized for the live nodes
    (``ray_elastic.LiveNodesElasticPolicy``) and without two helper actors this project never
    needs (each a process to start per run): the DatasetManager of Ray Datasets (the workers
    stream WebDataset shards; no Ray Dataset is passed) and, on a Ray this process started,
    the PlacementGroupCleaner, which frees a dead controller's placement group: that Ray
    ends with its driver."""

    def fit(self):
        """``TorchTrainer.fit`` (Ray 2.60's body) with this project's elastic policy."""
        if self.running_in_local_mode or not self.scaling_config.elasticity_enabled:
            return super().fit()
        from ray.train.v2._internal.execution.failure_handling import create_failure_policy
        from ray.train.v2._internal.util import ObjectRefWrapper

        from edge_ray.train.ray_elastic import LiveNodesElasticPolicy

        result = self._initialize_and_run_controller(
            train_fn_ref=ObjectRefWrapper(self._get_train_func()),
            scaling_policy=LiveNodesElasticPolicy(scaling_config=self.scaling_config),
            failure_policy=create_failure_policy(self.run_config.failure_config),
            train_run_context=self.train_run_context, callbacks=self._create_default_callbacks(),
            validation_config=self.validation_config)
        if result.error:
            raise result.error
        return result

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        try:  # Ray 2.60's names; another Ray keeps all its callbacks
            from ray.train.v2._internal.callbacks import DatasetsCallback
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        except ImportError:
            return callbacks
        from edge_ray import ray_cluster as cluster

        unused = () if self.datasets else (DatasetsCallback,)
        if cluster.STARTED_HERE:
            unused += (PlacementGroupCleanerCallback,)
        return [c for c in callbacks if not isinstance(c, unused)]


@dataclass
class TrainSummary:
    run_dir: str
    checkpoint_dir: str | None
    history: list
    metrics: dict

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "checkpoint": self.checkpoint_dir,
                "final": self.metrics, "history": self.history}


# Keys that may change between a run and its resumption: how long, where, on what
# resources, with which input mechanics; not what is trained.
RESUMABLE_CHANGES = {
    "data": {"loader_workers", "decoded_cache_mb", "decode", "gpu_feeder", "gpu_crops", "cpu_decode_share", "id_val", "id_test", "oe_val", "ood"},
    "model": {"compile", "compile_mode", "channels_last"},
    "train": {"epochs", "max_failures", "num_to_keep", "storage_path", "run_name", "val_every", "placement",
              "min_workers", "resize_interval_s", "start_timeout_s", "audit_keys", "node_pool",
              "fail_at_epoch", "stop_after_epoch", "use_gpu", "cpus_per_worker", "gpus_per_worker", "amp",
              "amp_dtype"},
}


def config_changes(saved: dict, current: dict) -> list[str]:
    """`section.key: saved -> current` for every training-relevant difference (the eval
    section and RESUMABLE_CHANGES are left out)."""
    out = []
    for section in sorted(set(saved) | set(current)):
        if section == "eval":
            continue
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if key in RESUMABLE_CHANGES.get(section, ()) or a.get(key) == b.get(key):
                continue
            out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def _with_normalization(saved: dict) -> dict:
    """A saved config.json with an unset data.mean / data.std (checkpoints written before
    runs recorded the backbone's normalisation) filled the way ``resolve_run`` fills them
    now, so such a run resumes instead of being refused for a difference it does not have."""
    from edge_ray.models import normalization

    data = dict(saved.get("data", {}))
    if data.get("mean") is None or data.get("std") is None:
        mean, std = normalization(saved["model"]["name"])
        data["mean"] = list(data.get("mean") or mean)
        data["std"] = list(data.get("std") or std)
    return {**saved, "data": data}


def list_checkpoints(folder: str) -> list[str]:
    """The ``checkpoint_*`` folders of a run that hold config.json, oldest first."""
    return [c for c in checkpoint_folders(folder) if storage.is_file(storage.join(c, "config.json"))]


def check_resume(cfg: Config) -> str | None:
    """The checkpoint a rerun would resume from, after checking it was trained with this
    config; a ConfigError naming the differences otherwise."""
    cfg = resolve_run(cfg)
    folder = run_dir(cfg)
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        return None
    saved = _with_normalization(storage.read_json(storage.join(checkpoints[-1], "config.json")))
    changes = config_changes(saved, cfg.to_dict())
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise ConfigError(f"{folder} holds checkpoints of a run trained with another config ({shown}): "
                          "running again would continue that run. Use a new train.run_name "
                          f"(e.g. train.run_name={cfg.train.run_name}-2), another train.storage_path, "
                          f"or delete {folder} to start over")
    return str(checkpoints[-1])


def run_training(cfg: Config, *, checked: bool = False, callbacks=()) -> TrainSummary:
    """Fit the trainer (resuming if a checkpoint of the same run, with the same config,
    exists) and write summary.json. ``checked``: the caller already ran ``check_inputs``
    and ``check_resume`` (the CLI does, before it starts Ray). ``callbacks``: Ray Train
    callbacks of the run (MLflow tracking's relay: edge_ray/tracking/ray_relay.py)."""
    cfg = resolve_run(cfg)
    if not checked:
        check_inputs(cfg)
        check_resume(cfg)
    resources = {"CPU": cfg.train.cpus_per_worker, "GPU": cfg.train.gpus_per_worker if cfg.train.use_gpu else 0}
    if cfg.train.node_pool:
        resources[cfg.train.node_pool] = NODE_POOL_SHARE
    check_request(resources, worker_range(cfg)[0],
                  f"train with train.node_pool={cfg.train.node_pool}"
                  if cfg.train.node_pool else "train")
    last = last_epoch_on_storage(run_dir(cfg))
    if last is not None:
        folder, epochs = last
        state = "finished" if epochs >= cfg.train.epochs else f"from epoch {epochs + 1}"
        print(f"resuming {run_dir(cfg)} {state} (checkpoint {folder})", flush=True)
    result = build_trainer(cfg, callbacks=callbacks).fit()
    ckpt = checkpoint_location(result.checkpoint, cfg) if result.checkpoint is not None else None
    history = load_checkpoint(ckpt)[1] if ckpt else []
    summary = TrainSummary(run_dir(cfg), ckpt, history, dict(result.metrics or {}))
    storage.write_json(storage.join(summary.run_dir, "summary.json"), summary.to_dict(), indent=2)
    return summary
