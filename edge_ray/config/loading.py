"""Reading a config: YAML (a local path or a URI), ``section.key=value`` overrides parsed as
YAML scalars, values brought to each field's type, and relative locations made absolute.
Unknown sections and keys fail at once with the closest valid name."""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from edge_ray import storage
from edge_ray.config.checks import check_schedule, closest, validate
from edge_ray.config.schema import SECTIONS, Config, ConfigError, TrainConfig


def _suggest(name: str, valid) -> str:
    close = closest(name, valid)
    return f"; did you mean {close!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


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
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}{_suggest(section, SECTIONS)}")
    sub = getattr(cfg, section)
    spec = {f.name: f for f in fields(sub)}
    if key not in spec:
        dotted = [f"{section}.{n}" for n in spec]
        raise ConfigError(f"unknown config key {section}.{key}{_suggest(f'{section}.{key}', dotted)}")
    if section == "train" and key == "num_workers":
        return replace(cfg, train=_worker_range(sub, value))
    default = getattr(sub, key)
    if "unset" in spec[key].metadata:  # may stay unset (null): the method's recipe, the backbone's mean/std
        if value is None:
            return replace(cfg, **{section: replace(sub, **{key: None})})
        default = spec[key].metadata["unset"]  # coerce as the type it has when set
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
