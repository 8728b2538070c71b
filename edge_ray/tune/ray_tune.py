"""`launch.py tune`: hyper-parameter search over EDGE's alpha, beta, k, m, tau (or any config key).

Three levels, as Ray's Train/Tune interop example (ARCHITECTURE.md, "Ray 2.60 facts"):
  Tuner (this driver)  -- Optuna TPE suggests, ASHA stops weak trials at epoch rungs
    trial (_trial_driver, ~0 CPU) -- builds and fits one TorchTrainer, run "train-<trial id>"
      Train workers (cpus/gpus per worker) -- the usual worker loop, reporting each epoch

The objective is measured on validation data only: ID validation images (``data.id_val``)
against held-out OE images (``data.oe_val``, JointEnergy FPR95 by default). A config whose
``data.oe_val`` is a test OOD set or the training OE set is refused: tuning on the test sets
would make the final table meaningless.

Persistence: the Optuna study lives in an SQLAlchemy URL (``sqlite:///<out>/study.db`` by
default; open it with ``optuna.load_study`` or optuna-dashboard), the Tune experiment in
``<train.storage_path>/<name>``. ``--resume`` restores the experiment: finished trials are
kept, unfinished ones run again (their Train runs continue from their last checkpoint) and
the remaining trials are suggested. The search settings are saved as ``<out>/search.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from edge_ray import storage
from edge_ray.config import ConfigError
from edge_ray.tune import report
from edge_ray.ray_cluster import connect
from edge_ray.train.ray_trainer import build_trainer, storage_root
from edge_ray.tune.settings import (DRIVER_CPU, OBJECTIVES, SearchSettings, check_search,
                                                concurrency, make_settings, trial_base)
from edge_ray.tune.space import apply_params

__all__ = ["SearchSettings", "SearchResult", "make_settings", "check_search", "run_search",
           "settings_from_args", "add_parser", "run"]

# ---- the trial: one TorchTrainer run -----------------------------------------------------

def _trial_driver(params: dict, settings: dict) -> None:
    """A Tune trial: train the sampled config; Train's workers report each epoch to Tune."""
    s = SearchSettings.from_dict(settings)
    cfg = apply_params(trial_base(s), params)
    cfg = replace(cfg, train=replace(cfg.train, storage_path=f"{storage_root(cfg)}/{s.name}"))
    trial_id = tune.get_context().get_trial_id()
    build_trainer(cfg, run_name=f"train-{trial_id}", callbacks=[TuneReportCallback()]).fit()


def experiment_path(s: SearchSettings) -> str:
    return f"{storage_root(s.base()).rstrip('/')}/{s.name}"


def make_searcher(s: SearchSettings, dists: dict):
    """Optuna TPE (seeded) whose study lives in ``s.storage`` under the search's name."""
    multi = len(s.metrics) > 1
    return OptunaSearch(space=dists, metric=list(s.metrics) if multi else s.metrics[0],
                        mode=list(s.modes) if multi else s.modes[0],
                        sampler=optuna.samplers.TPESampler(seed=s.seed), study_name=s.name,
                        storage=optuna.storages.RDBStorage(s.storage))


def make_scheduler(s: SearchSettings):
    """ASHA on epochs: rungs at grace_epochs x reduction_factor^i below train.epochs, keeping the
    best 1/reduction_factor at each. ASHA ranks trials by one number, so a two-objective
    (Pareto) search runs every trial to the end instead."""
    if len(s.metrics) > 1:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric=s.metrics[0], mode=s.modes[0],
                         max_t=s.base().train.epochs, grace_period=s.grace_epochs,
                         reduction_factor=s.reduction_factor, stop_last_trials=False)


def _build_tuner(s: SearchSettings, dists: dict, fixed: dict, n_parallel: int, callbacks):
    return tune.Tuner(
        _trainable(s), param_space=fixed,
        tune_config=tune.TuneConfig(search_alg=make_searcher(s, dists), scheduler=make_scheduler(s),
                                    num_samples=s.trials, max_concurrent_trials=n_parallel),
        run_config=tune.RunConfig(name=s.name, storage_path=experiment_path(s).rsplit("/", 1)[0],
                                  callbacks=list(callbacks), verbose=1))


def _trainable(s: SearchSettings):
    return tune.with_resources(tune.with_parameters(_trial_driver, settings=s.to_dict()),
                               {"CPU": DRIVER_CPU})


# ---- the search --------------------------------------------------------------------------

@dataclass
class SearchResult:
    rows: list                    # one dict per trial, best objective first
    best: dict | None
    complete: bool                # False when interrupted: `--resume` continues
    paths: dict


def _check_fresh(s: SearchSettings) -> None:
    if tune.Tuner.can_restore(experiment_path(s)):
        raise ConfigError(f"a search named {s.name!r} already exists at {experiment_path(s)}; continue it "
                          "with --resume or start another with --name")
    if s.name in optuna.study.get_all_study_names(storage=s.storage):
        raise ConfigError(f"the Optuna storage {s.storage} already holds a study {s.name!r}; pick another "
                          "--name or --storage (or delete it: optuna delete-study)")


