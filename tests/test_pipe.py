"""The pipe transport (`layermatte pipe` run by the plug-ins' client,
plugins/common/layermatte_lite.py) against the real daemon: failures of the
child become errors with its own words, cancel and a dead parent free the
daemon, the protocol is checked, start-up imports only the client side."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, with_alpha

PROGRAM = Path(sys.executable).parent / "layermatte"
HEAVY = ("numpy", "cv2", "onnxruntime", "scipy", "psd_tools", "PIL", "skimage", "pymatting",
         "layermatte.imaging.pipeline", "layermatte.imaging.refine", "layermatte.models.engine", "layermatte.transport.server",
         "layermatte.transport.client", "layermatte.imaging.formats", "layermatte.daemon")


def _lite_copy(folder: Path, name: str):
    """The plug-ins' client as `layermatte install` lays it out (the platform
    module beside it), loaded as a module of its own."""
    shutil.copy(ROOT / "plugins" / "common" / "layermatte_lite.py", folder)
    shutil.copy(ROOT / "daemon" / "layermatte" / "system" / "platforms.py", folder / "layermatte_platforms.py")
    spec = importlib.util.spec_from_file_location(name, folder / "layermatte_lite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lite(daemon, tmp_path, monkeypatch):
    for name in ("LAYERMATTE_ADDRESS", "LAYERMATTE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAYERMATTE_SOCKET", str(daemon.socket))
    monkeypatch.setenv("LAYERMATTE_BIN", str(PROGRAM))
    monkeypatch.setenv("LAYERMATTE_TRANSPORT", "pipe")
    module = _lite_copy(tmp_path, f"layermatte_lite_{tmp_path.name}")
    made = []

    class Recorded(module._Child):   # the test sees the child the client starts
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)
    monkeypatch.setattr(module, "_Child", Recorded)
    module.children = made
    return module


def _script(path: Path, body: str) -> str:
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def _layer(photos, size: int, salt: int) -> np.ndarray:
    """A layer no other request sent (the daemon's re-refine cache must not answer)."""
    import cv2
    rgb = cv2.resize(photos["astronaut"], (size, size), interpolation=cv2.INTER_AREA)
    rgb[:8] = salt % 256
    return with_alpha(rgb)


def _queue_ms_of_next_request(daemon, photos, salt: int) -> float:
    with daemon.client() as c:
        return c.matte(_layer(photos, 256, salt)).summary["stage_ms"]["queue"]


def test_matte_through_the_pipe_equals_the_daemons(lite, daemon, photos):
    rgba = _layer(photos, 512, 11)
    seen = []
    matte, summary = lite.matte(512, 512, "RGBA8", rgba.tobytes(), progress=lambda s, f: seen.append(s))
    with daemon.client() as c:
        reference = c.matte(rgba).matte
    got = np.frombuffer(matte, np.uint8).reshape(512, 512)
    assert np.abs(got.astype(int) - reference).max() <= 1
    assert summary["model_id"] == "isnet-general" and "inference" in seen
    assert lite.children[0].hello == {"version": _version(), "protocol": lite.PIPE_PROTOCOL}


def _version() -> str:
    from layermatte import __version__
    return __version__


def test_the_editors_python_settings_do_not_reach_the_child(lite, photos, tmp_path, monkeypatch):
    """An editor's PYTHONPATH (here: one where grpc cannot import) is not the
    program's: the child still works."""
    blocked = tmp_path / "editor-site" / "grpc"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('the editor has no grpc')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocked.parent))
    matte, _ = lite.matte(64, 64, "RGBA8", _layer(photos, 64, 12).tobytes())
    assert len(matte) == 64 * 64


def test_a_child_that_dies_at_start_gives_its_own_message(lite, tmp_path, monkeypatch):
    broken = _script(tmp_path / "layermatte", f"#!{sys.executable}\nimport layermatte_gone_missing\n")
    monkeypatch.setenv("LAYERMATTE_BIN", broken)
    with pytest.raises(lite.LayermatteError) as e:
        lite.matte(1024, 1024, "RGBA8", bytes(1024 * 1024 * 4))   # far more than a pipe holds
    assert "No module named 'layermatte_gone_missing'" in str(e.value)
    assert "exit 1" in str(e.value)


def test_a_program_that_cannot_run_at_all(lite, tmp_path, monkeypatch):
    """A recorded interpreter that is gone (a Python upgrade): the exec fails."""
    orphan = _script(tmp_path / "layermatte", "#!/nonexistent/python3\n")
    monkeypatch.setenv("LAYERMATTE_BIN", orphan)
    with pytest.raises(lite.LayermatteError) as e:
        lite.matte(8, 8, "RGBA8", bytes(8 * 8 * 4))
    assert "could not start the layermatte program" in str(e.value)


