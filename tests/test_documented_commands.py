"""Every command shown in README.md and in every `--help` example, run as typed.

The commands are collected from the README's shell blocks and from the help text of
`launch.py` and each subcommand (continuation lines joined), and each one must be listed in
PLAN below with what it does here, so a new or edited example fails this test until it is
run. They run verbatim -- ``python`` is this interpreter, nothing else of the line is
changed -- from a folder laid out like the repository root (launch.py, configs/, tuning/,
... linked in), so relative paths mean what they mean for a user in a clean clone:

  run    runs to the end (exit 0), on the quick demo data the README builds first;
  start  starts (prints its marker), is interrupted with Ctrl-C, exits 130 with the line
         that says how to continue -- for the commands that train for many minutes;
  stop   needs what this machine lacks (VOC/COCO/NUS-WIDE downloads, a GPU, a bucket of
         someone else's); it must stop before any work with exit 2 and one line that
         names the location and the fix;
  other  not run here, with the test that runs it (``make test`` is this suite itself).

Commands that run to the end reach the session's Ray through RAY_ADDRESS (as inside `ray
job submit`); the interrupted ones start a Ray of their own. All reach the session's S3
server through AWS_ENDPOINT_URL, where README's `s3://my-bucket` exists.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

STARTS = ("python ", "make ", "ray ")
LINKED = ("launch.py", "configs", "tuning", "cluster", "shards", "edge_ray", "benchmarks")

RUN, START, STOP, OTHER = "run", "start", "stop", "other"

# argv (after `python launch.py`, shlex-split, comments dropped) -> (kind, what to check).
# The order is the order they run in: the README's reader builds the data before training.
PLAN: list[tuple[str, str, str]] = [
    # README: Quick start
    ("make demo", OTHER, "`python launch.py demo` (what it runs) starts below; its time is in README"),
    ("make test", OTHER, "this suite (.ci/run)"),
    # README: the whole pipeline on a real dataset (downloads this machine has not)
    ("shards voc --root VOCdevkit/VOC2012 --split train --out data/voc/id_train", STOP, "VOCdevkit/VOC2012"),
    ("shards folder --root raw/dtd/images --role ood --name textures --out data/ood/textures", STOP,
     "raw/dtd/images"),
    ("rank-oe --id data/voc/id_train --candidates data/oe/* --backbone resnet50 --weights IMAGENET1K_V1 "
     "--select configs/voc.yaml --select-out runs/voc.yaml", STOP, "--candidates data/oe/*: no shard set matches"),
    ("train --config runs/voc.yaml train.num_workers=4 train.use_gpu=true", STOP,
     "config file 'runs/voc.yaml' not found"),
    ("eval --checkpoint runs/voc-resnet50-edge --out results/voc", STOP, "runs/voc-resnet50-edge"),
    ("shards folder --root raw/imagenet20-heldout --role oe --name imagenet20-heldout "
     "--out data/oe/imagenet20-heldout", STOP, "raw/imagenet20-heldout"),
    ("tune --config configs/voc.yaml --space tuning/paper_grid.yaml --trials 64", STOP, "s3://my-edge-bucket/"),
    ("tune --config configs/voc.yaml --space tuning/paper_grid.yaml --trials 32", STOP, "s3://my-edge-bucket/"),
    ("compare --config configs/voc.yaml --methods bce oe edge --seeds 3 --gpus-per-run 0.5 train.num_workers=1 "
     "--out s3://my-edge-bucket/results/compare/voc", STOP, "s3://my-edge-bucket/"),
    ("shards voc --root data/VOCdevkit/VOC2007 --split trainval --out data/shards/voc07-trainval", STOP,
     "data/VOCdevkit/VOC2007"),
    ("shards coco --images data/coco/val2017 --annotations data/coco/annotations/instances_val2017.json "
     "--out data/shards/coco-val", STOP, "data/coco"),
    ("shards nuswide --root data/NUS-WIDE --split train --out data/shards/nuswide-train", STOP, "data/NUS-WIDE"),
    ("shards manifest --file data/my/train.csv --classes data/my/classes.txt --out data/shards/my-train", STOP,
     "data/my/"),
    ("shards folder --root data/textures --role ood --name dtd --out data/shards/dtd", STOP, "data/textures"),
    ("compare --methods oe edge --seeds 5 --edge-from-study results/tune/demo-search", STOP,
     "results/tune/demo-search"),
    ("export --checkpoint s3://my-bucket/runs/voc --score vim --out s3://my-bucket/models/voc-vim", STOP,
     "s3://my-bucket/runs/voc"),
    ("predict --model s3://my-bucket/models/voc --input s3://my-bucket/new-images --out s3://my-bucket/preds.parquet "
     "--gpu --concurrency 4", STOP, "s3://my-bucket/models/voc"),
    # README: train, export, predict (from a clean clone)
    ("shards demo --quick --out data/demo-quick", RUN, "data/demo-quick"),
    ("train --config configs/tiny.yaml", RUN, "finished epoch 2/2"),
    ("export --checkpoint runs/tiny --out models/tiny-edge", RUN, "of 250 ID validation images; target 95%"),
    ("predict --model models/tiny-edge --input data/demo-quick/ood_letters --out preds.parquet", RUN,
     "predicted 250 images (shards)"),
    # help examples on the same data
    ("shards demo --quick --out data/demo", RUN, "data/demo"),
    ("eval --checkpoint runs/tiny --scores jointenergy maxlogit", RUN, "jointenergy"),
    ("eval --checkpoint runs/tiny --ood data/demo/ood_letters data/demo/ood_scribble --scores jointenergy maxlogit",
     RUN, "ood_scribble"),
    ("export --checkpoint runs/tiny --score jointenergy --tpr 0.95 --out models/tiny-edge", STOP,
     "models/tiny-edge"),
    ("rank-oe --id data/demo/id_train --candidates data/demo/oe_* --backbone smallcnn --image-size 32 --k 16 "
     "--batch-size 64 --batches 8 --seed 0 --select configs/tiny.yaml --select-out results/rank-oe/tiny-oe.yaml",
     RUN, "results/rank-oe/tiny-oe.yaml"),
    ("rank-oe --id data/demo/id_train --candidates data/demo/oe_*", START, r"\S"),
    ("train --config configs/tiny.yaml loss.beta=0.1 train.run_name=tiny-beta", START, r"recipe:"),
    ("train --config configs/tiny.yaml loss.method=edge loss.beta=0.1 train.num_workers=2 train.run_name=tiny-2w",
     START, r"recipe:"),
    ("tune --config configs/tiny.yaml --space tuning/paper_grid.yaml --trials 8 data.oe_val=data/demo-quick/oe_digit7",
     START, r"^search "),
    ("tune --config configs/tiny.yaml --space tuning/continuous.yaml --trials 8 --cpus-per-trial 0.5 "
     "--name tiny-cont data.oe_val=data/demo-quick/oe_digit7", START, r"^Trial status"),  # saved: resumable
    ("tune --resume --name tiny-cont", START, r"^resuming search tiny-cont"),
    ("python -c import optuna; print(optuna.load_study(study_name='tiny-cont', "
     "storage='sqlite:///results/tune/tiny-cont/study.db').best_params)", OTHER,
     "tests/test_tune.py reads best_params from the study.db of a finished search"),
    # README: tuned EDGE against tuned OE (configs/study.yaml reads data/demo, built above at quick size)
    ("shards demo --out data/demo", OTHER, "the full-size build (14 sets, ~30 s); the same command at quick "
     "size runs above and tests/test_shards_demo.py checks the sets"),
    ("tune --config configs/study.yaml --space tuning/paper_grid.yaml --trials 8 --name study-edge "
     "--cpus-per-trial 1 --grace-epochs 7", START, r"^search "),
    ("tune --config configs/study.yaml --space tuning/oe.yaml --trials 8 --name study-oe --cpus-per-trial 1 "
     "--grace-epochs 7 loss.method=oe", START, r"^search "),
    ("compare --methods oe edge --seeds 5 --cpus-per-run 1 --out results/compare-tuned "
     "--from-study oe=results/tune/study-oe edge=results/tune/study-edge", STOP, "results/tune/study-oe"),
    ("train --config configs/study.yaml train.seed=1 train.run_name=untuned-edge-seed1 "
     "train.storage_path=results/untuned --no-eval", START, r"recipe:"),
    ("python -m edge_ray.compare.gap untuned=results/runs/demo-full-seed0-edge,results/untuned/untuned-edge-seed1 "
     "tuned=results/compare-tuned --out results/gap_tuned_vs_untuned", OTHER,
     "tests/test_gap.py runs it on compare and run folders it writes"),
    ("train --config configs/study.yaml loss.m_mode=relative loss.m=1 train.run_name=relative-edge-seed0 "
     "train.storage_path=results/relative", START, r"recipe:"),
    ("eval --checkpoint results/relative/relative-edge-seed0 --id-test data/demo/id_test --ood data/demo/ood_* "
     "--scores jointenergy", OTHER, "evaluates the run above (8 min of training, not run here); eval's "
     "--id-test / --ood run as typed in the quick-start block"),
    ("compare --methods bce oe energyoe edge --seeds 5", START, r"^compare:"),
    ("compare --quick --methods oe edge --seeds 2", START, r"^compare:"),
    ("demo", START, r"EDGE on Ray demo"),
    ("demo --quick", START, r"EDGE on Ray demo"),
    ("demo --out results/demo-seed1 --seed 1", START, r"EDGE on Ray demo"),
    # README: object storage (the README's bucket on the session's S3 server)
    ("shards demo --quick --out s3://my-bucket/demo", RUN, "s3://my-bucket/demo"),
    ("train --config configs/tiny.yaml train.num_workers=2 data.id_train=s3://my-bucket/demo/id_train "
     "data.id_val=s3://my-bucket/demo/id_val data.id_test=s3://my-bucket/demo/id_test "
     "data.oe=s3://my-bucket/demo/oe_letters data.ood=[s3://my-bucket/demo/ood_letters, "
     "s3://my-bucket/demo/ood_scribble] train.storage_path=s3://my-bucket/runs train.run_name=tiny-s3", RUN,
     "finished epoch 2/2"),
    ("eval --checkpoint s3://my-bucket/runs/tiny-s3", RUN, "s3://my-bucket/runs/tiny-s3/eval"),
    ("ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python launch.py train "
     "--config configs/voc.yaml train.storage_path=s3://my-edge-bucket/runs", OTHER,
     "needs a cluster whose runtime_env installs packages; tests/test_job_submit.py submits "
     "--working-dir . with relative data paths to a `ray start --head`"),
]


def logical_lines(text: str) -> list[str]:
    """Lines with shell continuations joined, stripped, empty ones dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip() if cur else line.rstrip()
        if s.endswith("\\"):
            cur += s[:-1].rstrip() + " "
            continue
        cur += s
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out


