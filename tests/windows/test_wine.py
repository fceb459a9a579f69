"""The Windows lane: layermatte on a real Windows CPython 3.12 (win_amd64 wheels) under Wine 10
in the trixie editor root (wine_env.sh builds and caches it; README.md here).

One Wine daemon per module, started as a user would (`python -m layermatte serve`, no socket:
loopback TCP with a token, address published in %LOCALAPPDATA%), the real ISNet model. Windows
clients (`cut`, the plug-ins' client over gRPC and over `layermatte pipe`) reach it over real
sockets; their mattes are compared with the Linux daemon's (the suite's `daemon`) within ±1.
Not root / cannot build: skip with the reason (LAYERMATTE_REQUIRE_EDITORS=1: fail, as in CI).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCRIPT = HERE / "wine_env.sh"
CANNOT_BUILD = 77
sys.path.insert(0, str(HERE.parent / "editors"))
from root import bind, editor_root  # noqa: E402

pytestmark = pytest.mark.editor


def win(path: Path | str) -> str:
    """The Windows name of a path inside the root (Wine's Z: drive is the root's /)."""
    return "Z:" + str(path).replace("/", "\\")


def _files_run(argv: list[str], stdin: bytes = b"", timeout: float = 300) -> subprocess.CompletedProcess:
    """Output into files, not pipes: Wine's helper processes (services.exe, ...) inherit the first
    caller's handles and keep a pipe open long after the program itself has exited."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.run(argv, input=stdin, stdout=out, stderr=err, timeout=timeout)
        out.seek(0), err.seek(0)
        p.stdout, p.stderr = out.read(), err.read()
    p.out, p.err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    return p


