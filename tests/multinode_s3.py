"""A two-node Ray cluster on loopback that loses a node mid-epoch, run in its own process
by tests/test_multinode.py (the test session's own Ray instance stays untouched).

    python tests/multinode_s3.py CONFIG_JSON OUT_JSON

CONFIG_JSON holds the training overrides (every location in the test's S3 bucket). The
head has 2 CPUs, the second node 1 CPU and the custom resource `node2`; two Train
workers of 1 CPU each are spread over both. When the first checkpoint appears in the
bucket, a watcher removes the second node (its raylet and the worker on it are killed,
as a preempted machine); Ray Train restores from that checkpoint on the head, which
holds both workers, and finishes. OUT_JSON gets the timeline and the final history.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _watch(cluster, node, run_dir: str, timeline: dict) -> None:
    """Remove `node` one second after the run's first checkpoint: epoch 2 is then under way
    (it takes about two seconds here) and its checkpoint not yet written."""
    from edge_ray.train.ray_trainer import list_checkpoints

    while not list_checkpoints(run_dir):
        time.sleep(0.05)
    time.sleep(1.0)
    timeline["checkpoints_at_kill"] = len(list_checkpoints(run_dir))
    timeline["kill_at"] = time.time()
    cluster.remove_node(node, allow_graceful=False)
    timeline["killed_at"] = time.time()


def main(config_json: str, out_json: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from edge_ray import storage
    from edge_ray.config import load_config
    from edge_ray.train.ray_trainer import list_checkpoints, run_dir, run_training

    overrides = json.loads(Path(config_json).read_text())
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    env = {"PYTHONPATH": str(ROOT), "RAY_TRAIN_V2_ENABLED": "1"}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False, "env_vars": env})
    node2 = cluster.add_node(num_cpus=1, resources={"node2": 1}, env_vars=env)
    cluster.wait_for_nodes()
    timeline: dict = {"start": time.time()}
    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": env}, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        timeline["nodes_before"] = len(nodes)
        watcher = threading.Thread(target=_watch, args=(cluster, node2, run_dir(cfg), timeline), daemon=True)
        watcher.start()
        summary = run_training(cfg)
        timeline["end"] = time.time()
        timeline["nodes_after"] = len([n for n in ray.nodes() if n["Alive"]])
        result = {"timeline": timeline, "history": summary.history, "checkpoint": summary.checkpoint_dir,
                  "checkpoints": list_checkpoints(run_dir(cfg)),
                  "final_in_bucket": storage.is_file(storage.join(summary.checkpoint_dir, "state.pt"))}
        Path(out_json).write_text(json.dumps(result, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
