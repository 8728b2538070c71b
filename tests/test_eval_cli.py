"""`launch.py eval` on a checkpoint and fixture shard sets: every output, and the errors."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

ALL = ["maxlogit", "msp", "odin", "energy", "mahalanobis", "react", "vim", "ash", "maxenergy", "jointenergy", "knn"]


def _eval(*args):
    return subprocess.run([sys.executable, "launch.py", "eval", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_eval_writes_every_output(tiny_checkpoint, tiny_shards, tmp_path):
    out = tmp_path / "res"
    run = _eval("--checkpoint", tiny_checkpoint, "--out", out, "--name", "edge",
                "--ood", tiny_shards / "ood_letters", tiny_shards / "ood_blobs")
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())["results"]["edge"]
    assert set(res["scores"]) == set(ALL)
    for score in ALL:
        for name in ("ood_letters", "ood_blobs"):
            m = res["scores"][score][name]
            assert 0 <= m["fpr95"] <= 1 and 0 <= m["auroc"] <= 1 and m["curve"][0]["removed"] == 0
    assert 0 < res["map"] <= 1 and res["num_id_test"] == 160
    assert res["recipe"] == {"method": "edge", "optimizer": "adamw", "lr": 0.003, "momentum": 0.9,
                             "nesterov": False, "weight_decay": 0.0001, "schedule": "onecycle", "epochs": 2}
    table = (out / "table.md").read_text()
    for score in ALL:
        assert f"| edge | {score} |" in table
    assert (out / "table.csv").read_text().count("\n") == 1 + len(ALL)
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {"energy_hist_edge.png", "head_tail_jointenergy.png"}
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
    assert (out / "scorers_edge.npz").is_file()


def test_eval_subset_of_scores(tiny_checkpoint, tiny_shards, tmp_path):
    run = _eval("--checkpoint", tiny_checkpoint, "--out", tmp_path, "--scores", "jointenergy", "vim",
                "--ood", tiny_shards / "ood_scribble")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| model |")]
    assert len(rows) == 4  # two scores, in the overall and the tail-only table


def one_line_error(capsys, argv, pattern):
    """launch.main in-process: exit code 2 and one stderr line naming the problem."""
    import launch

    with pytest.raises(SystemExit) as exit_info:
        sys.exit(launch.main([str(a) for a in argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert pattern in err, err


def test_eval_bad_inputs(tiny_checkpoint, tiny_shards, tmp_path, capsys):
    def _one_line_error(argv, pattern):
        one_line_error(capsys, ["eval", *argv], pattern)

    _one_line_error(("--checkpoint", tiny_checkpoint, "--ood", tiny_shards / "id_val"), "role 'id'")
    _one_line_error(("--checkpoint", tiny_checkpoint, "--scores", "maxlogitt"),
                    "valid names: maxlogit, msp, odin")
    _one_line_error(("--checkpoint", tmp_path), "is neither a training checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "index.json").write_text(json.dumps({"name": "empty", "role": "ood", "classes": [],
                                                  "num_samples": 0, "shards": [], "label_counts": []}))
    _one_line_error(("--checkpoint", tiny_checkpoint, "--ood", empty), "empty")
    other = _other_classes(tiny_shards, tmp_path)
    _one_line_error(("--checkpoint", tiny_checkpoint, "--id-test", other, "--ood", tiny_shards / "ood_blobs"),
                    "different class list")


def _other_classes(tiny_shards, tmp_path):
    """An ID set whose class list differs from the checkpoint's."""
    from shards.plan import Item
    from shards.writer import convert

    src = sorted((tiny_shards / "ood_blobs").glob("*.tar"))[0]
    import tarfile
    with tarfile.open(src) as tar:
        pngs = [m for m in tar.getmembers() if m.name.endswith(".png")][:4]
        items = [Item(key=f"s{i}", source=m.name, labels=(i % 2,), data=tar.extractfile(m).read())
                 for i, m in enumerate(pngs)]
    out = tmp_path / "other"
    convert(items, out, name="other", role="id", classes=("cat", "dog"), progress=False)
    return out
