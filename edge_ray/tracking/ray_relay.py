"""Rank 0's epoch metrics, from Ray Train to the driver that logs them to MLflow.

Where the pieces run (Ray 2.60, Train V2): ``ray.train.report`` in every worker; the
``TrainController`` actor, which calls a ``ray.train.UserCallback``'s ``after_report`` with every
rank's metrics, is pinned to the node of the process that called ``fit()``
(``DataParallelTrainer._initialize_and_run_controller``: ``label_selector`` = that node's id) but
is a process of its own: it gets only Ray Train's own environment variables (not the driver's
``MLFLOW_TRACKING_URI`` or credentials) and another working directory. And ``fit()`` itself
runs in a Ray task for ``compare`` (any node) and in a Tune trial for ``tune``. So the
controller logs nothing: ``ReportToDriver`` puts rank 0's metrics on a ``ray.util.queue.Queue``
(a 0-CPU actor, as Ray's own Tune + Train interop does with its TuneReportCallback), and a
thread of the command's driver takes them off and logs them there, with the driver's
environment, into a store that may be a file on the driver's disk -- wherever rank 0 and the
controller run. (``tune`` needs no relay: Tune already brings each report to its driver,
``ray_tune_callback.py``.)

A report reaches the queue before ``fit()`` returns (``after_report`` waits for the put), so
``flush()`` after ``fit()`` sees every epoch; a put that fails is dropped (tracking never fails
a training).
"""
from __future__ import annotations

import threading
import time
import uuid

import ray.train
from ray.util.queue import Empty, Queue

from edge_ray.tracking.client import TrackedRun, Tracker

PUT_TIMEOUT_S = 10.0
POLL_S = 0.5


class ReportToDriver(ray.train.UserCallback):
    """Runs in the Train controller: rank 0's metrics of each report onto the driver's queue."""

    def __init__(self, queue: Queue, key: str):
        self._queue, self._key = queue, key

    def after_report(self, run_context, metrics, checkpoint):
        try:
            if metrics:
                self._queue.put((self._key, dict(metrics[0])), timeout=PUT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - tracking never fails a training
            pass


class Relay:
    """The driver's end: one queue (created on first use) for every training of a command."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self._queue: Queue | None = None
        self._runs: dict[str, TrackedRun] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        tracker.add_closer(self.close)

    def callbacks(self, run: TrackedRun | None) -> list:
        """The Ray Train callbacks that bring ``run``'s epochs here ([] when not tracked)."""
        if run is None or not run.active:
            return []
        if self._queue is None:
            self._queue = Queue(actor_options={"num_cpus": 0})
            self._thread = threading.Thread(target=self._drain, name="mlflow-relay", daemon=True)
            self._thread.start()
        key = uuid.uuid4().hex
        self._runs[key] = run
        return [ReportToDriver(self._queue, key)]

    def _handle(self, item) -> None:
        key, report = item
        run = self._runs.get(key)
        if run is not None:
            run.log_epoch(report)

    def _drain(self) -> None:
        while not self._stop.is_set():
            if self._flushing.is_set():
                time.sleep(0.05)
                continue
            with self._lock:
                try:
                    item = self._queue.get(timeout=POLL_S)
                except Empty:
                    continue
                except Exception:  # noqa: BLE001 - Ray going away: nothing more will come
                    return
                self._handle(item)

    def flush(self) -> None:
        """Log every report already on the queue (call after ``fit()`` returns, before the
        run's end)."""
        if self._queue is None:
            return
        self._flushing.set()
        try:
            with self._lock:
                while True:
                    try:
                        items = self._queue.get_nowait_batch(self._queue.qsize())
                    except Exception:  # noqa: BLE001 - Empty, or Ray gone
                        return
                    if not items:
                        return
                    for item in items:
                        self._handle(item)
        finally:
            self._flushing.clear()

    def close(self) -> None:
        if self._queue is None:
            return
        self.flush()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_S + 2)
        try:
            self._queue.shutdown(force=True)
        except Exception:  # noqa: BLE001
            pass
        self._queue = None
