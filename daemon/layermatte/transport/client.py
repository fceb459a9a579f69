"""Client library for the daemon: CLI, PSD workflow, batch and the plug-ins'
fallback all talk to it through this module."""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np

from ..imaging import formats
from . import localfile, wire
from ..errors import Cancelled, DaemonUnavailable, LayermatteError
from ..imaging.options import MatteOptions
from ..proto.layermatte.v1 import matting_pb2 as pb
from ..proto.layermatte.v1 import matting_pb2_grpc as pb_grpc
# One copy of the connection helpers, shared with the pipe program's relay.
from .rawclient import default_token, ensure_daemon, probe, resolve_address  # noqa: F401
from .rawclient import CHANNEL_OPTIONS, status_error as _error

log = logging.getLogger(__name__)
IN_CHUNK = 1 << 20
Progress = Callable[[str, float], None]


@dataclass
class MatteReply:
    matte: np.ndarray
    foreground: np.ndarray | None
    summary: dict = field(default_factory=dict)


class Client:
    def __init__(self, address: str | None = None, token: str | None = None,
                 timeout: float | None = None):
        self.address = address or resolve_address()
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.MattingStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def list_models(self) -> list[dict]:
        try:
            resp = self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout or 30,
                                         metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e, self.address) from None
        return [{f.name: getattr(m, f.name) for f in m.DESCRIPTOR.fields} for m in resp.models]

    def load_model(self, model_id: str = "") -> dict:
        try:
            r = self._stub.LoadModel(pb.LoadModelRequest(model_id=model_id),
                                     timeout=self.timeout or 600, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e, self.address) from None
        return {"model_id": r.model_id, "provider": r.provider, "load_ms": r.load_ms}

    def matte(self, image: np.ndarray, *, model_id: str = "", options: MatteOptions = MatteOptions(),
              guide_mask: np.ndarray | None = None, format_code: int | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None,
              request_id: str | None = None) -> MatteReply:
        """image: HxW[xC] uint8/uint16/float32 array (format from its shape unless
        format_code says otherwise, e.g. BGRA8). guide_mask: HxW uint8 to refine
        instead of running the model."""
        h, w = image.shape[:2]
        code = format_code or formats.code_for_array(image)
        fmt = formats.lookup(code)
        header = wire.header_from_job(width=w, height=h, format_code=code, model_id=model_id,
                                      request_id=request_id or uuid.uuid4().hex[:12],
                                      options=options, use_model=guide_mask is None)
        planes = [(pb.PLANE_PIXELS, np.ascontiguousarray(image, dtype=fmt.dtype))]
        if guide_mask is not None:
            planes.append((pb.PLANE_GUIDE_MASK, np.ascontiguousarray(guide_mask, np.uint8)))

        streaming = threading.Event()  # the daemon took the header and asked for more
        views = [memoryview(arr.view(np.uint8).reshape(-1)) for _, arr in planes]
        shared = None
        if self.address.startswith("unix:") and sum(len(v) for v in views) >= localfile.MIN_BYTES:
            shared = localfile.write_planes(views)
        if shared is not None:
            header.pixels_file = str(shared)
        depth16 = options.depth16
        matte = np.empty((h, w), np.uint16 if depth16 else np.uint8)
        fg = None
        if options.return_foreground:
            fg = np.empty((h, w, 3), np.uint8 if fmt.dtype == np.uint8 else np.uint16)
        targets = {pb.PLANE_MATTE: matte, pb.PLANE_FOREGROUND: fg}
        answer = None   # the daemon's answer in a file too, when big enough to pay
        if self.address.startswith("unix:") and matte.nbytes >= localfile.MIN_BYTES:
            answer = localfile.empty_file()
        if answer is not None:
            header.result_file = str(answer)
        from_file = [False]
        decided = threading.Event()   # the first answer came: file read, or chunks wanted

        def requests():
            yield pb.MatteRequest(header=header)
            streaming.set()
            if shared is not None:
                decided.wait()
                if from_file[0]:
                    return
            for (plane, _), view in zip(planes, views):
                for off in range(0, len(view), IN_CHUNK):
                    yield pb.MatteRequest(chunk=pb.Chunk(plane=plane, data=bytes(view[off:off + IN_CHUNK])))

        call = self._stub.Matte(requests(), timeout=self.timeout, metadata=self._metadata)
        watcher = None
        if cancel is not None:
            def watch():
                cancel.wait()
                call.cancel()
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        summary = None
        answered = False
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
                    if target is None:
                        raise LayermatteError(f"daemon sent an unexpected plane {resp.chunk.plane}")
                    flat = target.view(np.uint8).reshape(-1)
                    data = resp.chunk.data
                    flat[resp.chunk.offset:resp.chunk.offset + len(data)] = np.frombuffer(data, np.uint8)
                elif kind == "summary":
                    s = resp.summary
                    summary = {"request_id": s.request_id, "model_id": s.model_id,
                               "provider": s.provider, "stage_ms": dict(s.stage_ms),
                               "result_in_file": s.result_in_file}
                    if s.result_in_file:
                        if answer is None:
                            raise LayermatteError("the daemon answered in a file this client did not offer")
                        try:
                            localfile.read_result(answer, [memoryview(a.view(np.uint8).reshape(-1))
                                                           for a in (matte, fg) if a is not None])
                        except OSError as e:
                            raise LayermatteError(f"could not read the daemon's answer: {e}") from None
        except grpc.RpcError as e:
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled") from None
            if (answered or streaming.is_set()) and e.code() == grpc.StatusCode.UNAVAILABLE:
                raise DaemonUnavailable(f"the layermatte daemon at {self.address} stopped while "
                                        f"working on this request ({e.details()}); start it again "
                                        "with `layermatte serve`") from None
            raise _error(e, self.address) from None
        finally:
            decided.set()   # never leave the request stream waiting
            for f in (shared, answer):
                if f is not None:
                    f.unlink(missing_ok=True)
        if summary is None:
            raise LayermatteError("the daemon closed the stream without a summary")
        if progress:
            progress("done", 1.0)
        return MatteReply(matte=matte, foreground=fg, summary=summary)
