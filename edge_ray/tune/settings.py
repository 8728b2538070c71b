"""Search settings and every check a search makes before its first trial starts.

``SearchSettings`` is all a search needs; it is saved as ``<out>/search.yaml``, so
``tune --resume`` needs only the name. The checks refuse, with the fix: a space that does not
fit the config (tune_space.py), an objective the trials do not report, test leakage (the
objective may see ID validation and held-out OE images only), missing or bad shard sets,
and resources the cluster cannot give a trial.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edge_ray import storage as storage_module
from edge_ray.config import Config, ConfigError, apply_overrides, did_you_mean, from_dict, load_config
from edge_ray.tune.space import build_space, read_space

DRIVER_CPU = 0.01       # the trial itself only waits on its Train run
# Validation metrics the worker reports each epoch, and the config keys they need.
VAL_METRICS = {"val_map": ("data.id_val",), "val_fpr95": ("data.id_val", "data.oe_val"),
               "val_auroc": ("data.id_val", "data.oe_val")}
OBJECTIVES = ("val_fpr95", "val_auroc", "val_map", "loss")


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search needs, saved as ``<out>/search.yaml`` so ``--resume`` needs only a name."""
    name: str
    out: str
    config: dict                  # the base config (file + overrides), as Config.to_dict()
    space: dict                   # the space file's mapping
    space_file: str
    trials: int
    metrics: tuple = ("val_fpr95",)
    modes: tuple = ("min",)
    storage: str = ""             # Optuna storage URL
    seed: int = 0
    max_concurrent: int = 0       # 0 = as many as the cluster's CPUs/GPUs allow
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    grace_epochs: int = 1         # ASHA's first rung (epochs a trial trains before it can be stopped)
    reduction_factor: int = 4     # ASHA keeps the best 1/reduction_factor at each rung

    def base(self) -> Config:
        return from_dict(self.config)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {**d, "metrics": list(self.metrics), "modes": list(self.modes)}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSettings":
        d = {"grace_epochs": 1, "reduction_factor": 4, **d}  # searches saved before these existed
        return cls(**{**d, "metrics": tuple(d["metrics"]), "modes": tuple(d["modes"])})


def make_settings(config: str, space: str, trials: int, *, overrides=(), metric: str = "val_fpr95",
                  mode: str = "min", multi_objective: bool = False, storage: str | None = None,
                  name: str | None = None, out: str | None = None, max_concurrent: int = 0,
                  cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
                  seed: int = 0, grace_epochs: int = 1, reduction_factor: int = 4) -> SearchSettings:
    cfg = load_config(config, overrides)
    if not 1 <= grace_epochs <= cfg.train.epochs:
        raise ConfigError(f"--grace-epochs {grace_epochs}: ASHA's first rung must lie within the run's "
                          f"train.epochs={cfg.train.epochs}; use 1 to {cfg.train.epochs}")
    if reduction_factor < 2:
        raise ConfigError(f"--reduction-factor {reduction_factor}: ASHA keeps 1/reduction_factor of the "
                          "trials at each rung, so it must be at least 2")
    name = name or f"{Path(config).stem}-{Path(space).stem}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    out_dir = storage_module.normalize(out or f"results/tune/{name}")
    metrics, modes = (metric,), (mode,)
    if multi_objective:
        if metric == "val_map":
            raise ConfigError("--multi-objective pairs --metric with val_map; pick another --metric")
        metrics, modes = (metric, "val_map"), (mode, "max")
    if not storage and storage_module.is_uri(out_dir):
        raise ConfigError(f"--out {out_dir}: the Optuna study is an SQLite file, which cannot live in "
                          "object storage; add --storage sqlite:///results/tune/study.db (or a database "
                          "URL such as postgresql://...) or use a local --out")
    storage = _absolute_sqlite(storage) or f"sqlite:///{out_dir}/study.db"
    return SearchSettings(name=name, out=out_dir, config=cfg.to_dict(), space=read_space(space),
                          space_file=str(space), trials=trials, metrics=metrics, modes=modes,
                          storage=storage, seed=seed, max_concurrent=max_concurrent,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          grace_epochs=grace_epochs, reduction_factor=reduction_factor)


def _absolute_sqlite(url: str | None) -> str | None:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db``: the searcher saved with the experiment
    must find the same file when ``--resume`` runs from another folder."""
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{Path(url[len('sqlite:///'):]).expanduser().resolve()}"
    return url


# ---- checks: all before any trial starts ------------------------------------------------

def trial_base(s: SearchSettings) -> Config:
    """The base config with the per-trial resources (``--cpus/gpus-per-trial``) spread over
    the trial's Train workers. ``--cpus-per-trial`` is the whole trial's: its driver's
    DRIVER_CPU comes out of it, so ``--cpus-per-trial 1`` runs two trials on 2 CPUs. Only
    trials get these; ``best.yaml`` keeps the base's."""
    cfg = s.base()
    workers, over = cfg.train.num_workers, []
    if s.cpus_per_trial is not None:
        if s.cpus_per_trial <= DRIVER_CPU:
            raise ConfigError(f"--cpus-per-trial {s.cpus_per_trial:g}: a trial needs more than its driver's "
                              f"{DRIVER_CPU:g} CPU; give it e.g. 0.5")
        over.append(f"train.cpus_per_worker={round((s.cpus_per_trial - DRIVER_CPU) / workers, 6)}")
    if s.gpus_per_trial is not None:
        over += [f"train.use_gpu={str(s.gpus_per_trial > 0).lower()}",
                 f"train.gpus_per_worker={s.gpus_per_trial / workers}"]
    return apply_overrides(cfg, over)


