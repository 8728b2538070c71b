"""Ray Train end to end on the tiny config: DDP over 2 CPU workers, checkpoints, fault
tolerance, resume, and the errors that must come before any worker starts."""
import json
from pathlib import Path

import pytest

from edge_ray.config import ConfigError, load_config
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _cfg(shards, storage, **extra):
    return load_config("configs/tiny.yaml", tiny_overrides(shards, storage, **extra))


def _checkpoints(storage: Path, name: str):
    return sorted(p for p in (storage / name).glob("checkpoint_*") if p.is_dir())


def test_two_workers_equal_steps_loss_falls(ray_local, tiny_shards, tmp_path):
    from edge_ray.train.ray_trainer import run_training

    cfg = _cfg(tiny_shards, tmp_path, **{"train.num_workers": 2, "train.epochs": 3,
                                         "train.run_name": "ddp", "train.num_to_keep": 5})
    summary = run_training(cfg)
    hist = summary.history
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for h in hist:
        assert len(h["steps_per_rank"]) == 2 and len(set(h["steps_per_rank"])) == 1
        assert h["steps_per_rank"][0] == 256 // (32 * 2)
        assert 0 <= h["val_map"] <= 1
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert len(_checkpoints(tmp_path, "ddp")) == 3
    written = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert written["final"]["epoch"] == 3 and written["history"][-1]["loss"] == hist[-1]["loss"]


def test_failure_restores_from_checkpoint(ray_local, tiny_shards, tmp_path):
    from edge_ray.train.ray_trainer import run_training

    cfg = _cfg(tiny_shards, tmp_path, **{"train.num_workers": 2, "train.epochs": 2, "train.max_failures": 1,
                                         "train.fail_at_epoch": 1, "train.run_name": "fault"})
    summary = run_training(cfg)
    assert summary.metrics["epoch"] == 2
    assert summary.history[-1]["resumes"] == 1  # restarted once, from the epoch-1 checkpoint
    assert [h["epoch"] for h in summary.history] == [1, 2]


def test_failure_without_retries_fails(ray_local, tiny_shards, tmp_path):
    from edge_ray.train.ray_trainer import run_training

    cfg = _cfg(tiny_shards, tmp_path, **{"train.epochs": 2, "train.max_failures": 0,
                                         "train.fail_at_epoch": 0, "train.run_name": "fatal"})
    with pytest.raises(Exception, match="injected failure"):
        run_training(cfg)


def test_resume_continues_at_next_epoch(ray_local, tiny_shards, tmp_path):
    from edge_ray.train.ray_trainer import run_training

    first = run_training(_cfg(tiny_shards, tmp_path, **{"train.epochs": 3, "train.stop_after_epoch": 1,
                                                         "train.run_name": "resume"}))
    assert [h["epoch"] for h in first.history] == [1]
    second = run_training(_cfg(tiny_shards, tmp_path, **{"train.epochs": 3, "train.run_name": "resume"}))
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[1]["resumes"] == 1 and second.history[0]["resumes"] == 0


def test_errors_before_any_worker(tiny_shards, tmp_path):
    from edge_ray.train.ray_trainer import check_inputs

    with pytest.raises(ConfigError, match="did you mean 'loss.alpha'"):
        _cfg(tiny_shards, tmp_path, **{"loss.alpah": 1})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_inputs(_cfg(tiny_shards, tmp_path, **{"data.oe": tmp_path / "nowhere"}))
    with pytest.raises(ValueError, match="role 'ood'.*'oe'|'oe'.*role 'ood'"):
        check_inputs(_cfg(tiny_shards, tmp_path, **{"data.oe": tiny_shards / "ood_blobs"}))
    with pytest.raises(ValueError, match="role"):
        check_inputs(_cfg(tiny_shards, tmp_path, **{"data.id_train": tiny_shards / "oe_letters"}))
    with pytest.raises(ConfigError, match="does not fit model vgg16"):
        check_inputs(_cfg(tiny_shards, tmp_path, **{"model.name": "vgg16", "data.image_size": 16}))
    with pytest.raises(ConfigError, match="loss.k=64 is larger than the per-rank ID batch"):
        _cfg(tiny_shards, tmp_path, **{"loss.k": 64})
    with pytest.raises(ValueError, match="batch"):
        check_inputs(_cfg(tiny_shards, tmp_path, **{"data.batch_size": 512, "loss.k": 4}))


def test_a_request_no_node_can_place(ray_local, monkeypatch, capsys):
    """On a Ray this process started, a worker bigger than any node is refused in one line
    (it would wait forever); on a cluster (an autoscaler may add nodes) it is only said."""
    from edge_ray import ray_cluster as cluster

    cluster.check_request({"CPU": 0.5}, 2, "train")  # fits: silent
    assert capsys.readouterr().out == ""
    cluster.check_request({"CPU": 64}, 1, "train")
    assert "the run waits until nodes with room join" in capsys.readouterr().out
    monkeypatch.setattr(cluster, "STARTED_HERE", True)
    with pytest.raises(cluster.ClusterError, match=r"asks for 3 worker\(s\) x \(1 GPU\) but the Ray nodes can place 0"):
        cluster.check_request({"CPU": 0, "GPU": 1}, 3, "train")


def test_a_local_ray_asks_ray_train_for_no_preemption_watcher(tmp_path):
    """A Ray a command starts on this machine gets no cloud preemption notices: connect()
    turns Ray Train's PreemptionWatcher (an actor process per run) off, in the form Ray Train
    passes from the driver to its controller; a user's own setting is kept."""
    import os
    import subprocess
    import sys

    code = ("from edge_ray.ray_cluster import connect\n"
            "connect(None)\n"
            "from ray.train.v2._internal.constants import get_env_vars_to_propagate\n"
            "print(get_env_vars_to_propagate().get('RAY_TRAIN_ENABLE_PREEMPTION_WATCHER'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0", out.stdout + out.stderr


def test_the_trainer_starts_no_dataset_manager_and_locally_no_placement_group_cleaner(
        ray_local, tiny_shards, tmp_path, monkeypatch):
    """Ray Train 2.60 starts a DatasetManager actor for Ray Datasets whether or not any is
    passed, and a PlacementGroupCleaner that frees a dead controller's placement group; the
    workers stream shards, and a Ray this process started ends with its driver. Neither is
    among the callbacks then; on a cluster the cleaner stays, and the rest are Ray's own."""
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from edge_ray import ray_cluster as cluster
    from edge_ray.train.ray_trainer import build_trainer

    def kinds(trainer):
        return [type(c) for c in trainer._create_default_callbacks()]

    cfg = _cfg(tiny_shards, tmp_path)
    monkeypatch.setattr(cluster, "STARTED_HERE", True)
    trainer = build_trainer(cfg)
    ray_own = [type(c) for c in DataParallelTrainer._create_default_callbacks(trainer)]
    assert DatasetsCallback in ray_own and PlacementGroupCleanerCallback in ray_own
    assert kinds(trainer) == [k for k in ray_own if k not in (DatasetsCallback, PlacementGroupCleanerCallback)]
    monkeypatch.setattr(cluster, "STARTED_HERE", False)
    assert kinds(build_trainer(cfg)) == [k for k in ray_own if k is not DatasetsCallback]
