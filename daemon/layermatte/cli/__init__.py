"""`layermatte` command line. One module per subcommand, each with
register(subparsers) and run(args) -> exit code."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import LayermatteError

COMMANDS = ["serve", "cut", "models", "doctor", "pipe", "psd", "batch", "install"]


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layermatte", description="Local AI background removal and alpha matting.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    try:
        return args.run(args) or 0
    except LayermatteError as e:
        print(f"layermatte: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layermatte: interrupted", file=sys.stderr)
        return 130
