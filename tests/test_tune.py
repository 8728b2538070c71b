"""Issue 7: Ray Tune + Optuna search over EDGE's hyper-parameters.

Two real searches on the tiny CPU config (one epoch per trial, fractional CPUs) and the
input checks that must fail before any trial starts.
"""
import csv
import os
import shlex
import signal
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml
from ray import tune

from edge_ray.config import ConfigError, load_config
from edge_ray.cli.commands import resume_hint
from edge_ray.tune.ray_tune import (SearchSettings, check_search, make_scheduler, make_settings,
                                       run_search, settings_from_args)
from edge_ray.tune.settings import concurrency, trial_base
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _settings(shards, tmp_path, name, *, space="tuning/continuous.yaml", trials=3, extra=None, **kw):
    over = tiny_overrides(shards, tmp_path / "runs", **{
        "train.epochs": 1, "data.oe_val": shards / "oe_digit7", **(extra or {})})
    return make_settings(str(ROOT / "configs/tiny.yaml"), str(ROOT / space), trials, overrides=over,
                         name=name, out=str(tmp_path / "out"), cpus_per_trial=0.25, **kw)


def _study(s: SearchSettings):
    return optuna.load_study(study_name=s.name, storage=s.storage)


@pytest.mark.slow
def test_search_writes_table_and_a_trainable_best_yaml(ray_local, tiny_shards, tmp_path):
    """3 trials of Optuna TPE + ASHA over TorchTrainer runs; outputs usable as they are."""
    from edge_ray.train.ray_trainer import run_training

    s = _settings(tiny_shards, tmp_path, "search3")
    res = run_search(s)
    assert res.complete and len(res.rows) == 3
    assert all(r["status"] == "DONE" for r in res.rows), res.rows
    # sorted by the objective (val_fpr95, min), the validation mAP beside it
    fprs = [r["val_fpr95"] for r in res.rows]
    assert fprs == sorted(fprs) and all(0 <= v <= 1 for v in fprs)
    assert all(0 <= r["val_map"] <= 1 for r in res.rows)
    out = Path(s.out)
    table = (out / "trials.md").read_text()
    assert "val_fpr95" in table and "loss.beta" in table and table.count("| DONE |") == 3
    with open(out / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (out / "objective.png").stat().st_size > 0

    # The Optuna study is an ordinary SQLite study: three finished trials, best = table's best.
    study = _study(s)
    assert s.storage.startswith("sqlite:///") and Path(out / "study.db").is_file()
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3
    assert study.best_value == pytest.approx(res.best["val_fpr95"])
    assert set(study.best_params) == {"loss.alpha", "loss.beta", "loss.m", "loss.k", "loss.tau"}

    # best.yaml = the base config with the best values; `launch.py train` takes it unchanged.
    best = load_config(out / "best.yaml")
    for key in ("alpha", "beta", "m", "k", "tau"):
        assert getattr(best.loss, key) == pytest.approx(res.best[f"loss.{key}"])
    # trial resources (--cpus-per-trial 0.25) stay out of it: the base config's 0.5 CPU per worker
    assert best.train.cpus_per_worker == 0.5 and best.data.oe_val == s.base().data.oe_val
    handler = signal.getsignal(signal.SIGINT)
    try:
        summary = run_training(best)  # one epoch, as the search's trials
    finally:  # Train V2 installs its own Ctrl+C handler in the main thread and leaves it there
        signal.signal(signal.SIGINT, handler)
    assert summary.checkpoint_dir and summary.history[-1]["epoch"] == 1


class InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C, deterministically: SIGINT once the first trial has finished. Tune's handler
    ends the run gracefully and saves the experiment state. The marker file makes it fire
    once (Tune saves callbacks with the experiment, so this one comes back on resume)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if os.path.exists(self.marker):
            return
        Path(self.marker).write_text(trial.trial_id)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            raise RuntimeError("Tune's SIGINT handler is not installed; cannot interrupt safely")
        signal.raise_signal(signal.SIGINT)


@pytest.mark.slow
def test_interrupted_search_resumes_without_rerunning_finished_trials(ray_local, tiny_shards, tmp_path):
    """Interrupt after trial 1, then `--resume`: trial 1 is kept as is, trial 2 runs, and the
    two-objective study (val_fpr95 min, val_map max) yields the Pareto front."""
    s = _settings(tiny_shards, tmp_path, "resume2", trials=2, multi_objective=True, max_concurrent=1)
    marker = tmp_path / "interrupted"
    first = run_search(s, callbacks=[InterruptAfterFirstTrial(marker)])
    done = [r for r in first.rows if r["status"] == "DONE"]
    assert not first.complete and len(done) == 1
    kept = done[0]
    assert kept["trial"] == marker.read_text()

    args = _args(resume=True, name=s.name, out=s.out)
    # what launch.py prints when Ctrl-C comes before Tune's own handler (e.g. while restoring)
    hint = resume_hint(_args(command="tune", argv=["tune", "--resume", "--name", s.name], resume=True,
                             name=s.name, out=s.out))
    assert hint.endswith(f"python launch.py tune --resume --name {s.name} --out {s.out}"), hint
    resumed = run_search(settings_from_args(args), resume=True)
    assert resumed.complete and len(resumed.rows) == 2
    assert all(r["status"] == "DONE" for r in resumed.rows)
    again = next(r for r in resumed.rows if r["trial"] == kept["trial"])
    assert again["seconds"] == kept["seconds"] and again["val_fpr95"] == kept["val_fpr95"]
    # trial 1 reported once: its Train run was not started again
    trial_dirs = list((tmp_path / "runs" / s.name).glob(f"*{kept['trial']}*/result.json"))
    assert len(trial_dirs) == 1 and len(trial_dirs[0].read_text().splitlines()) == 1
    study = _study(s)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 2
    assert len(study.trials) == 2 and study.directions[1] == optuna.study.StudyDirection.MAXIMIZE
    pareto = (Path(s.out) / "pareto.md").read_text()
    assert len(study.best_trials) == sum(1 for line in pareto.splitlines() if "| DONE |" in line)


class CtrlCBeforeTheFirstTrial(tune.Callback):
    """Ctrl-C while Tune sets the experiment up, before its SIGINT handler or any saved state:
    Python raises KeyboardInterrupt wherever the main thread is."""

    def setup(self, **info):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_trials_stopped_early_give_their_cpus_back(tiny_shards, tmp_path):
    """ASHA stops trials on a full machine: each stopped trial's Train run must free its
    workers' CPUs for the next trial. Before, Ray Train's cleaner could not ask a Ray without
    a dashboard whether the stopped run's controller had died, kept its placement group, and
    the next trials waited for CPUs forever (a 12-trial search on 2 CPUs hung after 3).
    `launch.py tune` as typed, in its own local Ray of 2 CPUs, two 1-CPU trials at a time."""
    import subprocess
    import sys

    over = tiny_overrides(tiny_shards, tmp_path / "runs", **{"train.epochs": 2, "data.oe_val": tiny_shards / "oe_letters_val"})
    cmd = [sys.executable, str(ROOT / "launch.py"), "tune", "--config", str(ROOT / "configs/tiny.yaml"),
           "--space", str(ROOT / "tuning/continuous.yaml"), "--trials", "5", "--name", "full", "--out",
           str(tmp_path / "out"), "--cpus-per-trial", "1", "--grace-epochs", "1", "--reduction-factor", "2",
           "--no-tracking", *over]
    env = {**os.environ, "RAY_ADDRESS": "", "EDGE_RAY_NUM_CPUS": "2"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "trials.csv")))
    assert len(rows) == 5 and {r["status"] for r in rows} <= {"DONE", "STOPPED"}
    assert "STOPPED" in {r["status"] for r in rows}   # ASHA did stop some: the case under test
    assert "WorkerGroupStartupTimeoutError" not in done.stdout + done.stderr


