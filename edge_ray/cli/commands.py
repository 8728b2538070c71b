"""The table of `launch.py`'s commands and what every command shares: the common options,
which errors are the user's (one line), and the line an interrupted command prints.

Each command lives in its feature's folder: its `cli.py` adds the parser and sets
`run` (the handler); the work is in the folder's other modules (`ray_*.py` where it runs
on Ray). Building the parser imports none of that work (no torch, no Ray Train / Tune).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from edge_ray.cli.interrupts import again

# name -> "module:function that adds its parser", in the order `--help` lists them
COMMANDS = {
    "demo": "edge_ray.demo.cli:add_parser",
    "shards": "shards.cli:add_parser",
    "rank-oe": "edge_ray.oe.cli:add_parser",
    "train": "edge_ray.train.cli:add_parser",
    "tune": "edge_ray.tune.cli:add_parser",
    "compare": "edge_ray.compare.cli:add_parser",
    "eval": "edge_ray.evaluate.cli:add_parser",
    "export": "edge_ray.detector.cli:add_export_parser",
    "predict": "edge_ray.detector.cli:add_predict_parser",
}
# Commands run in a worker thread that the main thread can interrupt (`interrupts.py`); tune
# keeps the main thread, where Ray Tune's own Ctrl-C handler ends a search gracefully.
INTERRUPTIBLE = set(COMMANDS) - {"tune"}


def _target(name: str):
    module, function = COMMANDS[name].split(":")
    return importlib.import_module(module), function


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_parsers(sub) -> None:
    """Every command's parser, each from its own module."""
    for name in COMMANDS:
        module, function = _target(name)
        getattr(module, function)(sub, add_common)


def dispatch(args) -> int:
    return args.run(args)


def is_user_error(err: Exception) -> bool:
    """Errors that come from input (files, configs, addresses): shown as one line. (A
    ConfigError is a ValueError; a ClusterError can only come from a command that used Ray.)"""
    cluster = sys.modules.get("edge_ray.ray_cluster")
    kinds = (ValueError, FileNotFoundError, FileExistsError, NotImplementedError)
    return isinstance(err, kinds + ((cluster.ClusterError,) if cluster else ()))


def resume_hint(args) -> str:
    """One line: what an interrupted command left and the command that continues it (the
    command's module says it with a `resume_hint(args)` of its own, else nothing was kept)."""
    module, _ = _target(args.command)
    hint = getattr(module, "resume_hint", None)
    if hint is not None:
        return hint(args)
    return f"nothing was written (results are written at the end); run it again with: {again(args.argv)}"
