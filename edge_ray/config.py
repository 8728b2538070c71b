"""Run configuration: frozen dataclasses, loaded from YAML, overridden by ``key=value``.

A config file mirrors the sections below (``data``, ``model``, ``loss``, ``train``,
``eval``); every key is optional and defaults to the values here. Overrides use dotted
keys (``loss.beta=0.01 train.num_workers=4``) and are parsed as YAML scalars. Unknown keys
fail early with the closest valid name, so a typo never silently trains the default.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from edge_ray.recipes import RECIPES

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
    num_workers: int = 1          # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    amp: bool = True              # bf16 autocast on GPU
    max_failures: int = 0
    num_to_keep: int = 2
    storage_path: str = "runs"
    run_name: str = "edge"
    val_every: int = 1
    fail_at_epoch: int = -1       # test switch: rank 1 (or 0) raises once in this epoch
    stop_after_epoch: int = -1    # test switch: end the run early after this epoch


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
    if section == "train" and key in RECIPES["*"]:  # may be unset (null): the method's recipe
        if value is None:
            return replace(cfg, train=replace(sub, **{key: None}))
        default = RECIPES["*"][key]                  # coerce as the recipe's type
    value = _coerce(section, key, value, default)
    return replace(cfg, **{section: replace(sub, **{key: value})})


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


def load_config(path: str | Path | None = None, overrides=()) -> Config:
    """Read a YAML config (relative shard paths are resolved against the file's folder
    only if they exist there, else against the working directory) and apply overrides."""
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML, "
                              "e.g. --config configs/tiny.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        cfg = from_dict(data)
    return validate(apply_overrides(cfg, overrides))


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


def validate(cfg: Config) -> Config:
    """Value checks that need no files (file checks happen in the driver before workers start)."""
    checks = [
        (cfg.loss.method in METHODS, f"loss.method must be one of {METHODS}, got {cfg.loss.method!r}"),
        (cfg.loss.gap in ("mean", "pairwise"), f"loss.gap must be mean or pairwise, got {cfg.loss.gap!r}"),
        (cfg.loss.k >= 1, f"loss.k must be >= 1, got {cfg.loss.k}"),
        (cfg.loss.tau >= 0, f"loss.tau must be >= 0, got {cfg.loss.tau}"),
        (cfg.train.optimizer in (None, "sgd", "adam", "adamw"), f"train.optimizer must be sgd, adam or adamw (or null: the method's recipe), got {cfg.train.optimizer!r}"),
        (cfg.train.schedule in (None, "onecycle", "cosine", "constant"), f"train.schedule must be onecycle, cosine or constant (or null: the method's recipe), got {cfg.train.schedule!r}"),
        (cfg.train.lr is None or cfg.train.lr > 0, f"train.lr must be > 0, got {cfg.train.lr}"),
        (cfg.train.epochs >= 1, f"train.epochs must be >= 1, got {cfg.train.epochs}"),
        (cfg.train.num_workers >= 1, f"train.num_workers must be >= 1, got {cfg.train.num_workers}"),
        (cfg.data.batch_size >= 1 and cfg.data.oe_batch_size >= 1, "data.batch_size and data.oe_batch_size must be >= 1"),
        (cfg.data.image_size >= 8, f"data.image_size must be >= 8, got {cfg.data.image_size}"),
        (cfg.data.decode in DECODERS, f"data.decode must be cpu or gpu, got {cfg.data.decode!r}"),
        (cfg.model.compile_mode in COMPILE_MODES,
         f"model.compile_mode must be one of {COMPILE_MODES}, got {cfg.model.compile_mode!r}"),
        (cfg.data.gpu_feeder in GPU_FEEDERS,
         f"data.gpu_feeder must be one of {GPU_FEEDERS}, got {cfg.data.gpu_feeder!r}"),
        (cfg.data.gpu_crops in GPU_CROPS, f"data.gpu_crops must be one of {GPU_CROPS}, got {cfg.data.gpu_crops!r}"),
        (0 <= cfg.data.cpu_decode_share <= 1,
         f"data.cpu_decode_share must lie in [0, 1], got {cfg.data.cpu_decode_share}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.loss.method == "edge" and cfg.loss.k > cfg.data.batch_size:
        raise ConfigError(f"loss.k={cfg.loss.k} is larger than the per-rank ID batch "
                          f"data.batch_size={cfg.data.batch_size}; lower loss.k or raise the batch")
    return cfg
