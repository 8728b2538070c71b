"""The exported detector (pure core, no Ray): export -> load -> predict against `evaluate`,
the threshold on id_val, every kind of image input, the folder format and its refusals."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_ray import Detector
from edge_ray.train.checkpoint import load_trained
from edge_ray.detector import FORMAT_VERSION, read_manifest
from edge_ray.evaluate.pipeline import eval_options, evaluate, open_sets
from edge_ray.detector.export import export_detector
from tests.fixtures_shards import read_shards, truncated_jpeg

SCORES = ["jointenergy", "maxlogit", "msp", "energy", "maxenergy", "mahalanobis", "react", "vim", "ash", "odin", "knn"]


def id_images(shard_dir):
    """key -> encoded image bytes, read with tarfile only (not the code under test)."""
    return {k: v["data"] for k, v in read_shards(shard_dir).items()}


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tiny_shards):
    """`eval`'s pass over the tiny sets with every score: its fitted scorers and ID test scores."""
    model, cfg, _ = load_trained(tiny_checkpoint)
    sets = open_sets(cfg.data.id_train, cfg.data.id_test, [str(tiny_shards / "ood_letters")])
    return model, cfg, evaluate(model, sets, SCORES, eval_options(cfg))


@pytest.fixture(scope="module")
def exported(tiny_detector):
    return tiny_detector


