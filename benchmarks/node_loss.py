"""What a lost node costs an elastic run, on two `ray start` nodes on loopback.

A head and a second node (one CPU each, Ray's default health checks) run
`launch.py train --config configs/tiny.yaml train.num_workers=[1, 2]` on the quick embedded
benchmark; once epoch --kill-after has a checkpoint, the second node is killed (its whole
process group, SIGKILL: a machine that vanishes) and the run goes on with one worker. The
table gives each epoch's world size and start, and the seconds from the kill to the next
epoch's start: Ray's own elastic policy asked for the lost node's capacity and waited out
`train.start_timeout_s` (73 s measured before); `train/ray_elastic.py` asks for what the
live nodes hold.

    python benchmarks/node_loss.py --json node_loss.json
    python benchmarks/node_loss.py --repo ../other-checkout      # the same on another version

Both nodes are started with `ray start --block` in process groups of their own and stopped
by signalling exactly those groups (the head gracefully), so no other Ray on the machine is
touched and no `ray_current_cluster` file is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    # fixed defaults (agent 52365, metrics) would collide with any other Ray on the machine
    ports = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "metrics-export-port")]
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats",
                             "--node-ip-address=127.0.0.1", *args, *ports],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 60) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _history(run: Path) -> list:
    done = sorted(run.glob("checkpoint_*/history.json"))
    return json.loads(done[-1].read_text()) if done else []


def _wait_for_nodes(address: str, n: int, env: dict, timeout: float = 120) -> None:
    code = ("import ray,sys,time; ray.init(address=sys.argv[1], logging_level='ERROR'); end=time.time()+float(sys.argv[3])\n"
            "while time.time()<end and sum(x['Alive'] for x in ray.nodes())<int(sys.argv[2]): time.sleep(0.5)\n"
            "sys.exit(0 if sum(x['Alive'] for x in ray.nodes())>=int(sys.argv[2]) else 1)")
    subprocess.run([sys.executable, "-c", code, address, str(n), str(timeout)], env=env, check=True, timeout=timeout + 60)


def run(args) -> dict:
    repo = Path(args.repo).resolve()
    with tempfile.TemporaryDirectory(prefix="node-loss-") as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else tmp / "data"
        if not (data / "id_train" / "index.json").is_file():
            subprocess.run([sys.executable, str(repo / "launch.py"), "shards", "demo", "--quick", "--out", str(data)],
                           cwd=repo, check=True, capture_output=True)
        temp = Path("/tmp") / f"ray_nl_{os.getpid()}"  # short: Ray's socket paths have a length limit
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_V2_ENABLED": "1", "PYTHONPATH": str(repo)}
        env.pop("RAY_ADDRESS", None)
        port = _free_port()
        address = f"127.0.0.1:{port}"
        head = _start_node(["--head", f"--port={port}", "--include-dashboard=false",
                            f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}"], tmp / "head.log", env)
        second = None
        try:
            _wait_for_nodes(address, 1, env)
            second = _start_node([f"--address={address}"], tmp / "second.log", env)
            _wait_for_nodes(address, 2, env)
            storage = tmp / "runs"
            overrides = [f"data.{k}={data}/{v}" for k, v in (("id_train", "id_train"), ("id_val", "id_val"),
                                                              ("oe", "oe_letters"))] + [
                "data.id_test=", "data.ood=[]", f"train.storage_path={storage}", "train.run_name=node-loss",
                "train.num_workers=[1, 2]", "train.cpus_per_worker=1", f"train.resize_interval_s={args.resize_s}",
                f"train.epochs={args.epochs}", "train.max_failures=3", "train.val_every=0"]
            start = time.time()
            train = subprocess.Popen([sys.executable, str(repo / "launch.py"), "train", "--config",
                                      str(repo / "configs" / "tiny.yaml"), "--no-eval", *overrides],
                                     cwd=repo, env={**env, "RAY_ADDRESS": address}, stdout=open(tmp / "train.log", "w"),
                                     stderr=subprocess.STDOUT)
            run_dir = storage / "node-loss"
            while train.poll() is None and len(_history(run_dir)) < args.kill_after:
                time.sleep(0.2)
            kill_at = time.time()
            _stop(second, signal.SIGKILL)
            rc = train.wait(args.timeout)
            end = time.time()
            log = (tmp / "train.log").read_text()
        finally:
            if second is not None:
                _stop(second, signal.SIGKILL)
            _stop(head)
        hist = _history(run_dir)
        if rc != 0 or not hist:
            raise SystemExit(f"the training failed (exit {rc}):\n{log[-3000:]}")
        after = next((h for h in hist if h["started_at"] > kill_at), None)
        return {"repo": str(repo), "kill_after_epoch": args.kill_after, "resize_interval_s": args.resize_s,
                "kill_s": round(kill_at - start, 1), "total_s": round(end - start, 1),
                "next_epoch_after_kill_s": None if after is None else round(after["started_at"] - kill_at, 1),
                "world_after_kill": None if after is None else after["world_size"],
                "epochs": [{"epoch": h["epoch"], "world_size": h["world_size"], "resumes": h["resumes"],
                            "id_batch_per_rank": h["id_batch_per_rank"], "steps_per_rank": h["steps_per_rank"],
                            "started_s": round(h["started_at"] - start, 1)} for h in hist]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(ROOT), help="the checkout whose launch.py trains (default: this one)")
    p.add_argument("--data", help="the quick embedded benchmark's shards (default: built in a temp folder)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--kill-after", type=int, default=3, help="kill the second node once this many epochs are saved")
    p.add_argument("--resize-s", type=float, default=5.0, help="train.resize_interval_s")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    out = run(args)
    print("| epoch | world size | resumes | ID batch per rank | started (s) |\n|---:|---:|---:|---|---:|")
    for e in out["epochs"]:
        print(f"| {e['epoch']} | {e['world_size']} | {e['resumes']} | {e['id_batch_per_rank']} | {e['started_s']} |")
    print(f"\nsecond node killed at {out['kill_s']} s; next epoch started {out['next_epoch_after_kill_s']} s later "
          f"with {out['world_after_kill']} worker(s); run {out['total_s']} s ({out['repo']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
