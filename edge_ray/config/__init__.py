"""Run configuration: frozen dataclasses, loaded from YAML, overridden by ``key=value``.

A config file mirrors the sections below (``data``, ``model``, ``loss``, ``train``,
``eval``); every key is optional and defaults to the values here. Overrides use dotted
keys (``loss.beta=0.01 train.num_workers=4``) and are parsed as YAML scalars. Unknown keys
fail early with the closest valid name, so a typo never silently trains the default.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from edge_ray import storage
from edge_ray.models import BACKBONES
from edge_ray.train.recipes import RECIPES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    id_train: str = ""            # shard dir of the ID training set (role id)
    id_val: str = ""              # ID validation set (mAP per epoch, tuning objective)
    id_test: str = ""             # ID test set (final evaluation)
    oe: str = ""                  # the OE shard dir (role oe)
    oe_val: str = ""              # held-out OE (or a named validation OOD set) for tuning
    ood: tuple = ()               # test OOD shard dirs (role ood)
    image_size: int = 256
    batch_size: int = 32          # ID images per rank per step
    oe_batch_size: int = 32       # OE images per rank per step
    loader_workers: int = 2       # DataLoader workers per rank
    decoded_cache_mb: int = 0     # loader_workers=0: keep decoded training images (RGB, before the
                                  # random crop) up to this many MB so later epochs skip decoding
    hflip: bool = True
    crop_scale: tuple = (0.5, 1.0)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    decode: str = "cpu"           # "cpu" or "gpu" (nvJPEG, falls back to cpu)
    gpu_feeder: str = "serial"    # decode=gpu: one of GPU_FEEDERS (below)
    gpu_crops: str = "batched"    # decode=gpu: one of GPU_CROPS (below)
    cpu_decode_share: float = 0.0  # decode=gpu: share of each batch decoded by PIL in the loader workers instead of nvJPEG


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet50"        # resnet50 | vgg16 | densenet121 | smallcnn
    weights: str = ""             # torchvision weights name (e.g. IMAGENET1K_V2) or a local .pth
    width: int = 32               # smallcnn only: channels of the first block (feature dim = 4 * width)
    channels_last: bool = True    # NHWC memory format (faster with cuDNN and oneDNN)
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs


@dataclass(frozen=True)
class LossConfig:
    method: str = "edge"          # bce | edge | oe | hendrycks_oe | energy_oe | focal | asl | dbloss
    alpha: float = 1.0
    beta: float = 0.1
    k: int = 32
    m: float = 1.0
    tau: int = 0                  # epochs with beta = 0 before the gap term starts
    gap: str = "mean"             # mean (paper Eq. 6-7) | pairwise (released code)
    gap_scope: str = "auto"       # bottom-k within each rank's batch (rank) or over all ranks (global); auto: global when elastic
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
    epochs: int = 20
    # optimizer / lr / weight_decay / schedule: unset (null) = the method's recipe (recipes.py)
    optimizer: str | None = None  # sgd | adam | adamw
    lr: float | None = None
    momentum: float = 0.9         # SGD only
    weight_decay: float | None = None
    nesterov: bool = False
    schedule: str | None = None   # onecycle | cosine | constant
    separate_forward: bool = False
    seed: int = 0
    num_workers: int = 1          # Ray Train workers (DDP ranks); YAML [min, max] = elastic (below)
    min_workers: int = 0          # elastic: run on min_workers..num_workers as nodes come and go (0: fixed size)
    resize_interval_s: float = 60.0  # elastic: how often Ray Train looks for room to grow
    start_timeout_s: float = 60.0  # how long a worker group may take to start before Ray Train tries again
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    placement: str = "pack"       # pack | spread: Train workers packed on few nodes, or one per node where possible
    amp: bool = True              # bf16 autocast on GPU
    max_failures: int = 0
    num_to_keep: int = 2
    storage_path: str = "runs"
    run_name: str = "edge"
    val_every: int = 1
    fail_at_epoch: int = -1       # test switch: rank 1 (or 0) raises once in this epoch
    stop_after_epoch: int = -1    # test switch: end the run early after this epoch
    audit_keys: bool = False      # each rank writes the ID keys it trained on, per epoch, to <run>/sample_keys/


@dataclass(frozen=True)
class EvalConfig:
    scores: tuple = ("maxlogit", "msp", "odin", "energy", "mahalanobis", "react", "vim",
                     "ash", "maxenergy", "jointenergy")
    batch_size: int = 128
    out: str = ""                 # results folder ("" = <storage>/<run_name>/eval)
    min_remaining: int = 20


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


_SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig,
                    "train": TrainConfig, "eval": EvalConfig}


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says how to fix it."""


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Bring a YAML value to the type of the field's default (tuples stay tuples)."""
    where = f"{section}.{key}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except (TypeError, ValueError):
            pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(default, str):
        return "" if value is None else str(value)
    return value


