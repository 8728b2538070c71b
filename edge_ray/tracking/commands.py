"""A command's tracking, on top of ``client``: the tracker a command opens and closes
(``command``), the MLflow import started early (``prepare``), and ``eval`` / ``export``
logging to the run of the training they read (``log_to_training``)."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from edge_ray.tracking import content, settings
from edge_ray.tracking.client import CLOSE_TIMEOUT_S, KILL_TIMEOUT_S, TrackedRun, Tracker


def _import_mlflow() -> None:
    try:
        import mlflow.tracking  # noqa: F401
    except Exception:  # noqa: BLE001 - the tracker reports it when it connects
        pass


def prepare(args) -> None:
    """Import MLflow on a background thread now, while the command checks its inputs and starts
    Ray: the import takes seconds (8-13 s on the loaded 2-core VM, benchmarks/README.md), and the
    tracker's first call then finds it done. Call it after the command's own heavy imports
    (torch, Ray), so that the two threads do not import the same libraries at once."""
    if settings.enabled(args):
        threading.Thread(target=_import_mlflow, name="mlflow-import", daemon=True).start()


@contextlib.contextmanager
def command(args, name: str, *, quiet: bool = False) -> Iterator[Tracker]:
    """The tracker of one command (off with --no-tracking / EDGE_RAY_TRACKING=0). Runs still open
    at the end are FINISHED, FAILED if the command raised, KILLED on Ctrl-C / SIGTERM."""
    from edge_ray.cli import interrupts

    tracker = Tracker() if settings.enabled(args) else Tracker.off()
    if tracker.active:
        interrupts.at_interrupt(tracker.interrupted)
        if not quiet:
            print(tracker.where(), flush=True)
    status = "FINISHED"
    try:
        yield tracker
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        interrupts.forget_at_interrupt(tracker.interrupted)
        tracker.close(status, timeout=KILL_TIMEOUT_S if status == "KILLED" else CLOSE_TIMEOUT_S)


def training_run_of(tracker: Tracker, run_folder: str) -> TrackedRun | None:
    """The run a training recorded in its folder (for ``eval`` / ``export``), or None when
    it was not tracked. The run is not ended again: it keeps the training's status."""
    from edge_ray import storage

    record = settings.record_location(run_folder)
    try:
        if not tracker.active or not storage.is_file(record):
            return None
        saved = storage.read_json(record)
    except (ValueError, OSError):
        return None
    run = TrackedRun(tracker, saved.get("run_name") or storage.basename(run_folder), record=record)
    run.keeps_status = True

    def find(client):
        found = run._saved(client)
        if found is None:
            raise LookupError(f"the training's run {saved.get('run_id')} (logged to {saved.get('tracking_uri')}) "
                              f"is not in this store; set MLFLOW_TRACKING_URI={saved.get('tracking_uri')}")
        run.run_id = found.info.run_id

    tracker.submit(f"finding the run of {run_folder}", find)
    return run


def log_evaluation(run: TrackedRun | None, res: dict, *, step: int) -> None:
    """An evaluation (``evaluate_checkpoint``'s return: ``result`` and ``paths``) on ``run``:
    Table 3 as metrics at ``step`` (the checkpoint's epoch), results.json, table.md, table.csv
    and the figures as artifacts under ``eval/``."""
    if run is None or not run.active:
        return
    paths = res.get("paths", {})
    run.log_eval(res["result"], step=step)
    run.log_files([paths.get("json"), paths.get("markdown"), paths.get("csv"), *paths.get("plots", [])], "eval")


def checkpoint_step(checkpoint: str) -> int:
    """The epoch a checkpoint folder holds (its history.json), 0 when unknown."""
    from edge_ray import storage

    try:
        return content.checkpoint_epoch(storage.read_json(storage.join(checkpoint, "history.json")))
    except Exception:  # noqa: BLE001 - only the step of a logged evaluation
        return 0


def log_to_training(args, command_name: str, checkpoint: str, log: Callable[[TrackedRun], None]) -> None:
    """``eval`` / ``export``: ``log(run)`` on the MLflow run of the training ``checkpoint``
    belongs to (recorded in its run folder); nothing when that training was not tracked."""
    from edge_ray import storage

    with command(args, command_name, quiet=True) as tracker:
        run = training_run_of(tracker, storage.parent(checkpoint))
        if run is None:
            return
        log(run)
        print(f"MLflow: logged to the training's run {run.name!r} in {settings.display(tracker.uri)} "
              f"(see it with: {settings.ui_hint(tracker.uri)})", flush=True)
