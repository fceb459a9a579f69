"""gRPC adapter: proto in, domain call, status codes out. Plus serve()."""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import traceback
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..system import lifecycle, platforms
from . import localfile, wire
from ..system.lifecycle import AlreadyRunning  # noqa: F401  (re-exported)
from .interceptors import DecodeGuard, TokenInterceptor
from ..daemon import Daemon
from ..errors import Cancelled, InvalidInput, LayermatteError
from ..proto.layermatte.v1 import matting_pb2 as pb
from ..proto.layermatte.v1 import matting_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE = "layermatte.v1.Matting"
OUT_CHUNK = 1 << 20
MAX_MESSAGE = 16 << 20  # per message; layers stream in many messages
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0)]


def _abort(context: grpc.ServicerContext, err: LayermatteError):
    context.abort(getattr(grpc.StatusCode, err.grpc_code), str(err))


class MattingServicer(pb_grpc.MattingServicer):
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def Matte(self, request_iterator, context):
        cancel = threading.Event()
        context.add_callback(cancel.set)
        # The daemon's own limit applies even when the client sets no deadline.
        receiving = threading.Event()
        receiving.set()

        def expire():
            cancel.set()
            if receiving.is_set():  # a stalled upload: nothing else would wake the reader
                context.cancel()
        timer = threading.Timer(self.daemon.limits.deadline_s, expire)
        timer.daemon = True
        timer.start()
        # Abort after the except blocks, not inside them: an exception kept alive there
        # (chained to the abort) holds the failed request's frames and buffers in a
        # reference cycle until the cyclic GC happens to run.
        failure = None
        try:
            with self.daemon.admitted():
                yield from self._matte(request_iterator, context, cancel, receiving)
        except Cancelled as e:
            if not timer.is_alive() and context.is_active():
                failure = (grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"request took longer than the daemon's limit of "
                           f"{self.daemon.limits.deadline_s:.0f} s (serve --deadline)")
            else:
                log.info("request cancelled by the client (%s)", e)
                failure = (grpc.StatusCode.CANCELLED, str(e))
        except LayermatteError as e:
            log.info("request failed: %s", e)
            failure = (getattr(grpc.StatusCode, e.grpc_code), str(e))
        except GeneratorExit:   # grpc closed the response stream: the client cancelled or went away
            cancel.set()
            log.info("request cancelled by the client")
            raise
        except grpc.RpcError as e:  # the request stream broke: the client cancelled or went away
            log.info("request cancelled by the client while sending")
            # grpc keeps this error in the call's state, and with it the frames that hold the
            # partly received layer, until the cyclic GC runs: free those buffers now.
            traceback.clear_frames(e.__traceback__)
        except Exception:
            log.exception("internal error")
            failure = (grpc.StatusCode.INTERNAL, "internal error in the daemon (see its log)")
        finally:
            timer.cancel()
        if failure is not None:
            context.abort(*failure)

    def _matte(self, requests, context, cancel, receiving):
        t0 = time.perf_counter()
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidInput("the first message of a Matte call must be a header")
        job = wire.job_from_header(first.header)
        self.daemon.check_size(job)
        log.info("request %s: %dx%d %s model=%s", job.request_id or "-", job.width, job.height,
                 job.format.name, job.model_id or self.daemon.catalog.default_id)
        # np.empty, not bytearray: pages are committed as data arrives, so a header
        # alone does not reserve the whole layer's memory.
        planes = {pb.PLANE_PIXELS: np.empty(job.pixel_bytes, np.uint8)}
        if not job.use_model:
            planes[pb.PLANE_GUIDE_MASK] = np.empty(job.guide_bytes, np.uint8)
        from_file = False
        if job.pixels_file:
            why_not = localfile.read_planes(job.pixels_file, [memoryview(b) for b in planes.values()],
                                            context.peer())
            from_file = why_not is None
            if not from_file:
                log.info("request %s: pixels_file %s not used (%s): reading chunks",
                         job.request_id or "-", job.pixels_file, why_not)
        if from_file:
            yield pb.MatteResponse(progress=pb.Progress(stage="receive", fraction=0.05, from_file=True))
        else:
            # Tells the client it was admitted and the header accepted.
            yield pb.MatteResponse(progress=pb.Progress(stage="receive", fraction=0.0))
            yield from _receive_chunks(requests, planes, job, cancel)
        receiving.clear()
        receive_ms = (time.perf_counter() - t0) * 1000
        pixels = wire.formats.as_array(planes[pb.PLANE_PIXELS], job.width, job.height, job.format)
        guide = None
        if not job.use_model:
            guide = np.frombuffer(planes[pb.PLANE_GUIDE_MASK], np.uint8).reshape(job.height, job.width)

        events: queue.Queue = queue.Queue()
        outcome = {}

        def work():
            try:
                outcome["result"] = self.daemon.matte(
                    job, pixels, guide, lambda s, f: events.put((s, f)), cancel)
            except BaseException as e:  # handed to the RPC thread
                outcome["error"] = e
            finally:
                events.put(None)

        threading.Thread(target=work, name=f"matte-{job.request_id}", daemon=True).start()
        while True:
            try:
                ev = events.get(timeout=0.2)
            except queue.Empty:
                if not context.is_active():
                    cancel.set()
                continue
            if ev is None:
                break
            yield pb.MatteResponse(progress=pb.Progress(stage=ev[0], fraction=ev[1]))
        if "error" in outcome:
            raise outcome.pop("error")  # not kept in this frame: no reference cycle
        result = outcome["result"]
        planes.clear()  # free the received layer before sending
        pixels = guide = None
        t_send = time.perf_counter()
        yield pb.MatteResponse(progress=pb.Progress(stage="send", fraction=0.96))
        out = [(plane, memoryview(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)))
               for plane, arr in ((pb.PLANE_MATTE, result.matte),
                                  (pb.PLANE_FOREGROUND, result.foreground)) if arr is not None]
        in_file = False
        if job.result_file:
            why_not = localfile.write_result(job.result_file, [v for _, v in out], context.peer())
            in_file = why_not is None
            if not in_file:
                log.info("request %s: result_file %s not used (%s): sending chunks",
                         job.request_id or "-", job.result_file, why_not)
        if not in_file:
            for plane, view in out:
                for off in range(0, len(view), OUT_CHUNK):
                    if cancel.is_set():
                        return
                    yield pb.MatteResponse(chunk=pb.MatteChunk(plane=plane, offset=off,
                                                               data=bytes(view[off:off + OUT_CHUNK])))
        stage_ms = dict(result.stage_ms, receive=receive_ms,
                        send=(time.perf_counter() - t_send) * 1000,
                        total=(time.perf_counter() - t0) * 1000)
        yield pb.MatteResponse(summary=pb.Summary(
            request_id=job.request_id, model_id=result.model_id, provider=result.provider,
            width=job.width, height=job.height,
            matte_depth=pb.MATTE_DEPTH_U16 if job.options.depth16 else pb.MATTE_DEPTH_U8,
            stage_ms=stage_ms, result_in_file=in_file))
        log.info("request %s done in %.0f ms", job.request_id or "-", stage_ms["total"])

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(**m) for m in self.daemon.models()])

    def LoadModel(self, request, context):
        try:
            model, fresh = self.daemon.engine.load(request.model_id or None)
        except LayermatteError as e:
            _abort(context, e)
        return pb.LoadModelResponse(model_id=model.spec.id, provider=model.provider,
                                    load_ms=model.load_ms if fresh else 0.0)


