"""What a tracked run holds, as plain dicts (no mlflow here).

- params: the resolved config, flattened (``loss.beta``, ``train.epochs``, ``data.ood``);
- tags: the command, the method, the recipe, the data locations, the run folder;
- per epoch (``step = epoch``): every number rank 0 reported -- loss parts, gap fraction,
  energies, val mAP, images/s, data wait, lr, world size -- plus the epoch's seconds and nodes;
- per evaluation: Table 3 (``eval.<score>.<ood set>.fpr95 / auroc / aupr``, the mean over the
  sets, ``eval.map``).
"""
from __future__ import annotations

import json
import math

MAX_PARAM_LENGTH = 6000       # MLflow's limit on a param value
MAX_TAG_LENGTH = 5000
# In an epoch's report but not a curve: the step itself, wall-clock stamps (folded into
# epoch_seconds); Ray Tune's own bookkeeping when the report comes through a trial.
NOT_METRICS = {"epoch", "started_at", "finished_at", "timestamp", "training_iteration", "time_this_iter_s",
               "time_since_restore", "iterations_since_restore", "pid", "done", "trial_id", "date",
               "hostname", "node_ip", "config", "checkpoint_dir_name", "experiment_tag", "should_checkpoint"}
EVAL_KEYS = (("fpr95", "fpr95"), ("auroc", "auroc"), ("aupr_in", "aupr"))


def _value(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, tuple, dict, bool)) or v is None else str(v)
    return text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 3] + "..."


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"loss": {"beta": 0.1}}`` -> ``{"loss.beta": "0.1"}``; lists as JSON (``[a, b]``)."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = _value(value)
    return out


def config_params(cfg) -> dict[str, str]:
    """A Config (or its dict) as MLflow params."""
    return flatten(cfg if isinstance(cfg, dict) else cfg.to_dict())


def training_tags(cfg, command: str, run_folder: str) -> dict[str, str]:
    """The recipe and where the data and the checkpoints are, as tags (searchable, and shown in
    the run's overview)."""
    from edge_ray.train.recipes import describe_recipe

    d = cfg.data
    tags = {"edge.command": command, "edge.method": cfg.loss.method, "edge.model": cfg.model.name,
            "edge.recipe": describe_recipe(cfg), "edge.run_folder": run_folder,
            "edge.data.id_train": d.id_train, "edge.data.id_val": d.id_val, "edge.data.id_test": d.id_test,
            "edge.data.oe": d.oe, "edge.data.oe_val": d.oe_val, "edge.data.ood": ", ".join(d.ood),
            "mlflow.source.name": f"launch.py {command}", "mlflow.source.type": "LOCAL"}
    return {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items() if v not in ("", None)}


def epoch_metrics(report: dict) -> tuple[int, int | None, dict[str, float]]:
    """(step, timestamp in ms or None, {name: value}) of one epoch's report: every finite
    number and flag, ``epoch_seconds`` and ``num_nodes``; lists (steps per rank) are left out."""
    step = int(report.get("epoch") or report.get("training_iteration") or 0)
    out = {}
    for key, value in report.items():
        if key in NOT_METRICS or not isinstance(key, str):
            continue
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    start, end = report.get("started_at"), report.get("finished_at")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        out["epoch_seconds"] = float(end - start)
    if isinstance(report.get("nodes"), (list, tuple)):
        out["num_nodes"] = float(len(set(report["nodes"])))
    stamp = int(end * 1000) if isinstance(end, (int, float)) else None
    return step, stamp, out


def eval_metrics(result: dict, prefix: str = "eval") -> dict[str, float]:
    """Table 3 of one evaluation (``evaluate()``'s public dict): FPR95 / AUROC / AUPR(-In) per
    score x OOD set, their mean over the sets (all ID test images and tail-only), and ID mAP."""
    out = {f"{prefix}.map": float(result["map"])}
    for score, per_set in result.get("scores", {}).items():
        sums: dict[str, list] = {}
        for ood, m in per_set.items():
            for key, name in EVAL_KEYS:
                if m.get(key) is not None:
                    out[f"{prefix}.{score}.{ood}.{name}"] = float(m[key])
                    sums.setdefault(name, []).append(float(m[key]))
                tail = m.get("tail") or {}
                if tail.get(key) is not None:
                    sums.setdefault(f"tail_{name}", []).append(float(tail[key]))
        for name, values in sums.items():
            kind = "mean_tail" if name.startswith("tail_") else "mean"
            out[f"{prefix}.{score}.{kind}.{name.removeprefix('tail_')}"] = sum(values) / len(values)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def checkpoint_epoch(history: list) -> int:
    """The epoch a checkpoint holds (the step its evaluation is logged at)."""
    return int(history[-1].get("epoch", len(history))) if history else 0
