"""Evaluating a trained checkpoint as a Ray task (on a GPU when the run had one)."""
from __future__ import annotations

import ray
import torch

from edge_ray.checkpoint import load_checkpoint
from edge_ray.config import Config, from_dict
from edge_ray.recipes import recipe_record
from edge_ray.evaluation import EvalOptions, evaluate, open_sets
from edge_ray.models import build_model
from edge_ray.report import write_results


def load_trained(checkpoint_dir: str) -> tuple[torch.nn.Module, Config, int]:
    """Model, config and number of classes from a checkpoint written by the training worker."""
    state, _, config = load_checkpoint(checkpoint_dir)
    cfg = from_dict(config)
    num_classes = state["model"]["head.weight"].shape[0]
    model = build_model(cfg.model.name, num_classes, width=cfg.model.width)
    model.load_state_dict(state["model"])
    return model, cfg, num_classes


def eval_options(cfg: Config, device: str = "cpu") -> EvalOptions:
    """Evaluation settings of a run: its image size and normalisation, its eval section."""
    return EvalOptions(image_size=cfg.data.image_size, mean=cfg.data.mean, std=cfg.data.std,
                       batch_size=cfg.eval.batch_size, device=device, min_remaining=cfg.eval.min_remaining)


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
