"""`make test`: the suite in four pytest processes, one after the other, each with its own
session Ray (conftest.ray_local), instead of one process for all of it.

Why: the pytest process is the Ray driver of every in-process test (dozens of Train runs,
interrupted runs, Ray Data runs). Twice on the 2-core VM (2026-12-07), and once in CI, that
driver stopped getting its tasks run after ~65% of the suite (a Ray Data predict, then a
Train fit, waited forever on work the raylet never saw), while a fresh process on the same
Ray ran the same command in seconds. Four processes keep each driver's history short. Not
a fix of Ray's driver; a fresh driver per part of the suite, as a user's commands each get.

    python -m tests.suite [pytest args]   # what `make test ARGS=...` runs
An argument naming a test file or folder runs that alone, in one process, as plain pytest.
Exit status: 0 when every part passed, else the first failing part's (every part runs).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# contiguous groups of test files by first letter(s) of the name after "test_", in
# collection order; each takes ~a quarter of the suite's Ray work
GROUPS = (("a", "e"), ("f", "o"), ("p", "s"), ("t", "z"))


def parts() -> list[list[str]]:
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    out = []
    for lo, hi in GROUPS:
        group = [f for f in files if lo <= Path(f).stem[len("test_"):][:1] <= hi]
        if group:
            out.append(group)
    missing = set(files) - {f for g in out for f in g}
    if missing:
        raise SystemExit(f"tests/suite.py: {sorted(missing)} fall in no group; widen GROUPS")
    return out


def main(argv: list[str]) -> int:
    base = [sys.executable, "-m", "pytest", "-q", "--durations=10"]
    if any((ROOT / a.split("::")[0]).exists() for a in argv if not a.startswith("-")):
        return subprocess.call([*base, *argv], cwd=ROOT)
    status, began, empty = 0, time.time(), 0
    groups = parts()
    for i, group in enumerate(groups, 1):
        print(f"\n=== tests/suite.py: part {i}/{len(groups)}: {group[0]} .. {group[-1]} "
              f"({len(group)} files) ===", flush=True)
        rc = subprocess.call([*base, *group, *argv], cwd=ROOT)
        if rc == 5:  # no test selected in this part by the arguments (e.g. -k): not a failure...
            empty, rc = empty + 1, 0
        status = status or rc
    if empty == len(groups):  # ...unless no part selected any: pytest's 5, so CI fails
        status = 5
    print(f"\n=== tests/suite.py: {len(groups)} parts in {time.time() - began:.0f} s, "
          f"{'all passed' if status == 0 else f'a part failed (exit {status})'} ===", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
