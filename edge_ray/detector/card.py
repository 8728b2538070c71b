"""The model card of an exported detector: what it was trained on, how, with which score
and threshold, and how this checkpoint did on the run's test sets (its Table-3 row).

``build_card`` gathers the facts into a JSON-able dict (``model_card.json``);
``card_markdown`` renders the same facts for people (``model_card.md``). Nothing is
claimed that the export did not measure: without test sets the card says there are none.
"""
from __future__ import annotations

import datetime

import numpy as np

from edge_ray import storage
from edge_ray.detector.folder import FORMAT_VERSION
from edge_ray.losses import LOSSES
from edge_ray.train.recipes import recipe_record

METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")  # as in results.json


def _set(index) -> dict:
    return {"name": index.name, "location": index.dir, "images": index.num_samples}


def build_card(detector, cfg, *, checkpoint: str, history: list, indexes, locations: dict, result,
               label_rule, opts, val_map) -> dict:
    train_index, val_index = indexes
    score = detector.scorer
    last = history[-1] if history else {}
    card = {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"checkpoint": checkpoint, "epochs_trained": len(history),
                   "last_epoch_val_map": last.get("val_map")},
        "data": {"classes": list(detector.classes),
                 "class_counts_id_train": dict(zip(detector.classes, train_index.label_counts)),
                 "id_train": _set(train_index), "id_val": _set(val_index),
                 "id_test": locations["id_test"] or None, "oe": cfg.data.oe or None,
                 "ood": list(locations["ood"])},
        "method": {"loss": cfg.loss.method,
                   "loss_params": {k: getattr(cfg.loss, k) for k in LOSSES[cfg.loss.method].params},
                   "recipe": recipe_record(cfg), "seed": cfg.train.seed,
                   "model": {**detector.arch, "feature_dim": detector.model.feature_dim,
                             "pretrained": cfg.model.weights or None},
                   "image_size": cfg.data.image_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
                   "batch_size": cfg.data.batch_size, "oe_batch_size": cfg.data.oe_batch_size},
        "score": {"name": score.name, "params": score.params,
                  "fitted_on": (f"the first {min(train_index.num_samples, opts.fit_samples)} images of "
                                f"{train_index.name}") if score.needs_fit else None},
        "threshold": {"value": detector.threshold, **detector.threshold_info},
        "label_thresholds": {"rule": "F1-best per class on id_val" if label_rule == "val-f1"
                             else f"{label_rule:g} for every class",
                             "values": dict(zip(detector.classes, detector.label_thresholds.tolist()))},
        "evaluation": _evaluation(result, score.name, val_map),
    }
    return card


