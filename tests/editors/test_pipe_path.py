"""Real GIMP 3.0 and Krita 5.2 (Debian trixie root) on the pipe path, set up as a user would:
layermatte installed from a wheel of this checkout into a venv inside the root (the root's
Python 3.13, dependencies from a cached cp313 wheelhouse), the plug-ins installed by that
venv's `layermatte install gimp|krita`, PATH minimal (the program is found only through what
install recorded), and grpc absent from the editor's Python: the editors run with a PYTHONPATH
whose `grpc` refuses to import, which the pipe child must not inherit either.

Both editors: the mask equals the daemon's own matte for the pixels the editor sent (within 1
level) and the layer is unchanged; a program that fails at start gives an error carrying its
own words while the editor lives on (Krita's process must survive the write to a pipe nobody
reads); Cancel leaves no mask and the daemon takes the next request without waiting behind
the cancelled one. GIMP's Cancel kills the plug-in process (SIGKILL, gimp_plug_in_close); the
batch does the same to the plug-in. Krita's progress dialog sets the plug-in's cancel event;
the driver does the same. The daemon is the host's (session fixture), over its socket bound
into the root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from root import bind, editor_root, run_in_root
from test_gimp import BATCH_HEAD, _gimp_batch

pytestmark = pytest.mark.editor

REPO = Path(__file__).resolve().parents[2]
ROOT = "trixie"
WHEELS = Path(os.environ.get("LAYERMATTE_ROOT_WHEELS",
                             Path.home() / ".cache" / "layermatte-ci" / "wheels-trixie-cp313"))
MINIMAL_PATH = "/usr/bin:/bin"
BIG = 2048   # the cancelled layer: seconds of hq work left when Cancel comes


def _build_wheel(out: Path) -> Path:
    """A wheel of this checkout as it is (tracked and new files), built from a copy so that the
    build leaves nothing in the working tree."""
    src = out / "src"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, files):
        path = REPO / os.fsdecode(rel)
        if path.is_file():
            (src / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / os.fsdecode(rel))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return next(out.glob("layermatte-*.whl"))


def _wheelhouse(wheel: Path) -> Path:
    """Python 3.13 manylinux wheels of the wheel's dependencies (and pip), downloaded by the
    host's pip (the root has no package index of its own); kept across runs."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "any")]
    p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                        "--python-version=3.13", "--implementation=cp", "--abi=cp313", "--abi=abi3",
                        "--abi=none", *platforms, "-d", str(WHEELS), "pip", f"{wheel}[cpu]"],
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    for stale in WHEELS.glob("layermatte-*.whl"):   # the checkout's own wheel is never cached
        stale.unlink()
    return WHEELS


def _in_root(argv, home, timeout=900, **env):
    p = run_in_root([str(a) for a in argv], home=home, env={"PATH": MINIMAL_PATH, **env},
                    timeout=timeout, root=ROOT)
    assert p.returncode == 0, f"{argv[0]} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


class DaemonWatch:
    """The host's half of the cancel handshake, through files in the bound folder: tells the
    editor when the daemon is on the big layer ('daemon-busy'), and once the editor has
    cancelled ('cancelled') sends the daemon a small request and writes how long it queued."""

    def __init__(self, folder: Path, daemon, photos):
        self.folder, self.daemon, self.photos = folder, daemon, photos
        self.stop = threading.Event()
        self.start_at = daemon.log.stat().st_size
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        busy, cancelled = self.folder / "daemon-busy", self.folder / "cancelled"
        checked = self.folder / "daemon-checked.json"
        while not self.stop.wait(0.05):
            if not busy.exists():
                with open(self.daemon.log, "rb") as f:
                    f.seek(self.start_at)
                    if f"{BIG}x{BIG}".encode() in f.read():
                        busy.write_text("1")
            if cancelled.exists() and not checked.exists():
                rgb = np.ascontiguousarray(self.photos["cat"][:200, :200])
                rgb[0, 0] = int(time.time()) % 256   # a layer the daemon has not seen
                with self.daemon.client() as c:
                    summary = c.matte(rgb).summary
                checked.write_text(json.dumps({"queue_ms": summary["stage_ms"]["queue"]}))

    def close(self):
        self.stop.set()
        self.thread.join(30)


