"""compare's planning without Ray: method names, the runs it plans, when a finished run is
reused, EDGE's values from a tune search, and how many runs fit at once."""
import csv

import pytest
import yaml

from edge_ray.config import ConfigError, load_config
from edge_ray.compare.ray_compare import slots
from edge_ray.compare.ray_runs import load_finished, params_from_study, parse_methods, parse_studies, plan, save_run


def test_method_spellings():
    assert parse_methods(["bce", "OE", "energyoe", "edge"]) == ["bce", "oe", "energy_oe", "edge"]
    assert parse_methods(["energy-oe", "edge"]) == ["energy_oe", "edge"]
    assert parse_methods(["EnergyOE", "HendrycksOE"]) == ["energy_oe", "hendrycks_oe"]
    with pytest.raises(ConfigError, match="did you mean 'energy_oe'"):
        parse_methods(["edge", "energy0e"])
    with pytest.raises(ConfigError, match="names edge twice"):
        parse_methods(["edge", "EDGE"])


def _base(tmp_path, *extra):
    return load_config(None, [f"train.storage_path={tmp_path}", "data.batch_size=32", "loss.k=8", *extra])


def test_plan_names_oe_recipes_and_edge_values(tmp_path):
    runs = plan(_base(tmp_path), ["bce", "oe", "edge"], range(3), "/data/oe_letters",
                {"edge": {"loss.m": 4, "loss.beta": 0.01}})
    assert [r.name for r in runs[:3]] == ["compare-bce-seed0", "compare-bce-seed1", "compare-bce-seed2"]
    assert len(runs) == 9 and [r.cfg.train.seed for r in runs] == [0, 1, 2] * 3
    by = {r.name: r.cfg for r in runs}
    assert by["compare-bce-seed0"].data.oe == "" and by["compare-oe-seed0"].data.oe == "/data/oe_letters"
    assert by["compare-bce-seed1"].train.optimizer == "adam" and by["compare-edge-seed1"].train.optimizer == "sgd"
    assert (by["compare-edge-seed2"].loss.m, by["compare-edge-seed2"].loss.beta) == (4.0, 0.01)
    assert by["compare-oe-seed2"].loss.m == 1.0                     # tuned values are EDGE's only
    assert runs[0].results_path == str(tmp_path / "compare-bce-seed0" / "results.json")


def test_a_finished_run_is_reused_only_for_the_same_config_and_scores(tmp_path):
    run = plan(_base(tmp_path), ["bce", "edge"], [0], "/data/oe")[1]
    assert load_finished(run, ["jointenergy"]) is None
    save_run(run, {"config": run.cfg.to_dict(), "result": {"scores": {"jointenergy": {}, "msp": {}}}})
    assert load_finished(run, ["jointenergy", "msp"])["config"] == run.cfg.to_dict()
    assert load_finished(run, ["jointenergy", "vim"]) is None       # a new score: evaluate again
    longer = plan(_base(tmp_path, "train.epochs=30"), ["bce", "edge"], [0], "/data/oe")[1]
    assert longer.name == run.name and load_finished(longer, ["jointenergy"]) is None


