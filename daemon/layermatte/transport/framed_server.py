"""The daemon's end of the framed transport (framed.py): frames in, the gRPC
servicer's own Matte call, frames out.

Nothing of the matting call lives here: each connection becomes the request
messages the servicer takes and a small context with the three things it asks
of gRPC's (is the client still there, a cancel callback, abort), so limits,
admission, deadline, cancel logging and errors are the gRPC path's, exactly.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from google.protobuf import json_format

from . import framed
from ..errors import Cancelled, InvalidInput
from ..proto.layermatte.v1 import matting_pb2 as pb
from .rawclient import summary_dict

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 10.0      # a connection that says nothing is dropped
RECEIVE_TIMEOUT_S = 60.0    # between two frames of an upload
_IN_PLANES = (pb.PLANE_PIXELS, pb.PLANE_GUIDE_MASK)
_OUT_PLANES = {pb.PLANE_MATTE: 0, pb.PLANE_FOREGROUND: 1}


class _Abort(Exception):
    def __init__(self, code, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The part of grpc.ServicerContext that MattingServicer.Matte uses."""

    def __init__(self, conn: socket.socket):
        self._conn = conn
        self._gone = threading.Event()
        self._callbacks: list = []
        self._lock = threading.Lock()

    def add_callback(self, fn) -> bool:
        with self._lock:
            if not self._gone.is_set():
                self._callbacks.append(fn)
                return True
        fn()
        return True

    def is_active(self) -> bool:
        return not self._gone.is_set()

    def peer(self) -> str:
        return "unix:framed"

    def gone(self) -> None:
        """The client closed the connection (its cancel) or the call ended."""
        with self._lock:
            if self._gone.is_set():
                return
            self._gone.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def cancel(self) -> None:   # the daemon's deadline on a stalled upload
        self.gone()
        try:
            self._conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def abort(self, code, details: str):
        raise _Abort(code, details)


def _requests(conn: socket.socket, header: pb.MatteHeader, ctx: _Context):
    """The upload as MatteRequest messages; after END the connection is the
    client's lifeline, watched for its end."""
    yield pb.MatteRequest(header=header)
    conn.settimeout(RECEIVE_TIMEOUT_S)
    while True:
        try:
            frame = framed.recv(conn)
        except (OSError, EOFError, ValueError) as e:
            raise Cancelled(f"the upload broke off ({e})") from None
        if frame is None:
            raise Cancelled("the client went away while sending")
        kind, payload = frame
        if kind == framed.END:
            break
        if kind != framed.DATA:
            raise InvalidInput(f"unexpected frame {kind!r} while receiving the layer")
        plane, _, data = framed.split_data(payload)
        if plane >= len(_IN_PLANES):
            raise InvalidInput(f"unexpected plane {plane} in the upload")
        yield pb.MatteRequest(chunk=pb.Chunk(plane=_IN_PLANES[plane], data=bytes(data)))
    conn.settimeout(None)

    def lifeline():
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        ctx.gone()
    threading.Thread(target=lifeline, name="framed-lifeline", daemon=True).start()


def _answer(conn: socket.socket, resp: pb.MatteResponse) -> None:
    kind = resp.WhichOneof("kind")
    if kind == "progress":
        framed.send_json(conn, framed.EVENT, {"progress": [resp.progress.stage,
                                                           resp.progress.fraction]})
    elif kind == "chunk":
        framed.send_data(conn, _OUT_PLANES[resp.chunk.plane], resp.chunk.offset, resp.chunk.data)
    elif kind == "summary":
        framed.send_json(conn, framed.EVENT, {"summary": summary_dict(resp.summary)})


def _hello(conn: socket.socket) -> pb.MatteHeader:
    conn.settimeout(HELLO_TIMEOUT_S)
    frame = framed.recv(conn)
    if frame is None or frame[0] != framed.HELLO:
        raise InvalidInput("a framed call must begin with its header")
    try:
        hello = json.loads(frame[1])
        if hello.get("protocol") != framed.PROTOCOL:
            raise InvalidInput(f"this daemon speaks framed protocol {framed.PROTOCOL}, "
                               f"not {hello.get('protocol')}")
        return json_format.ParseDict(hello["header"], pb.MatteHeader())
    except (ValueError, KeyError, TypeError, AttributeError, json_format.ParseError) as e:
        raise InvalidInput(f"malformed framed header: {e}") from None


class FramedListener:
    """Accepts framed calls on a unix socket (0600, beside the gRPC one) until stop()."""

    def __init__(self, servicer, path: Path, max_connections: int):
        self.servicer, self.path = servicer, path
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock: socket.socket | None = None
        self._active: set[threading.Thread] = set()

    def start(self) -> None:
        """Bind and listen; the caller holds the daemon's lock, so a file already
        at the path is a dead daemon's."""
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)
        sock.listen(16)
        self._sock = sock
        threading.Thread(target=self._accept, name="framed-accept", daemon=True).start()
        log.info("framed transport on unix:%s", self.path)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:   # closed by stop()
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="framed-call", daemon=True)
            self._active.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        ctx = _Context(conn)
        try:
            if not self._slots.acquire(blocking=False):
                framed.send_json(conn, framed.EVENT, {"error": {
                    "code": "RESOURCE_EXHAUSTED", "message": "the daemon has too many connections"}})
                return
            try:
                self._call(conn, ctx)
            finally:
                self._slots.release()
        except OSError:
            pass   # the client went away; the servicer has logged and dropped the work
        finally:
            ctx.gone()
            conn.close()
            self._active.discard(threading.current_thread())

    def _call(self, conn: socket.socket, ctx: _Context) -> None:
        try:
            header = _hello(conn)
        except (InvalidInput, OSError, EOFError, ValueError) as e:
            log.info("framed call refused: %s", e)
            framed.send_json(conn, framed.EVENT, {"error": {"code": "INVALID_ARGUMENT",
                                                            "message": str(e)}})
            return
        calls = self.servicer.Matte(_requests(conn, header, ctx), ctx)
        try:
            for resp in calls:
                _answer(conn, resp)
        except _Abort as e:
            framed.send_json(conn, framed.EVENT, {"error": {"code": e.code.name,
                                                            "message": e.details}})
        finally:
            calls.close()   # a client gone while answering: the servicer cancels the work

    def stop(self, grace_s: float) -> None:
        """No new calls; calls in flight get up to grace_s to finish."""
        if self._sock is not None:
            try:   # wakes the blocked accept() (close alone does not, on Linux)
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)
        end = time.monotonic() + grace_s
        for t in list(self._active):
            t.join(max(0.0, end - time.monotonic()))
