"""`launch.py demo`: the whole method on the embedded benchmark, on a laptop CPU.

Stages: build the benchmark shards (scikit-learn digits, photos, Pillow glyphs; no
download) -> train BCE with Ray Train -> rank the OE candidates by dilation distance on
the BCE model's features -> train OE, EnergyOE and EDGE with the chosen OE set -> evaluate
every score -> print the Table-3-style table and write results/. Numbers are whatever the
run gives; nothing is asserted by construction.
"""
from __future__ import annotations

import argparse

from edge_ray.tracking.settings import add_flag as add_tracking_flag


def add_parser(sub, common) -> None:
    p = sub.add_parser("demo", help="run the embedded benchmark end to end (no download)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
                       epilog="examples:\n  python launch.py demo            # about 4 minutes on 2 cores\n"
                              "  python launch.py demo --quick    # about 1 minute\n"
                              "  python launch.py demo --out results/demo-seed1 --seed 1")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--data", default=None, help="where the benchmark shards go (default: data/demo or data/demo-quick)")
    p.add_argument("--quick", action="store_true", help="a quarter of the data, fewer epochs, BCE and EDGE only "
                   "(about 1 minute)")
    p.add_argument("--seed", type=int, default=0, help="seed of the benchmark and of training")
    p.add_argument("--oe", default="ranked", help="OE set for OE/EnergyOE/EDGE: 'ranked' (the smallest "
                   "dilation distance) or a set name such as oe_letters")
    add_tracking_flag(p)
    common(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from edge_ray.demo.ray_demo import run as run_demo
    from edge_ray.tracking.commands import prepare as prepare_tracking

    prepare_tracking(args)  # MLflow's import (seconds) overlaps the shards and Ray's start

    return run_demo(args)


def resume_hint(args) -> str:
    from edge_ray.cli.interrupts import again

    return f"the shards and the finished trainings are kept and reused; continue with: {again(args.argv)}"