@pytest.mark.slow
def test_ctrl_c_before_the_search_started_leaves_nothing_in_the_way(ray_local, tiny_shards, tmp_path):
    """An interrupted start leaves neither search.yaml nor an Optuna study behind (with them,
    `--resume` finds no experiment and the same command finds the study taken); the hint says
    to run the command again, and that command then runs."""
    s = _settings(tiny_shards, tmp_path, "early", trials=1)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_search(s, callbacks=[CtrlCBeforeTheFirstTrial()])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not (Path(s.out) / "search.yaml").exists()
    assert s.name not in optuna.study.get_all_study_names(storage=s.storage)
    argv = ["tune", "--config", "c.yaml", "--space", "s.yaml", "--trials", "1", "--name", s.name]
    over = tiny_overrides(tiny_shards, tmp_path / "runs", **{"train.epochs": 1,
                                                              "data.oe_val": tiny_shards / "oe_digit7"})
    hint = resume_hint(_args(command="tune", argv=argv, config=str(ROOT / "configs/tiny.yaml"),
                             space=str(ROOT / "tuning/continuous.yaml"), trials=1, overrides=over,
                             name=s.name, out=s.out, cpus_per_trial=0.25))
    assert "had not started" in hint and hint.endswith(shlex.join(["python", "launch.py", *argv])), hint
    res = run_search(s)
    assert res.complete and [r["status"] for r in res.rows] == ["DONE"]


