"""Daemon life cycle: socket permissions, single instance, stale sockets,
token-guarded TCP, graceful SIGTERM, missing model."""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import start_daemon, stop_daemon, with_alpha
from layermatte.transport.client import Client
from layermatte.errors import LayermatteError, ModelNotPulled
from layermatte.transport.server import probe


def serve_cmd(*args):
    return [sys.executable, "-m", "layermatte", "serve", *args]


def test_socket_is_private(daemon):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700


def test_second_serve_detects_the_running_daemon(daemon):
    out = subprocess.run(serve_cmd("--socket", str(daemon.socket), "--no-warm"), env=daemon.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layermatte: error: a layermatte daemon is "
                                                   "already running"), out.stderr
    assert f"(pid {daemon.proc.pid})" in lines[0] and "layermatte stop" in lines[0]
    assert daemon.alive() and int(daemon.socket.with_suffix(".pid").read_text()) == daemon.proc.pid


def test_stale_socket_is_replaced(model_cache):
    work = Path(tempfile.mkdtemp(prefix="lm-"))
    (work / "run").mkdir(mode=0o700)
    stale = work / "run" / "daemon.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # file left behind, nobody listening: a crashed daemon's socket
    assert stale.exists() and not probe(f"unix:{stale}")
    d = start_daemon(model_cache, "--no-warm", workdir=work)
    try:
        assert d.alive()
    finally:
        stop_daemon(d)
    assert not stale.exists()