@pytest.fixture(scope="module")
def user_install(daemon):
    """The root's venv with layermatte from this checkout's wheel, and a grpc blocker for the
    editors' PYTHONPATH."""
    editor_root(ROOT)
    d = Path(tempfile.mkdtemp(prefix="lmpp-", dir="/tmp"))
    d.chmod(0o755)
    wheel = _build_wheel(d / "dist")
    wheels = _wheelhouse(wheel)
    blocker = d / "editor-site" / "grpc"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('this editor has no grpc (test blocker)')\n")
    venv = d / "venv"
    with bind(d, root=ROOT), bind(wheels, root=ROOT), bind(daemon.socket.parent, root=ROOT):
        _in_root(["python3", "-m", "venv", "--without-pip", venv], d)
        pip = next(wheels.glob("pip-*.whl"))
        _in_root([venv / "bin" / "python", f"{pip}/pip", "install", "-q", "--no-index", pip], d)
        _in_root([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--find-links",
                  wheels, f"{wheel}[cpu]"], d)
        yield {"dir": d, "venv": venv, "site": blocker.parent}
    if os.environ.get("LAYERMATTE_KEEP_EDITOR_FILES") != "1":
        shutil.rmtree(d, ignore_errors=True)


def _editor_env(user_install, daemon) -> dict:
    return {"PYTHONPATH": str(user_install["site"]), "LAYERMATTE_SOCKET": str(daemon.socket)}


def _images(d: Path, photos) -> None:
    import cv2
    Image.fromarray(photos["astronaut"]).save(d / "astro.png")
    big = cv2.resize(photos["astronaut"], (BIG, BIG), interpolation=cv2.INTER_CUBIC)
    Image.fromarray(big).save(d / "big.png")
    Image.fromarray(cv2.resize(photos["astronaut"], (1024, 1024))).save(d / "astro1024.png")


def _daemon_matte(daemon, pixels: np.ndarray, fmt: str) -> np.ndarray:
    from layermatte.imaging import formats
    with daemon.client() as c:
        return c.matte(pixels, format_code=formats.BY_NAME[fmt]).matte