def _args(**kw):
    from argparse import Namespace
    base = dict(config=None, space=None, trials=None, overrides=[], metric="val_fpr95", mode="min",
                multi_objective=False, storage=None, name=None, out=None, resume=False,
                max_concurrent=0, cpus_per_trial=None, gpus_per_trial=None, seed=0, address=None,
                grace_epochs=1, reduction_factor=4)
    return Namespace(**{**base, **kw})


def _space(tmp_path, entries: dict) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(entries))
    return str(path)


@pytest.mark.parametrize("entries, message", [
    ({"loss.alpah": {"choice": [1, 0.1]}}, "did you mean 'loss.alpha'"),
    ({"loss.beta": {"choice": []}}, "choice list is empty"),
    ({"loss.beta": {"loguniform": [1, 1]}}, "empty range"),
    ({"loss.k": {"randint": [8, 8]}}, "empty range"),
    ({"loss.k": {"uniform": [4, 16]}}, "loss.k is an integer"),
    ({"loss.k": {"choice": [8, 64]}}, "larger than the per-rank ID batch"),
    ({"loss.m": {"normal": [0, 1]}}, "write one of choice, uniform"),
    ({"data.oe_val": {"choice": ["a", "b"]}}, "data sets cannot be tuned"),
    ({"data.crop_scale": {"choice": [[0.5, 1.0], [0.8, 1.0]]}}, "choices must be plain values"),
])
def test_bad_space_fails_before_any_trial(tiny_shards, tmp_path, entries, message):
    s = _settings(tiny_shards, tmp_path, "bad", space=_space(tmp_path, entries))
    with pytest.raises(ConfigError, match=message):
        check_search(s)


@pytest.mark.parametrize("metric, extra, message", [
    ("val_fpr", {}, "did you mean 'val_fpr95'"),
    ("val_auroc", {"data.oe_val": ""}, "needs data.id_val and data.oe_val .*data.oe_val is empty"),
    ("val_map", {"data.id_val": ""}, "needs data.id_val in the config"),
    ("val_fpr95", {"train.val_every": 2}, "train.val_every=1"),
])
def test_unreported_metric_fails_before_any_trial(tiny_shards, tmp_path, metric, extra, message):
    s = _settings(tiny_shards, tmp_path, "bad", metric=metric, extra=extra)
    with pytest.raises(ConfigError, match=message):
        check_search(s)


@pytest.mark.parametrize("oe_val, message", [
    ("ood_letters", "is one of the test OOD sets"),
    ("oe_letters", "equals data.oe"),
])
def test_test_leakage_is_refused(tiny_shards, tmp_path, oe_val, message):
    s = _settings(tiny_shards, tmp_path, "leak", extra={"data.oe_val": tiny_shards / oe_val})
    with pytest.raises(ConfigError, match=message):
        check_search(s)


def test_cli_settings_and_resume_checks(tiny_shards, tmp_path):
    """`tune` without its required flags, and `--resume` with nothing saved or other settings."""
    with pytest.raises(ConfigError, match="needs --config, --space and --trials"):
        settings_from_args(_args(config="configs/tiny.yaml"))
    with pytest.raises(ConfigError, match="nothing to resume"):
        settings_from_args(_args(resume=True, name="nope", out=str(tmp_path / "nope")))
    s = _settings(tiny_shards, tmp_path, "saved")
    Path(s.out).mkdir(parents=True)
    (Path(s.out) / "search.yaml").write_text(yaml.safe_dump(s.to_dict()))
    assert settings_from_args(_args(resume=True, name="saved", out=s.out)) == s
    with pytest.raises(ConfigError, match="trials differ"):
        settings_from_args(_args(resume=True, config=str(ROOT / "configs/tiny.yaml"),
                                 space=str(ROOT / "tuning/continuous.yaml"), trials=9,
                                 overrides=tiny_overrides(tiny_shards, tmp_path / "runs", **{
                                     "train.epochs": 1, "data.oe_val": tiny_shards / "oe_digit7"}),
                                 name="saved", out=s.out, cpus_per_trial=0.25))


