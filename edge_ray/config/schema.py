"""The run configuration: five frozen sections, every key with its default and its rule.

A rule sits beside its field, in the field's metadata: ``at_least`` / ``above`` / ``within``
for numbers (``checks.validate`` says ``<section>.<key> <what>, got <value>``), ``one_of``
for names (with the closest valid one), ``checked_by`` for a value a module judges itself
(``model.name``: ``models.backbone_problem``, which asks timm about ``timm:<name>``). The
valid names of a choice belong to the module that uses them (``losses.LOSSES``,
``models.BACKBONES``, ``data.gpu.GPU_FEEDERS``, ...); ``names_of`` reads them when the config
is checked, so importing this module stays free of torch. Rules between fields are in
``checks.py``.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

import yaml

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GAP_SCOPES = ("auto", "rank", "global")
PLACEMENTS = ("pack", "spread")  # Ray placement strategies PACK / SPREAD for the Train workers
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
AMP_DTYPES = ("auto", "bf16", "fp16")  # train.amp_dtype (train/loop.py: amp_dtype)


def rule(check, what: str, **extra) -> dict:
    """Field metadata: ``check(value)`` must hold; ``what`` completes '<key> ... , got <value>'."""
    return {"check": check, "what": what, **extra}


def at_least(low, what: str | None = None) -> dict:
    return rule(lambda v: v >= low, what or f"must be >= {low}")


def above(low) -> dict:
    return rule(lambda v: v > low, f"must be > {low}")


def one_of(options) -> dict:
    """Field metadata: the value (each value of a tuple field) is one of ``options``, a tuple
    or a function that returns one (read when the config is checked)."""
    return {"choices": options}


def names_of(module: str, name: str):
    """The names a module owns (its registry's keys or a tuple), read when a config is checked."""
    return lambda: tuple(getattr(importlib.import_module(module), name))


def unset_or(kind, meta: dict) -> dict:
    """A key that may stay unset (None: the method's recipe, the backbone's normalisation);
    set, it has type ``kind``."""
    return {**meta, "unset": kind}


def checked_by(module: str, name: str) -> dict:
    """Field metadata: ``module.name(value, key)`` returns the value's problem (one line, with
    the closest valid value) or None; read when a config is checked (it may import what it
    needs, e.g. timm for a ``timm:`` backbone)."""
    return {"problem": lambda: getattr(importlib.import_module(module), name)}


@dataclass(frozen=True)
class DataConfig:
    id_train: str = ""            # shard dir of the ID training set (role id)
    id_val: str = ""              # ID validation set (mAP per epoch, tuning objective)
    id_test: str = ""             # ID test set (final evaluation)
    oe: str = ""                  # the OE shard dir (role oe)
    oe_val: str = ""              # held-out OE (or a named validation OOD set) for tuning
    ood: tuple = ()               # test OOD shard dirs (role ood)
    image_size: int = field(default=256, metadata=at_least(8))
    batch_size: int = field(default=32, metadata=at_least(1))     # ID images per rank per step
    oe_batch_size: int = field(default=32, metadata=at_least(1))  # OE images per rank per step
    loader_workers: int = field(default=2, metadata=at_least(0))  # DataLoader workers per rank
    # loader_workers=0: keep decoded training images (RGB, before the random crop) up to this
    # many MB so later epochs skip decoding
    decoded_cache_mb: int = field(default=0, metadata=at_least(0, "must be >= 0 (0: off)"))
    hflip: bool = True
    crop_scale: tuple = (0.5, 1.0)  # checks.py: [min, max] within (0, 1]
    # unset (null) = the backbone's own (models.normalization: timm's pretrained_cfg, else
    # ImageNet's), filled in where the run is built, so checkpoints record the values used
    mean: tuple | None = field(default=None, metadata=unset_or((), {}))
    std: tuple | None = field(default=None, metadata=unset_or((), {}))
    # "cpu" or "gpu" (nvJPEG, falls back to cpu)
    decode: str = field(default="cpu", metadata=one_of(names_of("edge_ray.data.gpu", "DECODERS")))
    gpu_feeder: str = field(default="serial", metadata=one_of(names_of("edge_ray.data.gpu", "GPU_FEEDERS")))
    gpu_crops: str = field(default="batched", metadata=one_of(names_of("edge_ray.data.gpu", "GPU_CROPS")))
    # decode=gpu: share of each batch decoded by PIL in the loader workers instead of nvJPEG
    cpu_decode_share: float = field(default=0.0, metadata=rule(lambda v: 0 <= v <= 1, "must lie in [0, 1]"))


@dataclass(frozen=True)
class ModelConfig:
    # resnet50 | vgg16 | densenet121 | smallcnn | timm:<any timm model> (e.g. timm:vit_small_patch16_224)
    name: str = field(default="resnet50", metadata=checked_by("edge_ray.models", "backbone_problem"))
    # torchvision weights name (e.g. IMAGENET1K_V2) or a local .pth; timm: "pretrained" (a download) or a local file
    weights: str = ""
    # smallcnn only: channels of the first block (feature dim = 4 * width)
    width: int = field(default=32, metadata=at_least(1))
    channels_last: bool = True    # NHWC memory format (faster with cuDNN and oneDNN)
    compile: bool = False
    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = field(default="default", metadata=one_of(names_of("edge_ray.models", "COMPILE_MODES")))


@dataclass(frozen=True)
class LossConfig:
    # bce | edge | oe | hendrycks_oe | energy_oe | focal | asl | dbloss
    method: str = field(default="edge", metadata=one_of(names_of("edge_ray.losses", "LOSSES")))
    alpha: float = field(default=1.0, metadata=at_least(0))
    beta: float = field(default=0.1, metadata=at_least(0))
    k: int = field(default=32, metadata=at_least(1))
    m: float = field(default=1.0, metadata=at_least(0, "(the energy margin) must be >= 0"))
    # absolute: margin m in energy units (paper Eq. 6) | relative: m x the mean bottom-k ID energy
    m_mode: str = field(default="absolute", metadata=one_of(names_of("edge_ray.losses", "M_MODES")))
    tau: int = field(default=0, metadata=at_least(0))  # epochs with beta = 0 before the gap term starts
    # mean (paper Eq. 6-7) | pairwise (released code)
    gap: str = field(default="mean", metadata=one_of(names_of("edge_ray.losses", "GAP_MODES")))
    # bottom-k within each rank's batch (rank) or over all ranks (global); auto: global when elastic
    gap_scope: str = field(default="auto", metadata=one_of(GAP_SCOPES))
    lam: float = 0.5              # Hendrycks OE weight
    energy_lam: float = 0.1       # EnergyOE weight
    m_in: float = -7.0
    m_out: float = -1.0
    focal_gamma: float = 2.0
    asl_gamma_pos: float = 0.0
    asl_gamma_neg: float = 4.0
    asl_clip: float = 0.05


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=20, metadata=at_least(1))
    # optimizer / lr / weight_decay / schedule: unset (null) = the method's recipe (train/recipes.py)
    optimizer: str | None = field(default=None, metadata=unset_or("", one_of(OPTIMIZERS)))
    lr: float | None = field(default=None, metadata=unset_or(0.0, above(0)))
    momentum: float = field(default=0.9, metadata=rule(lambda v: 0 <= v < 1, "must lie in [0, 1)"))  # SGD only
    weight_decay: float | None = field(default=None, metadata=unset_or(0.0, at_least(0)))
    nesterov: bool = False
    schedule: str | None = field(default=None, metadata=unset_or("", one_of(SCHEDULES)))
    separate_forward: bool = False
    seed: int = 0
    # Ray Train workers (DDP ranks); YAML [min, max] = elastic (loading.py)
    num_workers: int = field(default=1, metadata=at_least(1))
    min_workers: int = 0          # elastic: run on min_workers..num_workers as nodes come and go (0: fixed size)
    # elastic: how often Ray Train looks for room to grow
    resize_interval_s: float = field(default=60.0, metadata=above(0))
    # how long a worker group may take to start before Ray Train tries again
    start_timeout_s: float = field(default=60.0, metadata=above(0))
    use_gpu: bool = False
    cpus_per_worker: float = field(default=1.0, metadata=above(0))
    gpus_per_worker: float = 1.0  # checks.py: > 0 with use_gpu
    # pack | spread: Train workers packed on few nodes, or one per node where possible
    placement: str = field(default="pack", metadata=one_of(PLACEMENTS))
    # a custom Ray resource each worker also asks 0.001 of, to pick a node pool ("" = none): ondemand / spot in cluster/aws-gpu.yaml
    node_pool: str = field(default="", metadata=rule(lambda v: v not in ("CPU", "GPU", "memory", "object_store_memory"),
                                                     "must name a custom resource of the nodes (e.g. ondemand, spot), not CPU / GPU / memory"))
    amp: bool = True              # autocast on GPU, in amp_dtype
    # auto (bf16 where the GPU has it, else fp16) | bf16 | fp16 (with a gradient scaler)
    amp_dtype: str = field(default="auto", metadata=one_of(AMP_DTYPES))
    max_failures: int = field(default=0, metadata=at_least(-1, "must be >= 0 (or -1: retry forever)"))
    num_to_keep: int = field(default=2, metadata=at_least(1))
    storage_path: str = "runs"
    run_name: str = "edge"
    val_every: int = field(default=1, metadata=at_least(0, "must be >= 0 (0: never)"))
    fail_at_epoch: int = -1       # test switch: rank 1 (or 0) raises once in this epoch
    stop_after_epoch: int = -1    # test switch: end the run early after this epoch
    audit_keys: bool = False      # each rank writes the ID keys it trained on, per epoch, to <run>/sample_keys/


@dataclass(frozen=True)
class EvalConfig:
    scores: tuple = field(default=("maxlogit", "msp", "odin", "energy", "mahalanobis", "react", "vim", "ash",
                                   "maxenergy", "jointenergy", "knn"),
                          metadata=one_of(names_of("edge_ray.scores", "SCORES")))
    batch_size: int = field(default=128, metadata=at_least(1))
    out: str = ""                 # results folder ("" = <storage>/<run_name>/eval)
    min_remaining: int = field(default=20, metadata=at_least(1))


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "eval": EvalConfig}


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says how to fix it."""


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
