"""Where tracked runs go, and whether they are tracked at all (no mlflow import here: the
command-line parsers use this module).

- ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID``) when set,
  as every MLflow tool reads them: a tracking server (``http://host:5000``), a database, a
  folder. Credentials for a server come from MLflow's own variables (``MLFLOW_TRACKING_TOKEN``,
  ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``), never from a config or a URI.
- Otherwise ``sqlite:///mlflow.db`` in the working directory, artifacts in ``./mlruns``: MLflow's
  own default, so ``mlflow ui`` started in the same folder shows the runs, and no server is
  needed. It stays on the driver's disk when ``train.storage_path`` is ``s3://`` (SQLite needs a
  local file; set ``MLFLOW_TRACKING_URI`` to a server to keep runs elsewhere).
- ``--no-tracking`` on a command, or ``EDGE_RAY_TRACKING=0`` in the environment, turns it off.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SWITCH = "EDGE_RAY_TRACKING"
DEFAULT_EXPERIMENT = "edge-ray"
DEFAULT_DB = "mlflow.db"
RECORD = "mlflow_run.json"  # beside a run's checkpoints: the MLflow run a rerun continues


def add_flag(parser) -> None:
    parser.add_argument("--no-tracking", action="store_true",
                        help=f"do not log to MLflow (default: log to $MLFLOW_TRACKING_URI, else sqlite:///"
                             f"{DEFAULT_DB} here; {SWITCH}=0 turns it off for every command)")


def enabled(args=None) -> bool:
    """Tracking is on unless the command got --no-tracking or the environment says 0/off/false."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return not getattr(args, "no_tracking", False)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``./mlflow.db`` (absolute: the
    process may change directories)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite database (``mlruns/``, as
    MLflow does for ``./mlflow.db``), so the database and its artifacts stay one folder; the
    store's own default for servers and other stores (None)."""
    db = sqlite_path(uri)
    return str(db.parent / "mlruns" / experiment) if db is not None else None


def display(uri: str) -> str:
    """The URI without user info (a password in it must not reach a log line)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def ui_hint(uri: str) -> str:
    """How to look at the runs: the one command for a local store (``make mlflow-ui`` in the
    project folder: the full mlflow package in a venv of its own, then ``mlflow ui``), the
    address for a server."""
    if uri.startswith(("http://", "https://")):
        return f"open {display(uri)}"
    db = sqlite_path(uri)
    here = Path.cwd()
    shown = display(uri) if db is None else (
        f"sqlite:///{db.relative_to(here)}" if db.is_relative_to(here) else f"sqlite:///{db}")
    if (here / "Makefile").is_file() and "mlflow-ui:" in (here / "Makefile").read_text():
        return "make mlflow-ui" + ("" if shown == f"sqlite:///{DEFAULT_DB}" else f" STORE={shown}")
    return f"mlflow ui --backend-store-uri {shown}"


def record_location(run_folder: str) -> str:
    from edge_ray import storage

    return storage.join(run_folder, RECORD)


def run_folder(cfg) -> str:
    """``<train.storage_path>/<train.run_name>``: where Ray Train keeps the run's checkpoints."""
    from edge_ray import storage

    return storage.join(storage.normalize(cfg.train.storage_path), cfg.train.run_name)
