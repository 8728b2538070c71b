"""The MLflow client of one command, on the driver.

Every call goes through one background thread, in the order it was asked for: the command
never waits for MLflow (a slow import, a slow server), and never fails because of it. The
first call that fails -- server unreachable, credentials refused, an experiment deleted --
prints one warning line naming what was not logged, and every later call is dropped; the
command goes on. Requests to a server are retried a little (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
3, backoff factor 1, timeout 30 s, unless set in the environment), not for minutes.

A ``TrackedRun`` is one MLflow run. A training's run is recorded beside its checkpoints
(``<run folder>/mlflow_run.json``, through ``edge_ray.storage``, so on ``s3://`` too): running
the training again -- a resume -- continues that MLflow run (status RUNNING again, the same
metrics history, params added, params that changed listed in the tag ``edge.resumed_with``)
when it is in the same store; ``eval`` and ``export`` find it there too.

Status: FINISHED when the work ended, FAILED when it raised, KILLED on Ctrl-C / SIGTERM (the
interrupt handler of ``edge_ray.cli.interrupts`` ends the open runs before the process leaves).
"""
from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from edge_ray.tracking import content, settings

HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
CLOSE_TIMEOUT_S = 120.0     # how long a finished command waits for its last MLflow calls
KILL_TIMEOUT_S = 5.0        # ... and an interrupted one (edge_ray.cli.interrupts leaves after 15 s)
BATCH = 200                 # metrics / params per log_batch request (MLflow allows 1000 / 100)
LOST = ("that and everything after it are not in MLflow (the run folder keeps the checkpoints' history, "
        "summary.json and the eval results)")


class Tracker:
    """One command's MLflow connection. ``Tracker.off()`` is the same object doing nothing."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, *, active: bool = True):
        self.uri = uri or settings.tracking_uri()
        self.experiment = experiment or settings.experiment_name()
        self.active = active
        self.failure: str | None = None         # the warning, once printed
        self._client = None
        self._experiment_id: str | None = None
        self._calls: queue.Queue = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._open: list[TrackedRun] = []
        self._closers: list[Callable[[], None]] = []
        self._thread = None
        if active:
            self._thread = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
            self._thread.start()

    @classmethod
    def off(cls) -> "Tracker":
        return cls(active=False)

    # ---- the worker thread ------------------------------------------------------------------

    def submit(self, what: str, call: Callable) -> None:
        """Run ``call(client)`` on the tracking thread; ``what`` names it in the warning."""
        if not self.active or self.failure is not None:
            return
        with self._idle:
            self._pending += 1
        self._calls.put((what, call))

    def _work(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            what, call = item
            try:
                if self.failure is None:
                    call(self._connect())
            except Exception as err:  # noqa: BLE001 - tracking never fails the command
                self._fail(what, err)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _connect(self):
        if self._client is None:
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
            import logging

            from mlflow.tracking import MlflowClient

            for name in ("mlflow", "alembic"):  # "creating tables", "upgrading the database": not the user's concern
                logging.getLogger(name).setLevel(logging.WARNING)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self, client) -> str:
        """The experiment's id, created on first use (artifacts beside a SQLite database)."""
        if self._experiment_id is None:
            wanted = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
            if wanted:
                exp = client.get_experiment(wanted)
            else:
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    try:
                        self._experiment_id = client.create_experiment(
                            self.experiment, artifact_location=settings.artifact_location(self.uri, self.experiment))
                        return self._experiment_id
                    except Exception:  # noqa: BLE001 - created meanwhile by another command
                        exp = client.get_experiment_by_name(self.experiment)
                        if exp is None:
                            raise
            if exp.lifecycle_stage != "active":
                raise RuntimeError(f"experiment {exp.name!r} is deleted in this store; restore it (mlflow "
                                   "experiments restore) or set MLFLOW_EXPERIMENT_NAME to another name")
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _fail(self, what: str, err: BaseException) -> None:
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        reason = f"{type(err).__name__}: {(lines[-1] if lines else '')[:200]}"
        self.failure = (f"warning: MLflow tracking at {settings.display(self.uri)} failed at {what} ({reason}); "
                        f"the command goes on without it: {LOST}")
        print(self.failure, file=sys.stderr, flush=True)

    def wait(self, timeout: float) -> bool:
        """Wait until every call asked for so far has run; False on timeout."""
        if not self.active:
            return True
        end = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # ---- runs -------------------------------------------------------------------------------

    def run(self, name: str, *, params: dict | None = None, tags: dict | None = None,
            parent: "TrackedRun | None" = None, record: str | None = None) -> "TrackedRun":
        """Start (or, with a ``record`` location naming one in this store, continue) a run."""
        run = TrackedRun(self, name, parent=parent, record=record)
        if self.active:
            self._open.append(run)
            self.submit(f"the start of run {name!r}", lambda c: run._start(c, params or {}, tags or {}))
        return run

    def training(self, cfg, command: str, *, parent: "TrackedRun | None" = None,
                 name: str | None = None) -> "TrackedRun":
        """The run of one training: named after it, its config as params, recorded in its folder."""
        folder = settings.run_folder(cfg)
        return self.run(name or cfg.train.run_name, params=content.config_params(cfg),
                        tags=content.training_tags(cfg, command, folder), parent=parent,
                        record=settings.record_location(folder))

    def add_closer(self, closer: Callable[[], None]) -> None:
        """``closer()`` runs first when the tracker closes (the relay flushes its queue)."""
        self._closers.append(closer)

    def end_open(self, status: str) -> None:
        for run in list(self._open):
            run.end(status)

    def interrupted(self, signum=None) -> None:
        """Ctrl-C / SIGTERM: every open run ends KILLED, within KILL_TIMEOUT_S."""
        self.end_open("KILLED")
        self.wait(KILL_TIMEOUT_S)

    def close(self, status: str = "FINISHED", timeout: float = CLOSE_TIMEOUT_S) -> None:
        """End the runs still open with ``status`` and wait (bounded) for the last calls."""
        for closer in self._closers:
            try:
                closer()
            except Exception:  # noqa: BLE001 - tracking never fails the command
                pass
        self.end_open(status)
        if not self.active:
            return
        if not self.wait(timeout) and self.failure is None:
            self._fail("the end of the command", TimeoutError(f"calls still waiting after {timeout:.0f}s"))
        self._calls.put(None)

    def where(self) -> str:
        """One line for the command's output: where the runs go and how to see them."""
        return (f"MLflow: runs in {settings.display(self.uri)} (experiment {self.experiment!r}); "
                f"see them with: {settings.ui_hint(self.uri)}")


