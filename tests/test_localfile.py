"""The unix-socket fast path: the layer handed over in a file (localfile.py)."""
from __future__ import annotations

import os

import grpc
import numpy as np
import pytest

from conftest import with_alpha
from layermatte import localfile
from layermatte.proto.layermatte.v1 import matting_pb2 as pb
from layermatte.proto.layermatte.v1 import matting_pb2_grpc as pb_grpc


def call(address, header):
    """(status, details, responses) of one Matte call that sends only a header."""
    got = []
    with grpc.insecure_channel(address) as ch:
        try:
            for r in pb_grpc.MattingStub(ch).Matte(iter([pb.MatteRequest(header=header)]), timeout=120):
                got.append(r)
        except grpc.RpcError as e:
            return e.code(), e.details(), got
    return grpc.StatusCode.OK, "", got


def layer_file(tmp_path, rgba: np.ndarray, extra: bytes = b""):
    path = tmp_path / "layer.raw"
    path.write_bytes(rgba.tobytes() + extra)
    h, w = rgba.shape[:2]
    return path, pb.MatteHeader(width=w, height=h, format=pb.PIXEL_FORMAT_RGBA8, pixels_file=str(path))


def test_daemon_reads_the_file_and_gives_the_streamed_matte(daemon, photos, tmp_path):
    rgba = with_alpha(photos["astronaut"])
    path, header = layer_file(tmp_path, rgba)
    code, details, responses = call(daemon.address, header)
    assert code == grpc.StatusCode.OK, details
    assert responses[0].progress.from_file and not any(r.progress.from_file for r in responses[1:])
    matte = np.concatenate([np.frombuffer(r.chunk.data, np.uint8) for r in responses
                            if r.WhichOneof("kind") == "chunk" and r.chunk.plane == pb.PLANE_MATTE])
    with daemon.client(tcp=True) as c:   # TCP: chunks
        streamed = c.matte(rgba).matte
    assert np.array_equal(matte.reshape(streamed.shape), streamed)
    assert path.read_bytes() == rgba.tobytes()   # read, never written


def test_client_uses_the_file_on_the_unix_socket_and_removes_it(daemon, photos, monkeypatch):
    made = []
    real = localfile.write_planes
    monkeypatch.setattr(localfile, "write_planes", lambda views: made.append(real(views)) or made[-1])
    rgba = with_alpha(photos["astronaut"])
    stages = []
    with daemon.client() as c:
        reply = c.matte(rgba, progress=lambda s, f: stages.append(s))
        with pytest.raises(Exception):
            c.matte(rgba, model_id="no-such-model")
    assert len(made) == 2 and all(p is not None and p.parent == localfile.SHM for p in made)
    assert not any(p.exists() for p in made)            # gone after success and after failure
    assert reply.matte[120, 230] > 200 and reply.matte[30, 30] < 30
    assert "receive" in stages and stages[-1] == "done"
    with daemon.client(tcp=True) as c:                   # never over TCP
        c.matte(rgba)
    assert len(made) == 2


def test_file_over_tcp_is_refused(daemon, photos, tmp_path):
    _, header = layer_file(tmp_path, with_alpha(photos["astronaut"]))
    code, details, _ = call(daemon.tcp, header)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "unix socket" in details


@pytest.mark.parametrize("case,words", [
    ("missing", "No such file"), ("relative", "absolute"), ("short", "header announces"),
    ("long", "header announces"), ("symlink", "symbolic links"), ("directory", "not a regular file"),
])
def test_bad_file_is_invalid_argument_and_the_daemon_stays_healthy(daemon, tmp_path, case, words):
    rgba = np.zeros((8, 8, 4), np.uint8)
    path, header = layer_file(tmp_path, rgba, extra=b"x" if case == "long" else b"")
    if case == "short":
        path.write_bytes(rgba.tobytes()[:-1])
    elif case == "missing":
        path.unlink()
    elif case == "relative":
        header.pixels_file = os.path.relpath(path)
    elif case == "symlink":
        link = tmp_path / "link.raw"
        link.symlink_to(path)
        header.pixels_file = str(link)
    elif case == "directory":
        header.pixels_file = str(tmp_path)
    code, details, _ = call(daemon.address, header)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert words in details
    assert daemon.alive()
