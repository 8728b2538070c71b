"""Shared fixtures. One local Ray instance per test session (started lazily by the
first test that asks for it), small CPU budgets so a 2-core CI machine never starves."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance shared by every test of the session (DESIGN.md: one per session)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


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