@dataclass
class ServeConfig:
    socket: Path | None = None
    port: int | None = None
    host: str = "127.0.0.1"
    token: str | None = None
    grace_s: float = 30.0
    idle_exit_s: float = 0.0     # exit after this long without requests (0: never)


def _receive_chunks(requests, planes: dict, job, cancel: threading.Event):
    """Fill the planes from chunk messages; yields receive progress."""
    filled = {k: 0 for k in planes}
    total = sum(len(b) for b in planes.values())
    step, next_report = max(total // 10, 1), 0
    for msg in requests:
        if cancel.is_set():
            raise Cancelled("request cancelled while receiving")
        if msg.WhichOneof("kind") != "chunk":
            raise InvalidInput("only one header is allowed per call")
        plane = msg.chunk.plane
        if plane not in planes:
            raise InvalidInput(f"unexpected chunk plane {plane} for this request")
        data, buf, at = msg.chunk.data, planes[plane], filled[plane]
        if at + len(data) > len(buf):
            raise InvalidInput(f"too much data for plane {plane}: more than the {len(buf)} "
                               f"bytes {job.width}x{job.height} {job.format.name} needs")
        buf[at:at + len(data)] = np.frombuffer(data, np.uint8)
        filled[plane] = at + len(data)
        got = sum(filled.values())
        if got >= next_report:
            next_report = got + step
            yield pb.MatteResponse(progress=pb.Progress(stage="receive", fraction=0.05 * got / total))
    for plane, buf in planes.items():
        if filled[plane] != len(buf):
            raise InvalidInput(f"stream ended early: plane {plane} has {filled[plane]} of "
                               f"{len(buf)} bytes")


def is_loopback(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _make_server(daemon: Daemon, health_servicer, interceptors=()) -> grpc.Server:
    cap = daemon.limits.concurrency + daemon.limits.queue_depth
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cap + 8, thread_name_prefix="rpc"),
                         interceptors=[*interceptors, DecodeGuard()], options=GRPC_OPTIONS,
                         maximum_concurrent_rpcs=cap + 16)
    pb_grpc.add_MattingServicer_to_server(MattingServicer(daemon), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Matting"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return server


def probe(address: str, timeout: float = 1.0, token: str | None = None) -> bool:
    """True when a healthy daemon answers at address (token: for a TCP daemon that needs one)."""
    if not address:
        return False
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                        timeout=timeout, metadata=metadata)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _tcp_only_config(cfg: ServeConfig, published: list[Path]) -> ServeConfig:
    """Loopback on the chosen port (default: any free one), and a token: the one
    given, else a fresh random one in the user's runtime folder for clients."""
    import dataclasses
    import secrets
    token = cfg.token
    if not token:
        token = secrets.token_urlsafe(32)
        platforms.write_private(platforms.token_path(), token)
        published.append(platforms.token_path())
    return dataclasses.replace(cfg, port=cfg.port or 0, token=token)


