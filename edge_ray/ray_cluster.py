"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``, as under
``ray job submit``) or a local instance. Fails fast with a one-line fix when nothing listens."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import socket
from urllib.parse import urlparse

import ray


class ClusterError(RuntimeError):
    """Ray could not be reached; the message says what to do."""


STARTED_HERE = False  # this process started its own local Ray: its resources are all there is


def check_request(per_worker: dict, workers: int, what: str) -> None:
    """Refuse, in one line, a request no node can place: on a Ray started here it would wait
    forever. On a cluster an autoscaler may still add nodes, so it is only said."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = sum(min(int(res.get(k, 0) / v + 1e-9) for k, v in per_worker.items() if v > 0) for res in nodes)
    if fits >= workers:
        return
    asked = " + ".join(f"{v:g} {k}" for k, v in per_worker.items() if v > 0)
    have = ", ".join(f"{sum(r.get(k, 0) for r in nodes):g} {k}" for k in per_worker)
    message = (f"{what} asks for {workers} worker(s) x ({asked}) but the Ray nodes can place {fits} "
               f"(they have {have})")
    if STARTED_HERE:
        absent = [k for k, v in per_worker.items() if v > 0 and k not in ("CPU", "GPU") and
                  not any(r.get(k, 0) for r in nodes)]
        fix = (f"no node offers {', '.join(absent)} (a node pool: train.node_pool); leave train.node_pool empty here "
               "or connect to a cluster whose nodes offer it with --address" if absent else
               "lower train.num_workers / train.cpus_per_worker / train.gpus_per_worker, or connect to a larger "
               "cluster with --address")
        raise ClusterError(f"{message}; {fix}")
    print(f"note: {message}; the run waits until nodes with room join (an autoscaler adds them)", flush=True)


def _host_port(address: str) -> tuple[str, int] | None:
    if address in ("auto", "local"):
        return None
    url = urlparse(address if "://" in address else f"ray://{address}")
    if not url.hostname:
        return None
    default = 10001 if url.scheme == "ray" and "://" in address else 6379
    return url.hostname, url.port or default


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(f"no Ray cluster at {address} ({err.strerror or err}); start one with "
                           "`ray start --head` or leave out --address to run on a local Ray") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True) -> str:
    """Initialise Ray once per process and return where it runs ("local" or the address)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address == "local":  # Ray's own word for "start one here": the local path below
        address = None
    if address:  # checked even when this process already has Ray: a wrong address is an error
        _check_reachable(address)
    if ray.is_initialized():
        return "already connected"
    # a local Ray takes the machine's CPUs; EDGE_RAY_NUM_CPUS caps them (a shared machine, a test)
    if num_cpus is None and os.environ.get("EDGE_RAY_NUM_CPUS"):
        num_cpus = int(os.environ["EDGE_RAY_NUM_CPUS"])
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if address:
        ray.init(address=address, log_to_driver=True)
        return address
    # The runtime env puts the project on every worker's path, wherever the driver started.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    global STARTED_HERE
    STARTED_HERE = True
    # Ray Train starts a PreemptionWatcher actor per run (a process) to act on
    # a cloud node's preemption notice; a Ray on this machine gets none. Ray Train passes the
    # driver's setting to its controller; a user's own setting wins.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # address="local": a Ray of this process's own, never a `ray start` cluster that Ray would
    # otherwise find through /tmp/ray/ray_current_cluster
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
             logging_level="ERROR" if quiet else "INFO",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p for p in (root, os.environ.get("PYTHONPATH", "")) if p), "RAY_TRAIN_V2_ENABLED": "1"},
                 "worker_process_setup_hook": "edge_ray.ray_cluster.train_cleaner_without_dashboard"})
    return "local"


CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def train_cleaner_without_dashboard() -> None:
    """Every worker process of a Ray started here runs this first.

    That Ray has no dashboard (a lighter start), hence no state API. Ray Train's
    PlacementGroupCleaner asks the state API every second whether its run's controller lives,
    and when it cannot ask it warns and keeps the run's placement group: a run whose
    controller died (a Tune trial that ASHA stopped, a Ctrl-C'd trial) kept its workers' CPUs
    reserved for the rest of the search, and on a full machine the next trials waited for
    them forever (WorkerGroupStartupTimeoutError, retried without end: a 12-trial search
    on 2 CPUs hung after 3 trials). Here the cleaner asks the GCS instead, which needs no
    dashboard, and frees the placement group as Ray intends; its warnings are silenced."""
    import logging

    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)
    if CLEANER_LOGGER in sys.modules:
        sys.modules[CLEANER_LOGGER].is_actor_alive = actor_alive_in_gcs
    elif not any(isinstance(f, _PatchCleaner) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchCleaner())  # the module loads only in the cleaner's process


def actor_alive_in_gcs(actor_id: str, timeout: float | None = None) -> bool:
    """Whether an actor lives, from the GCS's actor table (no state API, no dashboard)."""
    from ray._private.state import state

    info = state.actor_table(actor_id)
    return bool(info) and info.get("State") != "DEAD"


class _PatchCleaner(importlib.abc.MetaPathFinder):
    """Imports Ray Train's placement-group cleaner as usual, then points its liveness check at
    ``actor_alive_in_gcs``; every other import passes by."""

    def find_spec(self, name, path, target=None):
        if name != CLEANER_LOGGER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.is_actor_alive = actor_alive_in_gcs

        spec.loader.exec_module = exec_module
        return spec