@pytest.mark.parametrize("score", SCORES)
def test_saved_and_loaded_detector_scores_as_eval(reference, tiny_shards, tmp_path, score):
    """Every score, its fitted state through safetensors and back, on the raw ID test bytes:
    the same numbers as `evaluate` (same decode, resize and normalisation)."""
    model, cfg, result = reference
    det = Detector(model, arch={"name": cfg.model.name, "width": cfg.model.width}, classes=result["classes"],
                   image_size=cfg.data.image_size, mean=cfg.data.mean, std=cfg.data.std,
                   scorer=result["_scorers"][score], threshold=0.0, config=cfg.to_dict())
    det.save(str(tmp_path / score))
    files = set(read_manifest(str(tmp_path / score))["files"])
    assert ("score_state.safetensors" in files) == det.scorer.needs_fit
    loaded = Detector.load(str(tmp_path / score))
    images = id_images(tiny_shards / "id_test")
    keys = result["_id_test"]["keys"]
    out = loaded.predict([images[k] for k in keys], batch_size=48)
    want = result["_id_test"]["scores"][score]
    # float32 sums in another order (ASH's pruning and rescaling amplifies them): 1e-5 of the scale
    np.testing.assert_allclose(out.scores, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_export_writes_the_folder(exported, reference, tiny_checkpoint):
    out, res = exported
    names = {p.name for p in out.iterdir()}
    assert names == {"detector.json", "model.safetensors", "config.json", "model_card.md", "model_card.json"}
    manifest = json.loads((out / "detector.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["score"]["name"] == "jointenergy"
    assert manifest["classes"] == [f"digit{i}" for i in range(7)] and manifest["label_thresholds"] == [0.5] * 7
    assert manifest["threshold"]["value"] == res["threshold"]["value"]
    quantiles = manifest["threshold"]["id_val_quantiles"]
    assert list(quantiles.values()) == sorted(quantiles.values()) and "0.5" in quantiles
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")  # data only: no pickle involved
    _, cfg, result = reference
    assert set(weights) == set(torch.load(tiny_checkpoint / "state.pt", weights_only=True)["model"])
    card = json.loads((out / "model_card.json").read_text())
    assert card["source"]["checkpoint"] == str(tiny_checkpoint)  # the run's newest checkpoint
    ev = card["evaluation"]
    assert ev["id_test_map"] == pytest.approx(result["map"])
    assert ev["table3_row"]["ood_letters"]["fpr95"] == pytest.approx(result["scores"]["jointenergy"]["ood_letters"]["fpr95"])
    assert card["method"]["loss"] == "edge" and card["method"]["loss_params"]["k"] == cfg.loss.k
    md = (out / "model_card.md").read_text()
    assert "| edge | jointenergy |" in md and f"{100 * result['map']:.1f}" in md


def test_exported_threshold_keeps_95_percent_of_id_val(exported, tiny_shards):
    """Predicted on the raw id_val images, the exported threshold keeps 95% of them (up to one
    image): it lies strictly between the lowest kept score and the next lower one (a
    brute-force search over the scores), so scores recomputed with float noise keep the same
    images."""
    out, res = exported
    det = Detector.load(str(out))
    scores = det.predict(id_images(tiny_shards / "id_val").values()).scores
    n, t = len(scores), det.threshold
    kept = np.mean(scores >= t)
    assert abs(kept - 0.95) <= 1 / n and kept >= 0.95
    assert kept == pytest.approx(res["threshold"]["tpr_on_id_val"])
    best = max(s for s in scores if np.sum(scores >= s) >= 0.95 * n)
    lower = max(s for s in scores if s < best)
    assert lower < t < best
    noise = np.random.default_rng(0).uniform(-1e-7, 1e-7, n) * np.maximum(1, np.abs(scores))
    assert np.sum(scores + noise >= t) == np.sum(scores >= t)
    assert np.mean(det.predict(id_images(tiny_shards / "id_val").values()).is_unknown) == pytest.approx(1 - kept)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_every_kind_of_image_gives_the_same_prediction(exported, tmp_path):
    det = Detector.load(str(exported[0]))
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    (tmp_path / "a.png").write_bytes(png(rgb))
    arr = np.array(rgb)  # a writable copy
    kinds = [png(rgb), rgb, str(tmp_path / "a.png"), tmp_path / "a.png", arr, torch.from_numpy(arr).permute(2, 0, 1)]
    out = det.predict(kinds)
    assert np.ptp(out.scores) == 0 and np.ptp(out.probabilities, axis=0).max() == 0
    grey = Image.fromarray(arr[..., 0])
    both = det.predict([grey, grey.convert("RGB"), arr[..., 0]])
    assert np.ptp(both.scores) == 0
    assert out.rows()[0]["labels"] == out.labels[0] and out.rows()[0]["error"] is None


def test_pixels_equal_the_evaluation_loaders_when_shrinking(exported):
    """A detector sees an image as `evaluate` does: bytes larger than the model's input (PNG,
    JPEG big enough for the draft decode, grey, RGBA) give the reader's decode stage's pixels
    exactly, not PIL's resize (which differs by a level here and there when shrinking)."""
    from edge_ray.data.streams import decode_batch
    from edge_ray.data.records import Record
    from edge_ray.detector import to_pixels

    det = Detector.load(str(exported[0]))
    size = det.transform.image_size
    rng = np.random.default_rng(7)
    differs_from_pil = 0
    for i, (h, w, fmt, mode) in enumerate([(90, 70, "PNG", "RGB"), (41, 57, "PNG", "L"), (64, 64, "PNG", "RGBA"),
                                            (200, 150, "JPEG", "RGB"), (97, 131, "JPEG", "L")]):
        smooth = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 4), dtype=np.uint8)
        img = Image.fromarray(smooth).resize((w, h), Image.BILINEAR)  # smooth, so a shrink is not all noise
        img = img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, fmt)
        data = buf.getvalue()
        rec = Record(key=f"k{i}", ext="png" if fmt == "PNG" else "jpg", data=data, labels=(), shard="s")
        want = decode_batch([rec], det.transform, None)[0].permute(1, 2, 0).numpy()
        got = to_pixels(data, det.transform)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=f"{fmt} {mode} {h}x{w}")
        pil = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=None))
        differs_from_pil += int((pil != want).any())
    assert differs_from_pil  # the shrink is exercised: PIL's own resize would not pass the test above


def test_bad_images_raise_or_become_error_rows(exported):
    det = Detector.load(str(exported[0]))
    good = png(Image.new("RGB", (32, 32), (200, 10, 10)))
    with pytest.raises(ValueError, match="image 1: corrupt or truncated image"):
        det.predict([good, truncated_jpeg()])
    out = det.predict([good, truncated_jpeg(), b"", b"hello", np.zeros((4, 4), np.float32)], on_error="record")
    assert out.errors[0] is None and np.isfinite(out.scores[0])
    assert out.errors[1].startswith("corrupt or truncated image")
    assert out.errors[2:] == ["empty file (0 bytes)", "not a JPEG, PNG or WebP image",
                              "image arrays must be uint8 (0..255), got float32"]
    assert np.isnan(out.scores[1:]).all() and not out.is_unknown[1:].any() and not out.predicted[1:].any()
    assert [r["score"] for r in out.rows()[1:]] == [None] * 4
    alone = det.predict([good])  # a bad neighbour changes nothing
    assert alone.scores[0] == out.scores[0]


