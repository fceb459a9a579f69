"""Shared fixtures: the real model (cached across runs), a real daemon on a
real unix socket and loopback TCP port, and real photos."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Persistent across CI runs on one machine: the model is fetched once.
CACHE = Path(os.environ.get("LAYERMATTE_TEST_CACHE",
                            Path.home() / ".cache" / "layermatte-ci" / "cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """LAYERMATTE_CACHE with the default model pulled (real download, verified)."""
    from layermatte.models.catalog import Catalog

    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["LAYERMATTE_CACHE"] = str(CACHE)
    Catalog(cache=CACHE).pull(show_progress=False)
    return CACHE


@dataclass
class DaemonHandle:
    socket: Path
    port: int
    proc: subprocess.Popen
    env: dict
    workdir: Path
    log: Path
    extra: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, tcp: bool = False, **kw):
        from layermatte.transport.client import Client
        return Client(self.tcp if tcp else self.address, **kw)

    def alive(self) -> bool:
        from layermatte.transport.server import probe
        return self.proc.poll() is None and probe(self.address)


def start_daemon(cache: Path, *args: str, workdir: Path | None = None) -> DaemonHandle:
    """A real `layermatte serve` subprocess; short /tmp path so the socket path
    stays under the 108-byte limit and can be bind-mounted into the editor root."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="lm-"))
    workdir.chmod(0o755)
    sock = workdir / "run" / "daemon.sock"
    port = free_port()
    env = dict(os.environ, LAYERMATTE_CACHE=str(cache), LAYERMATTE_CONFIG=str(workdir / "config"))
    log = workdir / "daemon.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "layermatte", "serve", "--socket", str(sock),
                                 "--port", str(port), *args], env=env, stdout=f, stderr=subprocess.STDOUT)
    handle = DaemonHandle(sock, port, proc, env, workdir, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log.read_text()}")
        if handle.alive():
            return handle
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"daemon did not come up:\n{log.read_text()}")


def stop_daemon(handle: DaemonHandle) -> int:
    if handle.proc.poll() is None:
        handle.proc.send_signal(signal.SIGTERM)
        try:
            handle.proc.wait(60)
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait()
    return handle.proc.returncode


@pytest.fixture(scope="session")
def daemon(model_cache):
    """One shared daemon with the default model resident."""
    handle = start_daemon(model_cache)
    with handle.client() as c:
        c.load_model()
    yield handle
    stop_daemon(handle)
    shutil.rmtree(handle.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs shipped with scikit-image (public domain / CC0)."""
    import skimage.data as d
    return {"astronaut": d.astronaut(), "cat": d.chelsea(), "coffee": d.coffee()}


def with_alpha(rgb: np.ndarray, value: int = 255) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], value, rgb.dtype)])


def soft_stroke(n: int = 40, grey: int = 255) -> np.ndarray:
    """An n x n RGBA8 layer: one soft brush stroke of a flat light colour on
    transparency (like the corpus's transparentbg-gimp layer). Shown over the
    black backdrop its contrast picks, the model finds no subject in it
    (0 % kept); over grey it keeps all of it (refeed.py)."""
    import cv2
    a = np.zeros((n, n), np.float32)
    cv2.line(a, (int(n * 0.1), int(n * 0.9)), (int(n * 0.9), int(n * 0.15)), 1.0, max(1, int(n * 0.3)))
    a = np.clip(cv2.GaussianBlur(a, (0, 0), n * 0.06) * 1.6, 0, 1)
    out = np.zeros((n, n, 4), np.uint8)
    out[..., :3] = grey
    out[..., 3] = (a * 255 + 0.5).astype(np.uint8)
    return out


def iou(a: np.ndarray, b: np.ndarray, threshold: int = 128) -> float:
    a, b = a >= threshold, b >= threshold
    return float((a & b).sum() / max((a | b).sum(), 1))