class TrackedRun:
    """One MLflow run. Every method only queues a call on the tracker's thread."""

    def __init__(self, tracker: Tracker, name: str, *, parent: "TrackedRun | None" = None,
                 record: str | None = None):
        self.tracker, self.name, self.parent, self.record = tracker, name, parent, record
        self.run_id: str | None = None
        self.continued = False
        self.ended: str | None = None
        self.keeps_status = False   # a training's run that eval / export add to: its status stays

    @property
    def active(self) -> bool:
        """Whether calls still go through (also after end(): eval logs to a FINISHED run)."""
        return self.tracker.active and self.tracker.failure is None

    # ---- on the tracking thread -------------------------------------------------------------

    def _start(self, client, params: dict, tags: dict) -> None:
        from mlflow.entities import Param

        exp = self.tracker.experiment_id(client)
        run = self._saved(client)
        tags = dict(tags)
        if self.parent is not None and self.parent.run_id:
            tags["mlflow.parentRunId"] = self.parent.run_id
        if run is None:
            run = client.create_run(exp, run_name=self.name, tags=tags)
            self.run_id = run.info.run_id
            if self.record:
                self._write_record(run)
        else:
            self.run_id, self.continued = run.info.run_id, True
            client.update_run(self.run_id, status="RUNNING")
            tags["edge.continued"] = str(int(run.data.tags.get("edge.continued", "0")) + 1)
            for key, value in tags.items():
                client.set_tag(self.run_id, key, value)
        old = run.data.params if self.continued else {}
        changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
        if changed:
            client.set_tag(self.run_id, "edge.resumed_with", "; ".join(changed)[:content.MAX_TAG_LENGTH])
        new = [Param(k, v) for k, v in params.items() if k not in old]
        for i in range(0, len(new), 100):
            client.log_batch(self.run_id, params=new[i:i + 100])

    def _saved(self, client):
        """The run this folder's record names, if it is in this store and not deleted."""
        if not self.record:
            return None
        from edge_ray import storage

        try:
            if not storage.is_file(self.record):
                return None
            saved = storage.read_json(self.record)
        except (ValueError, OSError):
            return None
        try:
            run = client.get_run(saved["run_id"])
        except Exception as err:  # noqa: BLE001 - another store: a new run
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) or "not found" in str(err).lower():
                return None
            raise
        return run if run.info.lifecycle_stage == "active" else None

    def _write_record(self, run) -> None:
        from edge_ray import storage

        storage.write_json(self.record, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                         "run_name": self.name, "tracking_uri": settings.display(self.tracker.uri)},
                           indent=1)

    # ---- what commands call -----------------------------------------------------------------

    def _submit(self, what: str, call: Callable) -> None:
        if self.active:
            self.tracker.submit(f"{what} of run {self.name!r}", call)

    def log_params(self, params: dict) -> None:
        from_dict = {k: content._value(v) for k, v in params.items()}

        def call(client):
            from mlflow.entities import Param

            have = client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in from_dict.items() if k not in have]
            for i in range(0, len(new), 100):
                client.log_batch(self.run_id, params=new[i:i + 100])

        self._submit("params", call)

    def set_tags(self, tags: dict) -> None:
        tags = {k: str(v)[:content.MAX_TAG_LENGTH] for k, v in tags.items()}
        self._submit("tags", lambda c: [c.set_tag(self.run_id, k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, *, step: int = 0, timestamp_ms: int | None = None, what: str = "metrics"):
        stamp = timestamp_ms or int(time.time() * 1000)
        values = dict(metrics)

        def call(client):
            from mlflow.entities import Metric

            batch = [Metric(k, float(v), stamp, step) for k, v in values.items()]
            for i in range(0, len(batch), BATCH):
                client.log_batch(self.run_id, metrics=batch[i:i + BATCH])

        if values:
            self._submit(what, call)

    def log_epoch(self, report: dict) -> None:
        """One epoch's report (rank 0's metrics dict), at ``step = epoch``."""
        step, stamp, values = content.epoch_metrics(report)
        self.log_metrics(values, step=step, timestamp_ms=stamp, what=f"epoch {step}'s metrics")

    def log_eval(self, result: dict, *, step: int, prefix: str = "eval") -> None:
        self.log_metrics(content.eval_metrics(result, prefix), step=step, what="the evaluation's metrics")

    def log_files(self, locations: list[str], artifact_path: str | None = None) -> None:
        """Files (local paths or URIs) as artifacts, copied when the call runs."""
        files = [str(f) for f in locations if f]
        self._submit(f"artifacts {artifact_path or '/'}", lambda c: _upload(c, self.run_id, files, artifact_path))

    def log_folder(self, location: str, artifact_path: str) -> None:
        """A whole folder (local path or URI) as artifacts under ``artifact_path``."""
        def call(client):
            from edge_ray import storage

            with storage.local_copy(location) as local:
                client.log_artifacts(self.run_id, str(local), artifact_path)

        self._submit(f"artifacts {artifact_path}/", call)

    def end(self, status: str = "FINISHED") -> None:
        if self.ended is not None or self.keeps_status or not self.tracker.active:
            return
        self.ended = status
        if self in self.tracker._open:
            self.tracker._open.remove(self)
        if self.tracker.failure is None:
            self.tracker.submit(f"the status {status} of run {self.name!r}",
                                lambda c: c.set_terminated(self.run_id, status) if self.run_id else None)


def _upload(client, run_id: str, files: list[str], artifact_path: str | None) -> None:
    from edge_ray import storage

    with tempfile.TemporaryDirectory(prefix="edge-mlflow-") as tmp:
        for f in files:
            (Path(tmp) / storage.basename(f)).write_bytes(storage.read_bytes(f))
        client.log_artifacts(run_id, tmp, artifact_path)