def test_space_files_fit_the_shipped_configs():
    from edge_ray.tune.space import build_space, read_space
    for config in ("tiny", "voc", "coco", "nuswide", "study"):
        cfg = load_config(ROOT / f"configs/{config}.yaml")
        for space in ("paper_grid", "continuous"):
            dists, _ = build_space(read_space(ROOT / f"tuning/{space}.yaml"), cfg)
            assert {"loss.alpha", "loss.beta", "loss.m", "loss.k", "loss.tau"} <= set(dists)
        oe, _ = build_space(read_space(ROOT / "tuning/oe.yaml"), load_config(ROOT / f"configs/{config}.yaml",
                                                                             ["loss.method=oe"]))
        assert set(oe) == {"loss.alpha"}
    grid, _ = build_space(read_space(ROOT / "tuning/paper_grid.yaml"), load_config(ROOT / "configs/tiny.yaml"))
    assert list(grid["loss.alpha"].choices) == [10, 1, 0.1, 0.01, 0.001]
    assert list(grid["loss.beta"].choices) == [1, 0.1, 0.01, 0.001, 0.0001]
    assert list(grid["loss.m"].choices) == [0, 1, 2, 3, 4, 5]


def test_study_config_is_the_recipe_compare_trains():
    """configs/study.yaml (the README's tuned study) tunes the recipe `compare` trains on the
    embedded benchmark: the same data, model, loss and training settings; only the objective's
    held-out OE set (oe_letters_val, never trained on) and the test sets differ."""
    from edge_ray.demo.ray_demo import PRESETS, demo_config
    from edge_ray.tune.settings import check_no_leak

    study = load_config(ROOT / "configs/study.yaml")
    recipe = demo_config(str(ROOT / "data/demo"), str(ROOT / "results/compare"), PRESETS["full"], seed=0)
    for section in ("model", "loss", "eval"):
        assert getattr(study, section) == getattr(recipe, section), section
    assert replace(study.train, storage_path="", run_name="") == replace(recipe.train, storage_path="", run_name="")
    skip = {"id_test", "ood", "oe", "oe_val", "id_train", "id_val"}
    assert {k: v for k, v in vars(study.data).items() if k not in skip} == \
        {k: v for k, v in vars(recipe.data).items() if k not in skip}
    assert (study.data.id_train, study.data.id_val) == (recipe.data.id_train, recipe.data.id_val)
    assert study.data.oe == str(ROOT / "data/demo/oe_letters")       # compare's default --oe
    assert study.data.oe_val == str(ROOT / "data/demo/oe_letters_val") and not study.data.ood
    check_no_leak(study)


