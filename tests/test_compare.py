"""`launch.py compare` end to end on a local Ray: 2 methods x 2 seeds on the tiny embedded
benchmark, one epoch each; the tables must equal what the per-run results files give, the
recipes must reach the optimiser, and a rerun must reuse every finished run."""
import csv
import json
import statistics
import time

import pytest
import torch
from PIL import Image

import launch
from edge_ray.compare.report import pm
from tests.conftest import tiny_overrides
from tests.test_eval_cli import one_line_error

pytestmark = pytest.mark.slow
METHODS, SEEDS = ("bce", "edge"), (0, 1)


def _argv(tiny_shards, out):
    # the paper recipes (Adam for BCE, SGD for EDGE) instead of the demo's one AdamW recipe
    return ["compare", "--data", str(tiny_shards), "--out", str(out), "--methods", *METHODS,
            "--seeds", str(len(SEEDS)), "--cpus-per-run", "0.5", "--max-concurrent", "2",
            "--scores", "jointenergy", "msp", "maxlogit",
            "train.epochs=1", "loss.tau=0", "data.loader_workers=0", "train.optimizer=null", "train.lr=null", "train.weight_decay=null"]


def _metric(result, row):
    if row["metric"] == "map":
        return result["map"]
    m = result["scores"][row["score"]][row["ood_set"]]
    m = m if row["part"] == "all" else m["tail"]
    return None if m is None else m[row["metric"]]


@pytest.fixture(scope="module")
def study(ray_local, tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    start = time.perf_counter()
    code = launch.main(_argv(tiny_shards, out))
    return out, code, time.perf_counter() - start


def test_tables_are_the_per_run_statistics(study):
    out, code, _ = study
    assert code == 0
    per_run = {(m, s): json.loads((out / "runs" / f"compare-{m}-seed{s}" / "results.json").read_text())
               for m in METHODS for s in SEEDS}
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == set(METHODS)
    assert {r["score"] for r in rows} == {"jointenergy", "msp", "maxlogit", ""}
    checked = 0
    for row in rows:
        values = [_metric(per_run[(row["method"], s)]["result"], row) for s in SEEDS]
        values = [100 * v for v in values if v is not None]
        assert int(row["n"]) == len(values)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-12)
        if len(values) > 1:
            assert float(row["std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)
        checked += 1
    assert checked == 2 * 3 * 6 * 2 * 3 + 2            # methods x scores x sets x parts x metrics + mAP
    md = (out / "table.md").read_text()
    je = [100 * per_run[("edge", s)]["result"]["scores"]["jointenergy"]["ood_letters"]["fpr95"] for s in SEEDS]
    edge_row = next(line for line in md.splitlines() if line.startswith("| EDGE |"))
    assert pm(statistics.fmean(je) / 100, statistics.stdev(je) / 100) in edge_row
    assert "| BCE | letters | 2 |" in md                  # EDGE vs BCE, paired over 2 seeds
    with Image.open(out / "compare_jointenergy.png") as im:
        im.verify()


def test_results_json_has_tests_recipes_and_runs(study):
    out, _, _ = study
    payload = json.loads((out / "results.json").read_text())
    assert payload["methods"] == list(METHODS) and payload["seeds"] == list(SEEDS)
    assert len(payload["runs"]) == 4 and payload["wall_seconds"] > 0 and not any(r["reused"] for r in payload["runs"])
    assert payload["run_seconds"] == pytest.approx(sum(r["train_seconds"] + r["eval_seconds"] for r in payload["runs"]))
    tests = [t for t in payload["tests"] if t["score"] == "jointenergy"]
    assert len(tests) == 6 * 2 and all(t["baseline"] == "bce" and t["n"] == 2 for t in tests)
    assert all(t["verdict"] in ("better", "worse", "noise") and 0 <= t["p_holm"] <= 1 for t in tests)
    assert payload["recipes"]["bce"]["optimizer"] == "adam" and payload["recipes"]["bce"]["lr"] == 1e-4
    assert payload["recipes"]["edge"]["optimizer"] == "sgd" and payload["recipes"]["edge"]["weight_decay"] == 1e-4


def test_the_recipe_reached_the_optimiser(study):
    out, _, _ = study
    for method, key in (("bce", "exp_avg"), ("edge", "momentum_buffer")):
        record = json.loads((out / "runs" / f"compare-{method}-seed0" / "results.json").read_text())
        assert record["config"]["loss"]["method"] == method
        state = torch.load(f"{record['checkpoint']}/state.pt", map_location="cpu", weights_only=False)
        assert key in next(iter(state["optimizer"]["state"].values())), method


def test_rerun_reuses_every_finished_run(study, tiny_shards, capsys):
    out, _, first = study
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}
    start = time.perf_counter()
    assert launch.main(_argv(tiny_shards, out)) == 0
    again = time.perf_counter() - start
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")} == before
    assert again < first / 2, (again, first)
    printed = capsys.readouterr().out
    assert "4 runs" in printed and "train " not in printed   # no run trained or evaluated again
    assert "4 of 4 runs reused" in printed
    assert all(r["reused"] for r in json.loads((out / "results.json").read_text())["runs"])


def test_bad_inputs_are_one_line(tiny_shards, tmp_path, capsys):
    base = ["compare", "--data", str(tiny_shards), "--out", str(tmp_path)]
    one_line_error(capsys, base + ["--methods", "edge"], "at least two methods")
    one_line_error(capsys, base + ["--methods", "edge", "energy0e"], "did you mean 'energy_oe'")
    one_line_error(capsys, base + ["--oe", "oe_nothing"], "choose one of oe_china, oe_digit7")
    one_line_error(capsys, base + ["--edge-from-study", str(tmp_path / "none")], "no search.yaml and trials.csv")
    one_line_error(capsys, base + ["--from-study", f"oe={tmp_path / 'none'}"], "error: --from-study oe=")
    one_line_error(capsys, base + ["--methods", "oe", "edge", "--from-study", f"bce={tmp_path}"],
                   "--from-study names bce, which --methods does not compare")
    one_line_error(capsys, base + ["--seeds", "0"], "--seeds must be >= 1")
    one_line_error(capsys, base + ["--config", "configs/tiny.yaml"], "--data choose the embedded benchmark")
    no_oe = tiny_overrides(tiny_shards, tmp_path, **{"data.oe": ""})
    one_line_error(capsys, ["compare", "--config", "configs/tiny.yaml", "--out", str(tmp_path), *no_oe,
                            "--methods", "bce", "oe"], "loss.method=oe needs outliers")
