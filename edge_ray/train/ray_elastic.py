"""Elastic worker groups sized for the nodes that are alive now.

Ray Train's ``ElasticScalingPolicy`` sizes a (re)started group from the resources Ray Data's
AutoscalingCoordinator reserved for it. That actor refreshes its view of the nodes every
20 s, and the GCS marks a node whose raylet died as dead only after its health checks fail
(5 x 3 s with Ray's defaults): right after a node is lost, the restart asks for the lost
node's capacity too, its placement group cannot be placed, and the start waits out
``train.start_timeout_s`` before Ray Train tries again with what is left.

``LiveNodesElasticPolicy`` asks the coordinator for a fresh view (``recompute``) and counts
only nodes whose raylet accepts a TCP connection now, so the group restarts at once on the
nodes that hold it. A fixed-size group keeps Ray's own policy.
"""
from __future__ import annotations

import logging
import socket

import ray
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy
from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
)
from ray.train.v2._internal.util import time_monotonic

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 0.5  # a live raylet on a cluster's network answers in milliseconds


def raylet_answers(address: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((address, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def live_node_ids() -> set[str]:
    """The nodes the GCS lists alive whose raylet accepts a connection now."""
    return {n["NodeID"] for n in ray.nodes()
            if n.get("Alive") and raylet_answers(n["NodeManagerAddress"], n["NodeManagerPort"])}


class LiveNodesElasticPolicy(ElasticScalingPolicy):
    """Ray Train's elastic policy, deciding on a fresh view of the live nodes (module doc)."""

    def _get_reserved_resources(self):
        now = time_monotonic()
        if now - self._latest_reserved_resources_query_time < self.GET_RESERVED_RESOURCES_INTERVAL_S:
            return self._latest_reserved_resources
        reserved = None
        try:
            reserved = ray.get(self._autoscaling_coordinator.get_reserved_resources.remote(
                self._requester_id, recompute=True), timeout=AUTOSCALING_REQUESTS_GET_TIMEOUT_S)
            live = live_node_ids()
            gone = set(reserved) - live
            if gone:
                logger.info("left out %d node(s) whose raylet does not answer: %s", len(gone),
                            ", ".join(n[:8] for n in sorted(gone)))
            reserved = {node: res for node, res in reserved.items() if node in live}
        except Exception:  # noqa: BLE001 - as Ray's own policy: no decision this time
            logger.warning("could not read the reserved resources; no resize decision this time", exc_info=True)
        finally:
            self._latest_reserved_resources_query_time = time_monotonic()
            self._latest_reserved_resources = reserved
        return reserved