def _search(tmp_path, metrics, modes, rows, space=None):
    folder = tmp_path / "tune" / "s1"
    folder.mkdir(parents=True)
    space = space or {"loss.beta": {"choice": [0.1, 0.01]}, "loss.m": {"uniform": [0, 5]}}
    (folder / "search.yaml").write_text(yaml.safe_dump({"name": "s1", "space": space, "metrics": metrics,
                                                        "modes": modes}))
    # as tune writes it: every validation metric reported, the objective(s) among them
    cols = ["trial", "status", "epochs", *space, *dict.fromkeys([*metrics, "val_fpr95", "val_auroc", "val_map"]),
            "seconds", "checkpoint", "error"]
    with open(folder / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return folder


def test_edge_values_from_the_best_pareto_trial(tmp_path):
    rows = [{"trial": "a", "status": "DONE", "loss.beta": 0.1, "loss.m": 1.5, "val_fpr95": 0.30, "val_map": 0.90},
            {"trial": "b", "status": "DONE", "loss.beta": 0.01, "loss.m": 4.0, "val_fpr95": 0.20, "val_map": 0.80},
            {"trial": "c", "status": "DONE", "loss.beta": 0.1, "loss.m": 3.0, "val_fpr95": 0.25, "val_map": 0.70},
            {"trial": "d", "status": "STOPPED", "loss.beta": 0.1, "loss.m": 0.5, "val_fpr95": 0.01, "val_map": 0.99}]
    folder = _search(tmp_path, ["val_fpr95", "val_map"], ["min", "max"], rows)
    params, text = params_from_study(str(folder), "edge")
    assert params == {"loss.beta": 0.01, "loss.m": 4.0}            # b: on the front, lowest val_fpr95
    assert "trial b of search 's1'" in text and "Pareto" in text
    single = _search(tmp_path / "x", ["val_map"], ["max"], rows)
    assert params_from_study(str(single), "edge")[0] == {"loss.beta": 0.1, "loss.m": 1.5}   # a; d was stopped early
    empty = _search(tmp_path / "y", ["val_map"], ["max"], [])
    with pytest.raises(ConfigError, match="no finished trial"):
        params_from_study(str(empty), "edge")


def test_a_tie_on_the_objective_goes_to_the_other_validation_metrics(tmp_path):
    """The README's study: 7 of 8 trials reached val_fpr95 0 on held-out OE. The tie goes to
    val_auroc, then val_map, never to the trial id's alphabetical order."""
    rows = [{"trial": "a1", "status": "DONE", "loss.m": 3, "val_fpr95": 0.0, "val_auroc": 0.9997, "val_map": 0.99},
            {"trial": "b2", "status": "DONE", "loss.m": 1, "val_fpr95": 0.0, "val_auroc": 1.0, "val_map": 0.9919},
            {"trial": "c3", "status": "DONE", "loss.m": 5, "val_fpr95": 0.0, "val_auroc": 1.0, "val_map": 0.9977},
            {"trial": "d4", "status": "DONE", "loss.m": 4, "val_fpr95": 0.007, "val_auroc": 1.0, "val_map": 0.999}]
    folder = _search(tmp_path, ["val_fpr95"], ["min"], rows, space={"loss.m": {"choice": [1, 3, 4, 5]}})
    params, text = params_from_study(str(folder), "edge")
    assert params == {"loss.m": 5} and "trial c3" in text
    from edge_ray.tune.report import sort_rows
    assert [r["trial"] for r in sort_rows(rows, "val_fpr95", "min")] == ["c3", "b2", "a1", "d4"]
    assert [r["trial"] for r in sort_rows(rows, "val_map", "max")] == ["d4", "c3", "b2", "a1"]


def test_each_method_from_its_own_study(tmp_path):
    """Issue 33: `--from-study oe=DIR edge=DIR`: each method's best trial, applied to its runs
    only; a study of another method's loss keys is refused; the words after the flag that
    are overrides stay overrides."""
    edge_rows = [{"trial": "e1", "status": "DONE", "loss.beta": 0.01, "loss.m": 4.0, "val_fpr95": 0.2}]
    oe_rows = [{"trial": "o1", "status": "DONE", "loss.alpha": 0.1, "val_fpr95": 0.3},
               {"trial": "o2", "status": "DONE", "loss.alpha": 10, "val_fpr95": 0.1}]
    edge = _search(tmp_path / "e", ["val_fpr95"], ["min"], edge_rows)
    oe = _search(tmp_path / "o", ["val_fpr95"], ["min"], oe_rows, space={"loss.alpha": {"choice": [10, 1, 0.1]}})
    studies, overrides = parse_studies([f"oe={oe}", f"EDGE={edge}", "train.epochs=3"], None, ["bce", "oe", "edge"])
    assert studies == {"oe": str(oe), "edge": str(edge)} and overrides == ["train.epochs=3"]
    tuned = {m: params_from_study(w, m) for m, w in studies.items()}
    assert tuned["oe"][0] == {"loss.alpha": 10} and "trial o2 of search 's1'" in tuned["oe"][1]
    runs = plan(_base(tmp_path), ["bce", "oe", "edge"], [0, 1], "/data/oe", {m: v for m, (v, _) in tuned.items()})
    by = {r.name: r.cfg.loss for r in runs}
    assert by["compare-oe-seed1"].alpha == 10 and by["compare-edge-seed1"].alpha == 1.0   # each its own values
    assert (by["compare-edge-seed0"].beta, by["compare-edge-seed0"].m) == (0.01, 4.0) and by["compare-oe-seed0"].m == 1.0
    assert by["compare-bce-seed0"].alpha == 1.0
    with pytest.raises(ConfigError, match="the search tuned loss.beta, loss.m, which OE does not use"):
        params_from_study(str(edge), "oe")
    with pytest.raises(ConfigError, match="--from-study names energy_oe, which --methods does not compare"):
        parse_studies([f"energyoe={oe}"], None, ["oe", "edge"])
    with pytest.raises(ConfigError, match="both name EDGE's study"):
        parse_studies([f"edge={edge}"], str(edge), ["oe", "edge"])
    with pytest.raises(ConfigError, match="takes METHOD=TUNE_OUT"):
        parse_studies(["oe"], None, ["oe", "edge"])
    assert parse_studies(None, str(edge), ["oe", "edge"]) == ({"edge": str(edge)}, [])


def test_slots_from_cluster_resources(tmp_path):
    cfg = _base(tmp_path, "train.cpus_per_worker=0.5")
    assert slots(cfg, {"CPU": 2.0}, 0, 20) == 4 and slots(cfg, {"CPU": 2.0}, 0, 3) == 3
    assert slots(cfg, {"CPU": 2.0}, 1, 20) == 1
    gpu = _base(tmp_path, "train.use_gpu=true", "train.gpus_per_worker=0.25", "train.cpus_per_worker=1")
    assert slots(gpu, {"CPU": 32.0, "GPU": 2.0}, 0, 20) == 8
    with pytest.raises(ConfigError, match="needs 1 GPU but the Ray cluster has 0"):
        slots(_base(tmp_path, "train.use_gpu=true"), {"CPU": 8.0}, 0, 4)


def test_gpu_fractions_need_one_worker(tmp_path):
    from edge_ray.compare.ray_compare import _resources

    cfg = _base(tmp_path, "train.num_workers=4")
    assert _resources(cfg, 2.0, None).train.cpus_per_worker == 0.5
    assert _resources(cfg, None, 4).train.gpus_per_worker == 1.0
    with pytest.raises(ConfigError, match="needs train.num_workers=1"):
        _resources(cfg, None, 0.5)
    one = _resources(_base(tmp_path, "train.num_workers=1"), None, 0.5).train
    assert one.use_gpu and one.gpus_per_worker == 0.5
