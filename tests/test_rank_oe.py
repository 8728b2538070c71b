"""Issue 6: OE candidate ranking by the dilation distance on a Ray task pool.

Fixtures are built the way the embedded benchmark builds its sets (shards.demo.set_items +
shards.writer.convert), smaller. The feature extractor is the small CNN trained for three
epochs on the ID canvases with a fixed seed: with random weights the dilation distance only
compares the raw input statistics, and held-out digits then rank level with ID canvases.
Margins measured over ten training seeds: the ID-like candidate is >= 3.3x closer than the
next one, noise >= 1.5x farther than the one before it (seed 0 below: 5.9x and 4.6x;
the asserts ask for 2x and 1.25x).
"""
import io
import json
import tarfile
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from edge_ray.config import Config, DataConfig, ModelConfig
from edge_ray.data import eval_loader, load_index
from edge_ray.oe.ray_rank import (RankOptions, rank_candidates, rank_parallel, rank_serial,
                                          sample_positions, set_features)
from edge_ray.models.networks import build_model
from shards.demo import CLASSES, set_items
from shards.plan import Item
from shards.writer import convert

OPTS = RankOptions(k=8, batch_size=64, batches=4, seed=0, image_size=32)
RANKED = ["oe_idlike", "oe_letters", "oe_digit7", "oe_noise"]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write(items, root, name, role):
    convert(items, root / name, name=name, role=role, classes=CLASSES if role == "id" else (),
            shard_size=128, overwrite=True, progress=False)
    return str(root / name)


def _write_corrupt(root, name="oe_corrupt", n=64):
    """An OE set whose images are not images: readable index, failing decode in the task."""
    out = root / name
    out.mkdir()
    with tarfile.open(out / f"{name}-000000.tar", "w") as tar:
        for i in range(n):
            for ext, data in (("png", b"not a png"), ("json", b'{"labels": []}')):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (out / "index.json").write_text(json.dumps({
        "name": name, "role": "oe", "classes": [], "num_samples": n, "label_counts": [],
        "shards": [{"url": f"{name}-000000.tar", "num_samples": n}], "skipped": []}))
    return str(out)