def _apply(cfg: Config, section: str, key: str, value: Any) -> Config:
    if section not in _SECTION_CLASSES:
        raise ConfigError(f"unknown config section {section!r}{_suggest(section, _SECTION_CLASSES)}")
    sub = getattr(cfg, section)
    names = {f.name for f in fields(sub)}
    if key not in names:
        dotted = [f"{section}.{n}" for n in names]
        raise ConfigError(f"unknown config key {section}.{key}{_suggest(f'{section}.{key}', dotted)}")
    default = getattr(sub, key)
    if section == "train" and key == "num_workers":
        return replace(cfg, train=_worker_range(sub, value))
    if section == "train" and key in RECIPES["*"]:  # may be unset (null): the method's recipe
        if value is None:
            return replace(cfg, train=replace(sub, **{key: None}))
        default = RECIPES["*"][key]                  # coerce as the recipe's type
    value = _coerce(section, key, value, default)
    return replace(cfg, **{section: replace(sub, **{key: value})})


def _worker_range(train: TrainConfig, value) -> TrainConfig:
    """``train.num_workers``: an integer (a fixed worker group) or ``[min, max]`` (elastic:
    stored as min_workers=min, num_workers=max)."""
    if isinstance(value, str) and value.startswith("["):
        value = yaml.safe_load(value)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"train.num_workers must be an integer or [min, max], got {list(value)!r}")
        low, high = (_coerce("train", "num_workers", v, 1) for v in value)
        return replace(train, min_workers=low, num_workers=high)
    return replace(train, num_workers=_coerce("train", "num_workers", value, 1), min_workers=0)


def worker_range(cfg: Config) -> tuple[int, int]:
    """(fewest, most) Train workers: equal for a fixed group."""
    t = cfg.train
    return (t.min_workers or t.num_workers, t.num_workers)


def is_elastic(cfg: Config) -> bool:
    low, high = worker_range(cfg)
    return low < high


def batches_for(cfg: Config, world_size: int) -> tuple[int, int]:
    """Per-rank (ID, OE) batch at ``world_size`` workers. The global batches are held at
    ``data.batch_size`` / ``data.oe_batch_size`` times ``train.num_workers`` (the most
    workers): with fewer, each rank takes a larger share, so the optimisation (global batch,
    steps per epoch, learning-rate schedule) does not depend on how many survived."""
    high = cfg.train.num_workers
    ids, oes = cfg.data.batch_size * high, cfg.data.oe_batch_size * high
    if ids % world_size or oes % world_size:
        raise ConfigError(f"the global batches {ids} (ID) and {oes} (OE) do not split over {world_size} workers; "
                          "choose data.batch_size / data.oe_batch_size so they do (validate() checks every size)")
    return ids // world_size, oes // world_size


def gap_scope(cfg: Config) -> str:
    """Where EDGE's bottom-k ID energies are taken: ``rank`` (within each rank's batch) or
    ``global`` (gathered over all ranks, so the gap does not depend on the world size);
    ``auto`` is global for an elastic run, rank otherwise."""
    if cfg.loss.gap_scope != "auto":
        return cfg.loss.gap_scope
    return "global" if is_elastic(cfg) else "rank"


