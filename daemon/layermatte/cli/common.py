"""Options shared by the client subcommands (daemon address, edge options)
and the checks every command makes before any work."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import InvalidInput

from ..imaging.options import QUALITIES  # noqa: F401 (pipe.py takes it from here)

# The client, pipeline and refine imports are inside the functions: `layermatte
# pipe` uses add_connection and must not pay for numpy, OpenCV and onnxruntime.


def add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("daemon")
    g.add_argument("--socket", help="daemon unix socket (default: $LAYERMATTE_SOCKET or the user runtime dir)")
    g.add_argument("--address", help="daemon address such as 127.0.0.1:50051 ($LAYERMATTE_ADDRESS)")
    g.add_argument("--token-file", type=Path, help="file with the daemon's token (TCP only)")
    g.add_argument("--no-autostart", action="store_true",
                   help="fail instead of starting a daemon when none is running")


def add_edge_options(g) -> None:
    """The refinement options, the same for cut, psd, batch and refine."""
    g.add_argument("--feather", type=float, default=0.0, metavar="PX", help="soften the edge by PX pixels")
    g.add_argument("--shift", type=float, default=0.0, metavar="PX", help="move the edge out (+) or in (-)")
    g.add_argument("--smooth", type=float, default=0.0, help="round jagged contours, 0..1")
    g.add_argument("--contrast", type=float, default=0.0, help="harden (+) or soften (-) the edge, -1..1")
    g.add_argument("--quality", choices=QUALITIES, default="fast",
                   help="fast: edge-aware upsampling; hq: plus matting on hair/fur edges (slower)")
    g.add_argument("--plain-upsample", action="store_true", help="bilinear instead of edge-aware upsampling")


def add_decontaminate(g, what: str = "cut-outs") -> None:
    """On by default wherever colours are written; a matte alone has no colours to clean."""
    g.add_argument("--decontaminate", action=argparse.BooleanOptionalAction, default=True,
                   help=f"remove background colour from edge pixels of {what} (default: on; "
                        "no effect on a matte alone)")


def add_matte_options(p: argparse.ArgumentParser, decontaminate: str | None = "cut-outs") -> None:
    g = p.add_argument_group("matte")
    g.add_argument("--model", default="", help="catalogue id (default: isnet-general; `layermatte models list`)")
    add_edge_options(g)
    if decontaminate:
        add_decontaminate(g, decontaminate)


def matte_options(args, *, return_foreground: bool, depth16: bool = False) -> MatteOptions:
    from ..imaging.options import EdgeOptions, MatteOptions
    return MatteOptions(edges=EdgeOptions(feather_px=args.feather, shift_px=args.shift,
                                          smooth=args.smooth, contrast=args.contrast),
                        decontaminate=getattr(args, "decontaminate", False) and return_foreground,
                        plain_upsample=args.plain_upsample, depth16=depth16,
                        return_foreground=return_foreground, quality=args.quality)


def _say(line: str) -> None:
    print(f"layermatte: {line}", file=sys.stderr)


def connect(args):
    """A Client for the daemon args name; starts one (and says so) unless --no-autostart."""
    from ..system import lifecycle
    from ..transport.client import Client, default_token, ensure_daemon, resolve_address
    address = resolve_address(args.socket, args.address)
    if address.startswith("unix:"):
        lifecycle.check_socket_path(Path(address[len("unix:"):]))
    if not getattr(args, "no_autostart", False):
        address = ensure_daemon(address, announce=_say)
    if getattr(args, "token_file", None):
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            raise InvalidInput(f"--token-file {args.token_file}: {e.strerror}") from None
    else:
        token = default_token(address)
    return Client(address, token=token)


def warn(line: str) -> None:
    print(f"layermatte: warning: {line}", file=sys.stderr)


def is_std(path) -> bool:
    return str(path) == "-"


def check_input(path: Path) -> None:
    """Before any work: the input is a readable file."""
    if is_std(path):
        return
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder, not an image file (`layermatte batch` does folders)")
    if not path.exists():
        raise InvalidInput(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"{path}: not readable (check its permissions)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _unwritable(folder: Path) -> str | None:
    """The OS's reason a file cannot be created in folder, or None. A real probe file
    (removed at once): os.access says nothing useful for root or read-only mounts."""
    import tempfile
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".layermatte-probe-"):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def check_output(path: Path, inputs=()) -> None:
    """Before any work: the output's folder exists and is writable, the output is
    not a folder and not one of the inputs (it would be overwritten)."""
    if is_std(path):
        return
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder; give an output file name")
    folder = path.absolute().parent
    if not folder.exists():
        raise InvalidInput(f"output folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is a file, not a folder; choose another output path")
    why = _unwritable(folder)
    if why:
        raise InvalidInput(f"output folder {folder} is not writable ({why}); choose another output path")
    for src in inputs:
        if not is_std(src) and _same_file(Path(src), path):
            raise InvalidInput(f"the output {path} is the input file: it would be overwritten; "
                               "choose another output name")