def _script(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    p = _files_run(["bash", str(SCRIPT), *args], timeout=timeout)
    p.stdout, p.stderr = p.out, p.err
    return p


@dataclass
class Lane:
    """The Windows Python of this module: its own folder (the cached interpreter, a ._pth naming
    the cached wheels and this checkout's package), so `python.exe -m layermatte` works with no
    environment, as an installed one does."""
    work: Path
    python: str             # Windows path of python.exe
    runtime: Path           # host path of %LOCALAPPDATA%\\layermatte\\run in the prefix
    env: tuple[str, ...]    # VAR=VALUE for every Windows process

    def run(self, *args: str, env: tuple[str, ...] = (), stdin: bytes | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return _files_run(["bash", str(SCRIPT), "wine", *self.env, *env, self.python, *args],
                          stdin or b"", timeout)

    def py(self, code: str, **kw) -> subprocess.CompletedProcess:
        f = self.work / f"script{time.monotonic_ns()}.py"
        f.write_text(code)
        return self.run(win(f), **kw)


def _build_lane() -> Path:
    """The cached Windows Python folder; skip (or fail in CI) when this host cannot build it."""
    editor_root("trixie")    # root, mmdebstrap: the editor tests' own skip/fail rule
    t0 = time.monotonic()
    p = _script("path")
    tail = "\n".join(p.stderr.strip().splitlines()[-15:])
    if p.returncode == CANNOT_BUILD and os.environ.get("LAYERMATTE_REQUIRE_EDITORS") != "1":
        pytest.skip(f"Windows lane: cannot build on this host: {tail}")
    if p.returncode != 0:
        pytest.fail(f"Windows lane: wine_env.sh path exited {p.returncode}:\n{tail}", pytrace=False)
    print(f"Windows lane ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return Path(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lane(model_cache):
    cached = _build_lane()
    work = Path(tempfile.mkdtemp(prefix="lmw-", dir="/tmp"))
    work.chmod(0o755)
    pyd = work / "py"
    pyd.mkdir()
    for f in cached.iterdir():
        if f.name != "site":
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, pyd / f.name)
    pkg = work / "pkg"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "daemon" / "layermatte", pkg / "layermatte", ignore=ignore)
    # generated at install time by setup.py's build hook (scripts/setup.sh): the same code a wheel has
    assert (pkg / "layermatte" / "proto" / "layermatte" / "v1" / "matting_pb2.py").is_file(), \
        "generated gRPC code missing: run scripts/setup.sh"
    shutil.copytree(REPO / "plugins", pkg / "layermatte" / "_plugins", ignore=ignore)   # as in the wheel
    (pyd / "python312._pth").write_text("\n".join(
        ["python312.zip", ".", r"Z:\opt\lmwine\py\cp312\site", win(pkg), "import site", ""]))
    prefix_local = cached.parent.parent / "prefix" / "drive_c" / "users" / "root" / "AppData" / "Local"
    runtime = prefix_local / "layermatte" / "run"
    p = _script("server", "start", timeout=120)
    assert p.returncode == 0, p.stderr
    shutil.rmtree(runtime, ignore_errors=True)     # what a killed run left (its processes are gone)
    with bind(work), bind(model_cache):
        yield Lane(work, win(pyd / "python.exe"), runtime,
                   (f"LAYERMATTE_CACHE={win(model_cache)}", f"LAYERMATTE_CONFIG={win(work / 'config')}"))
        _script("server", "stop", timeout=120)
    shutil.rmtree(work, ignore_errors=True)


@dataclass
class WineDaemon:
    address: str
    token: str
    pid: int
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def wine_daemon(lane):
    """`python -m layermatte serve` under Wine, found the way clients find it: the published file."""
    from layermatte.transport.server import probe
    log = lane.work / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(["bash", str(SCRIPT), "wine", *lane.env, lane.python, "-m", "layermatte",
                                 "serve"], stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, f"Wine daemon exited {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"Wine daemon did not come up:\n{log.read_text()}"
        try:
            published = json.loads((lane.runtime / "daemon.address").read_text())
            token = (lane.runtime / "daemon.token").read_text().strip()
        except (OSError, ValueError):
            published = None
        if published and probe(published["address"], token=token) and "loaded model" in log.read_text():
            break
        time.sleep(0.5)
    yield WineDaemon(published["address"], token, published["pid"], proc, log)
    lane.run("-m", "layermatte", "stop", timeout=120)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def cat(lane) -> Path:
    import skimage.data
    path = lane.work / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    return path


@pytest.fixture(scope="module")
def linux_matte(daemon, cat, lane) -> np.ndarray:
    """The same image's matte from the Linux daemon (host .venv, unix socket)."""
    out = lane.work / "linux.png"
    p = subprocess.run([sys.executable, "-m", "layermatte", "cut", "--mask-only", "--no-autostart",
                        "--socket", str(daemon.socket), str(cat), str(out)], capture_output=True, text=True,
                       env=daemon.env, timeout=300)
    assert p.returncode == 0, p.stderr
    return np.asarray(Image.open(out))


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1, f"max diff {diff.max()}, {(diff > 1).sum()} pixels off by more than 1"
    assert (b > 128).mean() > 0.05    # a real matte, not an empty one


def test_platform_decisions_are_windows_ones(lane):
    """What the real Windows Python decides: runtime folder, transport, process flags, editor folders."""
    p = lane.py(r"""
import json, os, subprocess, sys
from layermatte.system import platforms as P
g, k = P.gimp_locations(), P.krita_locations()
child = subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True,
                       **P.hidden_popen_kwargs())
print(json.dumps({"os": os.name, "platform": sys.platform, "OS": P.OS, "runtime": str(P.runtime_dir()),
    "unix": P.unix_sockets_supported(), "endpoint": P.default_endpoint().address,
    "token_file": str(P.default_endpoint().token_file), "hidden": P.hidden_popen_kwargs(),
    "detached": P.detached_popen_kwargs(), "NO_WINDOW": subprocess.CREATE_NO_WINDOW,
    "NEW_GROUP": subprocess.CREATE_NEW_PROCESS_GROUP, "appdata": os.environ["APPDATA"],
    "local": os.environ["LOCALAPPDATA"], "gimp": [str(x.plugin_root) for x in g],
    "krita": [str(x.plugin_root) for x in k], "kritarc": str(k[0].kritarc), "child": child.stdout.strip(),
    "tag": P.user_tag()}))
""")
    assert p.returncode == 0, p.err
    d = json.loads(p.out.strip().splitlines()[-1])
    local, roaming = d["local"], d["appdata"]
    assert (d["os"], d["platform"], d["OS"]) == ("nt", "win32", "windows")
    assert local.endswith(r"\AppData\Local") and roaming.endswith(r"\AppData\Roaming")
    assert d["runtime"] == local + r"\layermatte\run"
    assert d["unix"] is False and d["endpoint"] == ""          # nothing published before the daemon runs
    assert d["token_file"] == local + r"\layermatte\run\daemon.token"
    assert d["hidden"] == {"creationflags": d["NO_WINDOW"]}    # our constants are Windows' own
    assert d["detached"] == {"creationflags": d["NO_WINDOW"] | d["NEW_GROUP"], "close_fds": True}
    assert d["child"] == "child"                                # a CREATE_NO_WINDOW child runs
    assert d["gimp"] == [roaming + rf"\GIMP\{s}\plug-ins" for s in ("3.0", "3.2")]
    assert d["krita"] == [roaming + r"\krita\pykrita"] and d["kritarc"] == local + r"\kritarc"
    assert d["tag"] == "root"                                   # USERNAME (no getuid on Windows)


def test_daemon_listens_on_loopback_with_a_published_token(lane, wine_daemon):
    from layermatte.transport.server import probe
    host, port = wine_daemon.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert len(wine_daemon.token) >= 32
    assert "listening on 127.0.0.1:%s (token required)" % port in wine_daemon.log.read_text()
    assert probe(wine_daemon.address, token=wine_daemon.token)
    assert not probe(wine_daemon.address)                     # the port is no use without the token
    assert not probe(wine_daemon.address, token="x" * 43)


def test_cut_under_wine_equals_linux(lane, wine_daemon, cat, linux_matte):
    """`layermatte cut` on Windows finds the daemon by the published address and token."""
    out = lane.work / "wine-cut.png"
    p = lane.run("-m", "layermatte", "cut", "--mask-only", "--no-autostart", win(cat), win(out))
    assert p.returncode == 0, p.err
    assert_close(np.asarray(Image.open(out)), linux_matte)


def test_wrong_token_is_a_clear_error(lane, wine_daemon, cat):
    bad = lane.work / "bad.token"
    bad.write_text("not-the-token-of-this-daemon-at-all\n")
    p = lane.run("-m", "layermatte", "cut", "--mask-only", "--no-autostart", "--address", wine_daemon.address,
                 "--token-file", win(bad), win(cat), win(lane.work / "never.png"))
    assert p.returncode == 2, p.out + p.err
    assert "token" in p.err.lower(), p.err
    assert "Traceback" not in p.err
    assert not (lane.work / "never.png").exists()


PLUGIN_CALL = r"""
import json, sys, os
sys.path.insert(0, r"{plugin}")
import layermatte_lite as L
from PIL import Image
img = Image.open(r"{cat}").convert("RGB")
try:
    matte, summary = L.matte(img.width, img.height, "RGB8", img.tobytes(), autostart=False)
except L.LayermatteError as e:
    print(json.dumps({{"error": str(e)}})); sys.exit(0)
Image.frombytes("L", img.size, matte).save(r"{out}")
print(json.dumps({{"grpc": L.grpc_available(), "address": L.resolve_address(), "command": L.layermatte_command()}}))
"""


@pytest.fixture(scope="module")
def plugin(lane) -> Path:
    """The GIMP plug-in as `layermatte install gimp` puts it on Windows (the program recorded)."""
    dest = lane.work / "plug-ins"
    dest.mkdir()
    p = lane.run("-m", "layermatte", "install", "gimp", "--dest", win(dest), "--json")
    assert p.returncode == 0, p.err
    folder = dest / "layermatte"
    assert json.loads((folder / "layermatte_lite.json").read_text())["command"] == [lane.python, "-m", "layermatte"]
    return folder


@pytest.mark.parametrize("transport", ["grpc", "pipe"])
def test_plugin_client_under_wine_equals_linux(lane, wine_daemon, plugin, cat, linux_matte, transport):
    """The plug-ins' client on Windows: gRPC to the published address with the token, or the recorded
    program's `layermatte pipe` child (CREATE_NO_WINDOW) doing the call."""
    out = lane.work / f"plugin-{transport}.png"
    env = ("LAYERMATTE_TRANSPORT=pipe",) if transport == "pipe" else ()
    p = lane.py(PLUGIN_CALL.format(plugin=win(plugin), cat=win(cat), out=win(out)), env=env)
    assert p.returncode == 0, p.err
    d = json.loads(p.out.strip().splitlines()[-1])
    assert "error" not in d, d
    assert d["grpc"] is (transport == "grpc") and d["address"] == wine_daemon.address
    assert d["command"] == [lane.python, "-m", "layermatte"]
    assert_close(np.asarray(Image.open(out)), linux_matte)


@pytest.mark.parametrize("transport", ["grpc", "pipe"])
def test_plugin_client_wrong_token_is_a_clear_error(lane, wine_daemon, plugin, cat, transport):
    env = ("LAYERMATTE_TOKEN=not-the-token-of-this-daemon-at-all",
           *(("LAYERMATTE_TRANSPORT=pipe",) if transport == "pipe" else ()))
    p = lane.py(PLUGIN_CALL.format(plugin=win(plugin), cat=win(cat), out=win(lane.work / "never.png")),
                env=env)
    assert p.returncode == 0, p.err
    d = json.loads(p.out.strip().splitlines()[-1])
    assert "token" in d.get("error", "").lower(), d
