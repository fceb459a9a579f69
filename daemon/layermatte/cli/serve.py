"""layermatte serve: run the daemon in the foreground."""
from __future__ import annotations

import logging
import stat
import sys
import threading
from pathlib import Path

from ..catalog import Catalog
from ..daemon import Daemon, Limits
from ..engine import Engine, limit_malloc_arenas
from ..errors import InvalidInput
from ..server import AlreadyRunning, ServeConfig, serve

log = logging.getLogger("layermatte.serve")


def register(sub):
    p = sub.add_parser("serve", help="run the matting daemon")
    p.add_argument("--socket", type=Path, help="unix socket path (default: user runtime dir)")
    p.add_argument("--port", type=int, help="also listen on TCP (loopback unless --host)")
    p.add_argument("--host", default="127.0.0.1", help="TCP address; non-loopback needs --token-file")
    p.add_argument("--token-file", type=Path, help="file holding the token TCP clients must present")
    p.add_argument("--provider", help="execution provider: tensorrt, cuda, directml, coreml or cpu")
    p.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    p.add_argument("--concurrency", type=int, default=Limits.concurrency)
    p.add_argument("--queue", type=int, default=Limits.queue_depth)
    p.add_argument("--deadline", type=float, default=Limits.deadline_s,
                   help="seconds one request may take before it is stopped")
    p.add_argument("--no-warm", action="store_true", help="do not load the default model at start")
    p.add_argument("--idle-release", type=float, default=Limits.idle_release_s, metavar="SECONDS",
                   help="after this long without requests, give inference memory back "
                        "(default %(default)s; 0 keeps it)")
    p.add_argument("--low-memory", action="store_true",
                   help="give inference memory back right after each request (the next one "
                        "pays ~0.2 s to grow it again); same as --idle-release 0.5")
    p.add_argument("-v", "--verbose", dest="sub_verbose", action="store_true", help="debug logging")
    p.set_defaults(run=run)


def _read_token(path: Path) -> str:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInput(f"{path} is readable by other users; chmod 600 it")
    token = path.read_text().strip()
    if len(token) < 16:
        raise InvalidInput(f"the token in {path} is too short (at least 16 characters)")
    return token


def run(args) -> int:
    token = _read_token(args.token_file) if args.token_file else None
    limit_malloc_arenas()   # first, before any thread allocates
    catalog = Catalog()
    engine = Engine(catalog, provider=args.provider)
    daemon = Daemon(catalog, engine, Limits(max_pixels=args.max_pixels,
                                            concurrency=max(1, args.concurrency),
                                            queue_depth=max(0, args.queue),
                                            deadline_s=args.deadline,
                                            idle_release_s=0.5 if args.low_memory
                                            else max(0.0, args.idle_release)))
    if not args.no_warm:
        threading.Thread(target=_warm, args=(catalog, engine), daemon=True).start()
    cfg = ServeConfig(socket=args.socket.absolute() if args.socket else None, port=args.port,
                      host=args.host, token=token)
    try:
        serve(daemon, cfg)
    except AlreadyRunning as e:
        print(f"layermatte: {e}", file=sys.stderr)
        return 0
    return 0


def _warm(catalog: Catalog, engine: Engine) -> None:
    """Load the default model in the background so the first click is fast."""
    spec = catalog.get(None)
    if catalog.is_pulled(spec):
        try:
            engine.load(spec.id)
        except Exception as e:  # the request path reports it properly later
            log.warning("could not pre-load %s: %s", spec.id, e)
    else:
        log.info("default model %s not downloaded yet: `layermatte models pull`", spec.id)