def _restore(s: SearchSettings, path: str):
    """Tune's saved experiment, or one line when it cannot be read back: a search saved by an
    edge-ray from before the feature-first layout pickled modules (``edge_ray.distributed.*``)
    that no longer exist."""
    try:
        return tune.Tuner.restore(path, trainable=_trainable(s), resume_unfinished=True, resume_errored=False)
    except (ModuleNotFoundError, AttributeError) as err:
        if "edge_ray" not in str(err):
            raise
        raise ConfigError(f"the search {s.name!r} in {path} was saved by an older edge-ray ({err}) and cannot be "
                          "resumed by this one; its Optuna study keeps the finished trials "
                          f"({s.storage}); start a new search with another --name") from None


def run_search(s: SearchSettings, *, resume: bool = False, callbacks=()) -> SearchResult:
    """Check everything, run (or continue) the search on the connected Ray, write the outputs.
    ``callbacks`` are Tune callbacks (saved with the experiment, so they come back on resume)."""
    dists, fixed = check_search(s)
    path = experiment_path(s)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"nothing to resume: no Tune experiment at {path}; run without --resume")
        print(f"resuming search {s.name}: {s.trials} trials in all, unfinished ones continue; Optuna study "
              f"{s.name!r} in {s.storage}; Tune experiment {path}", flush=True)
        grid = _restore(s, path).fit()
    else:
        cfg = trial_base(s)
        n = concurrency(s, cfg, ray.cluster_resources())
        storage.makedirs(s.out)  # the default Optuna study (SQLite) lives there
        _check_fresh(s)
        t = cfg.train
        each = f"{t.gpus_per_worker:g} GPU + " if t.use_gpu else ""
        try:
            storage.write_text(storage.join(s.out, "search.yaml"), yaml.safe_dump(s.to_dict(), sort_keys=False))
            print(f"search {s.name}: {s.trials} trials, up to {n} at a time, {t.num_workers} worker(s) x "
                  f"({each}{t.cpus_per_worker:g} CPU); objective {', '.join(s.metrics)} ({', '.join(s.modes)}); "
                  f"Optuna study {s.name!r} in {s.storage}; Tune experiment {path}")
            grid = _build_tuner(s, dists, fixed, n, callbacks).fit()
        except BaseException:  # Ctrl-C (or an error) before Tune saved the experiment's state
            if not started(s):
                _forget_unstarted(s)
            raise
    return write_outputs(s, grid, list(dists) + list(fixed))


# What a Tuner writes into its experiment folder before the first experiment state.
_SETUP_FILES = {"tuner.pkl", ".validate_storage_marker"}


def _forget_unstarted(s: SearchSettings) -> None:
    """Undo what a new search wrote before Tune saved its experiment's state (search.yaml, the
    Optuna study the searcher created, the Tuner's set-up files): with them left, ``--resume``
    would find an experiment without trials and the same command again a study that exists.
    ``_check_fresh`` made sure none of it was there before."""
    path = experiment_path(s)
    try:
        if storage.is_dir(path) and set(storage.listdir(path)) <= _SETUP_FILES:
            storage.delete_tree(path)
    except Exception:  # noqa: BLE001 - best effort; the error or interrupt that brought us here wins
        pass
    try:
        if s.name in optuna.study.get_all_study_names(storage=s.storage):
            optuna.delete_study(study_name=s.name, storage=s.storage)
    except Exception:  # noqa: BLE001 - best effort; the error or interrupt that brought us here wins
        pass
    try:
        storage.delete(storage.join(s.out, "search.yaml"))
    except Exception:  # noqa: BLE001
        pass


def resume_command(s: SearchSettings) -> str:
    """The command that continues an interrupted search."""
    return f"python launch.py tune --resume --name {s.name} --out {s.out}"


def started(s: SearchSettings) -> bool:
    """Whether Tune saved the search's experiment state (``--resume`` continues it from there)."""
    path = experiment_path(s)
    try:
        return any(n.startswith("experiment_state") and n.endswith(".json") for n in storage.listdir(path))
    except Exception:  # noqa: BLE001 - no folder (or none readable): nothing to continue
        return False


def collect_rows(s: SearchSettings, grid, params: list[str]) -> list[dict]:
    """One row per trial: parameters, last reported metrics, status (see tune_report)."""
    errors = {r.path: r.error for r in grid}
    epochs = s.base().train.epochs
    rows = []
    for t in tune.ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials:
        last = t.last_result or {}
        if t.status == "ERROR":
            status = report.ERROR
        elif t.status != "TERMINATED":
            status = report.UNFINISHED
        else:
            status = report.DONE if last.get("epoch", 0) >= epochs else report.STOPPED
        error = errors.get(t.path)
        row = {"trial": t.trial_id, "order": int(t.experiment_tag.split("_")[0]), "status": status,
               "epochs": last.get("epoch"), "seconds": last.get("time_total_s"),
               "checkpoint": last.get("checkpoint_path", ""),
               "error": str(error).strip().splitlines()[-1][:200] if error else ""}
        row.update({p: t.config.get(p) for p in params})
        row.update({m: last[m] for m in (*s.metrics, *report.SIDE_METRICS) if m in last})
        rows.append(row)
    return rows


