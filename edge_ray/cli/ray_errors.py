"""The error a user must see, out of Ray's wrappers."""
from __future__ import annotations


def root_cause(err: BaseException) -> BaseException:
    """The exception a Ray wrapper carries: a Train worker's (lowest failing rank), a Train
    controller's, a task's or an actor's. A problem in a shard or a config found inside
    Ray then reaches the user as the same one line it would be on the driver."""
    import sys

    if "ray" not in sys.modules:  # a command that never used Ray: nothing to unwrap
        return err
    import ray.exceptions
    from ray.train import ControllerError, WorkerGroupError

    for _ in range(10):
        if isinstance(err, WorkerGroupError) and err.worker_failures:
            err = err.worker_failures[min(err.worker_failures)]
        elif isinstance(err, ControllerError):
            err = err.controller_failure
        elif isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None:
            err = err.cause
        else:
            break
    return err
