"""The README's train -> export -> predict block, run as a user pastes it: each line a
subprocess, in an empty working folder (so data/, runs/, models/ and preds.parquet land
there, not in the repository); only `launch.py` and `configs/` are taken from the repository.
Then the README's Python snippet, in the same folder."""
import os
import re
import shlex
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SECTION = "### Train, export, predict (from a clean clone)"


def readme_blocks() -> tuple[list[str], str]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index(SECTION):]
    bash = re.search(r"```bash\n(.*?)```", part, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    return [line for line in bash.splitlines() if line.strip()], python


def as_run_here(line: str) -> list[str]:
    argv = shlex.split(line, comments=True)
    assert argv[:2] == ["python", "launch.py"], line
    return [sys.executable, str(ROOT / "launch.py")] + [str(ROOT / a) if a.startswith("configs/") else a
                                                       for a in argv[2:]]


def test_readme_train_export_predict(tmp_path):
    commands, python = readme_blocks()
    assert [shlex.split(c, comments=True)[2] for c in commands] == ["shards", "train", "export", "predict"]
    # RAY_ADDRESS=local: a Ray of their own, never the test session's or another `ray start` cluster
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    printed = {}
    for line in commands:
        run = subprocess.run(as_run_here(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, (line, run.stdout[-2000:], run.stderr[-4000:])
        printed[shlex.split(line)[2]] = run.stdout

    assert "keeps 9" in printed["export"] and "of 250 ID validation images; target 95%" in printed["export"]
    card = (tmp_path / "models" / "tiny-edge" / "model_card.md").read_text()
    assert "| edge | jointenergy |" in card and "ood_letters" in card
    rows = pq.read_table(tmp_path / "preds.parquet").to_pylist()
    assert len(rows) == 250 and all(r["error"] is None and len(r["probabilities"]) == 7 for r in rows)
    unknown = sum(r["is_unknown"] for r in rows)
    assert unknown > 125, f"only {unknown} of 250 unseen letters flagged unknown"  # letters N-Z: not ID
    assert "predicted 250 images (shards)" in printed["predict"]
    assert f"{unknown} unknown" in printed["predict"] and "0 error(s)" in printed["predict"]

    run = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "is_unknown" in run.stdout and "score" in run.stdout and "digit" in run.stdout
