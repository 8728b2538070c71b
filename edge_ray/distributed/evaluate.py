"""Evaluating a trained checkpoint as a Ray task (on a GPU when the run had one)."""
from __future__ import annotations

import ray

from edge_ray.checkpoint import load_trained
from edge_ray.recipes import recipe_record
from edge_ray.evaluation import eval_options, evaluate, open_sets
from edge_ray.report import write_results

__all__ = ["load_trained", "eval_options", "evaluate_checkpoint", "evaluate_remote"]  # the first two live in the core


def evaluate_checkpoint(checkpoint_dir: str, out_dir: str, *, scores, id_train=None, id_test=None,
                        ood=None, training: str = "model", device: str = "cpu") -> dict:
    """Evaluate one checkpoint; returns the public result dict (also written to ``out_dir``)."""
    model, cfg, _ = load_trained(checkpoint_dir)
    sets = open_sets(id_train or cfg.data.id_train, id_test or cfg.data.id_test,
                     list(ood if ood is not None else cfg.data.ood))
    if sets.id_train.num_classes != model.num_classes:
        raise ValueError(f"the checkpoint has {model.num_classes} classes but {sets.id_train.dir} "
                         f"lists {sets.id_train.num_classes}; evaluate with the ID sets it was trained on")
    result = evaluate(model, sets, scores, eval_options(cfg, device), training=training)
    result["recipe"] = recipe_record(cfg)
    paths = write_results({training: result}, out_dir)
    return {"result": {k: v for k, v in result.items() if not k.startswith("_")},
            "paths": {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths.items()}}


def evaluate_remote(checkpoint_dir: str, out_dir: str, *, use_gpu: bool = False, num_cpus: float = 1,
                    **kwargs) -> dict:
    """Run ``evaluate_checkpoint`` as a Ray task (one GPU if ``use_gpu``)."""
    task = ray.remote(num_cpus=num_cpus, num_gpus=1 if use_gpu else 0)(evaluate_checkpoint)
    device = "cuda" if use_gpu else "cpu"
    return ray.get(task.remote(checkpoint_dir, out_dir, device=device, **kwargs))
