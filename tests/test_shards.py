"""Converters: labels against the annotations, skip lists, input errors,
determinism, the CLI, and Ray-parallel vs in-process output."""
import argparse
import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.coco import convert_coco
from shards.errors import ConversionError, MissingInputError
from shards.folder import convert_folder
from shards.manifest import convert_manifest
from shards.nuswide import convert_nuswide
from shards.voc import convert_voc
from tests.fixtures_shards import (COCO_ANNOTATIONS, VOC_OBJECTS, keys_per_shard, make_coco,
                                   make_voc, read_shards, voc_expected, write_image)

QUIET = {"progress": False}


def _index(out):
    return json.loads((Path(out) / "index.json").read_text())


def _check_layout(out: Path, index: dict, samples: dict) -> None:
    """index.json and labels.parquet agree with what the tars hold."""
    assert index["num_samples"] == len(samples)
    assert [s["url"] for s in index["shards"]] == sorted(p.name for p in out.glob("*.tar"))
    for shard in index["shards"]:
        assert shard["num_samples"] == sum(r["shard"] == shard["url"] for r in samples.values())
    rows = pq.read_table(out / "labels.parquet").to_pylist()
    assert {r["key"]: (r["labels"], r["shard"]) for r in rows} == \
        {k: (r["labels"], r["shard"]) for k, r in samples.items()}
    counts = [sum(c in r["labels"] for r in samples.values()) for c in range(len(index["classes"]))]
    assert index["label_counts"] == counts


def test_voc_labels_skips_and_layout(tmp_path):
    root = make_voc(tmp_path)
    out = tmp_path / "out"
    index = convert_voc(root, "train", out, shard_size=3, **QUIET)
    samples = read_shards(out)
    assert {k: r["labels"] for k, r in samples.items()} == voc_expected()
    assert samples["2007_000005"]["ext"] == "png"  # true format, not the .jpg suffix
    assert samples["2007_000001"]["ext"] == "jpg"
    assert samples["2007_000001"]["data"] == (root / "JPEGImages" / "2007_000001.jpg").read_bytes()
    skipped = {Path(s["path"]).name: s["reason"] for s in index["skipped"]}
    assert set(skipped) == {"2007_000007.jpg", "2007_000008.jpg"}
    assert "truncated" in skipped["2007_000007.jpg"] and "0 bytes" in skipped["2007_000008.jpg"]
    assert index["role"] == "id" and len(index["classes"]) == 20 and index["classes"][0] == "aeroplane"
    assert index["name"] == "VOC2007-train"
    # 8 listed, 2 skipped: the last planned shard lost both images and is dropped,
    # the names stay contiguous.
    assert [s["num_samples"] for s in index["shards"]] == [3, 3]
    _check_layout(out, index, samples)


def test_voc_skip_difficult(tmp_path):
    out = tmp_path / "out"
    convert_voc(make_voc(tmp_path), "train", out, skip_difficult=True, **QUIET)
    assert {k: r["labels"] for k, r in read_shards(out).items()} == voc_expected(True)


def test_coco_category_order_and_empty_images(tmp_path):
    images, ann = make_coco(tmp_path)
    out = tmp_path / "out"
    index = convert_coco(images, ann, out, **QUIET)
    assert index["classes"] == ["person", "car", "dog"]  # sorted by category id 1, 3, 18
    by_id = {1: "person", 3: "car", 18: "dog"}
    samples = read_shards(out)
    expected = {f"{i:012d}": sorted(index["classes"].index(by_id[c]) for c in set(cats))
                for i, cats in COCO_ANNOTATIONS.items() if i in (1, 2, 3)}
    assert {k: r["labels"] for k, r in samples.items()} == expected
    assert sorted(Path(s["path"]).name for s in index["skipped"]) == \
        ["000000000004.jpg", "000000000005.jpg"]
    _check_layout(out, index, samples)
    dropped = convert_coco(images, ann, tmp_path / "out2", drop_empty=True, **QUIET)
    assert "000000000003" not in read_shards(tmp_path / "out2")
    assert any("--drop-empty" in s["reason"] for s in dropped["skipped"])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    for i, name in enumerate(["a.jpg", "b.png", "c.jpg"]):
        write_image(tmp_path / "imgs" / name, "png" if name.endswith("png") else "jpeg", i)
    rows = [("imgs/a.jpg", "cat|dog"), ("imgs/b.png", "2;0"), ("imgs/c.jpg", ["dog", 1])]
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":  # a list cell is written as JSON text
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "labels"])
            writer.writerows((p, json.dumps(l) if isinstance(l, list) else l) for p, l in rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"path": p, "labels": l}) + "\n" for p, l in rows))
    else:  # Parquet: a real list<string> column
        pq.write_table(pa.table({"path": [p for p, _ in rows],
                                 "labels": [["cat", "dog"], ["2", "0"], ["dog", "1"]]}), path)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    index = convert_manifest(path, tmp_path / "classes.txt", tmp_path / "out", **QUIET)
    samples = read_shards(tmp_path / "out")
    expected = {"imgs_a": [0, 1], "imgs_b": [0, 2], "imgs_c": [1]}
    assert {k: r["labels"] for k, r in samples.items()} == expected
    assert index["classes"] == ["cat", "dog", "bird"]


