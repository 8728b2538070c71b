"""The embedded benchmark: layout, roles, long tail, disjoint sources, determinism."""
import hashlib
import io
import json

import pytest
from PIL import Image

from shards.demo import build_demo, digit_splits, missing_sets
from tests.fixtures_shards import read_shards

TINY = {"n_train": 60, "n_val": 20, "n_test": 30, "n_oe": 20, "n_ood": 20}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo(out, seed=0, quick=True)


def test_sets_and_roles(demo):
    out, bench = demo
    assert json.loads((out / "benchmark.json").read_text())["oe"] == bench["oe"]
    assert {"oe_digit7", "oe_letters", "oe_china", "oe_stripes"} <= set(bench["oe"])
    assert {"ood_digits89", "ood_letters", "ood_flower", "ood_scribble", "ood_blobs"} <= set(bench["ood"])
    names = ["id_train", "id_val", "id_test", *bench["oe"], *bench["ood"]]
    for name in names:
        index = json.loads((out / name / "index.json").read_text())
        role = "id" if name.startswith("id_") else name.split("_")[0]
        assert index["role"] == role and index["name"] == name and index["skipped"] == []
        assert (out / name / "labels.parquet").is_file()
        assert index["classes"] == (bench["classes"] if role == "id" else [])
    assert bench["sets"]["id_train"]["num_samples"] == 1000
    assert bench["sets"]["ood_blobs"]["num_samples"] == 250


def test_held_out_oe_for_tuning(demo):
    """oe_letters_val (issue 33): letters A-M like oe_letters, other images, half as many; a
    search's objective set, not an OE candidate (rank-oe never sees it)."""
    out, bench = demo
    assert bench["oe_val"] == ["oe_letters_val"] and "oe_letters_val" not in bench["oe"]
    index = json.loads((out / "oe_letters_val" / "index.json").read_text())
    assert index["role"] == "oe" and index["num_samples"] == bench["sets"]["oe_letters"]["num_samples"] // 2
    held = {r["data"] for r in read_shards(out / "oe_letters_val").values()}
    train = {r["data"] for r in read_shards(out / "oe_letters").values()}
    assert len(held) == index["num_samples"] and not held & train   # no image of the training OE set
    assert missing_sets(bench) == [] and missing_sets({"sets": {"id_train": {}}})[:2] == ["id_val", "id_test"]


def test_images_and_labels(demo):
    out, bench = demo
    train = read_shards(out / "id_train")
    assert all(1 <= len(r["labels"]) <= 3 and max(r["labels"]) <= 6 for r in train.values())
    img = Image.open(io.BytesIO(next(iter(train.values()))["data"]))
    assert (img.format, img.size, img.mode) == ("PNG", (32, 32), "L")
    for name in bench["oe"] + bench["ood"]:
        assert all(r["labels"] == [] for r in read_shards(out / name).values())


def test_long_tail(demo):
    out, bench = demo
    counts = json.loads((out / "id_train" / "index.json").read_text())["label_counts"]
    assert counts[0] > 5 * counts[6]
    assert min(counts[c] for c in bench["head_classes"]) > max(counts[c] for c in bench["tail_classes"])


def test_train_and_test_digits_disjoint(demo):
    out, _ = demo
    splits = digit_splits(0)
    assert not set(splits["id_train"]) & set(splits["id_test"])
    assert not set(splits["id_train"]) & set(splits["id_val"])
    used = {name: {d for r in read_shards(out / name).values() for d in r["meta"]["digits"]}
            for name in ("id_train", "id_val", "id_test")}
    assert not used["id_train"] & used["id_test"] and not used["id_train"] & used["id_val"]
    assert used["id_train"] <= set(splits["id_train"])


def test_oe_and_ood_share_no_image(demo):
    out, bench = demo
    digest = lambda name: {hashlib.sha1(r["data"]).hexdigest() for r in read_shards(out / name).values()}
    oe = set().union(*(digest(n) for n in bench["oe"]))
    ood = set().union(*(digest(n) for n in bench["ood"]))
    assert not oe & ood


def test_same_seed_same_bytes(tmp_path):
    a = build_demo(tmp_path / "a", seed=3, **TINY)
    b = build_demo(tmp_path / "b", seed=3, **TINY)
    build_demo(tmp_path / "c", seed=4, **TINY)
    assert a == b
    for tar in sorted((tmp_path / "a").rglob("*.tar")):
        rel = tar.relative_to(tmp_path / "a")
        assert tar.read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "id_train" / "id_train-000000.tar").read_bytes() != \
        (tmp_path / "c" / "id_train" / "id_train-000000.tar").read_bytes()


def test_cli_demo(tmp_path, capsys):
    import argparse

    from shards.cli import add_subparsers, run

    parser = argparse.ArgumentParser()
    add_subparsers(parser.add_subparsers(dest="command"))
    sizes = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    assert run(parser.parse_args(["shards", "demo", "--out", str(tmp_path), *sizes])) == 0
    assert "14 sets" in capsys.readouterr().out
    assert json.loads((tmp_path / "benchmark.json").read_text())["sets"]["id_test"]["num_samples"] == 30
