"""`layermatte` command line. One module per subcommand, each with
register(subparsers) and run(args) -> exit code."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import LayermatteError

COMMANDS = ["serve", "cut", "refine", "models", "doctor", "pipe", "psd", "batch", "install"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _logging(verbose: bool, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layermatte", description="Local AI background removal and alpha matting.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=["text", "json"],
                        default=os.environ.get("LAYERMATTE_LOG_FORMAT", "text"),
                        help="log lines as text or JSON (env LAYERMATTE_LOG_FORMAT)")
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
    _logging(args.verbose or getattr(args, "sub_verbose", False), args.log_format)
    try:
        return args.run(args) or 0
    except LayermatteError as e:
        print(f"layermatte: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layermatte: interrupted", file=sys.stderr)
        return 130
