"""A rerun resumes its run only when the checkpoint was trained with the same config."""
import json
from pathlib import Path

import pytest

from edge_ray.config import ConfigError, from_dict
from edge_ray.train.recipes import resolve_run
from edge_ray.train.ray_trainer import check_resume, config_changes, run_dir


def cfg_with(tmp_path, **sections):
    base = {"data": {"id_train": "/data/voc/train", "oe": "/data/oe", "loader_workers": 2},
            "loss": {"method": "edge", "m": 3.0, "beta": 0.1},
            "train": {"epochs": 5, "storage_path": str(tmp_path / "runs"), "run_name": "voc-edge"}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return from_dict(base)


def save_run(cfg, stamp="2026-11-26_10-00-00.000000"):
    """A run folder as Ray Train leaves it, reduced to what the check reads."""
    ckpt = Path(run_dir(cfg)) / f"checkpoint_{stamp}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps(resolve_run(cfg).to_dict()))  # as build_trainer does
    return ckpt.parent, ckpt


def test_no_run_yet(tmp_path):
    assert check_resume(cfg_with(tmp_path)) is None


def test_same_config_or_resumable_changes_resume(tmp_path):
    cfg = cfg_with(tmp_path)
    _, ckpt = save_run(cfg)
    assert check_resume(cfg) == str(ckpt)
    longer = cfg_with(tmp_path, train={"epochs": 9, "stop_after_epoch": 2, "use_gpu": True},
                      data={"loader_workers": 8, "decode": "gpu"}, eval={"batch_size": 7})
    assert check_resume(longer) == str(ckpt)


def test_changed_training_config_is_refused_with_the_fix(tmp_path):
    save_run(cfg_with(tmp_path))
    changed = cfg_with(tmp_path, loss={"m": 5.0}, train={"lr": 0.5})
    with pytest.raises(ConfigError) as err:
        check_resume(changed)
    message = str(err.value)
    assert "loss.m: 3.0 -> 5.0" in message and "train.lr: 0.01 -> 0.5" in message
    assert "train.run_name=voc-edge-2" in message and "voc-edge" in message


def test_the_latest_checkpoint_is_compared(tmp_path):
    old = cfg_with(tmp_path, loss={"m": 1.0})
    save_run(old, "2026-11-26_09-00-00.000000")
    new = cfg_with(tmp_path)
    _, latest = save_run(new, "2026-11-26_11-00-00.000000")
    assert check_resume(new) == str(latest)


def test_config_changes_lists_every_difference():
    a = {"loss": {"m": 1.0, "k": 8}, "train": {"epochs": 3, "seed": 0}, "eval": {"batch_size": 1}}
    b = {"loss": {"m": 1.0, "k": 16}, "train": {"epochs": 9, "seed": 1}, "eval": {"batch_size": 2}}
    assert config_changes(a, b) == ["loss.k: 8 -> 16", "train.seed: 0 -> 1"]