def _evaluation(result, score: str, val_map) -> dict:
    out = {"id_val_map": val_map, "id_test_map": None, "table3_row": None, "tail_only": None,
           "num_id_test": None}
    if result is None:
        out["note"] = "no ID test set and OOD sets were given: no Table-3 row"
        return out
    per_set = result["scores"][score]
    keys = METRICS
    out.update(id_test_map=result["map"], num_id_test=result["num_id_test"], num_tail_only=result["num_tail_only"],
               table3_row={s: {k: m[k] for k in keys} for s, m in per_set.items()},
               tail_only={s: ({k: m["tail"][k] for k in keys} if m["tail"] else None) for s, m in per_set.items()})
    out["table3_row"]["mean"] = {k: float(np.mean([m[k] for m in per_set.values()])) for k in keys}
    return out


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def card_markdown(card: dict) -> str:
    d, m, s, t, e = card["data"], card["method"], card["score"], card["threshold"], card["evaluation"]
    params = ", ".join(f"{k} {v}" for k, v in m["loss_params"].items()) or "none"
    r = m["recipe"]
    lines = [
        f"# Model card: {m['loss']} multi-label detector ({m['model']['name']}, {len(d['classes'])} classes)",
        "",
        f"Exported {card['created']} from `{card['source']['checkpoint']}` "
        f"({card['source']['epochs_trained']} epoch(s) trained); detector format version {card['format_version']}.",
        "",
        "## What it does",
        "",
        f"Given an image, it gives a probability for each of the {len(d['classes'])} classes "
        f"({', '.join(d['classes'])}), the labels whose probability reaches their threshold, and an "
        f"OOD score ({s['name']}; higher = more like the training images). An image scoring below "
        f"{t['value']:.6g} is flagged `is_unknown`: the model has not seen anything like it, and its "
        "labels should not be trusted.",
        "",
        "## Data",
        "",
        f"- ID training: `{d['id_train']['location']}` ({d['id_train']['images']} images); class counts "
        + ", ".join(f"{k} {v}" for k, v in d["class_counts_id_train"].items()),
        f"- ID validation (threshold): `{d['id_val']['location']}` ({d['id_val']['images']} images)",
        f"- ID test: {'`' + d['id_test'] + '`' if d['id_test'] else 'none given'}",
        f"- Outlier exposure: {'`' + d['oe'] + '`' if d['oe'] else 'none'}",
        f"- OOD test sets: {', '.join('`' + o + '`' for o in d['ood']) or 'none given'}",
        "",
        "## Method",
        "",
        f"- Training: `{m['loss']}` (loss hyper-parameters: {params}), {r['optimizer']} lr {r['lr']:g}, "
        f"weight decay {r['weight_decay']:g}, {r['schedule']} schedule, {r['epochs']} epochs, seed {m['seed']}, "
        f"{m['batch_size']} ID + {m['oe_batch_size']} OE images per step",
        f"- Network: {m['model']['name']} ({m['model']['feature_dim']}-d features"
        f"{', pretrained ' + m['model']['pretrained'] if m['model']['pretrained'] else ''}), "
        f"{m['image_size']}x{m['image_size']} input, mean {m['mean']}, std {m['std']}",
        f"- OOD score: `{s['name']}`" + (f" {s['params']}" if s["params"] else "")
        + (f", fitted on {s['fitted_on']}" if s["fitted_on"] else " (no fitted state)"),
        f"- Threshold {t['value']:.6g}: keeps {100 * t['tpr_on_id_val']:.2f}% of the {t['id_val_images']} ID "
        f"validation images (target {100 * t['tpr']:g}%: the largest threshold keeping at least that many)",
        "- ID validation score quantiles: " + ", ".join(f"q{k} {v:.4g}" for k, v in t["id_val_quantiles"].items()),
        f"- Labels: probability >= threshold, {card['label_thresholds']['rule']}",
        "",
        "## How this checkpoint scored",
        "",
        f"ID validation mAP {_pct(e['id_val_map'])}%.",
    ]
    lines += _row_markdown(e, s["name"], m["loss"])
    lines += ["", "## Limits", "",
              "- The threshold is set on ID images only: the share of unknown images it catches (1 - FPR) "
              "depends on what they look like; the table above is the evidence for the OOD sets measured.",
              "- One training run (one seed): differences of a few points between methods may be noise.",
              "- Images are resized to a square without keeping the aspect ratio, as in training."]
    return "\n".join(lines) + "\n"


def _row_markdown(e: dict, score: str, training: str) -> list[str]:
    if e["table3_row"] is None:
        return ["", e.get("note", "no Table-3 row")]
    sets = [k for k in e["table3_row"] if k != "mean"]
    header = "| training | inference | " + " | ".join(f"{storage.basename(x)} FPR95↓ / AUROC↑ / AUPR↑" for x in sets)
    cells = " | ".join(f"{_pct(e['table3_row'][x]['fpr95'])} / {_pct(e['table3_row'][x]['auroc'])} / "
                       f"{_pct(e['table3_row'][x]['aupr_in'])}" for x in sets)
    mean = e["table3_row"]["mean"]
    return [f"ID test mAP {_pct(e['id_test_map'])}% on {e['num_id_test']} images. Table-3 row (in %, ID positive):",
            "", header + " | mean | mAP |", "|---|---|" + "---|" * (len(sets) + 2),
            f"| {training} | {score} | {cells} | {_pct(mean['fpr95'])} / {_pct(mean['auroc'])} / "
            f"{_pct(mean['aupr_in'])} | {_pct(e['id_test_map'])} |"]
