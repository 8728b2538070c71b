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

from edge_ray.cli.commands import COMMANDS, INTERRUPTIBLE, add_parsers  # noqa: E402 - after the environment


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says how to get help."""

    def error(self, message):
        if "invalid choice" in message:
            word = message.split("invalid choice: ")[1].split(" ")[0]
            message = f"unknown subcommand {word}; choose one of {', '.join(COMMANDS)}"
        self.exit(2, f"error: {message} (see `python {self.prog.split()[0]} --help`)\n")


def build_parser() -> Parser:
    parser = Parser(prog="launch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}",
                                parser_class=argparse.ArgumentParser)
    add_parsers(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from edge_ray.cli import commands
    try:
        if args.command in INTERRUPTIBLE:
            from edge_ray.cli.interrupts import run_interruptible
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
        from edge_ray.cli.ray_errors import root_cause

        cause = root_cause(err)
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
