"""The unix-socket fast path: the layer handed over in a file (localfile.py)."""
from __future__ import annotations

import os

import cv2
import grpc
import numpy as np
import pytest

from conftest import with_alpha
from layermatte.transport import localfile
from layermatte.imaging.pipeline import MatteOptions
from layermatte.proto.layermatte.v1 import matting_pb2 as pb
from layermatte.proto.layermatte.v1 import matting_pb2_grpc as pb_grpc


def call(address, header, chunks: bytes | None = None):
    """(status, details, responses) of one Matte call: a header, then the
    pixels as chunks when given."""
    msgs = [pb.MatteRequest(header=header)]
    if chunks is not None:
        msgs += [pb.MatteRequest(chunk=pb.Chunk(plane=pb.PLANE_PIXELS, data=chunks[i:i + (1 << 20)]))
                 for i in range(0, len(chunks), 1 << 20)]
    got = []
    with grpc.insecure_channel(address) as ch:
        try:
            for r in pb_grpc.MattingStub(ch).Matte(iter(msgs), timeout=120):
                got.append(r)
        except grpc.RpcError as e:
            return e.code(), e.details(), got
    return grpc.StatusCode.OK, "", got


def matte_of(responses) -> np.ndarray:
    return np.concatenate([np.frombuffer(r.chunk.data, np.uint8) for r in responses
                           if r.WhichOneof("kind") == "chunk" and r.chunk.plane == pb.PLANE_MATTE])


def layer_file(tmp_path, rgba: np.ndarray, extra: bytes = b""):
    path = tmp_path / "layer.raw"
    path.write_bytes(rgba.tobytes() + extra)
    h, w = rgba.shape[:2]
    return path, pb.MatteHeader(width=w, height=h, format=pb.PIXEL_FORMAT_RGBA8, pixels_file=str(path))


def test_daemon_reads_the_file_and_gives_the_streamed_matte(daemon, photos, tmp_path):
    rgba = with_alpha(photos["astronaut"])
    rgba[:16, 48:64] = 0   # pixels no other test sends: the model runs, not the re-refine cache
    path, header = layer_file(tmp_path, rgba)
    code, details, responses = call(daemon.address, header)
    assert code == grpc.StatusCode.OK, details
    assert responses[0].progress.from_file and not any(r.progress.from_file for r in responses[1:])
    matte = matte_of(responses)
    with daemon.client(tcp=True) as c:   # TCP: chunks
        streamed = c.matte(rgba).matte
    assert np.array_equal(matte.reshape(streamed.shape), streamed)
    assert path.read_bytes() == rgba.tobytes()   # read, never written


def test_client_uses_the_file_on_the_unix_socket_and_removes_it(daemon, photos, monkeypatch):
    made = []
    real = localfile.write_planes
    monkeypatch.setattr(localfile, "write_planes", lambda views: made.append(real(views)) or made[-1])
    rgba = with_alpha(photos["astronaut"])
    rgba[:16, 64:80] = 0   # pixels no other test sends: the model runs, not the re-refine cache
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


def test_file_over_tcp_is_not_used_and_chunks_are_read(daemon, photos, tmp_path):
    rgba = with_alpha(photos["astronaut"])
    rgba[:16, :16] = 0   # pixels no other test sends: the model runs
    _, header = layer_file(tmp_path, rgba)
    code, details, responses = call(daemon.tcp, header, rgba.tobytes())
    assert code == grpc.StatusCode.OK, details
    assert not any(r.progress.from_file for r in responses)
    assert matte_of(responses).reshape(512, 512)[120, 230] > 200
    assert "accepted only over the daemon's unix socket" in daemon.log.read_text()


