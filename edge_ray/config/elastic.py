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


def global_batches(cfg: Config) -> tuple[int, int]:
    """The (ID, OE) images of one optimisation step over all ranks: ``data.batch_size`` and
    ``data.oe_batch_size`` times ``train.num_workers`` (the most workers), whatever the world
    size, so the optimisation (global batch, steps per epoch, learning-rate schedule) does not
    depend on how many workers survived."""
    high = cfg.train.num_workers
    return cfg.data.batch_size * high, cfg.data.oe_batch_size * high


def split_batch(total: int, world_size: int) -> list[int]:
    """``total`` split over ``world_size`` ranks as evenly as it goes (the first ``total %
    world_size`` ranks take one more)."""
    if world_size < 1 or total < world_size:
        raise ConfigError(f"a global batch of {total} cannot give each of {world_size} workers an image")
    base, extra = divmod(int(total), int(world_size))
    return [base + (r < extra) for r in range(world_size)]


def batches_for(cfg: Config, world_size: int) -> tuple[list[int], list[int]]:
    """Every rank's (ID, OE) batch at ``world_size`` workers: the global batches split as
    evenly as they go, so ranks differ by one image at most when the world size does not
    divide them. Each rank's loss terms are weighted by its share of the global batch
    (``losses.Shares``): one step at any world size is the step of one process holding the
    whole global batch."""
    ids, oes = global_batches(cfg)
    return split_batch(ids, world_size), split_batch(oes, world_size)


def gap_scope(cfg: Config) -> str:
    """Where EDGE's bottom-k ID energies are taken: ``rank`` (within each rank's batch) or
    ``global`` (gathered over all ranks, so the gap does not depend on the world size);
    ``auto`` is global for an elastic run, rank otherwise."""
    if cfg.loss.gap_scope != "auto":
        return cfg.loss.gap_scope
    return "global" if is_elastic(cfg) else "rank"
