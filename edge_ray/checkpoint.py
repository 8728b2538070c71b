"""The training checkpoint folder: ``state.pt`` (weights, optimiser, scheduler, epoch,
reader seed/epoch, restart count), ``history.json`` (per-epoch metrics) and ``config.json``.
Ray Train copies the folder to storage; evaluation and OE ranking read it back. Loading
uses ``weights_only=True``: a checkpoint is data, never code."""
from __future__ import annotations

import json
from pathlib import Path

import torch

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
    """(state, history, config dict) of a checkpoint folder, or a clear error."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no {STATE_FILE}); pass a "
                                "checkpoint_* folder of a run, e.g. runs/tiny/checkpoint_...")
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    history = json.loads((folder / HISTORY_FILE).read_text()) if (folder / HISTORY_FILE).is_file() else []
    config = json.loads((folder / CONFIG_FILE).read_text())
    return state, history, config
