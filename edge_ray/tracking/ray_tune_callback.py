"""A search in MLflow: a parent run for the search, a child run per trial (its resolved config
as params, the sampled values in the tag ``edge.sampled``, every epoch's report -- the objective
included, so the values ASHA compared at its rungs -- at ``step = epoch``).

Ray Tune already brings each trial's reports to its driver (the trial's Train run reports to
Tune through ``TuneReportCallback``), and calls a ``tune.Callback`` there, in the driver
process: so the children are logged from the driver, like a training's epochs
(``ray_relay.py``), whatever node a trial runs on.

Tune saves its callbacks with the experiment (``tuner.pkl``) and brings them back on
``tune --resume``; ``TrialsToMLflow`` therefore holds only the search's name and forwards to the
``SearchTracking`` the driver registered under that name in this process (none registered,
e.g. ``--no-tracking``: nothing is logged). A trial's run is recorded in its Train run's folder,
so a resumed trial continues its MLflow run, and ``eval`` / ``export`` of its checkpoint log to it.
"""
from __future__ import annotations

import json
from dataclasses import replace

from ray import tune

from edge_ray.tracking import content, settings
from edge_ray.tracking.client import TrackedRun, Tracker

_SEARCHES: dict[str, "SearchTracking"] = {}


class SearchTracking:
    """The driver's side of one search: its parent run and one child per trial."""

    def __init__(self, tracker: Tracker, s):
        self.tracker, self.settings = tracker, s
        self.children: dict[str, TrackedRun] = {}
        self._parent: TrackedRun | None = None

    @property
    def parent(self) -> TrackedRun:
        """Started when Tune starts the experiment (a search refused before that -- a name in
        use, a bad space -- leaves no run, and never touches an earlier search's run)."""
        if self._parent is None:
            s = self.settings
            self._parent = self.tracker.run(
                s.name, params=search_params(s), record=settings.record_location(s.out),
                tags={"edge.command": "tune", "edge.search": s.name, "edge.out": s.out,
                      "edge.objective": ", ".join(f"{m} ({d})" for m, d in zip(s.metrics, s.modes)),
                      "mlflow.source.name": "launch.py tune", "mlflow.source.type": "LOCAL"})
        return self._parent

    def started(self) -> None:
        self.parent  # noqa: B018 - starts it

    def __enter__(self):
        _SEARCHES[self.settings.name] = self
        return self

    def __exit__(self, *exc):
        _SEARCHES.pop(self.settings.name, None)

    def child(self, trial) -> TrackedRun:
        run = self.children.get(trial.trial_id)
        if run is None:
            cfg = trial_config(self.settings, trial.config, trial.trial_id)
            folder = settings.run_folder(cfg)
            sampled = {k: v for k, v in trial.config.items() if k in self.settings.space}
            tags = {**content.training_tags(cfg, "tune", folder), "edge.trial_id": trial.trial_id,
                    "edge.search": self.settings.name,
                    "edge.sampled": ", ".join(f"{k}={v}" for k, v in sampled.items())}
            run = self.tracker.run(cfg.train.run_name, params=content.config_params(cfg), tags=tags,
                                   parent=self.parent, record=settings.record_location(folder))
            self.children[trial.trial_id] = run
        return run

    def finished(self, trial, status: str) -> None:
        run = self.child(trial)
        if status == "FINISHED":
            last = (trial.last_result or {}).get("epoch", 0)
            epochs = self.settings.base().train.epochs
            if last and last < epochs:
                run.set_tags({"edge.stopped_early": f"after epoch {last} of {epochs} (ASHA)"})
        run.end(status)

    def end(self, res) -> None:
        """After the search: the trials' tables and plots on the parent, the best objective,
        the parent's status (KILLED when interrupted: ``tune --resume`` continues it)."""
        s = self.settings
        self.parent.log_files([p for k, p in sorted(res.paths.items())], None)
        if res.best is not None:
            self.parent.log_metrics({f"best.{m}": float(res.best[m]) for m in s.metrics if res.best.get(m) is not None})
            self.parent.set_tags({"edge.best_trial": str(res.best["trial"])})
        self.parent.end("FINISHED" if res.complete else "KILLED")


def search_params(s) -> dict:
    """The search's settings, its space (``space.<key>``) and its base config (``base.<key>``)."""
    params = {f"search.{k}": v for k, v in s.to_dict().items() if k not in ("config", "space")}
    params["search.storage"] = settings.display(s.storage)  # an Optuna database URL may hold a password
    params.update({f"space.{k}": json.dumps(v) for k, v in s.space.items()})
    params.update({f"base.{k}": v for k, v in content.config_params(s.config).items()})
    return params


def trial_config(s, params: dict, trial_id: str):
    """The config a trial trains (as ``tune.ray_tune._trial_driver`` builds it), recipe resolved."""
    from edge_ray.train.ray_trainer import storage_root
    from edge_ray.train.recipes import resolve_run
    from edge_ray.tune.settings import trial_base
    from edge_ray.tune.space import apply_params

    cfg = apply_params(trial_base(s), params)
    cfg = replace(cfg, train=replace(cfg.train, storage_path=f"{storage_root(cfg)}/{s.name}",
                                     run_name=f"train-{trial_id}"))
    return resolve_run(cfg)


class TrialsToMLflow(tune.Callback):
    """Tune's events of the search named ``name`` -> its ``SearchTracking`` (never raises)."""

    def __init__(self, name: str):
        self.name = name

    def _call(self, method: str, *args) -> None:
        search = _SEARCHES.get(self.name)
        if search is None:
            return
        try:
            getattr(search, method)(*args)
        except Exception:  # noqa: BLE001 - tracking never fails a search
            pass

    def setup(self, **info):
        self._call("started")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._call("child", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        search = _SEARCHES.get(self.name)
        if search is not None:
            try:
                search.child(trial).log_epoch(result)
            except Exception:  # noqa: BLE001
                pass

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._call("finished", trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._call("finished", trial, "FAILED")

    def on_experiment_end(self, trials, **info):
        search = _SEARCHES.get(self.name)
        if search is None:
            return
        for trial in trials:  # still running when the search stopped (Ctrl-C): KILLED
            if trial.trial_id in search.children and trial.status not in ("TERMINATED", "ERROR"):
                search.children[trial.trial_id].end("KILLED")