def key(line: str) -> str:
    """The command as PLAN names it: `python launch.py` dropped, comments dropped, re-joined."""
    argv = shlex.split(line, comments=True)
    if argv[:2] == ["python", "launch.py"]:
        argv = argv[2:]
    return " ".join(argv)


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang in ("", "bash", "sh", "shell"):
            lines += [line for line in logical_lines(body) if line.startswith(STARTS)]
    return lines


def help_commands() -> list[str]:
    import launch

    lines = []
    for command in (None, *launch.COMMANDS):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            launch.main(["--help"] if command is None else [command, "--help"])
        lines += [line for line in logical_lines(out.getvalue()) if line.startswith(STARTS)]
    return lines


@functools.lru_cache(maxsize=1)
def documented() -> dict[str, list[str]]:
    """PLAN's name of each documented command -> its argv as the shell splits it."""
    return {key(line): shlex.split(line, comments=True) for line in readme_commands() + help_commands()}


def test_every_documented_command_is_in_the_plan():
    planned = [k for k, _, _ in PLAN]
    assert len(planned) == len(set(planned)), "a command is planned twice"
    missing = set(documented()) - set(planned)
    assert not missing, f"documented but not run by this test (add them to PLAN): {sorted(missing)}"
    stale = set(planned) - set(documented())
    assert not stale, f"in PLAN but no longer documented (remove them): {sorted(stale)}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, ray_local, s3_server):
    """A folder laid out like a clean clone's root, and the README's bucket."""
    import boto3

    root = tmp_path_factory.mktemp("clone")
    for name in LINKED:
        (root / name).symlink_to(ROOT / name)
    s3 = boto3.client("s3")
    if "my-bucket" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="my-bucket")
    # PYTHONUNBUFFERED: lines arrive as a terminal shows them (a pipe would hold them in a buffer)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    return root, env


