"""`launch.py compare`: methods x seeds as one Ray job, and whether EDGE beats each baseline
by more than seed noise.

Every method x seed is a Ray Train run (``compare-<method>-seed<k>`` under OUT/runs) followed
by an evaluation with every score; runs go as Ray tasks, as many at a time as the cluster's
CPUs (and GPUs) hold, with fractional CPUs allowed. The same seed gives every method the
same initial weights and ID data order, so runs are compared in pairs by seed.

OUT then holds results.json (every per-seed value, the tests, the recipes, the wall time),
table.md (mean ± std per method x OOD set for JointEnergy, the paired tests of EDGE against
each baseline, every score), table.csv and compare_jointenergy.png. Statistics and why:
edge_ray/compare/stats.py. Running again with more seeds reuses every finished run.

By default the runs use the embedded benchmark with the demo's recipe and OE set
(oe_letters, which `demo` ranks first); --config runs any config instead.
"""
# The parser lives here, apart from compare.py, so that building the CLI (every command, --help
# included) does not import Ray Train and torch.
from __future__ import annotations

import argparse

from edge_ray.tracking.settings import add_flag as add_tracking_flag


def run(args) -> int:
    from edge_ray.compare.ray_compare import run as run_compare
    from edge_ray.tracking.commands import prepare as prepare_tracking

    prepare_tracking(args)  # MLflow's import (seconds) overlaps the study's set-up

    return run_compare(args)


DEFAULT_METHODS = ("bce", "oe", "energyoe", "edge")  # the demo's four
EPILOG = """examples:
  python launch.py compare --methods bce oe energyoe edge --seeds 5     # the README's study
  python launch.py compare --quick --methods oe edge --seeds 2          # a few minutes on 2 cores
  # EDGE's values from the best Pareto trial of a finished `launch.py tune ... --multi-objective --name demo-search`:
  python launch.py compare --methods oe edge --seeds 5 --edge-from-study results/tune/demo-search
  # on a GPU cluster with the VOC shards (configs/voc.yaml), one Train worker per run, two runs per GPU:
  python launch.py compare --config configs/voc.yaml --methods bce oe edge --seeds 3 --gpus-per-run 0.5 \\
      train.num_workers=1 --out s3://my-edge-bucket/results/compare/voc

Running it again with a larger --seeds trains only the new seeds."""


def add_parser(sub, common) -> None:
    p = sub.add_parser("compare", help="methods x seeds on Ray: mean ± std and paired tests of EDGE "
                       "against each baseline", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=__doc__, epilog=EPILOG)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"training methods (loss.method; energyoe = energy_oe), default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per method (default 5)")
    p.add_argument("--out", default=None, help="output folder, the runs included (default results/compare or "
                   "results/compare-quick; on several nodes a shared folder, e.g. NFS)")
    p.add_argument("--data", default=None, help="embedded-benchmark shards (default data/demo or data/demo-quick; "
                   "built there when missing)")
    p.add_argument("--quick", action="store_true", help="the quick benchmark and 4 epochs (a smoke study)")
    p.add_argument("--oe", default=None, help="OE set of the embedded benchmark (default oe_letters)")
    p.add_argument("--config", default=None, help="a training config to compare on instead of the embedded benchmark")
    p.add_argument("--edge-from-study", default=None, metavar="TUNE_OUT",
                   help="take EDGE's tuned values from a `launch.py tune` output folder (best Pareto trial)")
    p.add_argument("--from-study", nargs="+", default=None, metavar="METHOD=TUNE_OUT",
                   help="take each method's tuned values from its own search, e.g. --from-study "
                        "oe=results/tune/oe-search edge=results/tune/edge-search (each method tuned on the same "
                        "held-out data and budget); the chosen values are printed and kept in results.json")
    p.add_argument("--scores", nargs="+", default=None, help="scores to evaluate (default: all eleven)")
    p.add_argument("--cpus-per-run", type=float, default=None, help="CPUs of one run's Train workers together "
                   "(fractions allowed; default from the config)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="GPUs of one run (0.25 = four runs per GPU)")
    p.add_argument("--max-concurrent", type=int, default=0, help="runs at once (default: as many as fit)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for every run, e.g. train.epochs=3 (anywhere on the line)")
    add_tracking_flag(p)
    common(p)
    p.set_defaults(run=run)


def resume_hint(args) -> str:
    from edge_ray.cli.interrupts import again

    return f"finished runs are kept and reused, unfinished ones resume; continue with: {again(args.argv)}"
