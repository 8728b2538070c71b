"""Export a training checkpoint as a detector folder (``edge_ray.detector``).

One score, fitted as ``eval`` fits it (on the first ``fit_samples`` ID training images), a
threshold on it chosen on the ID validation set, and a model card:

1. With an ID test set and OOD sets in the run's config (or given), the checkpoint is
   evaluated with this score exactly as ``launch.py eval`` does (``evaluate.pipeline.evaluate``):
   that pass fits the score and gives the card its Table-3 row and the ID test mAP.
   Without them, the score is fitted on the ID training set alone and the card says so.
2. One pass over ``id_val``: the threshold keeps the ID validation images the FPR95 rule
   keeps at ``tpr`` (at least ``tpr`` of them at ``score >= t``), placed midway to the next
   lower ID score (``metrics.separating_threshold``) so that float noise in a score cannot
   flip an image; written with the TPR it achieves and the ID score quantiles. The per-class label
   thresholds are 0.5, another fixed value, or per class the F1-best one on ``id_val``.
3. The folder is written through ``edge_ray.storage``: a local path or a URI.

ODIN is supported: its score perturbs every input with one gradient step, so predicting with
it costs a forward and a backward pass more than any other score (about 3x the compute).
"""
from __future__ import annotations

import json

import numpy as np

from edge_ray import storage
from edge_ray.train.checkpoint import HISTORY_FILE, find_checkpoint, load_trained
from edge_ray.data import load_index
from edge_ray.detector.runtime import Detector
from edge_ray.evaluate.pipeline import (check_score_names, collect_set, eval_options, evaluate, fit_scorers,
                                 needs_training_features, open_sets, score_set)
from edge_ray.metrics import best_f1_thresholds, mean_average_precision, separating_threshold
from edge_ray.detector.card import build_card, card_markdown
from edge_ray.scores.base import sigmoid

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def parse_label_thresholds(spec) -> str | float:
    """``"val-f1"`` or one probability in [0, 1] for every class."""
    if str(spec) == "val-f1":
        return "val-f1"
    try:
        value = float(spec)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ValueError(f"label thresholds {spec!r}: give one probability in [0, 1] (e.g. 0.5) or val-f1 "
                         "(per class, the threshold with the best F1 on id_val)")
    return value


def export_detector(checkpoint: str, out: str, *, score: str = "jointenergy", tpr: float = 0.95,
                    label_thresholds="0.5", id_train=None, id_val=None, id_test=None, ood=None,
                    device: str = "cpu", overwrite: bool = False, table: bool = True) -> dict:
    """Write the detector folder for ``checkpoint`` (a checkpoint_* folder or a run folder:
    its newest checkpoint) to ``out``; returns ``{"out", "threshold", "card"}``."""
    check_score_names([score])
    if not 0 < float(tpr) <= 1:
        raise ValueError(f"--tpr must lie in (0, 1], got {tpr}")
    rule = parse_label_thresholds(label_thresholds)
    out = storage.normalize(out)
    if storage.exists(storage.join(out, "detector.json")) and not overwrite:
        raise FileExistsError(f"{out} already holds a detector; pass --overwrite to replace it")
    checkpoint = find_checkpoint(checkpoint)
    model, cfg, _ = load_trained(checkpoint)
    locations = _locations(cfg, id_train, id_val, id_test, ood)
    opts = eval_options(cfg, device)
    train_index = load_index(locations["id_train"], role="id")
    val_index = load_index(locations["id_val"], role="id")
    _check_classes(model, train_index, val_index)

    result = None
    if table and locations["id_test"] and locations["ood"]:
        sets = open_sets(locations["id_train"], locations["id_test"], locations["ood"], classes=train_index.classes)
        result = evaluate(model, sets, [score], opts, training=cfg.loss.method)
        scorer = result["_scorers"][score]
    else:
        train_out = (collect_set(model, train_index, opts, limit=opts.fit_samples)
                     if needs_training_features([score]) else None)
        scorer = fit_scorers([score], train_out, model)[score]
    val = score_set(scorer, model, val_index, opts)
    threshold = _threshold(val["scores"], tpr)
    probs = sigmoid(val["logits"].astype(np.float64))
    thresholds = (best_f1_thresholds(probs, val["targets"]) if rule == "val-f1"
                  else np.full(len(train_index.classes), rule))
    detector = Detector(model, arch={**model.arch, "name": cfg.model.name, "width": cfg.model.width},
                        classes=train_index.classes,
                        image_size=cfg.data.image_size, mean=cfg.data.mean, std=cfg.data.std, scorer=scorer,
                        threshold=threshold["value"], label_thresholds=thresholds,
                        threshold_info={k: v for k, v in threshold.items() if k != "value"},
                        config=cfg.to_dict(), device=device)
    history_at = storage.join(checkpoint, HISTORY_FILE)
    history = storage.read_json(history_at) if storage.exists(history_at) else []
    card = build_card(detector, cfg, checkpoint=checkpoint, history=history, indexes=(train_index, val_index),
                      locations=locations, result=result, label_rule=rule, opts=opts,
                      val_map=_map_or_none(val["logits"], val["targets"]))
    files = {"model_card.md": card_markdown(card).encode(),
             "model_card.json": (json.dumps(card, indent=1, default=float) + "\n").encode()}
    detector.save(out, extra_files=files, overwrite=overwrite)
    return {"out": out, "threshold": threshold, "card": card}


def _locations(cfg, id_train, id_val, id_test, ood) -> dict:
    norm = lambda v: storage.normalize(v) if v else ""  # noqa: E731
    found = {"id_train": norm(id_train or cfg.data.id_train), "id_val": norm(id_val or cfg.data.id_val),
             "id_test": norm(id_test or cfg.data.id_test),
             "ood": [norm(p) for p in (ood if ood is not None else cfg.data.ood)]}
    for key in ("id_train", "id_val"):
        if not found[key]:
            raise ValueError(f"the run's config has no data.{key}; pass --{key.replace('_', '-')} "
                             f"(the {'score is fitted' if key == 'id_train' else 'threshold is chosen'} on it)")
    return found


def _check_classes(model, train_index, val_index) -> None:
    if train_index.num_classes != model.num_classes:
        raise ValueError(f"the checkpoint has {model.num_classes} classes but {train_index.dir} lists "
                         f"{train_index.num_classes}; export with the ID sets it was trained on")
    if val_index.classes != train_index.classes:
        raise ValueError(f"ID validation set {val_index.dir} and ID training set {train_index.dir} have "
                         "different class lists")


def _threshold(scores: np.ndarray, tpr: float) -> dict:
    value = separating_threshold(scores, tpr)
    kept = int((scores >= value).sum())
    return {"value": value, "tpr": float(tpr), "tpr_on_id_val": kept / len(scores), "id_val_kept": kept,
            "id_val_images": int(len(scores)),
            "id_val_quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in QUANTILES},
            "id_val_min": float(scores.min()), "id_val_max": float(scores.max())}


def _map_or_none(logits, targets):
    return mean_average_precision(logits, targets) if np.asarray(targets).any() else None


__all__ = ["export_detector", "parse_label_thresholds"]
