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
    with pytest.raises(ConfigError, match="loss.method='edgy' is not valid; did you mean 'edge'"):
        load_config(None, ["loss.method=edgy"])


@pytest.mark.parametrize("override, message", [
    ("eval.scores=[jointenergy, foo]", "eval.scores='foo' is not valid; choose one of maxlogit"),
    ("eval.scores=[jointenergi]", "did you mean 'jointenergy'"),
    ("train.optimizer=adamm", "did you mean 'adam'"),
    ("train.schedule=cosin", "did you mean 'cosine'"),
    ("model.name=resnet51", "did you mean 'resnet50'"),
    ("loss.alpha=-1", "loss.alpha must be >= 0"),
    ("loss.beta=-0.1", "loss.beta must be >= 0"),
    ("loss.k=0", "loss.k must be >= 1"),
    ("loss.m=-2", "loss.m (the energy margin) must be >= 0"),
    ("loss.tau=21", "loss.tau=21 > train.epochs=20: tau counts the epochs before EDGE's gap"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.momentum=1.5", "train.momentum must lie in [0, 1)"),
    ("train.cpus_per_worker=0", "train.cpus_per_worker must be > 0"),
    ("data.image_size=4", "data.image_size must be >= 8"),
    ("data.oe_batch_size=0", "data.oe_batch_size must be >= 1"),
    ("data.crop_scale=[0.9, 0.5]", "data.crop_scale must be [min, max] with 0 < min <= max <= 1"),
    ("data.std=[0.2, 0.2]", "data.mean and data.std need 3 values each"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
])
def test_every_value_is_checked_at_load(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


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


@pytest.mark.parametrize("config, workers", [("configs/voc.yaml", "[4, 8]"), ("configs/voc.yaml", "[2, 4]"),
                                             ("configs/tiny.yaml", "[2, 3]")])
def test_documented_elastic_ranges_load_and_split_at_every_size(config, workers):
    """An elastic range loads whatever its sizes: the global batch (data.batch_size x the most
    workers) splits over every world size in it, ranks differing by one image at most."""
    from edge_ray.config import batches_for, global_batches, worker_range

    from tests.conftest import ROOT

    cfg = load_config(ROOT / config, [f"train.num_workers={workers}"])
    low, high = worker_range(cfg)
    ids, oes = global_batches(cfg)
    for world in range(low, high + 1):
        id_b, oe_b = batches_for(cfg, world)
        assert len(id_b) == len(oe_b) == world and sum(id_b) == ids and sum(oe_b) == oes
        assert max(id_b) - min(id_b) <= 1 and min(id_b) >= cfg.data.batch_size
