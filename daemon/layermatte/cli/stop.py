"""layermatte stop: stop the user's daemon (auto-started or `serve`), cleanly."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub):
    p = sub.add_parser("stop", help="stop the background daemon",
                       description="Stop the daemon on the socket: it finishes the requests in "
                                   "flight, then exits and removes its socket. Exit code 0 also "
                                   "when none was running (it says so).")
    p.add_argument("--socket", type=Path,
                   help="the daemon's unix socket (default: $LAYERMATTE_SOCKET or the user's own daemon)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for requests in flight to finish (default %(default)s)")
    p.set_defaults(run=run)


def run(args) -> int:
    import os

    from ..system import lifecycle
    socket = args.socket or os.environ.get("LAYERMATTE_SOCKET") or None
    files = lifecycle.files_for(socket)
    where = files.socket or files.folder
    pid = lifecycle.stop(files, timeout=args.timeout)
    if pid is None:
        print(f"layermatte: no daemon is running on {where}", file=sys.stderr)
    else:
        print(f"layermatte: stopped the daemon on {where} (pid {pid})", file=sys.stderr)
    return 0
