"""The daemon's client side on bytes: grpc, the generated messages and the
standard library, nothing else.

`layermatte pipe` starts once per click in the editors, so what it imports is
on the user's clock: numpy, OpenCV, onnxruntime and the pipeline cost
about a second on 2 cores, and a relay of bytes needs none of them. This module
is that relay (RawClient) and the connection helpers every client shares:
where the daemon listens, whether it answers, starting it. client.py (numpy
arrays in and out, for the CLI, PSD and batch work) builds on it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from . import framed, localfile
from ..system import platforms
from .endpoint import default_token, resolve_address  # noqa: F401  (shared by every client)
from ..errors import Cancelled, DaemonUnavailable, InvalidInput, LayermatteError, from_status
from ..proto.layermatte.v1 import matting_pb2 as pb
from ..proto.layermatte.v1 import matting_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
IN_CHUNK = 1 << 20
MAX_MESSAGE = 16 << 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]
Progress = Callable[[str, float], None]


def status_error(e: grpc.RpcError, address: str) -> LayermatteError:
    """A failed call as the domain error the CLI and plug-ins report."""
    code = e.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return DaemonUnavailable(f"the layermatte daemon at {address} is not reachable "
                                 f"({e.details()}); start it with `layermatte serve`")
    return from_status(code.name, e.details() or "")


def probe(address: str, timeout: float = 1.0, token: str | None = None,
          channel: grpc.Channel | None = None) -> bool:
    """True when a healthy daemon answers at address (on `channel` when given;
    token: for a TCP daemon that needs one)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    if not address:
        return False
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    own = channel is None
    ch = grpc.insecure_channel(address) if own else channel
    try:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                    timeout=timeout, metadata=metadata)
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
    finally:
        if own:
            ch.close()


def ensure_daemon(address: str, timeout: float = 60.0, extra_args: list[str] | None = None,
                  channel: grpc.Channel | None = None,
                  announce: Callable[[str], None] | None = None) -> str:
    """Start the user's background daemon if none answers; returns the address to use.

    Autostart is for the user's own daemon: a unix socket, or on Windows the
    TCP daemon that publishes its address in the runtime folder (address ""
    until it has). Other TCP addresses are never auto-started: the user chose
    that set-up on purpose. The daemon started exits after an idle time
    (lifecycle.autostart_idle_exit); one that dies at once is reported at once
    with its last log line. `channel`: probe on the caller's channel to
    `address` (one connection instead of two); `announce` gets one line for
    people when a daemon starts.
    """
    from ..system import lifecycle   # standard library only: cheap for `pipe`
    own = platforms.default_endpoint()
    if address.startswith("unix:"):
        lifecycle.check_socket_path(Path(address[len("unix:"):]))
    if address and probe(address, token=default_token(address), channel=channel):
        return address
    if address.startswith("unix:"):
        sock = address[len("unix:"):]
        files, args = lifecycle.files_for(sock), ["serve", "--socket", sock]
    elif not platforms.unix_sockets_supported() and address in ("", own.address):
        files, args = lifecycle.files_for(None), ["serve"]
    else:
        raise DaemonUnavailable(f"no layermatte daemon answers at {address}; start one with "
                                "`layermatte serve --port N`")

    def answer() -> str | None:
        target = address if address.startswith("unix:") else platforms.default_endpoint().address
        if target and probe(target, timeout=0.5, token=default_token(target),
                            channel=channel if target == address else None):
            return target
        return None

    return lifecycle.spawn([*args, *(extra_args or [])], files, answer, timeout, announce)


@dataclass
class RawRequest:
    """One Matte call in plain values; planes are the layer's bytes (and a GRAY8
    guide mask to refine instead of running the model)."""
    width: int
    height: int
    format_code: int
    pixels: bytes | bytearray | memoryview
    guide: bytes | bytearray | memoryview | None = None
    model_id: str = ""
    feather_px: float = 0.0
    shift_px: float = 0.0
    smooth: float = 0.0
    contrast: float = 0.0
    quality: int = pb.REFINEMENT_QUALITY_FAST
    depth16: bool = False
    foreground: bool = False
    decontaminate: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def header(self) -> pb.MatteHeader:
        return pb.MatteHeader(
            request_id=self.request_id, width=self.width, height=self.height,
            format=self.format_code, model_id=self.model_id,
            refinement=pb.Refinement(feather_px=self.feather_px, shift_px=self.shift_px,
                                     smooth=self.smooth, contrast=self.contrast,
                                     decontaminate=self.decontaminate, quality=self.quality),
            matte_depth=pb.MATTE_DEPTH_U16 if self.depth16 else pb.MATTE_DEPTH_U8,
            source=pb.MATTE_SOURCE_MODEL if self.guide is None else pb.MATTE_SOURCE_PROVIDED,
            return_foreground=self.foreground)

    def answer_sizes(self) -> tuple[int, int]:
        """Bytes of the matte and of the colours (RGB8, or RGB16 for deeper layers)."""
        name = pb.PixelFormat.Name(self.format_code).removeprefix("PIXEL_FORMAT_")
        sizes = framed.answer_sizes(self.width, self.height, name, self.depth16, self.foreground)
        return sizes[0], (sizes[1] if self.foreground else 0)


