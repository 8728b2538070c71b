"""Evaluating a trained checkpoint as a Ray task (on a GPU when the run had one)."""
from __future__ import annotations

import ray

from edge_ray.evaluate.pipeline import evaluate_checkpoint


def evaluate_remote(checkpoint_dir: str, out_dir: str, *, use_gpu: bool = False, num_cpus: float = 1,
                    **kwargs) -> dict:
    """Run ``evaluate_checkpoint`` as a Ray task (one GPU if ``use_gpu``)."""
    task = ray.remote(num_cpus=num_cpus, num_gpus=1 if use_gpu else 0)(evaluate_checkpoint)
    device = "cuda" if use_gpu else "cpu"
    return ray.get(task.remote(checkpoint_dir, out_dir, device=device, **kwargs))
