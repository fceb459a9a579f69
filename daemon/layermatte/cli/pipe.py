"""layermatte pipe: raw pixels on stdin, raw matte on stdout.

The plug-ins' transport when the editor's Python has no usable grpc (most
editors' own Pythons), run once per click, so its start-up is on the user's
clock: to the user's daemon it speaks the framed transport (framed.py,
standard library only); gRPC (rawclient) only where that is not offered, e.g.
to start a daemon or on Windows. Never numpy or the pipeline.

Protocol PROTOCOL (the plug-in passes `--protocol N` first, and a program that
speaks no N says so before it reads anything):
* stderr: one JSON object per line: {"hello": {"version", "protocol"}} first,
  {"alive": true} every HEARTBEAT_S while it runs (a silent child is a hung
  one), {"stage", "progress"}, then {"summary"} on success or {"error"}, with
  "mismatch": {"version", "protocols"} when the protocol is not spoken here,
  "cancelled": true when the request was cancelled.
* stdin: the planes (pixels, then the GRAY8 guide with --guide), then kept
  open by the plug-in: its end before the answer (the plug-in cancelled, or
  died) cancels the request in the daemon.
* stdout: the matte (then the colours with --foreground), exactly sized.
Without --protocol (people and scripts) stdin may end after the planes; a
parent that dies (the parent pid changes) still cancels the request.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from .. import __version__
from ..transport import framed
from ..transport.endpoint import resolve_address
from ..system.platforms import parent_changed, parent_id
from ..errors import Cancelled, InvalidInput, LayermatteError
from .common import QUALITIES, add_connection

PROTOCOL = 2          # 1: the unversioned pipe of 0.1 (no --protocol, no hello)
PROTOCOLS = (1, 2)
HEARTBEAT_S = 2.0
PARENT_POLL_S = 0.2
_write_lock = threading.Lock()


def _event(**kv) -> None:
    """One line on stderr, written whole on the raw fd: the heartbeat thread may
    still be writing when the program ends, and a daemon thread inside a
    buffered stream's lock at exit is a fatal error for Python."""
    line = (json.dumps(kv) + "\n").encode()
    with _write_lock:
        try:
            while line:
                line = line[os.write(2, line):]
        except OSError:   # the plug-in is gone: nobody to tell
            pass


class _Protocol(argparse.Action):
    """Checked the moment argparse meets it (the plug-in sends it first): a
    newer plug-in's unknown flags further on cannot hide the real cause."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value not in PROTOCOLS:
            _event(error=f"this layermatte program (version {__version__}) speaks pipe protocols "
                         f"{', '.join(map(str, PROTOCOLS))}, not {value}",
                   mismatch={"version": __version__, "protocols": list(PROTOCOLS)})
            sys.exit(3)
        setattr(namespace, self.dest, value)


def register(sub):
    p = sub.add_parser("pipe", help="raw pixels in, raw matte out (for editor plug-ins)")
    p.add_argument("--protocol", type=int, action=_Protocol, default=1,
                   help=f"the plug-ins' pipe protocol (this program speaks {PROTOCOLS})")
    p.add_argument("--width", type=int, required=True, help="layer width in pixels")
    p.add_argument("--height", type=int, required=True, help="layer height in pixels")
    p.add_argument("--format", required=True, choices=sorted(framed.FORMATS),
                   help="pixel layout of the planes on stdin")
    p.add_argument("--model", default="", help="model id (default: the daemon's default model)")
    p.add_argument("--feather", type=float, default=0.0, metavar="PX", help="soften the edge by PX pixels")
    p.add_argument("--shift", type=float, default=0.0, metavar="PX", help="move the edge out (+) or in (-)")
    p.add_argument("--smooth", type=float, default=0.0, help="round jagged contours, 0..1")
    p.add_argument("--contrast", type=float, default=0.0, help="harden (+) or soften (-) the edge, -1..1")
    p.add_argument("--quality", choices=QUALITIES, default="fast",
                   help="fast: edge-aware upsampling; hq: plus matting on hair/fur edges (slower)")
    p.add_argument("--guide", action="store_true", help="a GRAY8 mask to refine follows the pixels")
    p.add_argument("--depth16", action="store_true", help="write a 16-bit little-endian matte")
    p.add_argument("--foreground", action="store_true",
                   help="after the matte, write the cut-out colours (RGB8, or RGB16 little-endian "
                        "for deeper formats)")
    p.add_argument("--decontaminate", action="store_true", help="remove background colour from edges")
    add_connection(p)
    p.set_defaults(run=run)


def _read_exact(stream, n: int) -> bytearray:
    """n bytes from the raw stream: nothing read ahead, so what follows on
    stdin is the lifeline's."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise InvalidInput(f"stdin ended after {got} of {n} bytes")
        got += k
    return buf