def test_asha_on_epochs_and_fractional_resources(tiny_shards, tmp_path):
    """ASHA rungs run on the reported epoch up to train.epochs (FIFO for a Pareto search);
    trials at once follow the cluster's CPUs, or GPUs shared by fractions."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = _settings(tiny_shards, tmp_path, "res", trials=8, extra={"train.epochs": 4})
    asha = make_scheduler(s)
    assert isinstance(asha, ASHAScheduler) and asha.metric == "val_fpr95"
    assert asha._time_attr == "epoch" and asha._max_t == 4  # no public getters
    assert asha._brackets[0]._rungs[-1][0] == 1  # first rung: epoch 1 (--grace-epochs' default)
    rungs = make_scheduler(replace(s, grace_epochs=2, reduction_factor=2))  # the study's: epochs 2 (and 4)
    assert rungs._brackets[0]._rungs[-1][0] == 2 and rungs._brackets[0].rf == 2
    with pytest.raises(ConfigError, match="--grace-epochs 5"):
        _settings(tiny_shards, tmp_path, "g", grace_epochs=5, extra={"train.epochs": 4})
    with pytest.raises(ConfigError, match="--reduction-factor 1"):
        _settings(tiny_shards, tmp_path, "g", reduction_factor=1)
    pareto = replace(s, metrics=("val_fpr95", "val_map"), modes=("min", "max"))
    assert type(make_scheduler(pareto)) is FIFOScheduler

    # --cpus-per-trial 0.25 is the whole trial: 0.24 for its one worker, 0.01 for the trial driver
    assert trial_base(s).train.cpus_per_worker == pytest.approx(0.24)
    assert concurrency(s, trial_base(s), {"CPU": 2.0}) == 8
    one = replace(s, cpus_per_trial=1.0)  # the README's study: two 1-CPU trials on 2 cores
    assert concurrency(one, trial_base(one), {"CPU": 2.0}) == 2
    with pytest.raises(ConfigError, match="more than its driver"):
        trial_base(replace(s, cpus_per_trial=0.01))
    assert concurrency(replace(s, max_concurrent=2), trial_base(s), {"CPU": 2.0}) == 2
    gpu = replace(s, gpus_per_trial=0.5, cpus_per_trial=2.0)
    assert trial_base(gpu).train.use_gpu and trial_base(gpu).train.gpus_per_worker == 0.5
    assert concurrency(gpu, trial_base(gpu), {"CPU": 16.0, "GPU": 1.0}) == 2
    assert concurrency(gpu, trial_base(gpu), {"CPU": 3.0, "GPU": 1.0}) == 1  # CPUs bind first
    with pytest.raises(ConfigError, match="needs 0.5 GPU but the Ray cluster has 0"):
        concurrency(gpu, trial_base(gpu), {"CPU": 16.0})
    two_ranks = replace(gpu, config={**gpu.config, "train": {**gpu.config["train"], "num_workers": 2}})
    with pytest.raises(ConfigError, match="needs train.num_workers=1"):
        check_search(two_ranks)


def test_space_leaves_out_what_train_refuses(tiny_shards, tmp_path):
    """Issue 33: no trial trains a config `launch.py train` would refuse. tau above
    train.epochs is left out at set-up, and said; the smallest train.epochs / data.batch_size
    the space samples bounds the rest; a space with nothing left is refused with the fix."""
    import itertools

    from edge_ray.tune.space import apply_params, build_space, read_space

    tiny = load_config(ROOT / "configs/tiny.yaml")  # 2 epochs
    notes = []
    grid, fixed = build_space(read_space(ROOT / "tuning/paper_grid.yaml"), tiny, source="grid", notes=notes)
    assert list(grid["loss.tau"].choices) == [0, 1, 2]
    assert notes == ["grid: loss.tau: left out 5 (train refuses it with train.epochs=2); searching [0, 1, 2]"]
    # every configuration the grid can sample passes train's checks (brute force over the product)
    for values in itertools.product(*(d.choices for d in grid.values())):
        cfg = apply_params(tiny, dict(zip(grid, values)))
        assert load_config(None, [f"{k}={v}" for k, v in dict(zip(grid, values)).items()]
                           + ["train.epochs=2"]).loss.tau == cfg.loss.tau
    # the untrimmed value is what train refuses, and a trial's config goes through the same check
    with pytest.raises(ConfigError, match="loss.tau=5 > train.epochs=2"):
        apply_params(tiny, {"loss.tau": 5})
    notes = []
    build_space(read_space(ROOT / "tuning/paper_grid.yaml"), load_config(ROOT / "configs/voc.yaml"), notes=notes)
    assert notes == []  # 20 epochs: nothing to leave out

    notes = []
    space = {"loss.tau": {"randint": [0, 6]}, "train.epochs": {"choice": [8, 3]}}
    dists, _ = build_space(space, tiny, notes=notes)
    assert (dists["loss.tau"].low, dists["loss.tau"].high) == (0, 3) and "left out 4..5" in notes[0]
    with pytest.raises(ConfigError, match="no value fits a run with train.epochs=2"):
        build_space({"loss.tau": {"choice": [3, 4]}}, tiny)
    with pytest.raises(ConfigError, match=r"no value fits a run with train.epochs=2 \(train refuses each: 3\)"):
        build_space({"loss.tau": 3, "loss.beta": {"choice": [1, 0.1]}}, tiny)
    with pytest.raises(ConfigError, match="loss.k=32 is larger than the per-rank ID batch data.batch_size=16"):
        build_space({"loss.k": {"choice": [8, 32]}, "data.batch_size": {"choice": [64, 16]}}, tiny)

    s = _settings(tiny_shards, tmp_path, "trim")  # continuous.yaml's tau 0..2 on 1 epoch
    notes = []
    dists, _ = check_search(s, notes)
    assert (dists["loss.tau"].low, dists["loss.tau"].high) == (0, 1) and "left out 2 (train refuses" in notes[0]
