"""The daemon's life as the command line sees it, with real daemons and the real
model: autostart says so once and the daemon goes away when idle, `serve
--idle-exit`, `layermatte stop`, client cancels in the daemon's log."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import start_daemon, stop_daemon, with_alpha
from layermatte.system import lifecycle
from layermatte.errors import Cancelled
from layermatte.transport.server import probe


def lm(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "layermatte", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_gone(pid: int, timeout: float) -> bool:
    from layermatte.system.platforms import pid_alive
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:   # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def image(photos, tmp_path) -> Path:
    p = tmp_path / "cat.png"
    Image.fromarray(photos["cat"]).save(p)
    return p


def test_autostart_says_so_once_and_the_daemon_exits_when_idle(model_cache, image, tmp_path):
    sock = Path(tempfile.mkdtemp(prefix="lma-")) / "run" / "d.sock"
    env = dict(os.environ, LAYERMATTE_SOCKET=str(sock), LAYERMATTE_CACHE=str(model_cache),
               LAYERMATTE_IDLE_EXIT="6")
    r = lm("cut", image, tmp_path / "a.png", env=env)
    assert r.returncode == 0, r.stderr
    started = [ln for ln in r.stderr.splitlines() if "started a layermatte daemon" in ln]
    assert len(started) == 1 and "exits after 6 s idle" in started[0] and "layermatte stop" in started[0]
    pid = int(sock.with_suffix(".pid").read_text())
    assert f"pid {pid}" in started[0]
    r2 = lm("cut", image, tmp_path / "b.png", env=env)   # the same daemon, nothing said
    assert r2.returncode == 0 and "started" not in r2.stderr, r2.stderr
    assert int(sock.with_suffix(".pid").read_text()) == pid
    try:
        assert wait_gone(pid, 60), "the auto-started daemon did not exit when idle"
    finally:
        lifecycle.stop(lifecycle.files_for(sock), timeout=30)
    assert not sock.exists() and not sock.with_suffix(".pid").exists()
    log = (sock.parent / "daemon.log").read_text()
    assert "no requests for 6 s: exiting" in log and "stopped" in log


def test_serve_by_hand_stays_and_stop_stops_it(model_cache):
    d = start_daemon(model_cache, "--no-warm")
    try:
        time.sleep(2)
        assert d.alive()
        assert "exits after" not in d.log.read_text()   # no idle exit unless asked
        r = lm("stop", "--socket", d.socket, env=d.env, timeout=90)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip() == f"layermatte: stopped the daemon on {d.socket} (pid {d.proc.pid})"
        assert d.proc.wait(5) == 0
        assert not d.socket.exists() and not d.socket.with_suffix(".pid").exists()
        r = lm("stop", "--socket", d.socket, env=d.env)
        assert r.returncode == 0 and "no daemon is running" in r.stderr
    finally:
        stop_daemon(d)


def test_idle_exit_waits_for_requests(model_cache, photos):
    d = start_daemon(model_cache, "--no-warm", "--idle-exit", "3")
    try:
        rgba = with_alpha(photos["astronaut"])
        with d.client() as c:   # each request restarts the idle clock
            for _ in range(3):
                c.matte(rgba, guide_mask=(rgba[..., 0] > 128).astype("uint8") * 255)
                time.sleep(1.5)
        assert d.alive()
        assert d.proc.wait(30) == 0
    finally:
        stop_daemon(d)
    assert not d.socket.exists()
    assert "no requests for 3 s: exiting" in d.log.read_text()


def test_client_cancel_is_logged(daemon, photos):
    rgba = with_alpha(photos["coffee"])
    cancel = threading.Event()

    def progress(stage, fraction):
        if stage not in ("receive", "queue"):
            cancel.set()

    before = daemon.log.read_text().count("cancelled by the client")
    with daemon.client() as c:
        with pytest.raises(Cancelled):
            c.matte(rgba, progress=progress, cancel=cancel)
    deadline = time.monotonic() + 10
    while daemon.log.read_text().count("cancelled by the client") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.log.read_text().count("cancelled by the client") > before
    assert probe(daemon.address)
