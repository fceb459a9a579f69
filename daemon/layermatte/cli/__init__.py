"""`layermatte` command line. One module per subcommand, each with
register(subparsers) and run(args) -> exit code.

Only the module of the command being run is imported (the others get a
placeholder parser carrying their one-line help), and command modules import
their heavy libraries inside run(): `--help`, `--version`, `models list` and
the like start in a tenth of a second (bench/startup.py).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import LayermatteError

# name: (module, the line `layermatte --help` shows; the module's own help= says the same)
COMMANDS = {
    "serve": ("serve", "run the matting daemon"),
    "stop": ("stop", "stop the background daemon"),
    "cut": ("cut", "remove the background of image files"),
    "refine": ("refine", "refine an existing matte against its image (no model)"),
    "models": ("models", "list, download and check models"),
    "doctor": ("doctor", "check providers, GPU, cache, daemon and editors"),
    "pipe": ("pipe", "raw pixels in, raw matte out (for editor plug-ins)"),
    "psd": ("psd", "add AI layer masks to the layers of a PSD/PSB file"),
    "batch": ("batch", "remove the background of every image in a folder (recursive)"),
    "install": ("install", "install the GIMP 3 or Krita plug-in"),
    "uninstall": ("install", "uninstall the GIMP 3 or Krita plug-in"),
    "completion": ("completion", "print a shell completion script (bash, zsh)"),
}
EXIT_ERROR = 2
log = logging.getLogger("layermatte.cli")


class Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line shape as every other failure."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"layermatte: error: {message} (see `{self.prog} --help`)\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _logging(args) -> None:
    # Commands for people log warnings only; the daemon logs INFO. Each -v is one level more.
    base = getattr(args, "log_level", logging.WARNING)
    level = max(logging.DEBUG, base - 10 * getattr(args, "verbose", 0))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if getattr(args, "log_format", "text") == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """-v and --log-format, accepted before the command and after it."""
    default = (lambda value: value) if top else (lambda _: argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=default(0),
                   help="more detail: per-stage timings and INFO logs (-vv: debug logs)")
    p.add_argument("--log-format", choices=["text", "json"],
                   default=default(os.environ.get("LAYERMATTE_LOG_FORMAT", "text")),
                   help="log lines as text or JSON (env LAYERMATTE_LOG_FORMAT)")


def _all_parsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _all_parsers(child)


def _command_in(argv: list[str]) -> str | None:
    """The subcommand's name: the first word that is not a global option."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--log-format":
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with argv, only the command argv names is registered for
    real (None: every command, e.g. for tests and completion)."""
    parser = Parser(prog="layermatte", description="Local AI background removal and alpha matting.")
    parser.add_argument("--version", action="version", version=f"layermatte {__version__}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = None if argv is None else COMMANDS.get(_command_in(argv) or "", (None,))[0]
    registered = set()
    for name, (module, summary) in COMMANDS.items():
        if argv is not None and module != wanted:
            sub.add_parser(name, help=summary)
        elif module not in registered:   # one module may register several commands
            importlib.import_module(f"{__name__}.{module}").register(sub)
            registered.add(module)
    for child in _all_parsers(parser):
        _global_options(child, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    _logging(args)
    try:
        return args.run(args) or 0
    except LayermatteError as e:
        print(f"layermatte: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("layermatte: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `layermatte models list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as e:   # a file or folder the checks before the work could not foresee
        where = f"{e.filename}: " if e.filename else ""
        print(f"layermatte: error: {where}{e.strerror or e}; check that path and its permissions",
              file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:   # a bug: one line for people, the traceback with -v
        log.debug("internal error", exc_info=True)
        print(f"layermatte: error: internal error ({type(e).__name__}: {e}); run again with -vv "
              "for the details and please report it", file=sys.stderr)
        return EXIT_ERROR
