"""Issue 33: the README's tuned study as a chain of the project's own commands, small.

Two searches on the tiny benchmark (EDGE over the paper's grid, OE over its weight; 2 trials
of one epoch each, the same held-out objective) -> `compare --from-study oe=... edge=...`
with 2 seeds. The values each method's runs train with must be the best trial of its own
study as the study's SQLite record (Optuna) has it, printed and kept in results.json."""
import json
from pathlib import Path

import optuna
import pytest

import launch
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _tune(shards, tmp_path, name: str, space: str, *extra) -> Path:
    out = tmp_path / name
    over = tiny_overrides(shards, tmp_path / "runs", **{"train.epochs": 1, "data.oe_val": shards / "oe_letters_val"})
    rc = launch.main(["tune", "--config", TINY, "--space", str(ROOT / "tuning" / space), "--trials", "2",
                      "--name", name, "--out", str(out), "--cpus-per-trial", "0.5", "--no-tracking", *over, *extra])
    assert rc == 0
    return out


def _best(out: Path, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    return study.best_trial.params


def test_two_studies_feed_a_two_seed_compare(ray_local, tiny_shards, tmp_path, capsys):
    edge = _tune(tiny_shards, tmp_path, "chain-edge", "paper_grid.yaml")
    oe = _tune(tiny_shards, tmp_path, "chain-oe", "oe.yaml", "loss.method=oe")
    best = {"edge": _best(edge, "chain-edge"), "oe": _best(oe, "chain-oe")}
    assert set(best["edge"]) == {"loss.alpha", "loss.beta", "loss.m", "loss.k", "loss.tau"}
    assert set(best["oe"]) == {"loss.alpha"}
    capsys.readouterr()

    out = tmp_path / "compare"
    rc = launch.main(["compare", "--data", str(tiny_shards), "--out", str(out), "--methods", "oe", "edge",
                      "--seeds", "2", "--cpus-per-run", "0.5", "--max-concurrent", "2", "--scores", "jointenergy",
                      "--no-tracking", "--from-study", f"oe={oe}", f"edge={edge}", "train.epochs=1"])
    printed = capsys.readouterr().out
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    for method in ("oe", "edge"):
        assert results["tuned"][method]["params"] == best[method]
        shown = ", ".join(f"{k}={v}" for k, v in best[method].items())
        assert shown in results["tuned"][method]["source"] and shown in printed
        for seed in (0, 1):  # what each run trained with, from its own record
            record = json.loads((out / "runs" / f"compare-{method}-seed{seed}" / "results.json").read_text())
            loss = record["config"]["loss"]
            assert loss["method"] == method
            for key, value in best[method].items():
                assert loss[key.split(".", 1)[1]] == pytest.approx(value), (method, key)
    # OE's runs keep the config's EDGE-only values: the EDGE study's values went to EDGE alone
    oe_loss = json.loads((out / "runs" / "compare-oe-seed0" / "results.json").read_text())["config"]["loss"]
    edge_loss = json.loads((out / "runs" / "compare-edge-seed0" / "results.json").read_text())["config"]["loss"]
    assert oe_loss["alpha"] == pytest.approx(best["oe"]["loss.alpha"])
    assert edge_loss["alpha"] == pytest.approx(best["edge"]["loss.alpha"])