def _assert_mask(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert 0.05 < (want > 128).mean() < 0.95, "degenerate reference matte"
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, f"{int((diff > 1).sum())} pixels differ by more than 1 (max {diff.max()})"


# Both editors' scripts: find the `layermatte pipe` child in /proc, and wait for things.
PROCESS_HELPERS = r'''
import os, time

def pipe_child():
    """(pid, parent pid) of the running `layermatte pipe --protocol` child, or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
            stat = open("/proc/%s/stat" % pid).read()
        except OSError:
            continue
        if b"pipe" in argv and b"--protocol" in argv:
            return int(pid), int(stat.rsplit(")", 1)[1].split()[1])
    return None

def gone(pid):
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True

def wait_for(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    return None
'''


# -- GIMP -------------------------------------------------------------------------------------
GIMP_BATCH = PROCESS_HELPERS + r'''
import signal, threading

@case
def grpc_hidden():
    try:
        import grpc  # noqa: F401
        return {'importable': True}
    except ImportError as e:
        return {'importable': False, 'why': str(e)}

@case
def mask():
    img = load('astro.png'); L = img.get_layers()[0]; out = {'layer': info('astro', L)}
    img.clean_all()
    out['remove'] = run(REMOVE, img, [L])
    out['mask'] = dump('astro-mask', L.get_mask(), 'Y u8') if L.get_mask() else None
    out['pixels_after'] = dump('astro-after', L, pixfmt(L))
    img.delete()
    return out

def recorded(cmd=None):
    cfg = json.load(open(CONFIG))
    if cmd is not None:
        cfg['command'] = cmd
        json.dump(cfg, open(CONFIG, 'w'))
    return cfg['command']

@case
def broken_program():
    good = recorded()
    recorded([good[0], '-m', 'layermatte_removed'])   # the program's Python starts, then fails
    try:
        img = load('astro1024.png'); L = img.get_layers()[0]
        before = get(L, pixfmt(L)); img.clean_all()
        out = {'remove': run(REMOVE, img, [L])}
        out.update(has_mask=L.get_mask() is not None, dirty=img.is_dirty(),
                   pixels_same=get(L, pixfmt(L)) == before)
        img.delete()
    finally:
        recorded(good)
    return out

@case
def cancel():
    img = load('big.png'); L = img.get_layers()[0]
    before = get(L, pixfmt(L)); img.clean_all()
    seen = {}
    def cancel_like_gimp():   # GIMP's Cancel: gimp_plug_in_close() kills the plug-in
        found = wait_for(pipe_child, 120)
        if not found:
            return
        seen['child'], seen['plugin'] = found
        seen['daemon_busy'] = bool(wait_for(lambda: os.path.exists(path('daemon-busy')), 120))
        os.kill(seen['plugin'], signal.SIGKILL)
        t = time.monotonic()
        seen['child_gone'] = bool(wait_for(lambda: gone(seen['child']), 30))
        seen['child_gone_s'] = round(time.monotonic() - t, 2)
        open(path('cancelled'), 'w').write('1')
    t = threading.Thread(target=cancel_like_gimp, daemon=True); t.start()
    out = {'remove': run(DIALOG, img, [L], quality='hq')}
    t.join(150)
    checked = wait_for(lambda: os.path.exists(path('daemon-checked.json')), 120)
    out.update(seen, has_mask=L.get_mask() is not None, pixels_same=get(L, pixfmt(L)) == before,
               daemon=json.load(open(path('daemon-checked.json'))) if checked else None)
    img.delete()
    return out
'''


@pytest.fixture(scope="module")
def gimp(user_install, daemon, photos):
    d = user_install["dir"] / "gimp"
    d.mkdir()
    home = d / "home"
    (home / ".config" / "GIMP" / "3.0").mkdir(parents=True)   # GIMP 3.0 has run once
    (home / ".config" / "GIMP" / "3.0" / "gimprc").write_text("(show-welcome-dialog no)\n")
    _images(d, photos)
    p = _in_root([user_install["venv"] / "bin" / "layermatte", "install", "gimp"], home)
    plugdir = home / ".config" / "GIMP" / "3.0" / "plug-ins" / "layermatte"
    watch = DaemonWatch(d, daemon, photos)
    try:
        res = _gimp_batch(ROOT, d, "pipe", GIMP_BATCH, home, dict(_editor_env(user_install, daemon),
                          PATH=MINIMAL_PATH), CONFIG=str(plugdir / "layermatte_lite.json"))
    finally:
        watch.close()
    res.update(dir=d, install=p.stdout + p.stderr, config=json.loads((plugdir / "layermatte_lite.json").read_text()))
    return res


def test_gimp_plugin_installed_by_the_roots_layermatte(gimp, user_install):
    assert gimp["config"]["command"][0].startswith(str(user_install["venv"] / "bin" / "python"))
    assert not gimp["grpc_hidden"]["importable"], "grpc imported in GIMP's Python: not the pipe path"


def test_gimp_mask_on_the_pipe_path_equals_the_daemons(gimp, daemon):
    r = gimp["mask"]
    assert r["remove"]["status"] == "success", r["remove"]
    lay = r["layer"]
    assert lay["fmt"] == "R'G'B' u8"
    px = np.frombuffer((gimp["dir"] / lay["pixels"]).read_bytes(), np.uint8).reshape(lay["h"], lay["w"], 3)
    mask = np.frombuffer((gimp["dir"] / r["mask"]).read_bytes(), np.uint8).reshape(lay["h"], lay["w"])
    _assert_mask(mask, _daemon_matte(daemon, px, "RGB8"))
    assert (gimp["dir"] / r["pixels_after"]).read_bytes() == px.tobytes(), "the layer changed"


def test_gimp_shows_the_programs_own_message_when_it_fails_at_start(gimp):
    r = gimp["broken_program"]
    assert r["remove"]["status"] == "execution-error"
    assert "No module named layermatte_removed" in r["remove"]["message"], r["remove"]
    assert not r["has_mask"] and not r["dirty"] and r["pixels_same"]


def test_gimp_cancel_leaves_no_mask_and_frees_the_daemon(gimp):
    r = gimp["cancel"]
    assert r.get("child") and r["daemon_busy"], r
    assert r["child_gone"], "the pipe child outlived the killed plug-in"
    assert r["remove"]["status"] != "success" and not r["has_mask"] and r["pixels_same"], r
    assert r["daemon"] is not None and r["daemon"]["queue_ms"] < 1000, r["daemon"]


# -- Krita ------------------------------------------------------------------------------------
KRITA_DRIVER = PROCESS_HELPERS + r'''
import hashlib, json, threading, traceback
from krita import Krita

R = {}
app = Krita.instance()

def P(n): return os.path.join(D, n)

def save():
    json.dump(R, open(P("results.json"), "w"), indent=1)

def open_doc(name):
    doc = app.openDocument(P(name))
    doc.setBatchmode(True)
    return doc, doc.rootNode().childNodes()[0]

def pixels(node):
    r = node.bounds()
    return bytes(node.pixelData(r.x(), r.y(), r.width(), r.height()))

def masks(node):
    return [c for c in node.childNodes() if c.type() == "transparencymask"]

def recorded(cmd=None):
    cfg = json.load(open(CONFIG))
    if cmd is not None:
        cfg["command"] = cmd
        json.dump(cfg, open(CONFIG, "w"))
    return cfg["command"]

def mask():
    doc, node = open_doc("astro.png")
    before = pixels(node)
    open(P("krita-pixels.raw"), "wb").write(before)
    m = layermatte_krita.generate_mask(doc, node)
    r = node.bounds()
    open(P("krita-mask.raw"), "wb").write(bytes(m.pixelData(r.x(), r.y(), r.width(), r.height())))
    out = {"w": r.width(), "h": r.height(), "model": node.colorModel(), "depth": node.colorDepth(),
           "unchanged": pixels(node) == before}
    doc.close()
    return out

def broken_program():
    good = recorded()
    recorded([good[0], "-m", "layermatte_removed"])
    try:
        doc, node = open_doc("astro1024.png")
        before = hashlib.sha1(pixels(node)).hexdigest()
        out = {}
        try:
            layermatte_krita.generate_mask(doc, node)
            out["error"] = None
        except Exception as e:
            out.update(error=str(e), type=type(e).__name__)
        out.update(masks=len(masks(node)), unchanged=hashlib.sha1(pixels(node)).hexdigest() == before)
        doc.close()
    finally:
        recorded(good)
    return out

def cancel():
    doc, node = open_doc("big.png")
    before = hashlib.sha1(pixels(node)).hexdigest()
    stop, seen = threading.Event(), {}
    def cancel_like_the_dialog():   # the progress dialog's Cancel sets this event
        seen["child"] = (wait_for(pipe_child, 120) or [None])[0]
        seen["daemon_busy"] = bool(wait_for(lambda: os.path.exists(P("daemon-busy")), 120))
        stop.set()
    t = threading.Thread(target=cancel_like_the_dialog, daemon=True); t.start()
    t0 = time.monotonic()
    try:
        layermatte_krita.generate_mask(doc, node, quality="hq", cancel=stop)
        seen["raised"] = None
    except Exception as e:
        seen.update(raised=type(e).__name__, message=str(e))
    seen["returned_s"] = round(time.monotonic() - t0, 2)
    t.join(150)
    seen["child_gone"] = bool(seen.get("child")) and bool(wait_for(lambda: gone(seen["child"]), 30))
    open(P("cancelled"), "w").write("1")
    checked = wait_for(lambda: os.path.exists(P("daemon-checked.json")), 120)
    seen.update(masks=len(masks(node)), unchanged=hashlib.sha1(pixels(node)).hexdigest() == before,
                daemon=json.load(open(P("daemon-checked.json"))) if checked else None)
    doc.close()
    return seen

def main(args):
    global D, layermatte_krita
    D = args[0]
    app.setBatchmode(True)
    try:
        import layermatte_krita
        lite = layermatte_krita.masking.lite()
        R["import"] = {"lite": lite.__file__, "grpc": lite.grpc_available()}
    except Exception:
        R["import"] = {"error": traceback.format_exc()}
    else:
        for name in ("mask", "broken_program", "cancel"):
            try:
                R[name] = globals()[name]()
            except Exception:
                R[name] = {"exception": traceback.format_exc()}
            save()
    R["finished"] = True   # written by a Krita that is still alive
    save()
'''


@pytest.fixture(scope="module")
def krita(user_install, daemon, photos):
    d = user_install["dir"] / "krita"
    d.mkdir()
    home = d / "home"
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    _images(d, photos)
    (d / "lm_pipe_driver.py").write_text(KRITA_DRIVER.replace(
        "R = {}", f"R = {{}}\nCONFIG = {str(pykrita / 'layermatte_krita' / 'layermatte_lite.json')!r}", 1))
    p = _in_root([user_install["venv"] / "bin" / "layermatte", "install", "krita"], home)
    watch = DaemonWatch(d, daemon, photos)
    env = _editor_env(user_install, daemon)
    env.update(PATH=MINIMAL_PATH, QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=f"{env['PYTHONPATH']}:{d}:{pykrita}")
    try:
        k = run_in_root(["kritarunner", "-s", "lm_pipe_driver", "-f", "main", str(d)], home=home,
                        env=env, timeout=900, root=ROOT)
    finally:
        watch.close()
    out = (k.stdout + k.stderr)[-6000:]
    results = d / "results.json"
    assert results.exists(), f"kritarunner wrote no results (exit {k.returncode}):\n{out}"
    r = json.loads(results.read_text())
    assert "error" not in r["import"], r["import"]["error"]
    r.update(dir=d, output=out, returncode=k.returncode, install=p.stdout + p.stderr,
             config=json.loads((pykrita / "layermatte_krita" / "layermatte_lite.json").read_text()))
    return r


def _krita_case(krita, name):
    assert name in krita, f"Krita died before case {name} (exit {krita['returncode']}):\n{krita['output']}"
    assert "exception" not in krita[name], krita[name]["exception"]
    return krita[name]


def test_krita_runs_the_pipe_path_with_the_recorded_program(krita, user_install):
    assert krita["import"]["grpc"] is False, "grpc usable in Krita's Python: not the pipe path"
    assert krita["config"]["command"][0].startswith(str(user_install["venv"] / "bin" / "python"))


def test_krita_mask_on_the_pipe_path_equals_the_daemons(krita, daemon):
    r = _krita_case(krita, "mask")
    assert (r["model"], r["depth"]) == ("RGBA", "U8")
    bgra = np.frombuffer((krita["dir"] / "krita-pixels.raw").read_bytes(), np.uint8).reshape(r["h"], r["w"], 4)
    mask = np.frombuffer((krita["dir"] / "krita-mask.raw").read_bytes(), np.uint8).reshape(r["h"], r["w"])
    _assert_mask(mask, _daemon_matte(daemon, bgra, "BGRA8"))
    assert r["unchanged"]


def test_krita_survives_a_program_that_fails_at_start(krita):
    r = _krita_case(krita, "broken_program")
    assert krita.get("finished"), f"Krita did not get to the end (exit {krita['returncode']}):\n{krita['output']}"
    assert r["type"] == "LayermatteError" and "No module named layermatte_removed" in r["error"], r
    assert r["masks"] == 0 and r["unchanged"]


def test_krita_cancel_leaves_no_mask_and_frees_the_daemon(krita):
    r = _krita_case(krita, "cancel")
    assert r.get("child") and r["daemon_busy"], r
    assert r["raised"] == "Cancelled", r
    assert r["child_gone"], "the pipe child outlived the cancel"
    assert r["masks"] == 0 and r["unchanged"]
    assert r["daemon"] is not None and r["daemon"]["queue_ms"] < 1000, r["daemon"]
