"""`python -m shards <kind> ...`: the same CLI as `launch.py shards`, standalone."""
import argparse
import sys

from .cli import add_subparsers, run
from .errors import ConversionError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["shards", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
