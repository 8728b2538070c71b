"""Elastic training on a three-node Ray cluster on loopback that shrinks and grows back, run
in its own process by tests/test_elastic.py.

    python tests/elastic_s3.py CONFIG_JSON OUT_JSON

Three nodes with one CPU each; `train.num_workers=[2, 3]`, one CPU per worker, shards and
checkpoints in the test's S3 bucket. One second after the first checkpoint a node is
removed (a preempted machine): the run must go on with 2 workers, without a new node. Once
an epoch has finished with 2 workers a node is added: within `train.resize_interval_s` the
run must be back at 3. Afterwards the same config runs twice more as a fixed 3-worker group
(seeds 0 and 1), for the fixed-vs-elastic comparison. OUT_JSON gets the timelines and the
histories.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _history_on_storage(run: str) -> list:
    from edge_ray.train.checkpoint import last_epoch_on_storage
    from edge_ray import storage

    last = last_epoch_on_storage(run)
    return storage.read_json(storage.join(last[0], "history.json")) if last else []


def _shrink_and_grow(cluster, node, run: str, env: dict, timeline: dict, training: threading.Thread) -> None:
    """On the main thread (adding a node installs signal handlers): remove `node` one second
    after the first checkpoint; add a node once an epoch has ended with 2 workers."""
    while not _history_on_storage(run) and training.is_alive():
        time.sleep(0.05)
    time.sleep(1.0)
    timeline["removed_at"] = time.time()
    cluster.remove_node(node, allow_graceful=False)
    while training.is_alive() and not any(h["world_size"] == 2 for h in _history_on_storage(run)):
        time.sleep(0.1)
    timeline["added_at"] = time.time()
    cluster.add_node(num_cpus=1, env_vars=env)


def main(config_json: str, out_json: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from edge_ray.config import load_config
    from edge_ray.train.ray_trainer import run_dir, run_training

    overrides = json.loads(Path(config_json).read_text())
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    env = {"PYTHONPATH": str(ROOT), "RAY_TRAIN_V2_ENABLED": "1"}
    # A lost node is noticed after 2 missed health checks of 1 s (Ray's defaults: 5 of 3 s).
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False, "env_vars": env,
                                      "_system_config": health})
    third = None
    for _ in range(2):
        third = cluster.add_node(num_cpus=1, env_vars=env)
    cluster.wait_for_nodes()
    result: dict = {}
    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": env}, log_to_driver=False)
        timeline: dict = {"start": time.time()}
        done: dict = {}
        training = threading.Thread(target=lambda: done.update(summary=run_training(cfg)), daemon=True)
        training.start()
        _shrink_and_grow(cluster, third, run_dir(cfg), env, timeline, training)
        training.join()
        timeline["end"] = time.time()
        if "summary" not in done:
            raise RuntimeError("the elastic run failed (see its log above)")
        elastic = done["summary"]
        result["elastic"] = {"timeline": timeline, "history": elastic.history, "checkpoint": elastic.checkpoint_dir,
                             "run": run_dir(cfg)}
        for seed in (0, 1):  # the fixed-size reference and its seed noise, on the 3 nodes now up
            fixed = replace(cfg, train=replace(cfg.train, min_workers=0, seed=seed, audit_keys=False,
                                               run_name=f"{cfg.train.run_name}-fixed{seed}"))
            start = time.time()
            result[f"fixed{seed}"] = {"history": run_training(fixed).history, "seconds": time.time() - start}
        Path(out_json).write_text(json.dumps(result, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
