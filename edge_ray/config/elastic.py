"""How many Train workers a run has, and what each rank holds at a given world size."""
from __future__ import annotations

from edge_ray.config.schema import Config, ConfigError


def worker_range(cfg: Config) -> tuple[int, int]:
    """(fewest, most) Train workers: equal for a fixed group."""
    t = cfg.train
    return (t.min_workers or t.num_workers, t.num_workers)


def is_elastic(cfg: Config) -> bool:
    low, high = worker_range(cfg)
    return low < high


def batches_for(cfg: Config, world_size: int) -> tuple[int, int]:
    """Per-rank (ID, OE) batch at ``world_size`` workers. The global batches are held at
    ``data.batch_size`` / ``data.oe_batch_size`` times ``train.num_workers`` (the most
    workers): with fewer, each rank takes a larger share, so the optimisation (global batch,
    steps per epoch, learning-rate schedule) does not depend on how many survived."""
    high = cfg.train.num_workers
    ids, oes = cfg.data.batch_size * high, cfg.data.oe_batch_size * high
    if ids % world_size or oes % world_size:
        raise ConfigError(f"the global batches {ids} (ID) and {oes} (OE) do not split over {world_size} workers; "
                          "choose data.batch_size / data.oe_batch_size so they do (validate() checks every size)")
    return ids // world_size, oes // world_size


def gap_scope(cfg: Config) -> str:
    """Where EDGE's bottom-k ID energies are taken: ``rank`` (within each rank's batch) or
    ``global`` (gathered over all ranks, so the gap does not depend on the world size);
    ``auto`` is global for an elastic run, rank otherwise."""
    if cfg.loss.gap_scope != "auto":
        return cfg.loss.gap_scope
    return "global" if is_elastic(cfg) else "rank"
