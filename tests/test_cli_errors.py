"""Every failure class of the command line: exit code 2, one line
`layermatte: error: …` with the cause and what to do, no traceback, and no
.pid/.sock (or output) left behind. Real `layermatte` processes; the daemon
ones start the real daemon code up to where it fails."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from layermatte.errors import DaemonUnavailable

NOBODY = 65534


def lm(*args, env=None, as_nobody=False, timeout=120):
    """The CLI as a process. as_nobody: permissions only hold for a user who is
    not root, so a root test run drops to nobody (setpriv) for those cases."""
    cmd = [sys.executable, "-m", "layermatte", *map(str, args)]
    if as_nobody and os.geteuid() == 0:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("layermatte: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def no_daemon_files(folder: Path):
    if folder.is_dir():
        left = sorted(p.name for p in folder.iterdir() if p.suffix in (".pid", ".sock"))
        assert left == [], left


@pytest.fixture
def short_tmp():
    d = Path(tempfile.mkdtemp(prefix="lme-"))
    d.chmod(0o755)
    return d


@pytest.fixture
def env(tmp_path, model_cache):
    return dict(os.environ, LAYERMATTE_CACHE=str(model_cache), LAYERMATTE_CONFIG=str(tmp_path / "cfg"))


def owned_by_runner(path: Path) -> Path:
    """A folder the (possibly dropped-to-nobody) runner owns."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    return path


def test_serve_in_a_read_only_folder(short_tmp, env):
    ro = short_tmp / "ro"
    ro.mkdir()
    owned_by_runner(ro)
    ro.chmod(0o555)
    r = lm("serve", "--socket", ro / "d.sock", "--no-warm", env=env, as_nobody=True)
    one_line_error(r, str(ro), "not writable", "--socket")
    assert list(ro.iterdir()) == []


def test_socket_parent_is_a_file(short_tmp, env):
    f = short_tmp / "plain"
    f.write_text("x")
    r = lm("serve", "--socket", f / "d.sock", "--no-warm", env=env)
    one_line_error(r, str(f), "is a file", "--socket")
    assert f.read_text() == "x"


def test_unwritable_runtime_dir(short_tmp, env):
    xdg = short_tmp / "xdg"
    xdg.mkdir()
    owned_by_runner(xdg)
    xdg.chmod(0o555)
    e = {k: v for k, v in env.items() if k not in ("LAYERMATTE_RUNTIME_DIR", "LAYERMATTE_SOCKET")}
    owned_by_runner(short_tmp)
    e.update(XDG_RUNTIME_DIR=str(xdg), HOME=str(short_tmp), LAYERMATTE_CACHE=str(short_tmp / "cache"),
             LAYERMATTE_CONFIG=str(short_tmp / "cfg"))
    r = lm("serve", "--no-warm", env=e, as_nobody=True)
    one_line_error(r, str(xdg / "layermatte"), "LAYERMATTE_RUNTIME_DIR")
    doc = lm("doctor", "--no-probe", env=e, as_nobody=True)
    assert doc.returncode == 0, doc.stderr
    row = next(ln for ln in doc.stdout.splitlines() if ln.startswith("runtime dir"))
    assert "problem:" in row and "LAYERMATTE_RUNTIME_DIR" in row
    assert list(xdg.iterdir()) == []


def test_tcp_port_in_use(short_tmp, env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = lm("serve", "--socket", short_tmp / "run" / "d.sock", "--port", port, "--no-warm", env=env)
    one_line_error(r, f"127.0.0.1:{port}", "in use", "--port")
    no_daemon_files(short_tmp / "run")


def test_socket_path_too_long(tmp_path, env):
    deep = tmp_path / ("x" * 100)
    sock = deep / "d.sock"
    r = lm("serve", "--socket", sock, "--no-warm", env=env)
    one_line_error(r, "bytes long", "at most 107")
    no_daemon_files(deep)
    # Autostart on that path: refused before any daemon is started, in well under 5 s.
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(img)
    t0 = time.monotonic()
    r = lm("cut", img, tmp_path / "o.png", "--socket", sock, env=env)
    assert time.monotonic() - t0 < 5
    one_line_error(r, "at most 107")
    assert not (tmp_path / "o.png").exists()
    no_daemon_files(deep)


def test_daemon_that_dies_at_once_is_reported_at_once(short_tmp, model_cache, monkeypatch):
    """ensure_daemon starts a real `serve` that exits at its start (its port is taken):
    the error comes within a few seconds, with the daemon's own last line."""
    from layermatte.transport.client import ensure_daemon
    monkeypatch.setenv("LAYERMATTE_CACHE", str(model_cache))
    sock = short_tmp / "run" / "d.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(DaemonUnavailable) as err:
            ensure_daemon(f"unix:{sock}", extra_args=["--port", str(port)])
        took = time.monotonic() - t0
    msg = str(err.value)
    assert "exited at once" in msg and f"cannot listen on 127.0.0.1:{port}" in msg, msg
    assert str(sock.parent / "daemon.log") in msg
    assert took < 5, took   # the daemon's own start-up (imports) is most of it
    no_daemon_files(sock.parent)


def test_bad_outputs_and_inputs(short_tmp, env):
    tmp_path = short_tmp   # nobody (below) must reach it
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(img)
    before = img.read_bytes()
    sock = ["--socket", tmp_path / "none.sock", "--no-autostart"]
    one_line_error(lm("cut", img, tmp_path / "missing" / "o.png", *sock, env=env), "does not exist",
                   "create it first")
    one_line_error(lm("cut", img, img, *sock, env=env), "is the input file", "choose another")
    one_line_error(lm("cut", tmp_path, tmp_path / "o.png", *sock, env=env), "is a folder",
                   "layermatte batch")
    one_line_error(lm("cut", img, tmp_path / "b.png", tmp_path / "nodir", *sock, env=env),
                   "output folder", "does not exist")
    ro = tmp_path / "ro"
    ro.mkdir()
    owned_by_runner(ro)
    ro.chmod(0o555)
    owned_by_runner(tmp_path)
    one_line_error(lm("cut", img, ro / "o.png", *sock, env=env, as_nobody=True), "not writable")
    assert img.read_bytes() == before and not list(ro.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "ro"]
    # refine and batch check the same things first
    one_line_error(lm("refine", img, img, img, env=env), "is the input file")
    one_line_error(lm("batch", img, tmp_path / "out", *sock, env=env), "is a file", "layermatte cut")


def test_usage_errors_are_one_line(env):
    one_line_error(lm("cut", env=env), "required", "layermatte cut --help")
    one_line_error(lm("nope", env=env), "invalid choice")
    one_line_error(lm("serve", "--port", "x", env=env), "invalid int")


def test_animated_gif_warns(daemon, tmp_path):
    frames = [Image.new("RGB", (48, 48), c) for c in ("red", "blue", "green")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    r = lm("cut", gif, tmp_path / "o.png", "--socket", daemon.socket, env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert f"layermatte: warning: {gif} is animated (3 frames); only the first frame is cut" in r.stderr
    assert Image.open(tmp_path / "o.png").size == (48, 48)