def _train(id_dir: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("smallcnn", len(CLASSES))
    data = list(eval_loader(load_index(id_dir), batch_size=32, image_size=32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for x, y, _ in data:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    # One thread, as the Ray tasks get with num_cpus < 2: on a busy 2-core machine torch's
    # default thread pool made training ten times slower, and equal threads keep the
    # parallel and serial features numerically identical.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rank_oe")
    gen = np.random.default_rng(0)
    noise = [Item(key=f"{i:06d}", source=f"noise {i}",
                  data=_png(gen.integers(0, 256, (32, 32), dtype=np.uint8))) for i in range(256)]
    sets = {
        "id": _write(set_items("id_train", 512), root, "id", "id"),
        # ID canvases from the held-out validation digit pool, written as an OE set
        "oe_idlike": _write([replace(it, labels=()) for it in set_items("id_val", 256)],
                            root, "oe_idlike", "oe"),
        "oe_letters": _write(set_items("oe_letters", 256), root, "oe_letters", "oe"),
        "oe_digit7": _write(set_items("oe_digit7", 256), root, "oe_digit7", "oe"),
        "oe_noise": _write(noise, root, "oe_noise", "oe"),
        "oe_small": _write(set_items("oe_stripes", 16), root, "oe_small", "oe"),
        "oe_corrupt": _write_corrupt(root),
        "missing": str(root / "no_such_set"),
    }
    bad = root / "oe_badjson"
    bad.mkdir()
    (bad / "index.json").write_text("{not json")
    sets["oe_badjson"] = str(bad)
    yield SimpleNamespace(root=root, sets=sets, model=_train(sets["id"]))
    torch.set_num_threads(threads)


def _distances(rows):
    return {r["candidate"]: r["distance"] for r in rows if r["status"] == "ranked"}


@pytest.fixture(scope="module")
def ranked(ray_local, bench):
    """The four rankable candidates, 0.5 CPU per task: all four run at once on the 4-CPU Ray."""
    return rank_parallel(bench.model, "smallcnn", bench.sets["id"], [bench.sets[n] for n in RANKED],
                         OPTS, num_cpus=0.5, progress=False)


def test_parallel_equals_serial_id_like_first_noise_last(bench, ranked):
    cands, rows = [bench.sets[n] for n in RANKED], ranked

    def features(path):
        index = load_index(path)
        positions = sample_positions(index.num_samples, batch_size=64, batches=4, seed=0)
        return set_features(bench.model, index, positions, OPTS)

    feats = {p: features(p) for p in cands}
    serial = rank_candidates(features(bench.sets["id"]), feats, k=OPTS.k, batch_size=OPTS.batch_size)

    assert [r["candidate"] for r in rows] == [r["candidate"] for r in serial]
    par, ser = _distances(rows), _distances(serial)
    assert par.keys() == ser.keys() and len(par) == 4
    for c in par:
        assert par[c] == pytest.approx(ser[c], rel=1e-5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(r["images"] == 256 and r["batches"] == 4 for r in rows)

    d = [r["distance"] for r in rows]
    assert rows[0]["candidate"] == bench.sets["oe_idlike"], rows
    assert rows[-1]["candidate"] == bench.sets["oe_noise"], rows
    assert d[1] > 2.0 * d[0], f"ID-like candidate not clearly closest: {d}"
    assert d[-1] > 1.25 * d[-2], f"noise not clearly farthest: {d}"


def test_same_seed_same_ranking(bench, ranked):
    cands = [bench.sets[n] for n in RANKED]
    runs = [ranked, rank_parallel(bench.model, "smallcnn", bench.sets["id"], cands, OPTS,
                                  num_cpus=0.5, progress=False)]
    assert [r["candidate"] for r in runs[0]] == [r["candidate"] for r in runs[1]]
    for a, b in zip(runs[0], runs[1]):
        assert a["distance"] == pytest.approx(b["distance"], rel=1e-9, abs=1e-12)
    # another seed picks other images (the ID set has 512, 256 are used): other numbers
    other = rank_serial(bench.model, bench.sets["id"], cands[:1], replace(OPTS, seed=1))
    assert other[0]["distance"] != pytest.approx(_distances(runs[0])[cands[0]], rel=1e-6)


def test_unusable_candidates_are_reported_and_do_not_stop_the_others(ray_local, bench):
    s = bench.sets
    cands = [s["id"], s["oe_small"], s["missing"], s["oe_badjson"], s["oe_corrupt"], s["oe_letters"]]
    rows = rank_parallel(bench.model, "smallcnn", s["id"], cands, OPTS, num_cpus=0.5, progress=False)
    by = {r["candidate"]: r for r in rows}
    assert rows[0]["candidate"] == s["oe_letters"] and rows[0]["rank"] == 1
    assert [r["rank"] for r in rows[1:]] == [None] * 5
    assert by[s["id"]]["status"] == "skipped" and "role 'id'" in by[s["id"]]["reason"]
    assert by[s["oe_small"]]["status"] == "skipped"
    assert "16 images, fewer than --batch-size 64" in by[s["oe_small"]]["reason"]
    assert by[s["missing"]]["status"] == "skipped" and "does not exist" in by[s["missing"]]["reason"]
    assert by[s["oe_badjson"]]["status"] == "skipped" and "not valid JSON" in by[s["oe_badjson"]]["reason"]
    assert by[s["oe_corrupt"]]["status"] == "failed" and "cannot decode" in by[s["oe_corrupt"]]["reason"]
    # the serial reference reports the up-front refusals the same way
    serial = rank_serial(bench.model, s["id"], cands[:4] + cands[5:], OPTS)
    assert [(r["candidate"], r["status"]) for r in serial] == \
        [(r["candidate"], r["status"]) for r in rows if r["candidate"] != s["oe_corrupt"]]

    with pytest.raises(ValueError, match="no OE candidate could be ranked") as err:
        rank_parallel(bench.model, "smallcnn", s["id"], cands[:4], OPTS, progress=False)
    assert "role 'id'" in str(err.value) and "does not exist" in str(err.value)


def test_a_damaged_id_set_stops_the_ranking_with_its_own_message(ray_local, bench, tmp_path):
    """The ID task runs beside the candidates' tasks; when it fails, the ranking stops with
    the ID shard's own one-line error (no Ray wrapper) and no row is measured."""
    import shutil

    broken = tmp_path / "id"
    shutil.copytree(bench.sets["id"], broken)
    tar = next(broken.glob("*.tar"))
    tar.write_bytes(tar.read_bytes()[:20000])
    cands = [bench.sets["oe_letters"], bench.sets["oe_digit7"]]
    with pytest.raises(ValueError, match=rf"{tar.name}' is damaged after .*reconvert the set"):
        rank_parallel(bench.model, "smallcnn", str(broken), cands, OPTS, num_cpus=0.5, progress=False)


def test_cli_writes_ranking_and_selected_config(ray_local, bench, tmp_path, capsys):
    import launch

    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    torch.save({"model": bench.model.state_dict()}, ckpt / "state.pt")
    cfg = Config(data=DataConfig(image_size=32), model=ModelConfig(name="smallcnn"))
    (ckpt / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "train.yaml").write_text(cfg.to_yaml())
    s, out = bench.sets, tmp_path / "rank"
    rc = launch.main(["rank-oe", "--id", s["id"], "--candidates", s["oe_letters"], s["oe_idlike"],
                      s["missing"], "--checkpoint", str(ckpt), "--k", "8", "--batch-size", "64",
                      "--batches", "4", "--num-cpus", "0.5", "--out", str(out),
                      "--select", str(tmp_path / "train.yaml")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "rank  candidate" in printed and "does not exist" in printed
    report = json.loads((out / "ranking.json").read_text())
    assert report["best"] == s["oe_idlike"] and report["options"]["image_size"] == 32
    assert [r["rank"] for r in report["candidates"]] == [1, 2, None]
    selected = yaml.safe_load((out / "selected.yaml").read_text())
    assert selected["data"]["oe"] == s["oe_idlike"] and selected["model"]["name"] == "smallcnn"
