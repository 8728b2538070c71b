#!/usr/bin/env python
"""EDGE on Ray: one entry point for a laptop and for `ray job submit` on a cluster.

    python launch.py demo                       # the embedded benchmark end to end
    python launch.py shards demo --quick --out data/demo
    python launch.py train --config configs/tiny.yaml loss.beta=0.1 train.run_name=tiny-beta
    python launch.py eval --checkpoint runs/tiny --scores jointenergy maxlogit   # its newest checkpoint
    python launch.py rank-oe --id data/demo/id_train --candidates data/demo/oe_*
    python launch.py tune --config configs/tiny.yaml --space tuning/paper_grid.yaml --trials 8 data.oe_val=data/demo-quick/oe_digit7
    python launch.py compare --methods bce oe energyoe edge --seeds 5   # mean ± std, paired tests
    python launch.py export --checkpoint runs/tiny --score jointenergy --tpr 0.95 --out models/tiny-edge
    python launch.py predict --model models/tiny-edge --input data/demo-quick/ood_letters --out preds.parquet

Every command connects to --address / RAY_ADDRESS when given (as inside `ray job submit`)
and starts a local Ray otherwise. Errors are one line with the fix; --debug shows tracebacks.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Train's controller polls its workers this often (propagated to the controller and the
# workers): at Ray's 2 s a run's start and end each wait up to 2 s more, four times in the demo
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

COMMANDS = ("demo", "shards", "rank-oe", "train", "tune", "compare", "eval", "export", "predict")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says how to get help."""

    def error(self, message):
        if "invalid choice" in message:
            word = message.split("invalid choice: ")[1].split(" ")[0]
            message = f"unknown subcommand {word}; choose one of {', '.join(COMMANDS)}"
        self.exit(2, f"error: {message} (see `python {self.prog.split()[0]} --help`)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train with EDGE or a baseline on Ray Train",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a multi-label model with DDP on Ray Train; resumes when run "
                                   "again with the same train.run_name and train.storage_path.",
                       epilog="example:\n  python launch.py train --config configs/tiny.yaml "
                              "loss.method=edge loss.beta=0.1 train.num_workers=2 train.run_name=tiny-2w")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. loss.m=3")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    _common(p)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint with the post-hoc scores",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="One pass over the ID test set and every OOD set; writes results.json, "
                                   "table.md, table.csv and PNG figures.",
                       epilog="example:\n  python launch.py eval --checkpoint runs/tiny "
                              "--ood data/demo/ood_letters data/demo/ood_scribble --scores jointenergy maxlogit")
    p.add_argument("--checkpoint", required=True, help="a checkpoint_* folder, or a run folder (its newest complete checkpoint) "
                                                        "(a local path or a URI such as s3://bucket/runs/...)")
    p.add_argument("--id-train", help="ID training shards (fits Mahalanobis/ReAct/ViM; default: from the run)")
    p.add_argument("--id-test", help="ID test shards (default: from the run's config)")
    p.add_argument("--ood", nargs="+", help="OOD shard dirs (default: from the run's config)")
    p.add_argument("--scores", nargs="+", default=None, help="subset of scores (default: all ten)")
    p.add_argument("--name", default="model", help="training name shown in the table rows")
    p.add_argument("--out", default=None, help="results folder, a local path or a URI (default: "
                                               "<the checkpoint's run folder>/eval)")
    p.add_argument("--gpu", action="store_true", help="evaluate as a Ray task on one GPU")
    _common(p)


def build_parser() -> Parser:
    parser = Parser(prog="launch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}",
                                parser_class=argparse.ArgumentParser)
    from edge_ray.distributed import commands
    commands.add_demo(sub, _common)
    from shards.cli import add_subparsers as add_shards
    add_shards(sub)
    commands.add_rank_oe(sub, _common)
    _add_train(sub)
    commands.add_tune(sub, _common)
    commands.add_compare(sub, _common)
    _add_eval(sub)
    commands.add_export(sub, _common)
    commands.add_predict(sub, _common)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from edge_ray.distributed import commands
    try:
        if args.command in commands.INTERRUPTIBLE:
            from edge_ray.distributed.interrupts import run_interruptible
            return run_interruptible(commands.dispatch, args, hint=commands.resume_hint)
        return commands.dispatch(args)
    except KeyboardInterrupt:  # a command that handles Ctrl-C itself (tune), caught before it could
        try:
            hint = f": {commands.resume_hint(args)}"
        except Exception:  # noqa: BLE001 - the interrupt is what the user must hear about
            hint = ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    except Exception as err:  # one line with the fix, unless --debug
        cause = commands.root_cause(err)
        if getattr(args, "debug", False) or not commands.is_user_error(cause):
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    code = main()
    if code in (130, 143):
        # Interrupted: the command's thread may still be inside torch or Ray's native code, and an
        # ordinary interpreter exit can then abort (SIGABRT) while tearing them down. Everything
        # that matters is written and the hint is printed, so leave at once with the right status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
