"""The training checkpoint folder: ``state.pt`` (weights, optimiser, scheduler, epoch,
reader seed/epoch, restart count), ``history.json`` (per-epoch metrics) and ``config.json``.
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
                    epoch: int, resumes: int, seed: int, history: list, config: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler_state,
                "epoch": epoch, "resumes": resumes, "reader_seed": seed, "reader_epoch": epoch},
               folder / STATE_FILE)
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
