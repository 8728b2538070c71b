"""Search spaces for `launch.py tune`: a YAML file of dotted config keys -> a distribution.

    loss.alpha: {choice: [10, 1, 0.1, 0.01, 0.001]}   # one of the listed values
    loss.beta:  {loguniform: [1.0e-4, 1.0]}           # log-uniform float in [low, high]
    loss.m:     {uniform: [0, 5]}                      # uniform float in [low, high]
    loss.k:     {randint: [4, 33]}                     # integer in [low, high) (upper excluded, as Tune)
    loss.gap:   mean                                   # a plain value: fixed for every trial

Every key must be a key of the config and every value the config would accept, so a typo
or an impossible range fails here, with the fix, before any trial starts. Values that the
config accepts but a run of this length does not (``loss.tau`` beyond ``train.epochs``:
``train`` refuses it) are left out of the space here, and the caller says so: no trial
trains a configuration ``launch.py train`` would refuse. Where the space also samples
``train.epochs`` or ``data.batch_size``, the others are checked against their smallest value. The distributions
become Optuna distributions named by the dotted key, so a study opened with the usual Optuna
tools shows ``loss.alpha``, not an internal name.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import optuna
import yaml

from edge_ray.config import Config, ConfigError, check_schedule, from_dict, validate

KINDS = ("choice", "uniform", "loguniform", "randint")
# Data sets stay fixed: the objective is measured on some (a trial must not pick its own exam)
# and the leakage checks run once, on the base config. OE sets are ranked by `launch.py rank-oe`.
FIXED_KEYS = ("data.id_train", "data.id_val", "data.id_test", "data.oe", "data.oe_val", "data.ood")


def nest(params: dict) -> dict:
    """``{"loss.alpha": 1}`` -> ``{"loss": {"alpha": 1}}`` (the shape ``from_dict`` takes)."""
    out: dict = {}
    for dotted, value in params.items():
        section, key = dotted.split(".", 1)
        out.setdefault(section, {})[key] = value
    return out


def apply_params(cfg: Config, params: dict) -> Config:
    """The config a trial trains: ``cfg`` with the sampled (and fixed) values of the space,
    through the checks ``launch.py train`` runs (``validate``, ``check_schedule``)."""
    return check_schedule(validate(from_dict(nest(params), base=cfg)))


def _fits_run(cfg: Config, key: str, value) -> bool:
    """Whether ``key=value`` passes the check that depends on the run's length
    (``check_schedule``); the config's own rules were checked by ``_check_value``."""
    try:
        check_schedule(from_dict(nest({key: value}), base=cfg))
        return True
    except ConfigError:
        return False


def read_space(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space {str(p)!r} not found; pass a YAML such as tuning/paper_grid.yaml")
    try:
        space = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err})") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{p}: a search space is a non-empty mapping of dotted config keys, "
                          "e.g. 'loss.beta: {loguniform: [1.0e-4, 1.0]}'")
    return space


def _check_value(cfg: Config, key: str, value, where: str) -> None:
    """Apply one value to the base config, so type and range errors surface now."""
    try:
        validate(from_dict(nest({key: value}), base=cfg))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _field_default(cfg: Config, key: str):
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _bounds(spec: list, kind: str, where: str) -> tuple:
    if not isinstance(spec, (list, tuple)) or len(spec) != 2:
        raise ConfigError(f"{where}: {kind} takes [low, high], got {spec!r}")
    try:
        low, high = (float(v) for v in spec)  # YAML 1.1 reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {kind} bounds must be numbers, got {spec!r}") from None
    return low, high