def test_labels_follow_the_label_thresholds(exported):
    det = Detector.load(str(exported[0]))
    probs = np.array([[0.2, 0.5, 0.9, 0.1, 0.6, 0.49, 0.51]])
    assert det.decide(probs, np.array([det.threshold])).labels == [["digit1", "digit2", "digit4", "digit6"]]
    det.label_thresholds = np.array([0.1, 0.6, 0.95, 0.1, 0.6, 0.4, 0.9])
    out = det.decide(probs, np.array([det.threshold - 1]))
    assert out.labels == [["digit0", "digit3", "digit4", "digit5"]] and out.is_unknown.tolist() == [True]


def test_a_folder_of_another_format_version_is_refused(exported, tmp_path):
    folder = tmp_path / "v2"
    shutil.copytree(exported[0], folder)
    manifest = json.loads((folder / "detector.json").read_text())
    (folder / "detector.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=rf"format version {FORMAT_VERSION + 1} .*reads version {FORMAT_VERSION} only"):
        Detector.load(str(folder))
    (folder / "detector.json").write_text(json.dumps(manifest))
    Detector.load(str(folder))  # the copy itself is fine
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="checksum"):
        Detector.load(str(folder))
    with pytest.raises(FileNotFoundError, match="not a detector folder"):
        Detector.load(str(tmp_path))


def test_export_errors_are_one_line(tiny_checkpoint, exported, tmp_path, capsys):
    from tests.test_eval_cli import one_line_error

    out = exported[0]
    one_line_error(capsys, ["export", "--checkpoint", tiny_checkpoint, "--out", out], "already holds a detector")
    one_line_error(capsys, ["export", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "x", "--score", "jointenergi"],
                   "valid names: maxlogit")
    one_line_error(capsys, ["export", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "x", "--tpr", "95"],
                   "--tpr must lie in (0, 1]")
    one_line_error(capsys, ["export", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "x",
                            "--label-thresholds", "best"], "val-f1")
    one_line_error(capsys, ["export", "--checkpoint", tmp_path, "--out", tmp_path / "x"], "nor a run folder")
    assert not (tmp_path / "x").exists()


def test_export_to_object_storage_with_f1_label_thresholds(tiny_checkpoint, exported, bucket):
    """An s3:// folder (a real S3 server), val-f1 label thresholds, a stateful score."""
    res = export_detector(str(tiny_checkpoint), f"{bucket}/models/vim", score="vim", label_thresholds="val-f1",
                          table=False)
    det = Detector.load(f"{bucket}/models/vim")
    assert read_manifest(f"{bucket}/models/vim")["score"]["state"] == "score_state.safetensors"
    assert res["card"]["evaluation"]["table3_row"] is None and det.threshold == res["threshold"]["value"]
    assert det.label_thresholds.tolist() == list(res["card"]["label_thresholds"]["values"].values())
    assert not np.allclose(det.label_thresholds, 0.5)
    img = png(Image.new("RGB", (32, 32), (0, 0, 0)))
    assert np.isfinite(det.predict([img]).scores).all()


def test_scores_without_a_fit_never_read_the_id_training_images(tiny_checkpoint, tmp_path):
    """MaxEnergy / JointEnergy need no ID training features, so evaluate() reads none: with
    the training set's tars damaged (its index kept) it gives the same numbers; a score
    fitted on training features (Mahalanobis) still reads them and fails on the damage."""
    model, cfg, _ = load_trained(tiny_checkpoint)
    bare = tmp_path / "id_train"
    bare.mkdir()
    for f in Path(cfg.data.id_train).iterdir():  # the index as it is, every tar damaged
        if f.name.endswith(".tar"):
            (bare / f.name).write_bytes(b"not a tar" * 100)
        else:
            shutil.copy(f, bare / f.name)
    full = evaluate(model, open_sets(cfg.data.id_train, cfg.data.id_test, list(cfg.data.ood)),
                    ["maxenergy", "jointenergy"], eval_options(cfg))
    sets = open_sets(str(bare), cfg.data.id_test, list(cfg.data.ood))
    again = evaluate(model, sets, ["maxenergy", "jointenergy"], eval_options(cfg))
    assert again["scores"] == full["scores"] and again["map"] == full["map"]
    assert again["class_counts"] == full["class_counts"]
    with pytest.raises(ValueError, match="id_train-000000.tar"):
        evaluate(model, sets, ["mahalanobis"], eval_options(cfg))
