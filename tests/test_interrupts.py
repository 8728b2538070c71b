"""Interruptions as a user meets them: Ctrl-C (SIGINT to the process group) during `train`
stops it within seconds with status 130 and one line naming the command that continues;
that command resumes from the newest complete checkpoint and says so; no checkpoint folder
outlives train.num_to_keep. SIGTERM during `demo` gives 143. An error inside a Ray Train
worker reaches the user as the one line it would be on the driver."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from edge_ray.train.checkpoint import checkpoint_folders
from tests.conftest import ROOT, tiny_overrides

pytestmark = pytest.mark.slow


def _start(args, tmp_path, name, *, own_ray: bool = False):
    """`python <args>` on the session's Ray, or (own_ray) on a local Ray of its own: a driver
    stopped while a Train run is being set up must not leave the session's Ray waiting."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": "local" if own_ray else ray.get_runtime_context().gcs_address}
    out, err = open(tmp_path / f"{name}.out", "w+"), open(tmp_path / f"{name}.err", "w+")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=err,
                            start_new_session=True)
    return proc, out, err


def _wait_for(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def _complete(folder) -> bool:
    return {"state.pt", "history.json", "config.json"} <= {p.name for p in folder.iterdir()}


def test_ctrl_c_during_train_then_the_printed_command_resumes(ray_local, tiny_shards, tmp_path):
    runs = tmp_path / "runs"
    args = ["launch.py", "train", "--config", "configs/tiny.yaml", "--no-eval",
            *tiny_overrides(tiny_shards, runs, **{"train.epochs": 5, "train.run_name": "ctrlc", "data.batch_size": 16,
                                                  "loss.k": 8, "train.num_to_keep": 2})]
    proc, out, err = _start(args, tmp_path, "first")
    _wait_for(lambda: (runs / "ctrlc").is_dir() and any(_complete(p) for p in (runs / "ctrlc").glob("checkpoint_*")),
              300, "no checkpoint was written")
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(60) == 130
    took = time.time() - sent
    err.seek(0)
    message = [line for line in err.read().splitlines() if line.startswith("interrupted (SIGINT)")]
    assert len(message) == 1, message
    match = re.search(r"epochs 1-(\d+) are in (\S+); continue from epoch (\d+) with: (python launch.py train .*)$",
                      message[0])
    assert match and int(match.group(3)) == int(match.group(1)) + 1, message[0]
    assert took < 30, f"took {took:.1f}s to stop"

    again = shlex.split(match.group(4))
    assert again[2:] == args[1:]  # the same command, as typed
    proc, out, err = _start(again[1:], tmp_path, "second")
    assert proc.wait(600) == 0
    out.seek(0)
    text = out.read()
    resumed = re.search(r"resuming \S+ctrlc from epoch (\d+) \(checkpoint (\S+)\)", text)
    assert resumed and int(resumed.group(1)) >= int(match.group(3)), text[-2000:]
    assert "finished epoch 5/5" in text
    assert len(checkpoint_folders(str(runs / "ctrlc"))) <= 2  # train.num_to_keep, orphans included


def test_sigterm_during_demo_exits_143_and_says_what_is_kept(ray_local, tmp_path):
    args = ["launch.py", "demo", "--quick", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "results")]
    proc, out, err = _start(args, tmp_path, "demo", own_ray=True)

    def first_epoch_done():
        out.seek(0)
        return '"epoch": 1,' in out.read()

    _wait_for(first_epoch_done, 300, "the demo did not finish its first epoch")
    proc.send_signal(signal.SIGTERM)  # the driver alone, as a scheduler or `kill` does
    assert proc.wait(60) == 143
    err.seek(0)
    out.seek(0)
    text = err.read()
    # Ray Train's placement-group cleaner polls the state API every second; the Ray a command
    # starts has no dashboard to serve it, and its warnings are silenced (ray_cluster.train_cleaner_without_dashboard)
    shown = out.read()
    assert "State API may be temporarily unavailable" not in text + shown
    # each epoch's line once (Ray Train's print patch wrote and logged it: the driver showed it
    # twice), and none of Ray Train's ~600-character "Reporting training result" lines
    assert (text + shown).count('"epoch": 1,') == 1 and "Reporting training result" not in text + shown
    lines = [line for line in text.splitlines() if line.startswith("interrupted (SIGTERM)")]
    assert len(lines) == 1 and "the shards and the finished trainings are kept and reused" in lines[0]
    assert lines[0].endswith(shlex.join(["python", "launch.py", *args[1:]]))


def test_a_worker_error_is_one_line(ray_local, tiny_shards, tmp_path):
    """A damaged second shard: the driver's checks read the first one only, the Train worker
    meets it; the user gets the worker's own message, with no Ray wrapper around it. Run as
    a user runs it (a process with a Ray of its own): in the test process, a second launch
    thread calling into the session's Ray once waited forever in ray.nodes()."""
    import shutil

    data = tmp_path / "id_train"
    shutil.copytree(tiny_shards / "id_train", data)
    second = sorted(data.glob("*.tar"))[1]
    second.write_bytes(second.read_bytes()[:5000] + b"\x01" * 3000)
    args = ["launch.py", "train", "--config", "configs/tiny.yaml", "--no-eval",
            *tiny_overrides(tiny_shards, tmp_path / "runs", **{"data.id_train": data, "train.run_name": "broken"})]
    proc, out, err = _start(args, tmp_path, "broken", own_ray=True)
    assert proc.wait(300) == 2
    err.seek(0)
    lines = [line for line in err.read().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"error: shard '{second}'") and "reconvert the set" in lines[0]


def test_a_ray_started_by_the_command_thread_is_stopped_by_it(tmp_path):
    """Ray starts its raylet and GCS with PR_SET_PDEATHSIG, which fires when the *thread* that
    started them ends: a command that starts a local Ray in run_interruptible's thread must
    stop it there. Left to the interpreter, the processes were SIGKILLed when the thread
    ended and ray.shutdown() then waited ~15 s on timeouts at every exit."""
    script = (
        "import argparse, os, subprocess, ray\n"
        "from edge_ray.ray_cluster import connect\n"
        "from edge_ray.cli.interrupts import run_interruptible\n"
        "def cmd(args):\n"
        "    connect(None)\n"
        "    return 7 if ray.is_initialized() else 1\n"
        "rc = run_interruptible(cmd, argparse.Namespace(command='x'), hint=str)\n"
        "ps = subprocess.run(['ps', '-o', 'stat=,comm=', '--ppid', str(os.getpid())], capture_output=True,"
        " text=True).stdout\n"
        "print('RC', rc, ray.is_initialized(), [line.split() for line in ps.splitlines() if line.strip()])\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RC"))
    rc, initialized, children = line.split(" ", 3)[1:]
    assert (rc, initialized) == ("7", "False"), out.stdout + out.stderr
    assert "Z" not in children and "gcs_server" not in children and "raylet" not in children, line