def test_two_daemons_racing_for_one_socket(model_cache):
    work = Path(tempfile.mkdtemp(prefix="lm-"))
    sock = work / "run" / "daemon.sock"
    env = dict(os.environ, LAYERMATTE_CACHE=str(model_cache))
    procs = [subprocess.Popen(serve_cmd("--socket", str(sock), "--no-warm"), env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not probe(f"unix:{sock}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert probe(f"unix:{sock}")
        time.sleep(2)
        running = [p for p in procs if p.poll() is None]
        assert len(running) == 1, "exactly one daemon keeps the socket"
        loser = next(p for p in procs if p.poll() is not None)
        assert loser.returncode == 2 and "already running" in loser.stderr.read()
        assert probe(f"unix:{sock}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:   # say where shutdown stopped, then clean up
                    p.kill()
                    pytest.fail("the daemon did not stop within 30 s of SIGTERM; its log:\n"
                                + p.communicate()[1])


def test_non_loopback_needs_a_token(model_cache, tmp_path):
    out = subprocess.run(serve_cmd("--socket", str(tmp_path / "s.sock"), "--port", "0",
                                   "--host", "0.0.0.0", "--no-warm"),
                         env=dict(os.environ, LAYERMATTE_CACHE=str(model_cache)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "non-loopback" in out.stderr and "--token-file" in out.stderr


def test_token_guards_tcp(model_cache, tmp_path):
    token = "s3cret-token-for-tests-0123456789"
    tf = tmp_path / "token"
    tf.write_text(token)
    tf.chmod(0o600)
    d = start_daemon(model_cache, "--no-warm", "--host", "127.0.0.1", "--token-file", str(tf))
    pixels, guide = np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 255, np.uint8)
    try:
        with Client(d.tcp) as c:
            with pytest.raises(LayermatteError, match="token"):
                c.matte(pixels, guide_mask=guide)
            with pytest.raises(LayermatteError, match="token"):
                c.list_models()
        with Client(d.tcp, token="wrong-token-wrong-token") as c:
            with pytest.raises(LayermatteError, match="token"):
                c.list_models()
        with Client(d.tcp, token=token) as c:
            assert c.matte(pixels, guide_mask=guide).matte.min() == 255
        with d.client() as c:  # the private unix socket needs no token
            assert c.list_models()
    finally:
        stop_daemon(d)


def test_world_readable_token_file_is_refused(model_cache, tmp_path):
    tf = tmp_path / "token"
    tf.write_text("x" * 32)
    tf.chmod(0o644)
    out = subprocess.run(serve_cmd("--socket", str(tmp_path / "s.sock"), "--port", "0",
                                   "--token-file", str(tf), "--no-warm"),
                         env=dict(os.environ, LAYERMATTE_CACHE=str(model_cache)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "chmod 600" in out.stderr


def test_sigterm_drains_in_flight_requests(model_cache, photos):
    d = start_daemon(model_cache)
    result, errors = {}, []
    started = threading.Event()

    def request():
        try:
            with d.client() as c:
                result["r"] = c.matte(photos["astronaut"],
                                      progress=lambda s, f: started.set() if s == "inference" else None)
        except Exception as e:
            errors.append(e)
    t = threading.Thread(target=request)
    t.start()
    assert started.wait(120)
    d.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert not errors, errors
    assert result["r"].matte[300, 300] > 200
    assert d.proc.wait(60) == 0
    assert not d.socket.exists()


def test_model_not_pulled_is_failed_precondition(tmp_path):
    d = start_daemon(tmp_path / "empty-cache", "--no-warm")
    try:
        with d.client() as c:
            with pytest.raises(ModelNotPulled, match="layermatte models pull"):
                c.matte(np.zeros((8, 8, 3), np.uint8))
        assert d.alive()
    finally:
        stop_daemon(d)


def test_existing_shared_folder_keeps_its_mode(model_cache):
    """--socket in a shared sticky folder (like /tmp) must not chmod that folder."""
    shared = Path(tempfile.mkdtemp(prefix="lm-shared-"))
    shared.chmod(0o1777)
    sock = shared / "d.sock"
    env = dict(os.environ, LAYERMATTE_CACHE=str(model_cache))
    p = subprocess.Popen(serve_cmd("--socket", str(sock), "--no-warm"), env=env)
    try:
        deadline = time.monotonic() + 60
        while not probe(f"unix:{sock}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert probe(f"unix:{sock}")
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_daemon_deadline(model_cache):
    """A request running past `serve --deadline` ends with DEADLINE_EXCEEDED."""
    d = start_daemon(model_cache, "--deadline", "1", "--no-warm")
    try:
        with d.client() as c:
            big = np.zeros((3000, 3000, 3), np.uint8)
            with pytest.raises(LayermatteError) as err:
                c.matte(big)  # loading the model alone takes longer than 1 s
            assert "longer than the daemon's limit" in str(err.value)
        assert d.alive()
    finally:
        stop_daemon(d)


def test_corrupt_model_is_reported_not_loaded(model_cache, tmp_path):
    import shutil
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    bad = cache / "models" / "isnet-general.onnx"
    shutil.copy(model_cache / "models" / "isnet-general.onnx", bad)
    with open(bad, "r+b") as f:
        f.seek(5_000_000)
        f.write(b"\x00" * 64)
    d = start_daemon(cache, "--no-warm")
    try:
        with d.client() as c:
            with pytest.raises(LayermatteError, match="corrupt"):
                c.matte(np.zeros((8, 8, 3), np.uint8))
        assert d.alive() and not bad.exists()  # deleted: the next pull fetches it again
    finally:
        stop_daemon(d)


def _rss_mib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def test_idle_daemon_gives_inference_memory_back(model_cache, photos):
    """After --idle-release seconds without requests the model's working memory
    is returned; the next request still gets the same matte."""
    d = start_daemon(model_cache, "--idle-release", "3")
    try:
        with d.client() as c:
            first = c.matte(photos["coffee"]).matte
            busy = _rss_mib(d.proc.pid)
            deadline = time.monotonic() + 60
            while "inference memory released" not in d.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert "inference memory released" in d.log.read_text(), d.log.read_text()[-2000:]
            idle = _rss_mib(d.proc.pid)
            assert idle < busy - 300, (busy, idle)
            # the same pixels as RGBA: not the cached coarse matte, so the model runs again
            again = c.matte(with_alpha(photos["coffee"]))
            assert again.summary["stage_ms"]["inference"] > 0
            assert np.abs(again.matte.astype(int) - first).max() <= 1
    finally:
        stop_daemon(d)


def test_memory_release_is_cancelled_by_a_request(model_cache):
    from layermatte.models.catalog import Catalog
    from layermatte.models.engine import Engine
    engine = Engine(Catalog(cache=model_cache))
    engine.load(None)
    assert engine.holding                       # the warm-up run left its working set in the arena
    arrived = threading.Event()
    arrived.set()                               # a request is already waiting
    assert engine.release_memory(arrived) is False and engine.holding
    assert engine.release_memory(threading.Event()) is True and not engine.holding