@dataclass
class RawReply:
    matte: bytearray
    foreground: bytearray | None
    summary: dict


class RawClient:
    """One channel to the daemon; matte() is one call, bytes in and out."""

    def __init__(self, address: str, token: str | None = None, timeout: float | None = None):
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.MattingStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def matte(self, req: RawRequest, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> RawReply:
        header = req.header()
        planes = [(pb.PLANE_PIXELS, memoryview(req.pixels).cast("B"))]
        if req.guide is not None:
            planes.append((pb.PLANE_GUIDE_MASK, memoryview(req.guide).cast("B")))
        unix = self.address.startswith("unix:")
        shared = None   # the local fast path both ways (localfile.py)
        if unix and sum(len(v) for _, v in planes) >= localfile.MIN_BYTES:
            shared = localfile.write_planes([v for _, v in planes])
        if shared is not None:
            header.pixels_file = str(shared)
        sizes = req.answer_sizes()
        answer = localfile.empty_file() if unix and sizes[0] >= localfile.MIN_BYTES else None
        if answer is not None:
            header.result_file = str(answer)
        targets = {pb.PLANE_MATTE: bytearray(sizes[0]),
                   pb.PLANE_FOREGROUND: bytearray(sizes[1]) if req.foreground else None}
        from_file, decided = [False], threading.Event()

        def requests():
            yield pb.MatteRequest(header=header)
            if shared is not None:
                decided.wait()
                if from_file[0]:
                    return
            for plane, view in planes:
                for off in range(0, len(view), IN_CHUNK):
                    yield pb.MatteRequest(chunk=pb.Chunk(plane=plane, data=bytes(view[off:off + IN_CHUNK])))

        call = self._stub.Matte(requests(), timeout=self.timeout, metadata=self._metadata)
        if cancel is not None:
            def watch():
                cancel.wait()
                call.cancel()
            threading.Thread(target=watch, daemon=True).start()
        summary, answered = None, False
        try:
            for resp in call:
                kind = resp.WhichOneof("kind")
                if not answered:   # the first answer says whether the daemon read the file
                    answered = True
                    from_file[0] = kind == "progress" and resp.progress.from_file
                    decided.set()
                    if shared is not None:
                        shared.unlink(missing_ok=True)
                if kind == "progress" and progress:
                    progress(resp.progress.stage, resp.progress.fraction)
                elif kind == "chunk":
                    target = targets.get(resp.chunk.plane)
                    end = resp.chunk.offset + len(resp.chunk.data)
                    if target is None or end > len(target):
                        raise LayermatteError(f"the daemon sent a chunk this call did not ask for "
                                              f"(plane {resp.chunk.plane}, up to byte {end})")
                    target[resp.chunk.offset:end] = resp.chunk.data
                elif kind == "summary":
                    summary = summary_dict(resp.summary)
                    if resp.summary.result_in_file:
                        _read_answer(answer, [t for t in targets.values() if t is not None])
        except grpc.RpcError as e:
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled") from None
            if answered and e.code() == grpc.StatusCode.UNAVAILABLE:
                raise DaemonUnavailable(f"the layermatte daemon at {self.address} stopped while "
                                        f"working on this request ({e.details()}); start it again "
                                        "with `layermatte serve`") from None
            raise status_error(e, self.address) from None
        finally:
            decided.set()   # never leave the request stream waiting
            for f in (shared, answer):
                if f is not None:
                    f.unlink(missing_ok=True)
        if summary is None:
            raise LayermatteError("the daemon closed the stream without a summary")
        return RawReply(targets[pb.PLANE_MATTE], targets[pb.PLANE_FOREGROUND], summary)


def summary_dict(s: pb.Summary) -> dict:
    """What a client reports of a finished call (the pipe's {"summary"} event)."""
    return {"request_id": s.request_id, "model_id": s.model_id, "provider": s.provider,
            "stage_ms": dict(s.stage_ms), "result_in_file": s.result_in_file}


def _read_answer(answer: Path | None, targets: list[bytearray]) -> None:
    if answer is None:
        raise LayermatteError("the daemon answered in a file this client did not offer")
    try:
        localfile.read_result(answer, [memoryview(t) for t in targets])
    except OSError as e:
        raise LayermatteError(f"could not read the daemon's answer: {e}") from None


def bytes_per_pixel(format_code: int) -> int:
    """From the contract's own names (RGBA8, GRAYAF32, ...): channels times
    sample size. tests/test_pipe.py checks it against formats.py's table."""
    name = pb.PixelFormat.Name(format_code).removeprefix("PIXEL_FORMAT_")
    for suffix, size in (("F32", 4), ("16", 2), ("8", 1)):
        if name.endswith(suffix):
            layout = name[:-len(suffix)]
            break
    else:
        raise InvalidInput(f"unsupported pixel format {name}")
    channels = {"RGBA": 4, "BGRA": 4, "RGB": 3, "GRAYA": 2, "GRAY": 1}[layout]
    return channels * size


def format_names() -> dict[str, int]:
    """Pixel format name (as the CLI and plug-ins spell it) -> contract code."""
    return {v.name.removeprefix("PIXEL_FORMAT_"): v.number
            for v in pb.PixelFormat.DESCRIPTOR.values if v.number}
