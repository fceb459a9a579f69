"""Options shared by the client subcommands (daemon address, edge options)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

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
    from ..pipeline import QUALITIES
    g.add_argument("--feather", type=float, default=0.0, metavar="PX", help="soften the edge by PX pixels")
    g.add_argument("--shift", type=float, default=0.0, metavar="PX", help="move the edge out (+) or in (-)")
    g.add_argument("--smooth", type=float, default=0.0, help="round jagged contours, 0..1")
    g.add_argument("--contrast", type=float, default=0.0, help="harden (+) or soften (-) the edge, -1..1")
    g.add_argument("--quality", choices=QUALITIES, default="fast",
                   help="fast: edge-aware upsampling; hq: plus matting on hair/fur edges (slower)")
    g.add_argument("--plain-upsample", action="store_true", help="bilinear instead of edge-aware upsampling")


def add_matte_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("matte")
    g.add_argument("--model", default="", help="catalogue id (default: isnet-general)")
    add_edge_options(g)
    g.add_argument("--decontaminate", action=argparse.BooleanOptionalAction, default=True,
                   help="remove background colour from edge pixels of cut-outs (default: on)")


def matte_options(args, *, return_foreground: bool, depth16: bool = False) -> MatteOptions:
    from ..pipeline import MatteOptions
    from ..refine import EdgeOptions
    return MatteOptions(edges=EdgeOptions(feather_px=args.feather, shift_px=args.shift,
                                          smooth=args.smooth, contrast=args.contrast),
                        decontaminate=args.decontaminate and return_foreground,
                        plain_upsample=args.plain_upsample, depth16=depth16,
                        return_foreground=return_foreground, quality=args.quality)


def connect(args) -> Client:
    from ..client import Client, default_token, ensure_daemon, resolve_address
    address = resolve_address(args.socket, args.address)
    if not getattr(args, "no_autostart", False):
        address = ensure_daemon(address)
    if getattr(args, "token_file", None):
        token = args.token_file.read_text().strip()
    else:
        token = default_token(address)
    return Client(address, token=token)