def write_outputs(s: SearchSettings, grid, params: list[str]) -> SearchResult:
    """trials.md / .csv, objective.png, pareto.md, best.yaml into ``s.out`` (a local path or a
    URI); the returned paths are locations there."""
    with storage.local_folder(s.out) as out:
        result = _write_outputs(s, grid, params, out)
    result.paths = {k: storage.join(s.out, p.name) for k, p in result.paths.items()}
    return result


def _write_outputs(s: SearchSettings, grid, params: list[str], out: Path) -> SearchResult:
    metric, mode = s.metrics[0], s.modes[0]
    rows = report.sort_rows(collect_rows(s, grid, params), metric, mode)
    cols = report.columns(rows, params, s.metrics)
    paths = {"markdown": out / "trials.md", "csv": out / "trials.csv", "plot": out / "objective.png"}
    table = report.markdown(rows, cols)
    paths["markdown"].write_text(f"# Search {s.name}: {metric} ({mode}), best first\n\n{table}\n")
    report.write_csv(rows, cols, paths["csv"])
    front = report.pareto_rows(rows, s.metrics, s.modes) if len(s.metrics) > 1 else []
    if front:
        paths["pareto"] = out / "pareto.md"
        paths["pareto"].write_text(f"# Pareto front of {s.name}: " + ", ".join(
            f"{m} ({d})" for m, d in zip(s.metrics, s.modes)) + "\n\n" + report.markdown(front, cols) + "\n")
    report.plot_objective([dict(r, trial=f"{r['order']:05d}") for r in rows], metric, mode, paths["plot"],
                          second=(s.metrics[1], s.modes[1]) if len(s.metrics) > 1 else None, front=front)
    best = report.best_row(rows, metric, mode)
    if best is not None:
        paths["best"] = out / "best.yaml"
        report.write_best(s.base(), best, params, paths["best"], search=s.name, metrics=s.metrics)
    finished = [r for r in rows if r["status"] != report.UNFINISHED]
    return SearchResult(rows, best, complete=len(finished) >= s.trials, paths=paths)


# ---- CLI ---------------------------------------------------------------------------------

def settings_from_args(args) -> SearchSettings:
    """New settings from the flags, or with --resume the saved ones (flags given must agree)."""
    given = None
    if args.config and args.space:
        given = make_settings(args.config, args.space, args.trials or 0, overrides=args.overrides,
                              metric=args.metric, mode=args.mode, multi_objective=args.multi_objective,
                              storage=args.storage, name=args.name, out=args.out,
                              max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                              gpus_per_trial=args.gpus_per_trial, seed=args.seed,
                              grace_epochs=args.grace_epochs, reduction_factor=args.reduction_factor)
    if not args.resume:
        if given is None or not args.trials:
            raise ConfigError("tune needs --config, --space and --trials (or --resume --name NAME)")
        return given
    if not (args.name or given):
        raise ConfigError("--resume needs --name NAME (or the --config and --space of the search)")
    out = storage.normalize(args.out or (given.out if given else f"results/tune/{args.name}"))
    saved_file = storage.join(out, "search.yaml")
    if not storage.is_file(saved_file):
        raise ConfigError(f"nothing to resume: {saved_file} not found; check --name/--out")
    saved = SearchSettings.from_dict(yaml.safe_load(storage.read_text(saved_file)))
    if given is not None:
        differ = [f for f in ("config", "space") if getattr(given, f) != getattr(saved, f)]
        differ += ["trials"] if args.trials and args.trials != saved.trials else []
        if differ:
            raise ConfigError(f"--resume continues the saved search ({saved_file}) but {', '.join(differ)} "
                              "differ from it; leave them out or start a new search with --name")
    return saved


def run(args) -> int:
    s = settings_from_args(args)
    notes: list[str] = []
    check_search(s, notes)  # fail on input before Ray starts
    for note in notes:
        print(note, flush=True)
    where = connect(args.address)
    print(f"Ray: {where}")
    # MLflow (edge_ray/tracking): a run for the search, a child per trial, logged from this driver
    from edge_ray.tracking import commands as tracking
    from edge_ray.tracking.ray_tune_callback import SearchTracking, TrialsToMLflow

    with tracking.command(args, "tune") as tracker, SearchTracking(tracker, s) as search:
        res = run_search(s, resume=args.resume, callbacks=[TrialsToMLflow(s.name)])
        search.end(res)
    print(storage.read_text(res.paths["markdown"]))
    if res.best is not None:
        print(f"best: trial {res.best['trial']} -> {res.paths['best']} "
              f"(train it: python launch.py train --config {res.paths['best']})")
    print(f"outputs: {s.out}")
    if not res.complete:
        print(f"search interrupted; continue it with: {resume_command(s)}")
        return 130
    return 0 if res.best is not None else 1