def _same_set(a: str, b: str) -> bool:
    return storage_module.normalize(a) == storage_module.normalize(b)


def check_no_leak(cfg: Config) -> None:
    """The objective may see ID validation and held-out OE images, never a test set."""
    d = cfg.data
    if d.oe_val:
        for ood in d.ood:
            if _same_set(d.oe_val, ood):
                raise ConfigError(f"data.oe_val={d.oe_val} is one of the test OOD sets (data.ood): tuning "
                                  "on it leaks the test set into the choice of hyper-parameters; "
                                  "point data.oe_val at held-out OE images, e.g. another OE set")
        if d.oe and _same_set(d.oe_val, d.oe):
            raise ConfigError(f"data.oe_val={d.oe_val} equals data.oe: the objective would score the "
                              "outliers the model trains on; use a held-out OE set for data.oe_val")
    if d.id_val and d.id_test and _same_set(d.id_val, d.id_test):
        raise ConfigError(f"data.id_val={d.id_val} equals data.id_test: tuning on the ID test set leaks "
                          "it; use a separate ID validation split")


def check_metrics(cfg: Config, metrics: tuple, modes: tuple) -> None:
    """Every objective must be a metric the trials report with this config."""
    for metric, mode in zip(metrics, modes):
        if mode not in ("min", "max"):
            raise ConfigError(f"--mode must be min or max, got {mode!r}")
        if metric not in OBJECTIVES:
            raise ConfigError(f"--metric {metric!r} is not reported by the trials; {did_you_mean(metric, OBJECTIVES)}"
                              f"choose one of {', '.join(OBJECTIVES)}")
        needs = VAL_METRICS.get(metric, ())
        missing = [key for key in needs if not getattr(cfg.data, key.split(".")[1])]
        if missing:
            raise ConfigError(f"--metric {metric} needs {' and '.join(needs)} in the config (ID validation "
                              f"images{', and held-out OE images' if len(needs) > 1 else ''}); "
                              f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty")
        if needs and cfg.train.val_every != 1:
            raise ConfigError(f"--metric {metric} is measured every train.val_every epochs; ASHA and "
                              f"Optuna need it every epoch: set train.val_every=1 (got {cfg.train.val_every})")


def check_search(s: SearchSettings, notes: list | None = None) -> tuple[dict, dict]:
    """All input checks (no Ray needed); returns the Optuna distributions and fixed values.
    ``notes`` gets a line per value the space leaves out because the run refuses it."""
    from edge_ray.data import load_index
    from edge_ray.train.ray_trainer import check_inputs

    if s.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {s.trials}")
    if s.cpus_per_trial is not None and s.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {s.cpus_per_trial}")
    if s.gpus_per_trial is not None and s.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0 (0 = CPU only), got {s.gpus_per_trial}")
    cfg = trial_base(s)
    if cfg.train.use_gpu and cfg.train.num_workers > 1 and cfg.train.gpus_per_worker < 1:
        raise ConfigError("a fraction of a GPU per worker needs train.num_workers=1 (NCCL cannot put two "
                          "ranks of one run on the same GPU); raise --gpus-per-trial or use one worker")
    dists, fixed = build_space(s.space, cfg, source=s.space_file or "space", notes=notes)
    check_metrics(cfg, s.metrics, s.modes)
    check_no_leak(cfg)
    if cfg.data.oe_val:
        load_index(cfg.data.oe_val)
    check_inputs(cfg)
    return dists, fixed


def concurrency(s: SearchSettings, cfg: Config, resources: dict) -> int:
    """Trials at once: --max-concurrent, else as many as the cluster's CPUs and GPUs (fractions
    allowed) hold together, never more than the number of trials."""
    if s.max_concurrent > 0:
        return min(s.max_concurrent, s.trials)
    workers = cfg.train.num_workers
    need = {"CPU": workers * cfg.train.cpus_per_worker + DRIVER_CPU}
    if cfg.train.use_gpu:
        need["GPU"] = workers * cfg.train.gpus_per_worker
    return runs_at_once(need, s.trials, resources, what="trial",
                        fix="--{kind}s-per-trial or train.num_workers")


def runs_at_once(need: dict, n: int, resources: dict, *, what: str, fix: str) -> int:
    """How many of `n` runs needing `need` ({"CPU": ..., "GPU": ...} each, fractions
    allowed) the cluster's `resources` hold together; at least 1, at most `n`. A run that
    does not fit at all is a ConfigError that says what to lower (`fix`, with {kind})."""
    fits = []
    for kind, per_run in need.items():
        have = resources.get(kind, 0.0)
        if have < per_run:
            raise ConfigError(f"a {what} needs {per_run:g} {kind} but the Ray cluster has {have:g}; "
                              f"lower {fix.format(kind=kind.lower())}")
        fits.append(math.floor(have / per_run + 1e-9))
    return max(1, min(n, *fits))
