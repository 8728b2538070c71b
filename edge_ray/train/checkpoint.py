"""The training checkpoint folder: ``state.pt`` (weights, optimiser, scheduler, the fp16
gradient scaler where one ran, epoch, reader seed/epoch, restart count), ``history.json`` (per-epoch metrics) and ``config.json``.
Ray Train copies the folder to storage (a local path or a URI); evaluation and OE ranking
read it back from there through ``edge_ray.storage``. Loading uses ``weights_only=True``:
a checkpoint is data, never code."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from edge_ray import storage

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
CONFIG_FILE = "config.json"


def save_checkpoint(folder, *, model_state: dict, optimizer_state: dict, scheduler_state: dict,
                    epoch: int, resumes: int, seed: int, history: list, config: dict,
                    scaler_state: dict | None = None) -> Path:
    """``scaler_state``: ``torch.amp.GradScaler.state_dict()`` of an fp16 run (its loss scale
    and growth tracker); stored under ``"scaler"`` only when given and not empty (a disabled
    scaler's is), so a checkpoint without one, older ones included, resumes with a fresh
    scaler (``loop.restore_scaler``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler_state,
             "epoch": epoch, "resumes": resumes, "reader_seed": seed, "reader_epoch": epoch}
    if scaler_state:
        state["scaler"] = scaler_state
    torch.save(state, folder / STATE_FILE)
    (folder / HISTORY_FILE).write_text(json.dumps(history))
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


def load_checkpoint(folder) -> tuple[dict, list, dict]:
    """(state, history, config dict) of a checkpoint folder (a local path or a URI such as
    ``s3://bucket/runs/tiny/checkpoint_...``), or a clear error."""
    folder = storage.normalize(folder)
    names = storage.listdir(folder) if storage.is_dir(folder) else {}
    if STATE_FILE not in names:
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no {STATE_FILE}); pass a "
                                "checkpoint_* folder of a run, e.g. runs/tiny/checkpoint_...")
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(folder, STATE_FILE))),
                       map_location="cpu", weights_only=True)
    history = storage.read_json(storage.join(folder, HISTORY_FILE)) if HISTORY_FILE in names else []
    config = storage.read_json(storage.join(folder, CONFIG_FILE))
    return state, history, config


def load_trained(checkpoint_dir: str):
    """(model, Config, number of classes) of a checkpoint written by the training worker:
    the network rebuilt from the run's config and loaded with its weights (eval mode is the
    caller's). The config's unset ``data.mean`` / ``data.std`` (a checkpoint written outside
    a Ray run) are the backbone's own (``models.resolve_normalization``)."""
    from edge_ray.config import from_dict
    from edge_ray.models import resolve_normalization
    from edge_ray.models.networks import build_model

    state, _, config = load_checkpoint(checkpoint_dir)
    cfg = resolve_normalization(from_dict(config))
    num_classes = state["model"]["head.weight"].shape[0]
    model = build_model(cfg.model.name, num_classes, width=cfg.model.width, image_size=cfg.data.image_size)
    model.load_state_dict(state["model"])
    return model, cfg, num_classes


def find_checkpoint(location: str) -> str:
    """A checkpoint folder as given, or for a run folder (``runs/tiny``) its newest completely
    written checkpoint; a clear error when the location is neither."""
    location = storage.normalize(location)
    names = storage.listdir(location) if storage.is_dir(location) else {}
    if STATE_FILE in names:
        return location
    if any(n.startswith("checkpoint_") for n in names):
        found = latest_checkpoint(location)
        if found is not None:
            return found[0]
        raise FileNotFoundError(f"{location} holds no completely written checkpoint_* folder; "
                                "train again or pass one checkpoint_* folder")
    raise FileNotFoundError(f"{location} is neither a training checkpoint (no {STATE_FILE}) nor a run "
                            "folder with checkpoint_* folders; pass e.g. runs/tiny or runs/tiny/checkpoint_...")


def checkpoint_folders(run_dir: str) -> list[str]:
    """The ``checkpoint_*`` folders of a run, newest last (Ray names them by time or number)."""
    names = sorted(n for n, kind in storage.listdir(run_dir).items()
                   if n.startswith("checkpoint_") and kind == storage.FileType.Directory)
    return [storage.join(run_dir, n) for n in names]


def last_epoch_on_storage(run_dir: str) -> tuple[str, int] | None:
    """(folder, epochs it holds) of the newest checkpoint whose three files are there, from
    its history.json alone (cheap: for messages; `latest_checkpoint` loads and checks)."""
    for folder in reversed(checkpoint_folders(run_dir) if storage.is_dir(run_dir) else []):
        names = storage.listdir(folder)
        if {STATE_FILE, HISTORY_FILE, CONFIG_FILE} <= set(names):
            try:
                return folder, len(storage.read_json(storage.join(folder, HISTORY_FILE)))
            except (ValueError, OSError):
                continue
    return None


def latest_checkpoint(run_dir: str) -> tuple[str, dict, list, dict] | None:
    """(folder, state, history, config) of the newest checkpoint of a run that was
    completely written, or None.

    Ray Train restores from the last checkpoint its controller *registered*; a node lost
    just after a checkpoint was uploaded can leave a newer, complete one on storage that
    Ray does not know of (one epoch of work lost for nothing). Newest first, the first
    folder whose three files load is the one to resume from; a folder cut short by the
    failure (a file missing, or a state.pt that does not load) is passed over.
    """
    for folder in reversed(checkpoint_folders(run_dir)):
        try:
            state, history, config = load_checkpoint(folder)
        except Exception:  # noqa: BLE001 - incomplete or damaged: try the next older one
            continue
        if HISTORY_FILE in storage.listdir(folder) and len(history) == int(state["epoch"]) + 1:
            return folder, state, history, config
    return None