@pytest.mark.parametrize("case,words", [
    ("missing", "No such file"), ("relative", "not an absolute path"), ("short", "the header announces"),
    ("long", "the header announces"), ("symlink", "symbolic links"), ("directory", "not a regular file"),
])
def test_unusable_file_falls_back_to_chunks(daemon, tmp_path, case, words):
    """A file the daemon cannot use (an editor sandbox with its own /dev/shm,
    a client bug) is logged and the call goes on with chunks; with none
    sent, the usual stream-ended-early error."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = 255
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
    header.request_id = f"unusable-{case}"
    code, details, responses = call(daemon.address, header, rgba.tobytes())
    assert code == grpc.StatusCode.OK, details
    assert not any(r.progress.from_file for r in responses)
    assert len(matte_of(responses)) == 64
    log = [ln for ln in daemon.log.read_text().splitlines() if f"unusable-{case}" in ln]
    assert any("not used" in ln and words in ln for ln in log), log
    code, details, _ = call(daemon.address, header)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ended early" in details
    assert daemon.alive()


def test_client_streams_chunks_when_the_daemon_cannot_see_its_file(daemon, photos, monkeypatch):
    """As for an editor in a sandbox: the file the client wrote is not there
    for the daemon; the call still succeeds, over chunks."""
    real = localfile.write_planes

    def unseen(views):
        path = real(views)
        path.unlink()
        return path
    monkeypatch.setattr(localfile, "write_planes", unseen)
    rgba = with_alpha(photos["astronaut"])
    rgba[:16, 16:32] = 0   # pixels no other test sends
    with daemon.client() as c:
        reply = c.matte(rgba)
    assert reply.matte[120, 230] > 200 and reply.matte[30, 30] < 30
    assert "No such file" in daemon.log.read_text()


# -- the answer in a file (MatteHeader.result_file) ---------------------------------
def answer_file(tmp_path, content: bytes = b""):
    path = tmp_path / "answer.out"
    path.write_bytes(content)
    return path


def test_daemon_writes_the_answer_into_the_empty_file(daemon, photos, tmp_path):
    rgba = with_alpha(photos["astronaut"])
    rgba[:16, 32:48] = 0   # pixels no other test sends
    _, header = layer_file(tmp_path, rgba)
    answer = answer_file(tmp_path)
    header.result_file = str(answer)
    header.return_foreground = True
    header.refinement.decontaminate = True
    code, details, responses = call(daemon.address, header)
    assert code == grpc.StatusCode.OK, details
    assert not any(r.WhichOneof("kind") == "chunk" for r in responses)
    assert responses[-1].summary.result_in_file
    with daemon.client(tcp=True) as c:   # TCP: chunks
        streamed = c.matte(rgba, options=MatteOptions(decontaminate=True, return_foreground=True))
    assert answer.read_bytes() == streamed.matte.tobytes() + streamed.foreground.tobytes()


@pytest.mark.parametrize("case,words", [
    ("not-empty", "not empty"), ("missing", "No such file"), ("symlink", "symbolic links"),
    ("fifo", "No such device or address"), ("tcp", "accepted only over the daemon's unix socket"),
])
def test_unusable_answer_file_gets_chunks_and_stays_as_it_was(daemon, tmp_path, case, words):
    """Only a fresh empty file of the daemon's user is written: a wrong path
    cannot overwrite anyone's data, and the matte still comes, in chunks."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = 255
    header = pb.MatteHeader(width=8, height=8, format=pb.PIXEL_FORMAT_RGBA8,
                            request_id=f"answer-{case}")
    answer = answer_file(tmp_path, b"precious" if case == "not-empty" else b"")
    header.result_file = str(answer)
    if case == "missing":
        answer.unlink()
    elif case == "symlink":
        link = tmp_path / "link.out"
        link.symlink_to(answer)
        header.result_file = str(link)
    elif case == "fifo":
        answer.unlink()
        os.mkfifo(answer)
    address = daemon.tcp if case == "tcp" else daemon.address
    code, details, responses = call(address, header, rgba.tobytes())
    assert code == grpc.StatusCode.OK, details
    assert not responses[-1].summary.result_in_file
    assert matte_of(responses).reshape(8, 8)[3, 3] > 200
    if case in ("not-empty", "symlink", "tcp"):
        assert answer.read_bytes() == (b"precious" if case == "not-empty" else b"")
    log = [ln for ln in daemon.log.read_text().splitlines() if f"answer-{case}" in ln]
    assert any("result_file" in ln and "not used" in ln and words in ln for ln in log), log


def test_fifo_as_layer_file_does_not_hang_the_daemon(daemon, tmp_path):
    rgba = np.full((8, 8, 4), 255, np.uint8)
    fifo = tmp_path / "layer.fifo"
    os.mkfifo(fifo)
    header = pb.MatteHeader(width=8, height=8, format=pb.PIXEL_FORMAT_RGBA8,
                            pixels_file=str(fifo), request_id="fifo-layer")
    code, details, responses = call(daemon.address, header, rgba.tobytes())
    assert code == grpc.StatusCode.OK, details
    assert not any(r.progress.from_file for r in responses)
    assert "not a regular file" in daemon.log.read_text()


def test_client_reads_the_answer_file_and_removes_it(daemon, photos, monkeypatch):
    made = []
    real = localfile.empty_file
    monkeypatch.setattr(localfile, "empty_file", lambda: made.append(real()) or made[-1])
    rgba = with_alpha(cv2.resize(photos["astronaut"], (1100, 1000)))   # a matte above 1 MiB
    with daemon.client() as c:
        reply = c.matte(rgba)
        small = with_alpha(photos["astronaut"])
        small[:16, 80:96] = 0   # pixels no other test sends: the model runs, not the re-refine cache
        small = c.matte(small)   # below 1 MiB: chunks are as fast
    assert len(made) == 1 and made[0].parent == localfile.SHM and not made[0].exists()
    assert reply.summary["result_in_file"] and not small.summary["result_in_file"]
    with daemon.client(tcp=True) as c:
        assert np.array_equal(c.matte(rgba).matte, reply.matte)