def _framed_listener(daemon: Daemon, sock: Path):
    """The framed transport beside the unix socket (framed.py). Optional: where
    it cannot be made (e.g. a path at the kernel's length limit) clients use gRPC."""
    from .framed import frames_path
    from .framed_server import FramedListener
    limits = daemon.limits
    listener = FramedListener(MattingServicer(daemon), frames_path(sock),
                              limits.concurrency + limits.queue_depth + 16)
    try:
        listener.start()
    except OSError as e:
        log.warning("no framed transport at %s (%s): `layermatte pipe` uses gRPC",
                    frames_path(sock), e)
        return None
    return listener


def _bind(server: grpc.Server, target: str, what: str, hint: str) -> int:
    """add_insecure_port, with a failure (grpc raises or returns 0) in one line."""
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError:
        bound = 0
    if not bound:
        raise InvalidInput(f"cannot listen on {what}: {hint}")
    return bound


def serve(daemon: Daemon, cfg: ServeConfig, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set, or idle for cfg.idle_exit_s);
    drains in-flight calls. A failure to start is one InvalidInput and leaves no
    pid file or socket behind."""
    if cfg.port is not None and not is_loopback(cfg.host) and not cfg.token:
        raise InvalidInput(f"refusing to listen on non-loopback address {cfg.host} without "
                           "--token-file: anyone on the network could use this daemon")
    files = lifecycle.files_for(cfg.socket)
    sock = files.socket
    held = lifecycle.claim(files, probe)
    published: list[Path] = []
    servers: list[grpc.Server] = []
    listener = None
    started = False
    try:
        if sock is None:   # TCP only (Windows): loopback, always with a token
            cfg = _tcp_only_config(cfg, published)
        stop = stop or threading.Event()
        # The handler only records the signal: one that called stop.set() could
        # deadlock, landing while the main thread holds the Event's lock in wait().
        signalled: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, _: signalled.append(signum))
        health_servicer = health.HealthServicer()
        if sock is not None:
            servers.append(_make_server(daemon, health_servicer))
            old_umask = os.umask(0o177)
            try:
                _bind(servers[0], f"unix:{sock}", str(sock),
                      "the socket could not be made there: use --socket PATH in a folder of yours")
            finally:
                os.umask(old_umask)
        if cfg.port is not None:
            tcp = _make_server(daemon, health_servicer,
                               [TokenInterceptor(cfg.token)] if cfg.token else [])
            host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            bound = _bind(tcp, f"{host}:{cfg.port}", f"{cfg.host}:{cfg.port}",
                          "the port is in use (another daemon or program?) or not allowed: "
                          "choose another --port")
            servers.append(tcp)
            log.info("listening on %s:%d%s", cfg.host, bound, " (token required)" if cfg.token else "")
        for s in servers:
            s.start()
        started = True
        if sock is not None:
            listener = _framed_listener(daemon, sock)
        for name in ("", SERVICE):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if sock is not None:
            sock.chmod(0o600)
            log.info("listening on unix:%s", sock)
        else:
            published.append(platforms.publish_address(f"{cfg.host}:{bound}", os.getpid()))
        if cfg.idle_exit_s:
            log.info("exits after %.0f s without requests (serve --idle-exit)", cfg.idle_exit_s)

        if ready is not None:
            ready.set()
        while not signalled and not stop.wait(0.2):
            if cfg.idle_exit_s and daemon.idle_seconds() >= cfg.idle_exit_s:
                log.info("no requests for %.0f s: exiting", cfg.idle_exit_s)
                break
    finally:
        if started:
            log.info("shutting down: draining in-flight requests (up to %.0f s)", cfg.grace_s)
            health_servicer.enter_graceful_shutdown()
        events = [s.stop(cfg.grace_s if started else 0) for s in servers]
        if listener is not None:
            listener.stop(cfg.grace_s)
        for e in events:
            e.wait()
        for path in published:
            path.unlink(missing_ok=True)
        held.release()
        if started:
            log.info("stopped")
