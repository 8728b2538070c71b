"""Everything in a bucket, as a user runs it: `launch.py shards demo --out s3://...`,
`launch.py train` with every data path and the storage on s3://, `launch.py eval` of an
s3:// checkpoint -- from an empty working directory, which stays empty. Then a resume
from the bucket's checkpoint, and the same run from local copies of the shards giving the
same metrics."""
import os
import subprocess
import sys

import pytest

from edge_ray import storage
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
SETS = {"id_train": "id_train", "id_val": "id_val", "id_test": "id_test", "oe": "oe_letters"}


def _overrides(data: str, runs: str, **extra) -> list[str]:
    values = {f"data.{key}": storage.join(data, name) for key, name in SETS.items()}
    values["data.ood"] = f"[{storage.join(data, 'ood_letters')}, {storage.join(data, 'ood_scribble')}]"
    values.update({"train.storage_path": runs, "train.num_workers": 2, "train.epochs": 3,
                   "train.run_name": "s3run", **extra})
    return [f"{k}={v}" for k, v in values.items()]


def _launch(work, *args):
    """`python launch.py ...` in `work`, on the session's Ray (RAY_ADDRESS) and S3 (AWS_*)."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run = subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_shards_train_eval_in_a_bucket(ray_local, bucket, tmp_path):
    from edge_ray.config import load_config
    from edge_ray.train.ray_trainer import list_checkpoints, run_training
    from shards.demo import build_demo

    work = tmp_path / "work"
    work.mkdir()
    data, runs = f"{bucket}/demo", f"{bucket}/runs"
    out = _launch(work, "shards", "demo", "--quick", "--out", data)
    assert f"to {data}" in out and storage.is_file(f"{data}/id_train/index.json")

    # Two of three epochs (as if interrupted), then the evaluation the train command runs.
    out = _launch(work, "train", "--config", ROOT / "configs" / "tiny.yaml",
                  *_overrides(data, runs, **{"train.stop_after_epoch": 2}))
    assert "finished epoch 2/3" in out and "jointenergy" in out
    run_dir = f"{runs}/s3run"
    checkpoints = list_checkpoints(run_dir)
    assert len(checkpoints) == 2 and checkpoints[-1].startswith(f"{run_dir}/checkpoint_")
    summary = storage.read_json(f"{run_dir}/summary.json")
    assert summary["checkpoint"] == checkpoints[-1] and summary["history"][-1]["epoch"] == 2
    assert [h["world_size"] for h in summary["history"]] == [2, 2]

    out = _launch(work, "eval", "--checkpoint", checkpoints[-1], "--scores", "jointenergy", "msp")
    assert "ood_scribble" in out and f"results: {run_dir}/eval" in out
    results = storage.read_json(f"{run_dir}/eval/results.json")["results"]["model"]
    assert set(results["scores"]) == {"jointenergy", "msp"}
    assert list(work.iterdir()) == []  # nothing written under the working folder

    # The rerun continues from the bucket's epoch-2 checkpoint.
    resumed = run_training(load_config(ROOT / "configs" / "tiny.yaml", _overrides(data, runs)))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["resumes"] for h in resumed.history] == [0, 0, 1]

    # The same seed from local copies of the same shards: the same training, to float tolerance.
    local = tmp_path / "local"
    build_demo(local, seed=0, quick=True)
    twin = run_training(load_config(ROOT / "configs" / "tiny.yaml", _overrides(str(local), str(tmp_path / "runs"))))
    for a, b in zip(resumed.history, twin.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["val_map"] == pytest.approx(b["val_map"], abs=1e-6)