def argv_of(command: str) -> list[str]:
    """The documented line, split as a shell does; `python` is this interpreter."""
    argv = documented()[command]
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def run_to_end(root, env, command: str, expect: str) -> str:
    run = subprocess.run(argv_of(command), cwd=root, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, (command, out[-4000:])
    assert expect in out, (command, expect, out[-3000:])
    return run.stdout


def start_and_interrupt(root, env, command: str, marker: str) -> None:
    # A Ray of its own (RAY_ADDRESS=local), as for a user without a cluster: a driver stopped
    # mid-start must not leave the session's Ray half-way through a Train run's set-up
    env = {**env, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(argv_of(command), cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines, seen = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if re.search(marker, line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    end = time.time() + 300
    while not seen.is_set() and reader.is_alive() and time.time() < end:  # not alive: it has exited
        seen.wait(0.5)
    started = seen.is_set()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert started, (command, "never printed", marker, out[-3000:])
    assert rc == 130, (command, rc, out[-3000:])
    hint = [line for line in out.splitlines() if "interrupted" in line and "python launch.py" in line]
    assert hint, (command, "no line saying how to continue", out[-2000:])


def stops(root, command: str, expect: str, capsys, monkeypatch) -> None:
    import launch

    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(launch.main(argv_of(command)[2:]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, (command, exit_info.value.code, err)
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, (command, err)
    assert expect in err, (command, expect, err)


def test_documented_commands_run_as_typed(sandbox, capsys, monkeypatch):
    """The whole PLAN in order, in one folder (later commands use what earlier ones made)."""
    root, env = sandbox
    for command, kind, expect in PLAN:
        began = time.time()
        if kind == RUN:
            run_to_end(root, env, command, expect)
        elif kind == START:
            start_and_interrupt(root, env, command, expect)
        elif kind == STOP:
            stops(root, command, expect, capsys, monkeypatch)
        with capsys.disabled():
            print(f"\n{time.time() - began:6.1f} s  {kind:<5}  {command[:100]}", end="")


def test_readme_python_snippet(sandbox):
    """The README's Python example, after the block above made preds.parquet and the model."""
    root, env = sandbox
    text = (ROOT / "README.md").read_text()
    part = text[text.index("### Train, export, predict (from a clean clone)"):]
    snippet = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    if not (root / "preds.parquet").exists():
        pytest.skip("needs the documented commands' outputs (run with test_documented_commands_run_as_typed)")
    run = subprocess.run([sys.executable, "-c", snippet], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "is_unknown" in run.stdout and "score" in run.stdout and "digit" in run.stdout