EDITOR_WITHOUT_SIGPIPE_GUARD = """
import signal, sys, importlib.util
signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as in Krita: a write to a closed pipe kills
spec = importlib.util.spec_from_file_location("lite", sys.argv[1])
lite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lite)
try:
    lite.matte(2048, 2048, "RGBA8", bytes(2048 * 2048 * 4))
except lite.LayermatteError as e:
    print("ERROR:", e)
print("ALIVE")
"""


def test_an_editor_that_dies_on_sigpipe_survives_a_child_that_exits_early(lite, tmp_path):
    quits = _script(tmp_path / "layermatte", "#!/bin/sh\necho 'not today' >&2\nexit 7\n")
    env = dict(os.environ, LAYERMATTE_BIN=quits)
    p = subprocess.run([sys.executable, "-c", EDITOR_WITHOUT_SIGPIPE_GUARD,
                        str(tmp_path / "layermatte_lite.py")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "ERROR: the layermatte program failed (exit 7). It said: not today" in p.stdout
    assert "ALIVE" in p.stdout


def test_a_protocol_the_program_does_not_speak(lite, daemon, monkeypatch):
    """A newer plug-in: its protocol is refused before its unknown flags are seen."""
    r = subprocess.run([str(PROGRAM), "pipe", "--protocol", "99", "--from-the-future", "--width", "8"],
                       capture_output=True, timeout=60, env=daemon.env)
    assert r.returncode == 3
    event = json.loads(r.stderr.decode().splitlines()[0])
    assert event["mismatch"] == {"version": _version(), "protocols": [1, 2]}
    monkeypatch.setattr(lite, "PIPE_PROTOCOL", 99)
    with pytest.raises(lite.LayermatteError) as e:
        lite.matte(8, 8, "RGBA8", bytes(8 * 8 * 4))
    assert (f"the layermatte program is {_version()} (pipe protocols 1, 2): run `layermatte install "
            in str(e.value))
    assert "the plug-in is version" in str(e.value)


@pytest.fixture(scope="module")
def old_program(tmp_path_factory):
    """The layermatte of 0.1's first release (no pipe protocol), from git."""
    folder = tmp_path_factory.mktemp("old")
    first = "50e42dd"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", first, "daemon/layermatte"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    proto = ROOT / "daemon" / "layermatte" / "proto"
    shutil.copytree(proto, folder / "daemon" / "layermatte" / "proto", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return _script(folder / "layermatte", f"#!/bin/sh\nPYTHONPATH={folder / 'daemon'} "
                                          f"exec {sys.executable} -m layermatte \"$@\"\n")


def test_an_older_program_without_protocols(lite, old_program, monkeypatch):
    monkeypatch.setenv("LAYERMATTE_BIN", old_program)
    with pytest.raises(lite.LayermatteError) as e:
        lite.matte(8, 8, "RGBA8", bytes(8 * 8 * 4))
    assert "the layermatte program is an older one, without pipe protocols: run `layermatte install" \
        in str(e.value)


def test_a_child_that_never_starts_is_stopped(lite, tmp_path, monkeypatch):
    stuck = _script(tmp_path / "layermatte", "#!/bin/sh\nkill -STOP $$\n")
    monkeypatch.setenv("LAYERMATTE_BIN", stuck)
    monkeypatch.setattr(lite, "PIPE_START_TIMEOUT", 2.0)
    with pytest.raises(lite.LayermatteError) as e:
        lite.matte(8, 8, "RGBA8", bytes(8 * 8 * 4))
    assert "the layermatte program did not start: no word from it for 2 s" in str(e.value)
    assert lite.children[0].proc.returncode == -signal.SIGKILL


def test_a_child_that_hangs_mid_request_is_stopped_and_the_daemon_freed(lite, daemon, photos,
                                                                          monkeypatch):
    monkeypatch.setattr(lite, "PIPE_SILENCE_TIMEOUT", 3.0)
    stopped = []

    def progress(stage, fraction):
        if not stopped:   # the request is in the daemon: freeze the child there
            stopped.append(stage)
            os.kill(lite.children[0].proc.pid, signal.SIGSTOP)
    rgba = _layer(photos, 2048, 13)
    with pytest.raises(lite.LayermatteError) as e:
        lite.matte(2048, 2048, "RGBA8", rgba.tobytes(), options={"quality": "hq"}, progress=progress)
    assert "the layermatte program stopped answering: no word from it for 3 s" in str(e.value)
    assert lite.children[0].proc.returncode == -signal.SIGKILL
    assert _queue_ms_of_next_request(daemon, photos, 14) < 1000


def test_cancel_stops_the_child_and_frees_the_daemon(lite, daemon, photos):
    """A long request (hq on a 2048² layer: seconds of work left) is cancelled
    once the daemon is on it; the next request does not wait behind it."""
    cancel = threading.Event()
    stages = []

    def progress(stage, fraction):
        stages.append(stage)
        if stage in ("inference", "upsample", "refine"):
            cancel.set()
    rgba = _layer(photos, 2048, 15)
    t0 = time.monotonic()
    with pytest.raises(lite.Cancelled):
        lite.matte(2048, 2048, "RGBA8", rgba.tobytes(), options={"quality": "hq"}, progress=progress,
                   cancel=cancel)
    child = lite.children[0]
    assert child.proc.returncode is not None and time.monotonic() - t0 < 60
    # The child cancelled its own call (the end of its stdin), it was not killed.
    assert child.proc.returncode == 130, child.text
    assert _queue_ms_of_next_request(daemon, photos, 16) < 1000


PLUGIN_THAT_DIES = """
import importlib.util, os, sys, threading
spec = importlib.util.spec_from_file_location("lite", sys.argv[1])
lite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lite)
Child = lite._Child
class Told(Child):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        print("CHILD", self.proc.pid, flush=True)
lite._Child = Told
def progress(stage, fraction):
    if stage in ("inference", "upsample", "refine"):
        print("WORKING", flush=True)
layer = open(sys.argv[2], "rb").read()
lite.matte(2048, 2048, "RGBA8", layer, options={"quality": "hq"}, progress=progress)
"""


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:   # a zombie is gone too (its new parent reaps it)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_plugin_killed_mid_request_takes_its_child_and_request_along(lite, daemon, photos, tmp_path):
    """GIMP kills a plug-in on Cancel (SIGKILL): the child sees its stdin end."""
    layer = tmp_path / "layer.raw"
    layer.write_bytes(_layer(photos, 2048, 17).tobytes())
    plugin = subprocess.Popen([sys.executable, "-c", PLUGIN_THAT_DIES, str(tmp_path / "layermatte_lite.py"),
                               str(layer)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, LAYERMATTE_BIN=str(PROGRAM)))
    child = None
    for line in plugin.stdout:
        if line.startswith("CHILD"):
            child = int(line.split()[1])
        if line.startswith("WORKING"):
            break
    plugin.kill()
    plugin.wait()
    assert child is not None and _wait_gone(child, 30)
    assert _queue_ms_of_next_request(daemon, photos, 18) < 1000


def test_an_orphaned_pipe_without_protocol_cancels_too(daemon, photos, tmp_path):
    """Run by hand (no --protocol: stdin may end after the layer), a pipe
    whose parent dies notices the new parent and cancels."""
    layer = tmp_path / "layer.raw"
    layer.write_bytes(_layer(photos, 2048, 19).tobytes())
    shell = subprocess.Popen(["sh", "-c", f"'{PROGRAM}' pipe --width 2048 --height 2048 --format RGBA8 "
                              f"--quality hq --socket '{daemon.socket}' < '{layer}' > /dev/null "
                              f"2> '{tmp_path}/events' & echo $!; wait"],
                             stdout=subprocess.PIPE, text=True, env=daemon.env)
    child = int(shell.stdout.readline())
    events = tmp_path / "events"
    deadline = time.monotonic() + 120
    while '"stage": "inference"' not in (events.read_text() if events.exists() else ""):
        assert time.monotonic() < deadline, events.read_text()
        time.sleep(0.05)
    shell.kill()
    shell.wait()
    assert _wait_gone(child, 30)
    assert '"cancelled": true' in events.read_text()
    assert _queue_ms_of_next_request(daemon, photos, 20) < 1000


def test_pipe_start_up_imports_only_the_client_side(daemon, photos, tmp_path):
    """`layermatte pipe` as the console script runs it, one whole request, on
    the framed transport (the gRPC fallback: tests/test_framed.py)."""
    probe = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: open({str(tmp_path / 'modules')!r}, "w").write("\\n".join(sys.modules)))
        from layermatte.cli import main
        sys.exit(main())
    """)
    p = subprocess.Popen([sys.executable, "-c", probe, "pipe", "--protocol", "2", "--width", "64",
                          "--height", "64", "--format", "RGBA8", "--socket", str(daemon.socket)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=daemon.env)
    p.stdin.write(_layer(photos, 64, 21).tobytes())
    p.stdin.flush()   # and kept open, as the plug-ins do, until the answer is in
    matte = p.stdout.read(64 * 64)
    p.stdin.close()
    assert p.wait(120) == 0, p.stderr.read().decode()
    assert len(matte) == 64 * 64
    loaded = set((tmp_path / "modules").read_text().split())
    # The user's daemon offers the framed socket: no grpc, no protobuf either.
    assert not [m for m in loaded if m.split(".")[0] in HEAVY + ("grpc", "google") or m in HEAVY]


def test_bytes_per_pixel_follows_the_format_table():
    from layermatte.imaging import formats
    from layermatte.transport import rawclient
    for name, code in rawclient.format_names().items():
        assert rawclient.bytes_per_pixel(code) == formats.lookup(code).bytes_per_pixel, name
        assert formats.BY_NAME[name] == code
