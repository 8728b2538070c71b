"""The paper's per-method training recipes (Adam for BCE, SGD for the rest): unset keys
take them, a key set in YAML or as key=value always wins, and resume checks see the
resolved values."""
import json
from pathlib import Path

import pytest
import torch

from edge_ray.train import builders
from edge_ray.config import ConfigError, TrainConfig, load_config
from edge_ray.train.recipes import describe_recipe, recipe_record, resolve_recipe, resolve_run
from edge_ray.train.ray_trainer import check_resume, run_dir
from tests.conftest import ROOT


def test_unset_keys_take_the_method_recipe():
    bce = resolve_recipe(load_config(None, ["loss.method=bce"])).train
    assert (bce.optimizer, bce.lr, bce.weight_decay, bce.schedule) == ("adam", 1e-4, 0.0, "onecycle")
    for method in ("edge", "oe", "energy_oe", "hendrycks_oe", "focal"):
        t = resolve_recipe(load_config(None, [f"loss.method={method}"])).train
        assert (t.optimizer, t.lr, t.weight_decay, t.momentum) == ("sgd", 0.01, 1e-4, 0.9), method


def test_explicit_values_win_in_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: {method: bce}\ntrain: {optimizer: sgd, weight_decay: 0}\n")
    t = resolve_recipe(load_config(p)).train
    assert (t.optimizer, t.weight_decay) == ("sgd", 0.0)      # set in the file
    assert t.lr == 1e-4 and t.schedule == "onecycle"          # still BCE's recipe
    t = resolve_recipe(load_config(p, ["train.lr=1e-3", "train.optimizer=adamw"])).train
    assert (t.optimizer, t.lr) == ("adamw", 0.001) and isinstance(t.lr, float)  # "1e-3" is a YAML string
    t = resolve_recipe(load_config(p, ["train.optimizer=null"])).train
    assert t.optimizer == "adam"                              # null hands the key back to the recipe


def test_paper_configs_leave_the_recipe_to_the_method():
    for name in ("voc", "coco", "nuswide"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert resolve_recipe(cfg).train.optimizer == "sgd"
        bce = resolve_recipe(load_config(ROOT / "configs" / f"{name}.yaml", ["loss.method=bce"])).train
        assert bce.optimizer == "adam", name
    demo = resolve_recipe(load_config(ROOT / "configs" / "demo.yaml", ["loss.method=bce"])).train
    assert demo.optimizer == "adamw" and demo.lr == 0.01       # the demo's one recipe, set explicitly


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="train.optimizer=.lion. is not valid; choose one of sgd, adam, adamw"):
        load_config(None, ["train.optimizer=lion"])
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        load_config(None, ["train.lr=0"])


def test_header_line_and_record_say_where_values_came_from():
    cfg = load_config(None, ["loss.method=bce", "train.schedule=cosine"])
    line = describe_recipe(cfg)
    assert line.startswith("adam, lr 0.0001, weight decay 0, cosine schedule")
    assert "(optimizer, lr, weight_decay: the paper's recipe for bce)" in line
    assert "momentum" not in line
    sgd = describe_recipe(load_config(None, ["loss.method=edge"]))
    assert "sgd, lr 0.01, momentum 0.9, weight decay 0.0001" in sgd
    explicit = load_config(ROOT / "configs" / "tiny.yaml")
    assert "recipe for" not in describe_recipe(explicit)
    assert recipe_record(cfg) == {"method": "bce", "optimizer": "adam", "lr": 1e-4, "momentum": 0.9,
                                  "nesterov": False, "weight_decay": 0.0, "schedule": "cosine", "epochs": 20}


def test_engine_builds_the_resolved_optimiser():
    model = torch.nn.Linear(3, 2)
    adam = builders.make_optimizer(model, TrainConfig(), "bce")
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 1e-4
    assert adam.param_groups[0]["weight_decay"] == 0.0
    sgd = builders.make_optimizer(model, TrainConfig())            # no method: the SGD recipe
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.9
    sched = builders.make_scheduler(adam, TrainConfig(epochs=2), 5, "bce")
    assert type(sched) is torch.optim.lr_scheduler.OneCycleLR and sched.total_steps == 10


def _save_run(cfg):
    ckpt = Path(run_dir(cfg)) / "checkpoint_2026-12-01_10-00-00.000000"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps(resolve_run(cfg).to_dict()))  # as build_trainer saves it
    return ckpt


def test_resume_compares_resolved_values(tmp_path):
    base = ["loss.method=bce", f"train.storage_path={tmp_path}", "train.run_name=r"]
    ckpt = _save_run(load_config(None, base))
    assert check_resume(load_config(None, base)) == str(ckpt)               # unset again: same recipe
    assert check_resume(load_config(None, base + ["train.optimizer=adam"])) == str(ckpt)  # same value, now explicit
    with pytest.raises(ConfigError, match="train.optimizer: 'adam' -> 'sgd'"):
        check_resume(load_config(None, base + ["train.optimizer=sgd"]))


def test_resume_of_a_checkpoint_saved_without_normalization(tmp_path):
    """Checkpoints written before runs recorded data.mean / data.std (None there) resume:
    None meant ImageNet's values, which is what an unset value resolves to now."""
    base = ["loss.method=bce", f"train.storage_path={tmp_path}", "train.run_name=r"]
    cfg = load_config(None, base)
    ckpt = Path(run_dir(cfg)) / "checkpoint_2026-12-01_10-00-00.000000"
    ckpt.mkdir(parents=True)
    old = resolve_recipe(cfg).to_dict()
    assert old["data"]["mean"] is None and old["data"]["std"] is None
    (ckpt / "config.json").write_text(json.dumps(old))
    assert check_resume(load_config(None, base)) == str(ckpt)
    with pytest.raises(ConfigError, match=r"data.mean: \[0.485, 0.456, 0.406\] -> \[0.5, 0.5, 0.5\]"):
        check_resume(load_config(None, base + ["data.mean=[0.5,0.5,0.5]"]))
