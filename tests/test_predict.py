"""`launch.py predict` on the session's Ray (Ray Data: read, decode tasks, an actor pool,
one Parquet file): scores equal to `eval`'s, bad files as error rows, every input kind."""
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from edge_ray import Detector, storage
from edge_ray.train.checkpoint import load_trained
from edge_ray.evaluate.pipeline import eval_options, evaluate, open_sets
from tests.conftest import launch_in_subprocess
from tests.fixtures_shards import image_bytes, truncated_jpeg

pytestmark = pytest.mark.slow

SMALL = ["--cpus-per-actor", "0.5", "--cpus-per-task", "0.25"]  # room on the 4-CPU session Ray


def predict(ray_local, *argv) -> tuple[int, str]:
    """`python launch.py predict ...` in its own process on the session's Ray (see
    conftest.launch_in_subprocess for why not in the pytest process)."""
    code, out = launch_in_subprocess(ray_local, "predict", *argv, *SMALL)
    assert "Traceback" not in out, out[-4000:]
    return code, out


def rows(location) -> list[dict]:
    return pq.read_table(io.BytesIO(storage.read_bytes(str(location)))).to_pylist()


def test_scores_on_the_id_test_shards_equal_evals(ray_local, tiny_detector, tiny_checkpoint, tiny_shards,
                                                   tmp_path, capsys):
    model, cfg, _ = load_trained(tiny_checkpoint)
    sets = open_sets(cfg.data.id_train, cfg.data.id_test, [str(tiny_shards / "ood_letters")])
    reference = evaluate(model, sets, ["jointenergy"], eval_options(cfg))["_id_test"]
    expected = dict(zip(reference["keys"], reference["scores"]["jointenergy"]))

    out = tmp_path / "preds.parquet"
    code, printed = predict(ray_local, "--model", tiny_detector[0], "--input", tiny_shards / "id_test", "--out", out,
                            "--batch-size", 48)
    assert code == 0
    got = rows(out)
    assert [r["key"] for r in got] == reference["keys"]  # every sample once, in the set's order
    scores = np.array([r["score"] for r in got])
    np.testing.assert_allclose(scores, [expected[r["key"]] for r in got], rtol=1e-5, atol=1e-7)
    threshold = tiny_detector[1]["threshold"]["value"]
    classes = json.loads((tiny_detector[0] / "detector.json").read_text())["classes"]
    for r in got:
        assert r["error"] is None and r["is_unknown"] == (r["score"] < threshold)
        assert r["labels"] == [c for c, p in zip(classes, r["probabilities"]) if p >= 0.5]
        assert r["path"].endswith(".tar") and len(r["probabilities"]) == 7
    unknown = sum(r["is_unknown"] for r in got)
    assert "predicted 160 images (shards)" in printed and f"{unknown} unknown" in printed
    assert "0 error(s)" in printed and not (tmp_path / "preds.parquet.part").exists()
    assert "(decoded in the model actors)" in printed  # the CPU default (--decode-in auto)


def write_folder(root):
    """Good PNG and JPEG images (one nested) and three bad files; returns the good ones' bytes."""
    good = {"a.png": image_bytes(1, "PNG", (40, 30)), "b.jpg": image_bytes(2, "JPEG", (64, 48)),
            "nested/deeper/c.png": image_bytes(3, "PNG", (32, 32))}
    bad = {"truncated.jpg": truncated_jpeg(), "empty.png": b"", "notes.txt": b"not an image\n"}
    for name, data in {**good, **bad}.items():
        storage.write_bytes(storage.join(str(root), name), data)
    return good


def test_bad_files_become_error_rows_and_the_run_goes_on(ray_local, tiny_detector, tmp_path, capsys):
    good = write_folder(tmp_path / "images")
    out = tmp_path / "preds.parquet"
    code, printed = predict(ray_local, "--model", tiny_detector[0], "--input", tmp_path / "images", "--out", out)
    assert code == 0
    by_key = {r["key"]: r for r in rows(out)}
    assert set(by_key) == set(good) | {"truncated.jpg", "empty.png", "notes.txt"}
    assert by_key["truncated.jpg"]["error"].startswith("corrupt or truncated image")
    assert by_key["empty.png"]["error"] == "empty file (0 bytes)"
    assert by_key["notes.txt"]["error"] == "not a JPEG, PNG or WebP image"
    for name in ("truncated.jpg", "empty.png", "notes.txt"):
        r = by_key[name]
        assert r["score"] is None and r["labels"] is None and r["is_unknown"] is None
    det = Detector.load(str(tiny_detector[0]))
    expected = det.predict(list(good.values()))
    for name, score in zip(good, expected.scores):
        r = by_key[name]
        assert r["error"] is None and r["path"] == str(tmp_path / "images" / name)
        assert r["score"] == pytest.approx(score, rel=1e-6)
    assert "3 error(s)" in printed and "empty.png: empty file (0 bytes)" in printed
    code, printed = predict(ray_local, "--model", tiny_detector[0], "--input", tmp_path / "images" / "b.jpg",
                            "--out", out, "--overwrite")  # one image file
    (only,) = rows(out)
    assert code == 0 and only["key"] == "b.jpg" and only["score"] == pytest.approx(by_key["b.jpg"]["score"], rel=1e-6)