def _distribution(cfg: Config, key: str, spec, where: str,
                  notes: list | None = None) -> optuna.distributions.BaseDistribution | None:
    """One entry -> an Optuna distribution, or None for a fixed value (checked, then kept)."""
    if not isinstance(spec, dict):
        _check_value(cfg, key, spec, where)
        if not _fits_run(cfg, key, spec):
            _restricted(cfg, key, where, [spec], "", notes)  # a fixed value that does not fit: refused
        return None
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: write one of {', '.join(KINDS)}, e.g. "
                          f"'{key}: {{choice: [1, 0.1]}}', got {spec!r}")
    kind, arg = next(iter(spec.items()))
    is_int = isinstance(_field_default(cfg, key), int) and not isinstance(_field_default(cfg, key), bool)
    if kind == "choice":
        if not isinstance(arg, (list, tuple)) or not arg:
            raise ConfigError(f"{where}: the choice list is empty; list at least one value")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in arg):
            raise ConfigError(f"{where}: choices must be plain values (numbers, strings, true/false), "
                              f"got {arg!r}")
        if len(set(map(repr, arg))) != len(arg):
            raise ConfigError(f"{where}: the choice list {arg!r} repeats a value")
        for value in arg:
            _check_value(cfg, key, value, where)
        kept = [v for v in arg if _fits_run(cfg, key, v)]
        if len(kept) < len(arg):
            _restricted(cfg, key, where, [v for v in arg if v not in kept], kept, notes)
        return optuna.distributions.CategoricalDistribution(kept)
    low, high = _bounds(arg, kind, where)
    if kind == "randint":
        if not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"{where}: randint bounds must be integers, got {arg!r}")
        low, high = int(low), int(high) - 1  # Tune's randint excludes the upper bound
        if high < low:
            raise ConfigError(f"{where}: randint {arg!r} is an empty range (the upper bound is "
                              f"excluded); use [{low}, {low + 1}] or more")
        top = high
        while top >= low and not _fits_run(cfg, key, top):
            top -= 1
        if top < high:
            dropped = f"{top + 1}..{high}" if top + 1 < high else high
            _restricted(cfg, key, where, [dropped], f"{low}..{top}" if top >= low else "", notes)
            high = top
        dist = optuna.distributions.IntDistribution(low, high)
    else:
        if is_int:
            raise ConfigError(f"{where}: {key} is an integer; use randint or choice, not {kind}")
        if not low < high:
            raise ConfigError(f"{where}: {kind} {arg!r} is an empty range; low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {arg!r}; use uniform for 0")
        dist = optuna.distributions.FloatDistribution(low, high, log=kind == "loguniform")
    for value in (low, high):
        _check_value(cfg, key, int(value) if kind == "randint" else value, where)
        if not _fits_run(cfg, key, int(value) if kind == "randint" else value):
            _restricted(cfg, key, where, [value], "", notes)  # a float range the run refuses: no clipping
    return dist


def _restricted(cfg: Config, key: str, where: str, dropped: list, kept, notes: list | None) -> None:
    """A value the run's length rules out: dropped with a note, or the whole entry refused."""
    reason = f"train.epochs={cfg.train.epochs}" if key == "loss.tau" else "the run's other settings"
    if not kept:
        raise ConfigError(f"{where}: no value fits a run with {reason} (train refuses each: "
                          f"{', '.join(map(str, dropped))}); lower them or raise train.epochs")
    if notes is not None:
        notes.append(f"{where}: left out {', '.join(map(str, dropped))} (train refuses it with {reason}); "
                     f"searching {kept}")


def build_space(space: dict, cfg: Config, *, source: str = "space",
                notes: list | None = None) -> tuple[dict, dict]:
    """Check a space against ``cfg``; return (Optuna distributions, fixed values) by dotted key.
    Values left out because a run of this length refuses them are described in ``notes``."""
    dists, fixed = {}, {}
    cfg = _smallest_run(space, cfg, source)
    for key, spec in space.items():
        where = f"{source}: {key}"
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}: keys are dotted config keys such as loss.beta")
        if key in FIXED_KEYS:
            raise ConfigError(f"{where}: data sets cannot be tuned (the objective and the leakage "
                              "checks depend on them); set them in the config, rank OE sets with "
                              "`launch.py rank-oe`")
        if not _known(cfg, key):
            try:  # the config's own error: unknown section or key, with the closest valid name
                from_dict(nest({key: None}), base=cfg)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
        dist = _distribution(cfg, key, spec, where, notes)
        if dist is None:
            fixed[key] = spec
        else:
            dists[key] = dist
    if not dists:
        raise ConfigError(f"{source}: nothing to search, every entry is a fixed value; "
                          "give at least one key a choice/uniform/loguniform/randint")
    return dists, fixed


SIZE_KEYS = ("train.epochs", "data.batch_size")  # other keys' limits depend on these


def _smallest_run(space: dict, cfg: Config, source: str) -> Config:
    """``cfg`` with the smallest ``train.epochs`` / ``data.batch_size`` the space can sample,
    so every other key is checked against the run that allows it least."""
    smallest = {}
    for key in SIZE_KEYS:
        spec = space.get(key)
        if isinstance(spec, dict) and len(spec) == 1:
            kind, arg = next(iter(spec.items()))
            values = arg if kind == "choice" else arg[:1] if isinstance(arg, (list, tuple)) else []
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if numbers:
                smallest[key] = int(min(numbers))
        elif isinstance(spec, int) and not isinstance(spec, bool):
            smallest[key] = spec
    if not smallest:
        return cfg
    try:
        return validate(from_dict(nest(smallest), base=cfg))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _known(cfg: Config, key: str) -> bool:
    section, name = key.split(".", 1)
    sections = {f.name for f in fields(cfg)}
    return section in sections and name in {f.name for f in fields(getattr(cfg, section))}
