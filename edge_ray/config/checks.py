"""Every value check that needs no file and no cluster, run when a config is loaded: each
field's own rule (``schema.py``, beside the field), then the rules between fields. Files are
checked by the driver before Ray starts (``train.ray_trainer.check_inputs``)."""
from __future__ import annotations

import difflib
from dataclasses import fields

from edge_ray.config.schema import Config, ConfigError


def closest(word, options) -> str | None:
    """The option closest to ``word`` (difflib's ratio of at least 0.5), or None."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(word, options, *, aliases: dict | None = None) -> str:
    """``"did you mean 'x'? "`` when an option (or an alias, named by what it stands for) is
    close to ``word``, else ``""``: the start of a one-line error's fix."""
    close = closest(word, list(options) + list(aliases or ()))
    if close is None:
        return ""
    return f"did you mean {(aliases or {}).get(close, close)!r}? "


def choice_error(value, key: str, options) -> str | None:
    """None when ``value`` is one of ``options``, else the message (with the closest option)."""
    if value in options:
        return None
    return f"{key}={value!r} is not valid; {did_you_mean(value, options)}choose one of {', '.join(map(str, options))}"


def _field_problems(cfg: Config, kind: str) -> list[str]:
    """The problems the fields' own rules find: ``kind`` "choices" (names), "problem" (a
    module's own judgement, ``schema.checked_by``) or "check" (ranges)."""
    problems = []
    for section in fields(cfg):
        sub = getattr(cfg, section.name)
        for f in fields(sub):
            value, meta = getattr(sub, f.name), f.metadata
            if kind not in meta or value is None:  # None: an unset key (the method's recipe, ...)
                continue
            key = f"{section.name}.{f.name}"
            if kind == "problem":
                problems.append(meta["problem"]()(value, key))
                continue
            if kind == "check":
                if not meta["check"](value):
                    problems.append(f"{key} {meta['what']}, got {value}")
                continue
            options = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
            for v in value if isinstance(value, tuple) else (value,):
                problems.append(choice_error(v, key, tuple(options)))
            if isinstance(value, tuple) and not value:
                problems.append(f"{key} is empty; choose from {', '.join(options)}")
    return [p for p in problems if p]


def _combination_problems(cfg: Config) -> list[str]:
    d, t = cfg.data, cfg.train
    lo_crop, hi_crop = (tuple(d.crop_scale) + (None, None))[:2]
    checks = [
        (0 <= t.min_workers <= t.num_workers,
         f"train.num_workers=[min, max] needs 1 <= min <= max, got [{t.min_workers}, {t.num_workers}]"),
        (not t.use_gpu or t.gpus_per_worker > 0,
         f"train.gpus_per_worker must be > 0 with train.use_gpu, got {t.gpus_per_worker}"),
        (hi_crop is not None and len(d.crop_scale) == 2 and 0 < float(lo_crop) <= float(hi_crop) <= 1,
         f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(d.crop_scale)}"),
        ((d.mean is None or len(d.mean) == 3) and (d.std is None or (len(d.std) == 3 and all(float(x) > 0 for x in d.std))),
         f"data.mean and data.std need 3 values each (or none: the backbone's own), std > 0; "
         f"got {d.mean and list(d.mean)} and {d.std and list(d.std)}"),
    ]
    return [message for ok, message in checks if not ok]


def validate(cfg: Config) -> Config:
    """Names (with the closest valid one), ranges and combinations; the first problem is
    raised as one line, with the count of the others."""
    problems = (_field_problems(cfg, "choices") + _field_problems(cfg, "problem") + _field_problems(cfg, "check")
                + _combination_problems(cfg))
    if problems:
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
    # An elastic run splits its global batch (data.batch_size x the most workers) over any
    # world size in its range, unevenly where it must (elastic.batches_for): the smallest
    # rank batch is data.batch_size, at the most workers.
    if cfg.loss.method == "edge" and cfg.loss.k > cfg.data.batch_size:
        raise ConfigError(f"loss.k={cfg.loss.k} is larger than the per-rank ID batch "
                          f"data.batch_size={cfg.data.batch_size}; lower loss.k or raise the batch")
    return cfg


def check_schedule(cfg: Config) -> Config:
    """tau must lie within the run (tau = epochs trains EDGE without its gap). A search
    space leaves out the values this refuses (``tune.space``), so no trial trains one."""
    if cfg.loss.method == "edge" and cfg.loss.tau > cfg.train.epochs:
        raise ConfigError(f"loss.tau={cfg.loss.tau} > train.epochs={cfg.train.epochs}: tau counts the "
                          "epochs before EDGE's gap term switches on, so it must lie within the run; "
                          "lower loss.tau (tau = epochs trains EDGE without its gap, as loss.method=oe)")
    return cfg
