"""timm backbones (`model.name: timm:<name>`): the config rule, the feature / head split,
local weights, the backbone's own normalisation, and for a ResNet, a ViT at 32 px and a
ConvNeXt: two tiny epochs, every score, export, and predict equal to eval. The slow test runs
the issue's commands: `launch.py train ... model.name=timm:resnet10t`, then `eval --scores
jointenergy knn`, then `export` and `predict` on Ray."""
import json

import numpy as np
import pytest
import timm  # a dependency (pyproject.toml): a missing install fails here, it is not skipped
import torch

from edge_ray.config import ConfigError, load_config
from edge_ray.models import normalization, resolve_normalization
from edge_ray.models.networks import build_model
from edge_ray.scores import SCORES
from tests.conftest import ROOT, launch_in_subprocess, tiny_overrides

# name -> feature dimension D (the pooled pre-logits)
MODELS = {"timm:resnet10t": 512, "timm:vit_tiny_patch16_224": 192, "timm:convnext_zepto_rms": 256}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread, as a Ray Train worker on a fraction of a CPU runs: on a busy
    2-core machine two threads spin against each other (3-5x the time of one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_config_rule_for_timm_names(tmp_path):
    tiny = ROOT / "configs" / "tiny.yaml"
    assert load_config(tiny, ["model.name=timm:resnet10t"]).model.name == "timm:resnet10t"
    assert load_config(tiny, ["model.name=timm:vit_tiny_patch16_224.augreg_in21k"]).model.name.endswith("in21k")
    with pytest.raises(ConfigError, match="timm 1.* has no model 'resnet10x'; did you mean 'timm:resnet10t'"):
        load_config(tiny, ["model.name=timm:resnet10x"])
    with pytest.raises(ConfigError, match="no weights tag 'in99k' for vit_tiny_patch16_224; .*augreg_in21k"):
        load_config(tiny, ["model.name=timm:vit_tiny_patch16_224.in99k"])
    with pytest.raises(ConfigError, match=r"model.name='resnet51' is not valid; did you mean 'resnet50'\?.*timm:<name"):
        load_config(tiny, ["model.name=resnet51"])


def test_mean_std_unset_take_the_backbones_own():
    tiny = ROOT / "configs" / "tiny.yaml"
    cfg = load_config(tiny, ["model.name=timm:vit_tiny_patch16_224"])
    assert cfg.data.mean is None and cfg.data.std is None  # resolved where the run is built
    assert resolve_normalization(cfg).data.mean == (0.5, 0.5, 0.5)        # timm's pretrained_cfg
    assert resolve_normalization(load_config(tiny)).data.std == (0.229, 0.224, 0.225)  # ImageNet's
    set_ = load_config(tiny, ["model.name=timm:vit_tiny_patch16_224", "data.mean=[0.1, 0.2, 0.3]"])
    resolved = resolve_normalization(set_)
    assert resolved.data.mean == (0.1, 0.2, 0.3) and resolved.data.std == (0.5, 0.5, 0.5)  # a set value wins
    assert normalization("timm:resnet10t") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert load_config(tiny, ["data.mean=null"]).data.mean is None
    from edge_ray.train.recipes import resolve_run
    run = resolve_run(cfg)
    assert run.data.mean == (0.5, 0.5, 0.5) and run.train.optimizer == "adamw"


@pytest.mark.parametrize("name,dim", MODELS.items())
def test_forward_split(name, dim):
    torch.manual_seed(0)
    model = build_model(name, 5, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, dim) and model.feature_dim == dim
        torch.testing.assert_close(model(x), f @ model.head.weight.T + model.head.bias)
        # the feature is timm's pooled pre-logits (for the ViT: the class token after the final norm)
        torch.testing.assert_close(f, model.body.forward_head(model.body.forward_features(x), pre_logits=True))
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, model(x), rtol=1e-4, atol=1e-5)
    assert model.arch["timm"] == {"model": name[5:], "version": timm.__version__}
    assert model.arch.get("image_size") == (32 if "vit" in name else None)  # fixed input size only


