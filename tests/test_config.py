"""Config loading, overrides and the early errors that name the fix."""
import os

import pytest

from edge_ray.config import ConfigError, load_config


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {name: smallcnn}\nloss: {beta: 0.5, k: 4}\ndata: {ood: [a, b], batch_size: 8}\n")
    cfg = load_config(p, ["loss.m=3", "train.use_gpu=true", "data.crop_scale=[0.3, 1.0]"])
    assert cfg.model.name == "smallcnn" and cfg.loss.beta == 0.5 and cfg.loss.m == 3.0
    assert cfg.train.use_gpu is True and cfg.data.crop_scale == (0.3, 1.0)
    # relative locations are made absolute against the working directory, URIs kept as given
    assert cfg.data.ood == (os.path.join(os.getcwd(), "a"), os.path.join(os.getcwd(), "b"))
    assert cfg.train.storage_path == os.path.join(os.getcwd(), "runs")
    uri = load_config(None, ["train.storage_path=s3://bkt/runs/", "data.oe=gs://b/oe"])
    assert uri.train.storage_path == "s3://bkt/runs" and uri.data.oe == "gs://b/oe"
    assert load_config(None, ["loss.alpha=1e-3"]).loss.alpha == 0.001
    # round trip through YAML
    p2 = tmp_path / "d.yaml"
    p2.write_text(cfg.to_yaml())
    assert load_config(p2) == cfg


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'loss.beta'"):
        load_config(None, ["loss.betta=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, ["loss.k=abc"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["beta=1"])
    with pytest.raises(ConfigError, match="loss.k=64 is larger than the per-rank ID batch"):
        load_config(None, ["loss.k=64", "data.batch_size=32"])
    with pytest.raises(ConfigError, match="loss.method must be one of"):
        load_config(None, ["loss.method=edgy"])


def test_gpu_input_and_compile_mode_values_are_checked():
    from edge_ray.config import from_dict, validate

    ok = validate(from_dict({"data": {"gpu_feeder": "pipelined", "gpu_crops": "per_image"},
                    "model": {"compile_mode": "reduce-overhead"}}))
    assert ok.data.gpu_feeder == "pipelined" and ok.model.compile_mode == "reduce-overhead"
    for bad, word in (({"data": {"gpu_feeder": "async"}}, "data.gpu_feeder"),
                      ({"data": {"gpu_crops": "nearest"}}, "data.gpu_crops"),
                      ({"data": {"cpu_decode_share": 1.5}}, "data.cpu_decode_share"),
                      ({"model": {"compile_mode": "fast"}}, "model.compile_mode")):
        with pytest.raises(ConfigError, match=word):
            validate(from_dict(bad))
