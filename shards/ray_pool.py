"""Run one function over a list of jobs, in-process or as Ray tasks.

Ray is imported lazily so the in-process path (unit tests, workers=0) never
pays Ray's start-up cost or needs a cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
ADDRESS: str | None = None  # the CLI's --address; Ray starts only when the first task is sent


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to `address` (or $RAY_ADDRESS, as under `ray job submit`), else
    start a local Ray of this process's own (never a `ray start` cluster found on the
    machine); a no-op when Ray is already initialised. Returns `ray`."""
    import ray

    if ray.is_initialized():
        return ray
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
        return ray
    # Local workers must import `shards` even when the project is not pip-installed.
    path = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    return ray


def _strategy(ray, spread: bool):
    """Pin tasks to the driver's node unless told the storage is shared:
    inputs and `--out` usually live on the driver's disk."""
    if spread:
        return "DEFAULT"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def map_jobs(fn: Callable, jobs: Sequence, workers: int = 0, *, desc: str = "shards",
             spread: bool = False, progress: bool = True) -> list:
    """`[fn(job) for job in jobs]`, with at most `workers` Ray tasks in flight
    (workers=0: in-process). Results come back in job order; the bar counts
    finished jobs. Ray starts (or is reached at ADDRESS / $RAY_ADDRESS) with the
    first task, so input errors found before it cost no Ray start."""
    bar = tqdm(total=len(jobs), desc=desc, unit="shard", disable=None if progress else True)
    try:
        if workers <= 0:
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.update(1)
            return results
        return _map_ray(fn, jobs, workers, spread, bar)
    finally:
        bar.close()


def _map_ray(fn, jobs, workers, spread, bar) -> list:
    import ray

    if not ray.is_initialized():
        ensure_ray(ADDRESS)
    remote = ray.remote(num_cpus=1)(fn).options(scheduling_strategy=_strategy(ray, spread))
    results = [None] * len(jobs)
    pending: dict = {}
    todo = iter(enumerate(jobs))
    while True:
        while len(pending) < workers:  # refill up to `workers` in flight (backpressure)
            nxt = next(todo, None)
            if nxt is None:
                break
            pending[remote.remote(nxt[1])] = nxt[0]
        if not pending:
            return results
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
            bar.update(1)
