"""End to end through the cluster path: `ray start --head` on 127.0.0.1, `ray job submit`
of `launch.py train` on the tiny config, wait for SUCCEEDED, check the outputs, and stop
only the head this test started."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def ray_head(tmp_path):
    """A head started with --block, so terminating this one process stops exactly it."""
    gcs, dash = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TRAIN_V2_ENABLED="1")
    temp = Path("/tmp") / f"ray_jobtest_{os.getpid()}"  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         # Fixed defaults (agent 52365, client 10001) collide with any other Ray on the machine.
         f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
         f"--metrics-export-port={_free_port()}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", 120)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_ray_job_submit_train(ray_head, tiny_shards, tmp_path):
    """`ray job submit --working-dir .` from a folder laid out like the repository, whose
    config names its data by relative paths (configs/tiny.yaml: data/demo-quick/...): the
    paths mean the same inside the job (relative to the uploaded folder), resolved on the
    job's driver before anything goes to the workers."""
    import shutil

    address, env = ray_head
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("launch.py", "configs", "edge_ray", "shards", "tuning"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, work / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / name).is_dir() else {}))
    shutil.copytree(tiny_shards, work / "data" / "demo-quick")  # uploaded with the working dir
    storage = tmp_path / "runs"  # outside the upload: a relative one would stay in the job's copy
    sub_id = f"edge-test-{os.getpid()}"
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", sub_id, "--working-dir", ".", "--",
           sys.executable, "launch.py", "train", "--config", "configs/tiny.yaml", "train.run_name=job",
           "train.epochs=1", f"train.storage_path={storage}"]
    for _ in range(30):  # the job agent registers a little after the dashboard answers
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=work)
        if "No available agent" not in run.stderr + run.stdout:
            break
        time.sleep(3)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status(sub_id) == JobStatus.SUCCEEDED
    summary = json.loads((storage / "job" / "summary.json").read_text())
    assert summary["final"]["epoch"] == 1 and summary["checkpoint"]
    # the job read the uploaded copy of the relative data paths (not this folder)
    train_dir = json.loads((Path(summary["checkpoint"]) / "config.json").read_text())["data"]["id_train"]
    assert train_dir.endswith("/data/demo-quick/id_train") and not train_dir.startswith(str(work)), train_dir
    table = (storage / "job" / "eval" / "table.md").read_text()
    assert "jointenergy" in table and "ood_letters" in table
    assert "jointenergy" in run.stdout  # the job's log streamed the results table
