"""``python -m romsim.fl run --config fl.toml``: the same as ``romsim fl run`` (for use before
the ``fl`` command is wired into romsim.cli)."""

from __future__ import annotations

import argparse
import sys

from romsim.errors import RomsimInputError


def main(argv: list[str] | None = None) -> int:
    from romsim.fl.cli import add_parser

    p = argparse.ArgumentParser(prog="python -m romsim.fl")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["fl", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except RomsimInputError as e:
        print(f"romsim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
