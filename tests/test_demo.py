"""The README's main command, end to end at its quick size: shards, BCE on Ray Train, OE
ranking on the task pool, EDGE, every score, and the files a user is told to open."""
import json

import pytest
from PIL import Image

import launch

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end(ray_local, tmp_path, capsys):
    out = tmp_path / "results"
    assert launch.main(["demo", "--quick", "--out", str(out), "--data", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "FPR95 / AUROC" in printed and f"results: {out / 'results.json'}" in printed
    from benchmarks.floor import parse_demo_log  # the floor benchmark reads the demo's own timings

    timings = parse_demo_log(printed)
    assert set(timings["trainings"]) == {"bce", "edge"} and timings["finished_s"] > 0
    assert all(t["wall_s"] > 0 for t in timings["trainings"].values())
    payload = json.loads((out / "results.json").read_text())
    results = payload["results"]
    assert set(results) == {"bce", "edge"}
    assert len(results["bce"]["scores"]) == 11 and set(results["edge"]["scores"])  # every score, KNN included == {"maxenergy", "jointenergy"}
    ranking = payload["oe_ranking"]
    assert len(ranking) == 4 and payload["oe_used"] == ranking[0]["candidate"]
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4]
    assert all(a["distance"] <= b["distance"] for a, b in zip(ranking, ranking[1:]))
    assert "| edge | jointenergy |" in (out / "table.md").read_text()
    for name in ("energy_hist_bce.png", "energy_hist_edge.png", "head_tail_jointenergy.png"):
        with Image.open(out / name) as im:
            im.verify()
