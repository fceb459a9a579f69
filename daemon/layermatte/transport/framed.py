"""The framed transport: the daemon's Matte call as length-prefixed frames on a
unix socket next to the gRPC one, for `layermatte pipe`.

Why a second door: the pipe child starts once per click, and grpc with the
generated messages is most of its start-up (~80 of ~170 ms on 2 cores); a
relay of bytes needs neither. This module is standard library only: the frame
codec both ends use, and the client. The daemon's end (framed_server.py) turns
frames into the very messages its gRPC servicer takes, so both transports run
one code path. Same privacy as the gRPC socket (0600 in the user's 0700
runtime folder). Where it is absent (an older daemon, none running yet,
Windows's TCP-only daemon) the pipe falls back to gRPC.

A frame: one kind byte, a 4-byte big-endian length, the payload.
* client: HELLO {"protocol", "header": MatteHeader in protobuf's JSON form},
  DATA per chunk of the planes in order (pixels, then the guide), END; then it
  keeps the socket open: closing it cancels the request.
* daemon: EVENT {"progress": [stage, fraction]}, DATA (the matte, then the
  colours), then EVENT {"summary": {...}} or EVENT {"error": {"code", "message"}}.
DATA payload: plane index (1 byte: 0 first plane, 1 second), offset (8 bytes), bytes.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, DaemonUnavailable, InvalidInput, LayermatteError, from_status

PROTOCOL = 1
HELLO, DATA, END, EVENT = b"H", b"D", b"Z", b"E"
CHUNK = 1 << 20
MAX_FRAME = CHUNK + 64
_PREFIX = struct.Struct(">cI")
_PLANE = struct.Struct(">BQ")

# Pixel formats (the contract's names less PIXEL_FORMAT_) -> bytes per pixel;
# tests/test_pipe.py checks this table against the generated messages.
FORMATS = {"RGBA8": 4, "RGBA16": 8, "RGBAF32": 16, "RGB8": 3, "RGB16": 6, "RGBF32": 12,
           "BGRA8": 4, "GRAYA8": 2, "GRAYA16": 4, "GRAYAF32": 8, "GRAY8": 1, "GRAY16": 2,
           "GRAYF32": 4}


def frames_path(grpc_socket: str | Path) -> Path:
    """The framed socket beside the daemon's gRPC socket."""
    return Path(f"{grpc_socket}.frames")


def send(sock: socket.socket, kind: bytes, payload: bytes | memoryview = b"") -> None:
    sock.sendall(_PREFIX.pack(kind, len(payload)))
    if payload:
        sock.sendall(payload)


def send_json(sock: socket.socket, kind: bytes, obj: dict) -> None:
    send(sock, kind, json.dumps(obj).encode())