def from_dict(d: dict, base: Config | None = None) -> Config:
    cfg = base or Config()
    for section, values in (d or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            cfg = _apply(cfg, section, key, value)
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. loss.beta=0.01")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    return section, key, yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(cfg: Config, overrides) -> Config:
    for text in overrides or ():
        cfg = _apply(cfg, *parse_override(text))
    return cfg


# Every config value that is a location (a local path or a URI, `edge_ray.storage`).
LOCATION_KEYS = (("data", "id_train"), ("data", "id_val"), ("data", "id_test"), ("data", "oe"),
                 ("data", "oe_val"), ("data", "ood"), ("train", "storage_path"), ("eval", "out"))


def resolve_locations(cfg: Config, base: str | None = None) -> Config:
    """Relative local paths made absolute against `base` (default: the working directory);
    URIs and empty values stay as they are. The driver does this before anything reaches
    Ray: Train workers run in working directories of their own."""
    def fix(value):
        return storage.normalize(value, base) if value else value

    for section, key in LOCATION_KEYS:
        sub = getattr(cfg, section)
        value = getattr(sub, key)
        value = tuple(fix(v) for v in value) if isinstance(value, tuple) else fix(value)
        cfg = replace(cfg, **{section: replace(sub, **{key: value})})
    return cfg


def load_config(path: str | Path | None = None, overrides=()) -> Config:
    """Read a YAML config (a local path or a URI), apply overrides, check the values, and
    make relative data and storage paths absolute against the working directory."""
    cfg = Config()
    if path:
        where = str(path)
        if not storage.is_file(where):
            raise ConfigError(f"config file {where!r} not found; pass an existing YAML, "
                              "e.g. --config configs/tiny.yaml")
        try:
            data = yaml.safe_load(storage.read_text(where)) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of sections")
        cfg = from_dict(data)
    return resolve_locations(check_schedule(validate(apply_overrides(cfg, overrides))))


METHODS = ("bce", "edge", "oe", "hendrycks_oe", "energy_oe", "focal", "asl", "dbloss")
OE_METHODS = ("edge", "oe", "hendrycks_oe", "energy_oe")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DECODERS = ("cpu", "gpu")
# How a rank runs the GPU decode stage's two steps (`data.gpu.BatchDecoder.decode`, `.finish`):
#   serial     one feeder thread does both, a batch or two ahead, on its own stream;
#   pipelined  one thread decodes (nvJPEG) while a second crops the previous batch;
#   inline     a thread decodes; the crops are queued by the training loop itself, on the
#              training stream, between steps (no crop kernels beside the step's).
GPU_FEEDERS = ("serial", "pipelined", "inline")
GPU_CROPS = ("batched", "per_image")   # crop resize: as one batch, or image by image
PLACEMENTS = ("pack", "spread")       # Ray placement strategies PACK / SPREAD for the Train workers


def _choice(value, key: str, options) -> str | None:
    """None when `value` is one of `options`, else the message (with the closest option)."""
    if value in options:
        return None
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{key}={value!r} is not valid; {hint}choose one of {', '.join(map(str, options))}"


def _name_checks(cfg: Config) -> list:
    from edge_ray.scores import SCORES

    checks = [_choice(cfg.loss.method, "loss.method", METHODS),
              _choice(cfg.loss.gap, "loss.gap", ("mean", "pairwise")),
              _choice(cfg.loss.gap_scope, "loss.gap_scope", ("auto", "rank", "global")),
              # unset (None): the method's recipe (recipes.py)
              cfg.train.optimizer and _choice(cfg.train.optimizer, "train.optimizer", ("sgd", "adam", "adamw")),
              cfg.train.schedule and _choice(cfg.train.schedule, "train.schedule", ("onecycle", "cosine", "constant")),
              _choice(cfg.train.placement, "train.placement", PLACEMENTS),
              _choice(cfg.model.name, "model.name", BACKBONES),
              _choice(cfg.model.compile_mode, "model.compile_mode", COMPILE_MODES),
              _choice(cfg.data.decode, "data.decode", DECODERS),
              _choice(cfg.data.gpu_feeder, "data.gpu_feeder", GPU_FEEDERS),
              _choice(cfg.data.gpu_crops, "data.gpu_crops", GPU_CROPS)]
    checks += [_choice(name, "eval.scores", tuple(SCORES)) for name in cfg.eval.scores]
    if not cfg.eval.scores:
        checks.append(f"eval.scores is empty; choose from {', '.join(SCORES)}")
    return [c for c in checks if c]


def _range_checks(cfg: Config) -> list:
    d, lo, t = cfg.data, cfg.loss, cfg.train
    lo_crop, hi_crop = (tuple(d.crop_scale) + (None, None))[:2]
    checks = [
        (lo.alpha >= 0, f"loss.alpha must be >= 0, got {lo.alpha}"),
        (lo.beta >= 0, f"loss.beta must be >= 0, got {lo.beta}"),
        (lo.k >= 1, f"loss.k must be >= 1, got {lo.k}"),
        (lo.m >= 0, f"loss.m (the energy margin) must be >= 0, got {lo.m}"),
        (lo.tau >= 0, f"loss.tau must be >= 0, got {lo.tau}"),
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.lr is None or t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.weight_decay is None or t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (0 <= t.momentum < 1, f"train.momentum must lie in [0, 1), got {t.momentum}"),
        (t.num_workers >= 1, f"train.num_workers must be >= 1, got {t.num_workers}"),
        (0 <= t.min_workers <= t.num_workers,
         f"train.num_workers=[min, max] needs 1 <= min <= max, got [{t.min_workers}, {t.num_workers}]"),
        (t.resize_interval_s > 0, f"train.resize_interval_s must be > 0, got {t.resize_interval_s}"),
        (t.start_timeout_s > 0, f"train.start_timeout_s must be > 0, got {t.start_timeout_s}"),
        (t.cpus_per_worker > 0, f"train.cpus_per_worker must be > 0, got {t.cpus_per_worker}"),
        (not t.use_gpu or t.gpus_per_worker > 0, f"train.gpus_per_worker must be > 0 with train.use_gpu, got {t.gpus_per_worker}"),
        (t.num_to_keep >= 1, f"train.num_to_keep must be >= 1, got {t.num_to_keep}"),
        (t.max_failures >= -1, f"train.max_failures must be >= 0 (or -1: retry forever), got {t.max_failures}"),
        (t.val_every >= 0, f"train.val_every must be >= 0 (0: never), got {t.val_every}"),
        (d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}"),
        (d.oe_batch_size >= 1, f"data.oe_batch_size must be >= 1, got {d.oe_batch_size}"),
        (d.image_size >= 8, f"data.image_size must be >= 8, got {d.image_size}"),
        (d.loader_workers >= 0, f"data.loader_workers must be >= 0, got {d.loader_workers}"),
        (d.decoded_cache_mb >= 0, f"data.decoded_cache_mb must be >= 0 (0: off), got {d.decoded_cache_mb}"),
        (hi_crop is not None and len(d.crop_scale) == 2 and 0 < float(lo_crop) <= float(hi_crop) <= 1,
         f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(d.crop_scale)}"),
        (len(d.mean) == 3 and len(d.std) == 3 and all(float(x) > 0 for x in d.std),
         f"data.mean and data.std need 3 values each, std > 0; got {list(d.mean)} and {list(d.std)}"),
        (0 <= d.cpu_decode_share <= 1, f"data.cpu_decode_share must lie in [0, 1], got {d.cpu_decode_share}"),
        (cfg.model.width >= 1, f"model.width must be >= 1, got {cfg.model.width}"),
        (cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}"),
        (cfg.eval.min_remaining >= 1, f"eval.min_remaining must be >= 1, got {cfg.eval.min_remaining}"),
    ]
    return [message for ok, message in checks if not ok]


def validate(cfg: Config) -> Config:
    """Every value check that needs no file and no cluster, at load time: names (with the
    closest valid one), ranges, and combinations. Files are checked by the driver before
    Ray starts (`distributed.trainer.check_inputs`)."""
    problems = _name_checks(cfg) + _range_checks(cfg)
    if problems:
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
    low, high = worker_range(cfg)
    uneven = [w for w in range(low, high + 1) if (cfg.data.batch_size * high) % w or (cfg.data.oe_batch_size * high) % w]
    if uneven:
        raise ConfigError(f"train.num_workers=[{low}, {high}]: the global batches (data.batch_size x {high} = "
                          f"{cfg.data.batch_size * high}, data.oe_batch_size x {high} = {cfg.data.oe_batch_size * high}) "
                          f"must split evenly over every worker count, not over {uneven}; pick batch sizes "
                          f"that make them multiples of {math.lcm(*range(low, high + 1))}")
    if cfg.loss.method == "edge" and cfg.loss.k > cfg.data.batch_size:
        raise ConfigError(f"loss.k={cfg.loss.k} is larger than the per-rank ID batch "
                          f"data.batch_size={cfg.data.batch_size}; lower loss.k or raise the batch")
    return cfg


def check_schedule(cfg: Config) -> Config:
    """The user's own tau must lie within the run. (A search may sample tau >= epochs: that
    trial trains EDGE without its gap, as tuning/paper_grid.yaml says, so tune spaces skip this.)"""
    if cfg.loss.method == "edge" and cfg.loss.tau > cfg.train.epochs:
        raise ConfigError(f"loss.tau={cfg.loss.tau} > train.epochs={cfg.train.epochs}: tau counts the "
                          "epochs before EDGE's gap term switches on, so it must lie within the run; "
                          "lower loss.tau (tau = epochs trains EDGE without its gap, as loss.method=oe)")
    return cfg
