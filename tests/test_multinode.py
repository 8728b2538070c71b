"""Two nodes, one of them lost mid-epoch: a real two-node Ray cluster on loopback
(`ray.cluster_utils.Cluster`, in a process of its own: tests/multinode_s3.py) trains with
one worker on each node, shards and checkpoints in the S3 test server; the second node is
removed during epoch 2; Ray Train restores from the epoch-1 checkpoint on the head and
finishes. The resume rule: an interrupted epoch is trained again from its start, with the
same sample plan (it depends on the seed, the epoch and the world size only)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_node_lost_mid_epoch_restores_and_finishes(bucket, tmp_path):
    from edge_ray import storage
    from shards.demo import build_demo

    data = f"{bucket}/demo"
    build_demo(data, seed=0, quick=True)
    sets = {"id_train": "id_train", "id_val": "id_val", "id_test": "id_test", "oe": "oe_letters"}
    overrides = [f"data.{k}={data}/{v}" for k, v in sets.items()] + [
        f"data.ood=[{data}/ood_letters]", f"train.storage_path={bucket}/runs", "train.run_name=two-nodes",
        "train.num_workers=2", "train.cpus_per_worker=1", "train.placement=spread", "train.epochs=3",
        "train.max_failures=1", "data.batch_size=8", "data.oe_batch_size=8", "loss.k=4"]
    (tmp_path / "config.json").write_text(json.dumps(overrides))
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_s3.py"), str(tmp_path / "config.json"),
                          str(tmp_path / "out.json")], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    t, hist = out["timeline"], out["history"]
    print("two-node timeline:", json.dumps({
        "nodes": [t["nodes_before"], t["nodes_after"]], "checkpoints_at_kill": t["checkpoints_at_kill"],
        "kill_s": round(t["kill_at"] - t["start"], 1),
        "epochs": [(h["epoch"], round(h["started_at"] - t["start"], 1), round(h["finished_at"] - t["start"], 1),
                    h["resumes"], h["nodes"]) for h in hist],
        "next_epoch_start_after_kill_s": round(hist[1]["started_at"] - t["kill_at"], 1),
        "total_s": round(t["end"] - t["start"], 1)}))
    assert t["nodes_before"] == 2 and t["nodes_after"] == 1
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert len(set(hist[0]["nodes"])) == 2  # epoch 1: one worker on each node
    assert len(set(hist[1]["nodes"])) == 1 and hist[1]["nodes"] == hist[2]["nodes"]  # after: the head
    assert t["checkpoints_at_kill"] == 1 and t["kill_at"] - hist[0]["finished_at"] > 0.5
    # Epoch 2 was under way when the node went; it was trained again from its start, after the kill.
    assert hist[1]["started_at"] > t["killed_at"] and [h["resumes"] for h in hist] == [0, 1, 1]
    assert all(h["world_size"] == 2 and h["steps_per_rank"] == [62, 62] for h in hist)
    assert out["final_in_bucket"] and out["checkpoint"].startswith(f"{bucket}/runs/two-nodes/checkpoint_")
    assert storage.read_json(f"{bucket}/runs/two-nodes/summary.json")["history"][-1]["epoch"] == 3