def test_manifest_on_object_storage_with_two_actors(ray_local, tiny_detector, tiny_shards, bucket, capsys):
    """A JSONL manifest in a bucket (relative, absolute-URI and missing paths), the detector in
    the bucket too, two model actors, the Parquet file written to the bucket. Decoded in tasks
    of their own (`--decode-in tasks`; the other tests decode in the actors, the CPU default):
    the same scores and error rows either way."""
    storage.upload_tree(str(tiny_detector[0]), f"{bucket}/models/tiny")
    good = write_folder(f"{bucket}/images")
    lines = [{"path": f"images/{name}"} for name in good] + [{"path": "images/missing.png"},
                                                              {"path": f"{bucket}/images/empty.png"}]
    storage.write_text(f"{bucket}/manifest.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    code, printed = predict(ray_local, "--model", f"{bucket}/models/tiny", "--input", f"{bucket}/manifest.jsonl",
                            "--out", f"{bucket}/out/preds.parquet", "--concurrency", 2, "--batch-size", 2,
                            "--decode-in", "tasks")
    assert code == 0 and "(decoded in tasks)" in printed
    got = rows(f"{bucket}/out/preds.parquet")
    assert [r["key"] for r in got] == [line["path"] for line in lines]  # in the manifest's order
    expected = Detector.load(str(tiny_detector[0])).predict(list(good.values())).scores
    np.testing.assert_allclose([r["score"] for r in got[:3]], expected, rtol=1e-6)
    assert got[3]["error"].startswith("cannot read the file") and "does not exist" in got[3]["error"]
    assert got[4]["error"] == "empty file (0 bytes)" and got[4]["path"] == f"{bucket}/images/empty.png"
    assert "predicted 5 images (manifest)" in printed and "2 error(s)" in printed
    code, printed = predict(ray_local, "--model", f"{bucket}/models/tiny", "--input", f"{bucket}/images",
                            "--out", f"{bucket}/out/folder.parquet")  # the same files as an s3:// folder
    by_key = {r["key"]: r for r in rows(f"{bucket}/out/folder.parquet")}
    assert code == 0 and set(by_key) == set(good) | {"truncated.jpg", "empty.png", "notes.txt"}
    assert by_key["a.png"]["path"] == f"{bucket}/images/a.png"
    assert by_key["nested/deeper/c.png"]["score"] == pytest.approx(got[2]["score"], rel=1e-6)


def test_bad_requests_are_one_line(ray_local, tiny_detector, tiny_shards, tmp_path, capsys, monkeypatch):
    from edge_ray import ray_cluster as cluster
    from tests.test_eval_cli import one_line_error

    monkeypatch.setattr(cluster, "STARTED_HERE", True)  # as when launch.py started its own Ray

    def refused(argv, pattern):
        one_line_error(capsys, ["predict", *argv, *SMALL], pattern)

    model, images = tiny_detector[0], tiny_shards / "ood_letters"
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((model / "detector.json").read_text())
    (old / "detector.json").write_text(json.dumps({**manifest, "format_version": 0}))
    refused(["--model", old, "--input", images, "--out", tmp_path / "p.parquet"], "format version 0")
    refused(["--model", tmp_path, "--input", images, "--out", tmp_path / "p.parquet"], "not a detector folder")
    refused(["--model", model, "--input", tmp_path / "nothing", "--out", tmp_path / "p.parquet"], "does not exist")
    refused(["--model", model, "--input", images, "--out", tmp_path / "p.csv"], "ending in .parquet")
    (tmp_path / "there.parquet").write_bytes(b"x")
    refused(["--model", model, "--input", images, "--out", tmp_path / "there.parquet"], "--overwrite")
    refused(["--model", model, "--input", images, "--out", tmp_path / "p.parquet", "--concurrency", "9"],
            "CPUs")
    (tmp_path / "list.csv").write_text("file\na.png\n")
    refused(["--model", model, "--input", tmp_path / "list.csv", "--out", tmp_path / "p.parquet"],
            "no 'path' column")
    assert not (tmp_path / "p.parquet").exists()
