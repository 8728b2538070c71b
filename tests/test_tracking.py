"""MLflow tracking with the real parts: a real `mlflow server` on 127.0.0.1 (SQLite backend
store, artifacts in the session's S3 server), runs read back through MLflow's REST client.

Trainings run the CLI as a user does (`launch.main`, in this process on the session's Ray, or
as a subprocess for Ctrl-C); each test logs into an experiment of its own. The server is
stopped by the last test (a run that loses its server mid-run finishes with one warning)."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

import launch
from edge_ray import storage
from edge_ray.tracking import content, settings
from edge_ray.tracking.client import Tracker
from tests.conftest import ROOT, tiny_overrides

TINY = str(ROOT / "configs" / "tiny.yaml")


# ---- the pure parts ---------------------------------------------------------------------------

def test_config_epochs_and_table3_as_params_and_metrics():
    from edge_ray.config import load_config

    params = content.config_params(load_config(TINY, ["loss.beta=0.25"]))
    assert params["loss.beta"] == "0.25" and params["train.epochs"] == "2"
    shards = ROOT / "data" / "demo-quick"  # locations are absolute once loaded
    assert params["data.ood"] == f'["{shards / "ood_letters"}", "{shards / "ood_scribble"}"]'
    report = {"epoch": 3, "loss": 0.5, "gap_active": 0.25, "val_map": 0.75, "world_size": 2, "beta_active": True,
              "nodes": ["a", "b", "a"], "steps_per_rank": [8, 8], "amp": "off", "started_at": 100.0,
              "finished_at": 112.5, "lr": float("nan")}
    step, stamp, metrics = content.epoch_metrics(report)
    assert (step, stamp) == (3, 112500)
    assert metrics == {"loss": 0.5, "gap_active": 0.25, "val_map": 0.75, "world_size": 2.0, "beta_active": 1.0,
                       "epoch_seconds": 12.5, "num_nodes": 2.0}
    result = {"map": 0.9, "scores": {"jointenergy": {
        "ood_a": {"fpr95": 0.2, "auroc": 0.8, "aupr_in": 0.7, "tail": {"fpr95": 0.4, "auroc": 0.6, "aupr_in": 0.5}},
        "ood_b": {"fpr95": 0.4, "auroc": 0.9, "aupr_in": 0.9, "tail": None}}}}
    m = content.eval_metrics(result)
    assert m["eval.map"] == 0.9 and m["eval.jointenergy.ood_b.auroc"] == 0.9
    assert m["eval.jointenergy.mean.fpr95"] == pytest.approx(0.3) and m["eval.jointenergy.mean_tail.fpr95"] == 0.4


def test_where_runs_go_and_the_switch(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(settings.SWITCH, "1")
    assert settings.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.ui_hint(settings.tracking_uri()) == "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert settings.artifact_location(settings.tracking_uri(), "e") == str(tmp_path / "mlruns" / "e")
    assert settings.enabled(None) and not settings.enabled(type("A", (), {"no_tracking": True})())
    monkeypatch.setenv(settings.SWITCH, "off")
    assert not settings.enabled(None)
    assert settings.display("https://user:secret@mlflow.example:8443/x") == "https://mlflow.example:8443/x"


def test_an_unreachable_server_is_one_warning_and_nothing_waits(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = Tracker("http://127.0.0.1:1", "nowhere")
    run = tracker.run("r", params={"a": 1})
    started = time.monotonic()
    for epoch in range(1, 4):
        run.log_epoch({"epoch": epoch, "loss": 1.0})
    run.end("FINISHED")
    tracker.close()
    assert time.monotonic() - started < 30
    lines = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow tracking at http://127.0.0.1:1 failed at the "
                                                   "start of run 'r'"), lines
    assert "the command goes on without it" in lines[0]


# ---- the real server --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder, artifacts: str):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = open(folder / "server.log", "w+")
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", artifacts],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout: float) -> None:
        import urllib.request

        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.log.seek(0)
        raise RuntimeError(f"mlflow server did not start: {self.log.read()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory):
    """`mlflow server` (SQLite backend store, artifacts proxied to s3://<bucket>/mlartifacts)."""
    import boto3

    bucket = f"mlflow-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    srv = Server(tmp_path_factory.mktemp("mlflow"), f"s3://{bucket}/mlartifacts")
    srv.bucket = bucket
    try:
        srv.wait_up(240)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tracked(server, monkeypatch):
    """Tracking on, into the server, in an experiment of this test's own; yields an MlflowClient."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(settings.SWITCH, "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{uuid.uuid4().hex[:8]}")
    return MlflowClient(server.uri)


def _runs(client, name: str | None = None):
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if name is None or r.info.run_name == name]


def _steps(client, run, key) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run.info.run_id, key)})


@pytest.mark.slow
def test_train_on_two_workers_then_eval_one_run(ray_local, tiny_shards, bucket, tracked, server, capsys):
    """Two Train workers, storage in S3: one run, its config as params, rank 0's epochs at steps
    1..N (logged by the driver), FINISHED; `eval` adds Table 3 and its files to that run."""
    runs = f"{bucket}/runs"
    over = tiny_overrides(tiny_shards, runs, **{"train.num_workers": 2, "train.cpus_per_worker": 0.5,
                                                "train.run_name": "two"})
    assert launch.main(["train", "--config", TINY, "--no-eval", *over]) == 0
    assert "MLflow: runs in http://127.0.0.1" in capsys.readouterr().out
    [run] = _runs(tracked)
    assert run.info.run_name == "two" and run.info.status == "FINISHED"
    assert run.data.params["loss.beta"] == "0.1" and run.data.params["train.num_workers"] == "2"
    assert run.data.params["train.optimizer"] == "adamw" and "edge.recipe" in run.data.tags
    assert run.data.tags["edge.data.id_train"] == str(tiny_shards / "id_train")
    for key in ("val_map", "loss", "gap_active", "images_per_s", "data_wait_s", "world_size"):
        assert _steps(tracked, run, key) == [1, 2], key
    assert {m.value for m in tracked.get_metric_history(run.info.run_id, "world_size")} == {2.0}
    assert storage.read_json(f"{runs}/two/{settings.RECORD}")["run_id"] == run.info.run_id

    assert launch.main(["eval", "--checkpoint", f"{runs}/two", "--scores", "jointenergy", "maxlogit"]) == 0
    run = tracked.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    for key in ("eval.jointenergy.ood_letters.fpr95", "eval.maxlogit.ood_scribble.auroc", "eval.map",
                "eval.jointenergy.mean.aupr"):
        assert _steps(tracked, run, key) == [2], key
    files = {a.path for a in tracked.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/table.md", "eval/table.csv", "eval/results.json"} <= files and any(f.endswith(".png") for f in files)
    import boto3  # the server put them in S3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=server.bucket)["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/eval/table.md") for k in keys), keys


@pytest.mark.slow
def test_ctrl_c_is_killed_and_the_rerun_continues_the_same_run(ray_local, tiny_shards, tracked, tmp_path):
    import ray

    runs = tmp_path / "runs"
    args = ["launch.py", "train", "--config", "configs/tiny.yaml", "--no-eval",
            *tiny_overrides(tiny_shards, runs, **{"train.epochs": 4, "train.run_name": "ctrlc",
                                                  "data.batch_size": 16})]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    err = open(tmp_path / "first.err", "w+")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True)
    end = time.time() + 300
    while not (found := _runs(tracked, "ctrlc")) or not _steps(tracked, found[0], "val_map"):
        assert time.time() < end and proc.poll() is None, "no epoch reached MLflow"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    assert proc.wait(60) == 130
    [run] = _runs(tracked, "ctrlc")
    assert run.info.status == "KILLED"
    logged = _steps(tracked, run, "val_map")
    assert 1 <= len(logged) < 4

    assert launch.main(args[1:]) == 0  # the same command: resumes from the checkpoint
    [again] = _runs(tracked, "ctrlc")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["edge.continued"] == "1"
    assert _steps(tracked, again, "val_map") == [1, 2, 3, 4]


@pytest.mark.slow
def test_tune_two_trials_is_a_parent_with_two_children(ray_local, tiny_shards, tracked, tmp_path):
    over = tiny_overrides(tiny_shards, tmp_path / "runs", **{"train.epochs": 1, "data.oe_val": tiny_shards / "oe_digit7"})
    rc = launch.main(["tune", "--config", TINY, "--space", str(ROOT / "tuning" / "continuous.yaml"), "--trials", "2",
                      "--name", "tracked", "--out", str(tmp_path / "out"), "--cpus-per-trial", "0.5", *over])
    assert rc == 0
    every = _runs(tracked)
    [parent] = [r for r in every if r.info.run_name == "tracked"]
    children = [r for r in every if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2 and len(every) == 3
    assert parent.data.params["search.trials"] == "2" and "space.loss.beta" in parent.data.params
    assert {"trials.md", "trials.csv", "best.yaml"} <= {a.path for a in tracked.list_artifacts(parent.info.run_id)}
    assert any(k.startswith("best.") for k in parent.data.metrics)
    for child in children:
        assert child.info.status == "FINISHED" and child.info.run_name.startswith("train-")
        sampled = child.data.tags["edge.sampled"]
        for key in ("loss.beta", "loss.m"):
            assert f"{key}={child.data.params[key]}" in sampled
        assert _steps(tracked, child, "val_fpr95") == [1] and _steps(tracked, child, "val_map") == [1]


@pytest.mark.slow
def test_done_when_only_a_sqlite_uri_is_set(ray_local, tiny_shards, tmp_path, monkeypatch):
    """The issue's check: MLFLOW_TRACKING_URI=sqlite:///<dir>/mlflow.db, `launch.py train --config
    configs/tiny.yaml` -> one FINISHED run, the config as params, val mAP at every epoch."""
    from mlflow.tracking import MlflowClient

    from edge_ray.config import load_config
    from edge_ray.train.recipes import resolve_run

    monkeypatch.setenv(settings.SWITCH, "1")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    over = tiny_overrides(tiny_shards, tmp_path / "runs")
    assert launch.main(["train", "--config", TINY, *over]) == 0
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(settings.DEFAULT_EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params == content.config_params(resolve_run(load_config(TINY, over)))
    assert _steps(client, run, "val_map") == [1, 2]
    assert "eval.jointenergy.ood_letters.fpr95" in run.data.metrics  # the train command's evaluation
    assert (tmp_path / "store" / "mlruns" / settings.DEFAULT_EXPERIMENT).is_dir()  # artifacts beside the database


@pytest.mark.slow
def test_the_server_stopped_mid_run_the_training_finishes_with_one_warning(ray_local, tiny_shards, tracked,
                                                                         server, tmp_path, capsys):
    """Last in this module: it stops the module's server."""
    runs = tmp_path / "runs"
    over = tiny_overrides(tiny_shards, runs, **{"train.epochs": 4, "train.run_name": "lost", "data.batch_size": 16})

    def stop_after_the_first_epoch():
        end = time.time() + 300
        while time.time() < end:
            found = _runs(tracked, "lost")
            if found and _steps(tracked, found[0], "val_map"):
                break
            time.sleep(0.3)
        server.stop()

    stopper = threading.Thread(target=stop_after_the_first_epoch, daemon=True)
    stopper.start()
    assert launch.main(["train", "--config", TINY, "--no-eval", *over]) == 0
    stopper.join(60)
    assert server.proc.poll() is not None
    assert len(storage.read_json(str(runs / "lost" / "summary.json"))["history"]) == 4
    warnings = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow tracking at {server.uri} failed at "), warnings