def test_local_weights(tmp_path):
    from safetensors.torch import save_file

    # timm's own state dict, classifier included, of a ViT at 224 px: the position embedding
    # is resampled to 32 px (2 x 2 patches + the class token) by timm's checkpoint filter
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=10)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    vit = build_model("timm:vit_tiny_patch16_224", 3, weights=str(tmp_path / "vit.safetensors"), image_size=32)
    assert vit.body.pos_embed.shape == (1, 5, 192)
    torch.testing.assert_close(vit.body.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    # a whole MultiLabelNet state dict (.pth), head included
    a = build_model("timm:resnet10t", 4)
    torch.save({"model": a.state_dict()}, tmp_path / "m.pth")
    b = build_model("timm:resnet10t", 4, weights=str(tmp_path / "m.pth"))
    torch.testing.assert_close(a.head.weight, b.head.weight)
    torch.testing.assert_close(a.body.conv1[0].weight, b.body.conv1[0].weight)
    with pytest.raises(ValueError, match="not a state dict of timm's ResNet"):
        build_model("timm:resnet10t", 4, weights=str(tmp_path / "vit.safetensors"))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        build_model("timm:resnet10t", 4, weights=str(tmp_path / "none.pth"))


STEPS = 2  # steps of each tiny epoch (32 ID + 32 OE images each): the path, not the accuracy, is under test


def _train_tiny(name, shards, storage):
    """Two in-process epochs of ``STEPS`` steps of EDGE on the tiny shards (the worker's loop,
    no Ray), saved as the training worker saves a checkpoint, with the run's resolved config."""
    import itertools
    import time

    from edge_ray.data import load_index, train_loader
    from edge_ray.train import builders, loop
    from edge_ray.train.checkpoint import save_checkpoint
    from edge_ray.train.recipes import resolve_run

    cfg = resolve_run(load_config(ROOT / "configs" / "tiny.yaml",
                                  tiny_overrides(shards, storage, **{"model.name": name})))
    torch.manual_seed(0)
    id_index, oe_index = load_index(cfg.data.id_train), load_index(cfg.data.oe)
    model = build_model(name, id_index.num_classes, image_size=cfg.data.image_size)
    opts = loop.StepOptions(device=torch.device("cpu"))
    opt = builders.make_optimizer(model, cfg.train)
    sched = builders.make_scheduler(opt, cfg.train, STEPS)
    history = []
    for epoch in range(cfg.train.epochs):
        loader = train_loader(id_index, oe_index, batch_size=32, oe_batch_size=32, image_size=32, epoch=epoch,
                              seed=0, rank=0, world_size=1, num_workers=0, hflip=False,
                              mean=cfg.data.mean, std=cfg.data.std)
        started = time.process_time()
        stats = loop.train_epoch(model, itertools.islice(loader, STEPS), builders.make_loss_fn(cfg.loss), opt, sched,
                                 epoch=epoch, opts=opts)
        history.append({**stats, "cpu_s": time.process_time() - started})
    folder = save_checkpoint(storage / "checkpoint_000001", model_state=model.state_dict(),
                             optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(), epoch=1,
                             resumes=0, seed=0, history=history, config=cfg.to_dict())
    return folder, history


@pytest.mark.parametrize("name", MODELS)
def test_train_eval_every_score_export_predict(name, tiny_shards, tmp_path):
    """Two epochs, `evaluate` with every score, `export` (KNN), and the loaded detector's
    predictions on the ID test images equal to eval's. (Every score through the detector
    folder is test_detector.py's, on the small CNN: nothing there depends on the backbone.)"""
    from edge_ray import Detector
    from edge_ray.detector.export import export_detector
    from edge_ray.evaluate.pipeline import eval_options, evaluate, open_sets
    from edge_ray.train.checkpoint import load_trained
    from tests.fixtures_shards import read_shards

    folder, history = _train_tiny(name, tiny_shards, tmp_path / "runs")
    assert [h["steps"] for h in history] == [STEPS, STEPS] and all(np.isfinite(h["loss"]) for h in history)
    print(f"{name}: epoch CPU seconds {[round(h['cpu_s'], 2) for h in history]}, "
          f"wall {[round(h['seconds'], 2) for h in history]}")
    model, cfg, _ = load_trained(folder)
    assert cfg.data.mean == normalization(name)[0]  # the checkpoint records the resolved values
    sets = open_sets(cfg.data.id_train, cfg.data.id_test, [str(tiny_shards / "ood_letters")])
    result = evaluate(model, sets, list(SCORES), eval_options(cfg))
    for score in SCORES:
        m = result["scores"][score]["ood_letters"]
        assert 0 <= m["fpr95"] <= 1 and 0 <= m["auroc"] <= 1, score

    out = tmp_path / "exported"
    export_detector(str(folder), str(out), score="knn", table=False)
    manifest = json.loads((out / "detector.json").read_text())
    assert manifest["model"]["name"] == name and manifest["model"]["feature_dim"] == MODELS[name]
    assert manifest["model"]["timm"] == {"model": name[5:], "version": timm.__version__}
    assert manifest["preprocess"]["mean"] == list(normalization(name)[0])
    det = Detector.load(str(out))
    assert det.scorer.name == "knn" and det.scorer.state_dict()["bank"].dtype == np.float32
    images = {k: v["data"] for k, v in read_shards(tiny_shards / "id_test").items()}
    keys = result["_id_test"]["keys"]
    got = det.predict([images[k] for k in keys], batch_size=48).scores
    want = result["_id_test"]["scores"]["knn"]  # fitted on the same 256 training images
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_detector_folder_written_before_timm_loads(tiny_detector):
    """A folder whose detector.json has no timm entry (every export before this change)."""
    from edge_ray import Detector

    out, _ = tiny_detector
    manifest = json.loads((out / "detector.json").read_text())
    assert set(manifest["model"]) == {"name", "width", "num_classes", "feature_dim"}
    assert Detector.load(str(out)).model.arch["name"] == "smallcnn"


@pytest.mark.slow
def test_launch_train_timm_then_eval_jointenergy_and_knn(ray_local, tiny_shards, tmp_path, capsys):
    """The issue's 'done when': train timm:resnet10t on the tiny config, then eval reports
    JointEnergy and KNN; export and `predict` (Ray Data) give eval's KNN scores."""
    import io

    import pyarrow.parquet as pq

    import launch
    from edge_ray.evaluate.pipeline import eval_options, evaluate, open_sets
    from edge_ray.train.checkpoint import find_checkpoint, load_trained

    overrides = tiny_overrides(tiny_shards, tmp_path / "runs", **{"model.name": "timm:resnet10t",
                                                                   "train.run_name": "timm"})
    assert launch.main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), *overrides, "--no-eval"]) == 0
    run = tmp_path / "runs" / "timm"
    history = json.loads((run / "summary.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    capsys.readouterr()
    assert launch.main(["eval", "--checkpoint", str(run), "--scores", "jointenergy", "knn", "--name", "timm"]) == 0
    table = capsys.readouterr().out
    assert "| timm | jointenergy |" in table and "| timm | knn |" in table
    res = json.loads((run / "eval" / "results.json").read_text())["results"]["timm"]
    assert set(res["scores"]) == {"jointenergy", "knn"}

    assert launch.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "det"), "--score", "knn"]) == 0
    out = tmp_path / "preds.parquet"
    code, printed = launch_in_subprocess(ray_local, "predict", "--model", tmp_path / "det", "--input",
                                         tiny_shards / "id_test", "--out", out, "--cpus-per-actor", "0.5",
                                         "--cpus-per-task", "0.25")
    assert code == 0, printed[-4000:]
    rows = pq.read_table(io.BytesIO(out.read_bytes())).to_pylist()
    model, cfg, _ = load_trained(find_checkpoint(str(run)))
    sets = open_sets(cfg.data.id_train, cfg.data.id_test, [str(tiny_shards / "ood_letters")])
    ref = evaluate(model, sets, ["knn"], eval_options(cfg))["_id_test"]
    expected = dict(zip(ref["keys"], ref["scores"]["knn"]))
    np.testing.assert_allclose([r["score"] for r in rows], [expected[r["key"]] for r in rows], rtol=1e-5, atol=1e-6)
