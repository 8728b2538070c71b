"""Shared fixtures. One local Ray instance per test session (started lazily by the
first test that asks for it), small CPU budgets so a 2-core CI machine never starves.
One S3 API server (moto, on 127.0.0.1) per session, started before Ray so that every Ray
worker inherits the AWS_* variables that point at it: code under test uses plain s3:// URIs."""
import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# MLflow tracking is off for the suite (no ./mlflow.db from every training a test runs, no
# tracking thread in every command); tests/test_tracking.py turns it on where it is under test.
os.environ.setdefault("EDGE_RAY_TRACKING", "0")


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's, in a thread of this process) for the session; the AWS_*
    variables of this process point at it. Yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_server):
    """A new, empty bucket on the session's S3 server: ``s3://edge-<random>``."""
    import boto3

    name = f"edge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A local Ray instance shared by every test of the session (one per session).
    It starts after the S3 server, so its workers reach the same bucket URIs as the tests."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}})
    yield ray
    ray.shutdown()


def launch_in_subprocess(ray_local, *argv, timeout: float = 600) -> tuple[int, str]:
    """``python launch.py ARGV`` as a user types it, in a process of its own attached to the
    session's Ray (RAY_ADDRESS); returns (exit code, stdout + stderr). For Ray Data commands
    (predict): a Ray Data run in the pytest process itself, after the many Train runs and
    interrupted runs earlier tests drive from it, once waited forever on tasks the driver never
    leased (CI, 2026-12-07), while the same command in a fresh process on the same Ray finished."""
    import subprocess

    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    run = subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, argv)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return run.returncode, run.stdout + run.stderr


TINY_SIZES = dict(n_train=256, n_val=128, n_test=160, n_oe=128, n_ood=96)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """The embedded benchmark at a few hundred images per set, built once per session."""
    from shards.demo import build_demo

    out = tmp_path_factory.mktemp("tiny_shards")
    build_demo(out, seed=0, **TINY_SIZES)
    return out


def tiny_overrides(shards: Path, storage: Path, **extra) -> list[str]:
    """key=value overrides pointing configs/tiny.yaml at ``tiny_shards`` and ``storage``."""
    base = {"data.id_train": shards / "id_train", "data.id_val": shards / "id_val",
            "data.id_test": shards / "id_test", "data.oe": shards / "oe_letters",
            "data.ood": f"[{shards / 'ood_letters'}, {shards / 'ood_scribble'}]",
            "train.storage_path": storage}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_shards, tmp_path_factory):
    """A checkpoint folder in the training worker's format, from one in-process epoch of the
    small CNN on ``tiny_shards`` (no Ray: the format is what is under test here)."""
    import torch

    from edge_ray.train import builders, loop
    from edge_ray.train.checkpoint import save_checkpoint
    from edge_ray.config import load_config
    from edge_ray.data import load_index, train_loader
    from edge_ray.models.networks import build_model

    storage = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", tiny_overrides(tiny_shards, storage))
    torch.manual_seed(0)
    id_index, oe_index = load_index(cfg.data.id_train), load_index(cfg.data.oe)
    model = build_model(cfg.model.name, id_index.num_classes)
    loader = train_loader(id_index, oe_index, batch_size=32, oe_batch_size=32, image_size=32, epoch=0,
                          seed=0, rank=0, world_size=1, num_workers=0, hflip=False)
    opt = builders.make_optimizer(model, cfg.train)
    sched = builders.make_scheduler(opt, cfg.train, len(loader))
    stats = loop.train_epoch(model, loader, builders.make_loss_fn(cfg.loss), opt, sched, epoch=0,
                               opts=loop.StepOptions(device=torch.device("cpu")))
    return save_checkpoint(storage / "checkpoint_000000", model_state=model.state_dict(),
                           optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(),
                           epoch=0, resumes=0, seed=0, history=[stats], config=cfg.to_dict())


@pytest.fixture(scope="session")
def tiny_detector(tiny_checkpoint, tmp_path_factory):
    """``tiny_checkpoint`` exported with JointEnergy at 95% TPR (``launch.py export``'s work)."""
    from edge_ray.detector.export import export_detector

    out = tmp_path_factory.mktemp("detector") / "tiny-edge"
    result = export_detector(str(tiny_checkpoint.parent), str(out), score="jointenergy")  # a run folder
    return out, result