def test_folder_oe_recursive(tmp_path):
    root = tmp_path / "textures"
    write_image(root / "b" / "x.JPG", "jpeg", 1)
    write_image(root / "a.png", "png", 2)
    write_image(root / "c.webp", "empty", 3)
    write_image(root / "d.bmp", "bmp", 4)
    (root / "notes.txt").write_text("not an image")
    index = convert_folder(root, tmp_path / "out", role="oe", name="tex", **QUIET)
    samples = read_shards(tmp_path / "out")
    assert sorted(samples) == ["a", "b_x"] and all(r["labels"] == [] for r in samples.values())
    assert index["role"] == "oe" and index["classes"] == [] and index["label_counts"] == []
    reasons = {Path(s["path"]).name: s["reason"] for s in index["skipped"]}
    assert set(reasons) == {"c.webp", "d.bmp"} and "unsupported format BMP" in reasons["d.bmp"]
    again = convert_folder(root, tmp_path / "out", role="oe", name="tex", reencode=True,
                           overwrite=True, **QUIET)
    assert again["num_samples"] == 3 and read_shards(tmp_path / "out")["d"]["ext"] == "png"


def _mixed_modes_folder(root: Path) -> dict[str, bytes]:
    """Real files of several modes, 8x8 (a 16-bit PNG, RGBA, an EXIF-rotated PNG, a JPEG, an
    animated GIF for --reencode, a 32-bit TIFF beyond 16 bits)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)

    def enc(img, fmt, **kw):
        buf = io.BytesIO()
        (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (8, 8), (40 * i, 90, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
              for i in range(3)]
    files = {
        "g16.png": enc(rng.integers(0, 65536, (8, 8)).astype(np.uint16), "PNG"),
        "rgba.png": enc(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "PNG"),
        "rot.png": enc(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "PNG", exif=exif),
        "plain.jpg": enc(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "JPEG"),
        "anim.gif": enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40),
        "deep.tif": enc(np.full((8, 8), 70000, np.int32), "TIFF"),
    }
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def test_converter_records_modes_and_announces_conversions(tmp_path):
    from shards.writer import summary_line

    files = _mixed_modes_folder(tmp_path / "mixed")
    out = tmp_path / "out"
    index = convert_folder(tmp_path / "mixed", out, role="oe", name="mixed", reencode=True, **QUIET)
    rows = {r["key"]: r for r in pq.read_table(out / "labels.parquet").to_pylist()}
    assert {k: (r["mode"], r["width"], r["height"], r["orientation"]) for k, r in rows.items()} == {
        "anim": ("P", 8, 8, 1), "g16": ("I;16", 8, 8, 1), "plain": ("RGB", 8, 8, 1),
        "rgba": ("RGBA", 8, 8, 1), "rot": ("RGB", 8, 8, 6)}
    assert index["source_modes"] == {"I;16": 1, "P": 1, "RGB": 2, "RGBA": 1}
    assert index["num_converted_on_read"] == 3 and index["num_oriented_on_read"] == 1
    assert index["reencoded"] == {"GIF P": 1}
    (skip,) = index["skipped"]
    assert skip["path"].endswith("deep.tif") and "outside 0..65535" in skip["reason"]
    samples = read_shards(out)
    assert samples["g16"]["data"] == files["g16.png"]  # stored as is: converted on read only
    assert summary_line(index, out) == (
        f"wrote 5 samples in 1 shards to {out}; skipped 1 (see index.json); converted on read: "
        "1 I;16 (scaled /257), 1 P (palette to RGB), 1 RGBA (composited on white); "
        "EXIF orientation applied on read: 1; re-encoded as PNG: 1 GIF P")
    _check_layout(out, index, samples)


def test_nuswide_layout(tmp_path):
    root = tmp_path / "nus"
    (root / "ImageList").mkdir(parents=True)
    (root / "TrainTestLabels").mkdir()
    (root / "Concepts81.txt").write_text("sky\nwater\n")
    paths = ["actor\\0001_11.jpg", "beach\\0002_22.jpg", "beach\\0003_33.jpg"]
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(paths) + "\r\n")
    (root / "TrainTestLabels" / "Labels_sky_Train.txt").write_text("1\n0\n0\n")
    (root / "TrainTestLabels" / "Labels_water_Train.txt").write_text("1\n1\n0\n")
    for i, p in enumerate(paths):
        write_image(root / "Flickr" / p.replace("\\", "/"), "jpeg", i)
    convert_nuswide(root, "train", tmp_path / "out", **QUIET)
    assert {k: r["labels"] for k, r in read_shards(tmp_path / "out").items()} == \
        {"actor_0001_11": [0, 1], "beach_0002_22": [1], "beach_0003_33": []}
    (root / "TrainTestLabels" / "Labels_water_Train.txt").write_text("1\n1\n")
    with pytest.raises(ValueError, match="Labels_water_Train.txt has 2 lines"):
        convert_nuswide(root, "train", tmp_path / "out2", **QUIET)


# ---- input errors: each stops with a message naming the file ----

def test_error_missing_annotation(tmp_path):
    root = make_voc(tmp_path)
    (root / "Annotations" / "2007_000003.xml").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000003.xml") as err:
        convert_voc(root, "train", tmp_path / "out", **QUIET)
    assert isinstance(err.value, MissingInputError) and isinstance(err.value, ConversionError)


def test_error_unknown_class(tmp_path):
    root = make_voc(tmp_path, objects={**VOC_OBJECTS, "2007_000009": [("unicorn", 0)]})
    with pytest.raises(ConversionError, match=r"unknown class 'unicorn' in .*2007_000009.xml"):
        convert_voc(root, "train", tmp_path / "out", **QUIET)
    images, ann = make_coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 77
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="instances_val.json.*category_id 77"):
        convert_coco(images, ann, tmp_path / "out", **QUIET)
    write_image(tmp_path / "m" / "a.jpg", "jpeg", 0)
    (tmp_path / "m" / "m.csv").write_text("path,labels\na.jpg,cat|zebra\n")
    with pytest.raises(ValueError, match=r"m.csv row 1: unknown class 'zebra'"):
        convert_manifest(tmp_path / "m" / "m.csv", ["cat", "dog"], tmp_path / "out", **QUIET)


def test_error_listed_image_absent(tmp_path):
    root = make_voc(tmp_path)
    (root / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000002.jpg"):
        convert_voc(root, "train", tmp_path / "out", **QUIET)
    index = convert_voc(root, "train", tmp_path / "out", skip_missing=True, **QUIET)
    assert any(s["path"].endswith("2007_000002.jpg") for s in index["skipped"])


def test_error_duplicate_keys(tmp_path):
    root = make_voc(tmp_path, ids=list(VOC_OBJECTS) + ["2007_000001"])
    with pytest.raises(ValueError, match="duplicate sample keys.*2007_000001"):
        convert_voc(root, "train", tmp_path / "out", **QUIET)


def test_error_no_samples(tmp_path):
    root = make_voc(tmp_path, objects={"2007_000007": [("dog", 0)], "2007_000008": [("cat", 0)]})
    with pytest.raises(ValueError, match="no samples written"):
        convert_voc(root, "train", tmp_path / "out", **QUIET)
    assert not list((tmp_path / "out").glob("*.tar*"))


def test_error_refuses_to_mix_sets(tmp_path):
    root = make_voc(tmp_path)
    convert_voc(root, "train", tmp_path / "out", **QUIET)
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_voc(root, "train", tmp_path / "out", **QUIET)


def test_deterministic(tmp_path):
    root = make_voc(tmp_path)
    convert_voc(root, "train", tmp_path / "a", shard_size=2, **QUIET)
    convert_voc(root, "train", tmp_path / "b", shard_size=2, **QUIET)
    assert keys_per_shard(tmp_path / "a") == keys_per_shard(tmp_path / "b")
    for tar in (tmp_path / "a").glob("*.tar"):
        assert tar.read_bytes() == (tmp_path / "b" / tar.name).read_bytes()


def _cli(argv):
    from shards.cli import add_subparsers

    parser = argparse.ArgumentParser()
    add_subparsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_summary_and_errors(tmp_path, capsys):
    from shards.cli import run

    root = make_voc(tmp_path)
    args = _cli(["shards", "voc", "--root", str(root), "--split", "train",
                 "--out", str(tmp_path / "out"), "--workers", "0"])
    assert run(args) == 0
    assert capsys.readouterr().out.strip() == \
        f"wrote 6 samples in 1 shards to {tmp_path / 'out'}; skipped 2 (see index.json)"
    bad = _cli(["shards", "voc", "--root", str(tmp_path), "--split", "val",
                "--out", str(tmp_path / "o2"), "--workers", "0"])
    with pytest.raises(ConversionError, match="val.txt not found"):
        run(bad)
    with pytest.raises(SystemExit):
        _cli(["shards", "voc", "--help"])
    assert "example:" in capsys.readouterr().out


@pytest.mark.slow
def test_ray_parallel_equals_in_process(tmp_path, ray_local):
    root = make_voc(tmp_path)
    local = convert_voc(root, "train", tmp_path / "local", shard_size=2, **QUIET)
    remote = convert_voc(root, "train", tmp_path / "ray", shard_size=2, workers=2, **QUIET)
    assert local == remote
    for tar in (tmp_path / "local").glob("*.tar"):
        assert tar.read_bytes() == (tmp_path / "ray" / tar.name).read_bytes()
    assert (tmp_path / "local" / "index.json").read_text() == (tmp_path / "ray" / "index.json").read_text()
