"""The framed transport (framed.py, framed_server.py) against the real daemon:
the same mattes as gRPC, the contract's header parsed strictly, bad input as
the gRPC path's errors, a private socket, and the pipe's fallback to gRPC
where a daemon offers no framed socket."""
from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from conftest import with_alpha

from layermatte.transport import framed
from layermatte.errors import Cancelled, InvalidInput


def _rgba(photos, size: int, salt: int) -> np.ndarray:
    import cv2
    rgb = cv2.resize(photos["cat"], (size, size), interpolation=cv2.INTER_AREA)
    rgb[:4] = salt % 256
    return with_alpha(rgb)


def _framed_call(daemon, layer: np.ndarray, **options):
    sock = framed.connect(daemon.address)
    assert sock is not None, "the daemon offers no framed socket"
    h, w = layer.shape[:2]
    header = framed.header(request_id="t", width=w, height=h, format_name="RGBA8", **options)
    sizes = framed.answer_sizes(w, h, "RGBA8", options.get("depth16", False),
                                options.get("foreground", False))
    return framed.matte(sock, header, [memoryview(np.ascontiguousarray(layer)).cast("B")], sizes)


def test_every_header_parses_strictly_into_the_contract():
    from google.protobuf import json_format
    from layermatte.imaging import formats
    from layermatte.proto.layermatte.v1 import matting_pb2 as pb
    for name, size in framed.FORMATS.items():
        assert formats.lookup(formats.BY_NAME[name]).bytes_per_pixel == size, name
    assert set(framed.FORMATS) == set(formats.BY_NAME)
    for quality in ("fast", "hq"):
        h = json_format.ParseDict(framed.header(
            request_id="r", width=3, height=2, format_name="GRAYA16", model_id="m", feather_px=1.5,
            shift_px=-2, smooth=0.5, contrast=0.25, quality=quality, decontaminate=True,
            depth16=True, guide=True, foreground=True), pb.MatteHeader())
        assert (h.width, h.height, h.format, h.model_id) == (3, 2, pb.PIXEL_FORMAT_GRAYA16, "m")
        assert h.refinement.quality == {"fast": pb.REFINEMENT_QUALITY_FAST,
                                        "hq": pb.REFINEMENT_QUALITY_HQ}[quality]
        assert (h.refinement.feather_px, h.refinement.shift_px, h.refinement.decontaminate) == (1.5, -2, True)
        assert (h.matte_depth, h.source, h.return_foreground) == (
            pb.MATTE_DEPTH_U16, pb.MATTE_SOURCE_PROVIDED, True)


def test_framed_matte_equals_grpc(daemon, photos):
    layer = _rgba(photos, 320, 7)
    (matte,), summary = _framed_call(daemon, layer)
    with daemon.client() as c:
        via_grpc = c.matte(layer)
    assert summary["model_id"] and "total" in summary["stage_ms"]
    got = np.frombuffer(matte, np.uint8).reshape(320, 320)
    assert np.array_equal(got, via_grpc.matte)
    assert 0.05 < (got > 127).mean() < 0.95   # a real matte, not an empty or full one


def test_colours_and_16_bit_come_back_in_order(daemon, photos):
    layer = _rgba(photos, 96, 8)
    (matte, colours), _ = _framed_call(daemon, layer, depth16=True, foreground=True,
                                       decontaminate=True)
    assert len(matte) == 96 * 96 * 2 and len(colours) == 96 * 96 * 3
    from layermatte.imaging.pipeline import MatteOptions
    with daemon.client() as c:
        via_grpc = c.matte(layer, options=MatteOptions(depth16=True, return_foreground=True,
                                                       decontaminate=True))
    assert np.array_equal(np.frombuffer(matte, "<u2").reshape(96, 96), via_grpc.matte)
    assert np.array_equal(np.frombuffer(colours, np.uint8).reshape(96, 96, 3), via_grpc.foreground)


def test_bad_requests_get_the_grpc_paths_errors(daemon, photos):
    layer = _rgba(photos, 64, 9)
    sock = framed.connect(daemon.address)
    header = framed.header(request_id="t", width=64, height=65, format_name="RGBA8")
    with pytest.raises(InvalidInput, match="stream ended early"):   # a row short
        framed.matte(sock, header, [memoryview(layer).cast("B")], [64 * 65])
    # a malformed header, then a wrong protocol: one error each, the daemon carries on
    for hello in ({"protocol": framed.PROTOCOL, "header": {"width": 2, "colour": "red"}},
                  {"protocol": 99, "header": {}}):
        with framed.connect(daemon.address) as s:
            framed.send_json(s, framed.HELLO, hello)
            kind, payload = framed.recv(s)
        event = json.loads(payload)["error"]
        assert kind == framed.EVENT and event["code"] == "INVALID_ARGUMENT", event
    assert _framed_call(daemon, layer)[0][0]


def test_a_closed_connection_cancels_the_request(daemon, photos):
    cancel = threading.Event()
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if stage == "inference":
            cancel.set()
    sock = framed.connect(daemon.address)
    layer = _rgba(photos, 512, 10)
    with pytest.raises(Cancelled):
        framed.matte(sock, framed.header(request_id="c", width=512, height=512,
                                         format_name="RGBA8", quality="hq"),
                     [memoryview(layer).cast("B")], [512 * 512], progress=progress, cancel=cancel)
    assert "inference" in seen
    with daemon.client() as c:   # the daemon dropped the work: the next request does not queue
        assert c.matte(_rgba(photos, 128, 11)).summary["stage_ms"]["queue"] < 1000


def test_the_framed_socket_is_private(daemon):
    path = framed.frames_path(daemon.socket)
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_pipe_falls_back_to_grpc_without_a_framed_socket(daemon, photos, tmp_path):
    """An older daemon (or one whose framed socket could not be made): the pipe
    uses gRPC, with the same matte."""
    alias = tmp_path / "alias.sock"
    alias.symlink_to(daemon.socket)   # the gRPC socket under a name with no .frames beside it
    layer = _rgba(photos, 64, 12)
    modules = tmp_path / "modules"
    probe = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: open({str(modules)!r}, "w").write("\\n".join(sys.modules)))
        from layermatte.cli import main
        sys.exit(main())
    """)
    outs = []
    for sock in (alias, daemon.socket):
        p = subprocess.run([sys.executable, "-c", probe, "pipe", "--width", "64", "--height", "64",
                            "--format", "RGBA8", "--socket", str(sock), "--no-autostart"],
                           input=layer.tobytes(), capture_output=True, env=daemon.env, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        outs.append((p.stdout, "grpc" in modules.read_text().split()))
    assert outs[0][1] and not outs[1][1]   # gRPC only for the alias
    assert outs[0][0] == outs[1][0] and len(outs[0][0]) == 64 * 64