def send_data(sock: socket.socket, plane: int, offset: int, data: bytes | memoryview) -> None:
    sock.sendall(_PREFIX.pack(DATA, _PLANE.size + len(data)) + _PLANE.pack(plane, offset))
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    """n bytes, or None when the peer closed before the first of them."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            if got == 0:
                return None
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def recv(sock: socket.socket) -> tuple[bytes, bytearray] | None:
    """(kind, payload), or None when the peer closed the connection between frames."""
    prefix = _recv_exact(sock, _PREFIX.size)
    if prefix is None:
        return None
    kind, size = _PREFIX.unpack(prefix)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    if not size:
        return kind, bytearray()
    payload = _recv_exact(sock, size)
    if payload is None:   # a frame cut off after its prefix is a broken connection, not an empty frame
        raise EOFError(f"connection closed before the {size} bytes of a frame")
    return kind, payload


def split_data(payload: bytearray) -> tuple[int, int, memoryview]:
    plane, offset = _PLANE.unpack_from(payload)
    return plane, offset, memoryview(payload)[_PLANE.size:]


def connect(address: str) -> socket.socket | None:
    """A connection to the framed socket of the daemon at a unix address; None
    where there is none (other transports, no daemon yet, an older daemon)."""
    if not address.startswith("unix:") or not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(frames_path(address[len("unix:"):])))
    except OSError:
        sock.close()
        return None
    return sock


def matte(sock: socket.socket, header: dict, planes: list[memoryview], sizes: list[int],
          progress: Callable[[str, float], None] | None = None,
          cancel: threading.Event | None = None) -> tuple[list[bytearray], dict]:
    """One Matte call on a connected framed socket: the answer planes of the
    given sizes, and the daemon's summary. Setting `cancel` closes the socket,
    which the daemon takes as the client's cancel."""
    finished = threading.Event()
    if cancel is not None:
        def watch():
            while not finished.is_set():
                if cancel.wait(0.05):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
        threading.Thread(target=watch, daemon=True).start()
    answers = [bytearray(n) for n in sizes]
    try:
        try:
            send_json(sock, HELLO, {"protocol": PROTOCOL, "header": header})
            for index, view in enumerate(planes):
                for off in range(0, len(view), CHUNK):
                    send_data(sock, index, off, view[off:off + CHUNK])
            send(sock, END)
            while True:
                frame = recv(sock)
                if frame is None:
                    break
                kind, payload = frame
                if kind == DATA:
                    plane, off, data = split_data(payload)
                    if plane >= len(answers) or off + len(data) > len(answers[plane]):
                        raise LayermatteError(f"the daemon sent bytes this call did not ask for "
                                              f"(plane {plane}, up to byte {off + len(data)})")
                    answers[plane][off:off + len(data)] = data
                    continue
                if kind != EVENT:
                    raise LayermatteError(f"the daemon sent an unknown frame {kind!r}")
                event = json.loads(payload)
                if "progress" in event and progress:
                    progress(*event["progress"])
                elif "summary" in event:
                    return answers, event["summary"]
                elif "error" in event:
                    raise from_status(event["error"]["code"], event["error"]["message"])
        except (OSError, EOFError, ValueError) as e:
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled") from None
            raise DaemonUnavailable(f"the layermatte daemon stopped while working on this request "
                                    f"({e}); start it again with `layermatte serve`") from None
        if cancel is not None and cancel.is_set():
            raise Cancelled("request cancelled")
        raise DaemonUnavailable("the layermatte daemon closed the connection without an answer; "
                                "start it again with `layermatte serve`")
    finally:
        finished.set()
        sock.close()


def header(*, request_id: str, width: int, height: int, format_name: str, model_id: str = "",
           feather_px: float = 0.0, shift_px: float = 0.0, smooth: float = 0.0,
           contrast: float = 0.0, quality: str = "fast", decontaminate: bool = False,
           depth16: bool = False, guide: bool = False, foreground: bool = False) -> dict:
    """A MatteHeader in protobuf's JSON form (field and enum names as in the
    contract; the daemon parses it strictly, so a typo fails loudly in tests)."""
    if format_name not in FORMATS:
        raise InvalidInput(f"unsupported pixel format {format_name}")
    return {"request_id": request_id, "width": width, "height": height,
            "format": f"PIXEL_FORMAT_{format_name}", "model_id": model_id,
            "refinement": {"feather_px": feather_px, "shift_px": shift_px, "smooth": smooth,
                           "contrast": contrast, "decontaminate": decontaminate,
                           "quality": f"REFINEMENT_QUALITY_{quality.upper()}"},
            "matte_depth": "MATTE_DEPTH_U16" if depth16 else "MATTE_DEPTH_U8",
            "source": "MATTE_SOURCE_PROVIDED" if guide else "MATTE_SOURCE_MODEL",
            "return_foreground": foreground}


def answer_sizes(width: int, height: int, format_name: str, depth16: bool,
                 foreground: bool) -> list[int]:
    """Bytes of the matte and, when asked for, of the colours (RGB8, or RGB16
    for deeper layers)."""
    n = width * height
    sizes = [n * (2 if depth16 else 1)]
    if foreground:
        sizes.append(n * 3 * (1 if format_name.endswith("8") else 2))
    return sizes
