"""`launch.py tune`'s arguments: kept apart from `tune.py` so that building the CLI's parser
(every command, `--help` included) does not import Ray Tune and Optuna."""
from __future__ import annotations

import argparse

from edge_ray.tracking.settings import add_flag as add_tracking_flag
from edge_ray.tune.settings import OBJECTIVES


def run(args) -> int:
    from edge_ray.tracking.commands import prepare as prepare_tracking
    from edge_ray.tune.ray_tune import run as run_tune

    prepare_tracking(args)  # MLflow's import (seconds) overlaps the search's set-up

    return run_tune(args)


EPILOG = """examples:
  python launch.py tune --config configs/voc.yaml --space tuning/paper_grid.yaml --trials 32
  python launch.py tune --config configs/tiny.yaml --space tuning/continuous.yaml --trials 8 \\
      --cpus-per-trial 0.5 --name tiny-cont data.oe_val=data/demo-quick/oe_digit7
  python launch.py tune --resume --name tiny-cont          # after Ctrl+C or a crash
  python -c "import optuna; print(optuna.load_study(study_name='tiny-cont', \\
      storage='sqlite:///results/tune/tiny-cont/study.db').best_params)"

outputs in --out (default results/tune/NAME): trials.md, trials.csv, best.yaml (train it with
`launch.py train --config best.yaml`), objective.png, pareto.md (--multi-objective), study.db,
search.yaml (the saved settings --resume uses)."""


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "tune", help="hyper-parameter search: Ray Tune + Optuna TPE + ASHA over Ray Train runs",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Search loss.alpha, loss.beta, loss.k, loss.m, loss.tau (any config key) with Optuna "
                    "TPE on Ray Tune; every trial is a Ray Train run, ASHA stops weak ones early. The "
                    "objective uses ID validation (data.id_val) and held-out OE (data.oe_val) only.")
    p.add_argument("--config", help="base YAML config (see configs/)")
    p.add_argument("--space", help="search space YAML (see tuning/); values a run of this length refuses "
                                   "(loss.tau above train.epochs) are left out, and the search says which")
    p.add_argument("--trials", type=int, help="number of trials")
    p.add_argument("--metric", default="val_fpr95", help=f"objective, one of {', '.join(OBJECTIVES)} "
                                                         "(default val_fpr95)")
    p.add_argument("--mode", default="min", choices=("min", "max"), help="minimise or maximise (default min)")
    p.add_argument("--multi-objective", action="store_true",
                   help="optimise --metric and val_map (max) together; writes the Pareto front")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db)")
    p.add_argument("--name", help="search name (default CONFIG-SPACE): Tune experiment and Optuna study")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of this name")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (default: as many as the cluster's GPUs or CPUs hold)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs of one trial, its Train workers and its driver "
                   "together (fractions allowed; default from the config); 1 on a 2-CPU machine runs two trials at once")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs of a trial's Train workers together "
                                                        "(0.5 = two trials share a GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--grace-epochs", type=int, default=1,
                   help="ASHA's first rung: epochs every trial trains before it can be stopped (default 1; "
                        "for EDGE, past loss.tau so the gap term is judged too)")
    p.add_argument("--reduction-factor", type=int, default=4,
                   help="ASHA keeps the best 1/N of the trials at each rung (default 4; rungs at "
                        "grace x N^i epochs)")
    p.add_argument("--out", help="output folder (default results/tune/NAME)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the base config")
    add_tracking_flag(p)
    common(p)
    p.set_defaults(run=run)


def resume_hint(args) -> str:
    from edge_ray.cli.interrupts import again
    from edge_ray.tune.ray_tune import resume_command, settings_from_args, started

    s = settings_from_args(args)
    if started(s):
        return f"finished trials are kept, unfinished ones continue; continue the search with: {resume_command(s)}"
    return f"the search had not started (nothing was kept); start it again with: {again(args.argv)}"