def _watch(cancel: threading.Event, done: threading.Event, stdin_is_lifeline: bool,
           heartbeat: bool) -> None:
    """Cancel when the parent goes: stdin ends (a plug-in keeps it open until it
    has the answer) or, where the system re-parents orphans, the parent pid
    changes. Heartbeats meanwhile, so that the plug-in can tell a hung child."""
    parent = parent_id()
    if stdin_is_lifeline:
        def lifeline():
            try:   # the raw fd, for the same reason as in _event
                while os.read(0, 65536):
                    pass
            except OSError:
                pass
            cancel.set()
        threading.Thread(target=lifeline, daemon=True).start()
    beat = 0.0
    while not done.wait(PARENT_POLL_S):
        if parent_changed(parent):
            cancel.set()
        beat += PARENT_POLL_S
        if heartbeat and beat >= HEARTBEAT_S:
            beat = 0.0
            _event(alive=True)


def run(args) -> int:
    versioned = args.protocol >= 2
    if versioned:
        _event(hello={"version": __version__, "protocol": args.protocol})
    cancel, done = threading.Event(), threading.Event()
    try:
        if args.width < 1 or args.height < 1:
            raise InvalidInput(f"layer size must be at least 1x1, got {args.width}x{args.height}")
        n = args.width * args.height
        # While the planes arrive, the parent's end shows as a short read.
        planes = [_read_exact(sys.stdin.buffer.raw, n * framed.FORMATS[args.format])]
        if args.guide:
            planes.append(_read_exact(sys.stdin.buffer.raw, n))
        threading.Thread(target=_watch, args=(cancel, done, versioned, versioned), daemon=True).start()
        answers, summary = _call(args, planes, cancel)
        try:
            for plane in answers:
                sys.stdout.buffer.write(plane)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, ValueError):   # the reader went away: nobody wants the answer
            return 3
        _event(summary=summary)
        return 0
    except Cancelled as e:
        _event(error=str(e), cancelled=True)
        return 130
    except LayermatteError as e:
        _event(error=str(e))
        return 2
    finally:
        done.set()


def _call(args, planes: list[bytearray], cancel: threading.Event) -> tuple[list, dict]:
    """The framed transport when the user's daemon offers it (standard library
    only: the common case costs no grpc import), else gRPC, which also starts
    a daemon when none runs."""
    foreground = args.foreground
    header = framed.header(
        request_id=os.urandom(6).hex(), width=args.width, height=args.height,
        format_name=args.format, model_id=args.model, feather_px=args.feather,
        shift_px=args.shift, smooth=args.smooth, contrast=args.contrast, quality=args.quality,
        decontaminate=foreground and args.decontaminate, depth16=args.depth16,
        guide=args.guide, foreground=foreground)
    address = resolve_address(args.socket, args.address)
    sock = framed.connect(address)
    if sock is not None:
        sizes = framed.answer_sizes(args.width, args.height, args.format, args.depth16, foreground)
        return framed.matte(sock, header, [memoryview(p) for p in planes], sizes,
                            progress=lambda s, f: _event(stage=s, progress=f), cancel=cancel)
    return _call_grpc(args, address, header, planes, cancel)


def _call_grpc(args, address: str, header: dict, planes: list[bytearray],
               cancel: threading.Event) -> tuple[list, dict]:
    from ..transport.rawclient import RawClient, RawRequest, default_token, ensure_daemon, format_names
    from ..transport.rawclient import pb
    quality = {"fast": pb.REFINEMENT_QUALITY_FAST, "hq": pb.REFINEMENT_QUALITY_HQ}
    req = RawRequest(width=args.width, height=args.height,
                     format_code=format_names()[args.format], pixels=planes[0],
                     guide=planes[1] if args.guide else None, model_id=args.model,
                     feather_px=args.feather, shift_px=args.shift, smooth=args.smooth,
                     contrast=args.contrast, quality=quality[args.quality], depth16=args.depth16,
                     foreground=args.foreground,
                     decontaminate=header["refinement"]["decontaminate"],
                     request_id=header["request_id"])
    token = args.token_file.read_text().strip() if args.token_file else None
    client = RawClient(address, token=token or default_token(address))
    try:
        if not args.no_autostart:
            found = ensure_daemon(address, channel=client.channel)
            if found != address:   # the user's TCP daemon published its address (Windows)
                client.close()
                client = RawClient(found, token=token or default_token(found))
        if cancel.is_set():
            raise Cancelled("request cancelled before it was sent")
        reply = client.matte(req, progress=lambda s, f: _event(stage=s, progress=f), cancel=cancel)
    finally:
        client.close()
    return [p for p in (reply.matte, reply.foreground) if p is not None], reply.summary
