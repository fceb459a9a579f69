"""layermatte serve: run the daemon in the foreground.

Started by hand it stays until stopped (Ctrl+C, SIGTERM, `layermatte stop`);
started by a client's autostart it gets --idle-exit and goes away when idle.
A second `serve` on a socket that has a daemon exits 2 and says so.
"""
from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path

from ..errors import InvalidInput
from ..transport.limits import Limits

log = logging.getLogger("layermatte.serve")


def register(sub):
    p = sub.add_parser("serve", help="run the matting daemon",
                       description="Run the matting daemon in the foreground (Ctrl+C or "
                                   "`layermatte stop` stops it). Exit code 2 when it cannot start, "
                                   "e.g. when a daemon already runs on the socket.")
    p.add_argument("--socket", type=Path, help="unix socket path (default: the user's runtime folder)")
    p.add_argument("--port", type=int, help="also listen on TCP (loopback unless --host)")
    p.add_argument("--host", default="127.0.0.1", help="TCP address; non-loopback needs --token-file")
    p.add_argument("--token-file", type=Path, help="file holding the token TCP clients must present")
    p.add_argument("--provider", help="execution provider: tensorrt, cuda, directml, coreml or cpu")
    p.add_argument("--max-pixels", type=int, default=Limits.max_pixels, metavar="N",
                   help="refuse layers of more than N pixels (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=Limits.concurrency, metavar="N",
                   help="requests worked on at once; inference uses every core already "
                        "(default %(default)s)")
    p.add_argument("--queue", type=int, default=Limits.queue_depth, metavar="N",
                   help="requests that may wait for a free slot; more are refused as busy "
                        "(default %(default)s)")
    p.add_argument("--deadline", type=float, default=Limits.deadline_s, metavar="SECONDS",
                   help="seconds one request may take before it is stopped (default %(default)s)")
    p.add_argument("--no-warm", action="store_true", help="do not load the default model at start")
    p.add_argument("--idle-release", type=float, default=Limits.idle_release_s, metavar="SECONDS",
                   help="after this long without requests, give inference memory back "
                        "(default %(default)s; 0 keeps it)")
    p.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                   help="exit after this long without requests (default 0: stay; an auto-started "
                        "daemon gets $LAYERMATTE_IDLE_EXIT, else 300)")
    p.add_argument("--low-memory", action="store_true",
                   help="give inference memory back right after each request (the next one "
                        "pays ~0.2 s to grow it again); same as --idle-release 0.5")
    p.set_defaults(run=run, log_level=logging.INFO)


def _read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as e:
        raise InvalidInput(f"--token-file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInput(f"{path} is readable by other users; chmod 600 it")
    if len(token) < 16:
        raise InvalidInput(f"the token in {path} is too short (at least 16 characters)")
    return token


def _port_free(host: str, port: int | None) -> None:
    """A port someone listens on, found before the runtime loads (grpc's own bind
    error comes later; server.serve turns it into the same line)."""
    if not port:
        return
    import socket
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as grpc: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise InvalidInput(f"cannot listen on {host}:{port}: {e.strerror}: another daemon or "
                               "program has it? choose another --port") from None


def run(args) -> int:
    from ..system import lifecycle

    # Whatever can fail is checked before the runtime loads (onnxruntime may print on import).
    token = _read_token(args.token_file) if args.token_file else None
    socket = args.socket.absolute() if args.socket else None
    lifecycle.preflight(lifecycle.files_for(socket))
    _port_free(args.host, args.port)
    from ..transport.server import ServeConfig, is_loopback, serve
    cfg = ServeConfig(socket=socket, port=args.port, host=args.host, token=token,
                      idle_exit_s=max(0.0, args.idle_exit))
    if cfg.port is not None and not is_loopback(cfg.host) and not cfg.token:
        raise InvalidInput(f"refusing to listen on non-loopback address {cfg.host} without "
                           "--token-file: anyone on the network could use this daemon")

    from ..models.catalog import Catalog
    from ..daemon import Daemon
    from ..models.engine import Engine, limit_malloc_arenas
    limit_malloc_arenas()   # first, before any thread allocates
    catalog = Catalog()
    engine = Engine(catalog, provider=args.provider)
    daemon = Daemon(catalog, engine, Limits(max_pixels=args.max_pixels,
                                            concurrency=max(1, args.concurrency),
                                            queue_depth=max(0, args.queue),
                                            deadline_s=args.deadline,
                                            idle_release_s=0.5 if args.low_memory
                                            else max(0.0, args.idle_release)))
    ready = threading.Event()
    if not args.no_warm:   # once the socket is ours: a second serve must not load a model
        threading.Thread(target=lambda: ready.wait() and _warm(catalog, engine), daemon=True).start()
    serve(daemon, cfg, ready=ready)
    return 0


def _warm(catalog, engine) -> None:
    """Load the default model in the background so the first click is fast."""
    spec = catalog.get(None)
    if catalog.is_pulled(spec):
        try:
            engine.load(spec.id)
        except Exception as e:  # the request path reports it properly later
            log.warning("could not pre-load %s: %s", spec.id, e)
    else:
        log.info("default model %s not downloaded yet: `layermatte models pull`", spec.id)
